"""Hostile perflogs: a hypothesis fuzz of ``perflogs_parsers.reader.read_perflogs``.

A perflog is appended to by every ReFrame run for months, copied between sites and edited
by hand, so the reader meets truncated writes, merged files with other columns, stray bytes
and text that is not UTF-8. Whatever a file holds, reading it must not raise, must keep
every well-formed row with exactly its values, and must report each malformed line by
number. Two properties:

* structured: this project's header, then well-formed rows (random text, any float, ``None``,
  ISO times with offsets, fields of up to 4 MB) mixed with malformed lines (truncated,
  extra or missing columns, a non-number in a numeric column, a time out of range, bytes
  that are not UTF-8, random bytes) and blank lines;
* random: any bytes after any of the known headers (this project's, ReFrame's default,
  the multiline format, or random bytes too): no exception, and a report that adds up.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perflogs_parsers.formats import (
    PERFLOG_LEADING_COLUMNS,
    PERFORMANCE_VARIABLES,
    perflog_header,
)
from perflogs_parsers.parsing import NULL_TOKENS
from perflogs_parsers.reader import read_perflogs

HEADER = perflog_header(list(PERFORMANCE_VARIABLES))
FIELDS = HEADER.count("|") + 1
VARIABLES = list(PERFORMANCE_VARIABLES)
#: Index of each numeric field of a row (value, ref, lower_thres, upper_thres per variable).
NUMERIC_FIELDS = [len(PERFLOG_LEADING_COLUMNS) + 5 * index + offset
                  for index in range(len(VARIABLES)) for offset in (0, 2, 3, 4)]
TIME_FIELD = PERFLOG_LEADING_COLUMNS.index("job_completion_time")
#: Examples per property: about ten seconds on a loaded two-core machine. Set
#: MLBENCH_FUZZ_EXAMPLES for a longer hunt.
EXAMPLES = int(os.environ.get("MLBENCH_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Arrow hands a bad line that is not UTF-8 to the reader's callback by decoding it first;
#: that decode fails inside Arrow, which prints it as an "ignored" exception and reports a
#: parse error, after which the reader blanks such lines and parses again.
ARROW_DECODE_NOISE = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")

OTHER_HEADERS = [
    # ReFrame's default perflog format (one performance variable).
    "job_completion_time|version|display_name|system|partition|environ|jobid|result|"
    "throughput_value|throughput_unit|throughput_ref|throughput_lower_thres|"
    "throughput_upper_thres",
    # The multiline format.
    "job_completion_time|system|partition|environ|display_name|result|perf_var|perf_value|"
    "perf_unit|perf_ref|perf_lower_thres|perf_upper_thres",
]

text = st.text(st.characters(blacklist_characters="|\n\r", blacklist_categories=["Cs"]),
               min_size=1, max_size=24).filter(lambda value: value not in NULL_TOKENS)
name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
number = st.floats(allow_nan=False, width=64)
maybe_number = st.none() | number
offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
#: Whole seconds, as ReFrame writes them (``%FT%T%:z``).
times = st.datetimes(datetime(1700, 1, 1), datetime(2200, 1, 1), timezones=offsets).map(
    lambda moment: moment.replace(microsecond=0))
#: Years a datetime64[ns] cannot hold: the reader must report them, not crash.
far_times = st.datetimes(datetime(1, 1, 2), datetime(1600, 1, 1), timezones=offsets) | \
    st.datetimes(datetime(2300, 1, 1), datetime(9999, 12, 30), timezones=offsets)


@dataclass(frozen=True)
class Row:
    """One well-formed record, as ReFrame writes it with this project's format."""

    time: datetime
    system: str
    partition: str
    environ: str
    test: str
    result: str
    nodelist: str
    values: tuple[tuple[float | None, str, float | None, float | None, float | None], ...]

    def fields(self, jobid: str) -> list[str]:
        known = {"job_completion_time": self.time.isoformat(timespec="seconds"),
                 "system": self.system, "partition": self.partition, "environ": self.environ,
                 "display_name": f"{self.test} %num_nodes=2 %device=cpu %scale=smoke",
                 "result": self.result, "num_nodes": "2", "device": "cpu", "scale": "smoke",
                 "num_tasks": "2", "jobid": jobid, "job_nodelist": self.nodelist,
                 "version": "4.10.4", "launcher": "srun", "num_ranks": "2"}
        leading = [known.get(column, "null") for column in PERFLOG_LEADING_COLUMNS]
        perf = [_number_text(v) if i != 1 else v for values in self.values
                for i, v in enumerate(values)]
        return leading + perf

    def line(self, jobid: str) -> bytes:
        return "|".join(self.fields(jobid)).encode()


def _number_text(value: float | None) -> str:
    return "None" if value is None else repr(value)


huge = st.sampled_from([0, 0, 0, 100_000, 4_000_000]).map(lambda size: "n" * size)
rows = st.builds(
    Row, time=times, system=text, partition=text, environ=text, test=name,
    result=st.sampled_from(["pass", "fail"]),
    nodelist=st.one_of(text, huge.filter(bool)),
    values=st.tuples(*[st.tuples(maybe_number, text, maybe_number, maybe_number, maybe_number)
                       for _ in VARIABLES]))


@st.composite
def malformed_lines(draw) -> bytes:
    """A line the reader must skip and report: every kind keeps the line non-empty."""
    fields = draw(rows).fields("0")
    kind = draw(st.sampled_from(["truncated", "extra", "missing", "not a number", "far time",
                                 "not utf-8", "random bytes"]))
    if kind == "truncated":
        line = "|".join(fields)
        return line[: draw(st.integers(1, line.rindex("|")))].encode()
    if kind == "extra":
        return "|".join(fields + draw(st.lists(text, min_size=1, max_size=3))).encode()
    if kind == "missing":
        drop = draw(st.sets(st.integers(0, FIELDS - 1), min_size=1, max_size=FIELDS - 1))
        return "|".join(f for i, f in enumerate(fields) if i not in drop).encode()
    if kind == "not a number":
        not_number = text.filter(lambda value: not _is_float(value))
        fields[draw(st.sampled_from(NUMERIC_FIELDS))] = draw(not_number)
        return "|".join(fields).encode()
    if kind == "far time":
        fields[TIME_FIELD] = draw(far_times).isoformat(timespec="seconds")
        return "|".join(fields).encode()
    if kind == "not utf-8":
        where = draw(st.sampled_from([1, 2, 3, 13]))
        garbage = draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x80abc"]))
        encoded = [f.encode() for f in fields]
        encoded[where] += garbage
        return b"|".join(encoded)
    line = draw(st.binary(min_size=1, max_size=300).map(
        lambda raw: raw.replace(b"\n", b"").replace(b"\r", b"")))
    return line if line and line.count(b"|") + 1 != FIELDS else b"not|a|perflog|line"


def _is_float(value: str) -> bool:
    """Whether Arrow, which parses the perflog, reads ``value`` as a float."""
    try:
        pc.cast(pa.scalar(value, pa.string()), pa.float64())
    except pa.ArrowInvalid:
        return False
    return True


@st.composite
def hostile_files(draw) -> tuple[bytes, dict[str, Row], set[int]]:
    """(file content, well-formed rows by jobid, line numbers of the malformed lines)."""
    kinds = draw(st.lists(st.sampled_from(["row", "row", "bad", "blank"]), max_size=12))
    lines, good, bad = [HEADER.encode()], {}, set()
    for kind in kinds:
        number = len(lines) + 1
        if kind == "row":
            jobid = f"job{number}"
            good[jobid] = draw(rows)
            lines.append(good[jobid].line(jobid))
        elif kind == "bad":
            bad.add(number)
            lines.append(draw(malformed_lines()))
        else:
            lines.append(b"")
    ending = draw(st.sampled_from([b"\n", b"", b"\r\n"]))
    separator = b"\r\n" if ending == b"\r\n" else b"\n"
    return separator.join(lines) + ending, good, bad


def read_bytes(content: bytes, name: str = "resnet50_train.log"):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sys" / "part" / name
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
        return read_perflogs([path])


def same_number(read: float, written: float | None) -> bool:
    if written is None:
        return math.isnan(read)
    return read == written


@ARROW_DECODE_NOISE
@FUZZ
@given(hostile_files())
def test_every_well_formed_row_is_kept_and_every_bad_line_reported(
        case: tuple[bytes, dict[str, Row], set[int]]) -> None:
    content, good, bad = case
    frame, report = read_bytes(content)

    if good or bad:  # a lone header without a line end is skipped, losing nothing
        assert not report.skipped_files, report.skipped_files
    assert report.records == len(good)
    assert {bad.line for bad in report.malformed} == bad, report.messages()
    assert len(frame) == len(good) * len(VARIABLES)
    jobids = frame["jobid"].astype(str) if len(frame) else pd.Series([], dtype=str)
    for jobid, row in good.items():
        kept = frame[(jobids == jobid).to_numpy()]
        assert list(kept["variable"].astype(str)) == VARIABLES
        assert set(kept["system"]) == {row.system}
        assert set(kept["partition"]) == {row.partition}
        assert set(kept["environ"]) == {row.environ}
        assert set(kept["test"]) == {row.test}
        assert set(kept["result"]) == {row.result}
        assert set(kept["job_nodelist"]) == {row.nodelist}
        assert set(kept["timestamp"]) == {pd.Timestamp(row.time).tz_convert("UTC")}
        for (_, read), (value, unit, ref, lower, upper) in zip(kept.iterrows(), row.values,
                                                              strict=True):
            assert same_number(read["value"], value), (read["value"], value)
            assert read["unit"] == unit
            assert same_number(read["reference"], ref)
            assert same_number(read["lower_thres"], lower)
            assert same_number(read["upper_thres"], upper)


@ARROW_DECODE_NOISE
@FUZZ
@given(header=st.sampled_from([HEADER, *OTHER_HEADERS]).map(str.encode) | st.binary(),
       body=st.binary(max_size=2000))
def test_any_bytes_read_without_an_exception(header: bytes, body: bytes) -> None:
    frame, report = read_bytes(header + b"\n" + body)

    assert isinstance(frame, pd.DataFrame)
    if report.skipped_files:
        assert len(frame) == 0 and report.records == 0
    assert all(bad.line >= 2 for bad in report.malformed)
    assert np.all(frame["timestamp"].isna() | (frame["timestamp"].dt.year > 1677))
