"""Dead rank: SIGKILL one rank of a two-process ResNet50 smoke run, and the whole job ends.

Each scenario starts the real launcher (``torchrun --standalone --nproc_per_node=2``, or
``srun -N2`` on the local Slurm cluster of ``ci/slurm/start.sh``), waits until the job has
reached the chosen phase (``startup``: the rank's process exists, it has not joined the
process group yet; ``training``: rank 0 logged ``epoch_start``), kills the chosen rank's own
process (not its DataLoader workers) with SIGKILL and measures how long the launcher takes to
exit. It must exit non-zero within :data:`DEADLINE_S`, and the reason the ReFrame layer
would give (``failure_reason`` of ``reframe_tests/mlbench_results.py``) must name the dead rank.

The launcher is found by an environment variable holding a fresh token: every process of the
job (srun tasks included, Slurm exports the environment) carries it in ``/proc/PID/environ``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, quiet_env
from tests.reframe_helpers import load_results_module, slurm_unavailable_reason

#: The issue's bound: a job with a dead rank must end within this many seconds.
DEADLINE_S = 60
#: How long a job may take to reach the phase where a rank is killed.
START_TIMEOUT_S = 300
TOKEN_VARIABLE = "MLBENCH_RELIABILITY_JOB"
RANK_VARIABLE = {"torchrun": "RANK", "srun": "SLURM_PROCID"}


@dataclass(frozen=True)
class Scenario:
    launcher: str
    phase: str
    rank: int
    kill_on_bad_exit: bool = True
    settings: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        flag = "" if self.kill_on_bad_exit or self.launcher != "srun" else "-no-kill-on-bad-exit"
        settings = "".join(f"-{setting.rsplit('.', 1)[-1]}" for setting in self.settings)
        return f"{self.launcher}-{self.phase}-rank{self.rank}{flag}{settings}"


TORCHRUN = [Scenario("torchrun", "training", 1), Scenario("torchrun", "training", 0),
            Scenario("torchrun", "startup", 1)]
# kill_on_bad_exit is how the ReFrame tests and run.slurm launch; without it, what ends the
# job is the surviving rank noticing its dead peer.
SRUN = [Scenario("srun", "training", 1), Scenario("srun", "startup", 1),
        Scenario("srun", "training", 1, kill_on_bad_exit=False),
        Scenario("srun", "training", 0, kill_on_bad_exit=False),
        # Nobody kills the survivor, which waits for its peer in the rendezvous: what bounds
        # that wait is distributed.timeout_s (300 s by default, shortened here).
        Scenario("srun", "startup", 1, kill_on_bad_exit=False,
                 settings=("distributed.timeout_s=20",))]


def job_processes(token: str) -> dict[int, tuple[int, dict[str, str]]]:
    """PID -> (parent PID, environment) of every process carrying ``token``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if f"{TOKEN_VARIABLE}={token}".encode() not in raw:
            continue
        environ = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                       if "=" in item)
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        found[int(entry.name)] = (parent, environ)
    return found


def rank_process(token: str, rank_variable: str, rank: int) -> int | None:
    """PID of the rank's own process: its DataLoader workers inherit its environment, so the
    rank is the one process with that rank whose parent has none."""
    processes = job_processes(token)
    ranked = {pid: parent for pid, (parent, environ) in processes.items()
              if environ.get(rank_variable) == str(rank)}
    roots = [pid for pid, parent in ranked.items() if parent not in ranked]
    assert len(roots) <= 1, f"several processes claim rank {rank}: {roots}"
    return roots[0] if roots else None


def wait_until(condition, process: subprocess.Popen, what: str, output: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the job ended (exit {process.returncode}) before {what}:\n"
                        f"{output.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {START_TIMEOUT_S} s")
        time.sleep(0.1)


def command(scenario: Scenario, data: Path, job_name: str) -> list[str]:
    train = ["-m", "benchmarks.cli", "train", "resnet50", "--config", "smoke",
             "--data-dir", str(data), *(arg for setting in scenario.settings
                                        for arg in ("--set", setting))]
    if scenario.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", *train]
    kill = ["--kill-on-bad-exit=1"] if scenario.kill_on_bad_exit else ["--kill-on-bad-exit=0"]
    return ["srun", "-N2", "-n2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10",
            f"--job-name={job_name}", *kill, sys.executable, *train]


def stop_leftovers(process: subprocess.Popen, job_name: str, launcher: str) -> None:
    """End what this test started if it is still running (its session, its Slurm job)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if launcher == "srun":
        jobs = subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%i"], capture_output=True,
                              text=True, timeout=30).stdout.split()
        for job_id in jobs:
            subprocess.run(["scancel", job_id], timeout=30, check=False)


def kill_a_rank(scenario: Scenario, data: Path, tmp_path: Path) -> tuple[float, int, str, str]:
    """(seconds from the kill to the launcher's exit, exit code, stdout, stderr)."""
    token = uuid.uuid4().hex
    job_name = f"mlbench-dead-rank-{token[:12]}"
    env = quiet_env()
    env[TOKEN_VARIABLE] = token
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    rank_variable = RANK_VARIABLE[scenario.launcher]
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command(scenario, data, job_name), cwd=REPO, env=env,
                                   stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        if scenario.phase == "training":
            wait_until(lambda: '"key": "epoch_start"' in stdout_path.read_text(), process,
                       "epoch_start", stderr_path)
        wait_until(lambda: rank_process(token, rank_variable, scenario.rank) is not None,
                   process, f"process of rank {scenario.rank}", stderr_path)
        victim = rank_process(token, rank_variable, scenario.rank)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            process.wait(timeout=DEADLINE_S + 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{scenario.id}: the job still runs {DEADLINE_S + 60} s after the "
                        f"kill:\n{stderr_path.read_text(errors='replace')[-3000:]}")
        elapsed = time.monotonic() - killed_at
    finally:
        stop_leftovers(process, job_name, scenario.launcher)
    return (elapsed, process.returncode, stdout_path.read_text(errors="replace"),
            stderr_path.read_text(errors="replace"))


def assert_job_ended_with_reason(scenario: Scenario, data: Path, tmp_path: Path) -> None:
    elapsed, exit_code, stdout, stderr = kill_a_rank(scenario, data, tmp_path)
    base = load_results_module()
    summary = base.summarise_run(stdout, stderr)
    reason = base.failure_reason(summary, stderr, exit_code=exit_code)
    print(f"dead rank {scenario.id}: job ended {elapsed:.1f} s after SIGKILL, exit {exit_code}; "
          f"ReFrame reason: {reason}")
    assert exit_code != 0
    assert elapsed < DEADLINE_S, f"{scenario.id}: {elapsed:.1f} s"
    assert reason and reason.startswith("crashed"), reason
    dead = (f"task {scenario.rank}: Killed" if scenario.launcher == "srun"
            else "torchrun worker exit code -9")
    assert dead in reason, reason


@pytest.mark.slow
@pytest.mark.parametrize("scenario", TORCHRUN, ids=lambda scenario: scenario.id)
def test_dead_rank_ends_torchrun_job(scenario: Scenario, resnet_data: Path,
                                     tmp_path: Path) -> None:
    assert_job_ended_with_reason(scenario, resnet_data, tmp_path)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("scenario", SRUN, ids=lambda scenario: scenario.id)
def test_dead_rank_ends_srun_job(scenario: Scenario, resnet_data: Path, tmp_path: Path) -> None:
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    assert_job_ended_with_reason(scenario, resnet_data, tmp_path)
