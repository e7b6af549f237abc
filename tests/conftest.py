"""Shared fixtures: synthetic datasets written once per session, and a runner for `mlbench`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Completed:
    """A finished `mlbench` process with its MLLOG records parsed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def mllog(self) -> list[dict]:
        return [json.loads(line.split(":::MLLOG", 1)[1]) for line in self.stdout.splitlines()
                if line.startswith(":::MLLOG")]

    def events(self, key: str) -> list[dict]:
        return [record for record in self.mllog if record["key"] == key]

    def time_to_target(self) -> float:
        """Seconds from run_start to run_stop, as the ReFrame layer computes it."""
        run_start, run_stop = self.events("run_start")[0], self.events("run_stop")[0]
        return (run_stop["time_ms"] - run_start["time_ms"]) / 1000


def quiet_env(threads: int = 1) -> dict[str, str]:
    """The test process's environment with torch limited to ``threads`` threads."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_mlbench(*args: str, timeout: float = 600, launcher: tuple[str, ...] = ()) -> Completed:
    """Run ``mlbench ARGS`` (or ``LAUNCHER ... -m benchmarks.cli ARGS``) in a subprocess."""
    if launcher:
        command = [*launcher, "-m", "benchmarks.cli", *args]
    else:
        command = [sys.executable, "-m", "benchmarks.cli", *args]
    done = subprocess.run(command, cwd=REPO, env=quiet_env(), capture_output=True, text=True,
                          timeout=timeout)
    return Completed(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for in-process tests: the CI machine's two cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def synth_with_cli(tmp_path_factory: pytest.TempPathFactory, benchmark: str,
                   samples: int) -> Path:
    """``mlbench synth BENCHMARK DIR --samples N`` into a fresh folder: a smoke dataset."""
    outdir = tmp_path_factory.mktemp(f"{benchmark}-data")
    done = run_mlbench("synth", benchmark, str(outdir), "--samples", str(samples))
    assert done.returncode == 0, done.stderr
    return outdir


@pytest.fixture(scope="session")
def resnet_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic ImageFolder the ResNet50 smoke config trains on."""
    return synth_with_cli(tmp_path_factory, "resnet50", 400)


FAILED_CHECK = re.compile(r"CHECK for '(\w+)' failed|Failed checks for (\w+) :")
MISSING_OR_REPEATED = re.compile(r"Required .*occurrence.*")


def check_closed(log_file: Path, workdir: Path, usage: str, ruleset: str) -> tuple[
        set[str], list[str], str]:
    """(keys whose checks failed, messages about missing or repeated keys, the report) of
    the compliance checker on ``log_file`` declared closed-division."""
    text = log_file.read_text()
    division = '"key": "submission_division", "value": "open"'
    closed = workdir / "closed.txt"
    closed.write_text(text.replace(division, division.replace("open", "closed")))
    checked = subprocess.run(
        [sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", usage,
         "--ruleset", ruleset, str(closed)], capture_output=True, text=True, cwd=workdir)
    report = checked.stdout + checked.stderr
    failed = {a or b for a, b in FAILED_CHECK.findall(report)}
    missing = MISSING_OR_REPEATED.findall(report)
    if checked.returncode and not failed and not missing:
        missing.append(f"unparsed checker failure: {report[-2000:]}")
    return failed, missing, report
