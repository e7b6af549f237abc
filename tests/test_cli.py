"""The `mlbench` command: table, synth, help, and errors that name what is wrong."""

import argparse
import re

import pytest

from benchmarks.cli import build_parser, main, table_rows
from benchmarks.core.memory import measure
from benchmarks.resnet50.train import SPEC as RESNET50
from tests.conftest import REPO, run_mlbench


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


def _all_help(parser: argparse.ArgumentParser) -> str:
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts += [_all_help(sub) for sub in action.choices.values()]
    return "\n".join(texts)


def test_help_names_only_files_the_repository_has():
    """A path must exist from the repository root; a bare name (``smoke.yaml``) somewhere."""
    help_text = _all_help(build_parser())
    named = set(re.findall(r"[\w./-]+\.(?:md|py|yaml)\b", help_text))
    assert "docs/reference.md" in named
    missing = [name for name in named if not (REPO / name).exists()
               and ("/" in name or not any(REPO.glob(f"*/*/{name}")))]
    assert missing == []
