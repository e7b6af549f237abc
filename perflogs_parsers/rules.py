"""The rules a verdict follows: which way a variable improves, reference bounds, settings.

Kept free of numpy and pandas so that the command line can show the defaults without
loading them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from perflogs_parsers.formats import HIGHER, LOWER, PERFORMANCE_VARIABLE_TABLE, SETTINGS_COLUMNS

__all__ = ['DIRECTIONS', 'HIGHER', 'LOWER', 'VARIANT_KEYS', 'Settings', 'direction_of',
           'history_keys', 'reference_bounds']

#: Direction of improvement of this project's performance variables.
DIRECTIONS = {var: better for var, (_, better) in PERFORMANCE_VARIABLE_TABLE.items()}

#: Columns that name one test variant; with ``variable`` they name one series of values.
VARIANT_KEYS = ('system', 'partition', 'environ', 'display_name')


def history_keys(columns) -> list[str]:
    """The variant keys plus the settings columns a frame has: runs compare only with runs of
    the same history, so two batch sizes of one variant are two histories. A settings column
    a perflog does not have is unknown, and unknown is a value of its own."""
    return [*VARIANT_KEYS, *(name for name in SETTINGS_COLUMNS if name in columns)]


_TIME_UNITS = {'s', 'sec', 'secs', 'second', 'seconds', 'ms', 'us', 'ns', 'min', 'mins',
               'minute', 'minutes', 'h', 'hour', 'hours'}


def direction_of(variable: str, unit: str | None,
                 overrides: dict[str, str] | None = None) -> str | None:
    """``'higher'`` or ``'lower'`` (is better), or None when neither name nor unit tells."""
    if overrides and variable in overrides:
        return overrides[variable]
    if variable in DIRECTIONS:
        return DIRECTIONS[variable]
    unit = (unit or '').strip().lower()
    if unit.endswith(('/s', '/sec', '/second', 'per second', '/h', 'flops')):
        return HIGHER
    if unit in _TIME_UNITS:
        return LOWER
    return None


@dataclass(frozen=True)
class Settings:
    """How much history a verdict needs and how wide the noise band is.

    The defaults keep false alarms rare: with 3 % Gaussian run-to-run noise and 20 earlier
    runs about 0.25 % of unchanged series are flagged while a 20 % slowdown is found 98 % of
    the time; changes under 5 % are never blamed on history (docs/perflogs.md has the table).
    """

    window: int = 20
    min_samples: int = 10
    mad_k: float = 4.0
    min_change: float = 0.05
    directions: dict[str, str] = field(default_factory=dict)


def reference_bounds(reference: float, lower: float, upper: float) -> tuple[float, float]:
    """Lowest and highest acceptable value as ReFrame computes them (NaN: unbounded)."""
    if reference is None or math.isnan(reference):
        return math.nan, math.nan
    if reference == 0:
        return lower, upper
    scale = abs(reference)
    low = reference + lower * scale if not math.isnan(lower) else math.nan
    high = reference + upper * scale if not math.isnan(upper) else math.nan
    return low, high
