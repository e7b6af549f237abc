"""Optimizers and LR schedules against their closed formulas and the MLPerf references' code
(apex FusedLAMB, the BERT, ResNet TF2 and DeepCAM schedules)."""

import math

import pytest
import torch
from torch import nn

from benchmarks.core.config import LRScheduleConfig, OptConfig
from benchmarks.core.optim import (
    LAMB,
    LARS,
    build_optimizer,
    build_scheduler,
    lr_factor_fn,
    param_groups,
    scaled_base_lr,
    schedule_steps,
)
from benchmarks.core.rcp import deepcam_milestone_steps, deepcam_reference_milestones

STEPS_PER_EPOCH = 10
TOTAL = 100


def factors(cfg: LRScheduleConfig, base_lr: float = 1.0, steps: int = TOTAL) -> list[float]:
    factor = lr_factor_fn(cfg, base_lr, STEPS_PER_EPOCH, steps)
    return [factor(step) for step in range(steps + 1)]


def test_linear_warmup_then_constant():
    values = factors(LRScheduleConfig(name="constant", warmup=2, warmup_start_factor=0.1))
    assert values[0] == pytest.approx(0.1)
    assert values[10] == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert values[20:] == [1.0] * 81


def test_poly_decay_matches_formula():
    cfg = LRScheduleConfig(name="poly", warmup=1, power=2, end_lr=1e-4)
    base = 2.0
    values = factors(cfg, base)
    for step in (10, 35, 70, 100):
        progress = (step - 10) / 90
        expected = ((base - 1e-4) * (1 - progress) ** 2 + 1e-4) / base
        assert values[step] == pytest.approx(expected)
    assert values[100] * base == pytest.approx(1e-4)


def test_cosine_matches_formula():
    values = factors(LRScheduleConfig(name="cosine", unit="steps", warmup=0, end_lr=0.0))
    for step in (0, 25, 50, 100):
        assert values[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * step / 100)))


def test_multistep_with_absolute_factors_in_epochs():
    cfg = LRScheduleConfig(name="multistep", milestones=[3, 6], decay_factors=[0.25, 0.125])
    values = factors(cfg)
    assert values[29] == 1.0 and values[30] == 0.25 and values[59] == 0.25
    assert values[60] == 0.125


def test_multistep_gamma_and_step_schedule_in_steps():
    gamma = factors(LRScheduleConfig(name="multistep", unit="steps", milestones=[40, 80],
                                     gamma=0.1))
    assert gamma[39] == 1.0 and gamma[40] == pytest.approx(0.1) and gamma[80] == pytest.approx(
        0.01)
    step = factors(LRScheduleConfig(name="step", step_size=2, gamma=0.5))
    assert step[19] == 1.0 and step[20] == 0.5 and step[45] == 0.25


def test_batch_scaling():
    linear = LRScheduleConfig(scaling="linear", base_batch_size=64)
    sqrt = LRScheduleConfig(scaling="sqrt", base_batch_size=64)
    assert scaled_base_lr(0.001, linear, 256) == pytest.approx(0.004)
    assert scaled_base_lr(0.001, sqrt, 256) == pytest.approx(0.002)
    assert scaled_base_lr(0.001, LRScheduleConfig(), 256) == 0.001


def test_scheduler_drives_optimizer_lr():
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, OptConfig(name="sgd", lr=0.5), 0.5)
    scheduler = build_scheduler(optimizer, LRScheduleConfig(name="poly", unit="steps", power=1),
                                0.5, STEPS_PER_EPOCH, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)


def test_bias_and_norm_are_excluded_from_decay():
    model = Tiny()
    decay, no_decay = param_groups(model, 0.1, exclude_bias_and_norm=True)
    assert [p.shape for p in decay["params"]] == [model.linear.weight.shape]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    assert len(param_groups(model, 0.1, exclude_bias_and_norm=False)) == 1


@pytest.mark.parametrize("name", ["sgd", "lars", "lamb", "adam", "adamw"])
def test_every_optimizer_builds_and_steps(name):
    model = Tiny()
    optimizer = build_optimizer(model, OptConfig(name=name, lr=0.1, weight_decay=0.01), 0.1)
    before = model.linear.weight.detach().clone()
    model.norm(model.linear(torch.randn(4, 3))).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.linear.weight)


def test_lars_step_matches_formula():
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))
    weight.grad = torch.tensor([0.6, 0.8])
    optimizer = LARS([{"params": [weight], "weight_decay": 0.1}], lr=0.5, momentum=0.9,
                     trust_coefficient=0.01)
    optimizer.step()
    trust = 0.01 * 5.0 / (1.0 + 0.1 * 5.0)
    expected = torch.tensor([3.0, 4.0]) - 0.5 * trust * (torch.tensor([0.6, 0.8]) +
                                                         0.1 * torch.tensor([3.0, 4.0]))
    assert torch.allclose(weight.detach(), expected)


def test_lamb_first_step_matches_formula():
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))
    weight.grad = torch.tensor([0.5, -2.0])
    optimizer = LAMB([{"params": [weight], "weight_decay": 0.01}], lr=0.1, eps=0.0)
    optimizer.step()
    update = torch.tensor([1.0, -1.0]) + 0.01 * torch.tensor([3.0, 4.0])
    trust = 5.0 / update.norm()
    assert torch.allclose(weight.detach(), torch.tensor([3.0, 4.0]) - 0.1 * trust * update)


def test_lamb_without_weight_decay_has_no_trust_ratio():
    """As apex FusedLAMB (use_nvlamb=False): the trust ratio needs a non-zero weight decay."""
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))
    weight.grad = torch.tensor([0.5, -2.0])
    LAMB([weight], lr=0.1, eps=0.0).step()
    assert torch.allclose(weight.detach(), torch.tensor([2.9, 4.1]))


def reference_lamb_step(param, grad, state, lr, betas, eps, weight_decay, adapt,
                        bias_correction=True, grad_averaging=True):
    """apex FusedLAMB for one tensor (csrc/multi_tensor_lamb.cu), written out."""
    beta1, beta2 = betas
    state["step"] = state.get("step", 0) + 1
    beta3 = 1 - beta1 if grad_averaging else 1.0
    state["m"] = beta1 * state.get("m", torch.zeros_like(param)) + beta3 * grad
    state["v"] = beta2 * state.get("v", torch.zeros_like(param)) + (1 - beta2) * grad * grad
    correction1 = 1 - beta1 ** state["step"] if bias_correction else 1.0
    correction2 = 1 - beta2 ** state["step"] if bias_correction else 1.0
    update = (state["m"] / correction1) / ((state["v"] / correction2).sqrt() + eps)
    update = update + weight_decay * param
    w_norm, u_norm = param.norm(), update.norm()
    adapt = adapt and weight_decay != 0
    trust = w_norm / u_norm if adapt and w_norm > 0 and u_norm > 0 else 1.0
    return param - lr * trust * update


def fused_lamb_clip(grads, max_norm):
    """FusedLAMB's global clipping: every gradient divided by norm / max_norm when larger."""
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    return [g / (norm / max_norm) if norm > max_norm else g for g in grads]


def test_lamb_matches_the_per_tensor_formula_over_steps():
    torch.manual_seed(0)
    shapes = [(4, 3), (3,), (5,)]
    params = [nn.Parameter(torch.randn(shape)) for shape in shapes]
    expected = [param.detach().clone() for param in params]
    states = [{} for _ in params]
    optimizer = LAMB([{"params": params[:2], "weight_decay": 0.01},
                      {"params": params[2:], "weight_decay": 0.0,
                       "exclude_from_adaptation": True}], lr=0.05, eps=1e-6)
    for step in range(4):
        for index, param in enumerate(params):
            late = index == 1 and step == 0  # no gradient yet: joins one step later
            param.grad = None if late else torch.randn(param.shape)
        optimizer.step()
        for index, param in enumerate(params):
            if param.grad is None:
                continue
            decay, adapt = (0.01, True) if index < 2 else (0.0, False)
            expected[index] = reference_lamb_step(expected[index], param.grad, states[index],
                                                  0.05, (0.9, 0.999), 1e-6, decay, adapt)
        for param, value in zip(params, expected, strict=True):
            torch.testing.assert_close(param.detach(), value)


@pytest.mark.parametrize("bias_correction,grad_averaging", [(True, True), (False, False)])
def test_deepcam_lamb_with_clipping_matches_fused_lamb_over_steps(bias_correction,
                                                                  grad_averaging):
    """DeepCAM's optimizer: FusedLAMB over every parameter (one group, weight decay 0.01),
    the global gradient norm clipped to 1.0 before the update, over several steps with
    gradients both above and below the clipping norm."""
    torch.manual_seed(1)
    model = Tiny()
    cfg = OptConfig(name="lamb", lr=0.0055, eps=1e-6, weight_decay=0.01,
                    exclude_bias_and_norm=False, clip_grad_norm=1.0)
    optimizer = build_optimizer(model, cfg, cfg.lr)
    for group in optimizer.param_groups:
        group["bias_correction"], group["grad_averaging"] = bias_correction, grad_averaging
    params = list(model.parameters())
    expected = [param.detach().clone() for param in params]
    states = [{} for _ in params]
    for scale in (10.0, 0.01, 3.0, 0.5, 20.0):
        grads = [torch.randn(param.shape) * scale for param in params]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad.clone()
        nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)  # what the loop does
        optimizer.step()
        for index, grad in enumerate(fused_lamb_clip(grads, 1.0)):
            expected[index] = reference_lamb_step(expected[index], grad, states[index], 0.0055,
                                                  (0.9, 0.999), 1e-6, 0.01, True,
                                                  bias_correction, grad_averaging)
        for param, value in zip(params, expected, strict=True):
            torch.testing.assert_close(param.detach(), value, rtol=1e-5, atol=1e-7)


def test_lars_matches_the_per_tensor_formula_over_steps():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(shape)) for shape in ((4, 3), (3,), (5,))]
    expected = [param.detach().clone() for param in params]
    buffers = [None] * len(params)
    optimizer = LARS([{"params": params[:2], "weight_decay": 0.01},
                      {"params": params[2:], "weight_decay": 0.0,
                       "exclude_from_adaptation": True}], lr=0.5, momentum=0.9,
                     trust_coefficient=0.02)
    for step in range(4):
        for index, param in enumerate(params):
            param.grad = None if index == 1 and step == 0 else torch.randn(param.shape)
        optimizer.step()
        for index, param in enumerate(params):
            if param.grad is None:
                continue
            weight, grad = expected[index], param.grad
            if index < 2:
                trust = 0.02 * weight.norm() / (grad.norm() + 0.01 * weight.norm())
                grad = (grad + 0.01 * weight) * trust
            buffers[index] = grad if buffers[index] is None else 0.9 * buffers[index] + grad
            expected[index] = weight - 0.5 * buffers[index]
        for param, value in zip(params, expected, strict=True):
            torch.testing.assert_close(param.detach(), value)


def tf_bert_lr(step, init_lr, num_train_steps, num_warmup_steps, start_warmup_step, power=1.0):
    """The MLPerf BERT reference's learning rate (optimization.py, create_optimizer):
    tf.train.polynomial_decay from step 0, overridden by a linear warmup."""
    decayed = init_lr * (1 - min(step, num_train_steps) / num_train_steps) ** power
    if not num_warmup_steps:
        return decayed
    into_warmup = step - start_warmup_step
    if into_warmup < num_warmup_steps:
        return init_lr * into_warmup / num_warmup_steps
    return decayed


@pytest.mark.parametrize("lr,steps,warmup,start", [(0.002, 1141, 100, 0),
                                                   (0.00288293, 600, 287, -76),
                                                   (0.0029293, 700, 0, -700)])
def test_bert_schedule_matches_the_reference_over_every_step(lr, steps, warmup, start):
    cfg = LRScheduleConfig(name="poly", unit="steps", power=1.0, end_lr=0.0, decay_from="start",
                           decay_length=steps, warmup=warmup, warmup_offset=start)
    factor = lr_factor_fn(cfg, lr, STEPS_PER_EPOCH, steps + 50)
    for step in range(steps + 50):
        assert factor(step) * lr == pytest.approx(tf_bert_lr(step, lr, steps, warmup, start),
                                                  abs=1e-12)


def test_bert_decay_from_step_zero_is_below_decay_after_warmup():
    """The issue this fixes: decaying over the steps after warmup gave more LR than the
    reference at every step after the warmup."""
    common = {"name": "poly", "unit": "steps", "power": 1.0, "warmup": 100, "decay_length": 1141}
    reference = lr_factor_fn(LRScheduleConfig(decay_from="start", **common), 1.0, 1, 1141)
    shifted = lr_factor_fn(LRScheduleConfig(decay_from="warmup", **common), 1.0, 1, 1141)
    assert reference(600) == pytest.approx(1 - 600 / 1141)
    assert all(reference(step) < shifted(step) for step in range(101, 1141))


def tf2_resnet_lr(step, init_lr, end_lr, warmup_steps, decay_steps):
    """The MLPerf ResNet TF2 reference (lars_util.py, PolynomialDecayWithWarmup)."""
    if step <= warmup_steps:
        return init_lr * step / warmup_steps
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return (init_lr - end_lr) * (1 - progress) ** 2 + end_lr


def test_resnet_schedule_warmup_in_epochs_decay_in_steps():
    steps_per_epoch, warmup_epochs, decay_steps = 313, 5, 13137
    cfg = LRScheduleConfig(name="poly", unit="epochs", warmup=warmup_epochs, power=2,
                           end_lr=1e-4, decay_length=decay_steps, decay_unit="steps")
    total = steps_per_epoch * 47
    factor = lr_factor_fn(cfg, 10.0, steps_per_epoch, total)
    lengths = schedule_steps(cfg, steps_per_epoch, total)
    assert (lengths.warmup, lengths.decay) == (5 * 313, 13137)
    for step in range(0, total, 7):
        assert factor(step) * 10.0 == pytest.approx(
            tf2_resnet_lr(step, 10.0, 1e-4, warmup_epochs * steps_per_epoch, decay_steps))


def deepcam_multistep_lrs(base_lr, warmup_steps, milestones, gamma, steps):
    """MultiStepLRWarmup of the DeepCAM reference (utils/schedulers.py), warmup factor 1, as
    the LR for each optimizer step (chainable: the LR is multiplied at each milestone)."""
    absolute = [m + warmup_steps + 1 for m in milestones]
    lrs, lr = [], base_lr
    for step in range(steps):
        if step <= warmup_steps:
            lr = base_lr * step / warmup_steps
        elif step in absolute:
            lr *= gamma
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("warmup,milestones", [(400, [800]), (100, [2048, 4096]), (0, [50])])
def test_deepcam_multistep_matches_the_reference_scheduler(warmup, milestones):
    cfg = LRScheduleConfig(name="multistep", unit="steps", warmup=warmup, gamma=0.1,
                           milestones=deepcam_milestone_steps(milestones, warmup))
    steps = max(milestones) + warmup + 20
    factor = lr_factor_fn(cfg, 0.004, 1, steps)
    if warmup:
        expected = deepcam_multistep_lrs(0.004, warmup, milestones, 0.1, steps)
    else:  # plain torch MultiStepLR in the reference
        expected = torch_lrs(lambda opt: torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones, gamma=0.1), 0.004, steps)
    for step in range(steps):
        assert factor(step) * 0.004 == pytest.approx(expected[step], rel=1e-9)
    lengths = schedule_steps(cfg, 1, steps)
    assert deepcam_reference_milestones(lengths.milestones, lengths.warmup) == milestones


def torch_lrs(make_scheduler, base_lr, steps):
    """The LR a torch scheduler gives each optimizer step."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_deepcam_cosine_matches_torch_cosine_annealing():
    """deepcam_ref_128: no warmup, so the reference is torch's CosineAnnealingLR."""
    cfg = LRScheduleConfig(name="cosine", unit="steps", warmup=0, decay_length=9000, end_lr=0.0)
    factor = lr_factor_fn(cfg, 0.00155, 1, 9001)
    expected = torch_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=9000, eta_min=0.0), 0.00155, 9001)
    for step in range(0, 9001, 17):
        assert factor(step) * 0.00155 == pytest.approx(expected[step], rel=1e-6, abs=1e-12)


def test_schedule_steps_is_what_the_scheduler_uses():
    cfg = LRScheduleConfig(name="poly", unit="epochs", warmup=2, milestones=[3])
    lengths = schedule_steps(cfg, STEPS_PER_EPOCH, TOTAL)
    assert (lengths.warmup, lengths.decay_start, lengths.decay) == (20, 20, 80)
    assert lengths.milestones == (30,)
    assert schedule_steps(LRScheduleConfig(unit="epochs", decay_length=3, decay_unit="steps"),
                          STEPS_PER_EPOCH, TOTAL).decay == 3
