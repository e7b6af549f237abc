"""Data staging: each rank copies its share of a file-based dataset to fast local storage.

MLPerf HPC counts staging in the time to train: with ``data.stage_dir`` set (node-local NVMe,
``/dev/shm``), :func:`plan_staging` points the training and evaluation datasets at the copies
this rank will make, before the loaders are built, and the runner calls
:meth:`StagingPlan.run` once ``run_start`` is logged. It copies the files, waits for every rank
and logs ``staging_start`` / ``staging_stop`` (metadata ``staging_duration`` in seconds and
``number_of_files`` on this rank), as the reference implementations do. After ``run_stop``
(or a failure) :meth:`StagingPlan.remove` deletes the copies again.

A staged run reads the same files as an unstaged one, shared out differently: rank ``r`` of
``W`` keeps training files ``r, r + W, ...`` of the first ``W * (N // W)`` (every rank the same
number of steps; the rest dropped, as the sampler's ``drop_last`` does) and shuffles within
them each epoch, as the reference CosmoFlow and DeepCAM do with staged data; evaluation file
``i`` goes to rank ``i % W``, as without staging.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from benchmarks.core import distributed, mllog
from benchmarks.core.config import DataConfig
from benchmarks.core.distributed import DistEnv
from benchmarks.core.errors import ConfigError, InputError

# Copies in flight per rank: enough to hide a parallel file system's per-file latency.
COPY_THREADS = 8


class FileDataset(Protocol):
    """A dataset that reads one sample per file from ``files``."""

    files: list[Path]

    def __len__(self) -> int: ...


@dataclass
class StagingPlan:
    """The (source, destination) copies this rank makes inside the timed region."""

    stage_dir: Path
    copies: list[tuple[Path, Path]] = field(default_factory=list)

    def add(self, files: Sequence[Path], data_dir: Path) -> list[Path]:
        """Register ``files`` for copying, under the same relative paths as in ``data_dir``;
        returns where they will be."""
        root = data_dir.resolve()
        destinations = []
        for source in files:
            resolved = source.resolve()
            relative = resolved.relative_to(root) if resolved.is_relative_to(root) else \
                Path(source.name)
            destinations.append(self.stage_dir / relative)
            self.copies.append((source, self.stage_dir / relative))
        return destinations

    def run(self, log: mllog.MLLogger) -> float:
        """Copy every file (through a temporary name, so no half-written file is left), wait
        for all ranks and log the staging keys; returns the duration in seconds."""
        log.start(mllog.STAGING_START)
        started = time.perf_counter()
        for folder in {destination.parent for _, destination in self.copies}:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"config key 'data.stage_dir': cannot create {folder} "
                                  f"({err.strerror})") from None
        with ThreadPoolExecutor(COPY_THREADS) as pool:
            for _ in pool.map(_copy, self.copies):
                pass
        distributed.barrier()
        duration = time.perf_counter() - started
        log.end(mllog.STAGING_STOP, metadata={"staging_duration": duration,
                                              "number_of_files": len(self.copies)})
        return duration


    def remove(self) -> None:
        """Delete this rank's copies, then the folders below ``stage_dir`` left empty, so a
        node-local ``/dev/shm`` or NVMe is not left full after the job. Called once the run is
        over, whatever its outcome; ``stage_dir`` itself and folders that other ranks' copies
        still fill stay."""
        for _, destination in self.copies:
            destination.unlink(missing_ok=True)
            _partial(destination).unlink(missing_ok=True)
        folders = {destination.parent for _, destination in self.copies}
        for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
            while folder != self.stage_dir and folder.is_relative_to(self.stage_dir):
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent


def _partial(destination: Path) -> Path:
    """Where ``destination`` is written before it is renamed into place; named once, as
    :meth:`StagingPlan.remove` deletes what an interrupted copy left there."""
    return destination.with_name(destination.name + ".staging")


def _copy(pair: tuple[Path, Path]) -> None:
    source, destination = pair
    partial = _partial(destination)
    try:
        shutil.copyfile(source, partial)
        partial.replace(destination)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise InputError(f"{source}: cannot stage to {destination} ({err.strerror})") from None


def plan_staging(cfg: DataConfig, train_set: FileDataset, eval_set: FileDataset,
                 env: DistEnv) -> StagingPlan | None:
    """With ``data.stage_dir`` set, give both datasets this rank's share of their files, at
    the paths they will be staged to, and return the plan; ``None`` (datasets unchanged)
    without it. Build the loaders afterwards, with ``local_shard`` set when a plan is made."""
    if not cfg.stage_dir:
        return None
    rank, world = env.rank, env.world_size
    per_rank = len(train_set.files) // world
    if per_rank == 0 or len(eval_set.files) < world:
        raise InputError(f"{cfg.data_dir}: {len(train_set.files)} training and "
                         f"{len(eval_set.files)} evaluation files cannot be staged over "
                         f"{world} ranks (each needs at least one of each)")
    plan = StagingPlan(Path(cfg.stage_dir))
    data_dir = Path(cfg.data_dir)
    train_set.files = plan.add(train_set.files[:per_rank * world][rank::world], data_dir)
    eval_set.files = plan.add(eval_set.files[rank::world], data_dir)
    return plan
