"""Checks that the local Slurm cluster from ci/slurm/start.sh behaves as the ReFrame layer needs.

Two emulated nodes must both run job steps, accounting must report finished jobs (ReFrame's
`slurm` backend polls sacct) and impossible requests must fail at submission instead of pending
forever. A node lost mid-job must fail the ReFrame test quickly, naming the node. Skipped, with
the reason shown, when the cluster is not running.
"""

from __future__ import annotations

import os
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


STATE_DIR = Path("/tmp/mlbench-slurm")
REPO = Path(__file__).resolve().parents[1]
NODE_LOSS_DEADLINE_S = 120


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _job_processes_on(job_id: str, node: str) -> list[int]:
    """Task processes of ``job_id`` that slurmd ``node`` started (both nodes share this host)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            env = _environ(int(entry.name))
            if env.get("SLURM_JOB_ID") == job_id and env.get("SLURMD_NODENAME") == node:
                pids.append(int(entry.name))
    return pids


def _kill_node(job_id: str, node: str) -> None:
    """What a node crash looks like to the controller: its slurmd, step daemons and tasks die."""
    slurmd = int((STATE_DIR / "pids" / f"slurmd-{node}.pid").read_text().split()[0])
    tasks = _job_processes_on(job_id, node)
    stepds = {_parent(pid) for pid in tasks}
    stepds = {pid for pid in stepds if "slurmstepd" in Path(f"/proc/{pid}/comm").read_text()}
    for pid in [slurmd, *stepds, *tasks]:
        subprocess.run(["kill", "-9", str(pid)], check=False)


def _running_job(name_prefix: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        jobs = _run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %j"]).stdout.split("\n")
        for line in jobs:
            job_id, _, name = line.partition(" ")
            if name.startswith(name_prefix) and _job_processes_on(job_id, "node2"):
                return job_id
        time.sleep(1)
    pytest.fail(f"no running job named {name_prefix}* with a task on node2")


@pytest.mark.slow
def test_lost_node_fails_the_test_naming_the_node(tmp_path: Path) -> None:
    """A node whose slurmd dies mid-job: FAIL within two minutes, reason names the node, and
    the perflog still gets the row. The node is restarted afterwards (ci/slurm/start.sh)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("killing and restarting a node's slurmd needs root")
    from tests.reframe_helpers import TESTS_DIR, reframe_command, run_report

    command, env = reframe_command(
        ["--system", "slurm-ci", "-c", str(TESTS_DIR / "resnet50.py"),
         "-n", "^resnet50_smoke%num_nodes=2", "-S", "target=1.01", "-S", "epochs=1000", "-r"])
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as session:
        try:
            job_id = _running_job("rfm_resnet50_smoke", time.monotonic() + 600)
            time.sleep(5)
            _kill_node(job_id, "node2")
            killed_at = time.monotonic()
            output, _ = session.communicate(timeout=NODE_LOSS_DEADLINE_S + 60)
            elapsed = time.monotonic() - killed_at
        finally:
            if session.poll() is None:
                session.kill()
            subprocess.run(["bash", str(REPO / "ci" / "slurm" / "start.sh")],
                           capture_output=True, text=True, timeout=300, check=False)
    assert elapsed < NODE_LOSS_DEADLINE_S, output[-3000:]
    case, = [case for case in run_report(tmp_path) if case["name"].startswith("resnet50_smoke ")]
    assert case["result"] == "fail", output[-3000:]
    assert "node2" in case["fail_reason"] and "NODE_FAIL" in case["fail_reason"], (
        case["fail_reason"])
    perflog = tmp_path / "perflogs" / "slurm-ci" / "default" / "resnet50_smoke.log"
    header, *rows = perflog.read_text().splitlines()
    row = dict(zip(header.split("|"), rows[-1].split("|"), strict=True))
    assert row["result"] == "fail" and row["jobid"] == job_id
    assert row["time_to_target_value"] == "None"
