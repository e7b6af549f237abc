"""Read the raw OpenProteinSet layout plus PDB mmCIF files as AlphaFold training examples.

Layout under the data directory::

    alignments/<pdb_chain>/a3m/{uniref90_hits,bfd_uniclust_hits,mgnify_hits}.a3m
    alignments/<pdb_chain>/hhr/pdb70_hits.hhr          (optional: templates)
    mmcif/<pdb_id>.cif[.gz] or mmcif/<id[1:3]>/<pdb_id>.cif[.gz]
    chains.csv              (optional: pdb_chain_id,release_date,resolution[,...])
    validation_chains.txt   (held-out chain ids, one per line)

``<pdb_chain>`` is ``<pdb_id>_<author chain id>`` (e.g. ``1hf9_A``). Chains are filtered by
release date and resolution from ``chains.csv`` when it exists.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.alphafold2.data import mmcif
from benchmarks.alphafold2.data.features import (
    RawChain,
    empty_templates,
    msa_to_array,
    template_features,
)
from benchmarks.alphafold2.data.parsers import parse_a3m, parse_hhr
from benchmarks.alphafold2.data.transforms import FeatureConfig, make_example
from benchmarks.core.errors import InputError

MSA_FILES = ("uniref90_hits.a3m", "bfd_uniclust_hits.a3m", "mgnify_hits.a3m")
TEMPLATE_HITS_FILE = Path("hhr") / "pdb70_hits.hhr"
CHAINS_TABLE = "chains.csv"
VALIDATION_LIST = "validation_chains.txt"


@dataclass
class ChainFilter:
    """Which chains may be used for training (AF2 suppl. 1.2.5; MLPerf cut-off 2021-09-16)."""

    max_release_date: dt.date | None = None
    max_resolution: float | None = None
    max_template_date: dt.date | None = None


class ChainReader:
    """Reads one chain's alignments, structure and (optionally) templates from disk."""

    def __init__(self, data_dir: str | Path, use_templates: bool, max_template_hits: int,
                 max_template_date: dt.date | None):
        self.data_dir = Path(data_dir)
        self.alignment_dir = self.data_dir / "alignments"
        self.mmcif_dir = self.data_dir / "mmcif"
        self.use_templates = use_templates
        self.max_template_hits = max_template_hits
        self.max_template_date = max_template_date

    def mmcif_path(self, pdb_id: str) -> Path | None:
        pdb_id = pdb_id.lower()
        for folder in (self.mmcif_dir, self.mmcif_dir / pdb_id[1:3]):
            for suffix in (".cif", ".cif.gz"):
                path = folder / f"{pdb_id}{suffix}"
                if path.is_file():
                    return path
        return None

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one reader per dataset, bounded cache
    def structure(self, pdb_id: str, chain_id: str) -> mmcif.ChainStructure | None:
        path = self.mmcif_path(pdb_id)
        if path is None:
            return None
        try:
            return mmcif.parse_chain(path, chain_id)
        except InputError:
            return None

    def read(self, pdb_chain_id: str) -> RawChain:
        pdb_id, _, chain_id = pdb_chain_id.partition("_")
        path = self.mmcif_path(pdb_id)
        if path is None:
            raise InputError(f"{self.mmcif_dir}: no mmCIF file for {pdb_id}")
        structure = mmcif.parse_chain(path, chain_id)
        folder = self.alignment_dir / pdb_chain_id
        msas = []
        for name in MSA_FILES:
            msa_path = folder / "a3m" / name
            if msa_path.is_file():
                msa = parse_a3m(msa_path.read_text(), source=str(msa_path))
                if len(msa.sequences[0]) != len(structure.sequence):
                    raise InputError(f"{msa_path}: query has {len(msa.sequences[0])} residues, "
                                     f"the mmCIF chain has {len(structure.sequence)}")
                msas.append(msa)
        if not msas:
            raise InputError(f"{folder / 'a3m'}: none of {', '.join(MSA_FILES)} found")
        msa, deletion_matrix = msa_to_array(msas)
        templates = empty_templates(len(structure.sequence))
        hhr_path = folder / TEMPLATE_HITS_FILE
        if self.use_templates and hhr_path.is_file():
            hits = parse_hhr(hhr_path.read_text(), source=str(hhr_path))
            templates = template_features(
                structure.sequence, hits, self.structure, self.max_template_hits,
                self.max_template_date, exclude_pdb_id=pdb_id)
        return RawChain(
            name=pdb_chain_id, sequence=structure.sequence, msa=msa,
            deletion_matrix=deletion_matrix, all_atom_positions=structure.all_atom_positions,
            all_atom_mask=structure.all_atom_mask, resolution=structure.resolution, **templates)


def read_chain_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: chain list not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise InputError(f"{path}: chain list is empty")
    return ids


def split_chains(data_dir: str | Path, chain_filter: ChainFilter) -> tuple[list[str], list[str]]:
    """(training, validation) chain ids: every chain with alignments, minus the held-out list,
    filtered by ``chains.csv`` (release date, resolution) where the table exists."""
    data_dir = Path(data_dir)
    alignment_dir = data_dir / "alignments"
    if not alignment_dir.is_dir():
        raise InputError(f"{alignment_dir}: alignment folder not found")
    all_chains = sorted(p.name for p in alignment_dir.iterdir() if (p / "a3m").is_dir())
    if not all_chains:
        raise InputError(f"{alignment_dir}: no <pdb_chain>/a3m folders")
    validation = read_chain_ids(data_dir / VALIDATION_LIST)
    held_out = set(validation)
    train = [chain for chain in all_chains if chain not in held_out]
    table = data_dir / CHAINS_TABLE
    if table.is_file():
        allowed = _filtered_chains(table, chain_filter)
        train = [chain for chain in train if chain in allowed]
    if not train:
        raise InputError(f"{alignment_dir}: no training chains left after filtering")
    return train, validation


def _filtered_chains(table: Path, chain_filter: ChainFilter) -> set[str]:
    allowed = set()
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "pdb_chain_id" not in reader.fieldnames:
            raise InputError(f"{table}: no 'pdb_chain_id' column")
        for row in reader:
            try:
                release = dt.date.fromisoformat(row["release_date"]) \
                    if row.get("release_date") else None
                resolution = float(row["resolution"]) if row.get("resolution") else None
            except ValueError:
                raise InputError(f"{table}: bad date or resolution for {row['pdb_chain_id']}") \
                    from None
            if chain_filter.max_release_date and release and \
                    release > chain_filter.max_release_date:
                continue
            if chain_filter.max_resolution and resolution and \
                    resolution > chain_filter.max_resolution:
                continue
            allowed.add(row["pdb_chain_id"])
    return allowed


class ProteinDataset(torch.utils.data.Dataset):
    """Map-style dataset of chains; every draw samples a new MSA/crop (seeded, reproducible)."""

    def __init__(self, chain_ids: list[str], reader: ChainReader, config: FeatureConfig,
                 train: bool, seed: int):
        self.chain_ids = chain_ids
        self.reader = reader
        self.config = config
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.chain_ids)

    def __getitem__(self, index: int):
        # Evaluation samples the same MSA every time; training varies with the epoch.
        epoch = self.epoch if self.train else 0
        seed = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        raw = self.reader.read(self.chain_ids[index])
        return make_example(raw, self.config, generator, self.train)
