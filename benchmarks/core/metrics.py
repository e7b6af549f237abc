"""Quality metrics that accumulate on the device and reduce across ranks once.

A metric is a vector of sums: each batch adds its contribution with ``update`` (no host sync),
and ``compute`` all-reduces the vector over ranks and turns it into one float, so every rank
sees the same value and takes the same stop decision. Subclass :class:`SumMetric` with
``batch_state`` (the batch's sums) and ``value`` (the final number)::

    class MeanAbsoluteError(SumMetric):
        size = 2
        higher_is_better = False
        mllog_key = "eval_error"

        def batch_state(self, outputs, targets):
            err = (outputs - targets).abs()
            return torch.stack([err.sum(), torch.tensor(err.numel(), ...)])

        def value(self, state):
            return (state[0] / state[1]).item()
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.core.distributed import all_reduce_sum


class SumMetric:
    """Base class: a ``size``-long vector of float64 sums, reduced by summing over ranks."""

    size: int = 2
    higher_is_better: bool = True
    mllog_key: str = "eval_accuracy"
    name: str = "metric"

    def __init__(self) -> None:
        self.state: torch.Tensor | None = None

    def reset(self) -> None:
        self.state = None

    @torch.no_grad()
    def update(self, outputs: Any, targets: Any) -> None:
        contribution = self.batch_state(outputs, targets).to(torch.float64)
        self.state = contribution if self.state is None else self.state + contribution

    def compute(self, device: torch.device) -> float:
        """Sum the state over ranks and return the metric; every rank gets the same value."""
        state = self.state if self.state is not None else torch.zeros(self.size)
        state = state.to(device, torch.float64)
        all_reduce_sum(state)
        return self.value(state.cpu())

    def batch_state(self, outputs: Any, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def value(self, state: torch.Tensor) -> float:
        raise NotImplementedError

    def reached(self, value: float, target: float | None) -> bool:
        """Whether ``value`` meets ``target`` in this metric's direction."""
        if target is None:
            return False
        return value >= target if self.higher_is_better else value <= target


class RatioMetric(SumMetric):
    """A ratio of two sums: ``state[0] / state[1]`` (0 when nothing was counted)."""

    def value(self, state: torch.Tensor) -> float:
        return float(state[0] / state[1]) if state[1] > 0 else 0.0


class TopKAccuracy(RatioMetric):
    """Fraction of samples whose label is among the ``k`` highest logits."""

    name = "top1_accuracy"

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k = k
        self.name = f"top{k}_accuracy"

    def batch_state(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        topk = outputs.topk(self.k, dim=1).indices
        correct = (topk == targets.unsqueeze(1)).any(dim=1).sum()
        return torch.stack([correct.to(torch.float64),
                            torch.tensor(targets.numel(), dtype=torch.float64,
                                         device=targets.device)])
