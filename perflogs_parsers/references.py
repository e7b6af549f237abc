"""ReFrame external references from the perflog history (``mlbench perflogs references``).

ReFrame 4.10 reads a test's references from a YAML file when the test sets
``reference = {'$ref': FILE}`` (looked up under ``RFM_REFERENCE_PREFIX``). This module writes
that file: per test class, indexed like the benchmark classes by
:data:`INDEX` (partition, device, num_nodes, scale), one ``[ref, lower, upper, unit]`` list
per performance variable, thresholds as fractions of ``ref`` as ReFrame expects.

The rule, per variant and variable:

* **Which runs.** Only runs with the settings of the variant's most recent run (display name,
  environ and every settings column), so one batch size or launcher feeds a reference; of
  those, the passed runs with a value, the latest ``window`` of them.
* **ref** is their median.
* **The band** is ``max(mad_k * 1.4826 * MAD, min_change * |ref|)``: ``mad_k`` robust standard
  deviations of the measured spread, never narrower than ``min_change`` of the reference (a
  week of very steady runs would otherwise fail on the first ordinary one). It is the rule
  ``mlbench perflogs regressions`` judges history by, so the two agree.
* **Only the bad side is bounded** for variables whose direction is known (throughput gets a
  lower bound, times and energy an upper bound, the other side ``null``): a faster run must
  not fail a benchmark, and ``regressions`` still reports it as an improvement. A variable of
  unknown direction is bounded on both sides.

Variants with fewer than ``min_runs`` such runs, or a median of 0 (where ReFrame would read
the thresholds as absolute values), get no reference and are listed in the notes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from perflogs_parsers.formats import PERFORMANCE_VARIABLES, variable_sort_key
from perflogs_parsers.regressions import noise_band
from perflogs_parsers.rules import HIGHER, LOWER, Settings, direction_of, history_keys

#: Index of every test's references: ReFrame's ``$partition`` is ``system:partition``.
INDEX = ('$partition', 'device', 'num_nodes', 'scale')
_VARIANT = ['test', 'system', 'partition', 'device', 'num_nodes', 'scale']
_FRACTION_DIGITS = 4


@dataclass(frozen=True)
class Reference:
    """One variable's reference, as ReFrame reads it, and what it was computed from."""

    value: float
    lower: float | None
    upper: float | None
    unit: str | None
    runs: int

    def as_list(self) -> list:
        return [self.value, self.lower, self.upper, self.unit]


def build_references(frame: pd.DataFrame, settings: Settings | None = None,
                     min_runs: int = 5) -> tuple[dict, list[str]]:
    """The references document (test class -> ``$index`` and levels) and one note per
    variant or variable that got no reference, with the reason."""
    settings = settings or Settings()
    notes: list[str] = []
    missing = [name for name in _VARIANT if name not in frame.columns]
    if missing:
        return {}, [f'no references: the perflogs have no {", ".join(missing)} column']

    usable = frame.dropna(subset=_VARIANT)
    document: dict = {}
    groups = usable.groupby(_VARIANT, observed=True, sort=True)
    for (test, system, partition, device, num_nodes, scale), runs in groups:
        chosen = _same_settings_as_latest(runs)
        where = f'{test} {system}:{partition} device={device} num_nodes={num_nodes} ' \
                f'scale={scale}'
        if len(chosen) < len(runs):
            notes.append(f'{where}: {_runs(runs) - _runs(chosen)} earlier runs with other '
                         'settings left out')
        passed = chosen[chosen['value'].notna()]
        if 'result' in passed.columns:
            passed = passed[passed['result'].astype(str) == 'pass']
        references = {}
        for variable, series in passed.groupby('variable', observed=True, sort=False):
            reference = _reference(series, str(variable), settings)
            if reference.runs < min_runs:
                notes.append(f'{where} {variable}: {reference.runs} passed runs, '
                             f'{min_runs} needed')
            elif reference.value == 0:
                notes.append(f'{where} {variable}: median 0, no relative band')
            else:
                references[str(variable)] = reference.as_list()
        if references:
            test_entry = document.setdefault(str(test), {'$index': list(INDEX)})
            levels = test_entry.setdefault(f'{system}:{partition}', {})
            levels = levels.setdefault(str(device), {}).setdefault(int(num_nodes), {})
            levels[str(scale)] = {name: references[name]
                                 for name in sorted(references, key=variable_sort_key)}
    return document, notes


def _runs(frame: pd.DataFrame) -> int:
    return frame['timestamp'].nunique()


def _same_settings_as_latest(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of the latest run's history (display name, environ and settings; system and
    partition are those of the whole group)."""
    latest = runs.loc[runs['timestamp'].idxmax()]
    keep = np.ones(len(runs), dtype=bool)
    for key in history_keys(runs.columns):
        column = runs[key]
        keep &= (column.isna() if pd.isna(latest[key]) else column == latest[key]).to_numpy()
    return runs[keep]


def _reference(series: pd.DataFrame, variable: str, settings: Settings) -> Reference:
    series = series.sort_values('timestamp').tail(settings.window)
    values = series['value'].to_numpy(dtype=np.float64)
    unit = _unit(series, variable)
    if len(values) == 0:
        return Reference(math.nan, None, None, unit, 0)
    median, half_width = noise_band(values, settings)
    fraction = _ceil(half_width / abs(median)) if median else math.nan
    better = direction_of(variable, unit, settings.directions)
    lower = None if better == LOWER else -fraction
    upper = None if better == HIGHER else fraction
    return Reference(float(f'{median:.6g}'), lower, upper, unit, len(values))


def _unit(series: pd.DataFrame, variable: str) -> str | None:
    units = series['unit'].dropna() if 'unit' in series.columns else pd.Series([], dtype=str)
    return str(units.iloc[-1]) if len(units) else PERFORMANCE_VARIABLES.get(variable)


def _ceil(fraction: float) -> float:
    # Rounded outwards, so the written band is never narrower than the rule's.
    scale = 10 ** _FRACTION_DIGITS
    return math.ceil(fraction * scale) / scale


def render_references(document: dict, *, sources: list[str], settings: Settings,
                      min_runs: int) -> str:
    """The YAML text, with a comment saying where it came from and the rule."""
    generated = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    header = [
        f'# ReFrame external references written by `mlbench perflogs references` on {generated}',
        f'# from {len(sources)} perflog file(s). Per variant: the median of the latest '
        f'{settings.window} passed runs',
        f'# with the latest run\'s settings (at least {min_runs}); band max({settings.mad_k:g} '
        f'x 1.4826 x MAD, {settings.min_change:g} x median),',
        '# on the bad side only for variables whose direction is known. Use with',
        "# reference = {'$ref': '<this file>'} and RFM_REFERENCE_PREFIX=<its folder>.",
    ]
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=100)
    return '\n'.join(header) + '\n' + body


def write_references(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half."""
    path = Path(path)
    partial = path.with_name(f'.{path.name}.partial')
    partial.write_text(text, encoding='utf-8')
    partial.replace(path)
    return path
