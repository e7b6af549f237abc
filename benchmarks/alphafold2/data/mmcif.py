"""Protein chains from PDB mmCIF files (``<id>.cif`` or ``<id>.cif.gz``), parsed with gemmi.

A chain is returned over its full SEQRES (``_entity_poly_seq``): residues without coordinates
keep a zero atom mask. Atoms go to the atom37 layout; selenomethionine (MSE) is read as
methionine with its Se as SD. Chains are looked up by author chain id (as in OpenProteinSet
names like ``1abc_A``) and, failing that, by label_asym_id.
"""

from __future__ import annotations

import datetime as dt
import gzip
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.core.errors import InputError

_MODIFIED_TO_STANDARD = {"MSE": "MET"}


@dataclass
class ChainStructure:
    pdb_id: str
    chain_id: str
    sequence: str  # one-letter SEQRES, X for unknown residues
    all_atom_positions: np.ndarray  # [N, 37, 3] float32, Å
    all_atom_mask: np.ndarray  # [N, 37] float32
    resolution: float  # Å; 0.0 when the method reports none (e.g. NMR)
    release_date: dt.date | None

    @property
    def aatype(self) -> np.ndarray:
        return rc.sequence_to_aatype(self.sequence)


def one_letter(residue_name: str) -> str:
    """One-letter code of a residue name; modified residues map to their parent if known."""
    name = _MODIFIED_TO_STANDARD.get(residue_name, residue_name)
    if name in rc.restype_3to1:
        return rc.restype_3to1[name]
    info = gemmi.find_tabulated_residue(name)
    if info is not None and info.is_amino_acid():
        letter = info.one_letter_code.upper()
        if letter in rc.restype_order:
            return letter
    return "X"


def read_block(path: str | Path) -> gemmi.cif.Block:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mmCIF file not found")
    try:
        return gemmi.cif.read(str(path)).sole_block()
    except (RuntimeError, ValueError) as error:
        raise InputError(f"{path}: unreadable mmCIF ({str(error).splitlines()[0]})") from None


def release_date(block: gemmi.cif.Block) -> dt.date | None:
    """First revision date (the PDB release), else the deposition date."""
    dates = list(block.find_values("_pdbx_audit_revision_history.revision_date"))
    if not dates:
        dates = list(block.find_values("_pdbx_database_status.recvd_initial_deposition_date"))
    parsed = []
    for value in dates:
        try:
            parsed.append(dt.date.fromisoformat(gemmi.cif.as_string(value)))
        except ValueError:
            continue
    return min(parsed) if parsed else None


def resolution(block: gemmi.cif.Block) -> float:
    """Resolution in Å from refinement, EM or reflection data; 0.0 if none is reported."""
    for tag in ("_refine.ls_d_res_high", "_em_3d_reconstruction.resolution",
                "_reflns.d_resolution_high"):
        for value in block.find_values(tag):
            try:
                return float(gemmi.cif.as_string(value))
            except ValueError:
                continue
    return 0.0


def _find_polymer(structure: gemmi.Structure, chain_id: str):
    model = structure[0]
    for chain in model:
        if chain.name == chain_id:
            polymer = chain.get_polymer()
            if len(polymer):
                return polymer
    for chain in model:
        for subchain in chain.subchains():
            if subchain.subchain_id() == chain_id and subchain.check_polymer_type() in (
                    gemmi.PolymerType.PeptideL, gemmi.PolymerType.PeptideD):
                return subchain
    return None


def parse_chain(path: str | Path, chain_id: str) -> ChainStructure:
    """Sequence, atom37 coordinates, resolution and release date of one protein chain."""
    block = read_block(path)
    structure = gemmi.make_structure_from_block(block)
    structure.setup_entities()
    if len(structure) == 0:
        raise InputError(f"{path}: no models in the mmCIF file")
    polymer = _find_polymer(structure, chain_id)
    if polymer is None:
        raise InputError(f"{path}: no protein chain '{chain_id}'")
    entity = structure.get_entity_of(polymer)
    if entity is not None and entity.full_sequence:
        residue_names = [gemmi.Entity.first_mon(item) for item in entity.full_sequence]
        indices = [None if r.label_seq is None else r.label_seq - 1 for r in polymer]
    else:  # no SEQRES: use the observed residues
        residue_names = [r.name for r in polymer]
        indices = list(range(len(polymer)))
    n_res = len(residue_names)
    positions = np.zeros((n_res, rc.atom_type_num, 3), dtype=np.float32)
    mask = np.zeros((n_res, rc.atom_type_num), dtype=np.float32)
    for residue, index in zip(polymer, indices, strict=True):
        if index is None or not 0 <= index < n_res or mask[index].any():
            continue  # outside SEQRES, or a second microheterogeneity form
        for atom in residue.first_conformer():
            name = "SD" if residue.name == "MSE" and atom.name == "SE" else atom.name
            if name in rc.atom_order:
                positions[index, rc.atom_order[name]] = atom.pos.tolist()
                mask[index, rc.atom_order[name]] = 1.0
    sequence = "".join(one_letter(name) for name in residue_names)
    return ChainStructure(
        pdb_id=structure.name.lower(), chain_id=chain_id, sequence=sequence,
        all_atom_positions=positions, all_atom_mask=mask,
        resolution=resolution(block), release_date=release_date(block))


def write_chain(path: str | Path, pdb_id: str, chain_id: str, sequence: str,
                all_atom_positions: np.ndarray, all_atom_mask: np.ndarray,
                resolution_angstrom: float, release: dt.date) -> None:
    """Write one protein chain as a PDB-style mmCIF file (``.gz`` path: gzip-compressed)."""
    structure = gemmi.Structure()
    structure.name = pdb_id.upper()
    model = gemmi.Model("1")
    chain = gemmi.Chain(chain_id)
    serial = 0
    for index, letter in enumerate(sequence):
        resname = rc.restype_1to3.get(letter, rc.unk_restype)
        present = np.nonzero(all_atom_mask[index])[0]
        if not len(present):
            continue
        residue = gemmi.Residue()
        residue.name = resname
        residue.seqid = gemmi.SeqId(index + 1, " ")
        residue.label_seq = index + 1
        residue.entity_type = gemmi.EntityType.Polymer
        for atom_index in present:
            serial += 1
            atom = gemmi.Atom()
            atom.name = rc.atom_types[atom_index]
            atom.element = gemmi.Element(atom.name[0])
            atom.pos = gemmi.Position(*map(float, all_atom_positions[index, atom_index]))
            atom.occ, atom.b_iso, atom.serial = 1.0, 30.0, serial
            residue.add_atom(atom)
        chain.add_residue(residue)
    model.add_chain(chain)
    structure.add_model(model)
    structure.setup_entities()
    structure.entities[0].full_sequence = [rc.restype_1to3.get(c, rc.unk_restype)
                                           for c in sequence]
    document = structure.make_mmcif_document()
    block = document.sole_block()
    block.set_pair("_exptl.method", gemmi.cif.quote("X-RAY DIFFRACTION"))
    block.set_pair("_refine.ls_d_res_high", f"{resolution_angstrom:.2f}")
    block.set_pair("_pdbx_database_status.recvd_initial_deposition_date", release.isoformat())
    history = block.init_loop("_pdbx_audit_revision_history.",
                              ["ordinal", "data_content_type", "major_revision",
                               "minor_revision", "revision_date"])
    history.add_row(["1", gemmi.cif.quote("Structure model"), "1", "0", release.isoformat()])
    text = document.as_string()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
