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

A checkpoint folder on a shared file system is not a trusted input, and unpickling runs
code. Checkpoints therefore hold only tensors, numbers, strings, None, and lists, tuples and
dicts of them (random generator states as tensors), and are read with
``torch.load(weights_only=True)``: a file that needs anything else is refused, naming it.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import signal
from collections.abc import Mapping, Sequence
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
        _require_plain(state, "state")
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
    """This process's random generators (python, numpy, torch, CUDA) as tensors and numbers."""
    _, python_state, python_gauss = random.getstate()
    _, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state()
    state = {
        "python": {"state": torch.tensor(python_state, dtype=torch.int64),
                   "gauss": python_gauss},
        "numpy": {"keys": torch.from_numpy(numpy_keys.astype(np.int64)),
                  "position": int(numpy_position), "has_gauss": int(numpy_has_gauss),
                  "gauss": float(numpy_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the generators :func:`capture_rng` captured."""
    python, numpy = state["python"], state["numpy"]
    random.setstate((_PYTHON_RNG_VERSION, tuple(python["state"].tolist()), python["gauss"]))
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_PYTHON_RNG_VERSION = 3  # the only version random.getstate() has written since Python 3.2
_PLAIN = (torch.Tensor, str, int, float, bool, type(None))


def _require_plain(value: Any, where: str) -> None:
    """Refuse to save what ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint entry {where}: key {key!r} is not a string or int")
            _require_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _require_plain(item, f"{where}[{index}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"checkpoint entry {where}: a {type(value).__name__}, not a tensor, "
                        "number, string, list or dict")


def load_tensor_file(path: str | Path, what: str = "checkpoint") -> Any:
    """A file written with ``torch.save``, read without running code (``weights_only``): our
    own checkpoints and other people's weights alike. A missing, unreadable or pickled-object
    file is an InputError naming it and saying it is the ``what``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except pickle.UnpicklingError as err:
        unsupported = re.search(r"GLOBAL ([\w.]+)", str(err))
        if unsupported:
            raise InputError(f"{path}: refused: holds a pickled object ({unsupported.group(1)}); "
                             f"a {what} may hold only tensors, numbers and strings") from None
        raise InputError(f"{path}: unreadable {what} (UnpicklingError)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable {what} ({type(err).__name__})") from None


def load_state_dict_file(path: str | Path, what: str, wrappers: Sequence[Sequence[str]],
                         not_a_state_dict: str) -> Mapping[str, torch.Tensor]:
    """A state dict saved with ``torch.save`` (see :func:`load_tensor_file`), taken from under
    the first of the ``wrappers`` key paths whose first key holds a mapping (as training
    checkpoints wrap their weights), and checked to be a non-empty mapping of tensors, so a
    wrong file is an InputError naming it (``not_a_state_dict`` says what was expected) rather
    than a failure while copying weights."""
    saved = load_tensor_file(path, what)
    for keys in wrappers:
        if isinstance(saved, Mapping) and isinstance(saved.get(keys[0]), Mapping):
            for key in keys:
                saved = saved.get(key) if isinstance(saved, Mapping) else None
            break
    if not isinstance(saved, Mapping) or not saved:
        raise InputError(f"{path}: {not_a_state_dict}")
    for name, value in saved.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: entry '{name}' is not a tensor")
    return saved


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint file written by :meth:`Checkpointer.save`, read without running code."""
    state = load_tensor_file(path)
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a checkpoint written by mlbench")
    return state


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    tmp.replace(path)
