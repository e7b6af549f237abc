"""Append a run's perflogs to the lasting history, as ReFrame itself would have.

    python3 append_history.py NEW_PERFLOG_DIR HISTORY_PERFLOG_DIR

Each ``<system>/<partition>/<Test>.log`` of the run is appended to the file of the same name
in the history when both have the same header; when the header differs (a new performance
variable, a new column), the history file is first renamed to the next free ``.log.hN``, the
rotation ReFrame applies, so no row is ever rewritten. A lock file serialises pipelines that
finish together. Standard library only: it runs before any environment is trusted.
"""

from __future__ import annotations

import fcntl
import sys
from pathlib import Path


def _rotated_name(path: Path) -> Path:
    index = 0
    while path.with_name(f'{path.name}.h{index}').exists():
        index += 1
    return path.with_name(f'{path.name}.h{index}')


def append_file(new: Path, history: Path) -> int:
    """Append ``new``'s rows to ``history``; returns the number of rows appended."""
    lines = new.read_text().splitlines(keepends=True)
    if not lines:
        return 0
    header, rows = lines[0], lines[1:]
    history.parent.mkdir(parents=True, exist_ok=True)
    if history.exists():
        with history.open() as stream:
            history_header = stream.readline()
        if history_header == header:
            with history.open('a') as stream:
                stream.writelines(rows)
            return len(rows)
        history.rename(_rotated_name(history))
    history.write_text(header + ''.join(rows))
    return len(rows)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print('usage: append_history.py NEW_PERFLOG_DIR HISTORY_PERFLOG_DIR', file=sys.stderr)
        return 2
    new_root, history_root = Path(argv[0]), Path(argv[1])
    if not new_root.is_dir():
        print(f'append_history: error: {new_root} is not a folder', file=sys.stderr)
        return 2
    history_root.mkdir(parents=True, exist_ok=True)
    with (history_root / '.lock').open('w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        total = 0
        for new in sorted(new_root.rglob('*.log')):
            total += append_file(new, history_root / new.relative_to(new_root))
    print(f'appended {total} perflog row(s) to {history_root}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
