"""Optimizers and learning-rate schedules from the ``opt`` and ``lr_schedule`` config sections.

SGD, Adam and AdamW are torch's; LARS and LAMB (which torch lacks) are written here after
their papers (You et al. 2017, 2019) and the MLPerf references (LAMB as apex FusedLAMB). With
``opt.exclude_bias_and_norm`` biases and normalisation weights get no weight decay and, for
LARS/LAMB, no layer-wise adaptation, as the references do.

Every schedule is a factor of the (batch-scaled) base LR as a function of the optimizer step,
applied through ``torch.optim.lr_scheduler.LambdaLR`` and stepped once per optimizer step:
linear warmup from ``warmup_start_factor``, then ``constant``, ``poly`` (to ``end_lr`` with
``power``), ``cosine`` (to ``end_lr``), ``multistep`` (``decay_factors`` or ``gamma``) or
``step`` (``gamma`` every ``step_size``). Lengths are in epochs or steps (``unit``);
:func:`schedule_steps` turns them into steps once, for the scheduler and for the logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from benchmarks.core.config import LRScheduleConfig, OptConfig
from benchmarks.core.errors import ConfigError

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
              nn.modules.normalization.RMSNorm)


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Two groups: decayed weights, and biases + norm weights (no decay, no adaptation)."""
    if not exclude_bias_and_norm:
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": weight_decay}]
    no_decay_ids = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if is_norm or name == "bias" or name.endswith("_bias"):
                no_decay_ids.add(id(param))
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if id(param) in no_decay_ids else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "exclude_from_adaptation": True}]


def build_optimizer(model: nn.Module, cfg: OptConfig, lr: float) -> Optimizer:
    """The optimizer named in ``cfg`` over ``model``'s parameters, starting at ``lr``."""
    groups = param_groups(model, cfg.weight_decay, cfg.exclude_bias_and_norm)
    betas = (cfg.betas[0], cfg.betas[1])
    if cfg.name == "sgd":
        for group in groups:
            group.pop("exclude_from_adaptation", None)
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return _torch_adam(torch.optim.Adam, groups, lr, betas, cfg.eps)
    if cfg.name == "adamw":
        return _torch_adam(torch.optim.AdamW, groups, lr, betas, cfg.eps)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eps=cfg.eps,
                    trust_coefficient=cfg.trust_coefficient)
    if cfg.name == "lamb":
        return LAMB(groups, lr=lr, betas=betas, eps=cfg.eps)
    raise ConfigError(f"config key 'opt.name': unknown optimizer {cfg.name!r}")


def _torch_adam(cls: type[Optimizer], groups: list[dict], lr: float, betas: tuple[float, float],
                eps: float) -> Optimizer:
    for group in groups:
        group.pop("exclude_from_adaptation", None)
    return cls(groups, lr=lr, betas=betas, eps=eps)


class LARS(Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (MLPerf ResNet flavour).

    The local LR of a tensor is ``trust_coefficient * |w| / (|g| + wd * |w| + eps)``; weight
    decay is added to the gradient before momentum. Groups flagged
    ``exclude_from_adaptation`` use plain SGD with momentum.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, eps: float = 0.0,
                 trust_coefficient: float = 0.001, weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "momentum": momentum, "eps": eps,
                    "trust_coefficient": trust_coefficient, "weight_decay": weight_decay,
                    "exclude_from_adaptation": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        """One update of every tensor with a gradient, a few multi-tensor kernels per group."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            grads = [param.grad for param in params]
            weight_decay = group["weight_decay"]
            if weight_decay:
                grads = torch._foreach_add(grads, params, alpha=weight_decay)
            if not group["exclude_from_adaptation"]:
                w_norms = torch.stack(torch._foreach_norm(params))
                g_norms = torch.stack(torch._foreach_norm([param.grad for param in params]))
                trust = group["trust_coefficient"] * w_norms / (
                    g_norms + weight_decay * w_norms + group["eps"])
                ratio = torch.where((w_norms > 0) & (g_norms > 0), trust, torch.ones_like(trust))
                grads = torch._foreach_mul(grads, list(ratio.unbind()))
            # A new buffer starts at zero, so its first value is the gradient itself.
            buffers = [self.state[param].setdefault("momentum_buffer", torch.zeros_like(param))
                       for param in params]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss


class LAMB(Optimizer):
    """Adam moments with a layer-wise trust ratio ``|w| / |update|`` (You et al. 2019).

    The update is apex ``FusedLAMB``'s (the MLPerf DeepCAM and NVIDIA BERT optimizer):
    ``m = beta1 m + (1 - beta1) g`` (``grad_averaging``; else ``beta1 m + g``), bias-corrected
    moments (``bias_correction``), ``update = m_hat / (sqrt(v_hat) + eps) + wd w`` (decoupled
    weight decay), then ``w -= lr * trust * update``. The trust ratio is 1 for groups flagged
    ``exclude_from_adaptation`` and, as in FusedLAMB, for groups without weight decay.
    FusedLAMB's global gradient-norm clipping is ``opt.clip_grad_norm``, applied by the loop
    after the gradient all-reduce.
    """

    def __init__(self, params: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, bias_correction: bool = True,
                 grad_averaging: bool = True) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "bias_correction": bias_correction, "grad_averaging": grad_averaging,
                    "exclude_from_adaptation": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        """One update of every tensor with a gradient, a few multi-tensor kernels per group
        (a per-tensor loop costs about ten kernels per tensor: launch-bound on GPUs)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            for param in params:
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
            # Tensors that joined late have fewer steps (other bias corrections): one update
            # per step count, in practice one for the whole group.
            by_step: dict[int, list[torch.Tensor]] = {}
            for param in params:
                by_step.setdefault(self.state[param]["step"], []).append(param)
            for step, same_step in by_step.items():
                self._update(same_step, group, step)
        return loss

    def _update(self, params: list[torch.Tensor], group: dict, step: int) -> None:
        beta1, beta2 = group["betas"]
        grads = [param.grad for param in params]
        exp_avgs = [self.state[param]["exp_avg"] for param in params]
        exp_avg_sqs = [self.state[param]["exp_avg_sq"] for param in params]
        if group["grad_averaging"]:
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        else:
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        # update = m_hat / (sqrt(v_hat) + eps), m_hat and v_hat bias-corrected
        correct = group["bias_correction"]
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        if correct:
            torch._foreach_div_(denominators, math.sqrt(1 - beta2 ** step))
        torch._foreach_add_(denominators, group["eps"])
        updates = torch._foreach_div(exp_avgs, denominators)
        if correct:
            torch._foreach_div_(updates, 1 - beta1 ** step)
        if group["weight_decay"]:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        if group["weight_decay"] and not group["exclude_from_adaptation"]:
            w_norms = torch.stack(torch._foreach_norm(params))
            u_norms = torch.stack(torch._foreach_norm(updates))
            trust = torch.where((w_norms > 0) & (u_norms > 0), w_norms / u_norms,
                                torch.ones_like(w_norms))
            torch._foreach_mul_(updates, list(trust.unbind()))
        torch._foreach_add_(params, updates, alpha=-group["lr"])


def scaled_base_lr(lr: float, cfg: LRScheduleConfig, global_batch_size: int) -> float:
    """``lr`` scaled by global batch / ``base_batch_size`` (linear or sqrt), or unchanged."""
    if cfg.scaling == "none":
        return lr
    ratio = global_batch_size / cfg.base_batch_size
    return lr * (ratio if cfg.scaling == "linear" else math.sqrt(ratio))


@dataclass(frozen=True)
class ScheduleSteps:
    """A schedule's lengths in optimizer steps: the one place where epochs become steps.

    The benchmarks log their MLPerf schedule keys (decay steps, warmup steps, training
    steps) from these values, so the log says what the scheduler does.
    """

    warmup: float
    warmup_offset: float  # the step at which the warmup starts
    decay_start: float  # the step at which a poly or cosine decay starts
    decay: float  # steps from decay_start to the end of the decay
    milestones: tuple[float, ...]
    step_size: float
    total: int


def schedule_steps(cfg: LRScheduleConfig, steps_per_epoch: int, total_steps: int) -> ScheduleSteps:
    """The lengths of ``cfg`` in optimizer steps, for ``steps_per_epoch`` and ``total_steps``."""

    def to_steps(length: float, unit: str) -> float:
        return length * steps_per_epoch if unit == "epochs" else length

    warmup = to_steps(cfg.warmup, cfg.unit)
    decay_start = warmup if cfg.decay_from == "warmup" else 0.0
    decay = (to_steps(cfg.decay_length, cfg.decay_unit or cfg.unit) if cfg.decay_length
             else total_steps - decay_start)
    return ScheduleSteps(
        warmup=warmup, warmup_offset=cfg.warmup_offset, decay_start=decay_start,
        decay=max(decay, 1.0), milestones=tuple(to_steps(m, cfg.unit) for m in cfg.milestones),
        step_size=max(to_steps(cfg.step_size, cfg.unit), 1.0), total=total_steps)


def lr_factor_fn(cfg: LRScheduleConfig, base_lr: float, steps_per_epoch: int,
                 total_steps: int) -> Callable[[int], float]:
    """The LR factor (multiplier of ``base_lr``) after ``step`` optimizer steps.

    Warmup: linear from ``warmup_start_factor`` while ``step - warmup_offset < warmup``. After
    it, ``poly`` and ``cosine`` follow their progress from ``decay_start`` over ``decay``
    steps (then hold ``end_lr``); ``multistep`` and ``step`` count from step 0.
    """
    steps = schedule_steps(cfg, steps_per_epoch, total_steps)
    end_factor = cfg.end_lr / base_lr if base_lr > 0 else 0.0

    def after_warmup(step: int) -> float:
        progress = min(max(step - steps.decay_start, 0.0) / steps.decay, 1.0)
        if cfg.name == "poly":
            return (1.0 - end_factor) * (1.0 - progress) ** cfg.power + end_factor
        if cfg.name == "cosine":
            return end_factor + (1.0 - end_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.name == "multistep":
            passed = sum(step >= m for m in steps.milestones)
            if passed == 0:
                return 1.0
            return cfg.decay_factors[passed - 1] if cfg.decay_factors else cfg.gamma ** passed
        if cfg.name == "step":
            return cfg.gamma ** math.floor(step / steps.step_size)
        return 1.0

    def factor(step: int) -> float:
        into_warmup = step - steps.warmup_offset
        if into_warmup < steps.warmup:
            start = cfg.warmup_start_factor
            return start + (1.0 - start) * max(into_warmup, 0.0) / steps.warmup
        return after_warmup(step)

    return factor


def build_scheduler(optimizer: Optimizer, cfg: LRScheduleConfig, base_lr: float,
                    steps_per_epoch: int, total_steps: int) -> LambdaLR:
    """A per-step LambdaLR for ``cfg``; ``optimizer`` must have been built with ``base_lr``."""
    return LambdaLR(optimizer, lr_factor_fn(cfg, base_lr, steps_per_epoch, total_steps))
