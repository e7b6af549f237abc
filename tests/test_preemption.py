"""Preemption end to end: SIGTERM mid-run writes a checkpoint, the rerun resumes from it and
ends exactly where an uninterrupted run with the same seed ends; a SIGTERM to the whole job,
DataLoader workers included (as Slurm sends it), ends the same way."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Completed, quiet_env, run_mlbench

RUN = ["train", "resnet50", "--config", "smoke", "--set", "training.target=null",
       "--set", "training.n_epochs=4", "--set", "training.nan_check_every=1"]


def eval_accuracies(done: Completed) -> list[float]:
    return [event["value"] for event in done.events("eval_accuracy")]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_result(resnet_data, tmp_path, signum):
    common = [*RUN, "--data-dir", str(resnet_data)]
    reference = run_mlbench(*common)
    assert reference.returncode == 0, reference.stderr

    checkpoints = tmp_path / "checkpoints"
    with_checkpoints = [*common, "--set", f"training.checkpoint_dir={checkpoints}",
                        "--set", "training.checkpoint_every=1"]
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", *with_checkpoints],
                               cwd=REPO, env=quiet_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    stderr_lines = []
    for line in process.stderr:
        stderr_lines.append(line)
        if "epoch 2/4" in line:
            process.send_signal(signum)
            break
    stdout, rest = process.communicate(timeout=300)
    stderr = "".join(stderr_lines) + rest
    assert process.returncode != 0
    if signum == signal.SIGTERM:
        assert "stopped by SIGTERM" in stderr and "checkpoint" in stderr, stderr
        assert '"status": "aborted"' in stdout
    assert (checkpoints / "latest").exists()

    resumed = run_mlbench(*with_checkpoints)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.events("mlbench_resumed"), "the log marks the run as resumed"
    assert eval_accuracies(resumed)[-1] == eval_accuracies(reference)[-1]


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("signum", [signal.SIGTERM,
                                    pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_signal_to_the_whole_job_with_loader_workers_checkpoints_and_stops(resnet_data, tmp_path,
                                                                         signum):
    checkpoints = tmp_path / "checkpoints"
    command = [sys.executable, "-m", "benchmarks.cli", *RUN, "--data-dir", str(resnet_data),
               "--set", "training.n_epochs=50", "--set", "data.num_workers=2",
               "--set", f"training.checkpoint_dir={checkpoints}"]
    process = subprocess.Popen(command, cwd=REPO, env=quiet_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    stderr_lines = []
    for line in process.stderr:
        stderr_lines.append(line)
        if "epoch 1/50" in line:
            break
    deadline = time.monotonic() + 60
    while not children(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children(process.pid)
    os.killpg(process.pid, signum)  # as Slurm signals every process of the job step
    stdout, rest = process.communicate(timeout=300)
    stderr = "".join(stderr_lines) + rest
    assert workers, "the loader workers were running when the signal came"
    assert process.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"stopped by {signal.Signals(signum).name}" in errors[0], stderr
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr
    assert '"status": "aborted"' in stdout
    assert (checkpoints / "latest").exists()
