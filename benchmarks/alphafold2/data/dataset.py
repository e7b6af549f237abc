"""Read OpenProteinSet alignments plus PDB mmCIF files as AlphaFold training examples.

Layout under the data directory::

    alignments/<pdb_chain>/a3m/{uniref90_hits,bfd_uniclust_hits,mgnify_hits}.a3m
    alignments/<pdb_chain>/hhr/pdb70_hits.hhr          (optional: templates)
      or pdb_alignments/super.index + N.db             (the same files packed, see .alignments)
    mmcif/<pdb_id>.cif[.gz] or mmcif/<id[1:3]>/<pdb_id>.cif[.gz]
    chains.csv              (optional: pdb_chain_id,release_date,resolution,sequence,
                             pdb_cluster_id[,...], as the MLPerf reference's chains.csv)
    validation_chains.txt   (held-out chain ids, one per line)

``<pdb_chain>`` is ``<pdb_id>_<author chain id>`` (e.g. ``1hf9_A``). Where ``chains.csv``
exists, training chains are filtered as in AF2 suppl. 1.2.5 (release date, resolution, no
amino acid above 80 % of the sequence, in a PDB cluster) and sampled with weight
``max(min(length, 512), 256) / 512 / sqrt(cluster size)``, as the MLPerf reference does.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.alphafold2.data import mmcif
from benchmarks.alphafold2.data.alignments import (
    MSA_FILES,
    TEMPLATE_HITS_FILE,
    AlignmentSource,
    open_alignments,
)
from benchmarks.alphafold2.data.features import (
    RawChain,
    empty_templates,
    msa_to_array,
    template_features,
)
from benchmarks.alphafold2.data.parsers import parse_a3m, parse_hhr
from benchmarks.alphafold2.data.transforms import FeatureConfig, make_example
from benchmarks.core.errors import InputError

CHAINS_TABLE = "chains.csv"
VALIDATION_LIST = "validation_chains.txt"


@dataclass
class ChainFilter:
    """Which chains may be used for training (AF2 suppl. 1.2.5; MLPerf cut-off 2021-09-16)."""

    max_release_date: dt.date | None = None
    max_resolution: float | None = None
    max_template_date: dt.date | None = None
    max_residue_frequency: float = 0.8


@dataclass
class ChainRecord:
    """One row of ``chains.csv``; missing columns are ``None``."""

    release_date: dt.date | None
    resolution: float | None
    sequence: str | None
    length: int | None
    cluster_id: str | None

    def allowed(self, chain_filter: ChainFilter) -> bool:
        if chain_filter.max_release_date and self.release_date and \
                self.release_date > chain_filter.max_release_date:
            return False
        if chain_filter.max_resolution and self.resolution and \
                self.resolution >= chain_filter.max_resolution:
            return False
        if self.sequence:
            top = collections.Counter(self.sequence).most_common(1)[0][1]
            if top > chain_filter.max_residue_frequency * len(self.sequence):
                return False
        return self.cluster_id != "-1"  # the reference marks chains in no cluster with -1


class ChainReader:
    """Reads one chain's alignments, structure and (optionally) templates from disk."""

    def __init__(self, data_dir: str | Path, use_templates: bool, max_template_hits: int,
                 max_template_date: dt.date | None):
        self.data_dir = Path(data_dir)
        self.alignments: AlignmentSource = open_alignments(self.data_dir)
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
        msas = []
        for name in MSA_FILES:
            text = self.alignments.read(pdb_chain_id, name)
            if text is not None:
                source = f"{pdb_chain_id}/{name}"
                msa = parse_a3m(text, source=source)
                if len(msa.sequences[0]) != len(structure.sequence):
                    raise InputError(f"{source}: query has {len(msa.sequences[0])} residues, "
                                     f"the mmCIF chain has {len(structure.sequence)}")
                msas.append(msa)
        if not msas:
            raise InputError(f"{pdb_chain_id}: none of {', '.join(MSA_FILES)} found")
        msa, deletion_matrix = msa_to_array(msas)
        templates = empty_templates(len(structure.sequence))
        hits_text = self.alignments.read(pdb_chain_id, TEMPLATE_HITS_FILE) \
            if self.use_templates else None
        if hits_text is not None:
            hits = parse_hhr(hits_text, source=f"{pdb_chain_id}/{TEMPLATE_HITS_FILE}")
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


def split_chains(data_dir: str | Path, chain_filter: ChainFilter,
                 alignments: AlignmentSource | None = None,
                 records: dict[str, ChainRecord] | None = None) -> tuple[list[str], list[str]]:
    """(training, validation) chain ids: every chain with alignments, minus the held-out list,
    filtered by ``chains.csv`` where the table exists. ``alignments`` and ``records`` (the
    table) are read from ``data_dir`` unless the caller has them already."""
    data_dir = Path(data_dir)
    all_chains = (alignments or open_alignments(data_dir)).chain_ids()
    if not all_chains:
        raise InputError(f"{data_dir}: no chains with alignments")
    validation = read_chain_ids(data_dir / VALIDATION_LIST)
    held_out = set(validation)
    train = [chain for chain in all_chains if chain not in held_out]
    records = records or read_chains_table(data_dir / CHAINS_TABLE)
    if records is not None:
        train = [chain for chain in train
                 if chain in records and records[chain].allowed(chain_filter)]
    if not train:
        raise InputError(f"{data_dir}: no training chains left after filtering")
    return train, validation


def read_chains_table(table: Path) -> dict[str, ChainRecord] | None:
    """``chains.csv`` by chain id, or ``None`` when there is no table."""
    if not table.is_file():
        return None
    records = {}
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "pdb_chain_id" not in reader.fieldnames:
            raise InputError(f"{table}: no 'pdb_chain_id' column")
        for row in reader:
            try:
                release = dt.date.fromisoformat(row["release_date"]) \
                    if row.get("release_date") else None
                resolution = float(row["resolution"]) if row.get("resolution") else None
                sequence = row.get("sequence") or None
                length = int(row["sequence_length"]) if row.get("sequence_length") else \
                    len(sequence) if sequence else None
            except ValueError:
                raise InputError(f"{table}: bad date, resolution or sequence_length for "
                                 f"{row['pdb_chain_id']}") from None
            records[row["pdb_chain_id"]] = ChainRecord(
                release, resolution, sequence, length, row.get("pdb_cluster_id") or None)
    return records


def sampling_weights(chain_ids: list[str],
                     records: dict[str, ChainRecord] | None) -> list[float] | None:
    """AF2 suppl. 1.2.5 training weights, as in the MLPerf reference: longer chains (up to
    512 residues) more often, and each chain of a PDB cluster 1/sqrt(cluster size) as often.
    ``None`` (uniform sampling) without a chains table."""
    if records is None:
        return None
    cluster_sizes = collections.Counter(records[chain].cluster_id for chain in chain_ids)
    weights = []
    for chain in chain_ids:
        record = records[chain]
        weight = max(min(record.length or 256, 512), 256) / 512
        if record.cluster_id is not None:
            weight /= math.sqrt(cluster_sizes[record.cluster_id])
        weights.append(weight)
    return weights


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

    def __getitem__(self, key: int | tuple[int, int]):
        """``key`` is an index, or an (index, draw) pair from a weighted sampler: a chain drawn
        twice in one epoch then gets two different MSA samples and crops."""
        index, draw = key if isinstance(key, tuple) else (key, 0)
        # Evaluation samples the same MSA every time; training varies with epoch and draw.
        epoch = self.epoch if self.train else 0
        seed = np.random.SeedSequence([self.seed, epoch, index, draw]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        raw = self.reader.read(self.chain_ids[index])
        return make_example(raw, self.config, generator, self.train)
