"""Data utilities shared by the benchmarks: input checks, sharding, loaders, device transfer.

- :func:`require_dir` / :func:`list_files` / :func:`select_files` / :func:`h5_dataset`: find
  inputs or raise an ``InputError`` naming the folder or file, before any training starts.
- :func:`take_subset`: the rule for ``data.train_subset`` / ``data.eval_subset`` over file
  and chain lists: the first N of the sorted list. Ranks then get disjoint shares from the
  loader's sampler (map-style datasets) or from the stream itself (iterable datasets).
  ImageNet is the exception: its subset is N images drawn with a fixed seed, since the first
  N sorted images would all be of one class.
- :func:`build_loader`: a DataLoader with a ``DistributedSampler`` for map-style datasets
  (or a :class:`WeightedDistributedSampler` when samples have weights), seeded workers, and
  pinned, persistent workers on GPU; or, for a dataset that holds only this rank's share
  (staged to node-local storage), a sampler over that share.
- :func:`worker_shard`: the (rank, worker) slot of an iterable dataset inside a worker.
- :func:`to_device` / :func:`to_channels_last`: move a batch (tensor, dict, list or tuple of
  them) to the device / put its images in channels-last layout.
- :func:`readonly_tensor`: a tensor over an immutable buffer (inflated bytes) without a copy.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401 - registers its exit handler before ours
import random
import signal
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler
from tqdm import tqdm

from benchmarks.core.checkpoint import StopRequest
from benchmarks.core.distributed import DistEnv
from benchmarks.core.errors import InputError


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is a folder, else an InputError naming it and ``what`` it is."""
    if not str(path):
        raise InputError(f"{what}: no folder given (set data.data_dir or --data-dir)")
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found")
    return folder


def list_files(folder: Path, patterns: Sequence[str], what: str) -> list[Path]:
    """Sorted files in ``folder`` matching any glob in ``patterns``; an empty list is an error."""
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise InputError(f"{folder}: no {what} files ({', '.join(patterns)})")
    return files


def select_files(folder: Path, patterns: Sequence[str], what: str, subset: int,
                 subset_key: str) -> list[Path]:
    """Sorted files of a split folder cut to the first ``subset`` (all when 0); asking for
    more files than there are is an error naming ``subset_key``."""
    return take_subset(list_files(folder, patterns, what), subset, subset_key, folder)


def h5_dataset(handle: h5py.File, key: str, path: Path) -> h5py.Dataset:
    """Dataset ``key`` of an open HDF5 file, or an InputError naming the file and the key."""
    node = handle.get(key)
    if not isinstance(node, h5py.Dataset):
        raise InputError(f"{path}: no dataset '{key}'")
    return node


def take_subset(items: Sequence[Any], subset: int, subset_key: str, where: object,
                what: str = "files") -> list[Any]:
    """The first ``subset`` items (all when 0) of a sorted list; asking for more ``what`` than
    there are is an InputError naming ``where`` and ``subset_key``."""
    if subset > len(items):
        raise InputError(f"{where}: {subset_key} asks for {subset} {what}, found {len(items)}")
    return list(items[:subset] if subset else items)


def worker_shard(rank: int, world_size: int) -> tuple[int, int]:
    """(index, count) of this DataLoader worker among all workers of all ranks."""
    info = torch.utils.data.get_worker_info()
    workers = info.num_workers if info else 1
    worker = info.id if info else 0
    return rank * workers + worker, world_size * workers


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch; ranks get different streams from the same seed."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


class StopSignalSafeLoader(DataLoader):
    """A DataLoader whose workers leave SIGTERM and SIGUSR1 to the main process.

    Slurm's SIGTERM (preemption, requeue, scancel) and ``--signal=USR1`` reach every process
    of the job step, loader workers included. A worker that died of one would make the main
    process fail on its next batch instead of checkpointing at the signal. The signals are
    held while the workers start (they inherit the mask), and each worker ignores them before
    releasing them, so none can die of one; the main process stops cleanly and its workers
    end with it.
    """

    def __iter__(self) -> Iterator:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, StopRequest.SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _kill_loader_workers() -> None:
    """At interpreter exit, end the workers of loaders still iterating (a run that failed
    mid-epoch). multiprocessing's own exit handler stops daemonic children with SIGTERM,
    which these workers ignore, and would then wait for them forever."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


# Registered after multiprocessing's exit handler, so it runs before it.
atexit.register(_kill_loader_workers)


def _start_worker(worker_id: int) -> None:
    """Ignore the stop signals (see :class:`StopSignalSafeLoader`) and seed the generators."""
    for signum in StopRequest.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, StopRequest.SIGNALS)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, env: DistEnv,
                 device: torch.device, num_workers: int, prefetch_factor: int = 2,
                 shuffle: bool = True, drop_last: bool = True, seed: int = 0,
                 collate_fn: Any = None,
                 sample_weights: Sequence[float] | None = None,
                 local_shard: bool = False) -> StopSignalSafeLoader:
    """A DataLoader for one rank.

    Map-style training sets get a ``DistributedSampler`` over all ranks, or with
    ``sample_weights`` a :class:`WeightedDistributedSampler`; evaluation sets an
    :class:`EvalShardSampler`, which gives every sample to exactly one rank (no padding with
    repeated samples, which would bias the metric). With ``local_shard`` the dataset holds
    this rank's share only (see :mod:`benchmarks.core.staging`): training shuffles within it,
    evaluation reads all of it. Iterable datasets shard themselves (see
    :func:`worker_shard`). Workers are seeded from ``seed``, leave SIGTERM and SIGUSR1
    to the main process, and are persistent on GPU.
    """
    sampler: Sampler | None = None
    # A local shard is sampled as if by the only rank, its shuffle seeded per rank.
    rank, world_size, sampler_seed = ((0, 1, seed + env.rank) if local_shard
                                      else (env.rank, env.world_size, seed))
    if local_shard or not isinstance(dataset, IterableDataset):
        if not train:
            sampler = EvalShardSampler(len(dataset), rank, world_size)
        elif sample_weights is not None and not local_shard:
            sampler = WeightedDistributedSampler(sample_weights, rank, world_size, sampler_seed)
        else:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                         shuffle=shuffle, seed=sampler_seed, drop_last=drop_last)
    generator = torch.Generator()
    generator.manual_seed(seed + env.rank)
    on_gpu = device.type == "cuda"
    return StopSignalSafeLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=on_gpu,
        drop_last=train and drop_last,
        worker_init_fn=_start_worker,
        generator=generator,
        persistent_workers=on_gpu and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )


class EvalShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: each evaluation sample on exactly one rank.

    Ranks may get one batch more or less; the loop keeps their collectives matched.
    """

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        if size < world_size:
            raise InputError(f"evaluation set has {size} samples, fewer than the {world_size} "
                             "ranks")
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class WeightedDistributedSampler(Sampler[tuple[int, int]]):
    """Samples drawn with replacement in proportion to their weights, split over the ranks.

    Each epoch (see ``set_epoch``) draws ``len(weights)`` indices rounded down to a multiple
    of the world size from a generator seeded by (seed, epoch), the same draw on every rank;
    rank ``r`` takes every ``world_size``-th from ``r``. It yields ``(index, draw)`` pairs,
    ``draw`` numbering the epoch's draws, so that a dataset can make repeated draws of one
    item differ (its ``__getitem__`` receives the pair). Used where a training set samples
    items by how representative they are (AlphaFold: chain length and cluster size).
    """

    def __init__(self, weights: Sequence[float], rank: int, world_size: int,
                 seed: int = 0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.dim() != 1 or not len(self.weights) or (self.weights < 0).any() or \
                not torch.isfinite(self.weights).all() or self.weights.sum() <= 0:
            raise InputError("sample weights must be finite, non-negative and not all zero")
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.per_rank = len(self.weights) // world_size
        if self.per_rank == 0:
            raise InputError(f"training set has {len(self.weights)} samples, fewer than the "
                             f"{world_size} ranks")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.per_rank * self.world_size,
                                  replacement=True, generator=generator)
        mine = range(self.rank, len(draws), self.world_size)
        return iter(zip(draws[self.rank::self.world_size].tolist(), mine, strict=True))

    def __len__(self) -> int:
        return self.per_rank


def synthetic_samples(outdir: Path, splits: dict[str, int], benchmark: str,
                      seed: int) -> Iterator[tuple[str, Path, int, np.random.Generator]]:
    """(split, folder, index, rng) for each sample a synthetic writer must produce.

    Creates each split's folder, shows one progress bar over all samples, and gives every
    sample its own generator seeded by (seed, split, index), so a sample does not depend on
    how many others are written.
    """
    with tqdm(total=sum(splits.values()), desc=f"{benchmark} synth -> {outdir}",
              unit="sample") as progress:
        for split_index, (split, count) in enumerate(splits.items()):
            folder = Path(outdir) / split
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                yield split, folder, index, np.random.default_rng([seed, split_index, index])
                progress.update()


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (also inside dicts, lists and tuples) to ``device``, asynchronously."""
    return _map_tensors(lambda tensor: tensor.to(device, non_blocking=True), batch)


def to_channels_last(batch: Any) -> Any:
    """Images (4-dimensional floating-point tensors) of ``batch`` in channels-last layout."""
    return _map_tensors(lambda tensor: tensor.contiguous(memory_format=torch.channels_last)
                        if tensor.dim() == 4 and tensor.is_floating_point() else tensor, batch)


def _map_tensors(function: Callable[[torch.Tensor], torch.Tensor], batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return function(batch)
    if isinstance(batch, dict):
        return {key: _map_tensors(function, value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(function, value) for value in batch)
    return batch


def batch_size_of(inputs: Any) -> int:
    """Number of samples in a batch of inputs (a tensor or a dict/list of tensors)."""
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, dict):
        return batch_size_of(next(iter(inputs.values())))
    return batch_size_of(inputs[0])


def readonly_tensor(buffer: bytes | memoryview, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D tensor over an immutable buffer, without copying it.

    For sample bytes a reader produced (an inflated TFRecord): nothing writes to the tensor,
    the loader's collation copies it into the batch, so torch's warning that the buffer is
    not writable does not apply and a defensive copy would only cost time.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)
        return torch.frombuffer(buffer, dtype=dtype)
