"""reframe_tests/mlbench_results.py: MLLOG parsing, performance values and failure reasons.

Logs are written by the real ``mlperf-logging`` package (the writer ``mlbench train`` uses),
and rank lines by ``benchmarks.core.constants.format_rank_line``, so a change of either line
format breaks these tests rather than the ReFrame runs. The module is imported without
ReFrame, as ``reframe -l`` would.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from mlperf_logging.mllog import mllog

from benchmarks.core import constants
from tests.reframe_helpers import load_results_module, overlapping_ranks

REPO = Path(__file__).resolve().parents[1]


base = load_results_module()


class RunLog:
    """Rank 0's MLLOG stream of one run, with explicit timestamps."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        pylogger = logging.getLogger(f'test_reframe_base.{id(self)}')
        pylogger.propagate = False
        pylogger.setLevel(logging.INFO)
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(logging.Formatter('%(message)s'))
        pylogger.addHandler(handler)
        self.logger = mllog.MLLogger(logger=pylogger)

    def start_run(self, target: float | None = 0.9, lower_is_better: bool = False,
                  at_ms: int = 1_000) -> RunLog:
        self.logger.event('mlbench_target', target, time_ms=at_ms,
                          metadata={'lower_is_better': lower_is_better, 'metric': 'top1'})
        self.logger.start('run_start', time_ms=at_ms)
        return self

    def epoch(self, number: int, samples_per_s: float, seconds: float, quality: float,
              key: str = 'eval_accuracy') -> RunLog:
        self.logger.event('mlbench_throughput', samples_per_s, time_ms=0,
                          metadata={'epoch_num': number, 'epoch_time_s': seconds})
        self.logger.event(key, quality, time_ms=0, metadata={'epoch_num': number})
        return self

    def event(self, key: str, value, metadata: dict | None = None, at_ms: int = 0) -> RunLog:
        self.logger.event(key, value, time_ms=at_ms, metadata=metadata or {})
        return self

    def stop(self, status: str, at_ms: int, epochs: int, reason: str | None = None) -> str:
        metadata = {'status': status, 'epoch_num': epochs}
        if reason:
            metadata['reason'] = reason
        self.logger.end('run_stop', time_ms=at_ms, metadata=metadata)
        return self.stream.getvalue()


def rank_lines(nodes: list[str]) -> str:
    """The line each rank of ``mlbench train`` prints to stderr once its process group is up."""
    return ''.join(constants.format_rank_line({
        'rank': f'{rank}/{len(nodes)}', 'local_rank': 0, 'node': node, 'device': 'cpu',
        'launcher': 'srun', 'backend': 'gloo', 'threads': 2, 'cpus': '0-1'}) + '\n'
        for rank, node in enumerate(nodes))


def successful_run() -> str:
    return (RunLog().start_run(target=0.9)
            .epoch(1, 50.0, 8.0, 0.3).epoch(2, 100.0, 4.0, 0.6).epoch(3, 120.0, 3.0, 0.95)
            .stop('success', at_ms=16_500, epochs=3))


def test_successful_run_gives_time_to_target_and_steady_throughput() -> None:
    summary = base.summarise_run(successful_run(), rank_lines(['node1', 'node2']))

    assert summary.status == 'success'
    assert summary.time_to_target_s == pytest.approx(15.5)
    values = base.performance_values(summary, num_ranks=2)
    assert values['throughput'] == pytest.approx(110.0)  # first epoch left out
    assert values['throughput_per_device'] == pytest.approx(55.0)
    assert values['epoch_time'] == pytest.approx(3.5)
    assert values['epochs_to_target'] == 3
    assert summary.world_size == 2 and summary.nodes == ['node1', 'node2']
    assert base.failure_reason(summary, '', exit_code=0, expected_ranks=2,
                               expected_nodes=2) is None


def test_single_epoch_run_uses_that_epoch() -> None:
    log = RunLog().start_run().epoch(1, 80.0, 5.0, 0.95).stop('success', 7_000, 1)
    summary = base.summarise_run(log, rank_lines(['vm']))
    values = base.performance_values(summary, num_ranks=1)
    assert values['throughput'] == 80.0 and values['epoch_time'] == 5.0


def test_target_missed_names_metric_value_and_target() -> None:
    log = RunLog().start_run(target=1.01).epoch(1, 50.0, 8.0, 0.3).epoch(2, 60.0, 7.0, 0.6)
    summary = base.summarise_run(log.stop('aborted', 20_000, 2), rank_lines(['node1']))

    reason = base.failure_reason(summary, '', exit_code=3, expected_ranks=1, expected_nodes=1)
    assert reason == 'target missed: top1 0.6 after 2 epoch(s), target 1.01 (higher is better)'
    assert summary.time_to_target_s is None
    assert base.performance_values(summary, 1)['epochs_to_target'] is None


def test_lower_is_better_target_is_checked_in_that_direction() -> None:
    log = (RunLog().start_run(target=0.124, lower_is_better=True)
           .epoch(1, 10.0, 1.0, 0.2, key='eval_error').epoch(2, 10.0, 1.0, 0.1, key='eval_error'))
    summary = base.summarise_run(log.stop('success', 5_000, 2), rank_lines(['vm']))
    assert summary.reached_target
    assert base.failure_reason(summary, '', exit_code=0) is None


def test_success_claim_with_missed_target_still_fails() -> None:
    log = RunLog().start_run(target=0.9).epoch(1, 10.0, 1.0, 0.5)
    summary = base.summarise_run(log.stop('success', 5_000, 1), '')
    assert 'target was missed' in base.failure_reason(summary, '', exit_code=0)


def test_non_finite_loss_is_reported_as_nan() -> None:
    log = RunLog().start_run().epoch(1, 10.0, 1.0, 0.1)
    text = log.stop('aborted', 5_000, 1, reason='loss is nan at epoch 2 step 3')
    reason = base.failure_reason(base.summarise_run(text, ''), '', exit_code=1)
    assert reason == 'non-finite loss (NaN): loss is nan at epoch 2 step 3'


def test_crash_with_reason_in_run_stop() -> None:
    text = RunLog().start_run().stop('aborted', 2_000, 0, reason='RuntimeError: CUDA error')
    stderr = 'mlbench resnet50: error: RuntimeError: CUDA error\n'
    reason = base.failure_reason(base.summarise_run(text, stderr), stderr, exit_code=1)
    assert reason == 'crashed: RuntimeError: CUDA error'


def test_dead_rank_without_run_stop_reports_srun_verdict() -> None:
    stderr = (rank_lines(['node1'])
              + 'rank 1: simulated crash\n'
              + 'srun: error: node2: task 1: Exited with exit code 17\n'
              + 'srun: error: node1: task 0: Killed\n')
    summary = base.summarise_run(RunLog().start_run().stream.getvalue(), stderr)
    reason = base.failure_reason(summary, stderr, exit_code=137, job_state='FAILED')
    assert reason == ('crashed before run_stop (exit code 137, job state FAILED): '
                      'node2: task 1: Exited with exit code 17; node1: task 0: Killed')


def test_torchrun_child_failure_is_named() -> None:
    stderr = ('torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n'
              'Root Cause (first observed failure):\n[0]:\n  time      : 2026-01-01_00:00:00\n'
              '  host      : vm\n  rank      : 1 (local_rank: 0)\n'
              '  exitcode  : 17 (pid: 4242)\n')
    reason = base.failure_reason(base.summarise_run('', stderr), stderr, exit_code=1)
    assert reason.endswith('torchrun worker exit code 17')


def test_bad_input_before_logging_starts_is_quoted() -> None:
    stderr = "mlbench resnet50: error: /data/train: folder not found\n"
    reason = base.failure_reason(base.summarise_run('', stderr), stderr, exit_code=2)
    assert reason == 'crashed before run_stop (exit code 2): /data/train: folder not found'


def test_time_limit_from_slurm_or_job_state() -> None:
    log = RunLog().start_run(target=0.9).epoch(1, 10.0, 1.0, 0.4).stream.getvalue()
    stderr = ('slurmstepd: error: *** JOB 42 ON node1 CANCELLED AT 2026-01-01T00:10:00 '
              'DUE TO TIME LIMIT ***\n')
    summary = base.summarise_run(log, stderr)
    expected = ('time limit (600 s) reached before run_stop: top1 0.4 after 1 epoch(s), '
                'target 0.9 (higher is better)')
    assert base.failure_reason(summary, stderr, time_limit_s=600.0) == expected
    assert base.failure_reason(summary, '', job_state='TIMEOUT', time_limit_s=600.0) == expected


def test_missing_ranks_and_nodes_fail() -> None:
    summary = base.summarise_run(successful_run(), rank_lines(['node1', 'node1']))
    assert base.failure_reason(summary, '', exit_code=0, expected_ranks=4) == (
        '2 of 4 ranks reported in (world size 2)')
    assert base.failure_reason(summary, '', exit_code=0, expected_ranks=2,
                               expected_nodes=2) == (
        'ranks ran on 1 node(s) (node1), expected 2')


def test_nonzero_exit_after_success_fails() -> None:
    summary = base.summarise_run(successful_run(), '')
    assert 'exited with code 1' in base.failure_reason(summary, '', exit_code=1)


def test_garbled_mllog_lines_are_skipped() -> None:
    text = ':::MLLOG {"key": "run_start", "time_ms": 1\n' + successful_run()
    assert base.summarise_run(text, '').status == 'success'


def test_epochs_to_target_is_the_first_epoch_that_met_it() -> None:
    log = (RunLog().start_run(target=0.5).epoch(1, 10.0, 1.0, 0.3).epoch(2, 10.0, 1.0, 0.55)
           .epoch(3, 10.0, 1.0, 0.6))
    summary = base.summarise_run(log.stop('success', 9_000, 3), '')
    assert base.performance_values(summary, 1)['epochs_to_target'] == 2
    # Samples-counting rules (BERT, GPT-J, AlphaFold2): epoch_num is a sample count.
    log = RunLog().start_run(target=0.7).epoch(1_536_000, 10.0, 1.0, 0.72)
    summary = base.summarise_run(log.stop('success', 9_000, 1_536_000), '')
    assert base.performance_values(summary, 1)['epochs_to_target'] == 1_536_000


def energy_run(run_joules: float | None, epoch_joules: list[float | None],
               status: str = 'success') -> str:
    log = RunLog().start_run(target=0.5)
    log.event(constants.STAGING_START, None, at_ms=1_000)
    log.event(constants.STAGING_STOP, None, at_ms=3_500)
    for number, joules in enumerate(epoch_joules, start=1):
        log.epoch(number, 10.0, 1.0, 0.6 if status == 'success' else 0.1)
        log.event(constants.ENERGY, joules, {'scope': 'epoch', 'epoch_num': number,
                                             'samples': 100, 'source': 'rapl'})
    log.event(constants.ENERGY, run_joules, {'scope': 'run', 'duration_s': 20.0,
                                             'source': 'rapl'})
    return log.stop(status, 21_000, len(epoch_joules))


def test_energy_values_follow_the_energy_events() -> None:
    values = base.performance_values(base.summarise_run(energy_run(4000.0, [150.0, 250.0]), ''),
                                      1)
    assert values['energy_to_target'] == 4000.0
    assert values['energy_per_sample'] == pytest.approx(2.0)  # 400 J / 200 samples
    assert values['average_power'] == pytest.approx(200.0)  # 4000 J / 20 s
    assert values['staging_time'] == pytest.approx(2.5)


def test_energy_is_none_without_a_counter_and_no_target_energy_on_failure() -> None:
    values = base.performance_values(base.summarise_run(energy_run(None, [None, None]), ''), 1)
    assert (values['energy_to_target'], values['energy_per_sample'],
            values['average_power']) == (None, None, None)
    failed = base.summarise_run(energy_run(4000.0, [150.0], status='aborted'), '')
    values = base.performance_values(failed, 1)
    assert values['energy_to_target'] is None and values['average_power'] == 200.0


def test_nothing_measured_gives_none_everywhere() -> None:
    values = base.performance_values(base.summarise_run('', ''), 0)
    assert set(values.values()) == {None}


def test_environment_columns_come_from_the_environment_event() -> None:
    fields = dict.fromkeys(constants.ENVIRONMENT_FIELDS)
    fields.update(torch_version='2.14.1', world_size=4, mlbench_version='0.1.0+gabc')
    text = RunLog().event(constants.ENVIRONMENT, None, fields).stop('success', 1, 0)
    columns = base.environment_columns(base.summarise_run(text, ''),
                                       ('mlbench_version', 'torch_version', 'gpu_model'))
    assert columns == {'mlbench_version': '0.1.0+gabc', 'torch_version': '2.14.1',
                       'gpu_model': None}


@pytest.mark.parametrize(('sacct', 'joules'), [
    ('42|0\n42.batch|120\n42.extern|0\n42.0|3500\n', 3500.0),
    ('42|\n42.batch|\n42.0|\n', None),          # no energy plugin: empty
    ('42|0\n42.batch|0\n42.0|0\n', None),       # no energy plugin: zero
    ('42|0\n42.0|10\n42.1|900\n', 900.0),       # the last step is the training step
    ('', None),
])
def test_slurm_energy_of_the_training_step(sacct: str, joules: float | None) -> None:
    assert base.slurm_step_energy(sacct) == joules


def test_overlapping_ranks_on_one_node_are_found() -> None:
    ranks = [{'rank': '0/4', 'node': 'n1', 'cpus': '0-3'}, {'rank': '1/4', 'node': 'n1',
                                                          'cpus': '4-7'},
             {'rank': '2/4', 'node': 'n2', 'cpus': '0-3'}, {'rank': '3/4', 'node': 'n2',
                                                          'cpus': '2,8'}]
    assert overlapping_ranks(ranks) == [('2/4', '3/4')]


def test_lost_node_is_named() -> None:
    stderr = rank_lines(['node1', 'node2']) + (
        'srun: error: Node failure on node2\n'
        'slurmstepd: error: *** STEP 7.0 ON node1 CANCELLED AT 2026-01-01T00:00:00 '
        'DUE TO NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***\n')
    summary = base.summarise_run(RunLog().start_run().stream.getvalue(), stderr)
    reason = base.failure_reason(summary, stderr, exit_code=1, job_state='NODE_FAIL')
    assert reason.startswith('crashed before run_stop (exit code 1, job state NODE_FAIL): '
                             'node node2 failed')


def test_lost_node_is_named_when_the_surviving_rank_logged_run_stop() -> None:
    """The rank on the live node may catch gloo's "connection reset" and log run_stop aborted
    before srun stops it; the job state still tells that a node was lost."""
    reset = 'RuntimeError: [pair.cc:545] Read error: Connection reset by peer'
    text = RunLog().start_run().stop('aborted', 2_000, 0, reason=reset)
    stderr = rank_lines(['node1', 'node2']) + (
        'srun: error: Node failure on node2\n'
        'srun: error: node1: task 0: Exited with exit code 1\n')
    reason = base.failure_reason(base.summarise_run(text, stderr), stderr, exit_code=1,
                                 job_state='NODE_FAIL')
    assert reason == (f'crashed (job state NODE_FAIL): node node2 failed; {reset}; '
                      'node1: task 0: Exited with exit code 1')


def test_results_module_imports_nothing_heavy() -> None:
    code = ('import sys; sys.path.insert(0, "reframe_tests"); import mlbench_results; '
            'heavy = {"torch", "reframe", "numpy", "pandas"} & set(sys.modules); '
            'assert not heavy, heavy')
    subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True)


def test_not_measured_passes_only_unbounded_checks_and_prints_none() -> None:
    value = base.NOT_MEASURED
    assert str(value) == 'None' and value.__rfm_json_encode__() is None
    assert value >= float('-inf') and value <= float('inf')
    assert not value >= 0.0 and not value <= 100.0
