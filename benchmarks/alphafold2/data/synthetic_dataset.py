"""Write a small, learnable dataset in the real on-disk layout (see :mod:`.dataset`).

Chains come in families. A chain's structure is a deterministic function of its sequence:
each residue class (helix former, strand former, loop residue) has its own backbone dihedrals
(built with ideal bond geometry), so local geometry is learnable from the sequence; side-chain
torsions are fixed per residue type.
Family members differ by mutations within a residue class, so they share a backbone and serve
as each other's templates. MSAs hold family members and random homologs with insertions and
deletions, split across the three A3M files; ``hhr/pdb70_hits.hhr`` lists the family members.
A family is one PDB cluster (``pdb_cluster_id`` in ``chains.csv``).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2 import synthetic_proteins
from benchmarks.alphafold2.data import mmcif
from benchmarks.alphafold2.data.alignments import MSA_FILES
from benchmarks.alphafold2.data.dataset import CHAINS_TABLE, VALIDATION_LIST
from benchmarks.alphafold2.geometry import Rigid

# Backbone dihedrals (phi, psi) in degrees of each residue class; omega is trans (180).
RESIDUE_CLASSES = {
    "helix": ("ALEKMQR", -57.0, -47.0),
    "strand": ("VIYFWT", -120.0, 130.0),
    "loop": ("GPSNDCH", -75.0, 145.0),  # polyproline II
}
_CLASS_OF = {letter: name for name, (letters, _, _) in RESIDUE_CLASSES.items()
             for letter in letters}
MIN_LENGTH, MAX_LENGTH = 12, 24
FIRST_RELEASE = dt.date(2018, 1, 1)
PEPTIDE_C_N = rc.between_res_bond_length_c_n[0]
ANGLE_CA_C_N = math.acos(rc.between_res_cos_angles_ca_c_n[0])
ANGLE_C_N_CA = math.acos(rc.between_res_cos_angles_c_n_ca[0])
C_O_BOND = 1.231
# (chi1, chi2) in degrees that put proline's CD 1.473 A from N with the ideal ring geometry.
PROLINE_PUCKER = (28.0, -16.0)


def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float,
           torsion: float) -> np.ndarray:
    """Atom d with |cd| = bond, angle(b, c, d) = angle, dihedral(a, b, c, d) = torsion (NeRF)."""
    bc = (c - b) / np.linalg.norm(c - b)
    normal = np.cross(b - a, bc)
    normal /= np.linalg.norm(normal)
    local = np.array([-bond * math.cos(angle), bond * math.sin(angle) * math.cos(torsion),
                      bond * math.sin(angle) * math.sin(torsion)])
    return c + np.stack([bc, np.cross(normal, bc), normal], axis=-1) @ local


def _literature_backbone(resname: str) -> tuple[float, float, float]:
    """(N-CA length, CA-C length, N-CA-C angle) of the idealised residue."""
    atoms = {name: np.array(pos) for name, _, pos in rc.rigid_group_atom_positions[resname]}
    n, c = atoms["N"] - atoms["CA"], atoms["C"] - atoms["CA"]
    angle = math.acos(np.dot(n, c) / (np.linalg.norm(n) * np.linalg.norm(c)))
    return float(np.linalg.norm(n)), float(np.linalg.norm(c)), angle


def _backbone_atoms(sequence: str) -> np.ndarray:
    """N, CA, C coordinates [L, 3, 3] from the class dihedrals of each residue."""
    atoms = np.zeros((len(sequence), 3, 3))
    n_ca, ca_c, n_ca_c = _literature_backbone(rc.restype_1to3[sequence[0]])
    atoms[0, 0] = [-n_ca * math.cos(n_ca_c), n_ca * math.sin(n_ca_c), 0.0]
    atoms[0, 2] = [ca_c, 0.0, 0.0]
    for i in range(1, len(sequence)):
        _, psi = RESIDUE_CLASSES[_CLASS_OF[sequence[i - 1]]][1:]
        phi, _ = RESIDUE_CLASSES[_CLASS_OF[sequence[i]]][1:]
        n_ca, ca_c, n_ca_c = _literature_backbone(rc.restype_1to3[sequence[i]])
        prev_n, prev_ca, prev_c = atoms[i - 1]
        n = _place(prev_n, prev_ca, prev_c, PEPTIDE_C_N, ANGLE_CA_C_N, math.radians(psi))
        ca = _place(prev_ca, prev_c, n, n_ca, ANGLE_C_N_CA, math.pi)
        c = _place(prev_c, n, ca, ca_c, n_ca_c, math.radians(phi))
        atoms[i] = (n, ca, c)
    return atoms


def sequence_structure(sequence: str) -> tuple[np.ndarray, np.ndarray]:
    """Atom37 positions and mask determined by the sequence alone."""
    backbone_atoms = torch.from_numpy(_backbone_atoms(sequence))
    n, ca, c = backbone_atoms.unbind(dim=1)
    flip = torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64))
    backbone = Rigid.from_3_points(c, ca, n).compose_rotation(flip)
    aatype = torch.from_numpy(rc.sequence_to_aatype(sequence))
    # Side-chain torsions: chi_k is one of three rotamers, chosen by residue type.
    rotamers = torch.tensor([-60.0, 180.0, 60.0], dtype=torch.float64)
    angles = torch.zeros(len(sequence), 7, dtype=torch.float64)
    for k in range(4):
        angles[:, 3 + k] = rotamers[(aatype + k) % 3]
    # Proline's side chain is a ring: only puckers that close it onto N are chemistry.
    angles[aatype == rc.restype_order["P"], 3:5] = torch.tensor(PROLINE_PUCKER,
                                                                 dtype=torch.float64)
    radians = torch.deg2rad(angles)
    torsions = torch.stack([torch.sin(radians), torch.cos(radians)], dim=-1)
    positions, mask = synthetic_proteins.build_structure(aatype, backbone, torsions)
    positions = positions.numpy()
    # Carbonyl O in the peptide plane, opposite the bisector of C->CA and C->N(next).
    o = rc.atom_order["O"]
    for i in range(len(sequence) - 1):
        to_ca = positions[i, 1] - positions[i, 2]
        to_n = positions[i + 1, 0] - positions[i, 2]
        bisector = to_ca / np.linalg.norm(to_ca) + to_n / np.linalg.norm(to_n)
        positions[i, o] = positions[i, 2] - C_O_BOND * bisector / np.linalg.norm(bisector)
    return positions.astype(np.float32), mask.float().numpy()


def _mutate(sequence: str, rate: float, rng: np.random.Generator, same_class: bool) -> str:
    letters = list(sequence)
    for i, letter in enumerate(letters):
        if rng.random() < rate:
            pool = RESIDUE_CLASSES[_CLASS_OF[letter]][0] if same_class else "".join(rc.restypes)
            letters[i] = pool[rng.integers(len(pool))]
    return "".join(letters)


def _a3m_row(sequence: str, rng: np.random.Generator) -> str:
    """A homolog row: mutations, a few deletions (-) and insertions (lower case)."""
    row = []
    for letter in _mutate(sequence, 0.3, rng, same_class=False):
        if rng.random() < 0.05:
            row.append("-")
            continue
        row.append(letter)
        if rng.random() < 0.05:
            row.append("".join(rng.choice(list("acdefghiklmnpqrstvwy"), rng.integers(1, 4))))
    return "".join(row)


def _hhr_text(query_name: str, query: str, hits: list[tuple[str, str]]) -> str:
    """An HHsearch result whose hits align every residue of the query to the template."""
    n = len(query)
    lines = [f"Query         {query_name}", f"Match_columns {n}", "No_of_seqs    1 out of 1",
             "Neff          1", f"Searched_HMMs {len(hits)}", "", " No Hit" + " " * 29
             + "Prob E-value P-value  Score    SS Cols Query HMM  Template HMM"]
    for number, (name, _) in enumerate(hits, start=1):
        lines.append(f"{number:3d} {name:<30s} 100.0 1E-30 1E-35  150.0   0.0 {n:4d}    1-{n:<4d}"
                     f"   1-{n:<4d} ({n})")
    lines.append("")
    for number, (name, sequence) in enumerate(hits, start=1):
        identity = sum(a == b for a, b in zip(query, sequence, strict=True)) * 100 // n
        lines += [f"No {number}", f">{name} synthetic family member; X-RAY {{synthetic}}",
                  f"Probab=100.00  E-value=1e-30  Score=150.00  Aligned_cols={n}  "
                  f"Identities={identity}%  Similarity=1.000  Sum_probs={n - 1:.1f}  "
                  "Template_Neff=1.000", "",
                  f"Q {query_name:<14s}{1:4d} {query}{n:5d} ({n})",
                  f"Q Consensus     {1:4d} {query.lower()}{n:5d} ({n})",
                  " " * 22 + "|" * n,
                  f"T Consensus     {1:4d} {sequence.lower()}{n:5d} ({n})",
                  f"T {name:<14s}{1:4d} {sequence}{n:5d} ({n})",
                  f"T ss_pred            {'C' * n}", "", ""]
    return "\n".join(lines) + "\n"


def _pdb_id(index: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return f"{index // 1296 % 9 + 1}s{digits[index // 36 % 36]}{digits[index % 36]}"


def synthesize(outdir: str | Path, samples: int = 24, seed: int = 0) -> Path:
    """Write ``samples`` chains (at least 2; 1 in 5 held out for validation) under ``outdir``."""
    outdir = Path(outdir)
    samples = max(2, samples)
    rng = np.random.default_rng(seed)
    family_size = 4
    n_families = max(1, math.ceil(samples / family_size))
    families = []
    for _ in range(n_families):
        length = int(rng.integers(MIN_LENGTH, MAX_LENGTH + 1))
        families.append("".join(rng.choice(list(rc.restypes), length)))

    chains = []  # (chain id, family index, sequence, release date)
    for index in range(samples):
        family = index % n_families
        sequence = _mutate(families[family], 0.15, rng, same_class=True)
        chains.append((f"{_pdb_id(index)}_A", family, sequence,
                       FIRST_RELEASE + dt.timedelta(days=7 * index)))

    (outdir / "mmcif").mkdir(parents=True, exist_ok=True)
    rows = ["pdb_chain_id,pdb_id,author_chain_id,release_date,resolution,pdb_cluster_id,"
            "sequence_length,sequence"]
    for chain_id, family, sequence, release in tqdm(chains, desc="alphafold2 synth",
                                                    unit="chain"):
        pdb_id = chain_id.split("_")[0]
        positions, mask = sequence_structure(sequence)
        resolution = float(np.round(rng.uniform(1.2, 2.8), 2))
        mmcif.write_chain(outdir / "mmcif" / f"{pdb_id}.cif.gz", pdb_id, "A", sequence,
                          positions, mask, resolution, release)
        rows.append(f"{chain_id},{pdb_id},A,{release.isoformat()},{resolution},{family},"
                    f"{len(sequence)},{sequence}")

        folder = outdir / "alignments" / chain_id
        (folder / "a3m").mkdir(parents=True, exist_ok=True)
        (folder / "hhr").mkdir(parents=True, exist_ok=True)
        relatives = [(c, s) for c, f, s, _ in chains if f == family and c != chain_id]
        homologs = [s for _, s in relatives] + [_a3m_row(sequence, rng)
                                                for _ in range(int(rng.integers(6, 24)))]
        split = len(homologs) // 2
        groups = [homologs[:split], homologs[split:], homologs[:3]]  # mgnify overlaps uniref90
        for name, group in zip(MSA_FILES, groups, strict=True):
            entries = [f">{chain_id}\n{sequence}"] + [
                f">homolog_{i} synthetic\n{row}" for i, row in enumerate(group)]
            (folder / "a3m" / name).write_text("\n".join(entries) + "\n")
        (folder / "hhr" / "pdb70_hits.hhr").write_text(_hhr_text(
            chain_id, sequence, [(c.upper(), s) for c, s in relatives]))

    (outdir / CHAINS_TABLE).write_text("\n".join(rows) + "\n")
    validation = [chain_id for index, (chain_id, _, _, _) in enumerate(chains) if index % 5 == 4]
    validation = validation or [chains[-1][0]]
    (outdir / VALIDATION_LIST).write_text("\n".join(validation) + "\n")
    return outdir
