"""Find performance regressions: the latest run of each history against the runs before it.

A history is one test variant under one set of settings (:func:`~perflogs_parsers.rules.
history_keys`: system, partition, environ, display name and the settings columns), so two
batch sizes of one variant never judge each other. For each history and variable the latest
run is compared with

* the **reference** ReFrame logged with it: ``ref * (1 + lower_thres)`` .. ``ref * (1 +
  upper_thres)`` (absolute thresholds when ``ref`` is 0, as in ReFrame 4.8+), and
* the **history**: the median of the previous ``window`` values, with a noise band of
  ``mad_k`` robust standard deviations (1.4826 x the median absolute deviation), never
  narrower than ``min_change`` of the median. At least ``min_samples`` previous values are
  needed for a verdict.

Whether a change is good or bad depends on the variable: higher is better for rates (units
ending in ``/s``), lower is better for times (``s``, ``ms``...); ``rules.DIRECTIONS`` names
this project's variables and callers may add their own.

When the latest run's environment (torch, CUDA, driver... the environment columns) differs
from that of earlier runs of its baseline, ``why`` says which column changed, so a driver
upgrade that coincides with a slowdown is visible at once.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from perflogs_parsers.formats import ENVIRONMENT_COLUMNS, SETTINGS_COLUMNS
from perflogs_parsers.rules import (
    HIGHER,
    LOWER,
    VARIANT_KEYS,
    Settings,
    direction_of,
    history_keys,
    reference_bounds,
)

_MAD_TO_SIGMA = 1.4826

#: Statuses, worst first; the first three make :func:`exit_code` non-zero. ``unmeasured``: a
#: passing run logged no value for the variable (e.g. energy on a node without counters).
STATUSES = ('failed', 'regression', 'out of bounds', 'improvement', 'changed', 'new', 'ok',
            'unmeasured')
PROBLEMS = frozenset(STATUSES[:3])
#: Columns of :func:`find_regressions`' table; the settings columns of the frame follow
#: ``display_name``.
RESULT_COLUMNS = ['system', 'partition', 'environ', 'test', 'display_name', 'variable', 'unit',
                  'better', 'time', 'value', 'runs', 'baseline', 'band', 'change',
                  'reference', 'lower_bound', 'upper_bound', 'status', 'why']


def find_regressions(frame: pd.DataFrame, settings: Settings | None = None) -> pd.DataFrame:
    """One row per history and variable: the latest run, its baseline and a status.

    Columns: :data:`RESULT_COLUMNS` and the settings columns; ``band`` is the half width of
    the noise band and ``change`` the latest value relative to the baseline. Worst statuses
    come first.
    """
    settings = settings or Settings()
    if frame.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)

    keys = history_keys(frame.columns)
    settings_columns = keys[len(VARIANT_KEYS):]
    history = _ids(frame, [*keys, 'variable'])
    times = frame['timestamp'].to_numpy(dtype='datetime64[ns]').view(np.int64)
    # Rows of each history together, oldest first: the last row of each is its latest.
    order = np.lexsort((times, history))
    ends = np.flatnonzero(np.diff(history[order], append=history.max() + 1)) + 1
    starts = np.concatenate(([0], ends[:-1]))
    values = frame['value'].to_numpy(dtype=np.float64)[order]
    latest = frame.iloc[order[ends - 1]].to_dict('records')
    environment = _Environment(frame, order)

    rows = []
    for row, start, end in zip(latest, starts, ends, strict=True):
        earlier = np.arange(start, end - 1)
        earlier = earlier[~np.isnan(values[earlier])][-settings.window:]
        verdict = _judge(row, values[earlier], settings)
        verdict.update((name, row[name]) for name in settings_columns)
        change = environment.change(end - 1, earlier)
        if change:
            verdict['why'] = f'{verdict["why"]}; {change}'
        rows.append(verdict)
    at = RESULT_COLUMNS.index('display_name') + 1
    result = pd.DataFrame(rows, columns=[*RESULT_COLUMNS[:at], *settings_columns,
                                         *RESULT_COLUMNS[at:]])
    rank = result['status'].map({status: index for index, status in enumerate(STATUSES)})
    order = np.lexsort((result['variable'].astype(str), result['display_name'].astype(str),
                        result['partition'].astype(str), result['system'].astype(str), rank))
    return result.iloc[order].reset_index(drop=True)


def _ids(frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Integer id per distinct combination of ``keys`` (missing values count)."""
    key = np.zeros(len(frame), dtype=np.int64)
    span = 1
    for name in keys:
        codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
        if span * (len(uniques) + 1) >= 2**62:
            key = np.unique(key, return_inverse=True)[1].astype(np.int64)
            span = int(key.max()) + 1
        key = key * (len(uniques) + 1) + (codes + 1)
        span *= len(uniques) + 1
    return key


class _Environment:
    """The environment columns of a frame in the order of its sorted rows, as codes."""

    def __init__(self, frame: pd.DataFrame, order: np.ndarray) -> None:
        self.columns = {}
        for name in ENVIRONMENT_COLUMNS:
            if name in frame.columns:
                codes, names = pd.factorize(frame[name], use_na_sentinel=True)
                self.columns[name] = (codes[order], np.asarray(names, dtype=object))

    def change(self, latest: int, earlier: np.ndarray) -> str:
        """``environment changed: torch_version 2.13.0 -> 2.14.1 (vs 20 of 20 earlier runs)``
        or '' when every column known in the latest and an earlier run agrees."""
        changes, differing = [], np.zeros(len(earlier), dtype=bool)
        for name, (codes, names) in self.columns.items():
            now, before = codes[latest], codes[earlier]
            other = (before != now) & (before >= 0)
            if now < 0 or not other.any():
                continue
            differing |= other
            previous = names[np.bincount(before[other]).argmax()]
            changes.append(f'{name} {previous} -> {names[now]}')
        if not changes:
            return ''
        return (f'environment changed: {", ".join(changes)} (vs {int(differing.sum())} of '
                f'{len(earlier)} earlier runs)')


def noise_band(values: np.ndarray, settings: Settings) -> tuple[float, float]:
    """The median of ``values`` and the half width of the noise band around it: ``mad_k``
    robust standard deviations, never narrower than ``min_change`` of the median. The one
    rule, so the verdicts here and the bands ``references`` writes agree."""
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    return median, max(settings.mad_k * _MAD_TO_SIGMA * mad, settings.min_change * abs(median))


def _judge(latest: dict, previous: np.ndarray, settings: Settings) -> dict:
    value = float(latest['value'])
    better = direction_of(str(latest['variable']), _text(latest.get('unit')),
                          settings.directions)
    low, high = reference_bounds(*(float(latest.get(name, math.nan))
                                   for name in ('reference', 'lower_thres', 'upper_thres')))
    baseline, band = noise_band(previous, settings) if len(previous) else (math.nan, math.nan)
    if len(previous) < settings.min_samples:
        band = math.nan  # too few earlier runs to tell noise from a change
    change = (value - baseline) / abs(baseline) if baseline else math.nan

    status, why = _verdict(value, better, baseline, band, low, high, len(previous),
                           _text(latest.get('result')))
    return {
        **{key: latest.get(key) for key in ('system', 'partition', 'environ', 'test',
                                             'display_name', 'variable', 'unit')},
        'better': better, 'time': latest['timestamp'], 'value': value,
        'runs': len(previous), 'baseline': baseline, 'band': band, 'change': change,
        'reference': latest.get('reference', math.nan), 'lower_bound': low, 'upper_bound': high,
        'status': status, 'why': why,
    }


def _verdict(value: float, better: str | None, baseline: float, band: float, low: float,
             high: float, runs: int, result: str | None) -> tuple[str, str]:
    if math.isnan(value):
        if result == 'pass':
            return 'unmeasured', 'no value logged by a passing run (not measured here)'
        return 'failed', f'no value logged (test result: {result or "unknown"})'

    reasons = []
    history_move = 0
    if not math.isnan(band):
        delta = value - baseline
        if abs(delta) > band:
            history_move = 1 if delta > 0 else -1
        reasons.append(_history_reason(delta, baseline, band, runs))
    else:
        reasons.append(f'only {runs} earlier run{"" if runs == 1 else "s"} with a value')

    reference_move = 0
    if not math.isnan(low) and value < low:
        reference_move = -1
        reasons.append(f'below the reference bound {low:.6g}')
    elif not math.isnan(high) and value > high:
        reference_move = 1
        reasons.append(f'above the reference bound {high:.6g}')

    sign = {HIGHER: 1, LOWER: -1}.get(better, 0)
    why = '; '.join(reasons)
    if sign and (history_move * sign < 0 or reference_move * sign < 0):
        return 'regression', why
    if not sign and reference_move:
        return 'out of bounds', why
    if sign and (history_move * sign > 0 or reference_move * sign > 0):
        return 'improvement', why
    if history_move:
        return 'changed', why
    if math.isnan(band):
        return 'new', why
    return 'ok', why


def _history_reason(delta: float, baseline: float, band: float, runs: int) -> str:
    if baseline == 0:
        return f'{delta:+.4g} vs median 0 of {runs} runs (noise band \u00b1{band:.4g})'
    return (f'{_percent(delta / abs(baseline))} vs median of {runs} runs '
            f'(noise band \u00b1{_percent(band / abs(baseline), signed=False)})')


def _percent(fraction: float, signed: bool = True) -> str:
    if math.isnan(fraction):
        return 'n/a'
    return f'{fraction * 100:+.1f}%' if signed else f'{fraction * 100:.1f}%'


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def settings_label(rows: pd.DataFrame) -> pd.Series:
    """Per row, the settings that tell its history from the others in ``rows``
    (``batch_size=512``), '' where all rows share them."""
    parts = [name + '=' + rows[name].astype(object).astype(str)
             for name in SETTINGS_COLUMNS
             if name in rows.columns and rows[name].astype(object).nunique(dropna=False) > 1]
    if not parts:
        return pd.Series('', index=rows.index, dtype=object)
    return pd.concat(parts, axis=1).agg(' '.join, axis=1)


def exit_code(result: pd.DataFrame) -> int:
    """1 when any latest run failed, regressed or left its reference bounds, else 0."""
    return int(result['status'].isin(PROBLEMS).any())
