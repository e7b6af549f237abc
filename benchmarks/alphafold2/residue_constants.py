"""Residue constants of AlphaFold2: amino-acid and atom orders, idealised geometry, chi angles.

The literature values (idealised atom positions per rigid group, chi-angle atoms, symmetric
atom pairs, bond statistics) are the published AlphaFold2 tables (Jumper et al. 2021, suppl.
section 1.8, derived from Engh & Huber 1991). The layout follows OpenFold's
``residue_constants`` so features and checkpoints line up; the derived numpy tables at the
bottom are computed from the literature values when the module is imported.

Conventions:
  * ``aatype`` indexes ``restypes`` (20 standard residues, alphabetical by three-letter code)
    and uses 20 for unknown (``X``).
  * atom37 is the fixed list ``atom_types``; atom14 is the per-residue compact layout
    ``restype_name_to_atom14_names``.
  * Rigid groups: 0 backbone, 1 pre-omega, 2 phi, 3 psi, 4-7 chi1-chi4.
"""

from __future__ import annotations

import numpy as np

# --- residue types -------------------------------------------------------------------------

restypes = ["A", "R", "N", "D", "C", "Q", "E", "G", "H", "I",
            "L", "K", "M", "F", "P", "S", "T", "W", "Y", "V"]
restype_order = {restype: i for i, restype in enumerate(restypes)}
restype_num = len(restypes)  # 20
unk_restype_index = restype_num  # 20: any non-standard residue
restypes_with_x = restypes + ["X"]
restype_order_with_x = {restype: i for i, restype in enumerate(restypes_with_x)}

restype_1to3 = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}
restype_3to1 = {three: one for one, three in restype_1to3.items()}
unk_restype = "UNK"
resnames = [restype_1to3[r] for r in restypes] + [unk_restype]
resname_to_idx = {resname: i for i, resname in enumerate(resnames)}

# HHblits alphabet used by a3m files: B->D, Z->E, U->C, J/O->X; 20 is X, 21 is the gap.
HHBLITS_AA_TO_ID = {
    "A": 0, "B": 2, "C": 1, "D": 2, "E": 3, "F": 4, "G": 5, "H": 6, "I": 7, "J": 20,
    "K": 8, "L": 9, "M": 10, "N": 11, "O": 20, "P": 12, "Q": 13, "R": 14, "S": 15,
    "T": 16, "U": 1, "V": 17, "W": 18, "X": 20, "Y": 19, "Z": 3, "-": 21,
}
ID_TO_HHBLITS_AA = {
    0: "A", 1: "C", 2: "D", 3: "E", 4: "F", 5: "G", 6: "H", 7: "I", 8: "K", 9: "L",
    10: "M", 11: "N", 12: "P", 13: "Q", 14: "R", 15: "S", 16: "T", 17: "V", 18: "W",
    19: "Y", 20: "X", 21: "-",
}
restypes_with_x_and_gap = restypes + ["X", "-"]
# HHblits id -> our id (20 = X, 21 = gap); MSA rows use this 22-letter alphabet.
MAP_HHBLITS_AATYPE_TO_OUR_AATYPE = tuple(
    restypes_with_x_and_gap.index(ID_TO_HHBLITS_AA[i]) for i in range(22)
)
MSA_GAP_INDEX = 21
MSA_MASK_TOKEN_INDEX = 22  # the BERT mask token; MSA one-hot features have 23 classes

# --- atom types ----------------------------------------------------------------------------

atom_types = [
    "N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD", "CD1", "CD2",
    "ND1", "ND2", "OD1", "OD2", "SD", "CE", "CE1", "CE2", "CE3", "NE", "NE1", "NE2", "OE1",
    "OE2", "CH2", "NH1", "NH2", "OH", "CZ", "CZ2", "CZ3", "NZ", "OXT",
]
atom_order = {atom_type: i for i, atom_type in enumerate(atom_types)}
atom_type_num = len(atom_types)  # 37

restype_name_to_atom14_names = {
    "ALA": ["N", "CA", "C", "O", "CB"],
    "ARG": ["N", "CA", "C", "O", "CB", "CG", "CD", "NE", "CZ", "NH1", "NH2"],
    "ASN": ["N", "CA", "C", "O", "CB", "CG", "OD1", "ND2"],
    "ASP": ["N", "CA", "C", "O", "CB", "CG", "OD1", "OD2"],
    "CYS": ["N", "CA", "C", "O", "CB", "SG"],
    "GLN": ["N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "NE2"],
    "GLU": ["N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "OE2"],
    "GLY": ["N", "CA", "C", "O"],
    "HIS": ["N", "CA", "C", "O", "CB", "CG", "ND1", "CD2", "CE1", "NE2"],
    "ILE": ["N", "CA", "C", "O", "CB", "CG1", "CG2", "CD1"],
    "LEU": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2"],
    "LYS": ["N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ"],
    "MET": ["N", "CA", "C", "O", "CB", "CG", "SD", "CE"],
    "PHE": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ"],
    "PRO": ["N", "CA", "C", "O", "CB", "CG", "CD"],
    "SER": ["N", "CA", "C", "O", "CB", "OG"],
    "THR": ["N", "CA", "C", "O", "CB", "OG1", "CG2"],
    "TRP": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3",
            "CH2"],
    "TYR": ["N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH"],
    "VAL": ["N", "CA", "C", "O", "CB", "CG1", "CG2"],
    "UNK": [],
}
# Pad every list to 14 slots with "" (empty slot).
restype_name_to_atom14_names = {
    name: atoms + [""] * (14 - len(atoms)) for name, atoms in restype_name_to_atom14_names.items()
}

# --- chi angles ----------------------------------------------------------------------------

# Atoms defining chi1..chi4 (ARG chi5 is always ~0 and is ignored).
chi_angles_atoms = {
    "ALA": [],
    "ARG": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "NE"],
            ["CG", "CD", "NE", "CZ"]],
    "ASN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "ASP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "CYS": [["N", "CA", "CB", "SG"]],
    "GLN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLY": [],
    "HIS": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "ND1"]],
    "ILE": [["N", "CA", "CB", "CG1"], ["CA", "CB", "CG1", "CD1"]],
    "LEU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "LYS": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "CE"],
            ["CG", "CD", "CE", "NZ"]],
    "MET": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "SD"], ["CB", "CG", "SD", "CE"]],
    "PHE": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "PRO": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"]],
    "SER": [["N", "CA", "CB", "OG"]],
    "THR": [["N", "CA", "CB", "OG1"]],
    "TRP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "TYR": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "VAL": [["N", "CA", "CB", "CG1"]],
}

# [21, 4]: which chi angles exist per residue type (row 20 = unknown, none).
chi_angles_mask = np.array(
    [[1.0 if i < len(chi_angles_atoms[name]) else 0.0 for i in range(4)] for name in resnames[:-1]]
    + [[0.0, 0.0, 0.0, 0.0]],
    dtype=np.float32,
)

# [21, 4]: chi angles that are pi-periodic (symmetric side chains: ASP chi2, GLU chi3,
# PHE chi2, TYR chi2).
_PI_PERIODIC = {"ASP": 1, "GLU": 2, "PHE": 1, "TYR": 1}
chi_pi_periodic = np.zeros((21, 4), dtype=np.float32)
for _name, _chi in _PI_PERIODIC.items():
    chi_pi_periodic[resname_to_idx[_name], _chi] = 1.0

# --- idealised rigid-group geometry --------------------------------------------------------

# Atom positions relative to their rigid group: (atom name, group index, (x, y, z)) in Angstrom.
# Each position is relative to the axis-end atom of the group's rotation axis; the x axis lies
# along the rotation axis and the atom defining the dihedral lies in the xy-plane (y > 0).
rigid_group_atom_positions = {
    "ALA": [
        ("N", 0, (-0.525, 1.363, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)), ("CB", 0, (-0.529, -0.774, -1.205)),
        ("O", 3, (0.627, 1.062, 0.000)),
    ],
    "ARG": [
        ("N", 0, (-0.524, 1.362, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)), ("CB", 0, (-0.524, -0.778, -1.209)),
        ("O", 3, (0.626, 1.062, 0.000)), ("CG", 4, (0.616, 1.390, -0.000)),
        ("CD", 5, (0.564, 1.414, 0.000)), ("NE", 6, (0.539, 1.357, -0.000)),
        ("NH1", 7, (0.206, 2.301, 0.000)), ("NH2", 7, (2.078, 0.978, -0.000)),
        ("CZ", 7, (0.758, 1.093, -0.000)),
    ],
    "ASN": [
        ("N", 0, (-0.536, 1.357, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)), ("CB", 0, (-0.531, -0.787, -1.200)),
        ("O", 3, (0.625, 1.062, 0.000)), ("CG", 4, (0.584, 1.399, 0.000)),
        ("ND2", 5, (0.593, -1.188, 0.001)), ("OD1", 5, (0.633, 1.059, 0.000)),
    ],
    "ASP": [
        ("N", 0, (-0.525, 1.362, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, 0.000, -0.000)), ("CB", 0, (-0.526, -0.778, -1.208)),
        ("O", 3, (0.626, 1.062, -0.000)), ("CG", 4, (0.593, 1.398, -0.000)),
        ("OD1", 5, (0.610, 1.091, 0.000)), ("OD2", 5, (0.592, -1.101, -0.003)),
    ],
    "CYS": [
        ("N", 0, (-0.522, 1.362, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, 0.000, 0.000)), ("CB", 0, (-0.519, -0.773, -1.212)),
        ("O", 3, (0.625, 1.062, -0.000)), ("SG", 4, (0.728, 1.653, 0.000)),
    ],
    "GLN": [
        ("N", 0, (-0.526, 1.361, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, 0.000)), ("CB", 0, (-0.525, -0.779, -1.207)),
        ("O", 3, (0.626, 1.062, -0.000)), ("CG", 4, (0.615, 1.393, 0.000)),
        ("CD", 5, (0.587, 1.399, -0.000)), ("NE2", 6, (0.593, -1.189, -0.001)),
        ("OE1", 6, (0.634, 1.060, 0.000)),
    ],
    "GLU": [
        ("N", 0, (-0.528, 1.361, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)), ("CB", 0, (-0.526, -0.781, -1.207)),
        ("O", 3, (0.626, 1.062, 0.000)), ("CG", 4, (0.615, 1.392, 0.000)),
        ("CD", 5, (0.600, 1.397, 0.000)), ("OE1", 6, (0.607, 1.095, -0.000)),
        ("OE2", 6, (0.589, -1.104, -0.001)),
    ],
    "GLY": [
        ("N", 0, (-0.572, 1.337, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.517, -0.000, -0.000)), ("O", 3, (0.626, 1.062, -0.000)),
    ],
    "HIS": [
        ("N", 0, (-0.527, 1.360, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, 0.000, 0.000)), ("CB", 0, (-0.525, -0.778, -1.208)),
        ("O", 3, (0.625, 1.063, 0.000)), ("CG", 4, (0.600, 1.370, -0.000)),
        ("CD2", 5, (0.889, -1.021, 0.003)), ("ND1", 5, (0.744, 1.160, -0.000)),
        ("CE1", 5, (2.030, 0.851, 0.002)), ("NE2", 5, (2.145, -0.466, 0.004)),
    ],
    "ILE": [
        ("N", 0, (-0.493, 1.373, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, -0.000)), ("CB", 0, (-0.536, -0.793, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)), ("CG1", 4, (0.534, 1.437, -0.000)),
        ("CG2", 4, (0.540, -0.785, -1.199)), ("CD1", 5, (0.619, 1.391, 0.000)),
    ],
    "LEU": [
        ("N", 0, (-0.520, 1.363, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)), ("CB", 0, (-0.522, -0.773, -1.214)),
        ("O", 3, (0.625, 1.063, -0.000)), ("CG", 4, (0.678, 1.371, 0.000)),
        ("CD1", 5, (0.530, 1.430, -0.000)), ("CD2", 5, (0.535, -0.774, 1.200)),
    ],
    "LYS": [
        ("N", 0, (-0.526, 1.362, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, 0.000)), ("CB", 0, (-0.524, -0.778, -1.208)),
        ("O", 3, (0.626, 1.062, -0.000)), ("CG", 4, (0.619, 1.390, 0.000)),
        ("CD", 5, (0.559, 1.417, 0.000)), ("CE", 6, (0.560, 1.416, 0.000)),
        ("NZ", 7, (0.554, 1.387, 0.000)),
    ],
    "MET": [
        ("N", 0, (-0.521, 1.364, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, 0.000, 0.000)), ("CB", 0, (-0.523, -0.776, -1.210)),
        ("O", 3, (0.625, 1.062, -0.000)), ("CG", 4, (0.613, 1.391, -0.000)),
        ("SD", 5, (0.703, 1.695, 0.000)), ("CE", 6, (0.320, 1.786, -0.000)),
    ],
    "PHE": [
        ("N", 0, (-0.518, 1.363, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, 0.000, -0.000)), ("CB", 0, (-0.525, -0.776, -1.212)),
        ("O", 3, (0.626, 1.062, -0.000)), ("CG", 4, (0.607, 1.377, 0.000)),
        ("CD1", 5, (0.709, 1.195, -0.000)), ("CD2", 5, (0.706, -1.196, 0.000)),
        ("CE1", 5, (2.102, 1.198, -0.000)), ("CE2", 5, (2.098, -1.201, -0.000)),
        ("CZ", 5, (2.794, -0.003, -0.001)),
    ],
    "PRO": [
        ("N", 0, (-0.566, 1.351, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, 0.000)), ("CB", 0, (-0.546, -0.611, -1.293)),
        ("O", 3, (0.621, 1.066, 0.000)), ("CG", 4, (0.382, 1.445, 0.0)),
        # CD placed with a 2 degree larger angle than the literature (0.427, 1.440) value,
        # as in AlphaFold2, to close the proline ring better.
        ("CD", 5, (0.477, 1.424, 0.0)),
    ],
    "SER": [
        ("N", 0, (-0.529, 1.360, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)), ("CB", 0, (-0.518, -0.777, -1.211)),
        ("O", 3, (0.626, 1.062, -0.000)), ("OG", 4, (0.503, 1.325, 0.000)),
    ],
    "THR": [
        ("N", 0, (-0.517, 1.364, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, -0.000)), ("CB", 0, (-0.516, -0.793, -1.215)),
        ("O", 3, (0.626, 1.062, 0.000)), ("CG2", 4, (0.550, -0.718, -1.228)),
        ("OG1", 4, (0.472, 1.353, 0.000)),
    ],
    "TRP": [
        ("N", 0, (-0.521, 1.363, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, 0.000)), ("CB", 0, (-0.523, -0.776, -1.212)),
        ("O", 3, (0.627, 1.062, 0.000)), ("CG", 4, (0.609, 1.370, -0.000)),
        ("CD1", 5, (0.824, 1.091, 0.000)), ("CD2", 5, (0.854, -1.148, -0.005)),
        ("CE2", 5, (2.186, -0.678, -0.007)), ("CE3", 5, (0.622, -2.530, -0.007)),
        ("NE1", 5, (2.140, 0.690, -0.004)), ("CH2", 5, (3.028, -2.890, -0.013)),
        ("CZ2", 5, (3.283, -1.543, -0.011)), ("CZ3", 5, (1.715, -3.389, -0.011)),
    ],
    "TYR": [
        ("N", 0, (-0.522, 1.362, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, -0.000, -0.000)), ("CB", 0, (-0.522, -0.776, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)), ("CG", 4, (0.607, 1.382, -0.000)),
        ("CD1", 5, (0.716, 1.195, -0.000)), ("CD2", 5, (0.713, -1.194, -0.001)),
        ("CE1", 5, (2.107, 1.200, -0.002)), ("CE2", 5, (2.104, -1.201, -0.003)),
        ("OH", 5, (4.168, -0.002, -0.005)), ("CZ", 5, (2.791, -0.001, -0.003)),
    ],
    "VAL": [
        ("N", 0, (-0.494, 1.373, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, -0.000)), ("CB", 0, (-0.533, -0.795, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)), ("CG1", 4, (0.540, 1.429, -0.000)),
        ("CG2", 4, (0.533, -0.776, 1.203)),
    ],
}

# Atom pairs whose names are interchangeable by symmetry (the side chain looks the same after
# a 180 degree flip of the last chi angle).
residue_atom_renaming_swaps = {
    "ASP": {"OD1": "OD2"},
    "GLU": {"OE1": "OE2"},
    "PHE": {"CD1": "CD2", "CE1": "CE2"},
    "TYR": {"CD1": "CD2", "CE1": "CE2"},
}

# Van der Waals radii in Angstrom, and peptide-bond statistics (for structural violations).
van_der_waals_radius = {"C": 1.7, "N": 1.55, "O": 1.52, "S": 1.8}
between_res_bond_length_c_n = (1.329, 1.341)  # general, proline
between_res_bond_length_stddev_c_n = (0.014, 0.016)
between_res_cos_angles_c_n_ca = (-0.5203, 0.0353)  # 121.352 +- 2.315 degrees
between_res_cos_angles_ca_c_n = (-0.4473, 0.0311)  # 116.568 +- 1.995 degrees
ca_ca = 3.80209737096  # CA-CA distance of a trans peptide bond

# Covalent bonds between heavy atoms inside each residue, beyond the backbone N-CA, CA-C, C-O
# and CA-CB (all residues but glycine) that every residue shares.
residue_side_chain_bonds = {
    "ALA": "",
    "ARG": "CB-CG CG-CD CD-NE NE-CZ CZ-NH1 CZ-NH2",
    "ASN": "CB-CG CG-OD1 CG-ND2",
    "ASP": "CB-CG CG-OD1 CG-OD2",
    "CYS": "CB-SG",
    "GLN": "CB-CG CG-CD CD-OE1 CD-NE2",
    "GLU": "CB-CG CG-CD CD-OE1 CD-OE2",
    "GLY": "",
    "HIS": "CB-CG CG-ND1 CG-CD2 ND1-CE1 CD2-NE2 CE1-NE2",
    "ILE": "CB-CG1 CB-CG2 CG1-CD1",
    "LEU": "CB-CG CG-CD1 CG-CD2",
    "LYS": "CB-CG CG-CD CD-CE CE-NZ",
    "MET": "CB-CG CG-SD SD-CE",
    "PHE": "CB-CG CG-CD1 CG-CD2 CD1-CE1 CD2-CE2 CE1-CZ CE2-CZ",
    "PRO": "CB-CG CG-CD CD-N",
    "SER": "CB-OG",
    "THR": "CB-OG1 CB-CG2",
    "TRP": "CB-CG CG-CD1 CG-CD2 CD1-NE1 NE1-CE2 CD2-CE2 CD2-CE3 CE2-CZ2 CE3-CZ3 CZ2-CH2 "
           "CZ3-CH2",
    "TYR": "CB-CG CG-CD1 CG-CD2 CD1-CE1 CD2-CE2 CE1-CZ CE2-CZ CZ-OH",
    "VAL": "CB-CG1 CB-CG2",
}
# Bond lengths come from the idealised coordinates above, except the proline ring closure
# N-CD, whose length there depends on chi1/chi2: Engh & Huber (1991) give 1.474 A.
proline_n_cd_bond_length = 1.474
# One standard deviation for every intra-residue bond: Engh & Huber bond-length sigmas are
# 0.01-0.03 A, about 0.02 A typically.
bond_length_stddev = 0.02


# --- derived tables ------------------------------------------------------------------------


def _rigid_transform_4x4(ex: np.ndarray, ey: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 frame whose x axis is ``ex`` and whose xy-plane contains ``ey``."""
    x_axis = ex / np.linalg.norm(ex)
    y_axis = ey - np.dot(ey, x_axis) * x_axis
    y_axis /= np.linalg.norm(y_axis)
    z_axis = np.cross(x_axis, y_axis)
    frame = np.eye(4)
    frame[:3, :3] = np.stack([x_axis, y_axis, z_axis], axis=-1)
    frame[:3, 3] = translation
    return frame


def _make_atom_tables() -> dict[str, np.ndarray]:
    atom14_to_atom37 = np.zeros((21, 14), dtype=np.int64)
    atom37_to_atom14 = np.zeros((21, 37), dtype=np.int64)
    atom14_mask = np.zeros((21, 14), dtype=np.float32)
    atom37_mask = np.zeros((21, 37), dtype=np.float32)
    for restype, resname in enumerate(resnames):
        for atom14_idx, atom_name in enumerate(restype_name_to_atom14_names[resname]):
            if not atom_name:
                continue
            atom37_idx = atom_order[atom_name]
            atom14_to_atom37[restype, atom14_idx] = atom37_idx
            atom37_to_atom14[restype, atom37_idx] = atom14_idx
            atom14_mask[restype, atom14_idx] = 1.0
            atom37_mask[restype, atom37_idx] = 1.0
    return {
        "atom14_to_atom37": atom14_to_atom37,
        "atom37_to_atom14": atom37_to_atom14,
        "atom14_mask": atom14_mask,
        "atom37_mask": atom37_mask,
    }


def _make_rigid_group_tables() -> dict[str, np.ndarray]:
    atom14_to_group = np.zeros((21, 14), dtype=np.int64)
    atom14_group_positions = np.zeros((21, 14, 3), dtype=np.float32)
    default_frames = np.zeros((21, 8, 4, 4), dtype=np.float32)
    default_frames[:] = np.eye(4)  # unknown residues and absent groups: identity
    for restype, letter in enumerate(restypes):
        resname = restype_1to3[letter]
        positions = {}
        for atom_name, group, position in rigid_group_atom_positions[resname]:
            atom14_idx = restype_name_to_atom14_names[resname].index(atom_name)
            atom14_to_group[restype, atom14_idx] = group
            atom14_group_positions[restype, atom14_idx] = position
            positions[atom_name] = np.array(position)
        # Group 0 (backbone) and 1 (pre-omega, no heavy atoms) are the identity.
        default_frames[restype, 2] = _rigid_transform_4x4(  # phi group -> backbone
            positions["N"] - positions["CA"], np.array([1.0, 0.0, 0.0]), positions["N"])
        default_frames[restype, 3] = _rigid_transform_4x4(  # psi group -> backbone
            positions["C"] - positions["CA"], positions["CA"] - positions["N"], positions["C"])
        chis = chi_angles_atoms[resname]
        if chis:
            a0, a1, a2 = (positions[name] for name in chis[0][:3])
            default_frames[restype, 4] = _rigid_transform_4x4(a2 - a1, a0 - a1, a2)
        for chi_idx in range(1, len(chis)):
            # Each chi(k) axis starts at the origin of the chi(k-1) frame.
            axis_end = positions[chis[chi_idx][2]]
            default_frames[restype, 4 + chi_idx] = _rigid_transform_4x4(
                axis_end, np.array([-1.0, 0.0, 0.0]), axis_end)
    return {
        "atom14_to_group": atom14_to_group,
        "atom14_group_positions": atom14_group_positions,
        "default_frames": default_frames,
    }


def _make_chi_atom_indices() -> np.ndarray:
    """[21, 4, 4] atom37 indices of the four atoms of each chi angle (0 where absent)."""
    indices = np.zeros((21, 4, 4), dtype=np.int64)
    for restype, resname in enumerate(resnames[:-1]):
        for chi_idx, atoms in enumerate(chi_angles_atoms[resname]):
            indices[restype, chi_idx] = [atom_order[a] for a in atoms]
    return indices


def _make_ambiguity_tables() -> dict[str, np.ndarray]:
    is_ambiguous = np.zeros((21, 14), dtype=np.float32)
    swap_index = np.tile(np.arange(14, dtype=np.int64), (21, 1))
    for resname, pairs in residue_atom_renaming_swaps.items():
        restype = resname_to_idx[resname]
        names = restype_name_to_atom14_names[resname]
        for atom1, atom2 in pairs.items():
            i, j = names.index(atom1), names.index(atom2)
            is_ambiguous[restype, [i, j]] = 1.0
            swap_index[restype, i], swap_index[restype, j] = j, i
    return {"is_ambiguous": is_ambiguous, "swap_index": swap_index}


def _make_rigid_group_definitions() -> dict[str, np.ndarray]:
    """Atoms that define each rigid group's frame, and the 180-degree-symmetric groups."""
    base_atoms = np.zeros((21, 8, 3), dtype=np.int64)
    group_mask = np.zeros((21, 8), dtype=np.float32)
    is_ambiguous = np.zeros((21, 8), dtype=np.float32)
    ambiguity_rot = np.tile(np.eye(3, dtype=np.float32), (21, 8, 1, 1))
    for restype, resname in enumerate(resnames[:-1]):
        # Frames are built from (point on -x axis, origin, point in xy-plane).
        base_atoms[restype, 0] = [atom_order[a] for a in ("C", "CA", "N")]
        base_atoms[restype, 3] = [atom_order[a] for a in ("CA", "C", "O")]
        group_mask[restype, [0, 3]] = 1.0
        for chi_idx, atoms in enumerate(chi_angles_atoms[resname]):
            base_atoms[restype, 4 + chi_idx] = [atom_order[a] for a in atoms[1:]]
            group_mask[restype, 4 + chi_idx] = 1.0
    for resname in residue_atom_renaming_swaps:
        restype = resname_to_idx[resname]
        last_chi = len(chi_angles_atoms[resname]) - 1
        is_ambiguous[restype, 4 + last_chi] = 1.0
        ambiguity_rot[restype, 4 + last_chi, 1, 1] = -1.0
        ambiguity_rot[restype, 4 + last_chi, 2, 2] = -1.0
    return {
        "base_atoms": base_atoms,
        "group_mask": group_mask,
        "is_ambiguous": is_ambiguous,
        "ambiguity_rot": ambiguity_rot,
    }


def _ideal_positions(resname: str) -> dict[str, np.ndarray]:
    """Atom positions of the idealised residue in its backbone frame, every torsion zero."""
    frames = restype_rigid_group_default_frame[resname_to_idx[resname]].astype(np.float64)
    for group in (5, 6, 7):  # chi2..chi4 frames are relative to the previous chi frame
        frames[group] = frames[group - 1] @ frames[group]
    return {name: frames[group, :3, :3] @ np.array(position) + frames[group, :3, 3]
            for name, group, position in rigid_group_atom_positions[resname]}


def _make_bond_tables() -> dict[str, np.ndarray]:
    """Intra-residue bond lengths [21, 14, 14] (0: not bonded) and van der Waals radii [21, 14].

    A bond length does not change with the torsions, so the idealised geometry gives it
    directly; only the proline ring closure N-CD spans rotatable bonds.
    """
    bond_length = np.zeros((21, 14, 14), dtype=np.float32)
    vdw_radius = np.zeros((21, 14), dtype=np.float32)
    for restype, resname in enumerate(resnames[:-1]):
        names = restype_name_to_atom14_names[resname]
        for atom14_idx, name in enumerate(names):
            if name:
                vdw_radius[restype, atom14_idx] = van_der_waals_radius[name[0]]
        positions = _ideal_positions(resname)
        bonds = ["N-CA", "CA-C", "C-O"] + (["CA-CB"] if "CB" in positions else [])
        for bond in bonds + residue_side_chain_bonds[resname].split():
            atom1, atom2 = bond.split("-")
            if resname == "PRO" and {atom1, atom2} == {"N", "CD"}:
                length = proline_n_cd_bond_length
            else:
                length = np.linalg.norm(positions[atom1] - positions[atom2])
            i, j = names.index(atom1), names.index(atom2)
            bond_length[restype, i, j] = bond_length[restype, j, i] = length
    return {"bond_length": bond_length, "vdw_radius": vdw_radius}


_atoms = _make_atom_tables()
restype_atom14_to_atom37 = _atoms["atom14_to_atom37"]  # [21, 14]
restype_atom37_to_atom14 = _atoms["atom37_to_atom14"]  # [21, 37]
restype_atom14_mask = _atoms["atom14_mask"]  # [21, 14]
restype_atom37_mask = _atoms["atom37_mask"]  # [21, 37]

_groups = _make_rigid_group_tables()
restype_atom14_to_rigid_group = _groups["atom14_to_group"]  # [21, 14]
restype_atom14_rigid_group_positions = _groups["atom14_group_positions"]  # [21, 14, 3]
restype_rigid_group_default_frame = _groups["default_frames"]  # [21, 8, 4, 4]

chi_angles_atom_indices = _make_chi_atom_indices()  # [21, 4, 4]

_ambiguity = _make_ambiguity_tables()
restype_atom14_ambiguous_atoms = _ambiguity["is_ambiguous"]  # [21, 14]
restype_atom14_ambiguous_atoms_swap_idx = _ambiguity["swap_index"]  # [21, 14]

_definitions = _make_rigid_group_definitions()
restype_rigidgroup_base_atom37_idx = _definitions["base_atoms"]  # [21, 8, 3]
restype_rigidgroup_mask = _definitions["group_mask"]  # [21, 8]
restype_rigidgroup_is_ambiguous = _definitions["is_ambiguous"]  # [21, 8]
restype_rigidgroup_ambiguity_rot = _definitions["ambiguity_rot"]  # [21, 8, 3, 3]

_bonds = _make_bond_tables()
restype_atom14_bond_length = _bonds["bond_length"]  # [21, 14, 14], 0 where not bonded
restype_atom14_vdw_radius = _bonds["vdw_radius"]  # [21, 14], 0 for empty slots


def atom14_distance_bounds(overlap_tolerance: float,
                           bond_length_tolerance_factor: float) -> dict[str, np.ndarray]:
    """Allowed intra-residue atom-pair distances, ``lower_bound``/``upper_bound`` [21, 14, 14].

    Bonded pairs: literature length +- tolerance factor x stddev. Other pairs: at least the
    sum of the van der Waals radii minus ``overlap_tolerance``, no upper bound. The diagonal
    and empty slots are meaningless and must be masked by the caller.
    """
    bonded = restype_atom14_bond_length > 0
    radii = restype_atom14_vdw_radius
    slack = bond_length_tolerance_factor * bond_length_stddev
    lower = np.where(bonded, restype_atom14_bond_length - slack,
                     radii[:, :, None] + radii[:, None, :] - overlap_tolerance)
    upper = np.where(bonded, restype_atom14_bond_length + slack, np.inf)
    return {"lower_bound": lower.astype(np.float32), "upper_bound": upper.astype(np.float32)}


def sequence_to_aatype(sequence: str) -> np.ndarray:
    """Map a one-letter sequence to ``aatype`` indices; anything non-standard becomes 20."""
    return np.array([restype_order.get(letter, unk_restype_index) for letter in sequence],
                    dtype=np.int64)
