"""The benchmarks by name: each is ``benchmarks.<name>.train.SPEC``, imported on first use.

The ``mlbench`` command and the tests look benchmarks up here; adding a benchmark means
adding its name to :data:`BENCHMARKS`.
"""

from __future__ import annotations

import importlib

from benchmarks.core.errors import ConfigError
from benchmarks.core.runner import BenchmarkSpec

BENCHMARKS = ("resnet50", "bert_large", "gptj", "cosmoflow", "deepcam", "alphafold2")


def load_spec(name: str) -> BenchmarkSpec:
    """The benchmark's SPEC; an unknown or not yet implemented name is a ConfigError."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r} (choose from {', '.join(BENCHMARKS)})")
    try:
        module = importlib.import_module(f"benchmarks.{name}.train")
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith(f"benchmarks.{name}"):
            raise ConfigError(f"benchmark {name!r} is not implemented in this version") from None
        raise
    return module.SPEC


def available_specs() -> list[BenchmarkSpec]:
    """Specs of the benchmarks that are implemented, in the order of :data:`BENCHMARKS`."""
    specs = []
    for name in BENCHMARKS:
        try:
            specs.append(load_spec(name))
        except ConfigError:
            continue
    return specs
