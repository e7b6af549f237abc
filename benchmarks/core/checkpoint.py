"""Checkpoints that survive preemption, and the signals that ask for one.

With ``training.checkpoint_dir`` set, the loop saves every ``training.checkpoint_every``
epochs and whenever SIGTERM or SIGUSR1 arrives (Slurm's ``--signal=USR1@120`` or a
preemption), then exits; a run started with the same folder resumes from the latest
checkpoint and logs ``mlbench_resumed`` (MLPerf does not count resumed runs).

A checkpoint is a folder ``epochEEEE-stepSSSSSSS/`` holding ``state.pt`` (model, optimizer,
scheduler, loop position; written by rank 0) and ``rng-rank<R>.pt`` (each rank's random
generators). It is written under a temporary name and renamed when complete, then the
``latest`` file is replaced atomically, so a kill at any moment leaves the previous
checkpoint intact. The folder must be on a file system every rank sees.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.core.distributed import DistEnv, barrier
from benchmarks.core.errors import ConfigError, InputError

LATEST = "latest"


class StopRequest:
    """Remembers the first SIGTERM / SIGUSR1 so the loop can checkpoint and stop cleanly."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal_name = ""

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)


class Checkpointer:
    """Saves and finds checkpoints in one folder for one run identity.

    ``identity`` (benchmark, model config, batch size, world size) must match on resume:
    a checkpoint of another configuration is a ConfigError, not a silent restart.
    """

    def __init__(self, directory: str | Path, identity: dict[str, Any], env: DistEnv) -> None:
        self.directory = Path(directory)
        self.identity = identity
        self.env = env
        if env.is_main:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise InputError(f"{self.directory}: cannot create checkpoint folder "
                                 f"({err.strerror})") from None
            if not os.access(self.directory, os.W_OK):
                raise InputError(f"{self.directory}: checkpoint folder is not writable")

    def latest(self) -> dict[str, Any] | None:
        """The newest complete checkpoint for this rank, or None when there is none."""
        pointer = self.directory / LATEST
        if not pointer.exists():
            return None
        folder = self.directory / pointer.read_text().strip()
        state_file, rng_file = folder / "state.pt", folder / f"rng-rank{self.env.rank}.pt"
        if not state_file.exists() or not rng_file.exists():
            raise InputError(f"{folder}: incomplete checkpoint (no {state_file.name} or "
                             f"{rng_file.name}; was it written with another world size?)")
        state = _load(state_file)
        if state.get("identity") != self.identity:
            raise ConfigError(f"{state_file}: checkpoint of another configuration (saved "
                              f"{state['identity']}, this run {self.identity}); use another "
                              "training.checkpoint_dir")
        state["rng"] = _load(rng_file)
        return state

    def save(self, epoch: int, step: int, state: dict[str, Any]) -> Path:
        """Write the checkpoint of ``epoch`` after ``step`` optimizer steps; all ranks call it."""
        name = f"epoch{epoch:04d}-step{step:07d}"
        final = self.directory / name
        staging = self.directory / f".{name}.tmp"
        if self.env.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier()
        _atomic_save(capture_rng(), staging / f"rng-rank{self.env.rank}.pt")
        if self.env.is_main:
            _atomic_save({**state, "identity": self.identity}, staging / "state.pt")
        barrier()
        if self.env.is_main:
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            pointer = self.directory / f".{LATEST}.tmp"
            pointer.write_text(name + "\n")
            pointer.replace(self.directory / LATEST)
            for old in self.directory.glob("epoch*-step*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final


def capture_rng() -> dict[str, Any]:
    """This process's random generators (python, numpy, torch, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint file written by :meth:`Checkpointer.save` (a pickle: trusted files only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a checkpoint written by mlbench")
    return state


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    tmp.replace(path)
