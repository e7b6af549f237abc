"""The GitLab CI template, run by gitlab-ci-local's shell executor against the local Slurm cluster.

A centre's pipeline repository is laid out in a temporary git repository: its
``.gitlab-ci.yml`` includes ``ci/gitlab/mlbench.gitlab-ci.yml`` and sets the variables, as
docs/ci.md tells a centre to. Three pipelines: green on a clean history; red in the analyse
job when the earlier runs of the history were much faster; red when a test fails.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.reframe_helpers import slurm_unavailable_reason

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / 'ci' / 'gitlab' / 'mlbench.gitlab-ci.yml'
PIPELINE_TIMEOUT_S = 900
#: One quick benchmark variant keeps each pipeline to about a minute.
SELECTION = '-t ^resnet50$ -t ^smoke$ -P num_nodes=1'
#: How much faster the planted history was than this machine.
SPEEDUP = 3.0
EARLIER_RUNS = 12

PIPELINE_FILE = """\
include:
  - local: mlbench.gitlab-ci.yml
variables:
  MLBENCH_SOURCE: {source}
  MLBENCH_SYSTEM: slurm-ci
  MLBENCH_MODE: ci-smoke
  MLBENCH_HISTORY_DIR: {history}
  MLBENCH_VENV_ROOT: {venvs}
  # The CI machine already has the dependencies: the environment only adds the package.
  MLBENCH_VENV_OPTIONS: --system-site-packages
  MLBENCH_PIP_OPTIONS: --no-deps
  MLBENCH_REFRAME_OPTIONS: "{selection}"
"""


@pytest.fixture(scope='module', autouse=True)
def _require_gitlab_ci_local() -> None:
    if shutil.which('gitlab-ci-local') is None:
        pytest.skip('gitlab-ci-local is not installed (npm install -g gitlab-ci-local@4.72.0)')


@pytest.fixture(scope='module')
def slurm_cluster() -> None:
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope='module')
def venvs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One environment folder for every pipeline of the module, as a runner would keep it."""
    return tmp_path_factory.mktemp('venvs')


def make_pipeline_repo(root: Path, history: Path, venvs: Path, selection: str) -> Path:
    repo = root / 'pipeline'
    repo.mkdir()
    shutil.copy(TEMPLATE, repo / TEMPLATE.name)
    (repo / '.gitlab-ci.yml').write_text(PIPELINE_FILE.format(
        source=REPO, history=history, venvs=venvs, selection=selection))
    commit_all(repo)
    return repo


def commit_all(repo: Path) -> None:
    """gitlab-ci-local reads local includes from the repository's committed files."""
    for command in (['git', 'init', '-q'], ['git', 'add', '-A'],
                    ['git', '-c', 'user.name=ci', '-c', 'user.email=ci@localhost',
                     'commit', '-qm', 'pipeline']):
        subprocess.run(command, cwd=repo, check=True)


def run_pipeline(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(['gitlab-ci-local', '--no-color'], cwd=repo, capture_output=True,
                          text=True, timeout=PIPELINE_TIMEOUT_S)


def job_passed(output: str, job: str) -> bool | None:
    """The job's verdict in gitlab-ci-local's closing summary (None: the job never ran)."""
    for line in output.splitlines():
        words = line.split()
        if len(words) == 2 and words[1] == job:
            return words[0] == 'PASS'
    return None


def artifact(repo: Path, job: str, name: str) -> Path:
    return repo / '.gitlab-ci-local' / 'artifacts' / job / name


def plant_faster_history(source: Path, target: Path) -> None:
    """``target``: the benchmark rows of ``source``, as if ``EARLIER_RUNS`` earlier runs had
    been ``SPEEDUP`` times faster, one a day, with everything else (settings, environment)
    equal."""
    for log in source.rglob('resnet50*.log'):
        with log.open() as stream:
            rows = list(csv.reader(stream, delimiter='|'))
        header, latest = rows[0], rows[-1]
        if 'throughput_value' not in header:
            continue
        column = {name: index for index, name in enumerate(header)}
        finished = datetime.fromisoformat(latest[column['job_completion_time']])
        planted = [header]
        for days in range(EARLIER_RUNS, 0, -1):
            row = list(latest)
            row[column['job_completion_time']] = (finished - timedelta(days=days)).isoformat()
            for variable, factor in (('throughput', SPEEDUP), ('throughput_per_device', SPEEDUP),
                                     ('time_to_target', 1 / SPEEDUP),
                                     ('epoch_time', 1 / SPEEDUP)):
                row[column[f'{variable}_value']] = str(
                    float(latest[column[f'{variable}_value']]) * factor)
            planted.append(row)
        destination = target / log.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with destination.open('w', newline='') as stream:
            csv.writer(stream, delimiter='|', lineterminator='\n').writerows(planted)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.usefixtures('slurm_cluster')
def test_pipeline_green_then_red_on_a_regression(tmp_path: Path, venvs: Path) -> None:
    history = tmp_path / 'history'
    repo = make_pipeline_repo(tmp_path, history, venvs, SELECTION)
    green = run_pipeline(repo)
    assert green.returncode == 0, green.stdout[-4000:]
    for job in ('mlbench-install', 'mlbench-run', 'mlbench-analyse'):
        assert job_passed(green.stdout, job), green.stdout[-4000:]
    junit = artifact(repo, 'mlbench-run', 'mlbench-junit.xml').read_text()
    assert 'resnet50' in junit and '<testcase' in junit
    assert artifact(repo, 'mlbench-analyse', 'mlbench-dashboard.html').stat().st_size > 0
    assert list((history / 'perflogs').rglob('resnet50*.log'))

    # The same pipeline on a history whose earlier runs were much faster.
    slow_history = tmp_path / 'slow-history'
    plant_faster_history(history / 'perflogs', slow_history / 'perflogs')
    shutil.rmtree(tmp_path / 'pipeline')
    repo = make_pipeline_repo(tmp_path, slow_history, venvs, SELECTION)
    red = run_pipeline(repo)
    assert red.returncode != 0, red.stdout[-4000:]
    assert job_passed(red.stdout, 'mlbench-run'), red.stdout[-4000:]
    assert job_passed(red.stdout, 'mlbench-analyse') is False, red.stdout[-4000:]
    assert '[mlbench-ci] regression or failed run' in red.stdout
    verdicts = artifact(repo, 'mlbench-analyse', 'mlbench-regressions.txt').read_text()
    regressed = [line for line in verdicts.splitlines() if 'resnet50_smoke' in line
                 and 'throughput' in line and 'regress' in line.lower()]
    assert regressed, verdicts


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.usefixtures('slurm_cluster')
def test_failing_run_fails_the_pipeline(tmp_path: Path, venvs: Path) -> None:
    # A configuration the benchmark refuses: the test fails fast in ReFrame's sanity stage.
    repo = make_pipeline_repo(tmp_path, tmp_path / 'history', venvs,
                              f'{SELECTION} -S overrides=training.n_epochs=0')
    result = run_pipeline(repo)
    assert result.returncode != 0, result.stdout[-4000:]
    assert job_passed(result.stdout, 'mlbench-run') is False, result.stdout[-4000:]
    assert 'reframe exited with' in result.stdout
    junit = artifact(repo, 'mlbench-run', 'mlbench-junit.xml').read_text()
    assert '<failure' in junit
    # The analyse job runs all the same and names the failed run.
    assert job_passed(result.stdout, 'mlbench-analyse') is False
    verdicts = artifact(repo, 'mlbench-analyse', 'mlbench-regressions.txt').read_text()
    assert 'resnet50_smoke' in verdicts and 'fail' in verdicts.lower()


def test_example_pipeline_parses(tmp_path: Path) -> None:
    """The example a centre copies is a valid pipeline with the template included."""
    repo = tmp_path / 'pipeline'
    (repo / 'ci' / 'gitlab').mkdir(parents=True)
    shutil.copy(TEMPLATE, repo / 'ci' / 'gitlab' / TEMPLATE.name)
    example = (REPO / 'ci' / 'gitlab' / 'example.gitlab-ci.yml').read_text()
    project_include = ('  - project: hpc/mlbench-reframe\n    ref: main\n'
                       '    file: ci/gitlab/mlbench.gitlab-ci.yml\n')
    assert project_include in example
    (repo / '.gitlab-ci.yml').write_text(example.replace(
        project_include, '  - local: ci/gitlab/mlbench.gitlab-ci.yml\n'))
    commit_all(repo)
    listing = subprocess.run(['gitlab-ci-local', '--list', '--no-color'], cwd=repo,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    for job in ('mlbench-install', 'mlbench-run', 'mlbench-analyse'):
        assert job in listing.stdout
