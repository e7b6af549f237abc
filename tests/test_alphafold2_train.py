"""AlphaFold2 training glue: configs, recycling/EMA adapter, lDDT metric, smoke run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.alphafold2.data.synthetic_dataset import synthesize
from benchmarks.alphafold2.loop_adapter import (
    AlphaFoldForTraining,
    AlphaFoldTrainingConfig,
    LDDTCaMetric,
)
from benchmarks.alphafold2.synthetic_proteins import random_batch
from benchmarks.alphafold2.train import SPEC, build_model
from benchmarks.core.config import build_config
from benchmarks.core.errors import ConfigError

FOLDER = Path(SPEC.folder)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(name: str, **changes):
    raw = yaml.safe_load((FOLDER / name).read_text())
    for section, values in changes.items():
        raw[section].update(values)
    return build_config(raw, SPEC.schema)


def test_reference_config_builds_the_mlperf_model():
    config = load("config.yaml")
    assert (config.opt.name, config.opt.eps, config.opt.clip_grad_norm) == ("adam", 1e-6, 0.1)
    assert config.training.target == 0.8 and config.model.ema_decay == 0.9
    with torch.device("meta"):
        model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) == 93_229_082


def test_smoke_config_parses_and_rejects_unknown_keys():
    config = load("smoke.yaml")
    assert config.model.evoformer.no_blocks == 2 and not config.model.template.enabled
    with pytest.raises(ConfigError, match="model.evoformer.depth"):
        load("smoke.yaml", model={"evoformer": {"depth": 3}})


def recycled_inputs(samples: int) -> dict[str, torch.Tensor]:
    batches = [random_batch(n_res=8, n_templates=0, seed=seed) for seed in range(samples)]
    inputs = {key: batches[0][key] for key in ("aatype", "residue_index", "seq_mask",
                                               "target_feat")}
    for key in ("msa_feat", "msa_mask", "extra_msa", "extra_has_deletion",
                "extra_deletion_value", "extra_msa_mask"):
        inputs[key] = torch.stack([batch[key] for batch in batches])
    return {key: value.unsqueeze(0) for key, value in inputs.items()}  # batch of one


def small_training_model(ema_decay: float) -> AlphaFoldForTraining:
    config = AlphaFoldTrainingConfig(**vars(load("smoke.yaml").model))
    config.ema_decay = ema_decay
    torch.manual_seed(0)
    return AlphaFoldForTraining(config, seed=3)


def test_recycling_count_is_sampled_in_training_and_full_in_evaluation(monkeypatch):
    model = small_training_model(ema_decay=0.0)
    seen = []
    monkeypatch.setattr(model.model, "forward", lambda batches: seen.append(len(batches)))
    inputs = recycled_inputs(samples=4)
    model.train()
    for _ in range(20):
        model(**inputs)
    assert set(seen) <= {1, 2, 3, 4} and len(set(seen)) > 1
    twin = small_training_model(ema_decay=0.0)  # same seed: the same draws on every rank
    twin_seen = []
    monkeypatch.setattr(twin.model, "forward", lambda batches: twin_seen.append(len(batches)))
    for _ in range(20):
        twin(**inputs)
    assert twin_seen == seen
    model.eval()
    seen.clear()
    model(**inputs)
    assert seen == [4]


def test_ema_follows_optimizer_steps_and_survives_the_state_dict():
    model = small_training_model(ema_decay=0.5)
    inputs = recycled_inputs(samples=1)
    model.train()
    model.update_ema()  # after the first step: the average starts at the weights
    name = "structure_module.bb_update.linear.weight"
    start = dict(model.model.named_parameters())[name].detach().clone()
    with torch.no_grad():
        for parameter in model.model.parameters():
            parameter.add_(0.1)  # what an optimizer step does
    model.update_ema()
    model(**inputs)  # forward passes leave the average alone
    torch.testing.assert_close(model.ema[name], start + 0.05)

    state = model.state_dict()
    assert f"ema.{name}" in state
    restored = small_training_model(ema_decay=0.5)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.ema[name], start + 0.05)

    model.eval()
    with torch.no_grad():
        ema_output = model(**inputs)["final_atom_positions"]
        model.ema_decay = 0.0
        model.ema = {}
        raw_output = model(**inputs)["final_atom_positions"]
    assert not torch.allclose(ema_output, raw_output)


def test_lddt_metric_averages_over_chains():
    batch = random_batch(n_res=10, seed=0)
    targets = {key: batch[key].unsqueeze(0).repeat(2, *[1] * batch[key].dim())
               for key in ("all_atom_positions", "all_atom_mask")}
    outputs = {"final_atom_positions": targets["all_atom_positions"].clone()}
    outputs["final_atom_positions"][1] += torch.randn(10, 37, 3) * 5.0
    metric = LDDTCaMetric()
    metric.update(outputs, targets)
    value = metric.compute(torch.device("cpu"))
    assert 0.5 < value < 1.0  # one perfect chain, one poor one


@pytest.mark.slow
def test_smoke_run_reaches_its_target(tmp_path):
    data = synthesize(tmp_path / "data", samples=24, seed=0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(FOLDER / "train.py"), "--config", "smoke", "--data-dir", str(data)],
        capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"key": "run_stop"' in result.stdout and '"status": "success"' in result.stdout
