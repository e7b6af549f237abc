"""AlphaFold2 model: parameter count, forward/backward, memory options, config parsing."""

import pytest
import torch

from benchmarks.alphafold2.loop_adapter import AlphaFoldForTraining, AlphaFoldTrainingConfig
from benchmarks.alphafold2.losses import AlphaFoldLoss
from benchmarks.alphafold2.model import AlphaFold, AlphaFoldConfig
from benchmarks.alphafold2.openfold_weights import (
    WeightConversionError,
    convert_openfold_state_dict,
    openfold_to_ours_name,
    ours_to_openfold_name,
    read_openfold_state_dict,
)
from benchmarks.alphafold2.synthetic_proteins import random_batch
from benchmarks.alphafold2.train import load_initial_weights
from benchmarks.core.errors import InputError

N_RES = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_initial_training_model_has_mlperf_parameter_count():
    with torch.device("meta"):
        model = AlphaFold(AlphaFoldConfig.initial_training())
    assert sum(p.numel() for p in model.parameters()) == 93_229_082


def test_parameter_count_depends_on_the_configuration():
    config = AlphaFoldConfig()
    config.heads.tm_enabled = True  # the pTM head adds Linear(c_z, 64)
    with torch.device("meta"):
        model = AlphaFold(config)
    assert sum(p.numel() for p in model.parameters()) == 93_229_082 + 128 * 64 + 64


def test_tiny_forward_backward_on_random_batch():
    torch.manual_seed(0)
    model = AlphaFold(AlphaFoldConfig.tiny())
    batch = random_batch(n_res=N_RES, n_seq=4, n_extra=8, n_templates=2, seed=1)
    outputs = model(batch, num_recycles=1)

    assert outputs["final_atom_positions"].shape == (N_RES, 37, 3)
    assert outputs["sm"]["frames"].shape == (2, N_RES, 4, 4)  # one per structure layer
    assert outputs["sm"]["positions"].shape == (2, N_RES, 14, 3)
    assert outputs["distogram_logits"].shape == (N_RES, N_RES, 64)
    assert outputs["masked_msa_logits"].shape == (4, N_RES, 23)  # template rows dropped
    assert outputs["plddt"].shape == (N_RES,)

    loss, components = AlphaFoldLoss().compute(outputs, batch)
    assert torch.isfinite(loss)
    assert set(components) >= {"backbone_fape", "sidechain_fape", "supervised_chi",
                               "distogram", "masked_msa", "plddt", "loss"}
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_batch_dimension_matches_unbatched_run():
    torch.manual_seed(0)
    model = AlphaFold(AlphaFoldConfig.tiny()).eval()
    batch = random_batch(n_res=10, seed=2)
    batched = {key: value.unsqueeze(0).expand(2, *value.shape) for key, value in batch.items()}
    with torch.no_grad():
        single = model(batch)["final_atom_positions"]
        double = model(batched)["final_atom_positions"]
    torch.testing.assert_close(double[0], single, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(double[1], single, atol=1e-4, rtol=1e-4)


def _randomise(model: torch.nn.Module) -> None:
    """Replace the zero 'final' initialisations so every branch contributes."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))


def test_memory_options_do_not_change_results():
    model = AlphaFold(AlphaFoldConfig.tiny()).eval()
    _randomise(model)
    batch = random_batch(n_res=12, seed=4)
    with torch.no_grad():
        model.set_memory_options(chunk_size=None, use_sdpa=False, checkpoint_blocks=False)
        reference = model(batch, num_recycles=1)
        model.set_memory_options(chunk_size=5, use_sdpa=True, checkpoint_blocks=True)
        variant = model(batch, num_recycles=1)
    for key in ("final_atom_positions", "distogram_logits", "masked_msa_logits"):
        torch.testing.assert_close(variant[key], reference[key], atol=1e-4, rtol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients():
    model = AlphaFold(AlphaFoldConfig.tiny()).eval()  # eval: no dropout randomness
    _randomise(model)
    batch = random_batch(n_res=8, seed=5)
    loss_fn = AlphaFoldLoss()

    def gradients(checkpoint_blocks: bool) -> list[torch.Tensor]:
        model.zero_grad()
        model.set_memory_options(None, True, checkpoint_blocks)
        loss_fn(model(batch), batch).backward()
        return [p.grad.clone() for p in model.parameters()]

    for plain, checkpointed in zip(gradients(False), gradients(True), strict=True):
        torch.testing.assert_close(checkpointed, plain, atol=1e-5, rtol=1e-4)


def test_recycling_feeds_back_into_the_next_iteration():
    model = AlphaFold(AlphaFoldConfig.tiny()).eval()
    _randomise(model)
    batch = random_batch(n_res=8, seed=6)
    with torch.no_grad():
        once = model(batch, num_recycles=0)["final_atom_positions"]
        twice = model(batch, num_recycles=1)["final_atom_positions"]
        as_list = model([batch, batch])["final_atom_positions"]
    assert not torch.allclose(once, twice)
    torch.testing.assert_close(as_list, twice)


def test_model_runs_without_templates_and_extra_msa():
    config = AlphaFoldConfig.tiny()
    config.template.enabled = False
    config.extra_msa.enabled = False
    model = AlphaFold(config)
    batch = random_batch(n_res=8, n_templates=0, seed=7)
    loss = AlphaFoldLoss()(model(batch), batch)
    loss.backward()
    assert torch.isfinite(loss)


# Parameter names of PyPI openfold 0.0.1 (model_config("initial_training"), tm head enabled)
# and ours: one per renaming rule that is not the identity.
OPENFOLD_NAMES = {
    "template_angle_embedder.linear_2.bias": "template_embedder.angle_embedder.2.bias",
    "template_pair_embedder.linear.weight": "template_embedder.pair_embedder.weight",
    "template_pair_stack.blocks.1.tri_mul_in.linear_z.weight":
        "template_embedder.pair_stack.blocks.1.tri_mul_in.linear_z.weight",
    "template_pointwise_att.mha.linear_o.bias":
        "template_embedder.pointwise_attention.mha.linear_o.bias",
    "extra_msa_embedder.linear.weight": "extra_msa_embedder.weight",
    "extra_msa_stack.blocks.3.core.tri_att_end.mha.linear_g.bias":
        "extra_msa_stack.blocks.3.pair_stack.tri_att_end.mha.linear_g.bias",
    "evoformer.blocks.0.core.outer_product_mean.linear_out.weight":
        "evoformer.blocks.0.outer_product_mean.linear_out.weight",
    "evoformer.blocks.47.msa_att_col._msa_att.mha.linear_q.weight":
        "evoformer.blocks.47.msa_att_col.mha.linear_q.weight",
    "structure_module.transition.layers.0.linear_3.weight":
        "structure_module.transition.layers.0.2.weight",
    "structure_module.angle_resnet.layers.1.linear_1.bias":
        "structure_module.angle_resnet.blocks.1.0.bias",
    "aux_heads.masked_msa.linear.weight": "aux_heads.masked_msa.weight",
    "aux_heads.tm.linear.bias": "aux_heads.tm.bias",
}


def test_openfold_weight_mapping_covers_every_parameter_exactly_once():
    config = AlphaFoldConfig.initial_training()
    config.heads.tm_enabled = True
    with torch.device("meta"):
        model = AlphaFold(config)
    ours = model.state_dict()
    openfold_state = {ours_to_openfold_name(name): tensor for name, tensor in ours.items()}
    assert None not in openfold_state and len(openfold_state) == len(ours)
    converted = convert_openfold_state_dict(openfold_state, model)  # raises on any gap
    assert all(converted[name] is tensor for name, tensor in ours.items())
    for openfold_name, name in OPENFOLD_NAMES.items():
        assert openfold_to_ours_name(openfold_name) == name
        assert openfold_state[openfold_name] is ours[name]


def test_openfold_weight_conversion_lists_every_problem():
    with torch.device("meta"):
        model = AlphaFold(AlphaFoldConfig.tiny())
    state = {ours_to_openfold_name(name): t for name, t in model.state_dict().items()}
    del state["evoformer.linear.bias"]
    state["aux_heads.tm.linear.weight"] = torch.empty(64, 16)  # tm head not in this config
    state["template_pair_embedder.linear.weight"] = torch.empty(3, 3)
    state["evoformer.blocks.0.unknown.weight"] = torch.empty(1)
    with pytest.raises(WeightConversionError) as error:
        convert_openfold_state_dict(state, model)
    for expected in ("evoformer.blocks.0.unknown.weight", "evoformer.linear.bias",
                     "aux_heads.tm.weight", "template_embedder.pair_embedder.weight: (8, 88)"):
        assert expected in str(error.value)


def test_openfold_weights_file_initialises_the_training_model(tmp_path):
    torch.manual_seed(0)
    source = AlphaFold(AlphaFoldConfig.tiny())
    checkpoint = {"ema": {"params": {ours_to_openfold_name(name): tensor for name, tensor
                                     in source.state_dict().items()}}}
    torch.save(checkpoint, tmp_path / "openfold.pt")
    config = AlphaFoldTrainingConfig(**vars(AlphaFoldConfig.tiny()))
    model = AlphaFoldForTraining(config)
    load_initial_weights(model, str(tmp_path / "openfold.pt"))
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], tensor), name
    with pytest.raises(InputError, match="missing.pt: initial checkpoint not found"):
        read_openfold_state_dict(tmp_path / "missing.pt")
    torch.save({"evoformer.linear.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match=r"wrong.pt \(model.init_checkpoint\): does not fit"):
        load_initial_weights(model, str(tmp_path / "wrong.pt"))
