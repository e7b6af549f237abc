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

import logging
import sys
from typing import Any

from mlperf_logging.mllog import constants
from mlperf_logging.mllog import mllog as mllog_impl

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
from benchmarks.core.errors import ConfigError

NUMBER_OF_NODES = "number_of_nodes"
ACCELERATORS_PER_NODE = "accelerators_per_node"

SUBMISSION_ORG = "mlbench-reframe"
SUBMISSION_DIVISION = "open"
SUBMISSION_STATUS = "research"


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
        """The submission_* keys and the HPC cluster keys the checker requires."""
        self.event(constants.SUBMISSION_BENCHMARK, benchmark)
        self.event(constants.SUBMISSION_ORG, SUBMISSION_ORG)
        self.event(constants.SUBMISSION_DIVISION, SUBMISSION_DIVISION)
        self.event(constants.SUBMISSION_STATUS, SUBMISSION_STATUS)
        self.event(constants.SUBMISSION_PLATFORM, platform)
        self.event(NUMBER_OF_NODES, num_nodes)
        self.event(ACCELERATORS_PER_NODE, accelerators_per_node)

    def close(self) -> None:
        if self._logger:
            for handler in self._logger.logger.handlers:
                handler.flush()
                if isinstance(handler, logging.FileHandler):
                    handler.close()


__all__ = ["MLLogger", "constants", "THROUGHPUT", "TARGET", "PEAK_MEMORY", "NUM_PARAMETERS",
           "RESUMED", "ENVIRONMENT", "ENERGY", "STAGING_START", "STAGING_STOP"]
