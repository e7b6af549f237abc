"""AlphaFold2 / OpenFold (MLPerf HPC): protein structure prediction from sequence and MSA,
trained until the mean lDDT-Cα of the validation chains reaches 0.8 (``eval_accuracy``).

Run ``mlbench train alphafold2 [--config smoke] [--data-dir DIR] [--set KEY=VALUE ...]`` or
this file directly, as one process, under torchrun or under srun.
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from benchmarks.alphafold2.data.dataset import (
    CHAINS_TABLE,
    ChainFilter,
    ChainReader,
    ProteinDataset,
    read_chains_table,
    sampling_weights,
    split_chains,
)
from benchmarks.alphafold2.data.synthetic_dataset import synthesize
from benchmarks.alphafold2.data.transforms import FeatureConfig
from benchmarks.alphafold2.loop_adapter import (
    AlphaFoldForTraining,
    AlphaFoldTrainingConfig,
    LDDTCaMetric,
)
from benchmarks.alphafold2.losses import AlphaFoldLoss
from benchmarks.alphafold2.openfold_weights import (
    WeightConversionError,
    load_openfold_weights,
    read_openfold_state_dict,
)
from benchmarks.core.config import (
    Config,
    ConfigSchema,
    DataConfig,
    Fraction,
    GlobalContext,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from benchmarks.core.data import build_loader, require_dir, take_subset
from benchmarks.core.errors import ConfigError, InputError
from benchmarks.core.loop import Task
from benchmarks.core.runner import BenchmarkSpec, run


@dataclass
class AlphaFoldDataConfig(DataConfig):
    """Data keys on top of the common ones (AF2 suppl. Table 4 "initial training")."""

    crop_size: PositiveInt = 256
    max_msa_clusters: PositiveInt = 124  # 128 minus the 4 template rows, as in MLPerf
    max_extra_msa: NonNegativeInt = 1024
    use_templates: bool = True
    max_templates: NonNegativeInt = 4
    max_template_hits: NonNegativeInt = 20
    max_recycles: NonNegativeInt = 3
    clamp_prob: Fraction = 0.9
    max_release_date: str = "2021-09-16"  # MLPerf training cut-off; "" = none
    max_template_date: str = "2021-09-16"
    max_resolution: PositiveFloat = 9.0
    # Sample training chains by length and PDB cluster size (needs chains.csv), as AF2 and
    # the MLPerf reference do; false: every chain once per epoch.
    weighted_sampling: bool = True


def _date(value: str, key: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"config key 'data.{key}': {value!r} is not a YYYY-MM-DD date") from None


def feature_config(data: AlphaFoldDataConfig, templates_in_model: bool) -> FeatureConfig:
    return FeatureConfig(
        crop_size=data.crop_size, max_msa_clusters=data.max_msa_clusters,
        max_extra_msa=data.max_extra_msa, max_templates=data.max_templates,
        max_template_hits=data.max_template_hits, max_recycles=data.max_recycles,
        clamp_prob=data.clamp_prob, use_templates=data.use_templates and templates_in_model)


def build_model(config: Config) -> nn.Module:
    """The network with its recycling/EMA adapter (works on the meta device)."""
    return AlphaFoldForTraining(config.model, seed=config.training.seed)


def load_initial_weights(model: AlphaFoldForTraining, path: str) -> None:
    """``model.openfold_weights``: start from OpenFold's weights instead of a random init."""
    try:
        load_openfold_weights(model.model, read_openfold_state_dict(path))
    except WeightConversionError as error:
        raise InputError(f"{path} (model.openfold_weights): {error.summary}") from None


def build_task(context: GlobalContext) -> Task:
    config, env, device = context.cfg, context.dist, context.device
    data = config.data
    if data.eval_batch_size > 1:
        raise ConfigError("config key 'data.eval_batch_size': must be 1 (validation chains "
                          "are evaluated whole, at their own length)")
    data_dir = require_dir(data.data_dir, "AlphaFold data folder")
    chain_filter = ChainFilter(max_release_date=_date(data.max_release_date, "max_release_date"),
                               max_resolution=data.max_resolution or None)
    features = feature_config(data, config.model.template.enabled)
    reader = ChainReader(data_dir, features.use_templates, data.max_template_hits,
                         _date(data.max_template_date, "max_template_date"))
    records = read_chains_table(data_dir / CHAINS_TABLE)
    train_ids, eval_ids = split_chains(data_dir, chain_filter, reader.alignments, records)
    train_ids = take_subset(train_ids, data.train_subset, "data.train_subset", data_dir,
                            "training chains")
    eval_ids = take_subset(eval_ids, data.eval_subset, "data.eval_subset", data_dir,
                           "validation chains")
    weights = sampling_weights(train_ids, records) if data.weighted_sampling else None
    seed = config.training.seed
    train_set = ProteinDataset(train_ids, reader, features, train=True, seed=seed)
    eval_set = ProteinDataset(eval_ids, reader, features, train=False, seed=seed)
    common = {"env": env, "device": device, "num_workers": data.num_workers,
              "prefetch_factor": data.prefetch_factor, "seed": seed}
    model = build_model(config)
    if config.model.openfold_weights:
        load_initial_weights(model, config.model.openfold_weights)
    return Task(
        model=model,
        train_loader=build_loader(train_set, data.local_batch_size, train=True,
                                  shuffle=data.shuffle, drop_last=data.drop_last,
                                  sample_weights=weights, **common),
        eval_loader=build_loader(eval_set, 1, train=False, **common),
        loss_fn=AlphaFoldLoss(config.model.loss),
        metric=LDDTCaMetric(),
        train_samples=len(train_set),
        eval_samples=len(eval_set),
        hyperparameters={
            "train_crop_size": data.crop_size,
            "max_msa_clusters": data.max_msa_clusters,
            "max_extra_msa": data.max_extra_msa,
            "max_recycling_iters": data.max_recycles,
            "ema_decay": config.model.ema_decay,
            "gradient_clip_norm": config.opt.clip_grad_norm,
        },
    )


SPEC = BenchmarkSpec(
    name="alphafold2",
    mllog_name="openfold",
    task="protein structure prediction",
    model_name="AlphaFold2 (OpenFold initial training)",
    dataset="OpenProteinSet alignments + PDB mmCIF",
    folder=Path(__file__).parent,
    schema=ConfigSchema(data=AlphaFoldDataConfig, model=AlphaFoldTrainingConfig),
    build_model=build_model,
    build_task=build_task,
    synthesize=synthesize,
    default_samples=24,
)

if __name__ == "__main__":
    sys.exit(run(SPEC))
