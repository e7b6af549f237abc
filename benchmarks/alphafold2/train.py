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
from benchmarks.core.mllog import INIT_CHECKPOINT_SHA256, sha256sum
from benchmarks.core.runner import BenchmarkSpec, main


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
    # Validation chains longer than this are dropped where chains.csv gives their length.
    eval_max_length: PositiveInt = 700
    # The CAMEO submission window the validation list was drawn from (MLPerf: 180 targets,
    # 2021-09-17 to 2021-12-11), logged with the run; "" for other lists.
    eval_cameo_start: str = "2021-09-17"
    eval_cameo_end: str = "2021-12-11"


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


def load_initial_weights(model: AlphaFoldForTraining, path: str | Path) -> None:
    """``model.init_checkpoint``: start from the MLPerf reference checkpoint or OpenFold's
    weights instead of a random init."""
    try:
        load_openfold_weights(model.model, read_openfold_state_dict(path))
    except WeightConversionError as error:
        raise InputError(f"{path} (model.init_checkpoint): {error.summary}") from None


def closed_rule_keys(config: Config, model: AlphaFoldForTraining,
                     checkpoint_sha256: str | None) -> dict[str, object]:
    """The keys of the MLPerf HPC 3.0.0 closed OpenFold rules that the runner does not log,
    under the rules' names (``compliance_checker/hpc_3.0.0/closed_openfold.yaml``)."""
    data, opt, loss, training = config.data, config.opt, config.model.loss, config.training
    return {
        "target_avg_lddt_ca_value": training.target,
        "train_max_pdb_release_date": data.max_release_date,
        "val_min_cameo_submission_date": data.eval_cameo_start,
        "val_max_cameo_submission_date": data.eval_cameo_end,
        "val_max_sequence_length": data.eval_max_length,
        "val_every_iters": training.steps_per_epoch * training.eval_every,
        "model_parameters_count": sum(p.numel() for p in model.model.parameters()),
        INIT_CHECKPOINT_SHA256: checkpoint_sha256,
        "train_sequence_crop_size": data.crop_size,
        "num_recycling_iters": data.max_recycles,
        "max_msa_clusters": data.max_msa_clusters,
        "max_extra_msa": data.max_extra_msa,
        "templates_enabled": data.use_templates and config.model.template.enabled,
        "max_templates": data.max_templates,
        "fape_loss_weight": loss.fape_weight,
        "fape_loss_backbone_weight": loss.backbone_fape_weight,
        "fape_loss_sidechain_weight": loss.sidechain_fape_weight,
        "supervised_chi_loss_weight": loss.chi_weight,
        "distogram_loss_weight": loss.distogram_weight,
        "masked_msa_loss_weight": loss.masked_msa_weight,
        "plddt_loss_weight": loss.plddt_weight,
        "opt_name": "Adam" if opt.name == "adam" else opt.name,
        "opt_adam_beta_1": opt.betas[0],
        "opt_adam_beta_2": opt.betas[1],
        "opt_adam_epsilon": opt.eps,
        "opt_amsgrad": False,  # benchmarks.core.optim builds Adam without AMSGrad
        "opt_gradient_clipping": opt.clip_grad_norm > 0,
        "opt_gradient_clip_norm": opt.clip_grad_norm,
        "swa_enabled": config.model.ema_decay > 0,
        "swa_decay_rate": config.model.ema_decay,
        "opt_learning_rate_warmup_init": opt.lr * config.lr_schedule.warmup_start_factor,
        # Samples come in the sampler's order through DataLoader workers, as the reference's
        # InitialTrainingDataloaderPT delivers them (its PQ variant reorders by readiness).
        "initial_training_dataloader_type": "InitialTrainingDataloaderPT",
    }


def build_task(context: GlobalContext) -> Task:
    config, env, device = context.cfg, context.env, context.device
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
    checkpoint_sha256 = None
    if config.model.init_checkpoint:
        checkpoint = data_dir / config.model.init_checkpoint  # an absolute path stays as it is
        load_initial_weights(model, checkpoint)
        if env.is_main:  # only rank 0 logs
            checkpoint_sha256 = sha256sum([checkpoint])
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
        after_step=model.update_ema,
        hyperparameters=closed_rule_keys(config, model, checkpoint_sha256),
        # Sample counts need a fixed epoch length; a one-pass epoch (0) logs its index.
        epoch_num_counts_samples=bool(config.training.steps_per_epoch),
    )


SPEC = BenchmarkSpec(
    name="alphafold2",
    mllog_name="openfold",
    problem="protein structure prediction",
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
    sys.exit(main(SPEC))
