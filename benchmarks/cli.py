"""The ``mlbench`` command: train, synth, table and perflogs; see docs/reference.md.

Benchmarks are looked up by name in :mod:`benchmarks.registry`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from benchmarks.core import rcp
from benchmarks.core.config import check_output_path, load_config
from benchmarks.core.errors import BenchmarkError, ConfigError
from benchmarks.core.memory import measure
from benchmarks.core.runner import BenchmarkSpec, add_train_arguments, train
from benchmarks.registry import BENCHMARKS, available_specs, load_spec
from perflogs_parsers.cli import register as register_perflogs

OPTIMIZER_STATE_BYTES = {"sgd": 4, "lars": 4, "adam": 8, "adamw": 8, "lamb": 8}
WEIGHT_AND_GRADIENT_BYTES = 4 + 4


def _train(args: argparse.Namespace) -> int:
    return train(load_spec(args.benchmark), args)


def _synth(args: argparse.Namespace) -> int:
    spec = load_spec(args.benchmark)
    samples = args.samples if args.samples else spec.default_samples
    if samples <= 0:
        raise ConfigError(f"--samples: must be positive, got {samples}")
    outdir = Path(args.outdir)
    check_output_path(outdir, "OUTDIR", folder=True)
    created = not outdir.exists()
    try:
        outdir.mkdir(exist_ok=True)
    except OSError as err:
        raise ConfigError(f"OUTDIR: cannot write {outdir} ({err.strerror})") from None
    try:
        spec.synthesize(outdir, samples, args.seed)
    except BaseException:
        if created:
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    print(f"wrote {spec.name} dataset ({samples} training samples) to {outdir}")
    return 0


def table_rows(specs: list[BenchmarkSpec]) -> list[dict[str, object]]:
    """One row per benchmark: parameters counted on the meta device, training memory =
    parameters x (fp32 weights + fp32 gradients + optimizer state) for the configured
    optimizer (activations not included)."""
    rows = []
    for spec in specs:
        config = load_config(spec.config_path(None), spec.schema)
        with torch.device("meta"):
            model = spec.build_model(config)
        parameters = sum(p.numel() for p in model.parameters())
        per_parameter = WEIGHT_AND_GRADIENT_BYTES + OPTIMIZER_STATE_BYTES[config.opt.name]
        rows.append({
            "benchmark": spec.name,
            "task": spec.problem,
            "model": spec.model_name,
            "dataset": spec.dataset,
            "parameters": parameters,
            "optimizer": config.opt.name,
            "training_memory_gib": round(parameters * per_parameter / 2**30, 2),
        })
    return rows


def _table(args: argparse.Namespace) -> int:
    if args.rcp:
        # The RCP rows come from mlperf-logging's tables alone: importing the benchmarks
        # (seconds) would be wasted.
        rows = rcp.table_rows()
    else:
        specs = available_specs()
        rows = table_rows(specs)
        if args.measure:
            device = args.device if args.device != "auto" else (
                "cuda" if torch.cuda.is_available() else "cpu")
            for spec, row in zip(specs, rows, strict=True):
                print(f"measuring {row['benchmark']} ({device}, batch {args.batch_size}) ...",
                      file=sys.stderr, flush=True)
                measured = measure(spec, device, args.batch_size)
                row["measured_gib"] = round(measured["peak_bytes"] / 2**30, 3)
                row["measured_at"] = f"{measured['scale']} {device} batch {args.batch_size}"
    columns = list(rows[0]) if rows else []
    if args.format == "csv":
        print(",".join(columns))
        for row in rows:
            print(",".join(f'"{row[c]}"' if "," in str(row[c]) else str(row[c])
                           for c in columns))
        return 0
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = [f"{row[c]:,}" if c == "parameters" else str(row[c]) for c in columns]
        print("| " + " | ".join(cells) + " |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlbench", description="Train the benchmarks, write their datasets, tabulate them "
        "and compare runs. Reference: docs/reference.md.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a benchmark until its quality target",
        epilog="exit codes: 0 target reached (or none set), 3 all epochs run without reaching "
               "it, 2 bad configuration or input, 1 any other failure")
    train.add_argument("benchmark", metavar="NAME", help=", ".join(BENCHMARKS))
    add_train_arguments(train)
    train.set_defaults(func=_train)

    synth = commands.add_parser("synth", help="write a small dataset in the real on-disk format")
    synth.add_argument("benchmark", metavar="NAME", help=", ".join(BENCHMARKS))
    synth.add_argument("outdir", metavar="OUTDIR",
                       help="dataset folder, created if absent (its parent must exist)")
    synth.add_argument("--samples", type=int, default=0,
                       help="training samples (default: the benchmark's smoke size)")
    synth.add_argument("--seed", type=int, default=0, help="random seed of the writer")
    synth.set_defaults(func=_synth)

    table = commands.add_parser("table", help="the benchmark table (parameters, memory)")
    table.add_argument("--format", choices=("md", "csv"), default="md")
    table.add_argument("--measure", action="store_true",
                       help="also measure peak training memory, activations included (smoke "
                            "scale on CPU, full scale on GPU)")
    table.add_argument("--batch-size", type=int, default=8, help="batch size for --measure")
    table.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    table.add_argument("--rcp", action="store_true",
                       help="the MLCommons reference convergence points instead: each "
                            "benchmark's RCP batch sizes and mean epochs (or samples) to "
                            "converge, from the installed mlperf-logging")
    table.set_defaults(func=_table)

    register_perflogs(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchmarkError as err:
        print(f"mlbench: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
