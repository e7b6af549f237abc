"""Load OpenFold weights into our AlphaFold model.

OpenFold (aqlaboratory/openfold, PyPI ``openfold`` 0.0.1) and our model have the same layers
with the same shapes: no layer is fused or split differently (IPA's ``linear_kv`` and
``linear_kv_points`` are fused in both), so converting a state dict is a pure renaming. Only
the module tree differs: OpenFold groups the pair half of each Evoformer block under
``core``, wraps column attention in ``_msa_att``, wraps single linear layers in head
modules, gives the template embedder's parts top-level names and names the layers inside
sequential blocks ``linear_1``, ``linear_2``... where ours are indexed.

:data:`RULES` lists the renamings as (OpenFold prefix, our prefix) pairs; the rest of a name
after the prefix is kept. ``{field}`` in a prefix matches one of the alternatives in
:data:`FIELDS` and is carried over. The first rule whose prefix matches wins, in either
direction, so specific rules come before general ones.

The rules cover OpenFold's original ("v1") names, which its released parameter files use.
The MLPerf HPC reference (mlcommons/hpc ``openfold/openfold/model``, package ``openfold``
1.0.0), whose ``mlperf_hpc_openfold_resumable_checkpoint.pt`` the benchmark starts from, is a
rewrite with the same layers under the v1 names but five: :data:`MLPERF_RULES` renames those
to v1 names first. Later OpenFold versions rename other modules (their
``convert_deprecated_v1_keys``); their checkpoints have not been checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from benchmarks.core.checkpoint import load_state_dict_file

FIELDS = {
    "i": r"\d+",
    "stack": "evoformer|extra_msa_stack",
    "msa_op": "msa_transition|outer_product_mean",
    "pair_op": "tri_mul_out|tri_mul_in|tri_att_start|tri_att_end|pair_transition",
    "head": "masked_msa|experimentally_resolved|tm",
}

RULES: tuple[tuple[str, str], ...] = (
    ("input_embedder.", "input_embedder."),
    ("recycling_embedder.", "recycling_embedder."),
    # Templates: OpenFold's four top-level modules are the parts of our TemplateEmbedder.
    ("template_angle_embedder.linear_1.", "template_embedder.angle_embedder.0."),
    ("template_angle_embedder.linear_2.", "template_embedder.angle_embedder.2."),
    ("template_pair_embedder.linear.", "template_embedder.pair_embedder."),
    ("template_pair_stack.", "template_embedder.pair_stack."),
    ("template_pointwise_att.", "template_embedder.pointwise_attention."),
    ("extra_msa_embedder.linear.", "extra_msa_embedder."),
    # Evoformer and extra-MSA blocks: OpenFold's EvoformerBlockCore holds the MSA transition,
    # the outer product mean and the pair updates (our PairStackBlock).
    ("{stack}.blocks.{i}.core.{pair_op}.", "{stack}.blocks.{i}.pair_stack.{pair_op}."),
    ("{stack}.blocks.{i}.core.{msa_op}.", "{stack}.blocks.{i}.{msa_op}."),
    ("evoformer.blocks.{i}.msa_att_col._msa_att.", "evoformer.blocks.{i}.msa_att_col."),
    ("extra_msa_stack.blocks.{i}.msa_att_col.", "extra_msa_stack.blocks.{i}.msa_att_col."),
    ("{stack}.blocks.{i}.msa_att_row.", "{stack}.blocks.{i}.msa_att_row."),
    ("evoformer.linear.", "evoformer.linear."),
    # Structure module: numbered linear layers become indices into our ModuleLists.
    ("structure_module.transition.layers.{i}.linear_1.",
     "structure_module.transition.layers.{i}.0."),
    ("structure_module.transition.layers.{i}.linear_2.",
     "structure_module.transition.layers.{i}.1."),
    ("structure_module.transition.layers.{i}.linear_3.",
     "structure_module.transition.layers.{i}.2."),
    ("structure_module.angle_resnet.layers.{i}.linear_1.",
     "structure_module.angle_resnet.blocks.{i}.0."),
    ("structure_module.angle_resnet.layers.{i}.linear_2.",
     "structure_module.angle_resnet.blocks.{i}.1."),
    ("structure_module.", "structure_module."),
    # Heads: OpenFold wraps the single-linear heads in a module with a ``linear`` child.
    ("aux_heads.{head}.linear.", "aux_heads.{head}."),
    ("aux_heads.plddt.", "aux_heads.plddt."),
    ("aux_heads.distogram.", "aux_heads.distogram."),
)


class WeightConversionError(ValueError):
    """The state dict does not fit the model: names without a rule, missing, or misshapen.

    ``summary`` is one line (a count and the first name of each kind of problem); the message
    lists up to 20 names of each kind.
    """

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


def _compile(prefix: str) -> re.Pattern[str]:
    pattern = ""
    for literal, field in re.findall(r"([^{]*)(?:\{(\w+)\})?", prefix):
        pattern += re.escape(literal)
        if field:
            pattern += f"(?P<{field}>{FIELDS[field]})"
    return re.compile(pattern)


#: (MLPerf reference prefix, OpenFold v1 prefix): the modules the reference's ``AlphaFold``
#: names differently (``model/alphafold.py``, ``evoformer_block.py``, ``msa_column_attention.py``,
#: ``single_transition.py``, ``auxiliary_heads.py`` in mlcommons/hpc ``openfold/openfold``); the
#: last rule keeps every other name.
MLPERF_RULES: tuple[tuple[str, str], ...] = (
    # MSAColumnAttention holds its layer norm and attention itself (v1 wraps them: _msa_att).
    ("evoformer_stack.blocks.{i}.msa_att_col.", "evoformer.blocks.{i}.msa_att_col._msa_att."),
    ("evoformer_stack.", "evoformer."),
    ("template_pointwise_attention.", "template_pointwise_att."),
    # SingleTransition is one transition layer without the v1 ``layers`` list.
    ("structure_module.transition.linear_", "structure_module.transition.layers.0.linear_"),
    ("auxiliary_heads.", "aux_heads."),
    ("", ""),
)
#: Top-level modules only the MLPerf reference names so: how its state dicts are recognised.
MLPERF_ONLY_PREFIXES = ("evoformer_stack.", "auxiliary_heads.", "template_pointwise_attention.")


def _compile_rules(rules: tuple[tuple[str, str], ...]) -> tuple:
    return tuple((_compile(source), source, _compile(target), target)
                 for source, target in rules)


_COMPILED = _compile_rules(RULES)
_MLPERF_COMPILED = _compile_rules(MLPERF_RULES)


def _rename(name: str, compiled: tuple, forward: bool) -> str | None:
    for source_re, source, target_re, target in compiled:
        pattern, replacement = (source_re, target) if forward else (target_re, source)
        match = pattern.match(name)
        if match:
            return replacement.format(**match.groupdict()) + name[match.end():]
    return None


def openfold_to_ours_name(name: str) -> str | None:
    """Our parameter name for an OpenFold one; None when no rule applies."""
    return _rename(name, _COMPILED, forward=True)


def ours_to_openfold_name(name: str) -> str | None:
    """The OpenFold parameter name for one of ours (the inverse mapping, for tests/exports)."""
    return _rename(name, _COMPILED, forward=False)


def mlperf_to_openfold_name(name: str) -> str:
    """The OpenFold v1 name of an MLPerf reference parameter name."""
    return _rename(name, _MLPERF_COMPILED, forward=True)


def is_mlperf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict uses the MLPerf reference's module names."""
    return any(name.startswith(MLPERF_ONLY_PREFIXES) for name in state_dict)


def _listing(title: str, names: list[str], limit: int = 20) -> str:
    shown = "\n  ".join(names[:limit])
    more = f"\n  ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{title} ({len(names)}):\n  {shown}{more}"


def convert_openfold_state_dict(state_dict: Mapping[str, torch.Tensor],
                                model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an OpenFold (v1 names) or MLPerf reference ``AlphaFold`` state dict for
    ``model`` (our AlphaFold).

    Checks the result against ``model``'s own state dict, which may live on the meta device,
    and raises :class:`WeightConversionError` listing every OpenFold name without a rule,
    every name two OpenFold names map to, every parameter of ``model`` left without a value,
    every converted name ``model`` lacks, and every shape mismatch. Tensors are not copied.
    """
    expected = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}  # our name -> the checkpoint's
    unmapped, duplicated = [], []
    mlperf = is_mlperf_state_dict(state_dict)
    for name, tensor in state_dict.items():
        ours = openfold_to_ours_name(mlperf_to_openfold_name(name) if mlperf else name)
        if ours is None:
            unmapped.append(name)
        elif ours in converted:
            duplicated.append(f"{name} -> {ours}")
        else:
            converted[ours], source[ours] = tensor, name
    problems = [
        ("OpenFold names without a renaming rule", unmapped),
        ("names produced twice", duplicated),
        ("parameters of our model without an OpenFold value",
         [name for name in expected if name not in converted]),
        ("converted names our model does not have",
         [f"{source[name]} (as {name})" for name in converted if name not in expected]),
        ("shape mismatches (ours vs OpenFold)",
         [f"{name}: {tuple(expected[name].shape)} vs {tuple(tensor.shape)}"
          for name, tensor in converted.items()
          if name in expected and expected[name].shape != tensor.shape]),
    ]
    problems = [(title, names) for title, names in problems if names]
    if problems:
        summary = "; ".join(f"{len(names)} {title} (first: {names[0]})"
                            for title, names in problems)
        raise WeightConversionError(
            "OpenFold state dict does not fit the model:\n"
            + "\n".join(_listing(title, names) for title, names in problems),
            f"does not fit the model: {summary}")
    return converted


#: Where training checkpoints keep the model weights: the MLPerf reference's resumable
#: checkpoint (``checkpoint_utils.save_checkpoint``) and OpenFold's EMA weights.
MLPERF_STATE_KEY = "alphafold_state_dict"


def read_openfold_state_dict(path: str | Path) -> Mapping[str, torch.Tensor]:
    """The weights in an OpenFold parameter file, the EMA weights of an OpenFold training
    checkpoint (``["ema"]["params"]``), or the model weights of an MLPerf reference resumable
    checkpoint (``["alphafold_state_dict"]``, e.g. ``mlperf_hpc_openfold_resumable_checkpoint
    .pt``); an InputError naming the file otherwise."""
    return load_state_dict_file(
        path, "initial checkpoint", [(MLPERF_STATE_KEY,), ("ema", "params")],
        "expected a state dict of tensors (or a training checkpoint with "
        f"['{MLPERF_STATE_KEY}'] or ['ema']['params'])")


def load_openfold_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy OpenFold weights into ``model`` (our AlphaFold), every parameter exactly once.

    ``state_dict`` is an OpenFold (v1 naming, as PyPI 0.0.1) model state dict: OpenFold's
    ``AlphaFold.state_dict()`` or a released OpenFold ``.pt`` parameter file; OpenFold training
    checkpoints keep it under ``["ema"]["params"]``. Or the MLPerf reference's model state
    dict (see :data:`MLPERF_RULES`). ``model`` must be configured alike
    (e.g. ``heads.tm_enabled`` for pTM weights, templates off for "no_templ" weights).
    """
    model.load_state_dict(convert_openfold_state_dict(state_dict, model), strict=True)
