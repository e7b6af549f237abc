"""reframe_tests/mlbench_hooks.py functions that need no ReFrame session: the RCP bound."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from tests.reframe_helpers import TESTS_DIR

sys.path.insert(0, str(TESTS_DIR))
import mlbench_hooks as hooks  # noqa: E402


class FullScaleTest:
    """The attributes of a finished full-scale test that the RCP hook reads."""

    benchmark = 'resnet50'
    epochs_unit = 'epochs'
    current_partition = SimpleNamespace(fullname='cluster:gpu')

    def __init__(self, global_batch_size: int | None) -> None:
        self.summary = SimpleNamespace(global_batch_size=global_batch_size)
        self.reference: dict = {}


def full_scale_test(global_batch_size: int | None) -> FullScaleTest:
    return FullScaleTest(global_batch_size)


def test_the_shipped_rcp_tables_bound_epochs_to_target() -> None:
    mean, stdev = hooks.rcp.rcp_reference('resnet50', 3072)
    test = full_scale_test(3072)
    hooks.add_rcp_reference(test)
    assert test.reference == {
        'cluster:gpu': {'epochs_to_target': (mean, None, 2 * stdev / mean, 'epochs')}}


def test_rcp_bounds_epochs_to_target_from_above(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def rcp_reference(benchmark: str, global_batch_size: int) -> tuple[float, float] | None:
        calls.append((benchmark, global_batch_size))
        return (40.0, 2.0)

    monkeypatch.setattr(hooks.rcp, 'rcp_reference', rcp_reference)
    test = full_scale_test(3072)
    hooks.add_rcp_reference(test)
    assert calls == [('resnet50', 3072)]
    assert test.reference == {'cluster:gpu': {'epochs_to_target': (40.0, None, 0.1, 'epochs')}}
    unknown_batch = full_scale_test(None)
    hooks.add_rcp_reference(unknown_batch)
    assert unknown_batch.reference == {}
