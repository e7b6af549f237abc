"""Which files a read covers, and where the command line may write.

ReFrame keeps perflogs in ``<basedir>/<system>/<partition>/<TestClass>.log`` and renames a
file to ``.log.h0``, ``.log.h1``... when its header changes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from perflogs_parsers.errors import PerflogError

PERFLOG_NAME = re.compile(r'\.log(\.h\d+)?$')


def find_perflog_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named on the command line plus every ``*.log`` / ``*.log.hN`` under folders.

    Rotated files come before the current one so that rows stay in the order they were written.
    """
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            in_folder = [p for p in path.rglob('*') if p.is_file() and PERFLOG_NAME.search(p.name)]
            found += sorted(in_folder, key=_write_order)
        elif path.is_file():
            found.append(path)
        else:
            raise PerflogError(f'perflog path not found: {path}')

    if not found:
        named = ', '.join(map(str, paths))
        raise PerflogError(f'no perflog files (*.log, *.log.hN) under: {named}')

    return found


def _write_order(path: Path) -> tuple:
    # Test.log.h0 (oldest) < Test.log.h1 < Test.log (current)
    match = PERFLOG_NAME.search(path.name)
    base = path.name[:match.start()]
    rotation = int(match.group(1)[2:]) if match.group(1) else float('inf')
    return (str(path.parent), base, rotation)



def system_partition_from_path(path: Path) -> tuple[str | None, str | None]:
    # ReFrame's layout: <basedir>/<system>/<partition>/<Test>.log
    parts = path.resolve().parts
    if len(parts) >= 3:
        return parts[-3], parts[-2]
    return None, None


def path_test(path: Path) -> str:
    """Test class name from a perflog file name (``Test.log.h0`` -> ``Test``)."""
    match = PERFLOG_NAME.search(path.name)
    return path.name[:match.start()] if match else path.stem



def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a Path when a file can be written there, else :class:`PerflogError`.

    Called before any perflog is read, so a typo in ``-o`` costs nothing and writes nothing.
    """
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise PerflogError(f'{path}: the file name must end in {" or ".join(suffixes)}')
    folder = path.parent
    if not folder.is_dir():
        raise PerflogError(f'{path}: folder {folder} does not exist')
    if path.is_dir():
        raise PerflogError(f'{path}: is a folder, not a file')
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PerflogError(f'{path}: not writable')
    return path
