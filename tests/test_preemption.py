"""Preemption end to end: SIGTERM mid-run writes a checkpoint, the rerun resumes from it and
ends exactly where an uninterrupted run with the same seed ends."""

import signal
import subprocess
import sys

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
