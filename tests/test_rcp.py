"""Recipes and convergence references from the MLCommons RCP tables in mlperf-logging."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from mlperf_logging.rcp_checker.rcp_checker import RCP_Checker

from benchmarks.bert_large.train import mlperf_lamb_keys
from benchmarks.cli import load_spec
from benchmarks.core import rcp
from benchmarks.core.config import load_config
from benchmarks.core.optim import scaled_base_lr
from benchmarks.cosmoflow.train import warmup_factor
from benchmarks.deepcam.train import mlperf_hyperparameters
from benchmarks.resnet50.train import mlperf_optimizer_keys
from tests.conftest import REPO, run_mlbench, synth_with_cli

ALL_RCPS = [(benchmark, point.batch_size) for benchmark in rcp.REFERENCES
            for point in rcp.load_rcps(benchmark)]


def full_config(benchmark: str, batch_size: int, explicit: tuple[str, ...] = ()):
    """The benchmark's config.yaml at ``batch_size``, the RCP recipe applied."""
    spec = load_spec(benchmark)
    config = load_config(spec.config_path(None), spec.schema, list(explicit))
    config.data.global_batch_size = batch_size
    assert rcp.apply_recipe(benchmark, config, rcp.override_keys(explicit)) is None
    return config


def same(value, reference) -> bool:
    if isinstance(reference, list):
        return len(value) == len(reference) and all(map(same, value, reference))
    if isinstance(reference, str) and not isinstance(value, str):
        reference = float(reference)  # some RCPs write numbers as strings ("0.1", "9000")
    if isinstance(reference, bool) or isinstance(value, bool):
        return value == reference
    if isinstance(reference, int | float):
        return math.isclose(value, reference, rel_tol=1e-9)
    return value == reference


def logged_hyperparameters(benchmark: str, config) -> dict:
    """What the benchmark logs (or configures) under each RCP hyperparameter name."""
    opt, schedule = config.opt, config.lr_schedule
    base_lr = scaled_base_lr(opt.lr, schedule, config.data.global_batch_size)
    if benchmark == "resnet50":
        keys = mlperf_optimizer_keys(config, steps=313)
        return {"optimizer": opt.name, "model_bn_span": None,
                **{key.removeprefix("lars_"): value for key, value in keys.items()}}
    if benchmark == "bert_large":
        return {"opt_base_learning_rate": base_lr, "opt_epsilon": opt.eps,
                "gradient_accumulation_steps": None, **mlperf_lamb_keys(config, 512, 57)}
    if benchmark == "cosmoflow":
        factors = schedule.decay_factors or schedule.gamma
        return {"global_batch_size": config.data.global_batch_size, "opt_name": opt.name.upper(),
                "opt_base_learning_rate": base_lr,
                "opt_learning_rate_warmup_epochs": schedule.warmup,
                "opt_learning_rate_warmup_factor": warmup_factor(schedule),
                "opt_learning_rate_decay_boundary_epochs": schedule.milestones,
                "opt_learning_rate_decay_factor": factors, "dropout": config.model.dropout,
                "opt_weight_decay": opt.weight_decay}
    if benchmark == "deepcam":
        return {"global_batch_size": config.data.global_batch_size, "num_workers": None,
                "batchnorm_groupsize": 1 + config.model.sync_batchnorm,
                "opt_weight_decay": opt.weight_decay,
                **mlperf_hyperparameters(config, world_size=64, steps_per_epoch=947)}
    return {"global_batch_size": config.data.global_batch_size,
            "gradient_accumulation_steps": config.data.gradient_accumulation,
            "val_every_iters": config.training.steps_per_epoch,
            "precision": "bf16" if config.training.amp else "fp32",
            "opt_name": "Adam" if opt.name == "adam" else opt.name,
            "opt_base_learning_rate": base_lr, "opt_adam_beta_1": opt.betas[0],
            "opt_adam_beta_2": opt.betas[1], "opt_adam_epsilon": opt.eps,
            "opt_weight_decay": opt.weight_decay, "opt_amsgrad": False,
            "opt_gradient_clipping": opt.clip_grad_norm > 0,
            "opt_gradient_clip_norm": opt.clip_grad_norm,
            "opt_learning_rate_warmup_init": None,
            "opt_learning_rate_warmup_steps": schedule.warmup,
            "swa_enabled": config.model.ema_decay > 0, "swa_decay_rate": config.model.ema_decay,
            "initial_training_dataloader_type": None}


@pytest.mark.parametrize("name,batch_size", ALL_RCPS)
def test_recipe_at_every_rcp_batch_size_is_the_rcps(name, batch_size):
    """Every hyperparameter of every RCP, as the benchmark logs or uses it. The keys left
    out (None above) describe the reference's hardware or loader, not the recipe."""
    point = rcp.rcp_at(name, batch_size)
    config = full_config(name, batch_size)
    logged = logged_hyperparameters(name, config)
    for key, reference in point.hyperparameters.items():
        assert key in logged, f"{point.name}: {key} not mapped"
        if logged[key] is None:
            continue
        assert same(logged[key], reference), f"{point.name}: {key} {logged[key]} != {reference}"
    assert rcp.closed_recipe(name, config) == (
        True, f"recipe of RCP {point.name} ({point.ruleset})")


def test_the_shipped_configs_are_their_batch_sizes_rcp_recipes():
    """Without --set the full configs are already the RCP recipe at their batch size."""
    for benchmark, batch_size in [("resnet50", 4096), ("bert_large", 3072), ("cosmoflow", 128),
                                  ("deepcam", 128), ("alphafold2", 128)]:
        spec = load_spec(benchmark)
        config = load_config(spec.config_path(None), spec.schema)
        config.data.global_batch_size = batch_size
        assert rcp.closed_recipe(benchmark, config)[0], benchmark


def test_set_batch_size_gives_the_recipe_and_explicit_set_wins():
    config = full_config("deepcam", 2048, explicit=("opt.lr=0.005",))
    assert config.lr_schedule.name == "multistep"
    assert config.lr_schedule.warmup == 400 and config.lr_schedule.milestones == [1201.0]
    assert config.opt.lr == 0.005
    closed, reason = rcp.closed_recipe("deepcam", config)
    assert not closed and reason.startswith("opt.lr is 0.005")


def test_batch_size_without_rcp_warns_and_keeps_the_configured_values():
    spec = load_spec("cosmoflow")
    config = load_config(spec.config_path(None), spec.schema)
    config.data.global_batch_size = 256
    before = config.as_dict()
    warning = rcp.apply_recipe("cosmoflow", config)
    assert warning == ("no MLCommons reference convergence point for cosmoflow at global batch "
                       "256 (nearest: 128 and 512); using the configured recipe")
    assert config.as_dict() == before
    assert rcp.closed_recipe("cosmoflow", config) == (
        False, "no reference convergence point at global batch 256 (nearest: 128 and 512)")


def test_recipe_config_leaves_the_file_values_alone():
    config = full_config("bert_large", 4096, explicit=("training.recipe=config",))
    assert config.opt.lr == 0.002  # the file's value, not bert_ref_4096's 0.0024
    assert rcp.apply_recipe("gptj", config) is None


def checker(benchmark: str) -> RCP_Checker:
    reference = rcp.REFERENCES[benchmark]
    ruleset = rcp.load_rcps(benchmark)[0].ruleset.split("_", 1)[1]
    return RCP_Checker(reference.usage, ruleset, reference.mlperf_name, verbose=False)


@pytest.mark.parametrize("name", list(rcp.REFERENCES))
def test_rcp_reference_is_the_rcp_checkers_statistics(name):
    """Mean and stdev at each RCP, and the interpolation between two, as the official
    RCP checker computes them (its olympic mean, its stdev, its interpolation), over the
    full RCP set (its ``full_rcps`` pass)."""
    official = checker(name)
    points = rcp.load_rcps(name)
    for point in points:
        record = official._find_rcp(point.batch_size, "full_rcps")
        assert rcp.rcp_reference(name, point.batch_size) == pytest.approx(
            (record["RCP Mean"], record["RCP Stdev"]))
    for low, high in zip(points, points[1:], strict=False):
        middle = (low.batch_size + high.batch_size) // 2
        if middle in (low.batch_size, high.batch_size):
            continue
        _, interpolated = official._create_interp_rcp(
            middle, official._find_rcp(low.batch_size, "full_rcps"),
            official._find_rcp(high.batch_size, "full_rcps"))
        assert rcp.rcp_reference(name, middle) == pytest.approx(
            (interpolated["RCP Mean"], interpolated["RCP Stdev"]))
    assert rcp.rcp_reference(name, points[0].batch_size - 1) is None
    assert rcp.rcp_reference(name, points[-1].batch_size + 1) is None


def test_rcp_reference_units_and_unknown_benchmarks():
    mean, stdev = rcp.rcp_reference("bert_large", 3072)
    assert mean > 1e6 and stdev > 0  # samples
    assert 5 < rcp.rcp_reference("deepcam", 128)[0] < 10  # epochs
    assert rcp.rcp_reference("gptj", 512) is None
    assert rcp.rcp_reference("openfold", 128) == rcp.rcp_reference("alphafold2", 128)
    assert rcp.closed_recipe("gptj", None)[0] is False


def test_rcps_come_from_the_latest_ruleset_that_has_the_benchmark():
    rulesets = {benchmark: rcp.load_rcps(benchmark)[0].ruleset for benchmark in rcp.REFERENCES}
    root = rcp.rcp_checker_dir()
    for benchmark, ruleset in rulesets.items():
        reference = rcp.REFERENCES[benchmark]
        usage, version = ruleset.split("_", 1)
        newer = [folder.name for folder in root.glob(f"{usage}_*")
                 if tuple(map(int, folder.name.split("_")[1].split("."))) >
                 tuple(map(int, version.split(".")))
                 and (folder / f"rcps_{reference.mlperf_name}.json").exists()]
        assert not newer, (benchmark, newer)
        table = json.loads((root / ruleset / f"rcps_{reference.mlperf_name}.json").read_text())
        assert {record["BS"] for record in table.values()} == {
            point.batch_size for point in rcp.load_rcps(benchmark)}


def test_module_imports_no_torch():
    """ReFrame imports it while listing tests: no torch, no numpy."""
    code = ("import sys, benchmarks.core.rcp as r; r.rcp_reference('deepcam', 128); "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_table_rcp_lists_every_rcp():
    done = run_mlbench("table", "--rcp", "--format", "csv")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == ("benchmark,rcp,ruleset,global_batch_size,runs,mean_to_converge,stdev,"
                        "unit")
    assert len(lines) == 1 + len(ALL_RCPS)
    assert "deepcam,deepcam_ref_128,hpc_3.0.0,128,20,6.94444,0.589,epochs" in lines


@pytest.fixture(scope="module")
def cosmoflow_data(tmp_path_factory):
    return synth_with_cli(tmp_path_factory, "cosmoflow", 32)


def train_cosmoflow_smoke(data, *sets: str):
    args = ["train", "cosmoflow", "--config", "smoke", "--data-dir", str(data), "--device",
            "cpu", "--set", "training.recipe=rcp", "--set", "training.n_epochs=1"]
    for item in sets:
        args += ["--set", item]
    done = run_mlbench(*args)
    assert done.returncode in (0, 3), done.stderr
    return done


def test_train_warns_once_at_a_batch_size_without_rcp(cosmoflow_data):
    done = train_cosmoflow_smoke(cosmoflow_data, "data.global_batch_size=8")
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warnings == ["mlbench cosmoflow: warning: no MLCommons reference convergence point "
                        "for cosmoflow at global batch 8 (nearest: 32); using the configured "
                        "recipe"]
    assert done.events("opt_base_learning_rate")[0]["value"] == 0.005  # smoke.yaml's


def test_train_at_an_rcp_batch_size_logs_the_rcp_recipe_and_set_wins(cosmoflow_data):
    """cosmoflow_ref_32, through the runner: the logged MLPerf keys are the RCP's, except
    the one given with --set."""
    done = train_cosmoflow_smoke(cosmoflow_data, "data.global_batch_size=32",
                                 "opt.weight_decay=0.001")
    assert "warning" not in done.stderr
    logged = {key: done.events(key)[0]["value"] for key in (
        "opt_base_learning_rate", "opt_learning_rate_warmup_epochs",
        "opt_learning_rate_warmup_factor", "opt_learning_rate_decay_boundary_epochs",
        "opt_learning_rate_decay_factor", "dropout", "opt_weight_decay")}
    assert logged == {"opt_base_learning_rate": 0.001, "opt_learning_rate_warmup_epochs": 2.0,
                      "opt_learning_rate_warmup_factor": 4.0,
                      "opt_learning_rate_decay_boundary_epochs": [4.0, 6.0],
                      "opt_learning_rate_decay_factor": [0.25, 0.0625], "dropout": 0.5,
                      "opt_weight_decay": 0.001}
