"""Parsers for the alignment files of OpenProteinSet: A3M MSAs and HHsearch ``.hhr`` hits.

A3M: FASTA-like; upper-case letters and ``-`` are match columns aligned to the query,
lower-case letters are insertions relative to the query (they become the deletion counts of
the next match column) and ``.`` is an insertion-state gap (ignored).

HHR: HHsearch/HHblits results; a summary table, then one ``No <n>`` block per hit with a
``>`` description line, a ``Probab=... Aligned_cols=... Sum_probs=...`` line and alignment
rows ``Q <name> <start> <aligned> <end> (<length>)`` / ``T <name> ...`` (possibly wrapped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from benchmarks.core.errors import InputError


@dataclass
class Msa:
    """Aligned sequences (query first) with per-column deletion counts."""

    sequences: list[str]
    deletion_matrix: list[list[int]]
    descriptions: list[str]

    def __len__(self) -> int:
        return len(self.sequences)


def parse_fasta(text: str) -> tuple[list[str], list[str]]:
    """(sequences, descriptions) of a FASTA/A3M text; ``#`` lines are comments."""
    sequences: list[str] = []
    descriptions: list[str] = []
    chunks: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(">"):
            if descriptions:
                sequences.append("".join(chunks))
            descriptions.append(line[1:])
            chunks = []
        else:
            chunks.append(line)
    if descriptions:
        sequences.append("".join(chunks))
    return sequences, descriptions


def parse_a3m(text: str, source: str = "a3m") -> Msa:
    """Parse an A3M alignment; every row must have as many match columns as the query."""
    raw_sequences, descriptions = parse_fasta(text)
    if not raw_sequences:
        raise InputError(f"{source}: no sequences in the alignment")
    sequences, deletion_matrix = [], []
    for row, raw in enumerate(raw_sequences):
        aligned, deletions, pending = [], [], 0
        for char in raw:
            if char.islower():
                pending += 1
            elif char == ".":
                continue
            else:
                aligned.append(char)
                deletions.append(pending)
                pending = 0
        if row and len(aligned) != len(sequences[0]):
            raise InputError(f"{source}: sequence {row + 1} has {len(aligned)} match columns, "
                             f"the query has {len(sequences[0])}")
        sequences.append("".join(aligned))
        deletion_matrix.append(deletions)
    return Msa(sequences, deletion_matrix, descriptions)


@dataclass
class TemplateHit:
    """One HHsearch hit: the aligned query/template residues and their 0-based indices.

    ``indices_query``/``indices_hit`` give, per alignment column, the residue index in the
    query / in the full template sequence, or -1 at a gap.
    """

    index: int
    name: str  # e.g. "1HF9_B": PDB id and chain
    description: str
    probability: float
    aligned_cols: int
    sum_probs: float | None
    query: str
    hit_sequence: str
    indices_query: list[int] = field(default_factory=list)
    indices_hit: list[int] = field(default_factory=list)

    @property
    def pdb_id(self) -> str:
        return self.name.split("_")[0].lower()

    @property
    def chain_id(self) -> str:
        return self.name.split("_", 1)[1] if "_" in self.name else ""


_ALIGNMENT_ROW = re.compile(r"^([QT]) (\S+)\s+(\d+) (\S+)\s+(\d+) \(\s*(\d+)\)\s*$")
_ANNOTATION_ROWS = ("ss_pred", "ss_dssp", "ss_conf", "Consensus")


def _indices(aligned: str, start: int) -> list[int]:
    indices, position = [], start - 1
    for char in aligned:
        if char == "-":
            indices.append(-1)
        else:
            indices.append(position)
            position += 1
    return indices


def _parse_hit(block: list[str], source: str) -> TemplateHit:
    number = int(block[0].split()[1])
    header = next((line for line in block if line.startswith(">")), None)
    if header is None:
        raise InputError(f"{source}: hit {number} has no '>' description line")
    name, _, description = header[1:].partition(" ")
    stats_line = next((line for line in block if line.startswith("Probab=")), "")
    stats = dict(re.findall(r"(\w+)=(\S+)", stats_line))
    if "Aligned_cols" not in stats:
        raise InputError(f"{source}: hit {number} has no 'Aligned_cols=' statistics")
    parts: dict[str, list[str]] = {"Q": [], "T": []}
    starts: dict[str, int] = {}
    for line in block:
        match = _ALIGNMENT_ROW.match(line)
        if match is None or match.group(2) in _ANNOTATION_ROWS:
            continue
        kind, _, start, aligned = match.group(1), match.group(2), int(match.group(3)), \
            match.group(4)
        starts.setdefault(kind, start)
        parts[kind].append(aligned)
    query, hit = "".join(parts["Q"]), "".join(parts["T"])
    if not query or len(query) != len(hit):
        raise InputError(f"{source}: hit {number} has no or unequal query/template rows")
    return TemplateHit(
        index=number, name=name, description=description,
        probability=float(stats.get("Probab", "nan")), aligned_cols=int(stats["Aligned_cols"]),
        sum_probs=float(stats["Sum_probs"]) if "Sum_probs" in stats else None,
        query=query, hit_sequence=hit, indices_query=_indices(query, starts["Q"]),
        indices_hit=_indices(hit, starts["T"]))


def parse_hhr(text: str, source: str = "hhr") -> list[TemplateHit]:
    """All hits of an HHsearch result, in file order."""
    lines = text.splitlines()
    if lines and not lines[0].startswith("Query"):
        raise InputError(f"{source}: not an HHsearch result (first line is not 'Query')")
    blocks: list[list[str]] = []
    for line in lines:
        if re.match(r"^No \d+\s*$", line):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    return [_parse_hit(block, source) for block in blocks]
