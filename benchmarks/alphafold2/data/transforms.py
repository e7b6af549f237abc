"""Turn a :class:`RawChain` into one model example (AF2 suppl. 1.2.5-1.2.9, 1.11.3).

Per recycling iteration the MSA is resampled: cluster centres are drawn (query first), BERT
masked, every remaining sequence is assigned to its nearest centre to build the cluster
profile, and a random subset of the rest forms the extra MSA. Then a contiguous crop is taken
and every array is padded to fixed sizes so examples can be batched.

The example is ``(inputs, targets)``: ``inputs`` holds the model features, the keys in
:data:`RECYCLED_KEYS` with a leading recycle dimension (``max_recycles + 1`` independent
samples); ``targets`` holds the ground truth the losses read (see :mod:`..losses`), with the
MSA targets of the last sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.alphafold2 import all_atom
from benchmarks.alphafold2.data.features import RawChain

RECYCLED_KEYS = ("msa_feat", "msa_mask", "extra_msa", "extra_has_deletion",
                 "extra_deletion_value", "extra_msa_mask")
TEMPLATE_KEYS = ("template_aatype", "template_all_atom_positions", "template_all_atom_mask")


@dataclass
class FeatureConfig:
    """Sampling and size limits; defaults are the AF2/OpenFold initial-training values."""

    crop_size: int = 256
    max_msa_clusters: int = 128
    max_extra_msa: int = 1024
    max_templates: int = 4
    max_template_hits: int = 20
    masked_msa_replace_fraction: float = 0.15
    masked_msa_uniform_prob: float = 0.1
    masked_msa_profile_prob: float = 0.1
    masked_msa_same_prob: float = 0.1
    max_recycles: int = 3
    clamp_prob: float = 0.9
    use_templates: bool = True


def _deletion_value(deletions: torch.Tensor) -> torch.Tensor:
    return torch.atan(deletions / 3.0) * (2.0 / math.pi)


def bert_mask_msa(msa: torch.Tensor, profile: torch.Tensor, config: FeatureConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style corruption of the cluster centres (AF2 suppl. 1.2.7).

    Each position is selected with probability ``replace_fraction``; a selected residue
    becomes a uniformly random amino acid, a draw from the MSA profile, itself, or the mask
    token (22) with probabilities uniform/profile/same/remainder. Returns (msa, bert_mask).
    """
    uniform = torch.tensor([0.05] * 20 + [0.0, 0.0], dtype=profile.dtype)
    probs = (config.masked_msa_uniform_prob * uniform
             + config.masked_msa_profile_prob * profile
             + config.masked_msa_same_prob * F.one_hot(msa, 22).to(profile.dtype))
    mask_prob = 1.0 - config.masked_msa_uniform_prob - config.masked_msa_profile_prob \
        - config.masked_msa_same_prob
    probs = torch.cat([probs, torch.full_like(probs[..., :1], mask_prob)], dim=-1)
    replacement = torch.multinomial(probs.reshape(-1, 23), 1, generator=generator)
    replacement = replacement.reshape(msa.shape)
    selected = torch.rand(msa.shape, generator=generator) < config.masked_msa_replace_fraction
    return torch.where(selected, replacement, msa), selected.float()


def sample_msa(msa: torch.Tensor, deletions: torch.Tensor, config: FeatureConfig,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One MSA sample over the full chain: cluster-centre features and the extra MSA."""
    n_seq = msa.shape[0]
    order = torch.cat([torch.zeros(1, dtype=torch.long),
                       torch.randperm(n_seq - 1, generator=generator) + 1])
    centres, rest = order[:config.max_msa_clusters], order[config.max_msa_clusters:]
    profile = F.one_hot(msa, 22).float().mean(dim=0)  # [N, 22] over the whole MSA
    true_msa, centre_deletions = msa[centres], deletions[centres]
    masked_msa, bert_mask = bert_mask_msa(true_msa, profile, config, generator)

    extra_msa, extra_deletions = msa[rest], deletions[rest]
    centre_one_hot = F.one_hot(masked_msa, 23).float()
    extra_one_hot = F.one_hot(extra_msa, 23).float()
    # Nearest centre by number of identical residues; gaps and mask tokens do not count.
    weights = torch.tensor([1.0] * 21 + [0.0, 0.0])
    agreement = torch.einsum("erc,src->es", extra_one_hot, centre_one_hot * weights)
    assignment = torch.argmax(agreement, dim=1)
    counts = 1e-6 + 1.0 + torch.zeros(len(centres), msa.shape[1]).index_add_(
        0, assignment, torch.ones_like(extra_deletions))
    profile_sum = centre_one_hot.clone().index_add_(0, assignment, extra_one_hot)
    deletion_sum = centre_deletions.clone().index_add_(0, assignment, extra_deletions)
    msa_feat = torch.cat([
        centre_one_hot,
        (centre_deletions > 0).float()[..., None],
        _deletion_value(centre_deletions)[..., None],
        profile_sum / counts[..., None],
        _deletion_value(deletion_sum / counts)[..., None],
    ], dim=-1)

    keep = torch.randperm(len(rest), generator=generator)[:config.max_extra_msa]
    extra_msa, extra_deletions = extra_msa[keep], extra_deletions[keep]
    return {
        "msa_feat": msa_feat,
        "msa_mask": torch.ones(true_msa.shape),
        "true_msa": true_msa,
        "bert_mask": bert_mask,
        "extra_msa": extra_msa,
        "extra_has_deletion": (extra_deletions > 0).float(),
        "extra_deletion_value": _deletion_value(extra_deletions),
        "extra_msa_mask": torch.ones(extra_msa.shape),
    }


def _pad_to(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zero-pad dimension ``dim`` of ``tensor`` up to ``size``."""
    return F.pad(tensor, [0, 0] * (tensor.dim() - dim - 1) + [0, size - tensor.shape[dim]])


def _stack_padded(tensors: list[torch.Tensor], rows: int, size: int) -> torch.Tensor:
    """``tensors`` [r_i, n, ...] zero-padded to [rows, size, ...] and stacked, written once into
    the result (padding each, then stacking, copied the largest features twice)."""
    first = tensors[0]
    stacked = first.new_zeros((len(tensors), rows, size, *first.shape[2:]))
    for index, tensor in enumerate(tensors):
        stacked[index, :tensor.shape[0], :tensor.shape[1]] = tensor
    return stacked


def make_example(raw: RawChain, config: FeatureConfig, generator: torch.Generator,
                 train: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Sample, crop (training only; evaluation keeps the whole chain) and pad one example."""
    n_res = raw.num_res
    aatype = torch.from_numpy(raw.aatype)
    size = config.crop_size if train else n_res
    length = min(n_res, size)
    start = int(torch.randint(0, n_res - length + 1, (1,), generator=generator)) if train else 0

    def residues(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Crop the residue dimension to the window and pad it to the example size."""
        return _pad_to(tensor.narrow(dim, start, length), dim, size)

    msa = torch.from_numpy(raw.msa)
    deletions = torch.from_numpy(raw.deletion_matrix)
    samples = [sample_msa(msa, deletions, config, generator)
               for _ in range(config.max_recycles + 1)]
    row_limits = {"msa_feat": config.max_msa_clusters, "msa_mask": config.max_msa_clusters,
                  "true_msa": config.max_msa_clusters, "bert_mask": config.max_msa_clusters}
    recycled = {
        key: _stack_padded([sample[key].narrow(1, start, length) for sample in samples],
                           row_limits.get(key, config.max_extra_msa), size)
        for key in RECYCLED_KEYS + ("true_msa", "bert_mask")
    }

    inputs = {
        "aatype": residues(aatype),
        "residue_index": residues(torch.arange(n_res)),
        "seq_mask": residues(torch.ones(n_res)),
        "target_feat": residues(torch.cat([torch.zeros(n_res, 1), F.one_hot(aatype, 21).float()],
                                          dim=-1)),
    }
    inputs.update({key: recycled[key] for key in RECYCLED_KEYS})
    if config.use_templates and config.max_templates > 0:
        inputs.update(_templates(raw, config, generator, train, residues))

    positions = torch.from_numpy(raw.all_atom_positions)
    atom_mask = torch.from_numpy(raw.all_atom_mask)
    structure = all_atom.make_structure_features(aatype, positions, atom_mask)
    structure.update(all_atom_positions=positions, all_atom_mask=atom_mask)
    targets = {key: residues(value) for key, value in structure.items()}
    targets.update(
        aatype=inputs["aatype"], seq_mask=inputs["seq_mask"],
        true_msa=recycled["true_msa"][-1], bert_mask=recycled["bert_mask"][-1],
        resolution=torch.tensor(raw.resolution, dtype=torch.float32),
        use_clamped_fape=torch.tensor(float(not train or torch.rand(
            1, generator=generator).item() < config.clamp_prob)))
    return inputs, targets


def _templates(raw: RawChain, config: FeatureConfig, generator: torch.Generator, train: bool,
               residues) -> dict[str, torch.Tensor]:
    """Up to ``max_templates`` templates (training: a random number of random hits)."""
    available = raw.template_aatype.shape[0]
    if train:
        count = int(torch.randint(0, min(available, config.max_templates) + 1, (1,),
                                  generator=generator))
        chosen = torch.randperm(available, generator=generator)[:count]
    else:
        chosen = torch.arange(min(available, config.max_templates))
    rows = config.max_templates

    def pick(array) -> torch.Tensor:
        return _pad_to(residues(torch.from_numpy(array)[chosen], dim=1), 0, rows)

    return {
        "template_aatype": pick(raw.template_aatype),
        "template_all_atom_positions": pick(raw.template_all_atom_positions),
        "template_all_atom_mask": pick(raw.template_all_atom_mask),
        "template_mask": _pad_to(torch.ones(len(chosen)), 0, rows),
    }


def iteration_features(inputs: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Model features of recycling iteration ``index`` from a (batched) example's inputs."""
    return {key: value.select(-_RECYCLE_DIM_FROM_END[key], index)
            if key in _RECYCLE_DIM_FROM_END else value for key, value in inputs.items()}


# Position of the recycle dim counted from the end (it sits before the unbatched shape).
_RECYCLE_DIM_FROM_END = {"msa_feat": 4, "msa_mask": 3, "extra_msa": 3, "extra_has_deletion": 3,
                         "extra_deletion_value": 3, "extra_msa_mask": 3}
