"""What one ``mlbench train`` job wrote, condensed once: the run summary, its verdict, its values.

Plain Python (standard library and ``benchmarks.core.constants`` only): ReFrame skips this file
when it loads ``reframe_tests/`` (it does not import reframe), ``reframe -l`` stays fast, and
the parsing is tested on synthetic logs without ReFrame (``tests/test_reframe_results.py``).
"""

from __future__ import annotations

import json
import numbers
import re
import statistics
from dataclasses import dataclass, field

from benchmarks.core import constants

MLLOG_LINE = re.compile(r':::MLLOG (\{.*\})\s*$')
SRUN_TASK_ERROR = re.compile(r'^srun: error: (\S+: tasks? [\d,-]+: .+)$', re.MULTILINE)
#: srun's verdict when a node of the step stops answering.
NODE_FAILURE = re.compile(r'^srun: error: Node failure on (\S+)', re.MULTILINE)
TORCHRUN_FAILURE = re.compile(r'^\s*exitcode\s*:\s*(-?\d+)\s*\(pid: \d+\)', re.MULTILINE)
TIME_LIMIT_LINE = re.compile(r'CANCELLED AT \S+ DUE TO TIME LIMIT')
NON_FINITE = re.compile(r'\b(nan|inf)\b', re.IGNORECASE)
QUALITY_KEYS = ('eval_accuracy', 'eval_error')


class NotMeasured(numbers.Number):
    """A performance value the run did not measure (no energy counter, no staging...).

    ReFrame 4.10 refuses ``None`` from a performance function of a passing test, and NaN
    fails every reference check. This value is written ``None`` in perflogs (``null`` in
    JSON), like the values of a failed test; it is within an unbounded reference and outside
    any bound, so a reference that asks for a value fails when there is none.
    """

    def __ge__(self, other: float) -> bool:
        return other == float('-inf')

    def __le__(self, other: float) -> bool:
        return other == float('inf')

    def __str__(self) -> str:
        return 'None'

    __repr__ = __str__

    def __rfm_json_encode__(self) -> None:
        return None


NOT_MEASURED = NotMeasured()


@dataclass
class RunSummary:
    """Rank 0's MLLOG events and every rank's placement line, parsed once per job."""

    status: str | None = None
    abort_reason: str | None = None
    epochs_run: int | None = None
    time_to_target_s: float | None = None
    throughputs: list[float] = field(default_factory=list)
    epoch_times: list[float] = field(default_factory=list)
    target: float | None = None
    lower_is_better: bool = False
    metric: str = 'quality'
    #: (value, epoch_num) of every quality evaluation, in order.
    quality: list[tuple[float, float | None]] = field(default_factory=list)
    staging_time_s: float | None = None
    global_batch_size: int | None = None
    run_energy: dict = field(default_factory=dict)
    epoch_energy: list[dict] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    ranks: list[dict[str, str]] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        sizes = [int(rank['rank'].split('/')[1]) for rank in self.ranks if '/' in rank['rank']]
        return max(sizes, default=0)

    @property
    def rank_nodes(self) -> dict[int, str]:
        return {int(rank['rank'].split('/')[0]): rank.get('node', '?') for rank in self.ranks}

    @property
    def nodes(self) -> list[str]:
        return sorted(set(self.rank_nodes.values()))

    def _meets_target(self, value: float) -> bool:
        return value <= self.target if self.lower_is_better else value >= self.target

    @property
    def reached_target(self) -> bool:
        if self.target is None:
            return True
        return bool(self.quality) and self._meets_target(self.quality[-1][0])

    @property
    def succeeded(self) -> bool:
        return self.status == 'success' and self.reached_target

    @property
    def epochs_to_target(self) -> float | None:
        """``epoch_num`` of the first evaluation that met the target, on a successful run."""
        if not self.succeeded or self.target is None:
            return None
        for value, epoch in self.quality:
            if self._meets_target(value):
                return epoch
        return None


def _steady_mean(values: list[float]) -> float | None:
    """Mean over the epochs after the first (warm-up), or the only epoch."""
    if not values:
        return None
    return statistics.fmean(values[1:] if len(values) > 1 else values)


def parse_mllog(text: str) -> list[dict]:
    """Every ``:::MLLOG {...}`` event in ``text``; lines that are not valid JSON are skipped."""
    events = []
    for line in text.splitlines():
        match = MLLOG_LINE.search(line)
        if not match:
            continue
        try:
            events.append(json.loads(match.group(1)))
        except json.JSONDecodeError:
            continue
    return events


def summarise_run(stdout: str, stderr: str) -> RunSummary:
    """Condense a job's stdout (rank 0's MLLOG lines) and stderr (rank lines) into a summary."""
    summary = RunSummary()
    run_start_ms = staging_start_ms = None
    for event in parse_mllog(stdout):
        key, value, metadata = event.get('key'), event.get('value'), event.get('metadata') or {}
        if key == 'run_start':
            run_start_ms = event.get('time_ms')
        elif key == 'run_stop':
            summary.status = metadata.get('status')
            summary.abort_reason = metadata.get('reason')
            summary.epochs_run = metadata.get('epoch_num')
            if summary.status == 'success' and run_start_ms is not None:
                summary.time_to_target_s = (event['time_ms'] - run_start_ms) / 1000.0
        elif key == constants.THROUGHPUT:
            summary.throughputs.append(float(value))
            if 'epoch_time_s' in metadata:
                summary.epoch_times.append(float(metadata['epoch_time_s']))
        elif key == constants.TARGET:
            summary.target = None if value is None else float(value)
            summary.lower_is_better = bool(metadata.get('lower_is_better', False))
            summary.metric = metadata.get('metric', summary.metric)
        elif key in QUALITY_KEYS and value is not None:
            summary.quality.append((float(value), metadata.get('epoch_num')))
        elif key == 'global_batch_size' and value is not None:
            summary.global_batch_size = int(value)
        elif key == constants.STAGING_START:
            staging_start_ms = event.get('time_ms')
        elif key == constants.STAGING_STOP and staging_start_ms is not None:
            summary.staging_time_s = (event['time_ms'] - staging_start_ms) / 1000.0
        elif key == constants.ENERGY:
            reading = {**metadata, 'value': value}
            if metadata.get('scope') == 'run':
                summary.run_energy = reading
            elif metadata.get('scope') == 'epoch':
                summary.epoch_energy.append(reading)
        elif key == constants.ENVIRONMENT:
            summary.environment = dict(metadata)
    summary.ranks = [fields for fields in constants.parse_rank_lines(stderr) if 'rank' in fields]
    return summary


def _energy_per_sample(readings: list[dict]) -> float | None:
    if not readings or any(reading.get('value') is None for reading in readings):
        return None
    samples = sum(reading.get('samples') or 0 for reading in readings)
    return sum(float(reading['value']) for reading in readings) / samples if samples else None


def _average_power(reading: dict) -> float | None:
    if reading.get('value') is None or not reading.get('duration_s'):
        return None
    return float(reading['value']) / float(reading['duration_s'])


def performance_values(summary: RunSummary, num_ranks: int) -> dict[str, float | None]:
    """Every performance variable measured from the job's output (``slurm_energy`` aside)."""
    throughput = _steady_mean(summary.throughputs)
    ranks = summary.world_size or num_ranks
    run_energy = summary.run_energy.get('value')
    return {
        'time_to_target': summary.time_to_target_s,
        'throughput': throughput,
        'throughput_per_device': None if throughput is None else throughput / max(1, ranks),
        'epoch_time': _steady_mean(summary.epoch_times),
        'epochs_to_target': summary.epochs_to_target,
        'staging_time': summary.staging_time_s,
        'energy_to_target': (float(run_energy) if summary.succeeded and run_energy is not None
                             else None),
        'energy_per_sample': _energy_per_sample(summary.epoch_energy),
        'average_power': _average_power(summary.run_energy),
    }


def environment_columns(summary: RunSummary, columns: tuple[str, ...]) -> dict[str, str | None]:
    """The perflog environment columns from the ``mlbench_environment`` event (None if absent)."""
    return {column: (None if summary.environment.get(column) is None
                     else str(summary.environment[column])) for column in columns}


def slurm_step_energy(sacct_output: str) -> float | None:
    """Joules of the job's training step from ``sacct -P -n -o JobID,ConsumedEnergyRaw``.

    The training step is the last numbered step (``JOB.N``); 0 or empty means the cluster has
    no energy plugin, so None.
    """
    steps = []
    for line in sacct_output.splitlines():
        job_id, _, energy = line.strip().partition('|')
        step = job_id.rpartition('.')[2]
        if '.' in job_id and step.isdigit():
            steps.append((int(step), energy.strip()))
    if not steps:
        return None
    energy = max(steps)[1]
    try:
        joules = float(energy)
    except ValueError:
        return None
    return joules if joules > 0 else None


def _crash_detail(summary: RunSummary, stderr: str) -> str:
    """The most telling lines of a crash: lost nodes, the runner's error, srun's or torchrun's."""
    details = [f'node {node} failed' for node in NODE_FAILURE.findall(stderr)]
    if summary.abort_reason:
        details.append(summary.abort_reason)
    details += [line for line in constants.ERROR_LINE.findall(stderr) if line not in details]
    details += SRUN_TASK_ERROR.findall(stderr)
    details += [f'torchrun worker exit code {code}' for code in TORCHRUN_FAILURE.findall(stderr)]
    if not details:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        details.append(lines[-1] if lines else 'no output on stderr')
    return '; '.join(dict.fromkeys(details))


def _in_parentheses(*parts: str) -> str:
    """`` (a, b)`` of the parts that say something, or nothing when none does."""
    shown = ', '.join(part for part in parts if part)
    return f' ({shown})' if shown else ''


def _quality_text(summary: RunSummary) -> str:
    last = f'{summary.quality[-1][0]:g}' if summary.quality else 'never evaluated'
    direction = 'lower' if summary.lower_is_better else 'higher'
    return (f'{summary.metric} {last} after {summary.epochs_run or len(summary.throughputs)} '
            f'epoch(s), target {summary.target:g} ({direction} is better)')


def failure_reason(summary: RunSummary, stderr: str, *, job_state: str | None = None,
                   exit_code: int | None = None, expected_ranks: int = 0,
                   expected_nodes: int = 0, time_limit_s: float | None = None) -> str | None:
    """Why the run failed (target missed, NaN, crash, lost node, time limit), or None."""
    if job_state == 'TIMEOUT' or TIME_LIMIT_LINE.search(stderr):
        limit = f' ({time_limit_s:g} s)' if time_limit_s else ''
        progress = _quality_text(summary) if summary.target is not None else 'no target logged'
        return f'time limit{limit} reached before run_stop: {progress}'
    state = f'job state {job_state}' if job_state not in (None, 'COMPLETED') else ''
    if summary.status is None:
        return (f'crashed before run_stop{_in_parentheses(f"exit code {exit_code}", state)}: '
                f'{_crash_detail(summary, stderr)}')
    if summary.status != 'success':
        if summary.abort_reason and NON_FINITE.search(summary.abort_reason):
            return f'non-finite loss (NaN): {summary.abort_reason}'
        if summary.abort_reason:
            return f'crashed{_in_parentheses(state)}: {_crash_detail(summary, stderr)}'
        if summary.target is not None:
            return f'target missed: {_quality_text(summary)}'
        return f'run_stop status {summary.status!r} without a reason'
    if not summary.reached_target:
        return f'run_stop says success but the target was missed: {_quality_text(summary)}'
    if exit_code not in (None, 0):
        return f'run_stop says success but the job exited with code {exit_code}: ' + (
            _crash_detail(summary, stderr))
    if expected_ranks and len(summary.rank_nodes) != expected_ranks:
        return (f'{len(summary.rank_nodes)} of {expected_ranks} ranks reported in '
                f'(world size {summary.world_size})')
    if expected_nodes and len(summary.nodes) != expected_nodes:
        return (f'ranks ran on {len(summary.nodes)} node(s) ({", ".join(summary.nodes)}), '
                f'expected {expected_nodes}')
    return None
