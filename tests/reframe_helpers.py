"""Running the real ``reframe`` command from tests and reading what it wrote.

Shared by the ReFrame suite tests and the reliability tests that drive ReFrame.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = REPO / 'site_config' / 'settings.py'
TESTS_DIR = REPO / 'reframe_tests'
REFRAME = shutil.which('reframe') or str(Path(sys.executable).with_name('reframe'))


def reframe_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """``reframe -C site_config/settings.py ARGS`` and its environment: no RFM_* settings,
    one thread per rank."""
    env = {key: value for key, value in os.environ.items() if not key.startswith('RFM_')}
    env.update(OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', RFM_COLORIZE='n')
    return [REFRAME, '-C', str(SETTINGS), *args], env


def reframe(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    """Run ``reframe -C site_config/settings.py ARGS`` in ``cwd``, one thread per rank."""
    command, env = reframe_command(args)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def reframe_executable() -> str:
    """The ``reframe`` beside this Python (its virtual environment), else the first on PATH:
    tests with their own site configuration drive the ReFrame of the environment they run in.
    Unlike :data:`REFRAME`, which prefers PATH."""
    found = shutil.which('reframe', path=f'{Path(sys.executable).parent}{os.pathsep}'
                                         f'{os.environ.get("PATH", "")}')
    assert found, 'the reframe command (reframe-hpc) is not installed'
    return found


def local_system(system: str, partition: str) -> dict:
    """``systems`` and ``environments`` of a site configuration that runs every test on this
    machine: one partition with the local scheduler and launcher, the ``builtin`` environment."""
    return {
        'systems': [{
            'name': system, 'descr': 'local test system', 'hostnames': ['.*'],
            'partitions': [{'name': partition, 'scheduler': 'local', 'launcher': 'local',
                            'environs': ['builtin']}],
        }],
        'environments': [{'name': 'builtin'}],
    }


def run_report(workdir: Path) -> list[dict]:
    """Test cases of the (single) run report ReFrame wrote under ``workdir/reports``."""
    reports = sorted((workdir / 'reports').glob('run-report-*.json'))
    assert len(reports) == 1, f'expected one run report, found {reports}'
    return json.loads(reports[0].read_text())['runs'][0]['testcases']


def parameters(display_name: str) -> dict[str, str]:
    """``resnet50_train %num_nodes=2 %device=cpu %.launcher=srun`` -> its parameters."""
    return {key.lstrip('.'): value for key, value in re.findall(r'%([\w.]+)=(\S+)', display_name)}


def find_case(cases: list[dict], name: str, **params: object) -> dict:
    matches = [case for case in cases if case['name'].split('%')[0].strip() == name
               and all(parameters(case['display_name']).get(key) == str(value)
                       for key, value in params.items())]
    assert len(matches) == 1, f'{name} {params}: {[c["display_name"] for c in matches]}'
    return matches[0]


def job_script(case: dict) -> str:
    return (Path(case['stagedir']) / 'rfm_job.sh').read_text()


def slurm_unavailable_reason() -> str | None:
    if shutil.which('scontrol') is None:
        return 'Slurm is not installed; start the cluster with `bash ci/slurm/start.sh`'
    try:
        ping = subprocess.run(['scontrol', 'ping'], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return '`scontrol ping` timed out; start the cluster with `bash ci/slurm/start.sh`'
    if ping.returncode != 0 or 'UP' not in ping.stdout:
        return '`scontrol ping` failed; start the cluster with `bash ci/slurm/start.sh`'
    return None


def load_results_module():
    """``reframe_tests/mlbench_results.py``, imported as ReFrame would (no ReFrame needed)."""
    spec = importlib.util.spec_from_file_location('mlbench_results_under_test',
                                                  TESTS_DIR / 'mlbench_results.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cpu_set(text: str) -> set[int]:
    """``0-2,5`` -> ``{0, 1, 2, 5}``: the CPUs of a rank line's ``cpus`` (none for ``unknown``)."""
    cpus: set[int] = set()
    for part in text.split(','):
        first, _, last = part.partition('-')
        if first.isdigit():
            cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def overlapping_ranks(ranks: list[dict[str, str]]) -> list[tuple[str, str]]:
    """Pairs of ranks on one node whose ``cpus`` lists share a core."""
    return [(rank['rank'], other['rank']) for rank, other in itertools.combinations(ranks, 2)
            if rank.get('node') == other.get('node')
            and cpu_set(rank.get('cpus', '')) & cpu_set(other.get('cpus', ''))]
