"""Where a chain's alignment files come from: the raw OpenProteinSet folders or the packed
layout of the MLPerf HPC OpenFold reference.

Raw (OpenProteinSet as downloaded, one folder per chain)::

    alignments/<pdb_chain>/a3m/{uniref90_hits,bfd_uniclust_hits,mgnify_hits}.a3m
    alignments/<pdb_chain>/hhr/pdb70_hits.hhr

Packed (the reference's ``open_protein_set/processed/pdb_alignments``: a few large files
instead of millions of small ones, which parallel file systems serve far better)::

    pdb_alignments/super.index      JSON {pdb_chain: {"db": "N.db",
                                                      "files": [[name, start, size], ...]}}
    pdb_alignments/N.db             the chains' files concatenated

Both answer ``chain_ids()`` and ``read(chain, name)`` (``None`` when the chain has no such
file). ``python -m benchmarks.alphafold2.data.alignments RAW_DIR OUT_DIR [--shards N]`` packs a
raw folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Protocol

from benchmarks.core.errors import InputError

MSA_FILES = ("uniref90_hits.a3m", "bfd_uniclust_hits.a3m", "mgnify_hits.a3m")
TEMPLATE_HITS_FILE = "pdb70_hits.hhr"
RAW_FOLDER = "alignments"
PACKED_FOLDER = "pdb_alignments"
SUPER_INDEX = "super.index"


class AlignmentSource(Protocol):
    def chain_ids(self) -> list[str]: ...

    def read(self, chain_id: str, name: str) -> str | None: ...


def _subfolder(name: str) -> str:
    return "hhr" if name.endswith(".hhr") else "a3m"


class RawAlignments:
    """``alignments/<pdb_chain>/{a3m,hhr}/<file>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def chain_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "a3m").is_dir())

    def read(self, chain_id: str, name: str) -> str | None:
        path = self.root / chain_id / _subfolder(name) / name
        return path.read_text() if path.is_file() else None


class PackedAlignments:
    """``pdb_alignments/super.index`` plus the ``.db`` files it points into."""

    def __init__(self, root: Path) -> None:
        self.root = root
        index_path = root / SUPER_INDEX
        try:
            self.index = json.loads(index_path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{index_path}: not a readable JSON index ({error})") from None
        if not isinstance(self.index, dict):
            raise InputError(f"{index_path}: expected a JSON object keyed by chain id")

    def chain_ids(self) -> list[str]:
        return sorted(self.index)

    def read(self, chain_id: str, name: str) -> str | None:
        entry = self.index.get(chain_id)
        if entry is None:
            return None
        for file_name, start, size in entry["files"]:
            if file_name == name:
                db_path = self.root / entry["db"]
                try:
                    with db_path.open("rb") as handle:
                        handle.seek(start)
                        data = handle.read(size)
                except OSError as error:
                    raise InputError(f"{db_path}: {error.strerror}") from None
                if len(data) != size:
                    raise InputError(f"{db_path}: {chain_id}/{name} runs past the end of the "
                                     "file (truncated?)")
                return data.decode()
        return None


def open_alignments(data_dir: Path) -> AlignmentSource:
    """The packed layout when ``pdb_alignments/super.index`` exists, else the raw folders."""
    if (data_dir / PACKED_FOLDER / SUPER_INDEX).is_file():
        return PackedAlignments(data_dir / PACKED_FOLDER)
    raw = data_dir / RAW_FOLDER
    if not raw.is_dir():
        raise InputError(f"{data_dir}: neither {RAW_FOLDER}/ nor {PACKED_FOLDER}/{SUPER_INDEX} "
                         "found")
    return RawAlignments(raw)


def pack_alignments(raw_dir: Path, out_dir: Path, shards: int = 10) -> int:
    """Pack raw per-chain folders into ``shards`` ``.db`` files and a ``super.index``;
    returns the number of chains. Written under temporary names, renamed when complete."""
    if shards < 1:
        raise InputError(f"--shards must be at least 1, got {shards}")
    source = RawAlignments(raw_dir)
    chains = source.chain_ids() if raw_dir.is_dir() else []
    if not chains:
        raise InputError(f"{raw_dir}: no <pdb_chain>/a3m folders")
    out_dir.mkdir(parents=True, exist_ok=True)
    index: dict[str, dict] = {}
    handles = [(out_dir / f"{shard}.db.tmp").open("wb") for shard in range(shards)]
    try:
        for number, chain_id in enumerate(chains):
            shard = number % shards
            handle, files = handles[shard], []
            for name in (*MSA_FILES, TEMPLATE_HITS_FILE):
                text = source.read(chain_id, name)
                if text is not None:
                    data = text.encode()
                    files.append([name, handle.tell(), len(data)])
                    handle.write(data)
            index[chain_id] = {"db": f"{shard}.db", "files": files}
    finally:
        for handle in handles:
            handle.close()
    for shard in range(shards):
        os.replace(out_dir / f"{shard}.db.tmp", out_dir / f"{shard}.db")
    tmp_index = out_dir / f"{SUPER_INDEX}.tmp"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, out_dir / SUPER_INDEX)
    return len(chains)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pack raw OpenProteinSet alignment folders "
                                                 "into the MLPerf super.index + .db layout.")
    parser.add_argument("raw_dir", type=Path, help="folder of <pdb_chain>/{a3m,hhr}/ folders")
    parser.add_argument("out_dir", type=Path, help="e.g. DATA_DIR/pdb_alignments")
    parser.add_argument("--shards", type=int, default=10, help="number of .db files")
    args = parser.parse_args(argv)
    try:
        count = pack_alignments(args.raw_dir, args.out_dir, args.shards)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"packed {count} chains into {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
