"""Checks that the local Slurm cluster from ci/slurm/start.sh behaves as the ReFrame layer needs.

Two emulated nodes must both run job steps, accounting must report finished jobs (ReFrame's
`slurm` backend polls sacct) and impossible requests must fail at submission instead of pending
forever. Skipped, with the reason shown, when the cluster is not running.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

NODE_NAMES = {"node1", "node2"}
COMMAND_TIMEOUT_S = 60
ACCOUNTING_TIMEOUT_S = 30


def _cluster_unavailable_reason() -> str | None:
    if shutil.which("scontrol") is None:
        return "Slurm is not installed; start the cluster with `bash ci/slurm/start.sh`"
    try:
        ping = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return "`scontrol ping` timed out; start the cluster with `bash ci/slurm/start.sh`"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return (
            "Slurm controller not reachable (`scontrol ping` failed); "
            "start the cluster with `bash ci/slurm/start.sh`"
        )
    return None


@pytest.fixture(scope="module", autouse=True)
def _require_cluster() -> None:
    reason = _cluster_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=cwd)


def _unique_job_name() -> str:
    return f"mlbench-test-{uuid.uuid4().hex[:8]}"


def _accounting_record(job_id: str) -> tuple[str, str]:
    """(State, ExitCode) of the job allocation once sacct reports it finished."""
    deadline = time.monotonic() + ACCOUNTING_TIMEOUT_S
    last_output = ""
    while time.monotonic() < deadline:
        result = _run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode"])
        last_output = result.stdout + result.stderr
        for line in result.stdout.splitlines():
            record_id, state, exit_code = line.split("|")
            if record_id == job_id and state not in {"PENDING", "RUNNING", "COMPLETING"}:
                return state, exit_code
        time.sleep(0.5)
    pytest.fail(f"sacct has no finished record of job {job_id}; last output: {last_output!r}")


def test_sinfo_lists_both_nodes_in_default_partition() -> None:
    result = _run(["sinfo", "-h", "-N", "-o", "%N %P"])
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split()) for line in result.stdout.splitlines()}
    assert {("node1", "debug*"), ("node2", "debug*")} <= rows


def test_two_node_step_runs_one_task_on_each_node() -> None:
    result = _run(
        [
            "srun",
            "-N2",
            "--ntasks-per-node=1",
            "--cpus-per-task=2",
            "bash",
            "-c",
            "echo $SLURMD_NODENAME",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(NODE_NAMES)


@pytest.mark.parametrize(("exit_status", "expected_state"), [(0, "COMPLETED"), (3, "FAILED")])
def test_batch_job_outcome_is_in_accounting(
    tmp_path: Path, exit_status: int, expected_state: str
) -> None:
    submit = _run(
        [
            "sbatch",
            "--parsable",
            f"--job-name={_unique_job_name()}",
            "--output=job.out",
            "--wrap",
            f"echo $SLURMD_NODENAME; exit {exit_status}",
        ],
        cwd=tmp_path,
    )
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]

    state, exit_code = _accounting_record(job_id)

    assert (state, exit_code) == (expected_state, f"{exit_status}:0")
    assert (tmp_path / "job.out").read_text().strip() in NODE_NAMES


def test_job_needing_more_nodes_than_exist_is_rejected_at_submission(tmp_path: Path) -> None:
    job_name = _unique_job_name()
    submit = _run(
        ["sbatch", "-N3", f"--job-name={job_name}", "--output=/dev/null", "--wrap", "true"],
        cwd=tmp_path,
    )
    assert submit.returncode != 0
    assert "Node count specification invalid" in submit.stderr
    queued = _run(["squeue", "-h", "-n", job_name, "-o", "%A"])
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.strip() == ""
