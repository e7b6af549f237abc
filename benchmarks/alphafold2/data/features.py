"""Raw per-chain features from parsed files: sequence, merged MSA, templates (numpy).

These are computed once per chain; :mod:`benchmarks.alphafold2.data.transforms` turns them
into a sampled, cropped training example each time the chain is drawn.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.data.mmcif import ChainStructure
from benchmarks.alphafold2.data.parsers import Msa, TemplateHit

# Residue letter -> index in the 22-letter MSA alphabet (20 amino acids, X, gap).
_MSA_INDEX = {letter: rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE[index]
              for letter, index in rc.HHBLITS_AA_TO_ID.items()}


def msa_to_array(msas: Sequence[Msa]) -> tuple[np.ndarray, np.ndarray]:
    """Merge MSAs into (msa [S, N] int64, deletion_matrix [S, N] float32).

    Identical aligned sequences are kept once (the first occurrence), so the query stays row 0.
    """
    seen: set[str] = set()
    rows, deletions = [], []
    for msa in msas:
        for sequence, deletion_row in zip(msa.sequences, msa.deletion_matrix, strict=True):
            if sequence in seen:
                continue
            seen.add(sequence)
            rows.append([_MSA_INDEX.get(letter.upper(), rc.unk_restype_index)
                         for letter in sequence])
            deletions.append(deletion_row)
    return np.asarray(rows, dtype=np.int64), np.asarray(deletions, dtype=np.float32)


@dataclass
class RawChain:
    """Everything read from disk for one chain; templates have a leading T dim (may be 0)."""

    name: str
    sequence: str
    msa: np.ndarray  # [S, N] int64
    deletion_matrix: np.ndarray  # [S, N] float32
    all_atom_positions: np.ndarray  # [N, 37, 3]
    all_atom_mask: np.ndarray  # [N, 37]
    resolution: float
    template_aatype: np.ndarray  # [T, N] int64, 22-letter alphabet (21 = gap)
    template_all_atom_positions: np.ndarray  # [T, N, 37, 3]
    template_all_atom_mask: np.ndarray  # [T, N, 37]
    template_sum_probs: np.ndarray  # [T]

    @property
    def aatype(self) -> np.ndarray:
        return rc.sequence_to_aatype(self.sequence)

    @property
    def num_res(self) -> int:
        return len(self.sequence)


def empty_templates(n_res: int) -> dict[str, np.ndarray]:
    return {
        "template_aatype": np.zeros((0, n_res), dtype=np.int64),
        "template_all_atom_positions": np.zeros((0, n_res, rc.atom_type_num, 3), np.float32),
        "template_all_atom_mask": np.zeros((0, n_res, rc.atom_type_num), np.float32),
        "template_sum_probs": np.zeros((0,), np.float32),
    }


def _hit_offset(hit: TemplateHit, template_sequence: str) -> int | None:
    """Shift to add to the hit's template indices so its residues match the mmCIF SEQRES.

    HHsearch indexes the pdb70 sequence, which normally is the SEQRES (offset 0); when it is
    not, the ungapped hit segment is searched for in the SEQRES. None if it cannot be placed.
    """
    pairs = [(index, letter) for index, letter in zip(hit.indices_hit, hit.hit_sequence,
                                                      strict=True) if index >= 0]
    if not pairs:
        return None

    def matches(offset: int) -> bool:
        hits = sum(0 <= i + offset < len(template_sequence)
                   and template_sequence[i + offset] == letter.upper() for i, letter in pairs)
        return hits >= 0.9 * len(pairs)

    if matches(0):
        return 0
    segment = hit.hit_sequence.replace("-", "").upper()
    found = template_sequence.find(segment)
    if found >= 0 and matches(found - pairs[0][0]):
        return found - pairs[0][0]
    return None


def template_features(query_sequence: str, hits: Sequence[TemplateHit],
                      load_chain: Callable[[str, str], ChainStructure | None],
                      max_hits: int, max_date: dt.date | None,
                      exclude_pdb_id: str | None = None) -> dict[str, np.ndarray]:
    """Template arrays for up to ``max_hits`` usable hits, in hit order.

    A hit is skipped when its structure cannot be loaded, was released after ``max_date``,
    belongs to ``exclude_pdb_id`` (the query's own entry) or does not match its SEQRES.
    """
    n_res = len(query_sequence)
    features: dict[str, list] = {key: [] for key in empty_templates(n_res)}
    for hit in hits:
        if len(features["template_sum_probs"]) >= max_hits:
            break
        if exclude_pdb_id is not None and hit.pdb_id == exclude_pdb_id.lower():
            continue
        chain = load_chain(hit.pdb_id, hit.chain_id)
        if chain is None or (max_date is not None and chain.release_date is not None
                             and chain.release_date > max_date):
            continue
        offset = _hit_offset(hit, chain.sequence)
        if offset is None:
            continue
        aatype = np.full(n_res, rc.MSA_GAP_INDEX, dtype=np.int64)
        positions = np.zeros((n_res, rc.atom_type_num, 3), dtype=np.float32)
        mask = np.zeros((n_res, rc.atom_type_num), dtype=np.float32)
        for query_index, hit_index in zip(hit.indices_query, hit.indices_hit, strict=True):
            template_index = hit_index + offset
            if query_index < 0 or hit_index < 0 or not 0 <= query_index < n_res \
                    or not 0 <= template_index < len(chain.sequence):
                continue
            aatype[query_index] = rc.restype_order_with_x[chain.sequence[template_index]]
            positions[query_index] = chain.all_atom_positions[template_index]
            mask[query_index] = chain.all_atom_mask[template_index]
        features["template_aatype"].append(aatype)
        features["template_all_atom_positions"].append(positions)
        features["template_all_atom_mask"].append(mask)
        features["template_sum_probs"].append(np.float32(hit.sum_probs or 0.0))
    if not features["template_sum_probs"]:
        return empty_templates(n_res)
    return {key: np.stack(values) for key, values in features.items()}
