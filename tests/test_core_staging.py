"""Data staging: each rank's share copied to data.stage_dir after run_start, read there, and
removed after the run."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks.core import mllog
from benchmarks.core.config import DataConfig
from benchmarks.core.data import build_loader
from benchmarks.core.distributed import DistEnv
from benchmarks.core.errors import ConfigError, InputError
from benchmarks.core.staging import plan_staging
from benchmarks.cosmoflow.data import CosmoFlowDataConfig, build_datasets, synthesize
from tests.conftest import run_mlbench


class Files:
    """A dataset of one sample per file: the file's bytes as a uint8 tensor."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.files[index].read_bytes()), dtype=torch.uint8)


def write_dataset(root: Path, train: int, evaluation: int) -> tuple[Files, Files]:
    splits = []
    for split, count in (("train", train), ("validation", evaluation)):
        (root / split).mkdir(parents=True)
        for index in range(count):
            (root / split / f"s{index:02d}.bin").write_bytes(bytes([index]) * 64)
        splits.append(Files(sorted((root / split).iterdir())))
    return splits[0], splits[1]


def test_each_rank_stages_an_even_share(tmp_path):
    shares = {}
    for rank in range(3):
        train, evaluation = write_dataset(tmp_path / f"data{rank}", train=8, evaluation=4)
        config = DataConfig(data_dir=str(tmp_path / f"data{rank}"),
                            stage_dir=str(tmp_path / "stage"))
        plan = plan_staging(config, train, evaluation, DistEnv(rank=rank, world_size=3))
        assert all(path.is_relative_to(tmp_path / "stage") for path in train.files)
        assert [source.name for source, _ in plan.copies] == [
            path.name for path in train.files + evaluation.files]
        shares[rank] = ([p.name for p in train.files], [p.name for p in evaluation.files])
    # 8 training files over 3 ranks: 2 each (the last two dropped); evaluation i -> rank i % 3.
    assert shares[0] == (["s00.bin", "s03.bin"], ["s00.bin", "s03.bin"])
    assert shares[1] == (["s01.bin", "s04.bin"], ["s01.bin"])
    assert shares[2] == (["s02.bin", "s05.bin"], ["s02.bin"])


def test_no_stage_dir_changes_nothing(tmp_path):
    train, evaluation = write_dataset(tmp_path / "data", train=2, evaluation=1)
    before = list(train.files)
    assert plan_staging(DataConfig(data_dir=str(tmp_path / "data")), train, evaluation,
                        DistEnv()) is None
    assert train.files == before


def test_too_few_files_for_the_ranks_is_an_input_error(tmp_path):
    train, evaluation = write_dataset(tmp_path / "data", train=4, evaluation=1)
    config = DataConfig(data_dir=str(tmp_path / "data"), stage_dir=str(tmp_path / "stage"))
    with pytest.raises(InputError, match="cannot be staged over 2 ranks"):
        plan_staging(config, train, evaluation, DistEnv(rank=0, world_size=2))


def test_staged_run_logs_both_keys_and_reads_the_copies(tmp_path):
    train, evaluation = write_dataset(tmp_path / "data", train=4, evaluation=2)
    config = DataConfig(data_dir=str(tmp_path / "data"), stage_dir=str(tmp_path / "stage"))
    plan = plan_staging(config, train, evaluation, DistEnv())
    log_file = tmp_path / "mllog.txt"
    log = mllog.MLLogger(enabled=True, log_file=str(log_file))
    duration = plan.run(log)
    log.close()
    records = [json.loads(line.split(":::MLLOG", 1)[1]) for line in
               log_file.read_text().splitlines()]
    assert [r["key"] for r in records] == ["staging_start", "staging_stop"]
    assert records[1]["metadata"]["staging_duration"] == pytest.approx(duration)
    assert records[1]["metadata"]["number_of_files"] == 6
    assert not list((tmp_path / "stage").rglob("*.staging"))
    shutil.rmtree(tmp_path / "data")  # only the staged copies are left to read
    loader = build_loader(train, 1, train=True, env=DistEnv(), device=torch.device("cpu"),
                          num_workers=0, local_shard=True)
    assert sorted(int(batch[0, 0]) for batch in loader) == [0, 1, 2, 3]
    assert sorted(int(evaluation[i][0]) for i in range(2)) == [0, 1]


def test_remove_deletes_this_ranks_copies_and_the_folders_left_empty(tmp_path):
    stage = tmp_path / "stage"
    plans = []
    for rank in range(2):
        train, evaluation = write_dataset(tmp_path / f"data{rank}", train=4, evaluation=2)
        config = DataConfig(data_dir=str(tmp_path / f"data{rank}"), stage_dir=str(stage))
        plans.append(plan_staging(config, train, evaluation, DistEnv(rank=rank, world_size=2)))
    for plan in plans:
        plan.run(mllog.MLLogger(enabled=False))
    (stage / "train" / "s00.bin.staging").write_bytes(b"left by a copy cut short")

    plans[0].remove()
    assert sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*.bin")) == [
        "train/s01.bin", "train/s03.bin", "validation/s01.bin"]
    assert not list(stage.rglob("*.staging"))
    plans[1].remove()
    assert stage.is_dir() and not list(stage.iterdir())


def test_unwritable_stage_dir_names_the_key(tmp_path):
    train, evaluation = write_dataset(tmp_path / "data", train=1, evaluation=1)
    (tmp_path / "occupied").write_text("a file, not a folder")
    config = DataConfig(data_dir=str(tmp_path / "data"), stage_dir=str(tmp_path / "occupied"))
    plan = plan_staging(config, train, evaluation, DistEnv())
    with pytest.raises(ConfigError, match="data.stage_dir"):
        plan.run(mllog.MLLogger(enabled=False))


def test_cosmoflow_files_stage_under_their_split_folders(tmp_path):
    synthesize(tmp_path / "data", samples=2, seed=0)
    config = CosmoFlowDataConfig(data_dir=str(tmp_path / "data"), format="hdf5",
                                 stage_dir=str(tmp_path / "stage"))
    train, evaluation = build_datasets(config)
    plan_staging(config, train, evaluation, DistEnv())
    assert [p.relative_to(tmp_path / "stage").as_posix() for p in train.files] == [
        "train/cosmo_000000.h5", "train/cosmo_000001.h5"]
    assert evaluation.files[0].parent == tmp_path / "stage" / "validation"


@pytest.mark.slow
def test_smoke_run_stages_inside_the_timed_region(tmp_path):
    synthesize(tmp_path / "data", samples=8, seed=0)
    stage = tmp_path / "stage"
    done = run_mlbench("train", "cosmoflow", "--config", "smoke", "--data-dir",
                       str(tmp_path / "data"), "--set", f"data.stage_dir={stage}",
                       "--set", "training.n_epochs=1", "--set", "training.target=null")
    assert done.returncode == 0, done.stderr
    keys = [record["key"] for record in done.mllog]
    assert keys.index("run_start") < keys.index("staging_start") < keys.index("staging_stop")
    assert keys.index("staging_stop") < keys.index("epoch_start")
    staged = done.events("staging_stop")[0]["metadata"]
    assert staged["staging_duration"] > 0 and staged["number_of_files"] == 10
    assert not list(stage.iterdir()), "the staged copies outlive the run"
