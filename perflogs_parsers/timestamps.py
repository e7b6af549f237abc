"""Job completion times of perflog records, as nanoseconds since the epoch (UTC).

ReFrame writes ``job_completion_time`` with the handler's ``datefmt``: this project's carries
the UTC offset, ReFrame's default (``%FT%T``) is local time without one. Both are parsed by
Arrow, a million at a time; only texts Arrow cannot read go through Python one by one.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TIME_TEXT = 'job_completion_time'
TIME_UNIX = 'job_completion_time_unix'
NAT = np.iinfo(np.int64).min
_MAX_NS = np.iinfo(np.int64).max
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: Local-time offsets change on quarter-hour boundaries in every time zone in use.
_OFFSET_STEP_NS = 15 * 60 * 10**9
_MAX_TEXT = 120
_STEADY_NS = 7 * 24 * 3600 * 10**9
_UNKNOWN_OFFSET = NAT


def completion_times(table: pa.Table, bad_rows: dict[int, str]) -> np.ndarray:
    """Job completion time of each row in ns since the epoch (UTC); NaT where not written.

    The Unix time column is exact when present; otherwise the ISO 8601 text is parsed, and a
    time without UTC offset is taken as local time, which is how ReFrame writes it. Rows
    whose text is not a time are added to ``bad_rows``.
    """
    names = table.column_names
    times = np.full(table.num_rows, NAT, dtype=np.int64)
    if TIME_UNIX in names:
        seconds = table.column(TIME_UNIX).to_numpy().astype(np.float64, copy=False)
        known = ~np.isnan(seconds)
        times[known] = np.round(seconds[known] * 1e9).astype(np.int64)
        if known.all():
            return times
    if TIME_TEXT in names:
        from_text = _parse_times(table.column(TIME_TEXT), bad_rows)
        times = np.where(times == NAT, from_text, times)
    return times


def _parse_times(texts: pa.ChunkedArray, bad_rows: dict[int, str]) -> np.ndarray:
    try:
        # Every time carries its UTC offset (this project's format).
        return _nanoseconds(pc.cast(texts, pa.timestamp('ns', tz='UTC')))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        # No time carries an offset (ReFrame's default datefmt): local wall-clock times.
        return _local_to_utc(_nanoseconds(pc.cast(texts, pa.timestamp('ns'))))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass

    encoded = pc.dictionary_encode(texts).combine_chunks()
    lookup = np.array([_parse_time(text) for text in encoded.dictionary.to_pylist()] + [NAT],
                      dtype=np.int64)
    # Null texts have no index; the trailing NaT is what they pick.
    indices = pc.fill_null(encoded.indices, len(lookup) - 1).to_numpy(zero_copy_only=False)
    times = lookup[indices]
    for row in np.flatnonzero((times == NAT) & (indices != len(lookup) - 1)):
        text = encoded.dictionary[int(indices[row])].as_py()[:_MAX_TEXT]
        bad_rows.setdefault(int(row), f'{TIME_TEXT}: not an ISO 8601 time: {text!r}')
    return times


def _nanoseconds(times: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(times.cast(pa.int64()), NAT).to_numpy().astype(np.int64, copy=False)


def _local_to_utc(wall: np.ndarray) -> np.ndarray:
    """UTC of local wall-clock times (ns), converted as Python converts a naive datetime.

    The offset is looked up at the start of each distinct quarter hour, and only where it can
    change: between two quarter hours less than :data:`_STEADY_NS` apart that have the same
    offset it is taken to be constant (no time zone changes its offset twice in a week), so
    a million times cost a few hundred Python conversions.
    """
    known = wall != NAT
    steps = np.floor_divide(wall[known], _OFFSET_STEP_NS)
    distinct, which = np.unique(steps, return_inverse=True)
    offsets = np.zeros(len(distinct), dtype=np.int64)
    looked_up = np.zeros(len(distinct), dtype=bool)

    def offset(index: int) -> int:
        if not looked_up[index]:
            start = int(distinct[index]) * _OFFSET_STEP_NS
            naive = datetime(1970, 1, 1) + timedelta(microseconds=start // 1000)
            utc_start = _parse_time(naive.isoformat())
            offsets[index] = start - utc_start if utc_start != NAT else _UNKNOWN_OFFSET
            looked_up[index] = True
        return int(offsets[index])

    pending = [(0, len(distinct) - 1)] if len(distinct) else []
    while pending:
        first, last = pending.pop()
        if last - first < 2:
            offset(first), offset(last)
            continue
        span = (int(distinct[last]) - int(distinct[first])) * _OFFSET_STEP_NS
        if span <= _STEADY_NS and offset(first) == offset(last) != _UNKNOWN_OFFSET:
            offsets[first:last + 1] = offsets[first]
            looked_up[first:last + 1] = True
            continue
        middle = (first + last) // 2
        pending += [(first, middle), (middle, last)]

    utc = np.full_like(wall, NAT)
    per_row = offsets[which]
    utc[known] = np.where(per_row != _UNKNOWN_OFFSET, wall[known] - per_row, NAT)
    return utc


def _parse_time(text: str) -> int:
    """Nanoseconds since the epoch, or NaT for a text that is not a time or one outside the
    years that int64 nanoseconds can hold (about 1677 to 2262)."""
    try:
        # Python 3.10 does not read the 'Z' suffix.
        moment = datetime.fromisoformat(text[:-1] + '+00:00' if text.endswith('Z') else text)
        # A naive datetime is local time; astimezone() applies the local rules, DST included.
        nanoseconds = (moment.astimezone(timezone.utc) - _EPOCH) // timedelta(microseconds=1) \
            * 1000
    except (ValueError, OverflowError):
        return NAT
    return nanoseconds if NAT < nanoseconds <= _MAX_NS else NAT
