"""Does our AlphaFold2 compute the same function as OpenFold?

Builds OpenFold's ``AlphaFold`` (PyPI ``openfold`` 0.0.1, ``model_config("initial_training")``)
with seeded random weights (every parameter, so OpenFold's zero-initialised final layers and
gates take part), copies them into our model (the ``model`` section of
``benchmarks/alphafold2/config.yaml``) with :mod:`benchmarks.alphafold2.openfold_weights`,
runs both in float64 and eval mode on the same random protein (templates, extra MSA,
recycling, some masked MSA entries, a residue-index gap) and prints the largest absolute
difference of each output. Forward hooks on every pair of corresponding modules then name the
first modules whose outputs differ, in execution order, to locate a deviation.

Needs ``openfold`` importable (exit status 2 otherwise); ``docs/alphafold2.md`` says how to
install it and records the result. On CPU OpenFold needs ``globals.use_lma`` (its
CUDA attention kernel is a stub there) and its in-place IPA softmax, used under no_grad in
the recycling iterations, is replaced here by ``torch.softmax``. OpenFold computes frames in
float32 even in a float64 model; they are kept in float64 here unless
``--openfold-float32-frames`` is given.

    python bench/openfold_equivalence.py
    python bench/openfold_equivalence.py --n-res 24 --recycles 3 --n-templates 3
    python bench/openfold_equivalence.py --recycles 0 --openfold-float32-frames --tolerance 1e-6

Exit status: 0 when every output agrees within ``--tolerance``, 1 when one does not.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import types
import warnings
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.alphafold2.model import AlphaFold
from benchmarks.alphafold2.openfold_weights import load_openfold_weights, openfold_to_ours_name
from benchmarks.alphafold2.synthetic_proteins import random_batch
from benchmarks.alphafold2.train import SPEC
from benchmarks.core.config import load_config

MODEL_INPUTS = (
    "aatype", "residue_index", "seq_mask", "target_feat", "msa_feat", "msa_mask", "extra_msa",
    "extra_has_deletion", "extra_deletion_value", "extra_msa_mask", "template_aatype",
    "template_all_atom_positions", "template_all_atom_mask", "template_mask",
)

# OpenFold's EvoformerBlockCore transposes z around tri_att_end; ours transposes inside it.
OPENFOLD_LAYOUT: dict[re.Pattern[str], Callable[[torch.Tensor], torch.Tensor]] = {
    re.compile(r"(evoformer|extra_msa_stack)\.blocks\.\d+\.core\.tri_att_end"):
        lambda t: t.transpose(-2, -3),
}

OUTPUTS: dict[str, Callable[[dict], torch.Tensor]] = {
    "pair representation": lambda out: out["pair"],
    "single representation (trunk)": lambda out: out["single"],
    "single (structure module)": lambda out: out["sm"]["single"],
    "torsion angles": lambda out: out["sm"]["angles"],
    "final atom positions": lambda out: out["final_atom_positions"],
    "distogram logits": lambda out: out["distogram_logits"],
    "masked-MSA logits": lambda out: out["masked_msa_logits"],
    "pLDDT logits": lambda out: out["lddt_logits"],
    "experimentally resolved logits": lambda out: out["experimentally_resolved_logits"],
}


class _TorchKeepingFloat64:
    """``torch`` for OpenFold's rigid_utils, where ``torch.float32`` means float64.

    OpenFold casts every rotation and translation to float32 ("Force full-precision",
    openfold/utils/rigid_utils.py lines 318-322 and 859), which limits a float64 comparison
    to float32 accuracy wherever frames are involved (template torsion angles, IPA, the
    structure module); those three casts are the module's only uses of ``torch.float32``.
    """

    float32 = torch.float64

    def __getattr__(self, name: str):
        return getattr(torch, name)


def import_openfold(keep_float32_frames: bool) -> types.SimpleNamespace | None:
    """OpenFold's model pieces, with the CPU workarounds applied; None when not installed."""
    try:
        from openfold.config import model_config
        from openfold.data import data_transforms
        from openfold.model import structure_module
        from openfold.model.model import AlphaFold as OpenFoldAlphaFold
        from openfold.utils import rigid_utils
    except ImportError as err:
        print(f"openfold is not importable ({err}). This check needs PyPI openfold 0.0.1 "
              "installed beside torch (see docs/alphafold2.md).", file=sys.stderr)
        return None

    def softmax_(logits: torch.Tensor, rows: int, cols: int) -> None:
        logits.copy_(torch.softmax(logits, dim=-1))

    structure_module.attn_core_inplace_cuda = types.SimpleNamespace(forward_=softmax_)
    # Deprecation notices from OpenFold's 2022 code, one per call site and irrelevant here.
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidim")
    warnings.filterwarnings("ignore", message="torch.utils.checkpoint: the use_reentrant")
    if not keep_float32_frames:
        rigid_utils.torch = _TorchKeepingFloat64()
    return types.SimpleNamespace(model_config=model_config, transforms=data_transforms,
                                 AlphaFold=OpenFoldAlphaFold)


def randomise(model: nn.Module, seed: int) -> None:
    """Every parameter random (weights ~ N(0, 1/fan_in), norms ~ 1, biases small)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            if param.ndim == 2:
                param.copy_(noise / math.sqrt(param.shape[1]))
            elif name.endswith(".weight"):  # layer-norm scale
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def make_features(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Our model's inputs (float64, batch dim 1) for one random protein."""
    batch = random_batch(n_res=args.n_res, n_seq=args.n_seq, n_extra=args.n_extra,
                         n_templates=args.n_templates, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    features = {key: batch[key] for key in MODEL_INPUTS}
    features["residue_index"] = features["residue_index"] + 7 * (
        features["residue_index"] >= args.n_res // 2)  # a chain break
    for key in ("msa_mask", "extra_msa_mask"):
        drop = torch.rand(features[key].shape, generator=generator) < 0.1
        drop[0] = False
        features[key] = features[key].masked_fill(drop, 0.0)
    return {key: (value.double() if value.is_floating_point() else value).unsqueeze(0)
            for key, value in features.items()}


def openfold_features(openfold: types.SimpleNamespace, features: dict[str, torch.Tensor],
                      iterations: int) -> dict[str, torch.Tensor]:
    """OpenFold's feature dict: precomputed template/atom features, trailing recycling dim."""
    transforms = openfold.transforms
    protein = {key: value[0] for key, value in features.items()}
    protein = transforms.make_pseudo_beta("template_")(protein)
    protein = transforms.atom37_to_torsion_angles("template_")(protein)
    protein = transforms.make_atom14_masks(protein)
    return {key: torch.stack([value.unsqueeze(0)] * iterations, dim=-1)
            for key, value in protein.items()}


def build_openfold(openfold: types.SimpleNamespace, seed: int) -> nn.Module:
    """OpenFold's initial-training model, random, float64, eval mode.

    ``train=True`` turns chunking off; low-memory attention (LMA) replaces the CUDA-only
    attention kernel; activation checkpointing is turned off as it only costs time here.
    """
    config = openfold.model_config("initial_training", train=True)
    config.globals.use_lma = True
    config.globals.blocks_per_ckpt = None
    model = openfold.AlphaFold(config)
    randomise(model, seed)
    return model.double().eval()


def build_ours(openfold_model: nn.Module) -> AlphaFold:
    """Our model as the benchmark configures it, float64, with OpenFold's weights."""
    config = load_config(SPEC.folder / "config.yaml", SPEC.schema).model
    model = AlphaFold(config).double().eval()
    load_openfold_weights(model, openfold_model.state_dict())
    return model


class Recorder:
    """Forward hooks keeping a copy of the tensors every module returns in the last iteration.

    Only the last iteration is kept because OpenFold runs the earlier (no-grad) ones through
    its in-place inference code, whose modules return different things (e.g. the triangle
    multiplications return z + update); a deviation in those shows up in the last iteration's
    recycling embedder (rerun with ``--recycles 0`` to locate it).
    """

    def __init__(self, model: nn.Module, iterations: int):
        self.calls: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.order: list[str] = []  # by first completed call: children before parents
        self.iteration = 0
        self.iterations = iterations
        self.handles = [model.input_embedder.register_forward_pre_hook(self._next_iteration)]
        self.handles += [module.register_forward_hook(self._hook(name))
                         for name, module in model.named_modules() if name]

    def _next_iteration(self, module, inputs) -> None:
        self.iteration += 1

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self.iteration != self.iterations:
                return
            items = output if isinstance(output, (tuple, list)) else (output,)
            if name not in self.calls:
                self.order.append(name)
            self.calls[name].extend(item.detach().clone() for item in items
                                    if isinstance(item, torch.Tensor))
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def module_pairs(openfold_names: list[str], our_names: set[str]) -> list[tuple[str, str]]:
    """(OpenFold module, our module) pairs: same name, else renamed by the weight rules."""
    pairs = [(name, name) for name in openfold_names if name in our_names]
    claimed = {ours for _, ours in pairs}
    for name in openfold_names:
        renamed = openfold_to_ours_name(name + ".")
        ours = renamed[:-1] if renamed else None
        if name not in our_names and ours in our_names and ours not in claimed:
            pairs.append((name, ours))
            claimed.add(ours)
    order = {name: index for index, name in enumerate(openfold_names)}
    return sorted(pairs, key=lambda pair: order[pair[0]])


def difference(openfold_name: str, theirs: list[torch.Tensor],
               ours: list[torch.Tensor]) -> float | None:
    """Max abs difference of two modules' recorded outputs; None when not comparable.

    OpenFold runs the template stack on all templates at once, ours one template at a time:
    our calls are then stacked in groups to match. Outputs of a module that returns no
    tensors (a dict, frames) or differently structured tuples are not comparable.
    """
    for pattern, layout in OPENFOLD_LAYOUT.items():
        if pattern.fullmatch(openfold_name):
            theirs = [layout(t) for t in theirs]
    if not theirs or not ours or len(ours) % len(theirs):
        return None
    group = len(ours) // len(theirs)
    if group > 1:
        if len({t.shape for t in ours}) > 1:
            return None
        ours = [torch.stack(ours[i:i + group]) for i in range(0, len(ours), group)]
    worst = 0.0
    for a, b in zip(theirs, ours, strict=True):
        a, b = a.squeeze(), b.squeeze()
        if a.shape != b.shape and a.numel() == b.numel() and a.shape[-1:] == b.shape[-1:]:
            a = a.reshape(b.shape)  # OpenFold's chunk_layer flattens the batch dims
        if a.shape != b.shape:
            return None
        worst = max(worst, (a - b).abs().max().item() if a.numel() else 0.0)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-res", type=int, default=16)
    parser.add_argument("--n-seq", type=int, default=4)
    parser.add_argument("--n-extra", type=int, default=8)
    parser.add_argument("--n-templates", type=int, default=2)
    parser.add_argument("--recycles", type=int, default=1, help="extra recycling iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-9)
    parser.add_argument("--show", type=int, default=15, help="deviating modules to list")
    parser.add_argument("--openfold-float32-frames", action="store_true",
                        help="leave OpenFold's casts of frames to float32 in place")
    args = parser.parse_args(argv)

    openfold = import_openfold(args.openfold_float32_frames)
    if openfold is None:
        return 2
    start = time.perf_counter()
    openfold_model = build_openfold(openfold, args.seed)
    our_model = build_ours(openfold_model)
    features = make_features(args)
    iterations = args.recycles + 1
    print(f"models built in {time.perf_counter() - start:.0f} s; {args.n_res} residues, "
          f"{args.n_seq} MSA rows, {args.n_extra} extra rows, {args.n_templates} templates, "
          f"{iterations} iterations, float64")

    their_recorder = Recorder(openfold_model, iterations)
    our_recorder = Recorder(our_model, iterations)
    with torch.enable_grad():  # OpenFold's no-grad path needs its CUDA kernels
        theirs = openfold_model(openfold_features(openfold, features, iterations))
    with torch.no_grad():
        ours = our_model(features, num_recycles=args.recycles)
    their_recorder.close()
    our_recorder.close()

    print(f"\n{'output':32s} {'shape':>18s} {'max |ours - OpenFold|':>22s} {'max |OpenFold|':>15s}")
    failed = False
    for label, pick in OUTPUTS.items():
        a, b = pick(theirs).detach(), pick(ours)
        if a.shape != b.shape:
            print(f"{label:32s} shapes differ: OpenFold {tuple(a.shape)}, ours {tuple(b.shape)}")
            failed = True
            continue
        diff = (a - b).abs().max().item()
        failed |= not diff <= args.tolerance
        print(f"{label:32s} {str(tuple(b.shape)):>18s} {diff:22.3e} {a.abs().max().item():15.3e}")

    pairs = module_pairs(their_recorder.order, set(our_recorder.calls))
    compared, deviating = 0, []
    for their_name, our_name in pairs:
        diff = difference(their_name, their_recorder.calls[their_name],
                          our_recorder.calls[our_name])
        if diff is None:
            continue
        compared += 1
        if not diff <= args.tolerance:
            deviating.append((their_name, our_name, diff))
    print(f"\n{compared} corresponding modules compared through forward hooks (last iteration); "
          f"{len(deviating)} differ by more than {args.tolerance:g}.")
    if deviating:
        print("First deviating modules in OpenFold's execution order (children before parents):")
        for their_name, our_name, diff in deviating[:args.show]:
            print(f"  {diff:10.3e}  ours {our_name}  <->  OpenFold {their_name}")
    print("\nRESULT:", "outputs DIFFER" if failed else
          f"all outputs agree within {args.tolerance:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
