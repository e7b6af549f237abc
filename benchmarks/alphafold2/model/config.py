"""Configuration of the AlphaFold2 model as nested dataclasses.

``AlphaFoldConfig()`` is the "initial training" model of AF2 suppl. Table 4 with OpenFold's
channel choices (93,229,082 parameters, the count the MLPerf HPC OpenFold benchmark checks).
The ``model`` section of a benchmark YAML is validated into it by ``benchmarks.core.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.core.config import Fraction, PositiveFloat, PositiveInt


@dataclass
class InputEmbedderConfig:
    tf_dim: PositiveInt = 22  # target_feat: domain-break flag + aatype one-hot (21)
    # msa_feat: one-hot (23), has/value deletion, cluster profile (23), mean
    msa_dim: PositiveInt = 49
    relpos_k: PositiveInt = 32


@dataclass
class RecyclingConfig:
    min_bin: PositiveFloat = 3.25
    max_bin: PositiveFloat = 20.75
    no_bins: PositiveInt = 15
    inf: PositiveFloat = 1e8


@dataclass
class PairStackConfig:
    """The template pair stack's triangle updates and pair transition."""

    c_hidden_tri_att: PositiveInt = 16
    c_hidden_tri_mul: PositiveInt = 64
    no_heads: PositiveInt = 4
    transition_n: PositiveInt = 2
    dropout: Fraction = 0.25
    # Triangle-attention mask bias, as OpenFold (the template features: 1e5).
    inf: PositiveFloat = 1e9


@dataclass
class TemplateConfig:
    enabled: bool = True
    embed_angles: bool = True
    angle_dim: PositiveInt = 57
    pair_dim: PositiveInt = 88
    distogram_min_bin: PositiveFloat = 3.25
    distogram_max_bin: PositiveFloat = 50.75
    distogram_no_bins: PositiveInt = 39
    use_unit_vector: bool = False
    no_blocks: PositiveInt = 2
    pair_stack: PairStackConfig = field(default_factory=PairStackConfig)
    pointwise_c_hidden: PositiveInt = 16
    pointwise_no_heads: PositiveInt = 4
    inf: PositiveFloat = 1e5
    eps: PositiveFloat = 1e-6


@dataclass
class MSAStackConfig:
    """An Evoformer-style stack (the trunk, or the extra-MSA stack with global attention)."""

    no_blocks: PositiveInt = 48
    c_hidden_msa_att: PositiveInt = 32
    c_hidden_opm: PositiveInt = 32
    c_hidden_mul: PositiveInt = 128
    c_hidden_pair_att: PositiveInt = 32
    no_heads_msa: PositiveInt = 8
    no_heads_pair: PositiveInt = 4
    transition_n: PositiveInt = 4
    msa_dropout: Fraction = 0.15
    pair_dropout: Fraction = 0.25
    inf: PositiveFloat = 1e9
    eps: PositiveFloat = 1e-8


def _extra_msa_stack() -> MSAStackConfig:
    return MSAStackConfig(no_blocks=4, c_hidden_msa_att=8)


@dataclass
class ExtraMSAConfig:
    enabled: bool = True
    feat_dim: PositiveInt = 25  # one-hot (23), has deletion, deletion value
    stack: MSAStackConfig = field(default_factory=_extra_msa_stack)


@dataclass
class StructureModuleConfig:
    c_ipa: PositiveInt = 16
    c_resnet: PositiveInt = 128
    no_heads_ipa: PositiveInt = 12
    no_qk_points: PositiveInt = 4
    no_v_points: PositiveInt = 8
    dropout: Fraction = 0.1
    no_blocks: PositiveInt = 8
    no_transition_layers: PositiveInt = 1
    no_resnet_blocks: PositiveInt = 2
    no_angles: PositiveInt = 7
    trans_scale_factor: PositiveFloat = 10.0
    epsilon: PositiveFloat = 1e-8
    inf: PositiveFloat = 1e5


@dataclass
class HeadsConfig:
    plddt_bins: PositiveInt = 50
    plddt_c_hidden: PositiveInt = 128
    distogram_bins: PositiveInt = 64
    masked_msa_classes: PositiveInt = 23
    experimentally_resolved_atoms: PositiveInt = 37
    tm_enabled: bool = False
    tm_bins: PositiveInt = 64


@dataclass
class AlphaFoldConfig:
    c_m: PositiveInt = 256
    c_z: PositiveInt = 128
    c_t: PositiveInt = 64
    c_e: PositiveInt = 64
    c_s: PositiveInt = 384
    input_embedder: InputEmbedderConfig = field(default_factory=InputEmbedderConfig)
    recycling: RecyclingConfig = field(default_factory=RecyclingConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    extra_msa: ExtraMSAConfig = field(default_factory=ExtraMSAConfig)
    evoformer: MSAStackConfig = field(default_factory=MSAStackConfig)
    structure_module: StructureModuleConfig = field(default_factory=StructureModuleConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    # Memory/speed options; they do not change the maths.
    chunk_size: PositiveInt | None = None  # attention queries per chunk; None = all at once
    checkpoint_blocks: bool = False  # activation checkpointing per Evoformer/extra/template block
    use_sdpa: bool = True  # torch scaled_dot_product_attention instead of explicit softmax

    @classmethod
    def initial_training(cls) -> AlphaFoldConfig:
        """AF2 "initial training" (suppl. Table 4): 93,229,082 parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> AlphaFoldConfig:
        """Every module present, few blocks and narrow channels: unit tests and CPU smoke runs."""
        small_stack = {"c_hidden_msa_att": 4, "c_hidden_opm": 4, "c_hidden_mul": 8,
                       "c_hidden_pair_att": 4, "no_heads_msa": 2, "no_heads_pair": 2,
                       "transition_n": 2}
        return cls(
            c_m=16, c_z=16, c_t=8, c_e=8, c_s=16,
            template=TemplateConfig(
                no_blocks=1, pointwise_c_hidden=4, pointwise_no_heads=2,
                pair_stack=PairStackConfig(c_hidden_tri_att=4, c_hidden_tri_mul=8, no_heads=2)),
            extra_msa=ExtraMSAConfig(stack=MSAStackConfig(no_blocks=1, **small_stack)),
            evoformer=MSAStackConfig(no_blocks=2, **small_stack),
            structure_module=StructureModuleConfig(
                c_ipa=4, c_resnet=8, no_heads_ipa=2, no_qk_points=2, no_v_points=2, no_blocks=2),
            heads=HeadsConfig(plddt_c_hidden=8),
        )
