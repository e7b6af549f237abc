"""Configuration: YAML files validated against dataclasses, held by a process-wide singleton.

Every benchmark reads one YAML file with the sections ``data``, ``model``, ``opt``,
``lr_schedule``, ``training`` and ``distributed``. The common sections are defined here; a
benchmark subclasses :class:`DataConfig` to add its own data keys and writes its own model
dataclass, then names both in a :class:`ConfigSchema`::

    @dataclass
    class ResNetData(DataConfig):
        image_size: int = 224

    SCHEMA = ConfigSchema(data=ResNetData, model=ResNetModel)
    cfg = load_config("config.yaml", SCHEMA, overrides=["training.n_epochs=2"])
    cfg.data.image_size, cfg.training.target

Validation is strict: an unknown key, a missing required key or a value of the wrong type is a
:class:`~benchmarks.core.errors.ConfigError` whose message names the dotted key. Overrides
(``--set key=value``) are parsed as YAML scalars or flow lists, so ``3`` is an int, ``1e-3`` a
float, ``true`` a bool and ``[1, 2]`` a list.

:class:`GlobalContext` is the singleton the seed project used: ``GlobalContext()`` anywhere in
the process returns the same object, holding the validated config and the distributed
environment once the runner has filled them in.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from benchmarks.core.errors import ConfigError


@dataclass
class DataConfig:
    """Keys every benchmark's ``data`` section has; subclass it to add more.

    ``local_batch_size`` 0 means: derive it from ``global_batch_size``, the world size and
    ``gradient_accumulation``. A non-zero value wins and the global batch follows from it.
    ``stage_dir`` (file-based datasets): copy each rank's share there after ``run_start``.
    """

    data_dir: str = ""
    global_batch_size: int = 32
    local_batch_size: int = 0
    eval_batch_size: int = 0
    gradient_accumulation: int = 1
    num_workers: int = 2
    prefetch_factor: int = 2
    train_subset: int = 0
    eval_subset: int = 0
    shuffle: bool = True
    drop_last: bool = True
    stage_dir: str = ""


@dataclass
class OptConfig:
    """Optimizer: ``name`` is one of sgd, lars, lamb, adam, adamw."""

    name: Literal["sgd", "lars", "lamb", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    trust_coefficient: float = 0.001
    exclude_bias_and_norm: bool = True
    clip_grad_norm: float = 0.0


@dataclass
class LRScheduleConfig:
    """Learning-rate schedule, applied per optimizer step.

    ``unit`` says whether ``warmup``, ``decay_length``, ``milestones`` and ``step_size`` count
    epochs or optimizer steps; ``decay_unit``, when set, overrides it for ``decay_length``
    (MLPerf ResNet: warmup in epochs, decay in steps). ``decay_from`` says where a poly or
    cosine decay starts: at the end of the warmup, or at step 0 with the warmup overriding
    its first steps (the BERT reference). ``warmup_offset`` is the step at which the warmup
    starts (BERT's ``start_warmup_step``, may be negative). ``scaling`` scales ``opt.lr`` by
    global batch / ``base_batch_size`` (linear) or by its square root.
    """

    name: Literal["constant", "poly", "cosine", "multistep", "step"] = "constant"
    unit: Literal["epochs", "steps"] = "epochs"
    warmup: float = 0.0
    warmup_start_factor: float = 0.0
    decay_length: float = 0.0
    decay_unit: Literal["", "epochs", "steps"] = ""
    decay_from: Literal["warmup", "start"] = "warmup"
    warmup_offset: float = 0.0
    end_lr: float = 0.0
    power: float = 2.0
    milestones: list[float] = field(default_factory=list)
    decay_factors: list[float] = field(default_factory=list)
    gamma: float = 0.1
    step_size: float = 1.0
    scaling: Literal["none", "linear", "sqrt"] = "none"
    base_batch_size: int = 0


@dataclass
class TrainingConfig:
    """The run: when to evaluate, when to stop, and how to compute.

    ``target`` None means "no quality target": the run trains ``n_epochs`` and succeeds.
    ``steps_per_epoch`` > 0 turns an epoch into a fixed block of optimizer steps over a cycling
    loader (BERT and AlphaFold evaluate every N samples, not every pass over the data).
    ``recipe: rcp`` takes the optimizer and schedule from the MLCommons reference convergence
    point at the global batch size, where one exists (``benchmarks.core.rcp``).
    """

    target: float | None = None
    n_epochs: int = 1
    eval_every: int = 1
    steps_per_epoch: int = 0
    seed: int = 0
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    nan_check_every: int = 50
    log_file: str = ""
    checkpoint_dir: str = ""
    checkpoint_every: int = 0
    recipe: Literal["config", "rcp"] = "config"


@dataclass
class DistributedConfig:
    """Process group set-up. ``timeout_s`` bounds init and every collective."""

    backend: Literal["auto", "mpi", "nccl", "gloo"] = "auto"
    timeout_s: int = 300
    strategy: Literal["ddp", "fsdp"] = "ddp"
    find_unused_parameters: bool = False


@dataclass
class ConfigSchema:
    """The dataclasses a benchmark's config is validated against."""

    data: type[DataConfig] = DataConfig
    model: type = dict


@dataclass
class Config:
    """A validated configuration; ``source`` is the file it came from."""

    data: DataConfig
    model: Any
    opt: OptConfig
    lr_schedule: LRScheduleConfig
    training: TrainingConfig
    distributed: DistributedConfig
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The config as plain YAML-able data (for logs and checkpoints)."""
        return {
            section: _to_plain(getattr(self, section))
            for section in ("data", "model", "opt", "lr_schedule", "training", "distributed")
        }


# YAML 1.1 (PyYAML) reads "1e-3" as a string: it wants "1.0e-3". Accept the common spelling.
_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

SECTIONS = ("data", "model", "opt", "lr_schedule", "training", "distributed")


def load_config(
    path: str | Path, schema: ConfigSchema, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read, override and validate one YAML config file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for override in overrides:
        apply_override(raw, override)
    return build_config(raw, schema, source=str(path))


def build_config(raw: dict[str, Any], schema: ConfigSchema, source: str = "") -> Config:
    """Validate a raw mapping (already overridden) into a :class:`Config`."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section '{unknown[0]}' (expected one of "
                          f"{', '.join(SECTIONS)})")
    section_types = {
        "data": schema.data,
        "model": schema.model,
        "opt": OptConfig,
        "lr_schedule": LRScheduleConfig,
        "training": TrainingConfig,
        "distributed": DistributedConfig,
    }
    built = {}
    for name, cls in section_types.items():
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {_type_name(value)}")
        built[name] = dict(value) if cls is dict else _build_dataclass(cls, value, name)
    config = Config(**built, source=source)
    _check_ranges(config)
    return config


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``section.key=value`` override in place; the value is parsed as YAML."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. training.n_epochs=2")
    parts = key.strip().split(".")
    if len(parts) < 2:
        raise ConfigError(f"--set {key}: expected a dotted key such as training.n_epochs")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML") from None
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(parts[: depth + 1])}: not a section")
        node = child
    node[parts[-1]] = value


def _build_dataclass(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}.{unknown[0]}'")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{key}'")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigError(f"config key '{key}': {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {_type_name(value)}")
        return [_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {_type_name(value)}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {_type_name(value)}")
        return _build_dataclass(hint, value, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
        return float(value)
    if hint is Any:
        return value
    if isinstance(value, bool) and hint is not bool:
        raise ConfigError(f"config key '{key}': expected {hint.__name__}, got bool")
    if not isinstance(value, hint):
        raise ConfigError(f"config key '{key}': expected {hint.__name__}, got "
                          f"{_type_name(value)} {value!r}")
    return value


def _check_ranges(config: Config) -> None:
    """Reject values no run can use, naming the key."""
    data, training = config.data, config.training
    positive = {
        "data.global_batch_size": data.global_batch_size,
        "data.gradient_accumulation": data.gradient_accumulation,
        "data.prefetch_factor": data.prefetch_factor,
        "training.n_epochs": training.n_epochs,
        "training.eval_every": training.eval_every,
        "training.nan_check_every": training.nan_check_every,
        "distributed.timeout_s": config.distributed.timeout_s,
    }
    not_negative = {
        "data.local_batch_size": data.local_batch_size,
        "data.eval_batch_size": data.eval_batch_size,
        "data.num_workers": data.num_workers,
        "data.train_subset": data.train_subset,
        "data.eval_subset": data.eval_subset,
        "training.steps_per_epoch": training.steps_per_epoch,
        "training.checkpoint_every": training.checkpoint_every,
        "opt.lr": config.opt.lr,
        "opt.weight_decay": config.opt.weight_decay,
        "opt.clip_grad_norm": config.opt.clip_grad_norm,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {value}")
    for key, value in not_negative.items():
        if value < 0:
            raise ConfigError(f"config key '{key}': must not be negative, got {value}")
    if len(config.opt.betas) != 2:
        raise ConfigError("config key 'opt.betas': expected two values [beta1, beta2]")
    schedule = config.lr_schedule
    if schedule.decay_factors and len(schedule.decay_factors) != len(schedule.milestones):
        raise ConfigError("config key 'lr_schedule.decay_factors': needs one factor per milestone")
    if schedule.scaling != "none" and schedule.base_batch_size <= 0:
        raise ConfigError("config key 'lr_schedule.base_batch_size': must be positive when "
                          "lr_schedule.scaling is set")


def _to_plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _Singleton(type):
    _instances: dict[type, Any] = {}

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls not in cls._instances:
            cls._instances[cls] = super().__call__(*args, **kwargs)
        return cls._instances[cls]


class GlobalContext(metaclass=_Singleton):
    """The process-wide run context: the validated config and the distributed environment.

    ``GlobalContext()`` returns the same object everywhere in a process. The runner fills it
    in (``config``, ``env``, ``device``) before calling a benchmark's ``build_task``.
    """

    def __init__(self) -> None:
        self.config: Config | None = None
        self.env: Any = None
        self.device: Any = None

    @property
    def cfg(self) -> Config:
        if self.config is None:
            raise RuntimeError("GlobalContext has no config yet: call load() first")
        return self.config

    def load(self, path: str | Path, schema: ConfigSchema, overrides: list[str] = ()) -> Config:
        """Load and validate ``path``; replaces any earlier config."""
        self.config = load_config(path, schema, overrides)
        return self.config

    @property
    def rank(self) -> int:
        return self.env.rank if self.env is not None else 0

    @property
    def world_size(self) -> int:
        return self.env.world_size if self.env is not None else 1

    @property
    def local_rank(self) -> int:
        return self.env.local_rank if self.env is not None else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def reset(self) -> None:
        """Forget the config and environment (tests run several benchmarks in one process)."""
        self.__init__()
