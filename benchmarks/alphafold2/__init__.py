"""AlphaFold2 (OpenFold "initial training", MLPerf HPC) protein structure prediction.

Modules:
  residue_constants  amino-acid/atom tables and idealised geometry (AF2 suppl. 1.8)
  geometry           rigid frames (rotations, quaternions, compose/invert/apply, 3-point frames)
  all_atom           torsions -> frames -> atoms; ground-truth frames/torsions; template feats
  model/             the network (:class:`model.AlphaFold`, :class:`model.AlphaFoldConfig`)
  losses, metrics    FAPE, chi, distogram, masked MSA, pLDDT, ...; lDDT-Cα
  data/              A3M/HHR/mmCIF parsers, MSA sampling and cropping, the on-disk dataset and
                     its synthetic writer (``data.synthetic_dataset``)
  synthetic_proteins idealised structures and random feature batches (tests)
  loop_adapter       the network as the core loop drives it (recycling, EMA) and its metric
  train              ``SPEC``: config, data and model for ``mlbench train alphafold2``
"""
