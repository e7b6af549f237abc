"""MLPerf logging through the ``mlperf-logging`` package, from rank 0 only.

Every line is ``:::MLLOG {...}`` on stdout (and in ``training.log_file`` when set), readable
by the official compliance checker and by the ReFrame layer. Keys are the package's
constants plus the project's own, namespaced ``mlbench_`` (names in
:mod:`benchmarks.core.constants`):

- ``mlbench_throughput``: training samples/s of the epoch just finished (metadata epoch_num)
- ``mlbench_target``: the configured target, metadata ``lower_is_better`` and ``metric``
- ``mlbench_peak_memory``: peak bytes on this rank's device
- ``mlbench_num_parameters``: parameters of the instantiated model
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlperf_logging import compliance_checker
from mlperf_logging.compliance_checker import mlp_compliance
from mlperf_logging.mllog import constants
from mlperf_logging.mllog import mllog as mllog_impl

from benchmarks.core import rcp
from benchmarks.core.constants import (  # noqa: F401 - re-exported for the loop and runner
    ENERGY,
    ENVIRONMENT,
    NUM_PARAMETERS,
    PEAK_MEMORY,
    RESUMED,
    STAGING_START,
    STAGING_STOP,
    TARGET,
    THROUGHPUT,
)
from benchmarks.core.errors import ConfigError, InputError

NUMBER_OF_NODES = "number_of_nodes"
ACCELERATORS_PER_NODE = "accelerators_per_node"
#: SHA-256 of the starting checkpoint's weight files (a key of the MLPerf HPC OpenFold rules).
INIT_CHECKPOINT_SHA256 = "init_checkpoint_sha256sum"

SUBMISSION_ORG = "mlbench-reframe"
SUBMISSION_STATUS = "research"
CLOSED, OPEN = "closed", "open"


@dataclass(frozen=True)
class ClosedRules:
    """What the closed division of a benchmark's MLPerf rules fixes that a config sets.

    ``usage`` and ``ruleset`` name the mlperf-logging compliance-checker rules the log is
    written for (``python -m mlperf_logging.compliance_checker --usage U --ruleset R``).
    """

    benchmark: str  # the ``submission_benchmark`` value
    ruleset: str
    target: float
    needs_init_checkpoint: bool = False

    @property
    def usage(self) -> str:
        """``training`` or ``hpc``: the one :data:`rcp.REFERENCES` gives the benchmark's RCPs,
        so the two tables cannot disagree."""
        return rcp.REFERENCES[rcp.project_name(self.benchmark)].usage


#: By ``submission_benchmark``: the latest ruleset in mlperf-logging with closed rules for the
#: benchmark (ResNet has none after training 4.0.0), with the quality target of its
#: ``closed_<benchmark>.yaml`` and whether the reference starts from a checkpoint. GPT-J has
#: no MLPerf rules: its runs are always open.
CLOSED_RULES = {rules.benchmark: rules for rules in (
    ClosedRules("resnet", "4.0.0", 0.759),
    ClosedRules("bert", "5.0.0", 0.720, needs_init_checkpoint=True),
    ClosedRules("cosmoflow", "3.0.0", 0.124),
    ClosedRules("deepcam", "3.0.0", 0.82),
    ClosedRules("openfold", "3.0.0", 0.8, needs_init_checkpoint=True),
)}


@dataclass
class _InitLine:
    """A logged init key as the checker's rule expressions see a log line (``ll``)."""

    key: str
    value: dict[str, Any]
    lineno: int = 0
    full_string: str = ""


def closed_rule_violations(benchmark: str, logged: Mapping[str, Any]) -> list[str]:
    """The checks of the installed checker's ``closed_<benchmark>.yaml``, and of the rule
    files it enqueues for the logged values (e.g. DeepCAM's LAMB rules), that the values
    logged at init fail, as ``"key=value (rule)"``. The checker itself evaluates its rules'
    expressions; checks of keys not in ``logged`` (those of the run's results) and checks
    that need the checker's state are left to the checker."""
    rules = CLOSED_RULES[benchmark]
    root = Path(compliance_checker.__file__).parent
    checker = mlp_compliance.make_checker(rules.usage, rules.ruleset, quiet=True, werror=False)
    queue, seen, violations = [f"{rules.usage}_{rules.ruleset}/closed_{benchmark}.yaml"], set(), []
    while queue:
        name = queue.pop(0)
        if name in seen or not (root / name).is_file():
            continue
        seen.add(name)
        for entry in yaml.safe_load((root / name).read_text()) or []:
            rule = entry.get("KEY") if isinstance(entry, dict) else None
            if not rule or rule.get("NAME") not in logged:
                continue
            key, checks = rule["NAME"], rule.get("CHECK") or []
            line = _InitLine(key, {"value": logged[key], "metadata": {}})
            state = {"s": {}, "math": math, "enqueue_config": queue.append}
            for check in [checks] if isinstance(checks, str) else checks:
                checker.overwritable.clear()
                checker.run_check_eval(line, check, state)
                message = checker.overwritable.get(key, "")
                # "Failed executing" means the check needs the checker's state: undecidable.
                if message.startswith("CHECK for"):
                    violations.append(f"{key}={logged[key]!r} ({check.strip()})")
            if rule.get("POST"):
                checker.run_check_exec(line, rule["POST"], state, "POST")
    return violations


def submission_division(benchmark: str, target: float | None, init_checkpoint: str = "",
                        logged: Mapping[str, Any] | None = None,
                        recipe_reasons: Sequence[str] = ()) -> tuple[str, str]:
    """``("closed", "")`` when the run can be a closed-division run, else ``("open", why)``.

    Checked here: the benchmark has closed rules, the configured target is the rules' target,
    the start checkpoint is configured where the reference starts from one, and the keys
    logged at init (``logged``) pass the closed rules' checks. Whether the recipe (batch size,
    hyperparameters) matches a reference convergence point is for the caller to check: its
    findings come in as ``recipe_reasons``.
    """
    rules = CLOSED_RULES.get(benchmark)
    if rules is None:
        return OPEN, f"no MLPerf closed-division rules for '{benchmark}'"
    reasons = []
    if target is None or not math.isclose(target, rules.target, rel_tol=1e-9):
        reasons.append(f"target {target} is not the rules' {rules.target}")
    if rules.needs_init_checkpoint and not init_checkpoint:
        reasons.append("no model.init_checkpoint (the rules start from the reference checkpoint)")
    reasons.extend(closed_rule_violations(benchmark, logged or {}))
    reasons.extend(recipe_reasons)
    return (OPEN, "; ".join(reasons)) if reasons else (CLOSED, "")


def sha256sum(files: Sequence[Path]) -> str:
    """The ``init_checkpoint_sha256sum`` value: SHA-256 of the files' bytes, concatenated in
    order (``sha256sum`` of a single file)."""
    digest = hashlib.sha256()
    for path in files:
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
        except OSError as err:
            raise InputError(f"{path}: cannot read checkpoint ({err.strerror})") from None
    return digest.hexdigest()


class MLLogger:
    """Rank-0 MLPerf logger; on other ranks every call is a no-op."""

    def __init__(self, enabled: bool, log_file: str = "") -> None:
        self.enabled = enabled
        self._logger = None
        if not enabled:
            return
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
        if log_file:
            try:
                handlers.append(logging.FileHandler(log_file, mode="w"))
            except OSError as err:
                raise ConfigError(f"config key 'training.log_file': cannot write {log_file} "
                                  f"({err.strerror})") from None
        pylogger = logging.getLogger("mlbench.mllog")
        pylogger.handlers.clear()
        pylogger.propagate = False
        pylogger.setLevel(logging.INFO)
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))
            pylogger.addHandler(handler)
        self._logger = mllog_impl.MLLogger(logger=pylogger, default_stack_offset=2)

    def event(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        if self._logger:
            self._logger.event(key=key, value=value, metadata=metadata)

    def start(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        if self._logger:
            self._logger.start(key=key, value=value, metadata=metadata)

    def end(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        if self._logger:
            self._logger.end(key=key, value=value, metadata=metadata)

    def submission(self, benchmark: str, platform: str, num_nodes: int,
                   accelerators_per_node: int) -> None:
        """The submission_* keys but the division (logged once the run's keys are known, see
        :meth:`division`) and the HPC cluster keys the checker requires."""
        self.event(constants.SUBMISSION_BENCHMARK, benchmark)
        self.event(constants.SUBMISSION_ORG, SUBMISSION_ORG)
        self.event(constants.SUBMISSION_STATUS, SUBMISSION_STATUS)
        self.event(constants.SUBMISSION_PLATFORM, platform)
        self.event(NUMBER_OF_NODES, num_nodes)
        self.event(ACCELERATORS_PER_NODE, accelerators_per_node)

    def division(self, division: str, reason: str) -> None:
        """``submission_division`` (see :func:`submission_division`), with its reason."""
        self.event(constants.SUBMISSION_DIVISION, division,
                   metadata={"reason": reason} if reason else None)

    def close(self) -> None:
        if self._logger:
            for handler in self._logger.logger.handlers:
                handler.flush()
                if isinstance(handler, logging.FileHandler):
                    handler.close()


__all__ = ["MLLogger", "constants", "CLOSED_RULES", "INIT_CHECKPOINT_SHA256",
           "submission_division", "closed_rule_violations", "sha256sum", "THROUGHPUT",
           "TARGET", "PEAK_MEMORY", "NUM_PARAMETERS", "RESUMED", "ENVIRONMENT", "ENERGY",
           "STAGING_START", "STAGING_STOP"]
