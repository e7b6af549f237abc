"""Build the tidy frame from parsed records, and join the frames of several files.

One row per (record, performance variable); text columns are pandas categoricals made from
Arrow's dictionaries without decoding the strings, so the frame costs little more than the
file. See :data:`CORE_COLUMNS` for the columns every frame has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.types import union_categoricals

from perflogs_parsers.files import path_test, system_partition_from_path
from perflogs_parsers.parsing import NUMERIC_PERF_FIELDS, PERF_FIELDS, Layout

#: Columns of the tidy frame that every read produces, in order. Parameter columns follow
#: ``display_name``; any other header column (``jobid``, ``job_nodelist``...) comes after
#: ``result`` under its header name, and ``file`` is last.
CORE_COLUMNS = (
    'timestamp', 'system', 'partition', 'environ', 'test', 'display_name',
    'variable', 'value', 'unit', 'reference', 'lower_thres', 'upper_thres', 'result',
)

_PARAMETER = re.compile(r'%([^\s=]+)=(\S*)')
_REPEAT_NUMBER = re.compile(r' %\.repeat_no=\d+')


def tidy(table: pa.Table, times: np.ndarray, layout: Layout, path: Path) -> pd.DataFrame:
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
        if per_record == 1 and (not pa.types.is_dictionary(column.type)
                                or _mostly_unique(column)):
            # Job ids and the like, one row per record: a category per row would cost more
            # than the strings. With a row per variable, categories repeat codes, not texts.
            return pc.cast(column, pa.string()).combine_chunks().to_pandas()
        values = _categorical(column)
        if len(values.categories) == 1 and column.null_count == 0:
            # One value in the whole file (settings, environment, version): no codes to copy.
            return _constant(values.categories[0], rows)
        return pd.Categorical.from_codes(repeat(values.codes), dtype=values.dtype,
                                         validate=False)

    path_system, path_partition = system_partition_from_path(path)
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
        display = _constant(path_test(path), records)
    else:
        display = _without_repeat_number(_categorical(table.column(display_source)))
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
                                      if suffix in NUMERIC_PERF_FIELDS
                                      else _interleave_categoricals(table, sources, records))
    else:
        columns['variable'] = text(layout.variable_column)
        for suffix, source in layout.perf_columns[''].items():
            columns[PERF_FIELDS[suffix]] = (_float_array(table.column(source))
                                            if suffix in NUMERIC_PERF_FIELDS else text(source))
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
    if not pa.types.is_dictionary(column.type) or _mostly_unique(column):
        # One dictionary for all chunks: unifying many large per-chunk ones is far slower.
        column = pa.chunked_array([pc.dictionary_encode(
            pc.cast(column, pa.string()).combine_chunks())])
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
    if len(column) < 1000:
        return False
    return sum(len(chunk.dictionary) for chunk in column.chunks) > len(column) // 4


def _recode(codes: np.ndarray, values: list[str | None]) -> pd.Categorical:
    """Categorical whose row i is ``values[codes[i]]`` (``None`` and code -1 are missing)."""
    categories = sorted({value for value in values if value is not None})
    position = {value: index for index, value in enumerate(categories)}
    # The trailing -1 is what code -1 (no display name) picks.
    lookup = np.array([position.get(value, -1) for value in values] + [-1],
                      dtype=_code_type(len(categories)))
    return pd.Categorical.from_codes(lookup[codes], _text_index(categories), validate=False)


def _constant(value: str | None, length: int) -> pd.Categorical:
    if value is None:
        return pd.Categorical.from_codes(np.full(length, -1, dtype=np.int8), _text_index([]))
    return pd.Categorical.from_codes(np.zeros(length, dtype=np.int8), _text_index([value]))


def _float_array(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy().astype(np.float64, copy=False)


def _interleave_floats(table: pa.Table, names: list[str | None], records: int) -> np.ndarray:
    """Row ``r * len(names) + i`` holds record r's value of column ``names[i]``."""
    columns = [table.column(name) if name is not None else None for name in names]
    present = [column for column in columns if column is not None]
    lengths = [len(chunk) for chunk in present[0].chunks] if present else [records]
    if any([len(chunk) for chunk in column.chunks] != lengths for column in present):
        columns = [pa.chunked_array([column.combine_chunks()]) if column is not None else None
                   for column in columns]
        lengths = [records]
    out = np.empty((records, len(names)))
    start = 0
    # One Arrow block at a time, all columns side by side: the rows are written whole and
    # stay in the CPU cache, several times faster than strided writes of whole columns.
    for index, length in enumerate(lengths):
        out[start:start + length] = np.stack(
            [column.chunk(index).to_numpy(zero_copy_only=False) if column is not None
             else np.full(length, np.nan) for column in columns], axis=1)
        start += length
    return out.ravel()


def _interleave_categoricals(table: pa.Table, names: list[str | None],
                             records: int) -> pd.Categorical:
    parts = [(_categorical(table.column(name)) if name is not None
              else _constant(None, records)) for name in names]
    merged = union_categoricals(parts, ignore_order=True)
    codes = merged.codes.reshape(len(names), records).T.ravel()
    return pd.Categorical.from_codes(codes, merged.categories, validate=False)


def _without_repeat_number(display: pd.Categorical) -> pd.Categorical:
    """Display names without the ``%.repeat_no=N`` that ``reframe --repeat`` adds, so that
    repeated runs join their variant's history."""
    names = [_REPEAT_NUMBER.sub('', name) for name in display.categories]
    if names == list(display.categories):
        return display
    return _recode(display.codes, names)


def _split_display_names(display_names: pd.Index) -> tuple[list[str], dict[str, list]]:
    """Test name and ``%name=value`` parameters of each distinct display name."""
    tests = []
    parameters: dict[str, list] = {}
    for index, display in enumerate(display_names):
        tests.append(display.split(' ', 1)[0])
        for name, value in _PARAMETER.findall(display):
            parameters.setdefault(name, [None] * len(display_names))[index] = value
    return tests, parameters


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-file frames, merging categories and filling absent columns."""
    if not frames:
        return empty_frame()

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
    integral = bool(np.all(lookup == np.round(lookup)))
    if not (values.codes < 0).any():
        return lookup.astype(np.int64)[values.codes] if integral else lookup[values.codes]
    floats = np.where(values.codes >= 0, lookup[values.codes], np.nan)
    return pd.array(floats, dtype='Int64') if integral else floats


def empty_frame() -> pd.DataFrame:
    columns = {name: _constant(None, 0) for name in CORE_COLUMNS}
    columns['timestamp'] = pd.DatetimeIndex([], tz='UTC')
    for name in ('value', 'reference', 'lower_thres', 'upper_thres'):
        columns[name] = np.array([], dtype=np.float64)
    columns['file'] = _constant(None, 0)
    return pd.DataFrame(columns)

