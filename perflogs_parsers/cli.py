"""``mlbench perflogs summary|regressions|dashboard|references PATH...``

:func:`register` adds the subcommand to the ``mlbench`` parser; each action sets
``func(args) -> exit code``. Run standalone as ``python -m perflogs_parsers.cli perflogs ...``.

Exit codes: 0 fine; 1 ``regressions`` found a failed, regressed or out-of-bounds latest run;
2 bad input (a path that does not exist, no perflog files, no measurement left after the
filters, a malformed option value, an output file in a folder that does not exist), with a
one-line message. Every output path is checked before any perflog is read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from perflogs_parsers.errors import EXIT_BAD_INPUT, PerflogError
from perflogs_parsers.files import check_output_path
from perflogs_parsers.rules import HIGHER, LOWER, Settings

if TYPE_CHECKING:
    import pandas as pd

_MAX_REPORTED_LINES = 20
_RELATIVE_TIME = re.compile(r'^(\d+)\s*([hdw])$')
_UNITS = {'h': 'hours', 'd': 'days', 'w': 'weeks'}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``perflogs`` with its ``summary``, ``regressions``, ``dashboard`` and
    ``references`` actions."""
    perflogs = subparsers.add_parser(
        'perflogs', help='read ReFrame perflogs: summary, regressions, dashboard, references',
        description='Read ReFrame perflogs (files or perflogs/<system>/<partition>/ trees, '
                    'any format, rotated .log.hN included).')
    actions = perflogs.add_subparsers(dest='perflogs_action', required=True,
                                      metavar='{summary,regressions,dashboard,references}')

    selection = argparse.ArgumentParser(add_help=False)
    selection.add_argument('paths', nargs='+', metavar='PATH',
                           help='perflog file or folder (searched for *.log and *.log.hN)')
    selection.add_argument('--system', action='append', metavar='NAME[:PARTITION]',
                           help='only this system or system:partition (repeatable)')
    selection.add_argument('--test', metavar='REGEX',
                           help='only variants whose display name matches, e.g. '
                                '"resnet50" or "%%device=gpu"')
    selection.add_argument('--since', metavar='WHEN',
                           help='only runs completed since an ISO date/time or e.g. 30d, 12h, 2w')

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument('--format', choices=('table', 'csv', 'json'), default='table',
                        help='output format (default: table)')

    band = argparse.ArgumentParser(add_help=False)
    defaults = Settings()
    band.add_argument('--window', type=int, default=defaults.window,
                      help=f'latest runs in the baseline (default: {defaults.window})')
    band.add_argument('--mad-k', type=float, default=defaults.mad_k,
                      help='noise band half width in robust standard deviations '
                           f'(default: {defaults.mad_k})')
    band.add_argument('--min-change', type=float, default=defaults.min_change,
                      help='narrowest noise band, relative to the baseline '
                           f'(default: {defaults.min_change})')
    band.add_argument('--direction', action='append', default=[], metavar='VAR=higher|lower',
                      help='which way a variable improves, when its unit does not tell')
    judging = argparse.ArgumentParser(add_help=False, parents=[band])
    judging.add_argument('--min-samples', type=int, default=defaults.min_samples,
                         help='earlier runs needed for a verdict from history '
                              f'(default: {defaults.min_samples})')

    summary = actions.add_parser('summary', parents=[selection, output],
                                 help='runs, failures and values per variant and variable')
    summary.add_argument('--export', metavar='FILE',
                         help='also write every measurement to FILE (.csv or .parquet)')
    summary.set_defaults(func=_guarded(run_summary))

    regressions = actions.add_parser(
        'regressions', parents=[selection, output, judging],
        help='latest run vs reference and history; exit 1 on a regression or failure')
    regressions.set_defaults(func=_guarded(run_regressions))

    dashboard = actions.add_parser('dashboard', parents=[selection, judging],
                                   help='one self-contained HTML file with the plots')
    dashboard.add_argument('-o', '--output', default='report.html', metavar='FILE',
                           help='HTML file to write (default: report.html)')
    dashboard.add_argument('--title', default='Perflog dashboard', help='page title')
    dashboard.set_defaults(func=_guarded(run_dashboard))

    references = actions.add_parser(
        'references', parents=[selection, band],
        help='ReFrame external references (YAML) from the history of passed runs',
        description='Write a ReFrame 4.10 external-references file: per test class, '
                    'system:partition, device, num_nodes and scale, the median of the latest '
                    'passed runs with the settings of the most recent run, and a band of '
                    '--mad-k robust standard deviations (at least --min-change) on the bad '
                    'side. Tests read it with reference = {"$ref": FILE} under '
                    'RFM_REFERENCE_PREFIX.')
    references.add_argument('-o', '--output', metavar='FILE',
                            help='YAML file to write (default: standard output)')
    references.add_argument('--min-runs', type=int, default=5,
                            help='passed runs a reference needs (default: 5)')
    references.set_defaults(func=_guarded(run_references))


def _guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a bad path or option into a one-line message and exit code 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return action(args)
        except PerflogError as err:
            print(f'mlbench perflogs: error: {err}', file=sys.stderr)
            return EXIT_BAD_INPUT
    run.__doc__ = action.__doc__
    return run


def run_summary(args: argparse.Namespace) -> int:
    """Print one line per history and variable: runs, failures, latest and median value."""
    from perflogs_parsers.reader import EXPORT_SUFFIXES, export_frame
    from perflogs_parsers.summary import summarize

    if args.export:
        check_output_path(args.export, EXPORT_SUFFIXES)
    frame = _load(args)
    if args.export:
        export_frame(frame, args.export)
        print(f'wrote {len(frame)} measurements to {args.export}', file=sys.stderr)
    _print(summarize(frame), args.format)
    return 0


def run_regressions(args: argparse.Namespace) -> int:
    """Print the verdict on every latest run; exit 1 when any is a problem."""
    from perflogs_parsers.regressions import exit_code, find_regressions

    result = find_regressions(_load(args), _settings(args))
    _print(_readable(result) if args.format == 'table' else result, args.format)
    return exit_code(result)


def _readable(result: pd.DataFrame) -> pd.DataFrame:
    """The columns a person reads first; csv and json keep every column."""
    import pandas as pd

    from perflogs_parsers.regressions import settings_label

    def with_unit(values: pd.Series) -> pd.Series:
        text = values.map('{:.6g}'.format).str.cat(result['unit'].astype(str), sep=' ')
        return text.where(values.notna(), '-')

    return pd.DataFrame({
        'status': result['status'],
        'where': result['system'].astype(str) + ':' + result['partition'].astype(str),
        'environ': result['environ'],
        'variant': result['display_name'],
        'settings': settings_label(result),
        'variable': result['variable'],
        'latest': with_unit(result['value']),
        'baseline': with_unit(result['baseline']),
        'why': result['why'],
    })


def run_dashboard(args: argparse.Namespace) -> int:
    """Write the HTML dashboard."""
    from perflogs_parsers.dashboard import write_dashboard

    check_output_path(args.output)
    settings = _settings(args)
    frame = _load(args)
    path = write_dashboard(frame, args.output, settings=settings, title=args.title,
                           sources=_sources(frame))
    print(f'wrote {path}', file=sys.stderr)
    return 0


def run_references(args: argparse.Namespace) -> int:
    """Write the references YAML (to stdout without ``-o``); notes go to stderr."""
    from perflogs_parsers import references

    if args.output:
        check_output_path(args.output)
    if args.min_runs < 1:
        raise PerflogError('--min-runs must be at least 1')
    settings = _settings(args)
    frame = _load(args)
    document, notes = references.build_references(frame, settings, args.min_runs)
    _report_problems(notes, kind='note')
    if not document:
        raise PerflogError('no variant has enough passed runs for a reference '
                           f'(--min-runs {args.min_runs})')
    text = references.render_references(document, sources=_sources(frame), settings=settings,
                                        min_runs=args.min_runs)
    if args.output:
        references.write_references(text, args.output)
        print(f'wrote references for {len(document)} test classes to {args.output}',
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _load(args: argparse.Namespace) -> pd.DataFrame:
    from perflogs_parsers.reader import read_perflogs

    frame, report = read_perflogs(args.paths)
    _report_problems(report.messages())
    selected = select(frame, systems=args.system, test=args.test, since=args.since)
    if selected.empty:
        raise PerflogError('no measurements in ' + ', '.join(args.paths)
                         + ' match the --system/--test/--since filters' if len(frame)
                         else 'no measurements in ' + ', '.join(args.paths))
    return selected


def _sources(frame: pd.DataFrame) -> list[str]:
    """The perflog files the measurements came from, sorted, for a report's header."""
    return sorted(frame['file'].dropna().unique().astype(str))


def _report_problems(messages: list[str], kind: str = 'warning') -> None:
    for message in messages[:_MAX_REPORTED_LINES]:
        print(f'mlbench perflogs: {kind}: {message}', file=sys.stderr)
    if len(messages) > _MAX_REPORTED_LINES:
        print(f'mlbench perflogs: warning: ... and {len(messages) - _MAX_REPORTED_LINES} '
              'more lines or files skipped', file=sys.stderr)


def select(frame: pd.DataFrame, *, systems: list[str] | None = None, test: str | None = None,
           since: str | None = None) -> pd.DataFrame:
    """Rows of the given systems (``name`` or ``name:partition``), test regex and time."""
    import pandas as pd

    keep = pd.Series(True, index=frame.index)
    if systems:
        system = frame['system'].astype(str)
        full_name = system + ':' + frame['partition'].astype(str)
        keep &= system.isin(systems) | full_name.isin(systems)
    if test:
        try:
            pattern = re.compile(test)
        except re.error as err:
            raise PerflogError(f'--test: not a regular expression: {test!r} ({err})') from None
        names = frame['display_name'].astype(str)
        matches = {name: bool(pattern.search(name)) for name in names.unique()}
        keep &= names.map(matches).astype(bool)
    if since:
        keep &= frame['timestamp'] >= parse_since(since)
    return frame[keep.to_numpy()]


def parse_since(text: str, now: datetime | None = None) -> pd.Timestamp:
    """``30d``, ``12h``, ``2w`` before now, or an ISO date/time (local time if no offset)."""
    import pandas as pd

    now = now or datetime.now(timezone.utc)
    relative = _RELATIVE_TIME.match(text.strip())
    if relative:
        amount, unit = relative.groups()
        return pd.Timestamp(now - timedelta(**{_UNITS[unit]: int(amount)}))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PerflogError(
            f'--since: expected an ISO date/time or e.g. 30d, got {text!r}') from None
    return pd.Timestamp(moment.astimezone(timezone.utc))


def _print(table: pd.DataFrame, output_format: str) -> None:
    import pandas as pd

    if output_format == 'csv':
        table.to_csv(sys.stdout, index=False)
    elif output_format == 'json':
        records = json.loads(table.to_json(orient='records', date_format='iso'))
        json.dump(records, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write('\n')
    else:
        with pd.option_context('display.max_rows', None, 'display.max_columns', None,
                               'display.width', None, 'display.max_colwidth', 80):
            print(table.to_string(index=False, float_format=lambda value: f'{value:.6g}'))


def _settings(args: argparse.Namespace) -> Settings:
    directions = {}
    for item in args.direction:
        name, _, better = item.partition('=')
        if not name or better not in (HIGHER, LOWER):
            raise PerflogError(f'--direction: expected VAR=higher or VAR=lower, got {item!r}')
        directions[name] = better
    # ``references`` has no --min-samples: it needs --min-runs passed runs instead.
    min_samples = getattr(args, 'min_samples', Settings().min_samples)
    if args.window < 1 or min_samples < 1 or args.mad_k <= 0 or args.min_change < 0:
        raise PerflogError('--window and --min-samples must be at least 1, --mad-k positive, '
                          '--min-change not negative')
    return Settings(window=args.window, min_samples=min_samples, mad_k=args.mad_k,
                    min_change=args.min_change, directions=directions)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point with the same command line as ``mlbench perflogs``."""
    parser = argparse.ArgumentParser(prog='mlbench')
    register(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
