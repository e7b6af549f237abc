"""Measured peak training memory of a benchmark at a given batch size, activations included.

``mlbench table --measure`` puts this next to the computed figure (parameters x (weights +
gradients + optimizer state)), which leaves activations out. Each measurement runs in a
fresh spawned process: it writes a small synthetic dataset in the benchmark's real format,
builds the benchmark's task exactly as a run would (smoke config on the CPU, full config on
a GPU), and runs a few optimizer steps on one real batch.

- GPU: ``torch.cuda.max_memory_allocated`` over the steps (weights, gradients, optimizer
  state, activations and the batch).
- CPU: the growth of the process's peak resident set over the steps (the kernel's VmHWM,
  reset just before them) plus the bytes of the weights that existed before them.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.core.config import GlobalContext
from benchmarks.core.data import seed_everything, to_device
from benchmarks.core.distributed import DistEnv
from benchmarks.core.optim import build_optimizer

MEASURED_STEPS = 3


def measure(name: str, device: str, batch_size: int) -> dict[str, Any]:
    """Peak bytes of ``MEASURED_STEPS`` training steps of benchmark ``name``, in a child."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_measure_in_child, (name, device, batch_size))


def _measure_in_child(name: str, device_name: str, batch_size: int) -> dict[str, Any]:
    from benchmarks.cli import load_spec

    spec = load_spec(name)
    device = torch.device(device_name)
    scale = "full" if device.type == "cuda" else "smoke"
    with tempfile.TemporaryDirectory(prefix=f"mlbench-measure-{name}-") as data_dir:
        spec.synthesize(Path(data_dir), spec.default_samples, 0)
        context = GlobalContext()
        context.reset()
        config = context.load(spec.config_path(None if scale == "full" else "smoke"),
                              spec.schema,
                              [f"data.data_dir={data_dir}", f"data.local_batch_size={batch_size}",
                               f"data.global_batch_size={batch_size}",
                               "data.gradient_accumulation=1", "data.num_workers=0"])
        config.data.eval_batch_size = batch_size
        context.dist, context.device = DistEnv(), device
        seed_everything(0)
        task = spec.build_task(context)
        batch = to_device(next(iter(task.train_loader)), device)
        inputs, targets = task.device_transform(batch) if task.device_transform else batch
        model = task.model.to(device).train()
        optimizer = build_optimizer(model, config.opt, config.opt.lr)
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                  enabled=config.training.amp)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            resident_before = _reset_peak_resident()
        for _ in range(MEASURED_STEPS):
            with autocast:
                outputs = model(**inputs) if isinstance(inputs, dict) else model(inputs)
                loss = task.loss_fn(outputs, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:
            peak = _status_kib("VmHWM") * 1024 - resident_before + weights
    return {"benchmark": name, "scale": scale, "device": device.type,
            "batch_size": batch_size, "peak_bytes": int(peak)}


def _reset_peak_resident() -> int:
    """Reset the kernel's peak-RSS counter (Linux clear_refs 5); return the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")
