"""The `mlbench` command: table, synth, and errors that name what is wrong."""

import pytest

from benchmarks.cli import main, table_rows
from benchmarks.core.memory import measure
from benchmarks.resnet50.train import SPEC as RESNET50
from tests.conftest import run_mlbench


def test_table_counts_parameters_and_optimizer_memory(capsys):
    (row,) = table_rows([RESNET50])
    assert row["parameters"] == 25_557_032
    assert row["optimizer"] == "lars"
    assert row["training_memory_gib"] == round(25_557_032 * 12 / 2**30, 2)


def test_table_formats(capsys):
    assert main(["table", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("benchmark,task,model")
    assert any(line.startswith("resnet50,") for line in lines)


def test_measured_memory_includes_more_than_the_weights():
    measured = measure(RESNET50, "cpu", 4)
    assert measured["scale"] == "smoke" and measured["batch_size"] == 4
    assert measured["peak_bytes"] > 130_002 * 4 * 3


@pytest.mark.parametrize("args, message", [
    (["train", "nosuchbench"], "unknown benchmark 'nosuchbench'"),
    (["synth", "resnet50", "/dev/null/inside-a-file"], "/dev/null/inside-a-file"),
    (["synth", "resnet50", "/tmp/x", "--samples", "-3"], "--samples"),
])
def test_bad_arguments_exit_2_naming_the_problem(args, message):
    done = run_mlbench(*args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
