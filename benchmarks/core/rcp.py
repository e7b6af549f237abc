"""MLCommons reference convergence points (RCPs): the recipes they fix and their convergence.

The mlperf-logging package ships, per benchmark and ruleset, a table of reference runs
(``rcp_checker/<usage>_<version>/rcps_<benchmark>.json``): for each reference global batch
size its hyperparameters and the epochs (or samples) that 10-40 reference runs needed to reach
the target. This module reads the latest ruleset that has the benchmark and

* turns the RCP at a global batch size into config values (:func:`recipe`), applied by the
  runner when ``training.recipe`` is ``rcp`` (:func:`apply_recipe`): ``--set`` of a key wins
  over the RCP, which wins over the config file; a batch size without an RCP keeps the
  configured values, with a one-line warning naming the nearest RCP batch sizes;
* gives the convergence reference at a batch size (:func:`rcp_reference`), for the ReFrame
  tests' ``epochs_to_target``, and says whether a configured recipe is the closed-division
  one (:func:`closed_recipe`).

Only the standard library is imported: ReFrame loads this module while listing tests.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

#: ImageNet-1k training images: the MLPerf ResNet reference's epoch.
IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclass(frozen=True)
class Reference:
    """Where a benchmark's RCPs live and what their convergence numbers count."""

    usage: str  # "training" or "hpc"
    mlperf_name: str
    unit: str  # "epochs" or "samples", as the benchmark's rules count them


REFERENCES = {
    "resnet50": Reference("training", "resnet", "epochs"),
    "bert_large": Reference("training", "bert", "samples"),
    "cosmoflow": Reference("hpc", "cosmoflow", "epochs"),
    "deepcam": Reference("hpc", "deepcam", "epochs"),
    "alphafold2": Reference("hpc", "openfold", "samples"),
}


def project_name(benchmark: str) -> str:
    """The project's name of ``benchmark``, also when given its MLPerf name (``openfold``)."""
    if benchmark in REFERENCES:
        return benchmark
    return next((name for name, reference in REFERENCES.items()
                 if reference.mlperf_name == benchmark), benchmark)


@dataclass(frozen=True)
class RCP:
    """One reference convergence point: a batch size, its hyperparameters and its runs."""

    name: str
    ruleset: str  # e.g. "hpc_3.0.0"
    batch_size: int
    hyperparameters: dict[str, Any]
    runs: tuple[float, ...]  # epochs (or samples) to converge, one per reference run

    @property
    def mean(self) -> float:
        """Olympic mean (fastest and slowest run dropped), as the RCP checker computes it."""
        ordered = sorted(self.runs)
        return statistics.fmean(ordered[1:-1])

    @property
    def stdev(self) -> float:
        """Population standard deviation of all runs, as the RCP checker computes it."""
        return statistics.pstdev(self.runs)


def rcp_checker_dir() -> Path | None:
    """The installed ``mlperf_logging/rcp_checker`` folder (found without importing it)."""
    spec = importlib.util.find_spec("mlperf_logging")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "rcp_checker"
    return folder if folder.is_dir() else None


def _version(folder: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in folder.name.split("_", 1)[1].split("."))


@cache
def load_rcps(benchmark: str) -> tuple[RCP, ...]:
    """The RCPs of ``benchmark`` (project or MLPerf name) in the latest ruleset that has them,
    by batch size; empty for a benchmark without RCPs or without mlperf-logging."""
    reference, root = REFERENCES.get(project_name(benchmark)), rcp_checker_dir()
    if reference is None or root is None:
        return ()
    folders = sorted((f for f in root.glob(f"{reference.usage}_*")
                      if (f / f"rcps_{reference.mlperf_name}.json").is_file()), key=_version)
    if not folders:
        return ()
    latest = folders[-1]
    table = json.loads((latest / f"rcps_{reference.mlperf_name}.json").read_text())
    rcps = []
    for name, record in table.items():
        runs = record.get("Epochs to converge") or record.get("samples to converge") or []
        rcps.append(RCP(name=name, ruleset=latest.name, batch_size=int(record["BS"]),
                        hyperparameters=dict(record["Hyperparams"]),
                        runs=tuple(float(run) for run in runs)))
    return tuple(sorted(rcps, key=lambda rcp: rcp.batch_size))


def rcp_at(benchmark: str, global_batch_size: int) -> RCP | None:
    """The RCP of ``benchmark`` at exactly ``global_batch_size``, if there is one."""
    return next((rcp for rcp in load_rcps(benchmark) if rcp.batch_size == global_batch_size),
                None)


def nearest_batch_sizes(benchmark: str, global_batch_size: int) -> list[int]:
    """The RCP batch sizes just below and just above ``global_batch_size`` (one or two)."""
    sizes = [rcp.batch_size for rcp in load_rcps(benchmark)]
    below = [size for size in sizes if size < global_batch_size]
    above = [size for size in sizes if size > global_batch_size]
    return ([below[-1]] if below else []) + ([above[0]] if above else [])


def _nearest_text(benchmark: str, global_batch_size: int) -> str:
    """The nearest RCP batch sizes (``"256 and 512"``), as both the warning of
    :func:`apply_recipe` and the reason of :func:`closed_recipe` name them."""
    return " and ".join(str(size) for size in nearest_batch_sizes(benchmark, global_batch_size))


def rcp_reference(benchmark: str, global_batch_size: int) -> tuple[float, float] | None:
    """(mean, stdev) of the epochs, or samples, to converge at ``global_batch_size``.

    The unit is the one the benchmark's rules count (:data:`REFERENCES`). Between two RCP
    batch sizes both values are interpolated linearly, as the RCP checker does; below the
    smallest or above the largest RCP batch size, or for a benchmark without RCPs: None.
    Every RCP counts (the checker's ``full_rcps`` pass): its default ``pruned_rcps`` pass
    first drops RCPs that converge slower than their neighbours' interpolation.
    """
    exact = rcp_at(benchmark, global_batch_size)
    if exact is not None:
        return exact.mean, exact.stdev
    nearest = nearest_batch_sizes(benchmark, global_batch_size)
    neighbours = [rcp for rcp in load_rcps(benchmark) if rcp.batch_size in nearest]
    if len(neighbours) != 2:
        return None
    low, high = neighbours
    weight = (global_batch_size - low.batch_size) / (high.batch_size - low.batch_size)
    return (low.mean + weight * (high.mean - low.mean),
            low.stdev + weight * (high.stdev - low.stdev))


# --- recipes: RCP hyperparameters as config values -------------------------------------------

def _resnet(hp: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """MLPerf ResNet (TF2 reference ``lars_util.py``): LARS, warmup in epochs, then poly
    (power 2, to 1e-4) over ``decay_steps`` optimizer steps."""
    steps_per_epoch = IMAGENET_TRAIN_IMAGES / batch_size
    warmup = float(hp["opt_learning_rate_warmup_epochs"])
    decay = int(hp["opt_learning_rate_decay_steps"])
    return {
        "opt.name": hp.get("optimizer", "lars"),
        "opt.lr": float(hp["opt_base_learning_rate"]),
        "opt.momentum": float(hp["opt_momentum"]),
        "opt.weight_decay": float(hp["opt_weight_decay"]),
        "opt.eps": float(hp.get("epsilon", 0.0)),
        "lr_schedule.name": "poly",
        "lr_schedule.unit": "epochs",
        "lr_schedule.scaling": "none",
        "lr_schedule.warmup": warmup,
        "lr_schedule.warmup_start_factor": 0.0,
        "lr_schedule.decay_length": float(decay),
        "lr_schedule.decay_unit": "steps",
        "lr_schedule.decay_from": "warmup",
        "lr_schedule.power": float(hp.get("opt_learning_rate_decay_poly_power", 2.0)),
        "lr_schedule.end_lr": float(hp.get("opt_end_learning_rate", 1e-4)),
        # The reference trains warmup + decay steps (decay = train - warmup + 1).
        "training.n_epochs": math.ceil(warmup + (decay - 1) / steps_per_epoch),
    }


def _bert(hp: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """MLPerf BERT (``optimization.py``): LAMB, poly (power 1) from step 0 over the training
    steps, linear warmup from ``start_warmup_step``, global-norm clipping at 1.0."""
    return {
        "opt.name": "lamb",
        "opt.lr": float(hp["opt_base_learning_rate"]),
        "opt.eps": float(hp["opt_epsilon"]),
        "opt.betas": [float(hp["opt_lamb_beta_1"]), float(hp["opt_lamb_beta_2"])],
        "opt.weight_decay": float(hp["opt_lamb_weight_decay_rate"]),
        "opt.clip_grad_norm": 1.0,
        "lr_schedule.name": "poly",
        "lr_schedule.unit": "steps",
        "lr_schedule.scaling": "none",
        "lr_schedule.power": 1.0,
        "lr_schedule.end_lr": 0.0,
        "lr_schedule.decay_from": "start",
        "lr_schedule.decay_length": float(hp["opt_learning_rate_training_steps"]),
        "lr_schedule.warmup": float(hp["num_warmup_steps"]),
        "lr_schedule.warmup_offset": float(hp["start_warmup_step"]),
        "lr_schedule.warmup_start_factor": 0.0,
    }


def _cosmoflow(hp: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """MLPerf HPC CosmoFlow (``utils/optimizers.py``): SGD, linear warmup over epochs from
    base / warmup_factor to base, then a factor from each boundary epoch. A list of factors
    is applied as written; a single factor as a decay rate per boundary."""
    factor = hp["opt_learning_rate_decay_factor"]
    warmup_factor = float(hp["opt_learning_rate_warmup_factor"])
    return {
        "opt.name": "sgd",
        "opt.lr": float(hp["opt_base_learning_rate"]),
        "opt.weight_decay": float(hp["opt_weight_decay"]),
        "model.dropout": float(hp["dropout"]),
        "lr_schedule.name": "multistep",
        "lr_schedule.unit": "epochs",
        "lr_schedule.scaling": "none",
        "lr_schedule.warmup": float(hp["opt_learning_rate_warmup_epochs"]),
        "lr_schedule.warmup_start_factor": 1.0 / warmup_factor if warmup_factor else 1.0,
        "lr_schedule.milestones": [float(e) for e in hp["opt_learning_rate_decay_boundary_epochs"]],
        "lr_schedule.decay_factors": [float(f) for f in factor] if isinstance(factor, list) else [],
        "lr_schedule.gamma": float(factor) if not isinstance(factor, list) else 0.1,
    }


def deepcam_milestone_steps(milestones: Iterable[float], warmup_steps: float) -> list[float]:
    """DeepCAM's milestones (counted after the warmup) as steps from 0: the reference's
    ``MultiStepLRWarmup`` decays at ``milestone + warmup + 1``, plain ``MultiStepLR`` (no
    warmup) at ``milestone``."""
    shift = warmup_steps + 1 if warmup_steps > 0 else 0
    return [float(m) + shift for m in milestones]


def deepcam_reference_milestones(steps: Iterable[float], warmup_steps: float) -> list[int]:
    """The inverse of :func:`deepcam_milestone_steps`: the values the reference logs."""
    shift = warmup_steps + 1 if warmup_steps > 0 else 0
    return [int(round(s - shift)) for s in steps]


def _deepcam(hp: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """MLPerf HPC DeepCAM (``utils/optimizer_helpers.py``, ``schedulers.py``): apex FusedLAMB
    over every parameter, step-based multistep or cosine schedule with linear warmup."""
    warmup = float(hp["scheduler_lr_warmup_steps"])
    values: dict[str, Any] = {
        "opt.name": str(hp["opt_name"]).lower(),
        "opt.lr": float(hp["opt_lr"]),
        "opt.betas": [float(b) for b in hp["opt_betas"]],
        "opt.eps": float(hp["opt_eps"]),
        "opt.weight_decay": float(hp["opt_weight_decay"]),
        "opt.clip_grad_norm": float(hp.get("opt_max_grad_norm", 0.0)),
        "opt.exclude_bias_and_norm": False,
        "model.sync_batchnorm": int(hp.get("batchnorm_groupsize", 1)) > 1,
        "lr_schedule.unit": "steps",
        "lr_schedule.scaling": "none",
        "lr_schedule.warmup": warmup,
        "lr_schedule.warmup_start_factor": 0.0,
        "lr_schedule.decay_from": "warmup",
    }
    if hp["scheduler_type"] == "cosine_annealing":
        values.update({"lr_schedule.name": "cosine",
                       "lr_schedule.decay_length": float(hp["scheduler_t_max"]),
                       "lr_schedule.end_lr": float(hp.get("scheduler_eta_min", 0.0))})
    else:
        values.update({"lr_schedule.name": "multistep",
                       "lr_schedule.milestones": deepcam_milestone_steps(
                           hp["scheduler_milestones"], warmup),
                       "lr_schedule.decay_factors": [],
                       "lr_schedule.gamma": float(hp["scheduler_decay_rate"])})
    return values


def _openfold(hp: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """MLPerf HPC OpenFold: Adam, constant LR, clipping 0.1, SWA (EMA) 0.9, fp32, evaluation
    every ``val_every_iters`` steps."""
    return {
        "opt.name": str(hp["opt_name"]).lower(),
        "opt.lr": float(hp["opt_base_learning_rate"]),
        "opt.betas": [float(hp["opt_adam_beta_1"]), float(hp["opt_adam_beta_2"])],
        "opt.eps": float(hp["opt_adam_epsilon"]),
        "opt.weight_decay": float(hp["opt_weight_decay"]),
        "opt.clip_grad_norm": (float(hp["opt_gradient_clip_norm"])
                               if hp.get("opt_gradient_clipping") else 0.0),
        "lr_schedule.name": "constant",
        "lr_schedule.unit": "steps",
        "lr_schedule.scaling": "none",
        "lr_schedule.warmup": float(hp["opt_learning_rate_warmup_steps"]),
        "model.ema_decay": float(hp["swa_decay_rate"]),
        "training.steps_per_epoch": int(hp["val_every_iters"]),
        "training.amp": hp.get("precision", "fp32") != "fp32",
    }


_RECIPES = {"resnet50": _resnet, "bert_large": _bert, "cosmoflow": _cosmoflow,
            "deepcam": _deepcam, "alphafold2": _openfold}
#: Recipe keys that set a budget rather than the optimizer: not part of the closed check.
BUDGET_KEYS = frozenset({"training.n_epochs"})


def recipe(benchmark: str, rcp: RCP) -> dict[str, Any]:
    """The config values (dotted keys) that reproduce ``rcp``'s hyperparameters."""
    return _RECIPES[project_name(benchmark)](rcp.hyperparameters, rcp.batch_size)


def _get(config: Any, key: str) -> Any:
    section, field = key.split(".", 1)
    holder = getattr(config, section)
    return holder[field] if isinstance(holder, dict) else getattr(holder, field)


def _set(config: Any, key: str, value: Any) -> None:
    section, field = key.split(".", 1)
    holder = getattr(config, section)
    if isinstance(holder, dict):
        holder[field] = value
    elif field in {f.name for f in dataclasses.fields(holder)}:
        setattr(holder, field, value)
    else:
        raise KeyError(f"recipe key {key!r} is not in the config schema")


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The dotted keys named by ``--set KEY=VALUE`` arguments."""
    return {override.partition("=")[0].strip() for override in overrides}


def apply_recipe(benchmark: str, config: Any, explicit: Iterable[str] = ()) -> str | None:
    """Replace ``config``'s recipe values with the RCP's at its global batch size.

    Does nothing unless ``training.recipe`` is ``rcp``. Keys in ``explicit`` (set on the
    command line) keep their values. Returns a one-line warning when the benchmark has RCPs
    but none at this batch size (the configured values then stay), else None.
    """
    if config.training.recipe != "rcp" or not load_rcps(benchmark):
        return None
    batch_size = config.data.global_batch_size
    rcp = rcp_at(benchmark, batch_size)
    if rcp is None:
        nearest = _nearest_text(benchmark, batch_size)
        return (f"no MLCommons reference convergence point for {benchmark} at global batch "
                f"{batch_size} (nearest: {nearest}); using the configured recipe")
    keep = set(explicit)
    for key, value in recipe(benchmark, rcp).items():
        if key not in keep:
            _set(config, key, value)
    return None


def _same(configured: Any, reference: Any) -> bool:
    if isinstance(reference, list):
        return (isinstance(configured, list) and len(configured) == len(reference)
                and all(_same(c, r) for c, r in zip(configured, reference, strict=True)))
    if isinstance(reference, float) and isinstance(configured, int | float):
        return math.isclose(configured, reference, rel_tol=1e-9, abs_tol=1e-12)
    return configured == reference


def closed_recipe(benchmark: str, config: Any) -> tuple[bool, str]:
    """Whether ``config``'s optimizer and schedule are the RCP's at its global batch size
    (the closed division's recipe), and why (the first differing key, or the RCP used)."""
    reference = REFERENCES.get(project_name(benchmark))
    if reference is None:
        return False, f"{benchmark} is not an MLPerf closed-division benchmark"
    if not load_rcps(benchmark):
        return False, "no MLCommons RCP table found (is mlperf-logging installed?)"
    batch_size = config.data.global_batch_size
    rcp = rcp_at(benchmark, batch_size)
    if rcp is None:
        nearest = _nearest_text(benchmark, batch_size)
        return False, (f"no reference convergence point at global batch {batch_size} "
                       f"(nearest: {nearest})")
    if config.lr_schedule.scaling != "none":
        return False, "lr_schedule.scaling rescales the reference learning rate"
    for key, value in recipe(benchmark, rcp).items():
        if key in BUDGET_KEYS:
            continue
        configured = _get(config, key)
        if not _same(configured, value):
            return False, f"{key} is {configured!r}, the RCP {rcp.name} has {value!r}"
    return True, f"recipe of RCP {rcp.name} ({rcp.ruleset})"


def table_rows() -> list[dict[str, object]]:
    """One row per RCP of every benchmark: batch size, runs, mean and stdev to converge."""
    rows = []
    for benchmark, reference in REFERENCES.items():
        for rcp in load_rcps(benchmark):
            rows.append({
                "benchmark": benchmark,
                "rcp": rcp.name,
                "ruleset": rcp.ruleset,
                "global_batch_size": rcp.batch_size,
                "runs": len(rcp.runs),
                "mean_to_converge": f"{rcp.mean:.6g}",
                "stdev": f"{rcp.stdev:.3g}",
                "unit": reference.unit,
            })
    return rows
