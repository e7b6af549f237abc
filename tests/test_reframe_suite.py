"""The ReFrame layer end to end: listing, generated job scripts, local and Slurm runs.

Every test runs the real ``reframe`` command with ``site_config/settings.py`` in a temporary
working folder (stage/, output/, perflogs/ and reports/ land there) and reads what ReFrame
wrote: the run report (JSON), the job scripts and the perflogs. ReFrame invocations are few
and shared between tests, since each costs seconds (listing) to minutes (training).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from perflogs_parsers.formats import PERFORMANCE_VARIABLES, perflog_header
from tests.reframe_helpers import (
    REPO,
    TESTS_DIR,
    find_case,
    job_script,
    parameters,
    reframe,
    run_report,
    slurm_unavailable_reason,
)

FAILING_CHECKS = REPO / 'tests' / 'reframe_checks' / 'failing_resnet50.py'

VARIANTS = [(nodes, device, scale) for nodes in (1, 2) for device in ('cpu', 'gpu')
            for scale in ('smoke', 'full')]


def benchmark_files() -> list[str]:
    return sorted(path.stem for path in TESTS_DIR.glob('*.py') if path.stem != 'mlbench_base')


def perflog_rows(path: Path) -> list[dict[str, str]]:
    header, *lines = path.read_text().splitlines()
    columns = header.split('|')
    return [dict(zip(columns, line.split('|'), strict=True)) for line in lines]


def test_listing_shows_every_variant_of_every_benchmark(tmp_path: Path) -> None:
    """Every parameter combination of every benchmark file (its time: bench/suite_overhead.py)."""
    listing = reframe(['-c', str(TESTS_DIR), '-l'], tmp_path, timeout=120)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert 'skipping test file' not in listing.stdout + listing.stderr
    assert benchmark_files(), 'no benchmark file in reframe_tests/'
    for benchmark in benchmark_files():
        for nodes, device, scale in VARIANTS:
            assert (f'- {benchmark}_train %num_nodes={nodes} %device={device} %scale={scale} '
                    in listing.stdout)
    assert f'Found {len(benchmark_files()) * len(VARIANTS)} check(s)' in listing.stdout


@pytest.fixture(scope='module')
def gpu_template_dry_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Job scripts of the 2-node full-scale GPU test in both launch modes, never submitted."""
    workdir = tmp_path_factory.mktemp('dry-run-gpu')
    result = reframe(['--system', 'example-gpu', '-c', str(TESTS_DIR / 'resnet50.py'),
                      '-n', '^resnet50_train%num_nodes=2%device=gpu%scale=full$',
                      '-P', 'launcher=srun,torchrun', '-S', 'batch_size=512', '-S', 'epochs=3',
                      '--dry-run'], workdir, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return run_report(workdir)


def assert_valid_shell(script: str, tmp_path: Path) -> None:
    path = tmp_path / 'rfm_job.sh'
    path.write_text(script)
    check = subprocess.run(['bash', '-n', str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_gpu_template_srun_script_has_one_rank_per_gpu(gpu_template_dry_run: list[dict],
                                                       tmp_path: Path) -> None:
    script = job_script(find_case(gpu_template_dry_run, 'resnet50_train', launcher='srun'))
    for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks=8', '#SBATCH --ntasks-per-node=4',
                 '#SBATCH --cpus-per-task=16', '#SBATCH --gres=gpu:4',
                 '#SBATCH --partition=gpu', '#SBATCH --time=12:0:0'):
        assert line in script.splitlines(), line
    assert ('srun --cpus-per-task=16 --kill-on-bad-exit=1 mlbench train resnet50 '
            '--data-dir /scratch/mlbench/datasets/imagenet --device cuda '
            '--set data.global_batch_size=512 --set training.n_epochs=3') in script.splitlines()
    assert_valid_shell(script, tmp_path)


def test_gpu_template_torchrun_script_has_one_task_per_node(gpu_template_dry_run: list[dict],
                                                            tmp_path: Path) -> None:
    script = job_script(find_case(gpu_template_dry_run, 'resnet50_train', launcher='torchrun'))
    for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks=2', '#SBATCH --ntasks-per-node=1',
                 '#SBATCH --cpus-per-task=64', '#SBATCH --gres=gpu:4'):
        assert line in script.splitlines(), line
    assert 'export MLBENCH_RDZV_PORT=$((29500 + SLURM_JOB_ID % 20000))' in script
    assert ('srun --cpus-per-task=64 --kill-on-bad-exit=1 torchrun --nnodes=2 '
            '--nproc_per_node=4 --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID '
            '--rdzv_endpoint=$MLBENCH_RDZV_HOST:$MLBENCH_RDZV_PORT --no-python mlbench train '
            'resnet50 --data-dir /scratch/mlbench/datasets/imagenet --device cuda '
            '--set data.global_batch_size=512 --set training.n_epochs=3') in script.splitlines()
    assert_valid_shell(script, tmp_path)


def test_cpu_template_places_one_rank_per_numa_node(tmp_path: Path) -> None:
    result = reframe(['--system', 'example-cpu', '-c', str(TESTS_DIR / 'resnet50.py'),
                      '-n', '^resnet50_train%num_nodes=2%device=cpu%scale=full$',
                      '-S', 'cpu_rank_unit=numa', '--dry-run'], tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    script = job_script(find_case(run_report(tmp_path), 'resnet50_train'))
    for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks=16', '#SBATCH --ntasks-per-node=8',
                 '#SBATCH --cpus-per-task=16', '#SBATCH --hint=nomultithread'):
        assert line in script.splitlines(), line
    assert '--gres' not in script
    assert ('srun --cpus-per-task=16 --kill-on-bad-exit=1 mlbench train resnet50 '
            '--data-dir /work/mlbench/datasets/imagenet --device cpu') in script.splitlines()


@pytest.fixture(scope='module')
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The documented laptop command: every variant on the ``local`` system."""
    workdir = tmp_path_factory.mktemp('local-run')
    result = reframe(['-c', str(TESTS_DIR), '-n', 'resnet50', '-r'], workdir, timeout=1200)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir, result.stdout


@pytest.mark.slow
def test_local_smoke_run_logs_time_to_target_and_throughput(local_run: tuple[Path, str]) -> None:
    workdir, _ = local_run
    perflog = workdir / 'perflogs' / 'local' / 'default' / 'resnet50_train.log'
    assert perflog.read_text().splitlines()[0] == perflog_header(list(PERFORMANCE_VARIABLES))
    rows = [row for row in perflog_rows(perflog) if row['result'] == 'pass']
    assert [(row['num_nodes'], row['device'], row['scale']) for row in rows] == [
        ('1', 'cpu', 'smoke')]
    row = rows[0]
    assert float(row['time_to_target_value']) > 0 and row['time_to_target_unit'] == 's'
    assert float(row['throughput_value']) > 0 and row['throughput_unit'] == 'samples/s'
    assert float(row['throughput_per_device_value']) == pytest.approx(
        float(row['throughput_value']))
    assert float(row['epoch_time_value']) > 0


SKIP_LINE = re.compile(r'SKIP\s*\]\s*\(\s*\d+/\d+\)\s+(.+?) /[0-9a-f]+ @\S+ \[(.+)\]$',
                       re.MULTILINE)


@pytest.mark.slow
def test_local_run_skips_what_the_laptop_cannot_run_with_reasons(
        local_run: tuple[Path, str]) -> None:
    _, stdout = local_run
    reasons = dict(SKIP_LINE.findall(stdout))
    assert len(reasons) == len(VARIANTS) - 1, stdout
    for display_name, reason in reasons.items():
        params = parameters(display_name)
        if params['device'] == 'gpu':
            assert reason == "partition local:default has no 'gpu' feature"
        elif params['num_nodes'] == '2':
            assert reason == 'num_nodes=2: partition local:default has 1 node(s)'
        else:
            assert reason.startswith('full scale needs the resnet50 dataset: set '
                                     'extras.datasets.resnet50 in partition local:default')


@pytest.fixture(scope='module')
def slurm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """One session on slurm-ci: smoke tests in both launch modes plus two that must fail."""
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp('slurm-run')
    result = reframe(['--system', 'slurm-ci', '-c', str(TESTS_DIR), '-c', str(FAILING_CHECKS),
                      '-n', 'resnet50', '-t', 'smoke', '-P', 'launcher=srun,torchrun', '-r'],
                     workdir, timeout=1800)
    cases = run_report(workdir)
    assert result.returncode != 0, 'the deliberately failing tests passed'
    return workdir, cases


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize('launcher', ['srun', 'torchrun'])
@pytest.mark.parametrize('num_nodes', [1, 2])
def test_slurm_smoke_passes_on_every_node(slurm_run: tuple[Path, list[dict]], launcher: str,
                                          num_nodes: int) -> None:
    _, cases = slurm_run
    case = find_case(cases, 'resnet50_train', num_nodes=num_nodes, device='cpu', scale='smoke',
                     launcher=launcher)
    assert case['result'] == 'pass', case['fail_reason']
    nodes = sorted(case['job_nodelist'])
    assert len(nodes) == num_nodes and set(nodes) <= {'node1', 'node2'}
    # What the ranks report: one rank per node, each on its own node. A single srun task
    # runs as a plain process ('single'), without a process group.
    reported = 'single' if (launcher, num_nodes) == ('srun', 1) else launcher
    stderr = (Path(case['outputdir']) / 'rfm_job.err').read_text()
    ranks = dict(re.findall(rf'\[mlbench\] rank (\d+)/{num_nodes} .* node (\S+) .*'
                            rf'launcher {reported} ', stderr))
    assert sorted(ranks) == [str(rank) for rank in range(num_nodes)], stderr[-3000:]
    assert sorted(ranks.values()) == nodes
    perf = {key.rsplit(':', 1)[1]: values for key, values in case['perfvalues'].items()}
    assert perf['time_to_target'][0] > 0 and perf['throughput'][0] > 0
    assert perf['time_to_target'][1] > 0 and perf['time_to_target'][3] == 3.0  # reference used


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize('launcher', ['srun', 'torchrun'])
def test_slurm_unreachable_target_fails_with_reason(slurm_run: tuple[Path, list[dict]],
                                                    launcher: str) -> None:
    _, cases = slurm_run
    case = find_case(cases, 'resnet50_unreachable_target', launcher=launcher)
    assert case['result'] == 'fail' and case['fail_phase'] == 'sanity'
    assert re.search(r'target missed: top1_accuracy [\d.]+ after 2 epoch\(s\), target 1\.01 '
                     r'\(higher is better\)', case['fail_reason']), case['fail_reason']


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize('launcher', ['srun', 'torchrun'])
def test_slurm_crashing_rank_fails_with_reason(slurm_run: tuple[Path, list[dict]],
                                               launcher: str) -> None:
    _, cases = slurm_run
    case = find_case(cases, 'resnet50_crashing_rank', launcher=launcher)
    assert case['result'] == 'fail' and case['fail_phase'] == 'sanity'
    assert 'crashed before run_stop' in case['fail_reason']
    expected = ('node2: task 1: Exited with exit code 17' if launcher == 'srun'
                else 'torchrun worker exit code 17')
    assert expected in case['fail_reason'], case['fail_reason']
