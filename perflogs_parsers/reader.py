"""Read ReFrame perflogs of any format into one tidy pandas DataFrame.

Every perflog file starts with a header that names its ``|``-separated columns (ReFrame writes
it and renames the file to ``.log.hN`` when it changes), so the reader needs no format
configuration: it recognises the columns by name.

* Wide formats (this project's, ReFrame's default, custom ones): one line per test case with
  ``<var>_value|_unit|_ref|_lower_thres|_upper_thres`` columns per performance variable.
* The multiline format (``logging.perflog_multiline``): one line per performance variable with
  ``perf_var|perf_value|perf_unit|perf_ref|perf_lower_thres|perf_upper_thres`` columns.

The result has one row per (run, test variant, performance variable): see :data:`CORE_COLUMNS`.
Lines that cannot be read are reported with file and line number and skipped; a failed test's
row (values ``None``) is kept with a NaN value.

Parsing is done by Arrow's CSV reader with text columns dictionary-encoded, so a million lines
take less memory than ``pandas.read_csv`` and well under twice its time, although the tidy frame
has a row per variable (see ``bench/perflog_read.py``).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pandas.api.types import union_categoricals

from benchmarks.core.errors import InputError

#: Columns of the tidy frame that every read produces, in order. Parameter columns follow
#: ``display_name``; any other header column (``jobid``, ``job_nodelist``...) comes after
#: ``result`` under its header name, and ``file`` is last.
CORE_COLUMNS = (
    'timestamp', 'system', 'partition', 'environ', 'test', 'display_name',
    'variable', 'value', 'unit', 'reference', 'lower_thres', 'upper_thres', 'result',
)

#: Per-variable header suffixes and the tidy column each one becomes.
PERF_FIELDS = {
    'value': 'value',
    'unit': 'unit',
    'ref': 'reference',
    'lower_thres': 'lower_thres',
    'upper_thres': 'upper_thres',
    'result': 'perf_result',
}
_NUMERIC_PERF_FIELDS = ('value', 'ref', 'lower_thres', 'upper_thres')
_MULTILINE_VARIABLE = 'perf_var'

#: How ReFrame spells a missing value: ``None`` in perf columns, ``null`` (JSON) elsewhere.
NULL_TOKENS = ['None', 'null', '']

_PERFLOG_NAME = re.compile(r'\.log(\.h\d+)?$')
_PARAMETER = re.compile(r'%([^\s=]+)=(\S*)')
_MAX_TEXT = 120


@dataclass(frozen=True)
class MalformedLine:
    """A perflog line that was skipped, with the reason."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f'{self.path}:{self.line}: {self.reason}'


@dataclass
class ReadReport:
    """What a read saw: files, record count, and everything it could not use."""

    files: list[str] = field(default_factory=list)
    records: int = 0
    malformed: list[MalformedLine] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    records_without_performance: int = 0

    def messages(self) -> list[str]:
        """One line per problem, for printing to stderr."""
        lines = [f'{path}: skipped: {why}' for path, why in self.skipped_files]
        lines += [f'{bad}' for bad in self.malformed]
        return lines


def find_perflog_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named on the command line plus every ``*.log`` / ``*.log.hN`` under folders.

    Rotated files come before the current one so that rows stay in the order they were written.
    """
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            in_folder = [p for p in path.rglob('*') if p.is_file() and _PERFLOG_NAME.search(p.name)]
            found += sorted(in_folder, key=_write_order)
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f'perflog path not found: {path}')

    if not found:
        raise InputError(f'no perflog files (*.log, *.log.hN) under: {", ".join(map(str, paths))}')

    return found


def _write_order(path: Path) -> tuple:
    # Test.log.h0 (oldest) < Test.log.h1 < Test.log (current)
    match = _PERFLOG_NAME.search(path.name)
    base = path.name[:match.start()]
    rotation = int(match.group(1)[2:]) if match.group(1) else float('inf')
    return (str(path.parent), base, rotation)


def read_perflogs(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, ReadReport]:
    """Read perflog files and folders into one tidy frame, plus a report of what was skipped.

    Raises :class:`InputError` when a path does not exist or holds no perflog files; a
    malformed line or an unreadable file never raises, it is reported.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    report = ReadReport()
    frames = []
    for path in find_perflog_files(paths):
        report.files.append(str(path))
        frame = _read_one(path, report)
        if frame is not None:
            frames.append(frame)

    return _concat(frames), report


def _read_one(path: Path, report: ReadReport) -> pd.DataFrame | None:
    try:
        with open(path, 'rb') as stream:
            header = stream.readline().decode('utf-8', errors='replace').rstrip('\r\n')
    except OSError as err:
        report.skipped_files.append((str(path), f'cannot read: {err.strerror}'))
        return None

    if not header.strip():
        report.skipped_files.append((str(path), 'empty file or empty header line'))
        return None

    layout = _Layout.from_header(header)
    if not layout.perf_columns:
        report.skipped_files.append((str(path), 'header names no performance variables'))
        return None

    parsed = _parse_recovering(path, layout, report)
    if parsed is None:
        return None
    table, times, malformed = parsed
    report.malformed += malformed
    report.records += table.num_rows
    if layout.variable_column is not None:
        has_variable = pc.is_valid(table.column(layout.variable_column))
        # The sum of no rows is null, not 0 (a multiline file holding only its header).
        with_variable = pc.sum(has_variable).as_py() or 0
        report.records_without_performance += table.num_rows - with_variable
        keep = has_variable.to_numpy(zero_copy_only=False)
        table, times = table.filter(has_variable), times[keep]

    return _tidy(table, times, layout, path)


def _parse_recovering(path: Path, layout: _Layout, report: ReadReport,
                      ) -> tuple[pa.Table, np.ndarray, list[MalformedLine]] | None:
    """:func:`_parse`, retried once for each error a file can recover from: a line longer
    than Arrow's block (a huge field) gets a block as large as the file, and lines that are
    not UTF-8 (they break Arrow's text conversion, or its bad-row callback when their field
    count is wrong too) are blanked and reported. Any other error skips the file, reported."""
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
            report.skipped_files.append((str(path), f'cannot parse: {err}'))
            return None


@dataclass
class _Layout:
    """Which header columns hold what."""

    columns: list[str]
    #: variable name -> {perf field suffix -> column}; one entry keyed '' in multiline files
    perf_columns: dict[str, dict[str, str]]
    variable_column: str | None

    @classmethod
    def from_header(cls, header: str) -> _Layout:
        columns = _unique_names(header.split('|'))
        names = set(columns)
        if _MULTILINE_VARIABLE in names and 'perf_value' in names:
            fields = {suffix: f'perf_{suffix}' for suffix in PERF_FIELDS
                      if f'perf_{suffix}' in names}
            return cls(columns, {'': fields}, _MULTILINE_VARIABLE)

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
    def numeric_columns(self) -> list[str]:
        numeric = [f[suffix] for f in self.perf_columns.values()
                   for suffix in _NUMERIC_PERF_FIELDS if suffix in f]
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


_TEXT = pa.dictionary(pa.int32(), pa.string())
_TIME_TEXT = 'job_completion_time'
_TIME_UNIX = 'job_completion_time_unix'
_NAT = np.iinfo(np.int64).min
_MAX_NS = np.iinfo(np.int64).max
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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


def _parse(path: Path, layout: _Layout, source: io.BytesIO | None = None,
           block_size: int | None = None) -> tuple[pa.Table, np.ndarray, list[MalformedLine]]:
    """Arrow-parse one file into a table plus completion times (ns since the epoch, UTC).

    Lines with the wrong number of fields, a non-numeric value or an unreadable time are
    reported and left out. ``source`` replaces the file's content when given; ``block_size``
    replaces Arrow's default (it must exceed the longest line).
    """
    numeric = layout.numeric_columns
    column_types = {c: (pa.float64() if c in numeric else _TEXT) for c in layout.columns}
    if _TIME_TEXT in column_types:
        column_types[_TIME_TEXT] = pa.string()
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

    times = _completion_times(table, bad_rows)
    if _TIME_TEXT in table.column_names:
        table = table.drop_columns([_TIME_TEXT])
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


def _completion_times(table: pa.Table, bad_rows: dict[int, str]) -> np.ndarray:
    """Job completion time of each row in ns since the epoch (UTC); NaT where not written.

    The Unix time column is exact when present; otherwise the ISO 8601 text is parsed, and a
    time without UTC offset is taken as local time, which is how ReFrame writes it.
    """
    names = table.column_names
    times = np.full(table.num_rows, _NAT, dtype=np.int64)
    if _TIME_UNIX in names:
        seconds = _float_array(table.column(_TIME_UNIX))
        known = ~np.isnan(seconds)
        times[known] = np.round(seconds[known] * 1e9).astype(np.int64)
        if known.all():
            return times
    if _TIME_TEXT in names:
        from_text = _parse_times(table.column(_TIME_TEXT), bad_rows)
        times = np.where(times == _NAT, from_text, times)
    return times


def _parse_times(texts: pa.ChunkedArray, bad_rows: dict[int, str]) -> np.ndarray:
    try:
        # Fast path: every time carries its UTC offset (this project's format).
        parsed = pc.cast(texts, pa.timestamp('ns', tz='UTC'))
        return parsed.cast(pa.int64()).to_numpy().astype(np.int64, copy=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass

    encoded = pc.dictionary_encode(texts).combine_chunks()
    lookup = np.array([_parse_time(text) for text in encoded.dictionary.to_pylist()] + [_NAT],
                      dtype=np.int64)
    # Null texts have no index; the trailing NaT is what they pick.
    indices = pc.fill_null(encoded.indices, len(lookup) - 1).to_numpy(zero_copy_only=False)
    times = lookup[indices]
    for row in np.flatnonzero((times == _NAT) & (indices != len(lookup) - 1)):
        text = encoded.dictionary[int(indices[row])].as_py()[:_MAX_TEXT]
        bad_rows.setdefault(int(row), f'{_TIME_TEXT}: not an ISO 8601 time: {text!r}')
    return times


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
        return _NAT
    return nanoseconds if _NAT < nanoseconds <= _MAX_NS else _NAT


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


def _tidy(table: pa.Table, times: np.ndarray, layout: _Layout, path: Path) -> pd.DataFrame:
    """Turn parsed records into one row per (record, performance variable)."""
    records = table.num_rows
    wide = layout.variable_column is None
    per_record = len(layout.perf_columns) if wide else 1
    rows = records * per_record

    def repeat(codes: np.ndarray) -> np.ndarray:
        return np.repeat(codes, per_record) if per_record > 1 else codes

    def text(name: str, fallback: str | None = None) -> pd.Categorical | pd.Series:
        if name not in layout.columns:
            return _constant(fallback, rows)
        column = table.column(name)
        if _mostly_unique(column):
            # Job ids and the like: a category per row would cost more than the strings.
            decoded = pc.cast(column, pa.string()).combine_chunks()
            if per_record > 1:
                decoded = decoded.take(np.repeat(np.arange(records), per_record))
            return decoded.to_pandas()
        values = _categorical(column)
        return pd.Categorical.from_codes(repeat(values.codes), dtype=values.dtype,
                                         validate=False)

    path_system, path_partition = _system_partition_from_path(path)
    columns: dict[str, object] = {
        'timestamp': pd.DatetimeIndex(repeat(times), dtype='datetime64[ns, UTC]'),
        'system': text('system', path_system),
        'partition': text('partition', path_partition),
        'environ': text('environ'),
    }
    consumed = {'job_completion_time', 'job_completion_time_unix', 'system', 'partition',
                'environ', 'result'}

    display_source = next((c for c in ('display_name', 'name') if c in layout.columns), None)
    if display_source is None:
        display = _constant(_path_test(path), records)
    else:
        display = _categorical(table.column(display_source))
        consumed.add(display_source)
    display_codes = repeat(display.codes)
    tests, parameters = _split_display_names(display.categories)
    columns['test'] = _recode(display_codes, tests)
    columns['display_name'] = pd.Categorical.from_codes(display_codes, dtype=display.dtype,
                                                        validate=False)
    for parameter, values in parameters.items():
        columns[parameter] = (text(parameter) if parameter in layout.columns
                              else _recode(display_codes, values))
    consumed |= set(parameters)

    if wide:
        variables = list(layout.perf_columns)
        columns['variable'] = pd.Categorical.from_codes(
            np.tile(np.arange(per_record, dtype=np.int16), records), _text_index(variables))
        for suffix, tidy_name in PERF_FIELDS.items():
            sources = [layout.perf_columns[var].get(suffix) for var in variables]
            if any(sources):
                columns[tidy_name] = (_interleave_floats(table, sources, records)
                                      if suffix in _NUMERIC_PERF_FIELDS
                                      else _interleave_categoricals(table, sources, records))
    else:
        columns['variable'] = text(layout.variable_column)
        for suffix, source in layout.perf_columns[''].items():
            columns[PERF_FIELDS[suffix]] = (_float_array(table.column(source))
                                            if suffix in _NUMERIC_PERF_FIELDS else text(source))
    consumed |= {layout.variable_column} | {column for fields in layout.perf_columns.values()
                                            for column in fields.values()}
    columns['result'] = text('result')

    for name in layout.columns:
        if name not in consumed:
            columns[name] = text(name)
    columns['file'] = _constant(str(path), rows)
    return pd.DataFrame(_ordered(columns, list(parameters)), copy=False)


def _ordered(columns: dict, parameters: list[str]) -> dict:
    front = ['timestamp', 'system', 'partition', 'environ', 'test', 'display_name', *parameters,
             'variable', 'value', 'unit', 'reference', 'lower_thres', 'upper_thres', 'result',
             'perf_result']
    ordered = {name: columns[name] for name in front if name in columns}
    ordered.update((name, values) for name, values in columns.items() if name not in ordered)
    return ordered


def _text_index(values: Iterable) -> pd.Index:
    # One category dtype everywhere, or union_categoricals refuses to merge files.
    return pd.Index(list(values), dtype=str)


def _categorical(column: pa.ChunkedArray) -> pd.Categorical:
    """Pandas categorical from an Arrow text column, without decoding the strings."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    if column.num_chunks > 1:
        column = column.unify_dictionaries()
    if column.num_chunks == 0:
        return _constant(None, 0)
    indices = pa.chunked_array([chunk.indices for chunk in column.chunks])
    categories = pd.Index(column.chunk(0).dictionary.to_pandas(), dtype=str)
    # Smallest code type first: the codes are repeated once per performance variable.
    codes = pc.fill_null(indices, -1).to_numpy().astype(_code_type(len(categories)), copy=False)
    return pd.Categorical.from_codes(codes, categories, validate=False)


def _code_type(categories: int) -> type:
    for code_type in (np.int8, np.int16, np.int32):
        if categories < np.iinfo(code_type).max:
            return code_type
    return np.int64


def _mostly_unique(column: pa.ChunkedArray) -> bool:
    """Whether most rows hold a distinct text (from the per-block dictionaries, cheaply)."""
    if not pa.types.is_dictionary(column.type) or len(column) < 1000:
        return False
    return sum(len(chunk.dictionary) for chunk in column.chunks) > len(column) // 4


def _recode(codes: np.ndarray, values: list[str | None]) -> pd.Categorical:
    """Categorical whose row i is ``values[codes[i]]`` (``None`` and code -1 are missing)."""
    categories = sorted({value for value in values if value is not None})
    position = {value: index for index, value in enumerate(categories)}
    # The trailing -1 is what code -1 (no display name) picks.
    lookup = np.array([position.get(value, -1) for value in values] + [-1], dtype=np.int32)
    return pd.Categorical.from_codes(lookup[codes], _text_index(categories), validate=False)


def _constant(value: str | None, length: int) -> pd.Categorical:
    if value is None:
        return pd.Categorical.from_codes(np.full(length, -1, dtype=np.int8), _text_index([]))
    return pd.Categorical.from_codes(np.zeros(length, dtype=np.int8), _text_index([value]))


def _float_array(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy().astype(np.float64, copy=False)


def _interleave_floats(table: pa.Table, names: list[str | None], records: int) -> np.ndarray:
    out = np.empty((records, len(names)))
    for index, name in enumerate(names):
        out[:, index] = np.nan if name is None else _float_array(table.column(name))
    return out.ravel()


def _interleave_categoricals(table: pa.Table, names: list[str | None],
                             records: int) -> pd.Categorical:
    parts = [(_categorical(table.column(name)) if name is not None
              else _constant(None, records)) for name in names]
    merged = union_categoricals(parts, ignore_order=True)
    codes = merged.codes.reshape(len(names), records).T.ravel()
    return pd.Categorical.from_codes(codes, merged.categories, validate=False)


def _split_display_names(display_names: pd.Index) -> tuple[list[str], dict[str, list]]:
    """Test name and ``%name=value`` parameters of each distinct display name."""
    tests = []
    parameters: dict[str, list] = {}
    for index, display in enumerate(display_names):
        tests.append(display.split(' ', 1)[0])
        for name, value in _PARAMETER.findall(display):
            parameters.setdefault(name, [None] * len(display_names))[index] = value
    return tests, parameters


def _system_partition_from_path(path: Path) -> tuple[str | None, str | None]:
    # ReFrame's layout: <basedir>/<system>/<partition>/<Test>.log
    parts = path.resolve().parts
    if len(parts) >= 3:
        return parts[-3], parts[-2]
    return None, None


def _path_test(path: Path) -> str:
    """Test class name from a perflog file name (``Test.log.h0`` -> ``Test``)."""
    match = _PERFLOG_NAME.search(path.name)
    return path.name[:match.start()] if match else path.stem


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-file frames, merging categories and filling absent columns."""
    if not frames:
        return _empty_frame()

    names: list[str] = []
    for frame in frames:
        names += [name for name in frame.columns if name not in names]
    names = list(_ordered({name: None for name in names if name != 'file'},
                          _parameter_names(frames))) + ['file']

    columns = {}
    for name in names:
        parts = [frame[name] if name in frame.columns else None for frame in frames]
        columns[name] = _concat_column(parts, [len(f) for f in frames])

    combined = pd.DataFrame(columns, copy=False)
    for name in _parameter_names(frames):
        combined[name] = _typed_parameter(combined[name].array)
    return combined


def _parameter_names(frames: list[pd.DataFrame]) -> list[str]:
    names: list[str] = []
    for frame in frames:
        columns = list(frame.columns)
        start, stop = columns.index('display_name') + 1, columns.index('variable')
        names += [name for name in columns[start:stop] if name not in names]
    return names


def _concat_column(parts: list, lengths: list[int]):
    present = [part for part in parts if part is not None]
    if len(present) == len(parts) == 1:
        return present[0].array
    if all(isinstance(part.dtype, pd.CategoricalDtype) for part in present):
        filled = [part.array if part is not None else _constant(None, length)
                  for part, length in zip(parts, lengths, strict=True)]
        return union_categoricals(filled, ignore_order=True)
    if isinstance(present[0].dtype, pd.DatetimeTZDtype):
        filled = [part if part is not None
                  else pd.Series(pd.NaT, index=range(length), dtype=present[0].dtype)
                  for part, length in zip(parts, lengths, strict=True)]
        return pd.concat(filled, ignore_index=True).array
    if all(pd.api.types.is_float_dtype(part.dtype) for part in present):
        filled = [part.to_numpy() if part is not None else np.full(length, np.nan)
                  for part, length in zip(parts, lengths, strict=True)]
        return np.concatenate(filled)
    # Text that is categorical in one file and plain (mostly unique) in another.
    filled = [part.astype(str).where(part.notna()) if part is not None
              else pd.Series([None] * length, dtype=str)
              for part, length in zip(parts, lengths, strict=True)]
    return pd.concat(filled, ignore_index=True).array


def _typed_parameter(values):
    """Parameters whose values are all numbers become numbers (num_nodes=4 -> 4)."""
    if not isinstance(values, pd.Categorical):
        values = pd.Categorical(values)
    categories = pd.Index(values.categories, dtype=object)
    if len(categories) == 0:
        return values
    numbers = pd.to_numeric(categories, errors='coerce')
    if np.isnan(numbers).any():
        return values
    lookup = np.asarray(numbers, dtype=np.float64)
    floats = np.where(values.codes >= 0, lookup[values.codes], np.nan)
    if np.all(lookup == np.round(lookup)):
        if (values.codes < 0).any():
            return pd.array(floats, dtype='Int64')
        return floats.astype(np.int64)
    return floats


def _empty_frame() -> pd.DataFrame:
    columns = {name: _constant(None, 0) for name in CORE_COLUMNS}
    columns['timestamp'] = pd.DatetimeIndex([], tz='UTC')
    for name in ('value', 'reference', 'lower_thres', 'upper_thres'):
        columns[name] = np.array([], dtype=np.float64)
    columns['file'] = _constant(None, 0)
    return pd.DataFrame(columns)


def export_frame(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the tidy frame as CSV or Parquet, chosen by the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == '.csv':
        frame.to_csv(path, index=False)
    elif suffix in ('.parquet', '.pq'):
        frame.to_parquet(path, index=False)
    else:
        raise InputError(f'export file must end in .csv or .parquet: {path}')
