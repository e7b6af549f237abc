"""Energy counters: folders laid out as the kernel (powercap RAPL) and HPE Cray firmware
(pm_counters) lay them out, a fake NVML, and a smoke run whose RAPL counters advance at a
known power, wrapping around on the way."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import run_mlbench

from benchmarks.core import energy
from benchmarks.core.distributed import DistEnv
from benchmarks.core.energy import (
    CounterTotals,
    EnergyMeter,
    rapl_counters,
)
from benchmarks.core.errors import ConfigError
from benchmarks.core.mllog import MLLogger
from benchmarks.core.placement import cuda_pci_bus_id

CPU = torch.device("cpu")
SINGLE = DistEnv()


def write_atomically(path: Path, text: str) -> None:
    """As sysfs does, a reader sees the old or the new value, never a half-written one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def make_zone(root: Path, zone: str, name: str, range_uj: int = 2**32) -> Path:
    path = root / zone
    path.mkdir(parents=True)
    (path / "name").write_text(f"{name}\n")
    (path / "max_energy_range_uj").write_text(f"{range_uj}\n")
    (path / "energy_uj").write_text("0\n")
    (path / "enabled").write_text("1\n")
    return path


#: package-0 wraps every 1.5 s at its power; core (part of the package), psys (the whole
#: platform) and the MMIO copy of package-0 must not be counted.
POWER_W = {"intel-rapl:0": 40.0, "intel-rapl:0:0": 15.0, "intel-rapl:0:1": 10.0,
           "intel-rapl:1": 40.0, "intel-rapl:1:0": 10.0, "intel-rapl:2": 200.0,
           "intel-rapl-mmio:0": 40.0}
COUNTED_W = 100.0
PACKAGE0_RANGE_J = 60.0


def make_rapl(root: Path) -> Path:
    """``/sys/class/powercap`` of a two-socket server (flattened as the class folder is)."""
    (root / "intel-rapl").mkdir(parents=True)
    (root / "intel-rapl" / "enabled").write_text("1\n")
    make_zone(root, "intel-rapl:0", "package-0", int(PACKAGE0_RANGE_J * 1e6))
    make_zone(root, "intel-rapl:0:0", "core")
    make_zone(root, "intel-rapl:0:1", "dram")
    make_zone(root, "intel-rapl:1", "package-1")
    make_zone(root, "intel-rapl:1:0", "dram")
    make_zone(root, "intel-rapl:2", "psys")
    make_zone(root, "intel-rapl-mmio:0", "package-0")
    return root


class ConstantPower(threading.Thread):
    """Advances each zone's ``energy_uj`` at a fixed power, wrapping at its range."""

    def __init__(self, root: Path, power_w: dict[str, float], tick_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.root, self.power_w, self.tick_s = root, power_w, tick_s
        self.ranges = {zone: int((root / zone / "max_energy_range_uj").read_text())
                       for zone in power_w}
        self.done = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.done.wait(self.tick_s):
            elapsed = time.monotonic() - started
            for zone, watts in self.power_w.items():
                value = int(watts * elapsed * 1e6) % self.ranges[zone]
                write_atomically(self.root / zone / "energy_uj", f"{value}\n")


def mllog_events(path: Path, key: str) -> list[dict]:
    return [json.loads(line.split(":::MLLOG", 1)[1]) for line in path.read_text().splitlines()
            if line.startswith(":::MLLOG") and f'"key": "{key}"' in line]


def roots(tmp_path: Path, powercap: Path | None = None, pm: Path | None = None) -> dict:
    return {energy.POWERCAP_ROOT_ENV: str(powercap or tmp_path / "no-powercap"),
            energy.PM_COUNTERS_ROOT_ENV: str(pm or tmp_path / "no-pm_counters")}


# ---- RAPL ------------------------------------------------------------------------------------

def test_rapl_reads_packages_and_dram_only(tmp_path):
    counters = rapl_counters(make_rapl(tmp_path))
    assert [c.domain for c in counters] == ["package-0", "package-0/dram", "package-1",
                                            "package-1/dram"]
    assert counters[0].wrap_j == PACKAGE0_RANGE_J
    write_atomically(tmp_path / "intel-rapl:0:1" / "energy_uj", "2500000\n")
    assert counters[1].read() == 2.5


def test_wrap_between_two_reads_is_undone(tmp_path):
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", range_uj=1000)
    write_atomically(zone / "energy_uj", "900\n")
    totals = CounterTotals(rapl_counters(tmp_path))
    write_atomically(zone / "energy_uj", "100\n")  # 100 uJ to the top, wrap, 100 uJ more
    assert totals.sample() == [pytest.approx(200e-6)]
    write_atomically(zone / "energy_uj", "950\n")
    assert totals.sample() == [pytest.approx(1050e-6)]


def test_unreadable_rapl_counter_gives_the_reason(tmp_path):
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0")
    write_atomically(zone / "energy_uj", "not a number\n")
    reading = _meter_over(tmp_path, roots(tmp_path, powercap=tmp_path), lambda: None)
    assert reading["value"] is None
    assert "energy_uj or max_energy_range_uj is not an integer" in reading["metadata"]["reason"]


# ---- Cray pm_counters -------------------------------------------------------------------------

def make_pm_counters(root: Path, node_j: int, accels_j: list[int]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_atomically(root / "energy", f"{node_j} J 1591889015553442 us\n")
    for index, joules in enumerate(accels_j):
        write_atomically(root / f"accel{index}_energy", f"{joules} J 1591889015553442 us\n")
    (root / "power").write_text("412 W 1591889015553442 us\n")
    (root / "freshness").write_text("1234\n")
    return root


def _meter_over(tmp_path: Path, environ: dict, work, device: torch.device = CPU) -> dict:
    """Run scope with one epoch (``work`` inside it); the logged run-scope event."""
    log_file = tmp_path / "mllog.txt"
    log = MLLogger(enabled=True, log_file=str(log_file))
    meter = EnergyMeter(SINGLE, device, log, environ=environ)
    meter.start()
    meter.epoch_start(1)
    work()
    meter.epoch_stop(1, samples=64)
    meter.stop()
    log.close()
    epoch, run = mllog_events(log_file, "mlbench_energy")
    assert epoch["metadata"]["scope"] == "epoch" and epoch["metadata"]["epoch_num"] == 1
    assert epoch["metadata"]["samples"] == 64 and run["metadata"]["samples"] == 64
    assert epoch["value"] == run["value"]
    return run


def test_cray_node_energy_with_accelerators_as_parts(tmp_path):
    pm = make_pm_counters(tmp_path / "pm", 1_000_000, [200_000, 300_000])
    run = _meter_over(tmp_path, roots(tmp_path, pm=pm),
                      lambda: make_pm_counters(pm, 1_004_000, [201_000, 301_500]))
    assert run["value"] == 4000.0, "the node counter; accelerators are part of it"
    assert run["metadata"]["source"] == "cray_pm"
    assert run["metadata"]["domains"] == {"accel0": 1000.0, "accel1": 1500.0, "node": 4000.0}


def test_rapl_comes_before_cray(tmp_path):
    pm = make_pm_counters(tmp_path / "pm", 1_000, [])
    run = _meter_over(tmp_path, roots(tmp_path, powercap=make_rapl(tmp_path / "rapl"), pm=pm),
                      lambda: None)
    assert run["metadata"]["source"] == "rapl"


def test_malformed_cray_counter_names_the_file(tmp_path):
    pm = tmp_path / "pm"
    pm.mkdir()
    (pm / "energy").write_text("4200 W\n")
    run = _meter_over(tmp_path, roots(tmp_path, pm=pm), lambda: None)
    assert run["value"] is None
    assert f"{pm / 'energy'}: expected 'NNN J', found '4200 W'" in run["metadata"]["reason"]


# ---- none --------------------------------------------------------------------------------------

def test_no_counter_is_unknown_with_the_reason_never_zero(tmp_path, capsys):
    run = _meter_over(tmp_path, roots(tmp_path), lambda: None)
    assert run["value"] is None and run["metadata"]["source"] is None
    reason = run["metadata"]["reason"]
    assert "NVML: the run is not on a GPU" in reason
    assert f"{tmp_path / 'no-powercap'} does not exist" in reason
    assert f"{tmp_path / 'no-pm_counters' / 'energy'} does not exist" in reason
    assert "[mlbench] energy: unknown: no energy counter" in capsys.readouterr().err


def test_bad_sampling_interval_is_a_config_error(tmp_path):
    environ = {**roots(tmp_path), energy.INTERVAL_ENV: "often"}
    with pytest.raises(ConfigError, match="MLBENCH_ENERGY_INTERVAL_S: expected seconds > 0"):
        EnergyMeter(SINGLE, CPU, MLLogger(enabled=False), environ=environ)


# ---- NVML ---------------------------------------------------------------------------------------

#: PCI bus ids of a node's four GPUs, in NVML's (and CUDA's unfiltered) order.
NODE_GPUS = ["00000000:19:00.0", "00000000:3b:00.0", "00000000:5d:00.0", "00000000:9a:00.0"]


def fake_nvml(energy_mj: dict[str, int]) -> ModuleType:
    """``pynvml`` with the calls the meter makes; handles are bus ids."""
    module = ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def handle_by_bus_id(bus_id: str) -> str:
        if bus_id not in energy_mj:
            raise NVMLError("Not Found")
        return bus_id

    def total_energy(handle: str) -> int:
        if energy_mj[handle] < 0:
            raise NVMLError("Unknown Error")
        return energy_mj[handle]

    module.NVMLError = NVMLError
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetHandleByPciBusId = handle_by_bus_id
    module.nvmlDeviceGetTotalEnergyConsumption = total_energy
    return module


def visible_gpus(monkeypatch: pytest.MonkeyPatch, visible: list[int]) -> None:
    """CUDA as under ``CUDA_VISIBLE_DEVICES=visible``: cuda:i is physical GPU visible[i]."""
    def properties(device: torch.device) -> SimpleNamespace:
        domain, bus, rest = NODE_GPUS[visible[torch.device(device).index]].split(":")
        return SimpleNamespace(pci_domain_id=int(domain, 16), pci_bus_id=int(bus, 16),
                               pci_device_id=int(rest.split(".")[0], 16))
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)


def test_nvml_device_follows_cuda_visible_devices_by_bus_id(tmp_path, monkeypatch):
    counters = {bus_id: 1_000_000 for bus_id in NODE_GPUS}
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(counters))
    visible_gpus(monkeypatch, [2, 3])  # CUDA_VISIBLE_DEVICES=2,3: cuda:1 is NVML's device 3
    device = torch.device("cuda", 1)
    assert cuda_pci_bus_id(device) == NODE_GPUS[3]

    def train() -> None:
        counters[NODE_GPUS[3]] += 250_500  # mJ
        counters[NODE_GPUS[1]] += 999_000  # NVML's device 1 is another job's GPU

    run = _meter_over(tmp_path, roots(tmp_path, powercap=make_rapl(tmp_path / "rapl")), train,
                      device)
    assert run["metadata"]["source"] == "nvml", "NVML comes before RAPL"
    assert run["value"] == 250.5


RUNS = ("own GPUs", "shared GPU", "probe fails", "read fails")


def _two_ranks(rank: int, init_file: str, out_dir: str) -> None:
    """One of two gloo ranks on the same node, with a fake NVML: one run each where the ranks
    train on their own GPUs, on the same GPU, where rank 1 cannot find its GPU, and where
    rank 1's reads fail in epoch 2."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.cuda.get_device_properties = lambda device: SimpleNamespace(
        pci_domain_id=0, pci_bus_id=int(NODE_GPUS[torch.device(device).index].split(":")[1], 16),
        pci_device_id=0)
    env = DistEnv(rank, 2, rank, 2, "torchrun", "gloo")
    for case in RUNS:
        out = Path(out_dir) / case
        counters = {bus_id: 0 for bus_id in NODE_GPUS}
        if case == "probe fails" and rank == 1:
            del counters[NODE_GPUS[1]]
        sys.modules["pynvml"] = fake_nvml(counters)
        gpu = 0 if case == "shared GPU" else rank
        log = MLLogger(enabled=rank == 0, log_file=str(out / "mllog.txt") if rank == 0 else "")
        meter = EnergyMeter(env, torch.device("cuda", gpu), log,
                            environ={energy.POWERCAP_ROOT_ENV: str(out / "none"),
                                     energy.PM_COUNTERS_ROOT_ENV: str(out / "none")})
        meter.start()
        for epoch in (1, 2):
            meter.epoch_start(epoch)
            if NODE_GPUS[gpu] in counters:  # GPU 0: 100 J, then 200 J; GPU 1: twice that
                counters[NODE_GPUS[gpu]] += (gpu + 1) * 100_000 * epoch
            if case == "read fails" and rank == 1 and epoch == 2:
                counters[NODE_GPUS[rank]] = -1
            meter.epoch_stop(epoch, samples=32 + rank)
        reading = meter.stop()
        (out / f"rank{rank}.json").write_text(json.dumps(reading.__dict__))
        log.close()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two-ranks")
    for case in RUNS:
        (out / case).mkdir()
    mp.spawn(_two_ranks, args=(str(out / "init"), str(out)), nprocs=2)
    return out


@pytest.mark.parametrize("case", RUNS)
def test_nvml_energy_is_summed_over_gpus_and_unknown_survives(two_rank_runs, case):
    out = two_rank_runs / case
    readings = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for key in ("joules", "domains", "samples"):
        assert readings[0][key] == readings[1][key], "every rank ends with the same totals"
    epochs = [event for event in mllog_events(out / "mllog.txt", "mlbench_energy")
              if event["metadata"]["scope"] == "epoch"]
    assert [event["metadata"]["samples"] for event in epochs] == [65, 65]
    assert readings[0]["samples"] == 130
    if case == "own GPUs":
        assert [event["value"] for event in epochs] == [300.0, 600.0]
        assert readings[0]["joules"] == 900.0
        return
    if case == "shared GPU":
        assert [event["value"] for event in epochs] == [100.0, 200.0], "GPU 0 counted once"
        return
    assert readings[0]["joules"] is None
    if case == "probe fails":
        assert "NVML unreadable on rank(s) 1: GPU 00000000:3b:00.0: Not Found" in \
            readings[0]["reason"]
        assert [event["value"] for event in epochs] == [None, None]
    else:
        assert readings[0]["reason"] == "counter reads failed on 1 rank(s)"
        assert readings[1]["reason"] == ("counter reads failed on 1 rank(s) (NVML on rank 1: "
                                         "GPU 00000000:3b:00.0: Unknown Error)")
        assert [event["value"] for event in epochs] == [300.0, None]


# ---- a training run at a known power ----------------------------------------------------------

@pytest.mark.slow
def test_smoke_run_energy_is_power_times_time_across_a_wrap(resnet_data, tmp_path, monkeypatch):
    powercap = make_rapl(tmp_path / "powercap")
    monkeypatch.setenv(energy.POWERCAP_ROOT_ENV, str(powercap))
    monkeypatch.setenv(energy.PM_COUNTERS_ROOT_ENV, str(tmp_path / "no-pm_counters"))
    monkeypatch.setenv(energy.INTERVAL_ENV, "0.2")
    power = ConstantPower(powercap, POWER_W)
    power.start()
    try:
        # The training runs niced, so on a busy two-core machine it cannot starve the thread
        # that advances the counters (a late tick reads as missing joules).
        done = run_mlbench("train", "resnet50", "--config", "smoke", "--data-dir",
                           str(resnet_data), "--device", "cpu", "--set", "training.n_epochs=3",
                           timeout=120, launcher=("nice", "-n", "10", sys.executable))
    finally:
        power.done.set()
        power.join()
    assert done.returncode in (0, 3), done.stderr
    assert "[mlbench] energy: powercap RAPL (package-0, package-0/dram, package-1, " \
           "package-1/dram) on 1 node(s), sampled every 0.2 s" in done.stderr
    *epochs, run = done.events("mlbench_energy")
    meta = run["metadata"]
    assert meta["scope"] == "run" and meta["source"] == "rapl"
    assert meta["duration_s"] == pytest.approx(done.time_to_target(), rel=0.05, abs=0.05)
    assert meta["duration_s"] > 1.5 * PACKAGE0_RANGE_J / POWER_W["intel-rapl:0"], \
        "the run must be long enough for package-0 to wrap"
    assert meta["domains"]["package-0"] > PACKAGE0_RANGE_J
    assert run["value"] == pytest.approx(COUNTED_W * meta["duration_s"], rel=0.05)
    assert meta["domains"]["package-1/dram"] == pytest.approx(10.0 * meta["duration_s"],
                                                              rel=0.05)

    assert [e["metadata"]["epoch_num"] for e in epochs] == [1, 2, 3]
    throughput = done.events("mlbench_throughput")
    for epoch, speed in zip(epochs, throughput, strict=True):
        assert epoch["metadata"]["duration_s"] == pytest.approx(
            speed["metadata"]["epoch_time_s"], abs=0.05)
        assert epoch["value"] == pytest.approx(COUNTED_W * epoch["metadata"]["duration_s"],
                                               rel=0.05)
    samples = sum(e["metadata"]["samples"] for e in epochs)
    assert samples == meta["samples"] == 3 * 12 * 32  # 12 steps of 32 images per epoch
    per_sample = sum(e["value"] for e in epochs) / samples
    seconds_per_sample = sum(e["metadata"]["duration_s"] for e in epochs) / samples
    assert per_sample == pytest.approx(COUNTED_W * seconds_per_sample, rel=0.05)
    assert sum(e["value"] for e in epochs) < run["value"], "the run also evaluates"
