"""Optimizers and LR schedules against their closed formulas."""

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
)

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
    optimizer = LAMB([{"params": [weight], "weight_decay": 0.0}], lr=0.1, eps=0.0)
    optimizer.step()
    update = torch.tensor([1.0, -1.0])
    trust = 5.0 / update.norm()
    assert torch.allclose(weight.detach(), torch.tensor([3.0, 4.0]) - 0.1 * trust * update)


def reference_lamb_step(param, grad, state, lr, betas, eps, weight_decay, adapt):
    """LAMB for one tensor, written out: the specification the multi-tensor code must meet."""
    beta1, beta2 = betas
    state["step"] = state.get("step", 0) + 1
    state["m"] = beta1 * state.get("m", torch.zeros_like(param)) + (1 - beta1) * grad
    state["v"] = beta2 * state.get("v", torch.zeros_like(param)) + (1 - beta2) * grad * grad
    m_hat = state["m"] / (1 - beta1 ** state["step"])
    v_hat = state["v"] / (1 - beta2 ** state["step"])
    update = m_hat / (v_hat.sqrt() + eps) + weight_decay * param
    w_norm, u_norm = param.norm(), update.norm()
    trust = w_norm / u_norm if adapt and w_norm > 0 and u_norm > 0 else 1.0
    return param - lr * trust * update


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
