"""The MLPerf HPC OpenFold starting checkpoint: the reference rewrite's parameter names.

:func:`reference_shapes` writes out the parameter tree of the MLPerf reference's ``AlphaFold``
(mlcommons/hpc ``openfold/openfold/model/*.py``: module attribute names and the shapes their
constructors give), independently of the renaming rules under test. At the "initial
training" size it must hold the 93,229,082 parameters the closed rules require.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.alphafold2.loop_adapter import AlphaFoldForTraining, AlphaFoldTrainingConfig
from benchmarks.alphafold2.model import AlphaFold, AlphaFoldConfig
from benchmarks.alphafold2.openfold_weights import (
    WeightConversionError,
    convert_openfold_state_dict,
    ours_to_openfold_name,
    read_openfold_state_dict,
)
from benchmarks.alphafold2.train import load_initial_weights
from benchmarks.core.errors import InputError

Shapes = dict[str, tuple[int, ...]]


def _linear(prefix: str, c_in: int, c_out: int, bias: bool = True) -> Shapes:
    shapes = {f"{prefix}.weight": (c_out, c_in)}
    if bias:
        shapes[f"{prefix}.bias"] = (c_out,)
    return shapes


def _layer_norm(prefix: str, channels: int) -> Shapes:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _attention(prefix: str, c_q: int, c_kv: int, c_hidden: int, heads: int,
               gating: bool) -> Shapes:
    """``model/attention.py`` Attention."""
    hidden = c_hidden * heads
    shapes = {**_linear(f"{prefix}.linear_q", c_q, hidden, bias=False),
              **_linear(f"{prefix}.linear_k", c_kv, hidden, bias=False),
              **_linear(f"{prefix}.linear_v", c_kv, hidden, bias=False),
              **_linear(f"{prefix}.linear_o", hidden, c_q)}
    if gating:
        shapes.update(_linear(f"{prefix}.linear_g", c_q, hidden))
    return shapes


def _triangle_attention(prefix: str, c_z: int, c_hidden: int, heads: int) -> Shapes:
    return {**_layer_norm(f"{prefix}.layer_norm", c_z),
            **_linear(f"{prefix}.linear", c_z, heads, bias=False),
            **_attention(f"{prefix}.mha", c_z, c_z, c_hidden, heads, gating=True)}


def _triangle_multiplication(prefix: str, c_z: int, c_hidden: int) -> Shapes:
    shapes = {}
    for name in ("linear_a_p", "linear_a_g", "linear_b_p", "linear_b_g"):
        shapes.update(_linear(f"{prefix}.{name}", c_z, c_hidden))
    return {**shapes, **_linear(f"{prefix}.linear_g", c_z, c_z),
            **_linear(f"{prefix}.linear_z", c_hidden, c_z),
            **_layer_norm(f"{prefix}.layer_norm_in", c_z),
            **_layer_norm(f"{prefix}.layer_norm_out", c_hidden)}


def _transition(prefix: str, channels: int, n: int) -> Shapes:
    return {**_layer_norm(f"{prefix}.layer_norm", channels),
            **_linear(f"{prefix}.linear_1", channels, n * channels),
            **_linear(f"{prefix}.linear_2", n * channels, channels)}


def _pair_updates(prefix: str, c_z: int, tri_att: int, tri_mul: int, heads: int,
                  transition_n: int) -> Shapes:
    return {**_triangle_multiplication(f"{prefix}.tri_mul_out", c_z, tri_mul),
            **_triangle_multiplication(f"{prefix}.tri_mul_in", c_z, tri_mul),
            **_triangle_attention(f"{prefix}.tri_att_start", c_z, tri_att, heads),
            **_triangle_attention(f"{prefix}.tri_att_end", c_z, tri_att, heads),
            **_transition(f"{prefix}.pair_transition", c_z, transition_n)}


def _msa_block(prefix: str, c_m: int, c_z: int, stack, extra: bool) -> Shapes:
    """``EvoformerBlock`` / ``ExtraMSABlock``: row attention, column (global) attention and
    ``EvoformerBlockCore`` under ``core``."""
    heads, c_att = stack.no_heads_msa, stack.c_hidden_msa_att
    row = f"{prefix}.msa_att_row"
    shapes = {**_layer_norm(f"{row}.layer_norm_m", c_m), **_layer_norm(f"{row}.layer_norm_z", c_z),
              **_linear(f"{row}.linear_z", c_z, heads, bias=False),
              **_attention(f"{row}.mha", c_m, c_m, c_att, heads, gating=True),
              **_layer_norm(f"{prefix}.msa_att_col.layer_norm_m", c_m)}
    if extra:  # MSAColumnGlobalAttention -> GlobalAttention
        glob = f"{prefix}.msa_att_col.global_attention"
        shapes.update({**_linear(f"{glob}.linear_q", c_m, heads * c_att, bias=False),
                       **_linear(f"{glob}.linear_k", c_m, c_att, bias=False),
                       **_linear(f"{glob}.linear_v", c_m, c_att, bias=False),
                       **_linear(f"{glob}.linear_g", c_m, heads * c_att),
                       **_linear(f"{glob}.linear_o", heads * c_att, c_m)})
    else:
        shapes.update(_attention(f"{prefix}.msa_att_col.mha", c_m, c_m, c_att, heads, True))
    core = f"{prefix}.core"
    opm = f"{core}.outer_product_mean"
    shapes.update({**_transition(f"{core}.msa_transition", c_m, stack.transition_n),
                   **_layer_norm(f"{opm}.layer_norm", c_m),
                   **_linear(f"{opm}.linear_1", c_m, stack.c_hidden_opm),
                   **_linear(f"{opm}.linear_2", c_m, stack.c_hidden_opm),
                   **_linear(f"{opm}.linear_out", stack.c_hidden_opm ** 2, c_z),
                   **_pair_updates(core, c_z, stack.c_hidden_pair_att, stack.c_hidden_mul,
                                   stack.no_heads_pair, stack.transition_n)})
    return shapes


def reference_shapes(cfg: AlphaFoldConfig) -> Shapes:
    """Every parameter of the reference ``AlphaFold`` (templates and their angles enabled,
    no TM head) with its shape, for the dimensions of ``cfg``."""
    c_m, c_z, c_t, c_e, c_s = cfg.c_m, cfg.c_z, cfg.c_t, cfg.c_e, cfg.c_s
    embed, template, sm, heads = cfg.input_embedder, cfg.template, cfg.structure_module, cfg.heads
    shapes = {
        **_linear("input_embedder.linear_tf_z_i", embed.tf_dim, c_z),
        **_linear("input_embedder.linear_tf_z_j", embed.tf_dim, c_z),
        **_linear("input_embedder.linear_tf_m", embed.tf_dim, c_m),
        **_linear("input_embedder.linear_msa_m", embed.msa_dim, c_m),
        **_linear("input_embedder.linear_relpos", 2 * embed.relpos_k + 1, c_z),
        **_linear("recycling_embedder.linear", cfg.recycling.no_bins, c_z),
        **_layer_norm("recycling_embedder.layer_norm_m", c_m),
        **_layer_norm("recycling_embedder.layer_norm_z", c_z),
        **_linear("template_angle_embedder.linear_1", template.angle_dim, c_m),
        **_linear("template_angle_embedder.linear_2", c_m, c_m),
        **_linear("template_pair_embedder.linear", template.pair_dim, c_t),
        **_layer_norm("template_pair_stack.layer_norm", c_t),
        **_attention("template_pointwise_attention.mha", c_z, c_t, template.pointwise_c_hidden,
                     template.pointwise_no_heads, gating=False),
        **_linear("extra_msa_embedder.linear", cfg.extra_msa.feat_dim, c_e),
        **_linear("evoformer_stack.linear", c_m, c_s),
    }
    pair = template.pair_stack
    for block in range(template.no_blocks):
        shapes.update(_pair_updates(f"template_pair_stack.blocks.{block}", c_t,
                                    pair.c_hidden_tri_att, pair.c_hidden_tri_mul, pair.no_heads,
                                    pair.transition_n))
    for block in range(cfg.extra_msa.stack.no_blocks):
        shapes.update(_msa_block(f"extra_msa_stack.blocks.{block}", c_e, c_z,
                                 cfg.extra_msa.stack, extra=True))
    for block in range(cfg.evoformer.no_blocks):
        shapes.update(_msa_block(f"evoformer_stack.blocks.{block}", c_m, c_z, cfg.evoformer,
                                 extra=False))
    ipa, hidden = "structure_module.ipa", sm.no_heads_ipa * sm.c_ipa
    points_qk, points_v = sm.no_heads_ipa * sm.no_qk_points, sm.no_heads_ipa * sm.no_v_points
    shapes.update({
        **_layer_norm("structure_module.layer_norm_s", c_s),
        **_layer_norm("structure_module.layer_norm_z", c_z),
        **_linear("structure_module.linear_in", c_s, c_s),
        **_linear(f"{ipa}.linear_q", c_s, hidden),
        **_linear(f"{ipa}.linear_kv", c_s, 2 * hidden),
        **_linear(f"{ipa}.linear_q_points", c_s, points_qk * 3),
        **_linear(f"{ipa}.linear_kv_points", c_s, (points_qk + points_v) * 3),
        **_linear(f"{ipa}.linear_b", c_z, sm.no_heads_ipa),
        f"{ipa}.head_weights": (sm.no_heads_ipa,),
        **_linear(f"{ipa}.linear_out", sm.no_heads_ipa * (c_z + sm.c_ipa + sm.no_v_points * 4),
                  c_s),
        **_layer_norm("structure_module.layer_norm_ipa", c_s),
        # SingleTransition: one layer, no ``layers`` list.
        **_linear("structure_module.transition.linear_1", c_s, c_s),
        **_linear("structure_module.transition.linear_2", c_s, c_s),
        **_linear("structure_module.transition.linear_3", c_s, c_s),
        **_layer_norm("structure_module.transition.layer_norm", c_s),
        **_linear("structure_module.bb_update.linear", c_s, 6),
        **_linear("structure_module.angle_resnet.linear_in", c_s, sm.c_resnet),
        **_linear("structure_module.angle_resnet.linear_initial", c_s, sm.c_resnet),
        **_linear("structure_module.angle_resnet.linear_out", sm.c_resnet, sm.no_angles * 2),
        **_layer_norm("auxiliary_heads.plddt.layer_norm", c_s),
        **_linear("auxiliary_heads.plddt.linear_1", c_s, heads.plddt_c_hidden),
        **_linear("auxiliary_heads.plddt.linear_2", heads.plddt_c_hidden, heads.plddt_c_hidden),
        **_linear("auxiliary_heads.plddt.linear_3", heads.plddt_c_hidden, heads.plddt_bins),
        **_linear("auxiliary_heads.distogram.linear", c_z, heads.distogram_bins),
        **_linear("auxiliary_heads.masked_msa.linear", c_m, heads.masked_msa_classes),
        **_linear("auxiliary_heads.experimentally_resolved.linear", c_s,
                  heads.experimentally_resolved_atoms),
    })
    for block in range(sm.no_resnet_blocks):
        prefix = f"structure_module.angle_resnet.layers.{block}"
        shapes.update({**_linear(f"{prefix}.linear_1", sm.c_resnet, sm.c_resnet),
                       **_linear(f"{prefix}.linear_2", sm.c_resnet, sm.c_resnet)})
    return shapes


def reference_checkpoint(cfg: AlphaFoldConfig, seed: int = 0) -> dict:
    """A resumable checkpoint as the reference's ``checkpoint_utils.save_checkpoint`` writes."""
    generator = torch.Generator().manual_seed(seed)
    weights = {name: torch.randn(shape, generator=generator)
               for name, shape in reference_shapes(cfg).items()}
    return {"iteration": 1000, "alphafold_state_dict": weights,
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3, "params": []}]}}


def test_the_reference_tree_has_the_parameter_count_of_the_closed_rules():
    shapes = reference_shapes(AlphaFoldConfig.initial_training())
    assert sum(torch.Size(shape).numel() for shape in shapes.values()) == 93_229_082
    with torch.device("meta"):
        model = AlphaFold(AlphaFoldConfig.initial_training())
    state = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    converted = convert_openfold_state_dict(state, model)
    assert len(converted) == len(model.state_dict()) == len(shapes)


#: Reference name -> ours, by hand from the two module trees: every renamed module path and
#: one parameter of each module kind kept as it is.
DESTINATIONS = {
    "evoformer_stack.blocks.1.msa_att_col.mha.linear_q.weight":
        "evoformer.blocks.1.msa_att_col.mha.linear_q.weight",
    "evoformer_stack.blocks.1.msa_att_col.layer_norm_m.bias":
        "evoformer.blocks.1.msa_att_col.layer_norm_m.bias",
    "evoformer_stack.blocks.0.core.tri_att_end.linear.weight":
        "evoformer.blocks.0.pair_stack.tri_att_end.linear.weight",
    "evoformer_stack.blocks.0.core.outer_product_mean.linear_out.bias":
        "evoformer.blocks.0.outer_product_mean.linear_out.bias",
    "evoformer_stack.linear.weight": "evoformer.linear.weight",
    "extra_msa_stack.blocks.0.msa_att_col.global_attention.linear_k.weight":
        "extra_msa_stack.blocks.0.msa_att_col.global_attention.linear_k.weight",
    "template_pointwise_attention.mha.linear_o.bias":
        "template_embedder.pointwise_attention.mha.linear_o.bias",
    "template_angle_embedder.linear_2.bias": "template_embedder.angle_embedder.2.bias",
    "template_pair_stack.blocks.0.tri_mul_in.linear_z.weight":
        "template_embedder.pair_stack.blocks.0.tri_mul_in.linear_z.weight",
    "structure_module.transition.linear_3.weight": "structure_module.transition.layers.0.2.weight",
    "structure_module.transition.layer_norm.weight":
        "structure_module.transition.layer_norm.weight",
    "structure_module.angle_resnet.layers.1.linear_2.weight":
        "structure_module.angle_resnet.blocks.1.1.weight",
    "structure_module.ipa.head_weights": "structure_module.ipa.head_weights",
    "auxiliary_heads.masked_msa.linear.weight": "aux_heads.masked_msa.weight",
    "auxiliary_heads.plddt.linear_3.bias": "aux_heads.plddt.linear_3.bias",
    "input_embedder.linear_relpos.weight": "input_embedder.linear_relpos.weight",
}


def test_resumable_checkpoint_lands_in_the_training_model(tmp_path):
    cfg = AlphaFoldTrainingConfig(**vars(AlphaFoldConfig.tiny()))
    saved = reference_checkpoint(cfg)
    torch.save(saved, tmp_path / "mlperf_hpc_openfold_resumable_checkpoint.pt")
    model = AlphaFoldForTraining(cfg)
    load_initial_weights(model, tmp_path / "mlperf_hpc_openfold_resumable_checkpoint.pt")
    ours = model.model.state_dict()
    weights = saved["alphafold_state_dict"]
    for reference_name, our_name in DESTINATIONS.items():
        assert torch.equal(ours[our_name], weights[reference_name]), reference_name
    # Every parameter got exactly one reference tensor (all values are distinct draws).
    loaded = {tensor.flatten()[0].item() for tensor in ours.values()}
    assert len(loaded) == len(ours) == len(weights)
    assert loaded == {tensor.flatten()[0].item() for tensor in weights.values()}


def test_refusals_name_the_first_bad_tensor(tmp_path):
    cfg = AlphaFoldTrainingConfig(**vars(AlphaFoldConfig.tiny()))
    model = AlphaFoldForTraining(cfg)
    path = tmp_path / "ckpt.pt"

    saved = reference_checkpoint(cfg)
    saved["alphafold_state_dict"]["evoformer_stack.linear.weight"] = torch.zeros(3, 3)
    torch.save(saved, path)
    with pytest.raises(InputError, match=r"ckpt.pt \(model.init_checkpoint\): does not fit "
                                         r"the model: 1 shape mismatches .*evoformer.linear"):
        load_initial_weights(model, path)

    saved = reference_checkpoint(cfg)
    del saved["alphafold_state_dict"]["auxiliary_heads.distogram.linear.bias"]
    torch.save(saved, path)
    with pytest.raises(InputError, match=r"1 parameters of our model without an OpenFold "
                                         r"value \(first: aux_heads.distogram.linear.bias\)"):
        load_initial_weights(model, path)

    saved = reference_checkpoint(cfg)
    saved["alphafold_state_dict"]["evoformer_stack.blocks.0.msa_att_col.extra.weight"] = \
        torch.zeros(2)
    torch.save(saved, path)
    with pytest.raises(InputError, match=r"converted names our model does not have \(first: "
                                         r"evoformer_stack.blocks.0.msa_att_col.extra.weight"):
        load_initial_weights(model, path)

    with pytest.raises(InputError, match="nothere.pt: initial checkpoint not found"):
        load_initial_weights(model, tmp_path / "nothere.pt")
    torch.save({"alphafold_state_dict": {"a": 1}}, path)
    with pytest.raises(InputError, match="entry 'a' is not a tensor"):
        read_openfold_state_dict(path)


def test_openfold_v1_names_still_load():
    """The MLPerf rules only rename what differs: v1 state dicts keep their own path."""
    cfg = AlphaFoldConfig.tiny()
    model = AlphaFold(cfg)
    v1 = {ours_to_openfold_name(name): t for name, t in model.state_dict().items()}
    assert set(convert_openfold_state_dict(v1, AlphaFold(cfg))) == set(model.state_dict())
    with pytest.raises(WeightConversionError):
        convert_openfold_state_dict({**v1, "auxiliary_heads.tm.linear.weight": torch.zeros(1)},
                                    AlphaFold(cfg))
