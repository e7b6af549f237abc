"""Bad input matrix: every case runs the real ``mlbench`` command and must fail cleanly.

Clean means: the documented exit code (2 for a bad configuration or input, 1 for a runtime
fault), exactly one ``error:`` line on stderr that names the key or file at fault, no Python
traceback, and no half-written output: MLLOG lines (stdout and ``training.log_file``) are
whole JSON lines ending in ``run_stop`` with status ``aborted`` and the same reason, and a
failed ``mlbench synth`` leaves no output folder behind. Cases flagged ``before_training``
must fail before the first ``epoch_start``.

Inputs are tiny datasets written once per session by each benchmark's own writer (the
``synthesize`` of its SPEC, the code behind ``mlbench synth``); a case gets a clone made of
symbolic links and replaces only the file it corrupts, so the cases never touch each other's
data and cost no copying.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from benchmarks.registry import load_spec
from tests.conftest import Completed, run_mlbench

REPO = Path(__file__).resolve().parents[1]

#: Training samples of each session dataset: the smallest each writer accepts that still
#: lets every case reach the code it targets.
SAMPLES = {"resnet50": 20, "cosmoflow": 1, "deepcam": 1, "bert_large": 4, "gptj": 4,
           "alphafold2": 4}

#: Cases run side by side (each is one interpreter with one torch thread).
PARALLEL_CASES = min(4, os.cpu_count() or 1)

#: Seconds a case may take (a few under a quiet machine; the slowest builds a model).
CASE_TIMEOUT_S = 180

#: torchrun's variables for rank 0 of 3: the runner checks the batch split before it starts
#: a process group, so no other rank is needed to see that check fail.
THREE_RANKS = ("env", "RANK=0", "WORLD_SIZE=3", "LOCAL_RANK=0", "LOCAL_WORLD_SIZE=3",
               sys.executable)


class Datasets:
    """Session datasets in the real formats, written on first use, cloned per case."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: dict[str, Path] = {}

    def pristine(self, benchmark: str) -> Path:
        if benchmark not in self.written:
            folder = self.root / benchmark
            load_spec(benchmark).synthesize(folder, SAMPLES[benchmark], 0)
            self.written[benchmark] = folder
        return self.written[benchmark]

    def clone(self, benchmark: str, dest: Path) -> Path:
        """A tree of folders and symbolic links mirroring the pristine dataset."""
        source = self.pristine(benchmark)
        dest.mkdir(parents=True)
        for path in sorted(source.rglob("*")):
            target = dest / path.relative_to(source)
            if path.is_dir():
                target.mkdir()
            else:
                target.symlink_to(path)
        return dest


def replace(path: Path, content: bytes) -> Path:
    """Put ``content`` where the link ``path`` was, leaving the linked file untouched."""
    path.unlink()
    path.write_bytes(content)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    original = path.read_bytes()
    return replace(path, original[: int(len(original) * keep)])


def write_hdf5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.unlink()
    with h5py.File(path, "w") as handle:
        for name, array in arrays.items():
            handle.create_dataset(name, data=array)
    return path


def copy_hdf5_without(path: Path, dropped: str) -> Path:
    """``path`` rewritten with every top-level dataset except ``dropped``."""
    with h5py.File(path, "r") as handle:
        arrays = {name: handle[name][()] for name in handle if name != dropped}
    return write_hdf5(path, arrays)


def flip_tfrecord_payload_byte(path: Path) -> Path:
    """Change one data byte of the (gzipped) record stream: its data CRC no longer matches."""
    stream = bytearray(gzip.decompress(path.read_bytes()))
    stream[len(stream) // 2] ^= 0xFF
    return replace(path, gzip.compress(bytes(stream)))


def break_json_line(path: Path, line_number: int) -> Path:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    lines[line_number - 1] = '{"text": "cut off in the mid\n'
    return replace(path, gzip.compress("".join(lines).encode()))


@dataclass
class Workspace:
    """What a case may use: its own folder and the session datasets."""

    folder: Path
    datasets: Datasets

    @property
    def log_file(self) -> Path:
        return self.folder / "mllog.txt"

    @property
    def regular_file(self) -> Path:
        """A file, so that no folder can be made below it (root ignores permission bits)."""
        path = self.folder / "a-file"
        path.touch()
        return path

    def data(self, benchmark: str) -> Path:
        return self.datasets.clone(benchmark, self.folder / "data")

    def train(self, benchmark: str, data_dir: Path | str, *settings: str) -> list[str]:
        """``mlbench train`` of the smoke config, logging to this case's log file."""
        overrides = [arg for setting in (f"training.log_file={self.log_file}", *settings)
                     for arg in ("--set", setting)]
        return ["train", benchmark, "--config", "smoke", "--data-dir", str(data_dir),
                *overrides]

    def resnet_train(self, *settings: str) -> list[str]:
        return self.train("resnet50", self.data("resnet50"), *settings)


@dataclass
class Invocation:
    """One ``mlbench`` command and what its error line must name."""

    args: list[str]
    names: str
    launcher: tuple[str, ...] = ()
    timeout: float = CASE_TIMEOUT_S
    #: Output that must not exist after the failure (a synth or checkpoint folder).
    left_behind: Path | None = None


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Workspace], Invocation]
    exit_code: int = 2
    before_training: bool = True
    marks: tuple = field(default=())


def _config_file(ws: Workspace, text: str) -> Path:
    path = ws.folder / "bad.yaml"
    path.write_text(text)
    return path


def _smoke_with_extra_section(ws: Workspace) -> Invocation:
    smoke = (REPO / "benchmarks" / "resnet50" / "smoke.yaml").read_text()
    config = _config_file(ws, smoke + "tuning:\n  lr: 0.1\n")
    args = ws.resnet_train()
    args[args.index("smoke")] = str(config)
    return Invocation(args, "'tuning'")


def _config_not_yaml(ws: Workspace) -> Invocation:
    config = _config_file(ws, "data:\n  global_batch_size: [32\n")
    return Invocation(["train", "resnet50", "--config", str(config)], str(config))


def _checkpoint_garbage(ws: Workspace) -> Invocation:
    checkpoints = ws.folder / "checkpoints"
    (checkpoints / "epoch0002-step0000000").mkdir(parents=True)
    (checkpoints / "epoch0002-step0000000" / "state.pt").write_bytes(b"not a checkpoint")
    (checkpoints / "epoch0002-step0000000" / "rng-rank0.pt").write_bytes(b"nor this")
    (checkpoints / "latest").write_text("epoch0002-step0000000\n")
    return Invocation(ws.resnet_train("data.global_batch_size=4",
                                      f"training.checkpoint_dir={checkpoints}"),
                      str(checkpoints / "epoch0002-step0000000" / "state.pt"))


def _corrupt_jpeg(ws: Workspace) -> Invocation:
    data = ws.data("resnet50")
    first = sorted((data / "train").rglob("*.JPEG"))[0]
    truncate(first, 0.3)
    return Invocation(ws.train("resnet50", data, "data.global_batch_size=4",
                               "data.shuffle=false"), str(first))


def _cosmoflow_truncated(ws: Workspace) -> Invocation:
    data = ws.data("cosmoflow")
    target = truncate(data / "train" / "cosmo_000000.h5", 0.5)
    return Invocation(ws.train("cosmoflow", data), str(target))


def _cosmoflow_missing_dataset(ws: Workspace) -> Invocation:
    data = ws.data("cosmoflow")
    target = copy_hdf5_without(data / "train" / "cosmo_000000.h5", "y")
    return Invocation(ws.train("cosmoflow", data), str(target))


def _cosmoflow_bad_crc(ws: Workspace) -> Invocation:
    data = ws.data("cosmoflow")
    target = flip_tfrecord_payload_byte(data / "train" / "cosmo_000000.tfrecord")
    return Invocation(ws.train("cosmoflow", data, "data.format=tfrecord"), str(target))


def _deepcam_wrong_shape(ws: Workspace) -> Invocation:
    data = ws.data("deepcam")
    target = write_hdf5(data / "train" / "data-000000.h5", {
        "climate/data": np.zeros((16, 16, 16), np.float32),
        "climate/labels_0": np.zeros((16, 16), np.int8)})
    return Invocation(ws.train("deepcam", data), str(target))


def _deepcam_stats_missing(ws: Workspace) -> Invocation:
    data = ws.data("deepcam")
    (data / "stats.h5").unlink()
    return Invocation(ws.train("deepcam", data), str(data / "stats.h5"))


def _bert_missing_dataset(ws: Workspace) -> Invocation:
    data = ws.data("bert_large")
    target = copy_hdf5_without(sorted((data / "training").iterdir())[0], "masked_lm_ids")
    return Invocation(ws.train("bert_large", data), str(target))


def _gptj_broken_json(ws: Workspace) -> Invocation:
    data = ws.data("gptj")
    target = break_json_line(data / "en" / "c4-validation.00000-of-00008.json.gz", 3)
    return Invocation(ws.train("gptj", data), f"{target}:3")


def _gptj_no_tokenizer(ws: Workspace) -> Invocation:
    data = ws.data("gptj")
    for path in (data / "tokenizer").iterdir():
        path.unlink()
    (data / "tokenizer").rmdir()
    return Invocation(ws.train("gptj", data), str(data / "tokenizer"))


def _alphafold_no_chain_list(ws: Workspace) -> Invocation:
    data = ws.data("alphafold2")
    (data / "validation_chains.txt").unlink()
    return Invocation(ws.train("alphafold2", data), str(data / "validation_chains.txt"))


def _alphafold_corrupt_mmcif(ws: Workspace) -> Invocation:
    data = ws.data("alphafold2")
    for path in (data / "mmcif").iterdir():
        replace(path, gzip.compress(b"data_broken\n_atom_site.\nloop_ garbage ' \n"))
    return Invocation(ws.train("alphafold2", data, "data.global_batch_size=1"),
                      str(data / "mmcif"))


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")

CASES = [
    # --- command line -------------------------------------------------------------------
    Case("cli-unknown-benchmark", lambda ws: Invocation(["train", "resnet51"], "'resnet51'")),
    Case("cli-config-file-missing", lambda ws: Invocation(
        ["train", "resnet50", "--config", str(ws.folder / "nope.yaml")],
        str(ws.folder / "nope.yaml"))),
    Case("cli-config-not-yaml", _config_not_yaml),
    Case("cli-set-without-value", lambda ws: Invocation(
        ["train", "resnet50", "--set", "training.n_epochs"], "training.n_epochs")),
    Case("cli-device-cuda-without-gpu", lambda ws: Invocation(
        ws.resnet_train() + ["--device", "cuda"], "--device cuda"), marks=(NO_CUDA,)),
    Case("cli-synth-unwritable-outdir", lambda ws: Invocation(
        ["synth", "resnet50", str(ws.regular_file / "out")], str(ws.regular_file / "out"))),
    Case("cli-synth-bad-sample-count", lambda ws: Invocation(
        ["synth", "resnet50", str(ws.folder / "out"), "--samples", "-3"], "--samples",
        left_behind=ws.folder / "out")),
    Case("cli-synth-outdir-in-missing-folder", lambda ws: Invocation(
        ["synth", "resnet50", str(ws.folder / "no" / "out")], str(ws.folder / "no" / "out"),
        left_behind=ws.folder / "no")),
    Case("cli-synth-too-few-samples", lambda ws: Invocation(
        ["synth", "gptj", str(ws.folder / "out"), "--samples", "2"], str(ws.folder / "out"),
        left_behind=ws.folder / "out")),
    # --- configuration ------------------------------------------------------------------
    Case("config-unknown-key", lambda ws: Invocation(
        ws.resnet_train("training.bogus=1"), "'training.bogus'")),
    Case("config-unknown-section", _smoke_with_extra_section),
    Case("config-wrong-type", lambda ws: Invocation(
        ws.resnet_train("training.n_epochs=two"), "'training.n_epochs'")),
    Case("config-negative-batch-size", lambda ws: Invocation(
        ws.resnet_train("data.global_batch_size=-4"), "'data.global_batch_size'")),
    Case("config-batch-not-divisible-by-world-size", lambda ws: Invocation(
        ws.resnet_train("data.global_batch_size=32"), "'data.global_batch_size'",
        launcher=THREE_RANKS)),
    Case("config-batch-larger-than-dataset", lambda ws: Invocation(
        ws.resnet_train("data.global_batch_size=4096"), "'data.global_batch_size'")),
    Case("config-size-zero", lambda ws: Invocation(
        ws.resnet_train("data.image_size=0"), "'data.image_size'")),
    Case("config-count-zero", lambda ws: Invocation(
        ws.train("gptj", ws.data("gptj"), "data.seq_len=0"), "'data.seq_len'")),
    Case("config-rate-not-finite", lambda ws: Invocation(
        ws.resnet_train("opt.lr=.nan"), "'opt.lr'")),
    Case("config-fraction-above-one", lambda ws: Invocation(
        ws.resnet_train("model.label_smoothing=1.5"), "'model.label_smoothing'")),
    Case("config-unknown-optimizer", lambda ws: Invocation(
        ws.resnet_train("opt.name=adagrad"), "'opt.name'")),
    Case("config-unknown-lr-schedule", lambda ws: Invocation(
        ws.resnet_train("lr_schedule.name=cyclic"), "'lr_schedule.name'")),
    Case("config-log-file-in-missing-folder", lambda ws: Invocation(
        ws.resnet_train(f"training.log_file={ws.folder / 'no' / 'run.log'}"),
        str(ws.folder / "no" / "run.log"))),
    Case("config-log-file-is-a-folder", lambda ws: Invocation(
        ws.resnet_train(f"training.log_file={ws.folder}"), str(ws.folder))),
    Case("config-checkpoint-dir-in-missing-folder", lambda ws: Invocation(
        ws.resnet_train(f"training.checkpoint_dir={ws.folder / 'no' / 'ck'}"),
        str(ws.folder / "no" / "ck"), left_behind=ws.folder / "no")),
    Case("config-checkpoint-dir-unwritable", lambda ws: Invocation(
        ws.resnet_train("data.global_batch_size=4",
                        f"training.checkpoint_dir={ws.regular_file / 'ck'}"),
        str(ws.regular_file / "ck"))),
    Case("config-checkpoint-corrupt", _checkpoint_garbage),
    # --- data ---------------------------------------------------------------------------
    Case("data-dir-not-given", lambda ws: Invocation(
        ["train", "resnet50", "--config", "smoke"], "data.data_dir")),
    Case("data-dir-missing", lambda ws: Invocation(
        ws.train("resnet50", ws.folder / "nowhere"), str(ws.folder / "nowhere"))),
    Case("data-dir-empty", lambda ws: Invocation(
        ws.train("resnet50", ws.folder), str(ws.folder / "train"))),
    Case("resnet50-corrupt-jpeg", _corrupt_jpeg, before_training=False),
    Case("cosmoflow-truncated-hdf5", _cosmoflow_truncated),
    Case("cosmoflow-hdf5-missing-dataset", _cosmoflow_missing_dataset),
    Case("cosmoflow-tfrecord-bad-crc", _cosmoflow_bad_crc),
    Case("deepcam-hdf5-wrong-shape", _deepcam_wrong_shape),
    Case("deepcam-stats-file-missing", _deepcam_stats_missing),
    Case("bert-shard-missing-dataset", _bert_missing_dataset),
    Case("gptj-c4-broken-json", _gptj_broken_json),
    Case("gptj-tokenizer-folder-missing", _gptj_no_tokenizer),
    Case("alphafold2-chain-list-missing", _alphafold_no_chain_list),
    Case("alphafold2-corrupt-mmcif", _alphafold_corrupt_mmcif, before_training=False),
    # --- runtime fault (exit 1): the step that went non-finite is named ---------------------
    Case("runtime-loss-diverges", lambda ws: Invocation(
        ws.resnet_train("data.global_batch_size=4", "opt.lr=1.0e+30",
                        "lr_schedule.scaling=none", "training.nan_check_every=1"),
        "at epoch 1 step"), exit_code=1, before_training=False),
    Case("alphafold2-fewer-chains-than-a-batch", lambda ws: Invocation(
        ws.train("alphafold2", ws.data("alphafold2"), "data.global_batch_size=8",
                 "data.num_workers=0"),
        "'data.global_batch_size'")),
]


def _param(case: Case):
    return pytest.param(case, id=case.id, marks=list(case.marks))


HUNG = -1


@dataclass
class Outcome:
    workspace: Workspace
    invocation: Invocation
    done: Completed


def _selected_cases(session: pytest.Session) -> list[Case]:
    """The cases this session runs: selected (-k, node ids) and not skipped by a mark."""
    return [item.callspec.params["case"] for item in session.items
            if getattr(item, "originalname", "") == "test_bad_input_fails_cleanly"
            and not any(mark.args and mark.args[0] for mark in item.iter_markers("skipif"))]


@pytest.fixture(scope="session")
def outcomes(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Run every selected case once, a few at a time: each is a fresh interpreter importing
    torch, so running them side by side roughly halves the wall time on two cores."""
    datasets = Datasets(tmp_path_factory.mktemp("pristine"))
    prepared = {}
    for case in _selected_cases(request.session):
        workspace = Workspace(tmp_path_factory.mktemp(case.id), datasets)
        prepared[case.id] = (workspace, case.build(workspace))

    def launch(invocation: Invocation) -> Completed:
        try:
            return run_mlbench(*invocation.args, launcher=invocation.launcher,
                               timeout=invocation.timeout)
        except subprocess.TimeoutExpired:
            return Completed(HUNG, "", f"still running after {invocation.timeout:g} s: killed")

    # One more than the cores: the niced known hang mostly waits out its timeout.
    with ThreadPoolExecutor(max_workers=PARALLEL_CASES + 1) as pool:
        done = dict(zip(prepared, pool.map(launch, [inv for _, inv in prepared.values()]),
                        strict=True))
    return {name: Outcome(ws, inv, done[name]) for name, (ws, inv) in prepared.items()}


def error_lines(done: Completed) -> list[str]:
    return [line for line in done.stderr.splitlines() if "error:" in line]


def assert_whole_mllog(text: str, where: str) -> list[dict]:
    """Every MLLOG line parses; a run_stop, if any, is the last record and says aborted."""
    assert not text or text.endswith("\n"), f"{where} ends mid-line: {text[-200:]!r}"
    records = []
    for line in text.splitlines():
        if line.startswith(":::MLLOG "):
            records.append(json.loads(line.removeprefix(":::MLLOG ")))
    stops = [i for i, record in enumerate(records) if record["key"] == "run_stop"]
    if stops:
        assert stops == [len(records) - 1], f"{where}: run_stop is not the last record"
        assert records[-1]["metadata"]["status"] == "aborted", records[-1]
    return records


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input_fails_cleanly(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    done, invocation, log_file = outcome.done, outcome.invocation, outcome.workspace.log_file
    output = done.stdout + done.stderr

    assert done.returncode != HUNG, done.stderr
    assert done.returncode == case.exit_code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = error_lines(done)
    assert len(errors) == 1, done.stderr[-3000:]
    assert invocation.names in errors[0], errors[0]

    records = assert_whole_mllog(done.stdout, "stdout")
    reason = errors[0].split("error: ", 1)[1]
    if records:
        assert records[-1]["key"] == "run_stop" and records[-1]["metadata"]["reason"] == reason
    if case.before_training:
        assert not any(record["key"] == "epoch_start" for record in records)
    if log_file.is_file():
        assert assert_whole_mllog(log_file.read_text(), str(log_file)) == records
    if invocation.left_behind is not None:
        assert not invocation.left_behind.exists(), f"{invocation.left_behind} left behind"


def test_matrix_covers_the_issue_list() -> None:
    """At least 15 cases, over command line, config, data (every benchmark's reader) and a
    runtime fault."""
    groups = {case.id.split("-")[0] for case in CASES}
    assert len(CASES) >= 15
    assert {"cli", "config", "data", "resnet50", "cosmoflow", "deepcam", "bert", "gptj",
            "alphafold2", "runtime"} <= groups
    assert {case.exit_code for case in CASES} == {1, 2}
