"""CosmoFlow samples in both official on-disk layouts, and a learnable synthetic dataset.

Layout: ``<data_dir>/train/`` and ``<data_dir>/validation/``, one sample per file:

- ``data.format: tfrecord``: ``*.tfrecord`` files (gzip-compressed or not; detected from the
  bytes), each holding one ``tf.train.Example`` with ``x`` (bytes: int16 little-endian
  [128, 128, 128, 4]) and ``y`` (4 floats), as written by the MLPerf HPC ``prepare.py``;
- ``data.format: hdf5``: ``*.h5`` / ``*.hdf5`` files with datasets ``x`` (int16
  [128, 128, 128, 4]) and ``y`` (float32 [4]).

The loader's workers only read (and for TFRecords inflate and check) each sample and deliver
the int16 counts as stored, channels last: half the bytes of float32 to pin and copy.
:class:`CosmoFlowTransform` then turns each batch, on the training device, into ``log(x + 1)``
(or ``x / mean(x)`` per sample with ``apply_log: false``, as the reference), channels first.
``crop_size`` keeps the leading ``crop_size^3`` corner (HDF5 reads only that hyperslab) and
``downsample`` averages ``downsample^3`` blocks (on the device, after the log), so the smoke
model runs on real-sized files. File lists are sorted, then cut to ``train_subset`` /
``eval_subset``; the loader's sampler gives each rank its own share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.core.config import DataConfig, PositiveInt, Range
from benchmarks.core.data import (
    h5_dataset,
    readonly_tensor,
    require_dir,
    select_files,
    synthetic_samples,
)
from benchmarks.core.errors import ConfigError, InputError
from benchmarks.cosmoflow.tfrecord import encode_example, iter_records, parse_example, write_records

VOLUME_EDGE = 128
CHANNELS = 4
TARGETS = 4
SAMPLE_SHAPE = (VOLUME_EDGE, VOLUME_EDGE, VOLUME_EDGE, CHANNELS)
SPLITS = {"train": "train", "eval": "validation"}
PATTERNS = {
    "tfrecord": ("*.tfrecord", "*.tfrecords", "*.tfrecord.gz", "*.tfrecord.gzip"),
    "hdf5": ("*.h5", "*.hdf5"),
}


@dataclass
class CosmoFlowDataConfig(DataConfig):
    """CosmoFlow's data keys: the file format and the (smoke-time) volume reduction.

    ``crop_size`` 0 keeps the whole 128^3 volume; ``downsample`` 1 keeps every voxel.
    """

    format: Literal["tfrecord", "hdf5"] = "tfrecord"
    apply_log: bool = True
    crop_size: Annotated[int, Range(low=0, high=VOLUME_EDGE)] = 0
    downsample: PositiveInt = 1


def input_edge(cfg: CosmoFlowDataConfig) -> int:
    """Edge of the cubes the loader delivers, after crop and downsampling."""
    crop = cfg.crop_size or VOLUME_EDGE
    if crop % cfg.downsample:
        raise ConfigError(f"config key 'data.downsample': must be a positive divisor of the "
                          f"crop edge {crop}, got {cfg.downsample}")
    return crop // cfg.downsample


class CosmoFlowDataset(Dataset):
    """(counts int16 [E, E, E, 4], target float32 [4]) per file, as stored, read on access;
    :class:`CosmoFlowTransform` makes the network's input of a batch of them."""

    def __init__(self, files: list[Path], fmt: str, crop_size: int = 0) -> None:
        self.files = files
        self.format = fmt
        self.crop = crop_size or VOLUME_EDGE

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.files[index]
        reader = read_tfrecord_sample if self.format == "tfrecord" else read_hdf5_sample
        counts, target = reader(path, self.crop)
        return counts, torch.from_numpy(target)


class CosmoFlowTransform:
    """A batch of int16 counts [B, E, E, E, 4] -> float32 volumes [B, 4, E', E', E'] on the
    device the batch is on: ``log(x + 1)`` (or ``x / mean(x)`` per sample), channels first,
    then the ``downsample^3`` block mean. Targets pass through."""

    def __init__(self, apply_log: bool = True, downsample: int = 1) -> None:
        self.apply_log = apply_log
        self.downsample = downsample

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        counts, targets = batch
        # One kernel converts and reorders; the rest works in place.
        volume = torch.empty(counts.shape[0], counts.shape[4], *counts.shape[1:4],
                             dtype=torch.float32, device=counts.device)
        volume.copy_(counts.permute(0, 4, 1, 2, 3))
        if self.apply_log:
            volume.log1p_()
        else:
            means = volume.mean(dim=(1, 2, 3, 4), keepdim=True)
            volume /= means.clamp_(min=torch.finfo(torch.float32).tiny)
        if self.downsample > 1:
            volume = torch.nn.functional.avg_pool3d(volume, self.downsample)
        return volume, targets


def read_tfrecord_sample(path: Path, crop: int = VOLUME_EDGE) -> tuple[torch.Tensor, np.ndarray]:
    """int16 counts [crop, crop, crop, 4] (a view of the inflated record: read-only) and float32
    targets [4] of one TFRecord file."""
    records = list(iter_records(path))
    if len(records) != 1:
        raise InputError(f"{path}: expected one record (one sample per file), "
                         f"found {len(records)}")
    try:
        example = parse_example(records[0])
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None
    for key in ("x", "y"):
        if key not in example:
            raise InputError(f"{path}: tf.train.Example has no feature '{key}'")
    x, y = example["x"], example["y"]
    if not isinstance(x, list) or len(x) != 1:
        raise InputError(f"{path}: feature 'x' must be a bytes_list with one value")
    expected = int(np.prod(SAMPLE_SHAPE)) * 2
    if len(x[0]) != expected:
        raise InputError(f"{path}: feature 'x' has {len(x[0])} bytes, expected {expected} "
                         f"(int16 {list(SAMPLE_SHAPE)})")
    if not isinstance(y, np.ndarray) or y.dtype != np.float32 or y.shape != (TARGETS,):
        raise InputError(f"{path}: feature 'y' must be a float_list of {TARGETS} values")
    counts = readonly_tensor(x[0], torch.int16).view(SAMPLE_SHAPE)
    return counts[:crop, :crop, :crop], y.copy()


def read_hdf5_sample(path: Path, crop: int = VOLUME_EDGE) -> tuple[torch.Tensor, np.ndarray]:
    """int16 counts [crop, crop, crop, 4] and float32 targets [4] of one HDF5 file."""
    try:
        with h5py.File(path, "r") as handle:
            x, y = h5_dataset(handle, "x", path), h5_dataset(handle, "y", path)
            if x.shape != SAMPLE_SHAPE or not np.issubdtype(x.dtype, np.integer):
                raise InputError(f"{path}: dataset 'x' is {x.dtype} {list(x.shape)}, expected "
                                 f"int16 {list(SAMPLE_SHAPE)}")
            if y.shape != (TARGETS,):
                raise InputError(f"{path}: dataset 'y' has shape {list(y.shape)}, expected "
                                 f"[{TARGETS}]")
            corner = () if crop == VOLUME_EDGE else (slice(0, crop),) * 3
            counts = torch.from_numpy(x[corner].astype(np.int16, copy=False))
            return counts, y[()].astype(np.float32)
    except OSError as err:
        raise InputError(f"{path}: cannot read HDF5 file ({err})") from None


def split_files(cfg: CosmoFlowDataConfig, split: str) -> list[Path]:
    """Sorted files of one split ("train" or "eval"), cut to the configured subset."""
    root = require_dir(cfg.data_dir, "CosmoFlow data_dir")
    folder = require_dir(root / SPLITS[split], f"CosmoFlow {SPLITS[split]} split")
    subset = cfg.train_subset if split == "train" else cfg.eval_subset
    return select_files(folder, PATTERNS[cfg.format], f"CosmoFlow {cfg.format}", subset,
                        f"data.{split}_subset")


def build_datasets(cfg: CosmoFlowDataConfig) -> tuple[CosmoFlowDataset, CosmoFlowDataset]:
    """Training and validation datasets; reads one sample of each now so that a wrong layout
    fails before training starts."""
    input_edge(cfg)
    datasets = tuple(CosmoFlowDataset(split_files(cfg, split), cfg.format, cfg.crop_size)
                     for split in ("train", "eval"))
    for dataset in datasets:
        dataset[0]
    return datasets


def build_transform(cfg: CosmoFlowDataConfig) -> CosmoFlowTransform:
    """The per-batch device transform the configured loader's batches need."""
    return CosmoFlowTransform(cfg.apply_log, cfg.downsample)


# --- synthetic data ---------------------------------------------------------------------------

SYNTH_BASE_LOG_DENSITY = 1.0
SYNTH_PARAMETER_GAIN = 1.0
SYNTH_STRUCTURE_GAIN = 0.6
SYNTH_STRUCTURE_CELLS = 32
SYNTH_LEVEL_STEP = 1 / 32
SYNTH_GZIP_LEVEL = 0
SYNTH_SLAB = 8  # planes drawn at a time: the temporaries stay in cache and off the mmap path


def synthesize(outdir: Path, samples: int, seed: int) -> None:
    """Write ``samples`` training and ``max(2, samples // 4)`` validation samples in BOTH layouts:
    ``<outdir>/{train,validation}/cosmo_NNNNNN.tfrecord`` (gzip) and ``.h5``, same content.

    Targets are uniform in [-0.9, 0.9]. Channel ``c`` holds Poisson counts whose log-density is
    ``1 + y[c]`` plus a smooth random structure shared by the channels, so the parameters are
    recoverable from the volume (learnable) but every sample looks different. The structure
    is quantized to steps of ``SYNTH_LEVEL_STEP`` (3% in density, far below the Poisson
    noise) so that the 8.4M counts of a sample come from a few hundred per-level tables
    (:class:`PoissonTables`), several times faster than a per-voxel Poisson sampler. The gzip
    streams store their data uncompressed (level 0): still the gzip TFRecord layout, but the
    deflate pass over 16 MiB per file would cost more than generating the sample.
    """
    splits = {"train": samples, "validation": max(2, samples // 4)}
    for _, folder, index, rng in synthetic_samples(Path(outdir), splits, "cosmoflow", seed):
        counts, target = synthetic_sample(rng)
        write_sample(folder / f"cosmo_{index:06d}", counts, target)


def synthetic_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One learnable (int16 counts [128,128,128,4], float32 targets [4]) pair."""
    target = rng.uniform(-0.9, 0.9, TARGETS).astype(np.float32)
    cells = rng.standard_normal((SYNTH_STRUCTURE_CELLS,) * 3, dtype=np.float32)
    structure = torch.nn.functional.interpolate(
        torch.from_numpy(cells)[None, None], size=(VOLUME_EDGE,) * 3, mode="trilinear",
        align_corners=False)[0, 0].numpy()
    structure *= SYNTH_STRUCTURE_GAIN / SYNTH_LEVEL_STEP
    lowest, highest = (int(np.rint(value)) for value in (structure.min(), structure.max()))
    structure_log = np.arange(lowest, highest + 1) * SYNTH_LEVEL_STEP
    log_rates = (SYNTH_BASE_LOG_DENSITY + SYNTH_PARAMETER_GAIN * target[:, None].astype(np.float64)
                 + structure_log[None, :])
    sampler = PoissonTables(np.exp(log_rates))
    counts = np.empty((*structure.shape, TARGETS), np.int16)
    for start in range(0, VOLUME_EDGE, SYNTH_SLAB):
        levels = np.rint(structure[start:start + SYNTH_SLAB]).astype(np.int32)
        levels -= lowest
        counts[start:start + SYNTH_SLAB] = sampler.draw(rng, levels)
    return counts, target


class PoissonTables:
    """Exact Poisson draws for a grid of rates ``rates[c, level]`` [C, L], by inversion.

    A count is the number of CDF values at or below a uniform ``u``. One random byte per count
    picks ``u``'s 1/256 bin; a table per (channel, level) gives the count wherever that bin
    holds no CDF step (about 96% of draws), the rest finish the search with the remaining bits
    of ``u`` drawn as a double. Several times faster than a per-value Poisson sampler.
    """

    def __init__(self, rates: np.ndarray) -> None:
        self.channels, self.levels = rates.shape
        self.cdf = _poisson_cdf(rates.ravel())
        edges = np.arange(257) / 256
        self.low = np.stack([np.searchsorted(row, edges[:-1], "right") for row in self.cdf])
        high = np.stack([np.searchsorted(row, edges[1:], "left") for row in self.cdf])
        self.table = np.where(self.low == high, self.low, -1).astype(np.int16).ravel()

    def draw(self, rng: np.random.Generator, levels: np.ndarray) -> np.ndarray:
        """int16 counts [*levels.shape, C] for integer ``levels`` in [0, L)."""
        # key = (row << 8) + byte with row = channel * L + level; np.repeat and one strided
        # add per channel are several times faster than broadcasting over the short last axis.
        keys = np.repeat(levels << 8, self.channels).reshape(*levels.shape, self.channels)
        for channel in range(1, self.channels):
            keys[..., channel] += channel * self.levels << 8
        keys += np.frombuffer(rng.bytes(keys.size), np.uint8).reshape(keys.shape)
        counts = self.table.take(keys, mode="clip")
        undecided = np.flatnonzero(counts < 0)
        pending = keys.ravel()[undecided]
        u = ((pending & 255) + rng.random(pending.size)) / 256
        found = self.low.ravel().take(pending)
        row_start = (pending >> 8) * self.cdf.shape[1]
        active = np.arange(pending.size)
        while active.size:  # ends: every row's last CDF value is 1 > u
            above = u[active] >= self.cdf.ravel().take(row_start[active] + found[active])
            active = active[above]
            found[active] += 1
        counts.ravel()[undecided] = found
        return counts


def _poisson_cdf(rates: np.ndarray) -> np.ndarray:
    """Poisson CDF [len(rates), K] up to a count K far beyond the largest rate; the last
    column is set to 1, folding the tail (below 1e-20) into the largest count."""
    size = int(rates.max() + 12 * np.sqrt(rates.max()) + 12)
    counts = np.arange(size)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(counts[1:]))])
    log_pmf = -rates[:, None] + counts * np.log(rates[:, None]) - log_factorial
    cdf = np.cumsum(np.exp(log_pmf), axis=1)
    cdf[:, -1] = 1.0
    return cdf


def write_sample(stem: Path, counts: np.ndarray, target: np.ndarray) -> None:
    """``stem``.tfrecord (gzip, one tf.train.Example) and ``stem``.h5 holding the same sample."""
    counts = np.ascontiguousarray(counts, dtype="<i2")
    record = encode_example({"x": memoryview(counts).cast("B"),
                             "y": target.astype(np.float32)})
    _atomic(stem.with_suffix(".tfrecord"),
            lambda tmp: write_records(tmp, [record], compresslevel=SYNTH_GZIP_LEVEL))

    def write_hdf5(tmp: Path) -> None:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("x", data=counts)
            handle.create_dataset("y", data=target.astype(np.float32))

    _atomic(stem.with_suffix(".h5"), write_hdf5)


def _atomic(path: Path, write) -> None:
    """Write through a temporary name so an interrupted run leaves no half-written sample."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
