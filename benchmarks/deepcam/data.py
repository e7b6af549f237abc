"""DeepCAM climate segmentation samples in the MLPerf HPC HDF5 layout, and a synthetic dataset.

Layout: ``<data_dir>/train/*.h5`` and ``<data_dir>/validation/*.h5``, one sample per file,
each with ``climate/data`` (float32 [768, 1152, 16], height x width x channels) and
``climate/labels_0`` ([768, 1152], classes 0 background, 1 atmospheric river, 2 tropical
cyclone); ``<data_dir>/stats.h5`` holds ``climate/{count,mean,sqmean,minval,maxval}`` over
the training set. The loader's workers only read each sample; :class:`DeepCAMTransform` then
normalises a batch on the training device with ``(x - minval) / (maxval - minval)``,
transposes it to channels first and makes the labels int64, as the reference ``CamDataset``
does per sample.

For smoke runs ``crop_height`` / ``crop_width`` keep the top-left corner (only that hyperslab
is read) and ``downsample`` averages ``downsample x downsample`` blocks of the data (in the
worker: 1/64 of the bytes to copy at 8x; the mean commutes with the normalisation) and takes
the label of the pixel at each block's centre. File lists are sorted, then cut to ``train_subset`` /
``eval_subset``; the loader's sampler gives each rank its own share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.core.config import DataConfig, PositiveInt, Range
from benchmarks.core.data import h5_dataset, require_dir, select_files, synthetic_samples
from benchmarks.core.errors import ConfigError, InputError
from benchmarks.deepcam.model import OUTPUT_STRIDE

HEIGHT, WIDTH, CHANNELS = 768, 1152, 16
NUM_CLASSES = 3
SPLITS = {"train": "train", "eval": "validation"}
PATTERNS = ("*.h5",)
DATA_KEY = "climate/data"
LABEL_KEY = "climate/labels_0"


@dataclass
class DeepCAMDataConfig(DataConfig):
    """DeepCAM's data keys: the statistics file and the (smoke-time) image reduction.

    ``stats_file`` is relative to ``data_dir`` unless absolute. A crop of 0 keeps the full
    height or width; ``downsample`` 1 keeps every pixel. The delivered height and width must
    be multiples of 16 (the network's output stride).
    """

    stats_file: str = "stats.h5"
    crop_height: Annotated[int, Range(low=0, high=HEIGHT)] = 0
    crop_width: Annotated[int, Range(low=0, high=WIDTH)] = 0
    downsample: PositiveInt = 1


def input_shape(cfg: DeepCAMDataConfig) -> tuple[int, int]:
    """(height, width) of the images the loader delivers, after crop and downsampling."""
    shape = []
    for key, full in (("crop_height", HEIGHT), ("crop_width", WIDTH)):
        crop = getattr(cfg, key) or full
        if crop % cfg.downsample:
            raise ConfigError(f"config key 'data.downsample': must be a positive divisor of "
                              f"{crop} (data.{key}), got {cfg.downsample}")
        if (crop // cfg.downsample) % OUTPUT_STRIDE:
            raise ConfigError(f"config key 'data.{key}': {crop} / downsample {cfg.downsample} "
                              f"must be a multiple of {OUTPUT_STRIDE}")
        shape.append(crop // cfg.downsample)
    return shape[0], shape[1]


def read_stats(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(minval, maxval) per channel from ``stats.h5``."""
    if not path.is_file():
        raise InputError(f"{path}: DeepCAM statistics file not found")
    try:
        with h5py.File(path, "r") as handle:
            values = []
            for key in ("climate/minval", "climate/maxval"):
                node = handle.get(key)
                if not isinstance(node, h5py.Dataset) or node.shape != (CHANNELS,):
                    raise InputError(f"{path}: needs dataset '{key}' of shape [{CHANNELS}]")
                values.append(node[()].astype(np.float32))
    except OSError as err:
        raise InputError(f"{path}: cannot read HDF5 file ({err})") from None
    minval, maxval = values
    if not np.all(maxval > minval):
        raise InputError(f"{path}: climate/maxval must exceed climate/minval in every channel")
    return minval, maxval


class DeepCAMDataset(Dataset):
    """(data float32 [H, W, 16], labels [H, W] as stored) per file, read on access;
    :class:`DeepCAMTransform` makes the network's input of a batch of them."""

    def __init__(self, files: list[Path], crop_height: int = 0, crop_width: int = 0,
                 downsample: int = 1) -> None:
        self.files = files
        self.crop = (crop_height or HEIGHT, crop_width or WIDTH)
        self.downsample = downsample

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        data, labels = read_sample(self.files[index], self.crop)
        factor = self.downsample
        if factor > 1:
            data = block_mean(data, factor)
            labels = np.ascontiguousarray(labels[factor // 2::factor, factor // 2::factor])
        return torch.from_numpy(data), torch.from_numpy(labels)


class DeepCAMTransform:
    """A batch of data [B, H, W, 16] and labels [B, H, W] -> min/max-normalised float32
    [B, 16, H, W] (channels-last in memory when ``channels_last``, else contiguous) and int64
    labels, on the device the batch is on."""

    def __init__(self, minval: np.ndarray, maxval: np.ndarray, channels_last: bool = False) -> None:
        self.shift = torch.from_numpy(minval.astype(np.float32))
        self.scale = torch.from_numpy((1.0 / (maxval - minval)).astype(np.float32))
        self.channels_last = channels_last

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        data, labels = batch
        if self.shift.device != data.device:
            self.shift, self.scale = self.shift.to(data.device), self.scale.to(data.device)
        if self.channels_last:
            # Normalised along the contiguous channel axis: the transposed view is channels-last.
            image = torch.sub(data, self.shift).mul_(self.scale).permute(0, 3, 1, 2)
        else:
            # The subtraction writes the channels-first copy: one pass over the batch less.
            image = torch.empty(data.shape[0], data.shape[3], *data.shape[1:3],
                                dtype=torch.float32, device=data.device)
            torch.sub(data.permute(0, 3, 1, 2), self.shift[:, None, None], out=image)
            image.mul_(self.scale[:, None, None])
        return image, labels.long()


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor x factor`` block of an [H, W, C] array, reducing along contiguous
    memory (rows first, then columns), which is several times faster than a pooling op on the
    transposed array. Averaging before the min/max normalisation gives the same result."""
    height, width, channels = data.shape
    rows = data.reshape(height // factor, factor, width * channels).sum(axis=1,
                                                                         dtype=np.float32)
    blocks = rows.reshape(height // factor, width // factor, factor, channels).sum(axis=2)
    blocks /= factor * factor
    return blocks


def read_sample(path: Path, crop: tuple[int, int] = (HEIGHT, WIDTH)) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """float32 data [h, w, 16] and integer labels [h, w] of the top-left ``crop`` of one file."""
    height, width = crop
    try:
        with h5py.File(path, "r") as handle:
            data, labels = h5_dataset(handle, DATA_KEY, path), h5_dataset(handle, LABEL_KEY, path)
            if data.shape != (HEIGHT, WIDTH, CHANNELS):
                raise InputError(f"{path}: '{DATA_KEY}' has shape {list(data.shape)}, expected "
                                 f"[{HEIGHT}, {WIDTH}, {CHANNELS}]")
            if labels.shape != (HEIGHT, WIDTH):
                raise InputError(f"{path}: '{LABEL_KEY}' has shape {list(labels.shape)}, "
                                 f"expected [{HEIGHT}, {WIDTH}]")
            corner = () if crop == (HEIGHT, WIDTH) else (slice(0, height), slice(0, width))
            values = data[corner].astype(np.float32, copy=False)
            classes = labels[corner]
    except OSError as err:
        raise InputError(f"{path}: cannot read HDF5 file ({err})") from None
    if classes.size and (classes.min() < 0 or classes.max() >= NUM_CLASSES):
        raise InputError(f"{path}: '{LABEL_KEY}' has values outside 0..{NUM_CLASSES - 1}")
    return values, classes


def split_files(cfg: DeepCAMDataConfig, split: str) -> list[Path]:
    """Sorted files of one split ("train" or "eval"), cut to the configured subset."""
    root = require_dir(cfg.data_dir, "DeepCAM data_dir")
    folder = require_dir(root / SPLITS[split], f"DeepCAM {SPLITS[split]} split")
    subset = cfg.train_subset if split == "train" else cfg.eval_subset
    return select_files(folder, PATTERNS, "DeepCAM HDF5", subset, f"data.{split}_subset")


def build_datasets(cfg: DeepCAMDataConfig) -> tuple[DeepCAMDataset, DeepCAMDataset]:
    """Training and validation datasets; reads one sample of each now so that a wrong layout
    fails before training starts (``stats.h5`` is checked by :func:`build_transform`)."""
    input_shape(cfg)
    datasets = tuple(
        DeepCAMDataset(split_files(cfg, split), cfg.crop_height, cfg.crop_width, cfg.downsample)
        for split in ("train", "eval"))
    for dataset in datasets:
        dataset[0]
    return datasets


def stats_path(cfg: DeepCAMDataConfig) -> Path:
    """``data.stats_file``, relative to ``data.data_dir`` unless absolute."""
    stats = Path(cfg.stats_file)
    return stats if stats.is_absolute() else require_dir(cfg.data_dir, "DeepCAM data_dir") / stats


def build_transform(cfg: DeepCAMDataConfig, channels_last: bool = False) -> DeepCAMTransform:
    """The per-batch device transform, with the training set's statistics."""
    return DeepCAMTransform(*read_stats(stats_path(cfg)), channels_last)


# --- synthetic data ---------------------------------------------------------------------------

# Per-channel physical offset and spread, so that min/max normalisation has work to do
# (pressures near 1e5 Pa next to humidities near 1e-2).
SYNTH_OFFSETS = np.array([1.0e5, 2.8e2, 1.0e-2, 5.0, 1.0e5, 2.6e2, 3.0e1, 0.0,
                          1.0e3, 2.5e2, 1.0e-3, 1.0e1, 5.0e4, 2.9e2, 0.5, 1.0e2], np.float32)
SYNTH_SPREADS = np.array([1.0e3, 1.0e1, 5.0e-3, 2.0, 5.0e2, 8.0, 1.0e1, 1.0,
                          1.0e2, 5.0, 5.0e-4, 3.0, 1.0e3, 6.0, 0.2, 2.0e1], np.float32)
RIVER_CHANNELS = (0, 2, 6)
CYCLONE_CHANNELS = (1, 4, 12)
SYNTH_SIGNAL = 3.0
SYNTH_SMOOTH_NOISE = 0.5
SYNTH_PIXEL_NOISE = 0.5
SYNTH_SMOOTH_GRID = (12, 18)
SYNTH_BLOCK_ROWS = 32  # rows finished at a time, so each block is worked on in cache
_INT8_STD = float(np.arange(-128, 128).std())


def synthesize(outdir: Path, samples: int, seed: int) -> None:
    """Write ``samples`` training and ``max(2, samples // 4)`` validation files
    ``<outdir>/{train,validation}/data-NNNNNN.h5`` and ``<outdir>/stats.h5`` over the training
    files, in the real layout and sizes.

    Each image holds one or two elongated "atmospheric rivers" (class 1) and one to three
    round "cyclones" (class 2) on background; three channels rise inside rivers, three others
    fall inside cyclones, under smooth (Gaussian, bilinearly upsampled) and pixel (uniform,
    one random byte each: several times cheaper to draw than Gaussian) noise, so the classes
    are learnable.
    """
    outdir = Path(outdir)
    splits = {"train": samples, "validation": max(2, samples // 4)}
    accumulator = _StatsAccumulator()
    for split, folder, index, rng in synthetic_samples(outdir, splits, "deepcam", seed):
        data, labels = synthetic_sample(rng)
        write_sample(folder / f"data-{index:06d}.h5", data, labels)
        if split == "train":
            accumulator.add(data)
    accumulator.write(outdir / "stats.h5")


def synthetic_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One learnable (float32 data [768, 1152, 16], int32 labels [768, 1152]) pair.

    ``data = offset + spread * (smooth + pixel noise + signal)`` per channel, written in one
    buffer: the smooth part as two small matrix products (bilinear upsampling is separable,
    and its weights sum to 1, so offset and spread apply to the coarse grid), then noise and
    signal block by block.
    """
    labels = synthetic_labels(rng)
    coarse = rng.standard_normal((*SYNTH_SMOOTH_GRID, CHANNELS), dtype=np.float32)
    coarse = SYNTH_OFFSETS + SYNTH_SPREADS * SYNTH_SMOOTH_NOISE * coarse
    rows = _linear_upsampling(SYNTH_SMOOTH_GRID[0], HEIGHT)
    cols = _linear_upsampling(SYNTH_SMOOTH_GRID[1], WIDTH)
    along_cols = np.einsum("wj,ijc->iwc", cols, coarse).reshape(SYNTH_SMOOTH_GRID[0], -1)
    data = np.empty((HEIGHT, WIDTH, CHANNELS), np.float32)
    np.matmul(rows, along_cols, out=data.reshape(HEIGHT, -1))
    noise_scale = SYNTH_SPREADS * np.float32(SYNTH_PIXEL_NOISE / _INT8_STD)
    signal = {1: (RIVER_CHANNELS, SYNTH_SIGNAL), 2: (CYCLONE_CHANNELS, -SYNTH_SIGNAL)}
    for start in range(0, HEIGHT, SYNTH_BLOCK_ROWS):
        block = data[start:start + SYNTH_BLOCK_ROWS]
        noise = np.frombuffer(rng.bytes(block.size), np.int8).reshape(block.shape)
        block += noise * noise_scale
        for label, (channels, gain) in signal.items():
            inside = labels[start:start + SYNTH_BLOCK_ROWS] == label
            for channel in channels:
                block[..., channel] += np.float32(gain) * SYNTH_SPREADS[channel] * inside
    return data, labels


def synthetic_labels(rng: np.random.Generator) -> np.ndarray:
    """int32 [768, 1152]: 1-2 rotated ellipses of class 1, then 1-3 discs of class 2 on top,
    each evaluated only over its bounding box."""
    labels = np.zeros((HEIGHT, WIDTH), np.int32)
    for _ in range(rng.integers(1, 3)):
        centre_r, centre_c = rng.uniform(100, HEIGHT - 100), rng.uniform(150, WIDTH - 150)
        angle = rng.uniform(0, np.pi)
        length, width = rng.uniform(250, 450), rng.uniform(60, 110)
        cos, sin = np.cos(angle), np.sin(angle)
        half_rows = np.hypot(length * sin, width * cos)
        half_cols = np.hypot(length * cos, width * sin)
        box, r, c = _box(centre_r, centre_c, half_rows, half_cols)
        along = (c - centre_c) * cos + (r - centre_r) * sin
        across = -(c - centre_c) * sin + (r - centre_r) * cos
        labels[box][(along / length) ** 2 + (across / width) ** 2 <= 1] = 1
    for _ in range(rng.integers(1, 4)):
        centre_r, centre_c = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
        radius = rng.uniform(70, 140)
        box, r, c = _box(centre_r, centre_c, radius, radius)
        labels[box][(r - centre_r) ** 2 + (c - centre_c) ** 2 <= radius ** 2] = 2
    return labels


def _box(centre_r: float, centre_c: float, half_rows: float,
         half_cols: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The image slice around a shape and its pixel coordinates (a column and a row vector)."""
    top, bottom = max(int(centre_r - half_rows), 0), min(int(centre_r + half_rows) + 2, HEIGHT)
    left, right = max(int(centre_c - half_cols), 0), min(int(centre_c + half_cols) + 2, WIDTH)
    r = np.arange(top, bottom, dtype=np.float32)[:, None]
    c = np.arange(left, right, dtype=np.float32)[None, :]
    return (slice(top, bottom), slice(left, right)), r, c


def _linear_upsampling(size: int, full: int) -> np.ndarray:
    """[full, size] weights of 1-D linear upsampling, exactly as ``F.interpolate`` (linear,
    ``align_corners=False``) computes it: applied along both axes it is bilinear upsampling."""
    identity = torch.eye(size)[None]
    weights = torch.nn.functional.interpolate(identity, size=full, mode="linear",
                                              align_corners=False)
    return weights[0].T.contiguous().numpy()


def write_sample(path: Path, data: np.ndarray, labels: np.ndarray) -> None:
    """One ``climate/data`` + ``climate/labels_0`` file, written under a temporary name."""
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as handle:
        group = handle.create_group("climate")
        group.create_dataset("data", data=np.asarray(data, np.float32))
        group.create_dataset("labels_0", data=labels)
    tmp.replace(path)


class _StatsAccumulator:
    """Per-channel count, mean, mean of squares, min and max over the training files."""

    def __init__(self) -> None:
        self.count = 0
        self.sums = np.zeros(CHANNELS, np.float64)
        self.squares = np.zeros(CHANNELS, np.float64)
        self.minval = np.full(CHANNELS, np.inf, np.float64)
        self.maxval = np.full(CHANNELS, -np.inf, np.float64)

    def add(self, data: np.ndarray) -> None:
        """Reduce ``data`` [..., 16] viewed as rows of 64 pixels (numpy vectorises along the
        long axis), block by block while a block is in cache; float32 block sums are added
        in float64."""
        wide = data.reshape(-1, 64 * CHANNELS)
        step = SYNTH_BLOCK_ROWS * WIDTH // 64
        partials = [(block.sum(axis=0), np.square(block).sum(axis=0), block.min(axis=0),
                     block.max(axis=0))
                    for block in (wide[i:i + step] for i in range(0, len(wide), step))]
        sums, squares, mins, maxs = (np.stack(part).reshape(-1, CHANNELS)
                                     for part in zip(*partials, strict=True))
        pixels = data.size // CHANNELS
        self.count += 1
        self.sums += sums.sum(axis=0, dtype=np.float64) / pixels
        self.squares += squares.sum(axis=0, dtype=np.float64) / pixels
        self.minval = np.minimum(self.minval, mins.min(axis=0))
        self.maxval = np.maximum(self.maxval, maxs.max(axis=0))

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as handle:
            group = handle.create_group("climate")
            group["count"] = self.count
            group["mean"] = (self.sums / max(self.count, 1)).astype(np.float32)
            group["sqmean"] = (self.squares / max(self.count, 1)).astype(np.float32)
            group["minval"] = self.minval.astype(np.float32)
            group["maxval"] = self.maxval.astype(np.float32)
        tmp.replace(path)
