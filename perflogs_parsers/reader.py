"""Read ReFrame perflogs of any format into one tidy pandas DataFrame.

Every perflog file starts with a header that names its ``|``-separated columns (ReFrame writes
it and renames the file to ``.log.hN`` when it changes), so the reader needs no format
configuration: it recognises the columns by name.

* Wide formats (this project's, ReFrame's default, custom ones): one line per test case with
  ``<var>_value|_unit|_ref|_lower_thres|_upper_thres`` columns per performance variable.
* The multiline format (``logging.perflog_multiline``): one line per performance variable with
  ``perf_var|perf_value|perf_unit|perf_ref|perf_lower_thres|perf_upper_thres`` columns.

The result has one row per (run, test variant, performance variable): see
:data:`~perflogs_parsers.frame.CORE_COLUMNS`. Lines that cannot be read are reported with file
and line number and skipped; a failed test's row (values ``None``) is kept with a NaN value.

The work is split by job: :mod:`~perflogs_parsers.files` finds the files,
:mod:`~perflogs_parsers.parsing` parses one with recovery, :mod:`~perflogs_parsers.frame`
builds and joins the frames. ``bench/perflog_read.py`` measures it against
``pandas.read_csv``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc

from perflogs_parsers.errors import PerflogError
from perflogs_parsers.files import find_perflog_files
from perflogs_parsers.frame import CORE_COLUMNS, concat, tidy
from perflogs_parsers.parsing import Layout, MalformedLine, SkippedFile, parse_file

__all__ = ['CORE_COLUMNS', 'MalformedLine', 'ReadReport', 'export_frame', 'find_perflog_files',
           'read_perflogs']

_PARQUET_SUFFIXES = ('.parquet', '.pq')
EXPORT_SUFFIXES = ('.csv', *_PARQUET_SUFFIXES)


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


def read_perflogs(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, ReadReport]:
    """Read perflog files and folders into one tidy frame, plus a report of what was skipped.

    Raises :class:`PerflogError` when a path does not exist or holds no perflog files; a
    malformed line or an unreadable file never raises, it is reported.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    report = ReadReport()
    frames = []
    for path in find_perflog_files(paths):
        report.files.append(str(path))
        try:
            frames.append(_read_one(path, report))
        except SkippedFile as skipped:
            report.skipped_files.append((str(path), str(skipped)))

    return concat(frames), report


def _read_one(path: Path, report: ReadReport) -> pd.DataFrame:
    try:
        with open(path, 'rb') as stream:
            header = stream.readline().decode('utf-8', errors='replace').rstrip('\r\n')
    except OSError as err:
        raise SkippedFile(f'cannot read: {err.strerror}') from None
    if not header.strip():
        raise SkippedFile('empty file or empty header line')

    layout = Layout.from_header(header)
    if not layout.perf_columns:
        raise SkippedFile('header names no performance variables')

    table, times, malformed = parse_file(path, layout)
    report.malformed += malformed
    report.records += table.num_rows
    if layout.variable_column is not None:
        has_variable = pc.is_valid(table.column(layout.variable_column))
        # The sum of no rows is null, not 0 (a multiline file holding only its header).
        with_variable = pc.sum(has_variable).as_py() or 0
        report.records_without_performance += table.num_rows - with_variable
        keep = has_variable.to_numpy(zero_copy_only=False)
        table, times = table.filter(has_variable), times[keep]

    return tidy(table, times, layout, path)


def export_frame(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the tidy frame as CSV or Parquet, chosen by the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == '.csv':
        frame.to_csv(path, index=False)
    elif suffix in _PARQUET_SUFFIXES:
        frame.to_parquet(path, index=False)
    else:
        raise PerflogError(f'export file must end in .csv or .parquet: {path}')
