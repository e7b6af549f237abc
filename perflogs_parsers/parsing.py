"""Parse one perflog file with Arrow, recovering from what real files contain.

The header names the columns (:class:`Layout` says which hold what); Arrow's CSV reader parses
the rest with text columns dictionary-encoded. Lines with the wrong number of fields, a
non-numeric value or an unreadable time are reported as :class:`MalformedLine` and left out;
a line longer than Arrow's block or lines that are not UTF-8 are retried once; any other error
skips the file (:class:`SkippedFile`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from perflogs_parsers.timestamps import TIME_TEXT, completion_times

#: Per-variable header suffixes and the tidy column each one becomes.
PERF_FIELDS = {
    'value': 'value',
    'unit': 'unit',
    'ref': 'reference',
    'lower_thres': 'lower_thres',
    'upper_thres': 'upper_thres',
    'result': 'perf_result',
}
NUMERIC_PERF_FIELDS = ('value', 'ref', 'lower_thres', 'upper_thres')
MULTILINE_VARIABLE = 'perf_var'

#: How ReFrame spells a missing value: ``None`` in perf columns, ``null`` (JSON) elsewhere.
NULL_TOKENS = ['None', 'null', '']

_MAX_TEXT = 120
_TEXT = pa.dictionary(pa.int32(), pa.string())
_SAMPLE_BYTES = 1 << 20
#: Columns that name a run or a measurement: always categories.
_NAMING_COLUMNS = frozenset({'system', 'partition', 'environ', 'display_name', 'name',
                             'result', MULTILINE_VARIABLE})


@dataclass(frozen=True)
class MalformedLine:
    """A perflog line that was skipped, with the reason."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f'{self.path}:{self.line}: {self.reason}'


class SkippedFile(Exception):
    """A file that cannot be used at all; the message says why."""


@dataclass
class Layout:
    """Which header columns hold what."""

    columns: list[str]
    #: variable name -> {perf field suffix -> column}; one entry keyed '' in multiline files
    perf_columns: dict[str, dict[str, str]]
    variable_column: str | None

    @classmethod
    def from_header(cls, header: str) -> Layout:
        columns = _unique_names(header.split('|'))
        names = set(columns)
        if MULTILINE_VARIABLE in names and 'perf_value' in names:
            fields = {suffix: f'perf_{suffix}' for suffix in PERF_FIELDS
                      if f'perf_{suffix}' in names}
            return cls(columns, {'': fields}, MULTILINE_VARIABLE)

        perf_columns: dict[str, dict[str, str]] = {}
        for column in columns:
            if column.endswith('_value'):
                var = column[:-len('_value')]
                fields = {suffix: f'{var}_{suffix}' for suffix in PERF_FIELDS
                          if f'{var}_{suffix}' in names}
                perf_columns[var] = fields

        # A column such as ``default_value`` is a performance value only when it has siblings.
        with_siblings = {var: f for var, f in perf_columns.items() if len(f) > 1}
        return cls(columns, with_siblings or perf_columns, None)

    @property
    def naming_columns(self) -> frozenset[str]:
        """Columns that say which run or variable a value belongs to, and the units."""
        units = {fields['unit'] for fields in self.perf_columns.values() if 'unit' in fields}
        return _NAMING_COLUMNS | units

    @property
    def numeric_columns(self) -> list[str]:
        numeric = [f[suffix] for f in self.perf_columns.values()
                   for suffix in NUMERIC_PERF_FIELDS if suffix in f]
        if 'job_completion_time_unix' in self.columns:
            numeric.append('job_completion_time_unix')
        return numeric


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        name = name.strip() or 'unnamed'
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f'{name}.{count}')
    return unique



def parse_file(path: Path, layout: Layout,
               ) -> tuple[pa.Table, np.ndarray, list[MalformedLine]]:
    """Table of the file's records, their completion times (ns since the epoch, UTC) and the
    lines left out.

    Parsing is retried once for each error a file can recover from: a line longer than
    Arrow's block (a huge field) gets a block as large as the file, and lines that are not
    UTF-8 (they break Arrow's text conversion, or its bad-row callback when their field count
    is wrong too) are blanked and reported. Any other error raises :class:`SkippedFile`."""
    source, not_text, block_size = None, [], None
    while True:
        try:
            table, times, malformed = _parse(path, layout, source, block_size)
            return table, times, sorted(malformed + not_text, key=lambda bad: bad.line)
        except pa.ArrowInvalid as err:
            if 'straddling object' in str(err) and block_size is None:
                block_size = path.stat().st_size + 1
                continue
            if source is None:
                source, not_text = _blank_non_utf8_lines(path)
                if not_text:
                    continue
            raise SkippedFile(f'cannot parse: {err}') from None



def _blank_non_utf8_lines(path: Path) -> tuple[io.BytesIO, list[MalformedLine]]:
    """The file with lines that are not UTF-8 emptied (so line numbers stay), and those lines."""
    lines = path.read_bytes().split(b'\n')
    malformed = []
    for index, line in enumerate(lines):
        try:
            line.decode('utf-8')
        except UnicodeDecodeError:
            lines[index] = b''
            malformed.append(MalformedLine(str(path), index + 1, 'not UTF-8 text'))
    return io.BytesIO(b'\n'.join(lines)), malformed


def _parse(path: Path, layout: Layout, source: io.BytesIO | None = None,
           block_size: int | None = None) -> tuple[pa.Table, np.ndarray, list[MalformedLine]]:
    """Arrow-parse one file into a table plus completion times (ns since the epoch, UTC).

    Lines with the wrong number of fields, a non-numeric value or an unreadable time are
    reported and left out. ``source`` replaces the file's content when given; ``block_size``
    replaces Arrow's default (it must exceed the longest line).
    """
    numeric = layout.numeric_columns
    column_types = {c: (pa.float64() if c in numeric else _TEXT) for c in layout.columns}
    for name in _mostly_unique_columns(path, layout, column_types, source):
        column_types[name] = pa.string()
    if TIME_TEXT in column_types:
        column_types[TIME_TEXT] = pa.string()
    bad_field_counts = []

    def on_invalid_row(row) -> str:
        bad_field_counts.append(row)
        return 'skip'

    def read(types: dict) -> pa.Table:
        if source is not None:
            source.seek(0)
        return pacsv.read_csv(
            source if source is not None else path,
            read_options=pacsv.ReadOptions(column_names=layout.columns, skip_rows=1,
                                           **({'block_size': block_size} if block_size else {})),
            parse_options=pacsv.ParseOptions(delimiter='|', quote_char=False,
                                             invalid_row_handler=on_invalid_row),
            convert_options=pacsv.ConvertOptions(column_types=types, null_values=NULL_TOKENS,
                                                 strings_can_be_null=True),
        )

    bad_rows: dict[int, str] = {}
    try:
        table = read(column_types)
    except pa.ArrowInvalid as err:
        if 'conversion error' not in str(err):
            raise
        # Some numeric column holds text: read those columns as text and find the rows.
        bad_field_counts.clear()
        table = read({c: (pa.string() if c in numeric else t) for c, t in column_types.items()})
        table = _cast_numbers(table, numeric, bad_rows)

    times = completion_times(table, bad_rows)
    if TIME_TEXT in table.column_names:
        table = table.drop_columns([TIME_TEXT])
    if not bad_field_counts and not bad_rows:
        return table, times, []

    row_lines, malformed = _scan_lines(path, len(layout.columns), source)
    if len(row_lines) != table.num_rows:
        # Line ends Arrow reads differently (a bare CR): number the rows instead.
        row_lines = np.arange(2, table.num_rows + 2)
    malformed += [MalformedLine(str(path), int(row_lines[row]), reason)
                  for row, reason in bad_rows.items()]
    malformed.sort(key=lambda bad: bad.line)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[list(bad_rows)] = False
    return table.filter(pa.array(keep)), times[keep], malformed


def _mostly_unique_columns(path: Path, layout: Layout, column_types: dict,
                           source: io.BytesIO | None) -> list[str]:
    """Text columns, other than the ones that name a run, where most of the first
    :data:`_SAMPLE_BYTES` of a large file hold distinct values (job ids, node lists): read as
    plain text they cost less than a dictionary with an entry per row."""
    if source is not None or path.stat().st_size <= 4 * _SAMPLE_BYTES:
        return []
    with open(path, 'rb') as stream:
        head = stream.read(_SAMPLE_BYTES)
    head = head[:head.rfind(b'\n') + 1]
    try:
        sample = pacsv.read_csv(
            pa.BufferReader(head),
            read_options=pacsv.ReadOptions(column_names=layout.columns, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter='|', quote_char=False,
                                              invalid_row_handler=lambda row: 'skip'),
            convert_options=pacsv.ConvertOptions(
                column_types={c: t for c, t in column_types.items() if t == _TEXT},
                null_values=NULL_TOKENS, strings_can_be_null=True))
    except pa.ArrowInvalid:
        return []
    named = layout.naming_columns
    return [name for name, kind in column_types.items()
            if kind == _TEXT and name not in named
            and len(pc.unique(sample.column(name))) > sample.num_rows // 4]


def _cast_numbers(table: pa.Table, numeric: list[str], bad_rows: dict[int, str]) -> pa.Table:
    """Cast numeric columns read as text to float, recording rows that hold something else."""
    for name in numeric:
        column = table.column(name)
        not_numbers = _not_numbers(pc.unique(column).drop_null().to_pylist())
        if not_numbers:
            is_bad = pc.fill_null(pc.is_in(column, pa.array(not_numbers)), False)
            for row in np.flatnonzero(is_bad.to_numpy(zero_copy_only=False)):
                text = column[int(row)].as_py()[:_MAX_TEXT]
                bad_rows.setdefault(int(row), f'{name}: not a number: {text!r}')
            column = pc.if_else(is_bad, None, column)
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pc.cast(column, pa.float64()))
    return table



def _not_numbers(texts: list[str]) -> list[str]:
    """The texts Arrow does not read as a float. Python's float() rejects most of them
    cheaply; the few it accepts and Arrow does not ('1_000', non-ASCII digits) are found by
    asking Arrow, one by one only when the cast of them all fails."""
    accepted, rejected = [], []
    for text in texts:
        (accepted if _is_number(text) else rejected).append(text)
    try:
        pc.cast(pa.array(accepted, pa.string()), pa.float64())
    except pa.ArrowInvalid:
        rejected += [text for text in accepted if not _arrow_reads_float(text)]
    return rejected


def _arrow_reads_float(text: str) -> bool:
    try:
        pc.cast(pa.scalar(text, pa.string()), pa.float64())
    except pa.ArrowInvalid:
        return False
    return True


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _scan_lines(path: Path, field_count: int, source: io.BytesIO | None = None,
                ) -> tuple[np.ndarray, list[MalformedLine]]:
    """Line number of each parsed row, and the lines Arrow skipped (slow, only on errors)."""
    row_lines = []
    malformed = []
    if source is not None:
        source.seek(0)
    with source if source is not None else open(path, 'rb') as stream:
        stream.readline()
        for number, raw in enumerate(stream, start=2):
            line = raw.rstrip(b'\r\n')
            if not line:
                continue
            fields = line.count(b'|') + 1
            if fields == field_count:
                row_lines.append(number)
            else:
                malformed.append(MalformedLine(
                    str(path), number, f'{fields} fields where the header has {field_count}'))
    return np.asarray(row_lines, dtype=np.int64), malformed


