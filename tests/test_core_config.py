"""Config loading: typed overrides, strict validation, one-line errors naming the key."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest

from benchmarks.cli import BENCHMARKS, load_spec
from benchmarks.core.config import (
    ConfigSchema,
    DataConfig,
    Fraction,
    GlobalContext,
    PositiveInt,
    Range,
    TrainingConfig,
    apply_override,
    build_config,
    check_output_path,
    check_output_paths,
    config_keys,
    load_config,
    section_types,
)
from benchmarks.core.errors import ConfigError
from benchmarks.core.runner import resolve_batch_sizes


@dataclass
class ToyData(DataConfig):
    image_size: PositiveInt = 8


@dataclass
class ToyModel:
    width: int = 4
    dropout: Fraction = 0.5
    layers: list[PositiveInt] | None = None
    kernel: Annotated[int, Range(low=1, high=7)] = 3


SCHEMA = ConfigSchema(data=ToyData, model=ToyModel)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_loads_sections_defaults_and_benchmark_keys(tmp_path):
    config = load_config(write(tmp_path, "data:\n  image_size: 16\nmodel:\n  dropout: 1\n"),
                         SCHEMA)
    assert config.data.image_size == 16
    assert config.data.global_batch_size == DataConfig.global_batch_size
    assert config.model.dropout == 1.0 and isinstance(config.model.dropout, float)
    assert config.training.target is None


def test_overrides_are_typed(tmp_path):
    config = load_config(write(tmp_path, "{}"), SCHEMA, overrides=[
        "training.n_epochs=7", "opt.lr=1e-3", "training.amp=true", "model.layers=[1, 2]",
        "training.target=0.5", "opt.name=lamb"])
    assert config.training.n_epochs == 7
    assert config.opt.lr == pytest.approx(1e-3)
    assert config.training.amp is True
    assert config.model.layers == [1, 2]
    assert config.training.target == 0.5
    assert config.opt.name == "lamb"


@pytest.mark.parametrize("text, overrides, message", [
    ("data:\n  imagesize: 3\n", [], "data.imagesize"),
    ("{}", ["training.n_epochs=many"], "training.n_epochs"),
    ("{}", ["training.n_epochs=2.5"], "training.n_epochs"),
    ("{}", ["data.global_batch_size=true"], "data.global_batch_size"),
    ("{}", ["data.global_batch_size=-4"], "data.global_batch_size"),
    ("{}", ["opt.name=rmsprop"], "opt.name"),
    ("{}", ["opt.betas=[0.9]"], "opt.betas"),
    ("{}", ["model.layers=[1, x]"], "model.layers[1]"),
    ("trainig:\n  seed: 1\n", [], "trainig"),
    ("data: 3\n", [], "data"),
    ("{}", ["n_epochs=3"], "n_epochs"),
    ("{}", ["training.n_epochs"], "KEY=VALUE"),
    ("lr_schedule:\n  scaling: linear\n", [], "lr_schedule.base_batch_size"),
    ("{}", ["data.image_size=0"], "'data.image_size': must be positive, got 0"),
    ("{}", ["model.dropout=1.5"], "'model.dropout': must be from 0 to 1, got 1.5"),
    ("{}", ["model.layers=[2, 0]"], "'model.layers[1]': must be positive"),
    ("{}", ["model.kernel=9"], "'model.kernel': must be from 1 to 7, got 9"),
    ("{}", ["opt.lr=.nan"], "'opt.lr': must be a finite number"),
    ("{}", ["opt.lr=-.inf"], "'opt.lr': must be a finite number"),
    ("{}", ["training.target=.inf"], "'training.target': must be a finite number"),
    ("{}", ["opt.betas=[0.9, 1.5]"], "'opt.betas[1]'"),
    ("{}", ["data.num_workers=-1"], "'data.num_workers': must be zero or more"),
])
def test_bad_config_names_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), SCHEMA, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml", SCHEMA)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"), SCHEMA)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), SCHEMA)


def test_override_creates_missing_sections():
    raw = {}
    apply_override(raw, "training.seed=3")
    assert build_config(raw, SCHEMA).training.seed == 3


def test_batch_sizes_follow_world_size_and_accumulation(tmp_path):
    config = load_config(write(tmp_path, "data:\n  global_batch_size: 64\n"
                                         "  gradient_accumulation: 2\n"), SCHEMA)
    resolve_batch_sizes(config, world_size=4)
    assert config.data.local_batch_size == 8
    assert config.data.eval_batch_size == 8
    local = load_config(write(tmp_path, "data:\n  local_batch_size: 5\n"), SCHEMA)
    resolve_batch_sizes(local, world_size=3)
    assert local.data.global_batch_size == 15
    odd = load_config(write(tmp_path, "data:\n  global_batch_size: 30\n"), SCHEMA)
    with pytest.raises(ConfigError, match="data.global_batch_size.*not divisible"):
        resolve_batch_sizes(odd, world_size=4)


def test_global_context_is_a_singleton(tmp_path):
    context = GlobalContext()
    context.load(write(tmp_path, "training:\n  seed: 42\n"), SCHEMA)
    assert GlobalContext() is context
    assert GlobalContext().cfg.training.seed == 42
    assert GlobalContext().rank == 0 and GlobalContext().world_size == 1
    context.reset()
    with pytest.raises(RuntimeError):
        _ = GlobalContext().cfg


def test_ranges_accept_their_bounds():
    config = build_config({"data": {"image_size": 1}, "model": {
        "dropout": 1, "kernel": 7, "layers": [1]}}, SCHEMA)
    assert (config.data.image_size, config.model.dropout, config.model.kernel) == (1, 1.0, 7)
    assert build_config({"model": {"dropout": 0, "kernel": 1}}, SCHEMA).model.dropout == 0.0


def _schema_keys(name: str):
    schema = load_spec(name).schema
    return [key for section, cls in section_types(schema).items()
            if cls is not dict for key in config_keys(cls(), section)]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_numeric_key_declares_its_range(name):
    """Sizes, counts, rates and fractions all say what they accept: a key added without a
    range fails here, not in a DataLoader worker."""
    undeclared = [info.key for info in _schema_keys(name)
                  if info.type.startswith(("int", "float", "list of int", "list of float"))
                  and not info.accepts and info.key != "training.target"]
    assert not undeclared


@pytest.mark.parametrize("name", BENCHMARKS)
def test_shipped_configs_are_within_their_ranges(name):
    spec = load_spec(name)
    for path in sorted(spec.folder.glob("*.yaml")):
        load_config(path, spec.schema)


def test_output_paths_are_checked_before_the_run(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.touch()
    check_output_paths(TrainingConfig(log_file=str(tmp_path / "run.log"),
                                      checkpoint_dir=str(tmp_path / "new")))
    with pytest.raises(ConfigError, match=r"'training.log_file'.*no such folder"):
        check_output_paths(TrainingConfig(log_file=str(tmp_path / "missing" / "run.log")))
    with pytest.raises(ConfigError, match=r"'training.checkpoint_dir'.*not a folder"):
        check_output_paths(TrainingConfig(checkpoint_dir=str(a_file / "ck")))
    with pytest.raises(ConfigError, match=r"'training.log_file'.*it is a folder"):
        check_output_paths(TrainingConfig(log_file=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"OUTDIR: .*it is not a folder"):
        check_output_path(a_file, "OUTDIR", folder=True)
    # Only the rank that writes the log checks its folder.
    check_output_paths(TrainingConfig(log_file=str(tmp_path / "missing" / "run.log")),
                       writes_log=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_folder_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="OUTDIR: cannot write .*not writable"):
            check_output_path(tmp_path / "out", "OUTDIR", folder=True)
    finally:
        tmp_path.chmod(0o700)
