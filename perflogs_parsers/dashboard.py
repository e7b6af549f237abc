"""One self-contained HTML dashboard of perflogs: works offline, Plotly's JS embedded once.

Per benchmark (test class) it shows

* a time series per performance variable (energy and power included) with one line per
  history (system:partition, environ, parameters and the settings that differ), the
  reference band shaded, and the latest run circled when :mod:`perflogs_parsers.regressions`
  calls it a regression (red) or an improvement (green); hovering a point shows its run's
  settings and environment (torch, CUDA, driver...), so a driver change is visible;
* a scaling view: throughput and parallel efficiency against ``num_nodes``, one line per
  system:partition, device and scale, from the median of each variant's latest runs.

Every text that comes from a perflog is HTML-escaped, both in the page and in Plotly labels
(Plotly renders a subset of HTML in labels and turns entities back into characters).
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from perflogs_parsers.formats import ENVIRONMENT_COLUMNS, SETTINGS_COLUMNS, variable_sort_key
from perflogs_parsers.regressions import PROBLEMS, find_regressions, settings_label
from perflogs_parsers.rules import Settings, history_keys, reference_bounds

#: Runs per variant drawn in a time series; older ones are summarised in a note.
MAX_RUNS_PER_VARIANT = 1000
#: Latest successful runs per variant whose median is the point of the scaling view.
SCALING_RUNS = 5
#: Value span (max/min) above which a time series gets a logarithmic axis.
_LOG_SPAN = 20
#: Longer lists of latest runs that need attention start folded.
_OPEN_TABLE_ROWS = 12
_PALETTE = qualitative.Plotly + qualitative.D3
_HIGHLIGHT = {'regression': '#d62728', 'out of bounds': '#d62728', 'improvement': '#2ca02c'}
_PLOT_CONFIG = {'displaylogo': False, 'responsive': True}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.failed, td.regression, td.out-of-bounds { color: #b00; font-weight: bold; }
td.improvement { color: #080; }
section { margin-top: 2em; border-top: 2px solid #ddd; }
.note { color: #666; font-size: 0.9em; }
"""


def write_dashboard(frame: pd.DataFrame, path: str | Path, *,
                    settings: Settings | None = None, title: str = 'Perflog dashboard',
                    sources: list[str] | None = None) -> Path:
    """Write the dashboard of ``frame`` (as :func:`read_perflogs` returns it) to ``path``."""
    path = Path(path)
    path.write_text(render_dashboard(frame, settings=settings, title=title, sources=sources),
                    encoding='utf-8')
    return path


def render_dashboard(frame: pd.DataFrame, *, settings: Settings | None = None,
                     title: str = 'Perflog dashboard', sources: list[str] | None = None) -> str:
    """The dashboard as one HTML string."""
    verdicts = find_regressions(frame, settings)
    body = [f'<h1>{html.escape(title)}</h1>', _meta(frame, sources), _status_table(verdicts)]
    figure_count = 0
    for test in sorted(frame['test'].dropna().unique()):
        runs = frame[frame['test'] == test]
        body.append(f'<section><h2>{html.escape(str(test))}</h2>')
        for figure, note in (_time_series(runs, verdicts[verdicts['test'] == test]),
                             _scaling(runs)):
            if note:
                body.append(f'<p class="note">{html.escape(note)}</p>')
            if figure is not None:
                figure_count += 1
                body.append(pio.to_html(figure, full_html=False, include_plotlyjs=False,
                                        div_id=f'figure-{figure_count}', config=_PLOT_CONFIG))
        body.append('</section>')

    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{html.escape(title)}</title><style>{_STYLE}</style>'
            f'<script>{plotly.offline.get_plotlyjs()}</script></head>\n'
            f'<body data-figures="{figure_count}">\n' + '\n'.join(body) + '\n</body></html>\n')


def _meta(frame: pd.DataFrame, sources: list[str] | None) -> str:
    generated = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    times = frame['timestamp'].dropna()
    span = (f'runs from {times.min():%Y-%m-%d %H:%M} to {times.max():%Y-%m-%d %H:%M} UTC'
            if len(times) else 'no runs')
    files = f', {len(sources)} perflog files' if sources else ''
    return (f'<p class="meta">Generated {generated}: {len(frame)} measurements, {span}'
            f'{html.escape(files)}.</p>')


def _status_table(verdicts: pd.DataFrame) -> str:
    """Counts per status, then every latest run that needs attention."""
    counts = verdicts['status'].value_counts()
    summary = ', '.join(f'{count} {html.escape(status)}' for status, count in counts.items())
    problems = verdicts[verdicts['status'].isin(PROBLEMS | {'improvement'})]
    if problems.empty:
        return f'<p>Latest runs: {summary or "none"}. Nothing needs attention.</p>'

    header = ('<tr><th>status</th><th>system:partition</th><th>environ</th><th>variant</th>'
              '<th>variable</th><th>latest</th><th>baseline</th><th>why</th></tr>')
    rows = []
    for verdict in problems.to_dict('records'):
        status = str(verdict['status'])
        cells = [
            f'<td class="{status.replace(" ", "-")}">{html.escape(status)}</td>',
            _cell(f'{verdict["system"]}:{verdict["partition"]}'),
            _cell(verdict['environ']),
            _cell(verdict['display_name']),
            _cell(verdict['variable']),
            _cell(_number(verdict['value'], verdict['unit'])),
            _cell(_number(verdict['baseline'], verdict['unit'])),
            _cell(verdict['why']),
        ]
        rows.append('<tr>' + ''.join(cells) + '</tr>')
    opened = ' open' if len(rows) <= _OPEN_TABLE_ROWS else ''
    return (f'<p>Latest runs: {summary}.</p><details{opened}><summary>{len(rows)} latest '
            f'measurements need attention</summary><table class="status">{header}'
            + ''.join(rows) + '</table></details>')


def _cell(value) -> str:
    return f'<td>{html.escape("" if _missing(value) else str(value))}</td>'


def _number(value, unit) -> str:
    if _missing(value):
        return ''
    return f'{value:.6g} {"" if _missing(unit) else unit}'.strip()


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _variant_label(row: pd.Series | dict, parameters: list[str]) -> str:
    params = ' '.join(f'{name}={row[name]}' for name in parameters if not _missing(row[name]))
    return f'{row["system"]}:{row["partition"]} {row["environ"]} {params}'.strip()


def _parameters(frame: pd.DataFrame) -> list[str]:
    columns = list(frame.columns)
    return columns[columns.index('display_name') + 1:columns.index('variable')]


def _variables(runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Variables with at least one value, this project's in their order first, and those
    that never had a value."""
    measured = set(runs.loc[runs['value'].notna(), 'variable'].dropna().astype(str))
    ordered = sorted((str(var) for var in runs['variable'].dropna().unique()),
                     key=variable_sort_key)
    return ([var for var in ordered if var in measured],
            [var for var in ordered if var not in measured])


def _point_details(series: pd.DataFrame) -> pd.Series:
    """Per run: its settings and environment, one ``name=value`` per known column."""
    details = pd.Series('', index=series.index, dtype=object)
    for name in (*SETTINGS_COLUMNS, *ENVIRONMENT_COLUMNS):
        if name in series.columns:
            values = series[name].astype(object)
            known = values.notna()
            details[known] += '<br>' + name + '=' + values[known].astype(str).map(html.escape)
    return details


def _time_series(runs: pd.DataFrame, verdicts: pd.DataFrame) -> tuple[go.Figure | None, str]:
    variables, never_measured = _variables(runs)
    unmeasured = (f'No values logged for {", ".join(never_measured)}.'
                  if never_measured else '')
    if not variables:
        return None, unmeasured
    parameters = [p for p in _parameters(runs) if runs[p].notna().any()]
    keys = history_keys(runs.columns)
    units = runs.groupby('variable', observed=True)['unit'].first()
    figure = make_subplots(
        rows=len(variables), cols=1, shared_xaxes=True, vertical_spacing=0.06,
        subplot_titles=[html.escape(f'{var} ({units.get(var, "")})') for var in variables])
    highlights = _highlights(verdicts)
    truncated = 0
    variants = runs.groupby(keys, observed=True, dropna=False, sort=True)
    distinct = settings_label(variants.head(1))
    for index, (key, variant) in enumerate(variants):
        color = _PALETTE[index % len(_PALETTE)]
        first = variant.iloc[0]
        label = html.escape(f'{_variant_label(first, parameters)} '
                            f'{distinct.get(first.name, "")}'.strip())
        for row, variable in enumerate(variables, start=1):
            series = variant[variant['variable'] == variable].sort_values('timestamp')
            truncated = max(truncated, len(series) - MAX_RUNS_PER_VARIANT)
            series = series.tail(MAX_RUNS_PER_VARIANT)
            if series.empty:
                continue
            _add_reference_band(figure, series, row, color, label)
            figure.add_trace(go.Scatter(
                x=series['timestamp'], y=series['value'], mode='lines+markers', name=label,
                legendgroup=label, showlegend=row == 1, line={'color': color},
                marker={'size': 5}, text=label + _point_details(series),
                hovertemplate='%{x}<br>%{y:.4g}<br>%{text}<extra></extra>'), row=row, col=1)
            _add_highlight(figure, highlights.get((*map(str, key), str(variable))), row, label)
    for row, variable in enumerate(variables, start=1):
        values = runs.loc[runs['variable'] == variable, 'value'].dropna()
        if len(values) and values.min() > 0 and values.max() > _LOG_SPAN * values.min():
            # Variants that differ by orders of magnitude all stay readable.
            figure.update_yaxes(type='log', row=row, col=1)
    height = 260 * len(variables) + 120
    figure.update_layout(height=height, margin={'t': 60, 'b': 40}, hovermode='closest',
                         legend={'orientation': 'h', 'y': -0.08})
    note = (f'Only the latest {MAX_RUNS_PER_VARIANT} runs of each history are drawn. '
            if truncated > 0 else '') + unmeasured
    return figure, note.strip()


def _add_reference_band(figure: go.Figure, series: pd.DataFrame, row: int, color: str,
                        label: str) -> None:
    if 'reference' not in series.columns:
        return
    columns = [series[name].to_numpy(dtype=float)
               for name in ('reference', 'lower_thres', 'upper_thres')]
    bounds = [reference_bounds(*values) for values in zip(*columns, strict=True)]
    low = np.array([b[0] for b in bounds], dtype=float)
    high = np.array([b[1] for b in bounds], dtype=float)
    common = {'x': series['timestamp'], 'mode': 'lines', 'legendgroup': label,
              'showlegend': False, 'hoverinfo': 'skip'}
    if np.isfinite(low).any() and np.isfinite(high).any():
        figure.add_trace(go.Scatter(y=high, line={'width': 0, 'color': color}, **common),
                         row=row, col=1)
        figure.add_trace(go.Scatter(y=low, fill='tonexty', fillcolor=_transparent(color),
                                    line={'width': 0, 'color': color}, **common),
                         row=row, col=1)
        return
    for bound in (low, high):
        # A one-sided reference: a dashed line at the bound.
        if np.isfinite(bound).any():
            figure.add_trace(go.Scatter(y=bound, line={'width': 1, 'color': color,
                                                       'dash': 'dash'}, **common),
                             row=row, col=1)


def _transparent(color: str) -> str:
    red, green, blue = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f'rgba({red},{green},{blue},0.15)'


def _highlights(verdicts: pd.DataFrame) -> dict[tuple, dict]:
    """Verdicts that get a circle, keyed by their history keys and variable."""
    marked = verdicts[verdicts['status'].isin(_HIGHLIGHT) & verdicts['value'].notna()]
    keys = [*history_keys(verdicts.columns), 'variable']
    return {tuple(str(verdict[name]) for name in keys): verdict
            for verdict in marked.to_dict('records')}


def _add_highlight(figure: go.Figure, verdict: dict | None, row: int, label: str) -> None:
    if verdict is None:
        return
    color = _HIGHLIGHT[verdict['status']]
    figure.add_trace(go.Scatter(
        x=[verdict['time']], y=[verdict['value']], mode='markers',
        name=html.escape(verdict['status']), legendgroup=label, showlegend=False,
        marker={'size': 16, 'color': 'rgba(0,0,0,0)', 'line': {'width': 3, 'color': color}},
        text=[html.escape(f'{verdict["status"]}: {verdict["why"]}')],
        hovertemplate='%{text}<extra></extra>'), row=row, col=1)


def _scaling(runs: pd.DataFrame) -> tuple[go.Figure | None, str]:
    """Throughput and parallel efficiency against num_nodes, per device and scale."""
    throughput = runs[(runs['variable'] == 'throughput') & runs['value'].notna()]
    if 'num_nodes' not in runs.columns or throughput.empty:
        return None, 'No scaling view: the perflogs have no num_nodes column or throughput.'
    group_keys = ['system', 'partition', 'environ'] + [
        name for name in ('device', 'scale') if name in runs.columns]
    latest = (throughput.sort_values('timestamp')
              .groupby(group_keys + ['num_nodes'], observed=True, dropna=False)['value']
              .apply(lambda values: float(np.median(values.tail(SCALING_RUNS)))).reset_index())
    if latest['num_nodes'].nunique() < 2:
        return None, 'No scaling view: every run used the same num_nodes.'

    figure = make_subplots(rows=1, cols=2, subplot_titles=[
        'throughput (samples/s)', 'parallel efficiency vs the smallest node count'])
    for index, (key, line) in enumerate(latest.groupby(group_keys, observed=True,
                                                       dropna=False, sort=True)):
        line = line.sort_values('num_nodes')
        nodes = line['num_nodes'].to_numpy(dtype=float)
        values = line['value'].to_numpy(dtype=float)
        efficiency = values / (values[0] * nodes / nodes[0])
        key = key if isinstance(key, tuple) else (key,)
        label = html.escape(f'{key[0]}:{key[1]} ' + ' '.join(
            f'{name}={value}' for name, value in zip(group_keys[2:], key[2:], strict=True)))
        color = _PALETTE[index % len(_PALETTE)]
        common = {'x': nodes, 'mode': 'lines+markers', 'legendgroup': label,
                  'line': {'color': color}, 'text': [label] * len(nodes)}
        figure.add_trace(go.Scatter(y=values, name=label, hovertemplate=(
            '%{text}<br>%{x} nodes: %{y:.4g} samples/s<extra></extra>'), **common), row=1, col=1)
        figure.add_trace(go.Scatter(y=efficiency, name=label, showlegend=False, hovertemplate=(
            '%{text}<br>%{x} nodes: %{y:.1%}<extra></extra>'), **common), row=1, col=2)
    figure.update_xaxes(type='log', dtick=math.log10(2), title_text='num_nodes')
    figure.update_yaxes(type='log', row=1, col=1)
    figure.update_yaxes(tickformat='.0%', rangemode='tozero', row=1, col=2)
    figure.update_layout(height=420, margin={'t': 60, 'b': 40},
                         legend={'orientation': 'h', 'y': -0.25})
    return figure, ''
