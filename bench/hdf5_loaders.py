"""CPU cost of the file loaders against the raw read of the same bytes, and what it means per GPU.

Each case times the loader's CPU side (what a DataLoader worker does per sample) against a
floor that reads the same data and nothing else:

- ``cosmoflow hdf5``: whole 128^3 x 4 int16 samples; floor: h5py reading ``x`` and ``y``;
- ``cosmoflow hdf5 smoke``: the smoke config's 32^3 crop (the floor reads the same hyperslab);
- ``cosmoflow tfrecord``: gzip TFRecords of the same samples (deflated at gzip's default
  level, as TensorFlow writes them); floor: reading the files and inflating them, once with
  the standard zlib and once with the inflater the loader uses (ISA-L where installed);
- ``deepcam hdf5``: whole 768 x 1152 x 16 samples with labels; floor: h5py reading both;
- ``deepcam hdf5 smoke``: the smoke config's 8x downsampling (the floor reads whole samples);
- ``bert hdf5``: the training stream over gzip shards; floor: h5py reading the same rows in
  the same blocks;
- ``alphafold2``: the feature pipeline (parse alignments and mmCIF, sample the MSA, crop, make
  the features) per chain; floor: reading the same files' bytes.

Conversions that used to run in the workers (int16 to float, log, normalisation, transposes,
label casts) now run once per batch on the training device (``Task.device_transform``); the
``transform ms`` column times that on ``--device`` for a batch of ``--batch`` samples, per
sample (on the CPU here; ``--device cuda`` on a GPU machine, see ``bench/gpu_loaders.sh``).

Files are read once before timing, so every case reads from the page cache: the numbers are
the CPU cost of reading and preparing a sample on one core, not the file system's speed.
Repetitions are interleaved and the fastest pass of each kept: on a shared machine it is the
one other processes disturbed least (``--median`` reports medians instead). ``cores/GPU`` is
the per-GPU training rate of a published MLPerf HPC v3.0 result (see ``GPU_RATES``) divided
by the loader's samples/s on one core: the cores each GPU needs to be fed at that rate.

    python bench/hdf5_loaders.py --samples 8 --repeats 5
    python bench/hdf5_loaders.py --cosmoflow-dir /data/cosmoflow --deepcam-dir /data/deepcam
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import torch
from torch.utils.data import default_collate

from benchmarks.alphafold2.data.alignments import MSA_FILES
from benchmarks.alphafold2.data.dataset import (
    ChainFilter,
    ChainReader,
    ProteinDataset,
    split_chains,
)
from benchmarks.alphafold2.data.synthetic_dataset import synthesize as synthesize_alphafold2
from benchmarks.alphafold2.data.transforms import FeatureConfig
from benchmarks.bert_large import data as bert
from benchmarks.cosmoflow import data as cosmoflow
from benchmarks.cosmoflow import tfrecord
from benchmarks.deepcam import data as deepcam

# Training samples/s per GPU in MLPerf HPC v3.0 (closed, NVIDIA, 256 x DGX H100 "Eos",
# mlcommons/hpc_results_v3.0 NVIDIA/results/eos_n256_ngc23.09_pytorch/weak/<benchmark>/
# result_0.txt, "tracked_stats" throughput of the epochs, per instance / GPUs per instance).
GPU_RATES = {
    "cosmoflow": 7160 / 32,  # one instance = 4 nodes x 8 H100, global batch 32
    "deepcam": 1300 / 16,  # one instance = 2048 ranks / 128 instances, global batch 128
}


@dataclass
class Case:
    """A loader and its floor, each a function making one pass over ``count`` samples."""

    name: str
    count: int
    floor: Callable[[], object]
    loader: Callable[[], object]
    gpu_rate: float | None = None
    transform: Callable[[], object] | None = None  # one batch through the device transform
    batch: int = 1


def over(count: int, read: Callable[[int], object]) -> Callable[[], object]:
    """A pass calling ``read(i)`` for every sample index."""
    return lambda: [read(index) for index in range(count)]


def raw_read(files: list[Path], keys: tuple[str, ...],
             selection: tuple[slice, ...] = ()) -> Callable[[int], object]:
    def read(index: int) -> object:
        with h5py.File(files[index], "r") as handle:
            return [handle[key][selection if key == keys[0] else ()] for key in keys]
    return read


def read_and_inflate(files: list[Path], inflater) -> Callable[[int], object]:
    def read(index: int) -> object:
        return inflater.decompress(files[index].read_bytes(), tfrecord.GZIP_WBITS)
    return read


def transform_pass(dataset, transform: Callable, batch: int,
                   device: torch.device) -> Callable[[], object]:
    """One collated batch through ``transform`` on ``device``, synchronised."""
    samples = default_collate([dataset[index % len(dataset)] for index in range(batch)])
    on_device = [tensor.to(device) for tensor in samples]

    def run() -> object:
        result = transform(on_device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return result
    return run


def cosmoflow_cases(root: Path, samples: int, batch: int, device: torch.device) -> list[Case]:
    h5_files = sorted((root / "train").glob("*.h5"))[:samples]
    tf_files = sorted((root / "train").glob("*.tfrecord"))[:samples]
    count, rate = len(h5_files), GPU_RATES["cosmoflow"]
    full = cosmoflow.CosmoFlowDataset(h5_files, "hdf5")
    smoke = cosmoflow.CosmoFlowDataset(h5_files, "hdf5", crop_size=32)
    transform = cosmoflow.CosmoFlowTransform()
    corner = (slice(0, 32),) * 3
    cases = [
        Case("cosmoflow hdf5", count, over(count, raw_read(h5_files, ("x", "y"))),
             over(count, full.__getitem__), rate,
             transform_pass(full, transform, batch, device), batch),
        Case("cosmoflow hdf5 smoke (32^3 crop)", count,
             over(count, raw_read(h5_files, ("x", "y"), corner)), over(count, smoke.__getitem__),
             None, transform_pass(smoke, transform, batch, device), batch),
    ]
    if len(tf_files) == count:
        records = cosmoflow.CosmoFlowDataset(tf_files, "tfrecord")
        tf_pass = over(count, records.__getitem__)
        cases += [
            Case("cosmoflow tfrecord (floor: read + zlib)", count,
                 over(count, read_and_inflate(tf_files, zlib)), tf_pass, rate),
            Case(f"cosmoflow tfrecord (floor: read + {tfrecord.inflater.__name__})", count,
                 over(count, read_and_inflate(tf_files, tfrecord.inflater)), tf_pass, rate),
        ]
    return cases


def deflate_tfrecords(folder: Path) -> None:
    """Rewrite the TFRecords of ``folder`` as deflated gzip streams (gzip's default level)."""
    for path in sorted(folder.glob("*.tfrecord")):
        records = [bytes(record) for record in tfrecord.iter_records(path)]
        tfrecord.write_records(path, records)


def deepcam_cases(root: Path, samples: int, batch: int, device: torch.device) -> list[Case]:
    files = sorted((root / "train").glob("*.h5"))[:samples]
    count = len(files)
    transform = deepcam.DeepCAMTransform(*deepcam.read_stats(root / "stats.h5"))
    floor = over(count, raw_read(files, (deepcam.DATA_KEY, deepcam.LABEL_KEY)))
    full = deepcam.DeepCAMDataset(files)
    smoke = deepcam.DeepCAMDataset(files, downsample=8)
    return [Case("deepcam hdf5", count, floor, over(count, full.__getitem__),
                 GPU_RATES["deepcam"], transform_pass(full, transform, batch, device), batch),
            Case("deepcam hdf5 smoke (8x downsample)", count, floor,
                 over(count, smoke.__getitem__), None,
                 transform_pass(smoke, transform, batch, device), batch)]


def bert_case(root: Path) -> Case:
    files = bert.list_shards(root / "training")
    stream = bert.BertTrainStream(files, rank=0, world_size=1, seed=0)
    count = stream.num_samples

    def floor() -> object:
        for shard in stream.shards:
            with h5py.File(shard.path, "r") as handle:
                for start in range(0, shard.num_samples, stream.block_rows):
                    stop = min(start + stream.block_rows, shard.num_samples)
                    [handle[name][start:stop] for name in bert.LAYOUT]

    return Case("bert hdf5 (training stream)", count, floor,
                lambda: list(itertools.islice(iter(stream), count)))


def alphafold2_case(root: Path) -> Case:
    reader = ChainReader(root, use_templates=True, max_template_hits=4, max_template_date=None)
    chains, _ = split_chains(root, ChainFilter(), reader.alignments)
    dataset = ProteinDataset(chains, reader, FeatureConfig(), train=True, seed=0)

    def read_bytes(index: int) -> object:
        chain = chains[index]
        texts = [reader.alignments.read(chain, name) for name in MSA_FILES]
        return texts, reader.mmcif_path(chain.partition("_")[0]).read_bytes()

    return Case("alphafold2 features (per chain)", len(chains),
                over(len(chains), read_bytes), over(len(chains), dataset.__getitem__))


def timed_pass(run: Callable[[], object], count: int) -> float:
    """Samples per second of one pass."""
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def measure(case: Case, repeats: int, pick: Callable = max) -> tuple[float, float]:
    """Samples/s of the floor and of the loader (``pick`` of the repetitions, interleaved)."""
    timed_pass(case.floor, case.count)  # warm the page cache
    floors, loaders = [], []
    for repeat in range(repeats):
        order = [(case.floor, floors), (case.loader, loaders)]
        for run, results in order if repeat % 2 == 0 else reversed(order):
            results.append(timed_pass(run, case.count))
    return pick(floors), pick(loaders)


def transform_ms(case: Case, repeats: int, pick: Callable = min) -> float | None:
    """Milliseconds per sample of the device transform, batched (``pick`` of the repeats)."""
    if case.transform is None:
        return None
    case.transform()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        case.transform()
        times.append(time.perf_counter() - started)
    return pick(times) / case.batch * 1e3


def write_datasets(scratch: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The datasets not given on the command line, synthesised into ``scratch``."""
    roots = {"cosmoflow": args.cosmoflow_dir, "deepcam": args.deepcam_dir,
             "bert": args.bert_dir, "alphafold2": args.alphafold2_dir}
    if roots["cosmoflow"] is None:
        roots["cosmoflow"] = scratch / "cosmoflow"
        cosmoflow.synthesize(roots["cosmoflow"], args.samples, seed=0)
        deflate_tfrecords(roots["cosmoflow"] / "train")
    if roots["deepcam"] is None:
        roots["deepcam"] = scratch / "deepcam"
        deepcam.synthesize(roots["deepcam"], args.samples, seed=0)
    if roots["bert"] is None:
        roots["bert"] = scratch / "bert"
        bert.synthesize(roots["bert"], 4096, seed=0)
    if roots["alphafold2"] is None:
        roots["alphafold2"] = scratch / "alphafold2"
        synthesize_alphafold2(roots["alphafold2"], 16, seed=0)
    return roots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cosmoflow-dir", type=Path, help="CosmoFlow data_dir (train/ inside)")
    parser.add_argument("--deepcam-dir", type=Path, help="DeepCAM data_dir (train/, stats.h5)")
    parser.add_argument("--bert-dir", type=Path, help="BERT data_dir (training/ inside)")
    parser.add_argument("--alphafold2-dir", type=Path, help="AlphaFold2 data_dir")
    parser.add_argument("--samples", type=int, default=8, help="files per case (default 8)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="device transform batch")
    parser.add_argument("--device", default="cpu", help="where the device transforms run")
    parser.add_argument("--median", action="store_true",
                        help="report medians of the repetitions instead of the fastest")
    parser.add_argument("--only", nargs="*", default=[],
                        help="case name prefixes to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="mlbench-loader-bench-") as scratch:
        roots = write_datasets(Path(scratch), args)
        cases = cosmoflow_cases(roots["cosmoflow"], args.samples, args.batch, device)
        cases += deepcam_cases(roots["deepcam"], args.samples, args.batch, device)
        cases += [bert_case(roots["bert"]), alphafold2_case(roots["alphafold2"])]
        cases = [case for case in cases
                 if not args.only or any(case.name.startswith(p) for p in args.only)]
        print(f"{'case':<42} {'floor/s':>8} {'loader/s':>8} {'ratio':>5} {'transform ms':>12} "
              f"{'+transform/s':>12} {'ratio':>5} {'GPU rate':>8} {'cores/GPU':>9}")
        for case in cases:
            floor, loader = measure(case, args.repeats, statistics.median if args.median else max)
            cost = transform_ms(case, args.repeats, statistics.median if args.median else min)
            both = 1 / (1 / loader + cost / 1e3) if cost is not None else loader
            rate = f"{case.gpu_rate:.0f}" if case.gpu_rate else "-"
            cores = f"{case.gpu_rate / loader:.2f}" if case.gpu_rate else "-"
            print(f"{case.name:<42} {floor:>8.1f} {loader:>8.1f} {loader / floor:>5.2f} "
                  f"{'-' if cost is None else f'{cost:.2f}':>12} {both:>12.1f} "
                  f"{both / floor:>5.2f} {rate:>8} {cores:>9}", flush=True)
    print(f"samples/s on one core from the page cache (loader/s = samples/s per core); ratio = "
          f"loader / floor; transform ms = device transform per sample on {device}; "
          "+transform/s = loader and transform on one core (a CPU run: the smoke scale); "
          "GPU rate = MLPerf HPC v3.0 samples/s per H100; cores/GPU = GPU rate / loader/s")


if __name__ == "__main__":
    main()
