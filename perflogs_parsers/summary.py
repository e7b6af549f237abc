"""Runs, failures and value statistics per history and variable (``mlbench perflogs summary``)."""

from __future__ import annotations

import pandas as pd

from perflogs_parsers.rules import VARIANT_KEYS, history_keys


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per history (variant and settings) and variable: unit, runs, failed runs,
    time span and the latest, median, lowest and highest value."""
    keys = [*history_keys(frame.columns), 'variable']
    ordered = frame.sort_values('timestamp', kind='stable')
    groups = ordered.groupby(keys, observed=True, dropna=False, sort=True)
    table = groups.agg(unit=('unit', 'last'), runs=('value', 'size'),
                       failed=('value', lambda values: int(values.isna().sum())),
                       first=('timestamp', 'min'), last=('timestamp', 'max'),
                       latest=('value', 'last'), median=('value', 'median'),
                       min=('value', 'min'), max=('value', 'max'))
    table = table.reset_index()
    front = [*VARIANT_KEYS, 'variable']
    return table[front + [name for name in table.columns if name not in front]]
