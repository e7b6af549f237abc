"""DeepCAM's LAMB on a GPU against apex FusedLAMB (when apex is installed) and the formula.

The CPU tests check the multi-tensor LAMB against FusedLAMB's formula; the CUDA foreach
kernels are another code path. This runs the DeepCAM recipe (one group over every parameter
of the real DeepLabV3+, weight decay 0.01, global clipping at 1.0) for a few steps on the GPU
with the same random gradients through (a) this project's LAMB after the loop's clipping,
(b) apex FusedLAMB, if importable, and (c) the per-tensor formula in float64, and prints the
largest relative difference of the weights.
Usage: python bench/gpu_lamb_parity.py [STEPS] [DEVICE]  (DEVICE cpu: a dry run of the script)
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from benchmarks.core.config import OptConfig
from benchmarks.core.optim import build_optimizer
from benchmarks.deepcam.model import DeepLabV3Plus, ModelConfig


def formula_step(weights, grads, states, lr, betas=(0.9, 0.999), eps=1e-6, decay=0.01,
                 max_norm=1.0):
    """apex FusedLAMB (multi_tensor_lamb.cu) for every tensor, in float64."""
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    scale = norm / max_norm if norm > max_norm else 1.0
    beta1, beta2 = betas
    for index, (weight, grad) in enumerate(zip(weights, grads, strict=True)):
        state = states[index]
        state["step"] = state.get("step", 0) + 1
        grad = grad / scale
        state["m"] = beta1 * state.get("m", torch.zeros_like(weight)) + (1 - beta1) * grad
        state["v"] = beta2 * state.get("v", torch.zeros_like(weight)) + (1 - beta2) * grad ** 2
        m_hat = state["m"] / (1 - beta1 ** state["step"])
        v_hat = state["v"] / (1 - beta2 ** state["step"])
        update = m_hat / (v_hat.sqrt() + eps) + decay * weight
        w_norm, u_norm = weight.norm(), update.norm()
        trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        weights[index] = weight - lr * trust * update


def main(steps: int, device: torch.device) -> None:
    torch.manual_seed(0)
    model = DeepLabV3Plus(ModelConfig()).to(device)
    cfg = OptConfig(name="lamb", lr=0.0055, eps=1e-6, weight_decay=0.01,
                    exclude_bias_and_norm=False, clip_grad_norm=1.0)
    params = list(model.parameters())
    reference = [p.detach().double().cpu() for p in params]
    apex_params = [nn.Parameter(p.detach().clone()) for p in params]
    optimizer = build_optimizer(model, cfg, cfg.lr)
    try:
        from apex.optimizers import FusedLAMB
        fused = FusedLAMB(apex_params, lr=cfg.lr, eps=cfg.eps, weight_decay=0.01)
    except ImportError:
        fused = None
        print("apex not installed: comparing with the formula only")
    states = [{} for _ in params]
    for step in range(steps):
        grads = [torch.randn_like(p) * (5.0 if step % 2 else 0.01) for p in params]
        for param, apex_param, grad in zip(params, apex_params, grads, strict=True):
            param.grad, apex_param.grad = grad.clone(), grad.clone()
        nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
        optimizer.step()
        if fused is not None:
            fused.step()
        formula_step(reference, [g.double().cpu() for g in grads], states, cfg.lr)
    if device.type == "cuda":
        torch.cuda.synchronize()

    def worst(values) -> float:
        return max(float((p.detach().double().cpu() - r).norm() / r.norm().clamp(min=1e-30))
                   for p, r in zip(values, reference, strict=True))

    print(f"{len(params)} tensors, {steps} steps: max relative weight difference to the "
          f"formula {worst(params):.2e}")
    if fused is not None:
        print(f"apex FusedLAMB to the formula {worst(apex_params):.2e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6,
         torch.device(sys.argv[2] if len(sys.argv) > 2 else "cuda"))
