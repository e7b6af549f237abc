"""Read throughput of the CosmoFlow and DeepCAM HDF5 loaders against a raw h5py read.

For each loader the floor is ``h5py`` reading the same datasets of the same files into
memory and nothing else; the loader adds what training needs (CosmoFlow: int16 -> float32,
``log(x + 1)``, channels first; DeepCAM: min/max normalisation, channels first, int64
labels). Cases:

- ``cosmoflow hdf5``: whole 128^3 x 4 samples;
- ``cosmoflow hdf5 smoke``: the smoke config's 32^3 crop (the floor reads the same hyperslab);
- ``cosmoflow tfrecord``: the TFRecord reader (gunzip, CRC32C, protobuf) on the same samples,
  against the raw h5py read of their HDF5 copies;
- ``deepcam hdf5``: whole 768 x 1152 x 16 samples with labels;
- ``deepcam hdf5 smoke``: the smoke config's 8x downsampling (the floor reads whole samples).

Files are read once before timing, so every case reads from the page cache: the numbers are
the CPU cost of reading and preparing a sample on one core, not the file system's speed.
Repetitions are interleaved and medians compared. Without ``--cosmoflow-dir`` /
``--deepcam-dir`` a small synthetic dataset in the real layouts is written to a temporary
folder; its TFRecords (stored uncompressed inside gzip by the writer, for speed) are deflated
at gzip's default level, as TensorFlow writes them, so the TFRecord case pays a real gunzip.

    python bench/hdf5_loaders.py --samples 8 --repeats 5
    python bench/hdf5_loaders.py --cosmoflow-dir /data/cosmoflow --deepcam-dir /data/deepcam
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.cosmoflow import data as cosmoflow
from benchmarks.cosmoflow import tfrecord
from benchmarks.deepcam import data as deepcam


@dataclass
class Case:
    """A loader and its floor, each a function reading sample ``i`` of ``files``."""

    name: str
    files: list[Path]
    floor: Callable[[int], object]
    loader: Callable[[int], object]


def raw_read(files: list[Path], keys: tuple[str, ...],
             selection: tuple[slice, ...] = ()) -> Callable[[int], object]:
    def read(index: int) -> object:
        with h5py.File(files[index], "r") as handle:
            return [handle[key][selection if key == keys[0] else ()] for key in keys]
    return read


def cosmoflow_cases(root: Path, samples: int) -> list[Case]:
    h5_files = sorted((root / "train").glob("*.h5"))[:samples]
    tf_files = sorted((root / "train").glob("*.tfrecord"))[:samples]
    full = cosmoflow.CosmoFlowDataset(h5_files, "hdf5")
    smoke = cosmoflow.CosmoFlowDataset(h5_files, "hdf5", crop_size=32)
    tfrecord = cosmoflow.CosmoFlowDataset(tf_files, "tfrecord")
    corner = (slice(0, 32),) * 3
    cases = [Case("cosmoflow hdf5", h5_files, raw_read(h5_files, ("x", "y")), full.__getitem__),
             Case("cosmoflow hdf5 smoke (32^3 crop)", h5_files,
                  raw_read(h5_files, ("x", "y"), corner), smoke.__getitem__)]
    if len(tf_files) == len(h5_files):
        cases.append(Case("cosmoflow tfrecord (floor: raw hdf5)", h5_files,
                          raw_read(h5_files, ("x", "y")), tfrecord.__getitem__))
    return cases


def deflate_tfrecords(folder: Path) -> None:
    """Rewrite the TFRecords of ``folder`` as deflated gzip streams (gzip's default level)."""
    for path in sorted(folder.glob("*.tfrecord")):
        records = [bytes(record) for record in tfrecord.iter_records(path)]
        tfrecord.write_records(path, records)


def deepcam_cases(root: Path, samples: int) -> list[Case]:
    files = sorted((root / "train").glob("*.h5"))[:samples]
    minval, maxval = deepcam.read_stats(root / "stats.h5")
    floor = raw_read(files, (deepcam.DATA_KEY, deepcam.LABEL_KEY))
    full = deepcam.DeepCAMDataset(files, minval, maxval)
    smoke = deepcam.DeepCAMDataset(files, minval, maxval, downsample=8)
    return [Case("deepcam hdf5", files, floor, full.__getitem__),
            Case("deepcam hdf5 smoke (8x downsample)", files, floor, smoke.__getitem__)]


def sample_bytes(case: Case) -> int:
    parts = case.floor(0)
    return sum(np.asarray(part).nbytes for part in parts)


def timed_pass(read: Callable[[int], object], count: int) -> float:
    """Samples per second of one pass over ``count`` samples."""
    started = time.perf_counter()
    for index in range(count):
        read(index)
    return count / (time.perf_counter() - started)


def measure(case: Case, repeats: int) -> tuple[float, float]:
    """Median samples/s of the floor and of the loader, repetitions interleaved."""
    count = len(case.files)
    timed_pass(case.floor, count)  # warm the page cache
    floors, loaders = [], []
    for repeat in range(repeats):
        order = [(case.floor, floors), (case.loader, loaders)]
        for read, results in order if repeat % 2 == 0 else reversed(order):
            results.append(timed_pass(read, count))
    return statistics.median(floors), statistics.median(loaders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cosmoflow-dir", type=Path, help="CosmoFlow data_dir (train/ inside)")
    parser.add_argument("--deepcam-dir", type=Path, help="DeepCAM data_dir (train/, stats.h5)")
    parser.add_argument("--samples", type=int, default=8, help="files per case (default 8)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="mlbench-hdf5-bench-") as scratch:
        cosmoflow_dir, deepcam_dir = args.cosmoflow_dir, args.deepcam_dir
        if cosmoflow_dir is None:
            cosmoflow_dir = Path(scratch) / "cosmoflow"
            cosmoflow.synthesize(cosmoflow_dir, args.samples, seed=0)
            deflate_tfrecords(cosmoflow_dir / "train")
        if deepcam_dir is None:
            deepcam_dir = Path(scratch) / "deepcam"
            deepcam.synthesize(deepcam_dir, args.samples, seed=0)
        cases = cosmoflow_cases(cosmoflow_dir, args.samples)
        cases += deepcam_cases(deepcam_dir, args.samples)
        print(f"{'case':<38} {'MB/sample':>9} {'raw h5py/s':>11} {'loader/s':>9} "
              f"{'loader MB/s':>11} {'ratio':>6}")
        for case in cases:
            floor, loader = measure(case, args.repeats)
            megabytes = sample_bytes(case) / 1e6
            print(f"{case.name:<38} {megabytes:>9.1f} {floor:>11.1f} {loader:>9.1f} "
                  f"{loader * megabytes:>11.0f} {loader / floor:>6.2f}")
    print("samples/s on one core from the page cache; ratio = loader / raw h5py "
          "(1.0 = the loader costs nothing beyond the read)")


if __name__ == "__main__":
    main()
