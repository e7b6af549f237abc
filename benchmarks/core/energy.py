"""Joules a training run takes, read from the node's own counters and summed over the job.

Sources, in order of preference (the first one any rank finds is the job's source):

- ``nvml``: each GPU's total-energy counter (Volta and newer), read by the rank that trains
  on it; the rank's CUDA device is matched to its NVML device by PCI bus id, so
  ``CUDA_VISIBLE_DEVICES`` renumbering cannot make a rank read another rank's GPU;
- ``rapl``: Linux powercap RAPL package zones (``*-rapl:N``) and their ``dram`` subzones,
  read once per node (local rank 0); core and uncore subzones are parts of the package and
  ``psys`` covers the whole platform, so both are left out to count nothing twice;
- ``cray_pm``: HPE Cray ``pm_counters`` (``energy`` for the node, ``accelN_energy`` for its
  GPUs, which are parts of the node), once per node.

Without any of them the energy is unknown (None) with the reason, never zero. A counter that
can wrap (RAPL wraps at ``max_energy_range_uj``) is read by a background thread every
``MLBENCH_ENERGY_INTERVAL_S`` seconds (default 1), so that no wrap is missed between reads.
Each scope (``run``: run_start to run_stop, ``epoch``: one epoch's training steps) ends with
one all-reduce of the per-domain joules, a count of readers whose counters failed, and the
scope's training samples; rank 0 logs an ``mlbench_energy`` event with the totals.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from benchmarks.core import mllog
from benchmarks.core.distributed import DistEnv, all_reduce_sum
from benchmarks.core.errors import ConfigError
from benchmarks.core.placement import cuda_pci_bus_id

POWERCAP_ROOT_ENV = "MLBENCH_POWERCAP_ROOT"
PM_COUNTERS_ROOT_ENV = "MLBENCH_PM_COUNTERS_ROOT"
INTERVAL_ENV = "MLBENCH_ENERGY_INTERVAL_S"
DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
DEFAULT_PM_COUNTERS_ROOT = "/sys/cray/pm_counters"
#: RAPL's smallest range, 2^32 uJ (4.3 kJ), takes over 4 kW to wrap within this interval.
DEFAULT_INTERVAL_S = 1.0

NVML, RAPL, CRAY_PM = "nvml", "rapl", "cray_pm"
SOURCES = (NVML, RAPL, CRAY_PM)
SOURCE_NAMES = {NVML: "NVML", RAPL: "powercap RAPL", CRAY_PM: "Cray pm_counters"}

_RAPL_ZONE = re.compile(r"^[a-z]+-rapl:(\d+)$")
_CRAY_ACCEL = re.compile(r"^(accel\d+)_energy$")


class CounterUnavailable(Exception):
    """This process cannot read a source; the message says why, in one line."""


@dataclass(frozen=True)
class Counter:
    """One energy counter. ``read()`` gives joules; the counter restarts from 0 after
    ``wrap_j`` (None: it never wraps). ``in_total`` is False for a domain that another domain
    already contains (a Cray accelerator is part of its node)."""

    domain: str
    read: Callable[[], float]
    wrap_j: float | None = None
    in_total: bool = True


@dataclass(frozen=True)
class EnergyReading:
    """One scope's result on every rank (rank 0 also logs it). ``joules`` is None when
    unknown, and ``reason`` then says why."""

    scope: str
    joules: float | None
    domains: dict[str, float]
    duration_s: float
    samples: float
    reason: str = ""


# ---- the three sources ---------------------------------------------------------------------

def nvml_counters(device: torch.device) -> list[Counter]:
    """The total-energy counter (mJ, 64 bit) of the GPU this rank trains on."""
    if device.type != "cuda":
        raise CounterUnavailable("the run is not on a GPU")
    try:
        import pynvml
    except ImportError:
        raise CounterUnavailable("pynvml is not installed (pip install nvidia-ml-py)") from None
    bus_id = cuda_pci_bus_id(device)
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError as err:
        raise CounterUnavailable(f"GPU {bus_id}: {err}") from None

    def read() -> float:
        try:
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3
        except pynvml.NVMLError as err:
            raise OSError(f"GPU {bus_id}: {err}") from None

    return [Counter("gpu", read)]


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError:
        raise CounterUnavailable(f"{path}: permission denied (RAPL counters are root-only "
                                 "unless the site grants read access)") from None
    except OSError as err:
        raise CounterUnavailable(f"{path}: {err.strerror}") from None


def _rapl_counter(zone: Path, domain: str) -> Counter:
    energy = zone / "energy_uj"
    try:
        wrap_j = int(_read_text(zone / "max_energy_range_uj")) / 1e6
        int(_read_text(energy))
    except ValueError:
        raise CounterUnavailable(f"{zone}: energy_uj or max_energy_range_uj is not an integer"
                                 ) from None
    return Counter(domain, lambda: int(energy.read_text()) / 1e6, wrap_j)


def rapl_counters(root: Path) -> list[Counter]:
    """Package zones ``<root>/*-rapl:N`` named ``package...`` and their ``dram`` subzones."""
    if not root.is_dir():
        raise CounterUnavailable(f"{root} does not exist")
    counters = []
    for zone in sorted(root.iterdir()):
        if not _RAPL_ZONE.match(zone.name):
            continue
        package = _read_text(zone / "name")
        if not package.startswith("package"):
            continue
        counters.append(_rapl_counter(zone, package))
        for sub in sorted(zone.parent.glob(f"{zone.name}:*")):
            if (sub / "name").is_file() and _read_text(sub / "name") == "dram":
                counters.append(_rapl_counter(sub, f"{package}/dram"))
    if not counters:
        raise CounterUnavailable(f"{root} has no RAPL package zone")
    return counters


def _cray_joules(path: Path) -> float:
    """A pm_counters energy file: ``NNN J`` (newer firmware adds a timestamp: ``NNN J T us``)."""
    fields = path.read_text().split()
    if len(fields) < 2 or fields[1] != "J" or not fields[0].isdigit():
        raise ValueError(f"{path}: expected 'NNN J', found {' '.join(fields[:3])!r}")
    return float(fields[0])


def cray_pm_counters(root: Path) -> list[Counter]:
    """The node's ``energy`` and each accelerator's ``accelN_energy`` (part of the node's)."""
    node = root / "energy"
    if not node.is_file():
        raise CounterUnavailable(f"{node} does not exist")
    counters = [Counter("node", lambda: _cray_joules(node))]
    for path in sorted(root.glob("accel*_energy")):
        match = _CRAY_ACCEL.match(path.name)
        if match:
            counters.append(Counter(match.group(1), lambda p=path: _cray_joules(p),
                                    in_total=False))
    for counter in counters:
        try:
            counter.read()
        except ValueError as err:
            raise CounterUnavailable(str(err)) from None
        except OSError as err:
            raise CounterUnavailable(f"{root}: {err.strerror}") from None
    return counters


def probe(device: torch.device, local_rank: int,
          environ: Mapping[str, str] | None = None) -> dict[str, list[Counter] | str]:
    """What this process can read: per source, its counters or the reason it has none.

    Every rank reads its own GPU; only local rank 0 reads the node-wide counters.
    """
    env = os.environ if environ is None else environ
    found: dict[str, list[Counter] | str] = {}
    readers: dict[str, Callable[[], list[Counter]]] = {
        NVML: lambda: nvml_counters(device),
        RAPL: lambda: rapl_counters(Path(env.get(POWERCAP_ROOT_ENV, DEFAULT_POWERCAP_ROOT))),
        CRAY_PM: lambda: cray_pm_counters(Path(env.get(PM_COUNTERS_ROOT_ENV,
                                                       DEFAULT_PM_COUNTERS_ROOT))),
    }
    for source, read in readers.items():
        if source != NVML and local_rank != 0:
            found[source] = "read by local rank 0"
            continue
        try:
            found[source] = read()
        except CounterUnavailable as err:
            found[source] = str(err)
    return found


# ---- reading over time -----------------------------------------------------------------------

class CounterTotals:
    """Joules of each counter since the first read, with wrap-arounds undone.

    A counter that wraps must be sampled at least once per wrap period; ``sample`` is
    thread-safe so that a background thread can do that between the scope reads.
    """

    def __init__(self, counters: list[Counter]) -> None:
        self.counters = counters
        self._lock = threading.Lock()
        self._last = [counter.read() for counter in counters]
        self._totals = [0.0] * len(counters)

    def sample(self) -> list[float]:
        """Read every counter once; the running totals."""
        with self._lock:
            for index, counter in enumerate(self.counters):
                raw = counter.read()
                delta = raw - self._last[index]
                if delta < 0:
                    if counter.wrap_j is None:
                        raise ValueError(f"the {counter.domain} counter went back from "
                                         f"{self._last[index]} J to {raw} J (reset?)")
                    delta += counter.wrap_j
                self._last[index] = raw
                self._totals[index] += delta
            return list(self._totals)


@dataclass
class _Scope:
    totals: list[float]
    started: float


class EnergyMeter:
    """Energy of the run and of each epoch, summed over the job's ranks and nodes.

    Construct it on every rank after the process group is up (it agrees on the source with
    one all-gather), call :meth:`start` right after run_start, :meth:`epoch_start` /
    :meth:`epoch_stop` around each epoch's training steps and :meth:`stop` right before
    run_stop. Every rank must make the same calls: each scope ends with an all-reduce.
    """

    def __init__(self, env: DistEnv, device: torch.device, log: mllog.MLLogger,
                 environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.env, self.log = env, log
        self.interval_s = _interval(environ)
        self._reduce_device = device if env.backend == "nccl" else torch.device("cpu")
        found = probe(device, env.local_rank, environ)
        everyone = _all_gather(env, {
            "local_rank": env.local_rank,
            "gpu": f"{socket.gethostname()}/{cuda_pci_bus_id(device)}"
            if device.type == "cuda" else None,
            "found": {source: [(c.domain, c.in_total) for c in value]
                      if isinstance(value, list) else value for source, value in found.items()},
        })
        self.source, self.reason, readers = _choose_source(everyone)
        domains: dict[str, bool] = {}
        for rank in readers:
            if isinstance(everyone[rank]["found"][self.source], list):
                domains.update(everyone[rank]["found"][self.source])
        self.domains = sorted(domains)
        self._in_total = [domains[domain] for domain in self.domains]
        self._totals: CounterTotals | None = None
        self._failure = ""
        if self.source and env.rank in readers and not self.reason:
            counters = found[self.source]
            assert isinstance(counters, list)
            self._index = [self.domains.index(counter.domain) for counter in counters]
            try:
                self._totals = CounterTotals(counters)
            except (OSError, ValueError) as err:
                self._fail(err)
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._run: _Scope | None = None
        self._epoch: _Scope | None = None
        self._run_samples = 0.0
        if env.is_main:
            print(f"[mlbench] energy: {self.describe(len(readers))}", file=sys.stderr,
                  flush=True)

    def describe(self, readers: int) -> str:
        if self.reason:
            return f"unknown: {self.reason}"
        what = "GPU(s)" if self.source == NVML else "node(s)"
        sampled = f", sampled every {self.interval_s:g} s" if self.source == RAPL else ""
        return (f"{SOURCE_NAMES[self.source]} ({', '.join(self.domains)}) on {readers} "
                f"{what}{sampled}")

    def start(self) -> None:
        """Open the run scope (call right after run_start)."""
        self._run = self._open()
        if self._totals and any(c.wrap_j is not None for c in self._totals.counters):
            self._sampler = threading.Thread(target=self._sample_periodically,
                                             name="mlbench-energy", daemon=True)
            self._sampler.start()

    def epoch_start(self, epoch: int) -> None:
        self._epoch = self._open()

    def epoch_stop(self, epoch: int, samples: float) -> EnergyReading:
        """Close the epoch scope; ``samples`` are this rank's training samples of the epoch."""
        assert self._epoch is not None, "epoch_stop without epoch_start"
        self._run_samples += samples
        reading = self._close("epoch", self._epoch, samples, {"epoch_num": epoch})
        self._epoch = None
        return reading

    def stop(self) -> EnergyReading:
        """Close the run scope (call right before run_stop) and stop the sampler."""
        assert self._run is not None, "stop without start"
        self._stop_sampling.set()
        if self._sampler:
            self._sampler.join()
        reading = self._close("run", self._run, self._run_samples, {})
        if self.source == NVML and self._totals:
            import pynvml
            pynvml.nvmlShutdown()
        return reading

    def _sample(self) -> list[float]:
        if not self._totals or self._failure:
            return [0.0] * len(self.domains)
        try:
            per_counter = self._totals.sample()
        except (OSError, ValueError) as err:
            self._fail(err)
            return [0.0] * len(self.domains)
        per_domain = [0.0] * len(self.domains)
        for index, joules in zip(self._index, per_counter, strict=True):
            per_domain[index] += joules
        return per_domain

    def _fail(self, err: Exception) -> None:
        """From now on this rank reports a failed read; the rank's own log says why."""
        self._failure = f"{SOURCE_NAMES[self.source]} on rank {self.env.rank}: {err}"
        print(f"[mlbench] energy: unknown from here on: {self._failure}", file=sys.stderr,
              flush=True)

    def _sample_periodically(self) -> None:
        while not self._stop_sampling.wait(self.interval_s):
            self._sample()

    def _open(self) -> _Scope:
        return _Scope(self._sample(), time.perf_counter())

    def _close(self, scope: str, opened: _Scope, samples: float,
               extra: dict[str, Any]) -> EnergyReading:
        """Read, sum over ranks (with the failure count and this rank's samples), log."""
        totals = self._sample()
        duration = time.perf_counter() - opened.started
        local = [end - begin for end, begin in zip(totals, opened.totals, strict=True)]
        reduced = all_reduce_sum(torch.tensor(
            [*local, float(bool(self._failure)), samples], dtype=torch.float64,
            device=self._reduce_device)).tolist()
        per_domain, failed, samples = reduced[:-2], int(reduced[-2]), reduced[-1]
        reason = self.reason or (f"counter reads failed on {failed} rank(s)" + (
            f" ({self._failure})" if self._failure else "") if failed else "")
        domains = {domain: round(joules, 3)
                   for domain, joules in zip(self.domains, per_domain, strict=True)}
        joules = None if reason else round(sum(
            j for j, counted in zip(per_domain, self._in_total, strict=True) if counted), 3)
        reading = EnergyReading(scope, joules, {} if reason else domains, duration, samples,
                                reason)
        metadata = {"scope": scope, **extra, "source": self.source if not reason else None,
                    "domains": reading.domains, "duration_s": round(duration, 3),
                    "samples": samples}
        if reason:
            metadata["reason"] = reason
        self.log.event(mllog.ENERGY, joules, metadata=metadata)
        return reading


def _interval(environ: Mapping[str, str]) -> float:
    text = environ.get(INTERVAL_ENV, "")
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(f"environment variable {INTERVAL_ENV}: expected seconds > 0, "
                          f"got {text!r}")
    return value


def _all_gather(env: DistEnv, mine: dict[str, Any]) -> list[dict[str, Any]]:
    if not (env.is_distributed and dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list[Any] = [None] * env.world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def _choose_source(everyone: list[dict[str, Any]]) -> tuple[str | None, str, list[int]]:
    """The job's source, why its energy is unknown ("" when known), and its reading ranks.

    The source is the first that any rank found; then every rank that should read it (the
    lowest rank on each GPU for NVML, as ranks may share one; every local rank 0 for node
    counters) must have found it, or the job's sum would silently leave a GPU or a node out.
    """
    for source in SOURCES:
        if not any(isinstance(info["found"][source], list) for info in everyone):
            continue
        first_on_gpu = {info["gpu"]: rank for rank, info in reversed(list(enumerate(everyone)))}
        readers = [rank for rank, info in enumerate(everyone)
                   if (first_on_gpu[info["gpu"]] == rank if source == NVML
                       else info["local_rank"] == 0)]
        missing = [rank for rank in readers if not isinstance(everyone[rank]["found"][source],
                                                               list)]
        if missing:
            first = missing[0]
            return source, (f"{SOURCE_NAMES[source]} unreadable on rank(s) "
                            f"{', '.join(map(str, missing))}: "
                            f"{everyone[first]['found'][source]}"), readers
        return source, "", readers
    reasons = "; ".join(f"{SOURCE_NAMES[source]}: {everyone[0]['found'][source]}"
                        for source in SOURCES)
    return None, f"no energy counter ({reasons})", []
