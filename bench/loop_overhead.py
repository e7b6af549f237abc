"""How much does the shared training loop cost over the bare minimum?

Three loops train ResNet50 on the same in-memory batches:

- ``bare``: forward, loss, backward, optimizer step, nothing else (the floor);
- ``core``: ``benchmarks.core.loop.Trainer`` as every benchmark runs it (losses kept on the
  device, one host sync per window, MLPerf logging off);
- ``reference``: the way torchvision's reference ``train.py`` writes it (a metric logger
  fed with ``loss.item()`` and top-1/top-5 accuracy every step).

Repetitions are interleaved (the order rotates) and the medians compared, because timings on
a shared machine drift; the table gives samples/s and each loop's ratio to ``bare``.

    python bench/loop_overhead.py                    # smoke-size and 224x224 ResNet50
    python bench/loop_overhead.py --sizes smoke --repeats 7 --steps 30
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import defaultdict, deque

import torch
from torch import nn

from benchmarks.core import mllog
from benchmarks.core.config import ConfigSchema, build_config
from benchmarks.core.distributed import DistEnv
from benchmarks.core.loop import Task, Trainer
from benchmarks.core.metrics import TopKAccuracy
from benchmarks.core.optim import build_scheduler
from benchmarks.core.runner import keep_freed_memory
from benchmarks.resnet50.model import ResNetModelConfig, build_resnet

CPU = torch.device("cpu")
SIZES = {
    # name: (model config, image size, batch size, classes)
    "smoke": (ResNetModelConfig(layers=[1, 1, 1, 1], base_width=8, small_input_stem=True), 32,
              32, 10),
    "224": (ResNetModelConfig(), 224, 4, 1000),
}


def make_batches(image_size: int, batch: int, classes: int, steps: int) -> list[tuple]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, image_size, image_size, generator=generator),
             torch.randint(0, classes, (batch,), generator=generator)) for _ in range(steps)]


def bare_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> None:
    criterion = nn.CrossEntropyLoss()
    model.train()
    for images, labels in batches:
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def core_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> None:
    config = build_config({"training": {"n_epochs": 1, "eval_every": 1000}}, ConfigSchema())
    scheduler = build_scheduler(optimizer, config.lr_schedule, 0.1, len(batches), len(batches))
    task = Task(model=model, train_loader=batches, eval_loader=[], loss_fn=nn.CrossEntropyLoss(),
                metric=TopKAccuracy(1), train_samples=0, eval_samples=0)
    Trainer(task, model, optimizer, scheduler, config, DistEnv(), CPU,
            mllog.MLLogger(enabled=False)).run()


class SmoothedValue:
    """torchvision references' meter: a window and a global average."""

    def __init__(self, window: int = 20) -> None:
        self.deque: deque = deque(maxlen=window)
        self.total, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n


def reference_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> None:
    criterion = nn.CrossEntropyLoss()
    meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
    model.train()
    for images, labels in batches:
        start = time.time()
        output = model(images)
        loss = criterion(output, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        top5 = output.topk(min(5, output.shape[1]), dim=1).indices
        correct = top5.eq(labels[:, None])
        acc1 = correct[:, :1].float().sum() * 100 / labels.numel()
        acc5 = correct.float().sum() * 100 / labels.numel()
        meters["loss"].update(loss.item())
        meters["lr"].update(optimizer.param_groups[0]["lr"])
        meters["acc1"].update(acc1.item(), n=labels.numel())
        meters["acc5"].update(acc5.item(), n=labels.numel())
        meters["img/s"].update(labels.numel() / (time.time() - start))


LOOPS = {"bare": bare_loop, "core": core_loop, "reference": reference_loop}


def measure(size: str, repeats: int, steps: int) -> dict[str, list[float]]:
    model_cfg, image_size, batch, classes = SIZES[size]
    batches = make_batches(image_size, batch, classes, steps)
    model = build_resnet(model_cfg, classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    bare_loop(model, optimizer, batches[:2])
    # Every run starts from the same weights and momentum, so the loops do identical
    # arithmetic (and none inherits, say, denormal weights from another's run).
    start_model = copy.deepcopy(model.state_dict())
    start_optimizer = copy.deepcopy(optimizer.state_dict())
    rates: dict[str, list[float]] = {name: [] for name in LOOPS}
    names = list(LOOPS)
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            model.load_state_dict(start_model)
            optimizer.load_state_dict(start_optimizer)
            started = time.perf_counter()
            LOOPS[name](model, optimizer, batches)
            rates[name].append(steps * batch / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `mlbench train` does, for every loop alike
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved repeats x {args.steps} steps, medians")
    print("| size | loop | samples/s (median) | ratio to bare |")
    print("|---|---|---|---|")
    for size in args.sizes:
        rates = measure(size, args.repeats, args.steps)
        floor = statistics.median(rates["bare"])
        for name, values in rates.items():
            median = statistics.median(values)
            print(f"| {size} | {name} | {median:.1f} | {median / floor:.3f} |", flush=True)


if __name__ == "__main__":
    main()
