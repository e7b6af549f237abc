"""Config loading: typed overrides, strict validation, one-line errors naming the key."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.core.config import (
    ConfigSchema,
    DataConfig,
    GlobalContext,
    apply_override,
    build_config,
    load_config,
)
from benchmarks.core.errors import ConfigError
from benchmarks.core.runner import resolve_batch_sizes


@dataclass
class ToyData(DataConfig):
    image_size: int = 8


@dataclass
class ToyModel:
    width: int = 4
    dropout: float = 0.5
    layers: list[int] | None = None


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
