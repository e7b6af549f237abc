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

from benchmarks.core import constants
from perflogs_parsers.formats import PERFORMANCE_VARIABLES, perflog_header
from site_config.settings import SLURM_CI_CPUS
from tests.reframe_helpers import (
    REPO,
    TESTS_DIR,
    cpu_set,
    find_case,
    job_script,
    overlapping_ranks,
    reframe,
    reframe_command,
    run_report,
    slurm_unavailable_reason,
)

FAILING_CHECKS = REPO / 'tests' / 'reframe_checks' / 'failing_resnet50.py'
EXAMPLE_SITE = REPO / 'site_config' / 'example_site.py'

NODE_COUNTS = (1, 2)


def benchmark_files() -> list[str]:
    return sorted(path.stem for path in TESTS_DIR.glob('*.py')
                  if not path.stem.startswith('mlbench_'))


def listing(system: str, tmp_path: Path, *options: str) -> list[str]:
    """Display names and dependencies that ``reframe -l`` prints for ``system``."""
    result = reframe(['--system', system, '-c', str(TESTS_DIR), '-l', *options], tmp_path,
                     timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'skipping test file' not in result.stdout + result.stderr
    return [line.strip() for line in result.stdout.splitlines()
            if line.startswith(('- ', '    ^'))]


def perflog_rows(path: Path) -> list[dict[str, str]]:
    header, *lines = path.read_text().splitlines()
    columns = header.split('|')
    return [dict(zip(columns, line.split('|'), strict=True)) for line in lines]


def test_gpu_partitions_list_gpu_variants_of_both_scales(tmp_path: Path) -> None:
    """Every benchmark file, each scale its own class; no CPU variant on a GPU-only system."""
    lines = listing('example-gpu', tmp_path)
    assert benchmark_files(), 'no benchmark file in reframe_tests/'
    names = {line.split(' /')[0] for line in lines if line.startswith('- ')}
    assert names == {f'- {benchmark}_{scale} %num_nodes={nodes} %device=gpu'
                     for benchmark in benchmark_files() for scale in ('smoke', 'full')
                     for nodes in NODE_COUNTS}


def test_full_scale_never_depends_on_smoke_data(tmp_path: Path) -> None:
    lines = listing('example-gpu', tmp_path, '-t', '^full$')
    assert len(lines) == len(benchmark_files()) * len(NODE_COUNTS)
    assert not [line for line in lines if 'smoke_data' in line or line.startswith('^')]
    smoke = listing('example-gpu', tmp_path, '-t', '^smoke$')
    assert sum('^resnet50_smoke_data' in line for line in smoke) == len(NODE_COUNTS)


def test_ci_pipeline_of_full_scale_has_no_fixture_job(tmp_path: Path) -> None:
    result = reframe(['--system', 'example-gpu', '-c', str(TESTS_DIR), '-t', '^full$',
                      '--ci-generate', str(tmp_path / 'pipeline.yml')], tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    pipeline = (tmp_path / 'pipeline.yml').read_text()
    assert 'resnet50_full' in pipeline and 'smoke_data' not in pipeline
    assert 'needs: []' in pipeline or 'needs' not in pipeline


def test_cpu_full_scale_is_opt_in(tmp_path: Path) -> None:
    """example-cpu lacks the full_scale_cpu feature; the example site's CPU system has it."""
    assert listing('example-cpu', tmp_path, '-t', '^full$') == []
    opted_in = listing('mysite-cpu', tmp_path, '-C', str(EXAMPLE_SITE), '-t', '^full$', '-n',
                       'resnet50')
    assert [line.split(' /')[0] for line in opted_in] == [
        f'- resnet50_full %num_nodes={nodes} %device=cpu' for nodes in NODE_COUNTS]


def test_local_system_lists_only_cpu_smoke_variants(tmp_path: Path) -> None:
    lines = listing('local', tmp_path, '-n', 'resnet50')
    assert [line.split(' /')[0] for line in lines if line.startswith('- ')] == [
        f'- resnet50_smoke %num_nodes={nodes} %device=cpu' for nodes in NODE_COUNTS]


@pytest.fixture(scope='module')
def gpu_template_dry_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Job scripts of the 2-node full-scale GPU test in both launch modes, never submitted."""
    workdir = tmp_path_factory.mktemp('dry-run-gpu')
    result = reframe(['--system', 'example-gpu', '-c', str(TESTS_DIR / 'resnet50.py'),
                      '-n', '^resnet50_full%num_nodes=2%device=gpu$',
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
    script = job_script(find_case(gpu_template_dry_run, 'resnet50_full', launcher='srun'))
    for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks=8', '#SBATCH --ntasks-per-node=4',
                 '#SBATCH --cpus-per-task=16', '#SBATCH --gres=gpu:4',
                 '#SBATCH --partition=gpu', '#SBATCH --time=12:0:0'):
        assert line in script.splitlines(), line
    assert '#SBATCH --no-requeue' in script.splitlines()
    assert ('srun --cpus-per-task=16 --kill-on-bad-exit=1 --cpu-bind=cores --gpu-bind=closest '
            'mlbench train resnet50 --data-dir /scratch/mlbench/datasets/imagenet --device cuda '
            '--set data.global_batch_size=512 --set training.n_epochs=3') in script.splitlines()
    assert_valid_shell(script, tmp_path)


def test_gpu_template_torchrun_script_has_one_task_per_node(gpu_template_dry_run: list[dict],
                                                            tmp_path: Path) -> None:
    script = job_script(find_case(gpu_template_dry_run, 'resnet50_full', launcher='torchrun'))
    for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks=2', '#SBATCH --ntasks-per-node=1',
                 '#SBATCH --cpus-per-task=64', '#SBATCH --gres=gpu:4'):
        assert line in script.splitlines(), line
    assert 'export MLBENCH_RDZV_PORT=$((29500 + SLURM_JOB_ID % 20000))' in script
    assert ('srun --cpus-per-task=64 --kill-on-bad-exit=1 --cpu-bind=cores torchrun --nnodes=2 '
            '--nproc_per_node=4 --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID '
            '--rdzv_endpoint=$MLBENCH_RDZV_HOST:$MLBENCH_RDZV_PORT --no-python mlbench train '
            'resnet50 --data-dir /scratch/mlbench/datasets/imagenet --device cuda '
            '--set data.global_batch_size=512 --set training.n_epochs=3') in script.splitlines()
    assert_valid_shell(script, tmp_path)


def site_dry_run(system: str, tmp_path: Path, *options: str) -> str:
    """The job script of the 2-node full-scale resnet50 test on the example site's system."""
    result = reframe(['-C', str(EXAMPLE_SITE), '--system', system, '-c',
                      str(TESTS_DIR / 'resnet50.py'), '-n', '^resnet50_full%num_nodes=2',
                      *options, '--dry-run'], tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    script = job_script(find_case(run_report(tmp_path), 'resnet50_full'))
    assert_valid_shell(script, tmp_path)
    return script


def test_site_cpu_system_places_one_rank_per_numa_node(tmp_path: Path) -> None:
    script = site_dry_run('mysite-cpu', tmp_path, '-S', 'cpu_rank_unit=numa')
    for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks=16', '#SBATCH --ntasks-per-node=8',
                 '#SBATCH --cpus-per-task=16', '#SBATCH --hint=nomultithread',
                 '#SBATCH --account=proj123', '#SBATCH --mem=240G',
                 'source /work/proj123/mlbench/venv/bin/activate'):
        assert line in script.splitlines(), line
    assert '--gres' not in script and '--gpus' not in script
    assert ('srun --cpus-per-task=16 --kill-on-bad-exit=1 --cpu-bind=cores mlbench train '
            'resnet50 --data-dir /work/mlperf/imagenet --device cpu') in script.splitlines()


def test_site_gpu_system_gets_account_qos_reservation_and_whole_nodes(tmp_path: Path) -> None:
    script = site_dry_run('mysite-gpu', tmp_path)
    for line in ('#SBATCH --account=proj123', '#SBATCH --qos=normal',
                 '#SBATCH --reservation=mlbench', '#SBATCH --exclusive', '#SBATCH --mem=0',
                 '#SBATCH --gpus-per-node=4', '#SBATCH --no-requeue',
                 'module load PyTorch/2.5.1-foss-2023b-CUDA-12.4.0'):
        assert line in script.splitlines(), line
    assert ('srun --cpus-per-task=16 --kill-on-bad-exit=1 --cpu-bind=cores --gpu-bind=closest '
            'mlbench train resnet50 --data-dir /scratch/mlperf/imagenet --device cuda'
            ) in script.splitlines()


@pytest.fixture(scope='module')
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The documented laptop command: every variant on the ``local`` system."""
    workdir = tmp_path_factory.mktemp('local-run')
    result = reframe(['-c', str(TESTS_DIR), '-n', 'resnet50', '-r'], workdir, timeout=1200)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir, result.stdout


@pytest.mark.slow
def test_local_smoke_run_logs_every_performance_variable(local_run: tuple[Path, str]) -> None:
    workdir, _ = local_run
    perflog = workdir / 'perflogs' / 'local' / 'default' / 'resnet50_smoke.log'
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
    assert int(float(row['epochs_to_target_value'])) >= 1
    assert row['epochs_to_target_unit'] == 'epochs'
    assert row['slurm_energy_value'] == 'None'  # no Slurm here: not measured
    # Settings and environment columns, from the test and the mlbench_environment event.
    assert (row['launcher'], row['batch_size'], row['cpu_rank_unit'], row['num_ranks'],
            row['overrides']) == ('srun', '0', 'node', '1', '')
    assert row['torch_version'] and row['torch_version'] != 'None'
    assert row['mlbench_version'].startswith('0.')
    assert row['gpu_model'] == 'null'  # ReFrame writes a None attribute as null


SKIP_LINE = re.compile(r'SKIP\s*\]\s*\(\s*\d+/\d+\)\s+(.+?) /[0-9a-f]+ @\S+ \[(.+)\]$',
                       re.MULTILINE)


@pytest.mark.slow
def test_local_run_skips_only_the_two_node_variant(local_run: tuple[Path, str]) -> None:
    """GPU and full-scale variants are not even listed on a laptop: no device-mismatch skip."""
    _, stdout = local_run
    reasons = dict(SKIP_LINE.findall(stdout))
    assert reasons == {'resnet50_smoke %num_nodes=2 %device=cpu':
                       'num_nodes=2: partition local:default has 1 node(s)'}, stdout


@pytest.fixture(scope='module')
def slurm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """One session on slurm-ci: smoke tests with one rank per NUMA node (2 per node) in both
    launch modes, plus two that must fail."""
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp('slurm-run')
    result = reframe(['--system', 'slurm-ci', '-c', str(TESTS_DIR), '-c', str(FAILING_CHECKS),
                      '-n', 'resnet50', '-t', 'smoke', '-P', 'launcher=srun,torchrun',
                      '-S', 'cpu_rank_unit=numa', '-r'], workdir, timeout=1800)
    cases = run_report(workdir)
    assert result.returncode != 0, 'the deliberately failing tests passed'
    return workdir, cases


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize('launcher', ['srun', 'torchrun'])
@pytest.mark.parametrize('num_nodes', [1, 2])
def test_slurm_smoke_gives_every_rank_its_own_cores(slurm_run: tuple[Path, list[dict]],
                                                     launcher: str, num_nodes: int) -> None:
    _, cases = slurm_run
    case = find_case(cases, 'resnet50_smoke', num_nodes=num_nodes, device='cpu',
                     launcher=launcher)
    assert case['result'] == 'pass', case['fail_reason']
    nodes = sorted(case['job_nodelist'])
    assert len(nodes) == num_nodes and set(nodes) <= {'node1', 'node2'}
    stderr = (Path(case['outputdir']) / 'rfm_job.err').read_text()
    ranks = [fields for fields in constants.parse_rank_lines(stderr) if 'rank' in fields]
    world = 2 * num_nodes  # one rank per NUMA node, two NUMA nodes per node
    assert sorted(rank['rank'] for rank in ranks) == [f'{r}/{world}' for r in range(world)]
    assert {rank['launcher'] for rank in ranks} == {launcher}
    assert sorted({rank['node'] for rank in ranks}) == nodes
    for node in nodes:
        assert sum(rank['node'] == node for rank in ranks) == 2
    assert overlapping_ranks(ranks) == [], ranks
    expected_threads = SLURM_CI_CPUS // 2
    assert {rank['threads'] for rank in ranks} == {str(expected_threads)}, ranks
    assert all(len(cpu_set(rank['cpus'])) == expected_threads for rank in ranks), ranks
    perf = {key.rsplit(':', 1)[1]: values for key, values in case['perfvalues'].items()}
    assert list(perf) == list(PERFORMANCE_VARIABLES)
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
    expected = ('node1: task 1: Exited with exit code 17' if launcher == 'srun'
                else 'torchrun worker exit code 17')
    assert expected in case['fail_reason'], case['fail_reason']


REPLAYED_CHECKS = REPO / 'tests' / 'reframe_checks' / 'replayed_resnet50.py'


def replayed_run(tmp_path: Path, references: str, *options: str) -> list[dict]:
    """Run ``resnet50_replayed`` on a recorded successful output (120 samples/s, 4 epochs)
    with ``references`` as the external references file under RFM_REFERENCE_PREFIX."""
    from tests.test_reframe_results import RunLog, rank_lines

    stdout = (RunLog().start_run(target=0.9).epoch(1, 100.0, 2.0, 0.5).epoch(2, 120.0, 1.5, 0.7)
              .epoch(3, 120.0, 1.5, 0.8).epoch(4, 120.0, 1.5, 0.92).stop('success', 9_000, 4))
    (tmp_path / 'replay.out').write_text(stdout)
    (tmp_path / 'replay.err').write_text(rank_lines(['vm']))
    (tmp_path / 'refs').mkdir()
    (tmp_path / 'refs' / 'mlbench_references.yaml').write_text(references)
    command, env = reframe_command(['-c', str(REPLAYED_CHECKS), '-n', 'resnet50_replayed',
                                    '-S', f'replay_stdout={tmp_path / "replay.out"}',
                                    '-S', f'replay_stderr={tmp_path / "replay.err"}',
                                    *options, '-r'])
    env['RFM_REFERENCE_PREFIX'] = str(tmp_path / 'refs')
    subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return [case for case in run_report(tmp_path) if case['name'].startswith('resnet50_replayed')]


REFERENCES = '''\
resnet50_replayed:
  $index: ['$partition', device, num_nodes, scale]
  local:default:
    cpu:
      1:
        smoke:
          throughput: [{throughput}, -0.1, null, samples/s]
          epochs_to_target: [4, null, 0.5, epochs]
'''


@pytest.mark.slow
def test_run_outside_its_reference_band_fails_in_performance(tmp_path: Path) -> None:
    case, = replayed_run(tmp_path, REFERENCES.format(throughput=500.0))
    assert case['result'] == 'fail' and case['fail_phase'] == 'performance', case
    assert 'throughput=120.0 samples/s, expected 500.0' in case['fail_reason']


@pytest.mark.slow
def test_run_inside_its_band_passes_and_logs_settings(tmp_path: Path) -> None:
    cases = replayed_run(tmp_path, REFERENCES.format(throughput=118.0),
                         '-P', 'batch_size=64,128')
    assert [case['result'] for case in cases] == ['pass', 'pass'], cases
    perf = {key.rsplit(':', 1)[1]: value for key, value in cases[0]['perfvalues'].items()}
    assert perf['throughput'][:2] == [120.0, 118.0] and perf['epochs_to_target'][:2] == [4, 4]
    perflog = tmp_path / 'perflogs' / 'local' / 'default' / 'resnet50_replayed.log'
    rows = perflog_rows(perflog)
    assert sorted(row['batch_size'] for row in rows) == ['128', '64']
    assert {row['num_ranks'] for row in rows} == {'1'}
    assert {row['staging_time_value'] for row in rows} == {'None'}


NO_PROCESSOR_SITE = '''
site_configuration = {
    'systems': [{
        'name': 'bare', 'hostnames': ['^bare$'], 'modules_system': 'nomod',
        'partitions': [{'name': 'cpu', 'scheduler': 'slurm', 'launcher': 'srun',
                        'environs': ['mlbench'], 'features': ['cpu']}],
    }],
}
'''


def test_partition_without_processor_is_skipped_with_the_reason(tmp_path: Path) -> None:
    site = tmp_path / 'bare_site.py'
    site.write_text(NO_PROCESSOR_SITE)
    result = reframe(['-C', str(site), '--system', 'bare', '-c', str(TESTS_DIR / 'resnet50.py'),
                      '-n', '^resnet50_smoke%num_nodes=1', '--dry-run'], tmp_path, timeout=300)
    skips = dict(SKIP_LINE.findall(result.stdout))
    assert skips == {'resnet50_smoke %num_nodes=1 %device=cpu': (
        "partition bare:cpu has no processor description: add a 'processor' block (or set "
        "general/remote_detect: ReFrame then detects it with a job) so each rank gets its "
        "CPUs")}, (
        result.stdout)


@pytest.mark.parametrize(('mode', 'tag'), [('ci-smoke', 'smoke'), ('nightly', 'full')])
def test_modes_select_one_scale(mode: str, tag: str, tmp_path: Path) -> None:
    names = [line for line in listing('example-gpu', tmp_path, '--mode', mode, '-n', 'resnet50')
             if line.startswith('- ')]
    assert [line.split(' ')[1] for line in names] == [f'resnet50_{tag}'] * len(NODE_COUNTS)
