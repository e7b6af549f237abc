"""AlphaFold2 data: A3M/HHR/mmCIF parsers, feature sampling, the on-disk dataset."""

import datetime as dt
import gzip
import math
import shutil

import gemmi
import numpy as np
import pytest
import torch

from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.data import mmcif
from benchmarks.alphafold2.data.alignments import PackedAlignments, pack_alignments
from benchmarks.alphafold2.data.alignments import main as pack_main
from benchmarks.alphafold2.data.dataset import (
    ChainFilter,
    ChainReader,
    ProteinDataset,
    read_chains_table,
    sampling_weights,
    split_chains,
)
from benchmarks.alphafold2.data.features import msa_to_array, template_features
from benchmarks.alphafold2.data.parsers import parse_a3m, parse_hhr
from benchmarks.alphafold2.data.synthetic_dataset import sequence_structure, synthesize
from benchmarks.alphafold2.data.transforms import (
    FeatureConfig,
    _pad_to,
    _stack_padded,
    iteration_features,
    make_example,
    sample_msa,
)
from benchmarks.alphafold2.losses import AlphaFoldLoss
from benchmarks.alphafold2.model import AlphaFold, AlphaFoldConfig
from benchmarks.core.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


A3M = """#22\t1
>query description
MKV-LA
>hit1 with insertions
MKaaV-L.A
>hit2
M--Vlat
LA
"""

HHR = """Query         query
Match_columns 12
No_of_seqs    3 out of 3
Neff          1.0
Searched_HMMs 2

 No Hit                             Prob E-value P-value  Score    SS Cols Query HMM  Template HMM
  1 1ABC_B some protein             99.0 1E-20 1E-25   80.0   0.0    8    3-12     5-13  (40)
  2 2XYZ_A other protein            50.0 1E+01 1E-02   10.0   0.0    4    1-4     11-14  (20)

No 1
>1ABC_B some protein; X-RAY 2.0A {Homo sapiens}
Probab=99.00  E-value=1e-20  Score=80.00  Aligned_cols=8  Identities=50%  Sum_probs=7.5

Q ss_pred             CCHHHH
Q query             3 VLA-GK    7 (12)
Q Consensus       3 vla-gk    7 (12)
                      |.| ||
T Consensus       5 vlaqgk    10 (40)
T 1ABC_B          5 VIAQGK   10 (40)
T ss_dssp             CCHHHH

Q query             8 TWEDG   12 (12)
Q Consensus       8 twedg   12 (12)
                      | | |
T Consensus      11 t-e-g   13 (40)
T 1ABC_B         11 T-E-G   13 (40)




No 2
>2XYZ_A other protein
Probab=50.00  E-value=1e+01  Score=10.00  Aligned_cols=4  Identities=25%  Sum_probs=2.0

Q query             1 MKVL    4 (12)
T 2XYZ_A           11 AKLL   14 (20)
"""


def test_parse_a3m_columns_and_deletions():
    msa = parse_a3m(A3M)
    assert msa.sequences == ["MKV-LA", "MKV-LA", "M--VLA"]
    # Lower-case residues count as deletions before the next match column; '.' is ignored.
    assert msa.deletion_matrix == [[0] * 6, [0, 0, 2, 0, 0, 0], [0, 0, 0, 0, 3, 0]]
    assert msa.descriptions[1] == "hit1 with insertions"


def test_parse_a3m_rejects_ragged_rows():
    with pytest.raises(InputError, match="sequence 2 has 3 match columns"):
        parse_a3m(">q\nMKVL\n>h\nMKV\n", source="x.a3m")
    with pytest.raises(InputError, match="no sequences"):
        parse_a3m("\n", source="empty.a3m")


def test_msa_merge_deduplicates_and_maps_the_alphabet():
    first = parse_a3m(">q\nMKBX\n>a\nMK-X\n")
    second = parse_a3m(">q\nMKBX\n>b\nZKUJ\n>c\nMK-X\n")
    msa, deletions = msa_to_array([first, second])
    assert msa.shape == (3, 4) and deletions.shape == (3, 4)
    d, e, c = rc.restype_order["D"], rc.restype_order["E"], rc.restype_order["C"]
    m, k = rc.restype_order["M"], rc.restype_order["K"]
    assert msa.tolist() == [[m, k, d, 20], [m, k, 21, 20], [e, k, c, 20]]


def test_parse_hhr_hits_with_wrapped_alignments():
    hits = parse_hhr(HHR)
    assert [h.name for h in hits] == ["1ABC_B", "2XYZ_A"]
    first = hits[0]
    assert (first.pdb_id, first.chain_id) == ("1abc", "B")
    assert first.aligned_cols == 8 and first.sum_probs == 7.5 and first.probability == 99.0
    assert first.query == "VLA-GKTWEDG" and first.hit_sequence == "VIAQGKT-E-G"
    assert first.indices_query == [2, 3, 4, -1, 5, 6, 7, 8, 9, 10, 11]
    assert first.indices_hit == [4, 5, 6, 7, 8, 9, 10, -1, 11, -1, 12]
    assert hits[1].indices_hit == [10, 11, 12, 13]


def test_parse_hhr_rejects_other_files():
    with pytest.raises(InputError, match="not an HHsearch result"):
        parse_hhr(">seq\nMKV\n", source="bad.hhr")


def _write_example_chain(path, sequence="MKTAYIAKQRGW"):
    positions, mask = sequence_structure(sequence)
    mask = mask.copy()
    mask[3] = 0.0  # an unobserved residue
    mmcif.write_chain(path, "1xyz", "B", sequence, positions, mask, 1.9, dt.date(2019, 5, 6))
    return positions, mask


@pytest.mark.parametrize("suffix", [".cif", ".cif.gz"])
def test_mmcif_round_trip(tmp_path, suffix):
    path = tmp_path / f"1xyz{suffix}"
    positions, mask = _write_example_chain(path)
    chain = mmcif.parse_chain(path, "B")
    assert chain.sequence == "MKTAYIAKQRGW"
    assert chain.resolution == pytest.approx(1.9)
    assert chain.release_date == dt.date(2019, 5, 6)
    np.testing.assert_array_equal(chain.all_atom_mask, mask)
    np.testing.assert_allclose(chain.all_atom_positions, positions * mask[..., None], atol=1e-3)


def test_mmcif_reads_selenomethionine_as_methionine(tmp_path):
    path = tmp_path / "1xyz.cif"
    _write_example_chain(path)
    structure = gemmi.read_structure(str(path))
    residue = structure[0]["B"][0]
    residue.name = "MSE"
    for atom in residue:
        if atom.name == "SD":
            atom.name, atom.element = "SE", gemmi.Element("Se")
    structure.setup_entities()
    structure.entities[0].full_sequence = ["MSE"] + structure.entities[0].full_sequence[1:]
    structure.make_mmcif_document().write_file(str(path))
    chain = mmcif.parse_chain(path, "B")
    assert chain.sequence.startswith("M")
    assert chain.all_atom_mask[0, rc.atom_order["SD"]] == 1.0


def test_mmcif_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        mmcif.parse_chain(tmp_path / "none.cif", "A")
    path = tmp_path / "1xyz.cif.gz"
    _write_example_chain(path)
    with pytest.raises(InputError, match="no protein chain 'Q'"):
        mmcif.parse_chain(path, "Q")
    broken = tmp_path / "broken.cif.gz"
    broken.write_bytes(gzip.compress(b"data_x\nloop_\n_atom_site.id\n'unterminated\n"))
    with pytest.raises(InputError, match="broken.cif.gz"):
        mmcif.parse_chain(broken, "A")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("af2data"), samples=10, seed=1)


def test_synthetic_structures_have_ideal_peptide_geometry():
    positions, mask = sequence_structure("MKTAYIAKQRGWLLSTEDVAKKHHEPG")
    c, n, ca = rc.atom_order["C"], rc.atom_order["N"], rc.atom_order["CA"]
    peptide = np.linalg.norm(positions[1:, n] - positions[:-1, c], axis=-1)
    np.testing.assert_allclose(peptide, rc.between_res_bond_length_c_n[0], atol=1e-3)
    ca_ca = np.linalg.norm(positions[1:, ca] - positions[:-1, ca], axis=-1)
    np.testing.assert_allclose(ca_ca, 3.8, atol=0.05)


def test_split_filters_and_holds_out_validation(dataset_dir):
    train, validation = split_chains(dataset_dir, ChainFilter())
    assert len(train) + len(validation) == 10 and not set(train) & set(validation)
    early, _ = split_chains(dataset_dir, ChainFilter(max_release_date=dt.date(2018, 1, 20)))
    assert early == [c for c in train if c in {"1s00_A", "1s01_A", "1s02_A"}]
    (dataset_dir / "alignments" / "empty").mkdir()
    missing = dataset_dir / "validation_chains.txt"
    saved = missing.read_text()
    missing.unlink()
    try:
        with pytest.raises(InputError, match="validation_chains.txt"):
            split_chains(dataset_dir, ChainFilter())
    finally:
        missing.write_text(saved)


def test_reader_builds_msa_and_templates(dataset_dir):
    reader = ChainReader(dataset_dir, use_templates=True, max_template_hits=20,
                         max_template_date=None)
    raw = reader.read("1s00_A")
    assert raw.msa.shape[1] == raw.num_res and raw.msa[0].tolist() == raw.aatype.tolist()
    assert raw.template_aatype.shape[0] >= 1  # family members, never the chain itself
    # Template coordinates are the family member's own mmCIF coordinates.
    hit = parse_hhr((dataset_dir / "alignments" / "1s00_A" / "hhr" /
                     "pdb70_hits.hhr").read_text())[0]
    member = reader.structure(hit.pdb_id, hit.chain_id)
    np.testing.assert_allclose(raw.template_all_atom_positions[0], member.all_atom_positions)
    old = template_features(raw.sequence, [hit], reader.structure, 4,
                            max_date=dt.date(2017, 1, 1))
    assert old["template_aatype"].shape[0] == 0  # released after the cut-off


def test_msa_sampling_builds_consistent_cluster_features():
    generator = torch.Generator().manual_seed(0)
    msa = torch.randint(0, 22, (40, 12), generator=generator)
    deletions = torch.randint(0, 4, (40, 12), generator=generator).float()
    config = FeatureConfig(max_msa_clusters=8, max_extra_msa=20)
    sample = sample_msa(msa, deletions, config, generator)
    assert torch.equal(sample["true_msa"][0], msa[0])  # the query is always the first centre
    feat = sample["msa_feat"]
    assert feat.shape == (8, 12, 49) and sample["extra_msa"].shape == (20, 12)
    torch.testing.assert_close(feat[..., :23].sum(-1), torch.ones(8, 12))
    torch.testing.assert_close(feat[..., 25:48].sum(-1), torch.ones(8, 12), atol=1e-4, rtol=0)
    masked = sample["bert_mask"].bool()
    unmasked_centres = feat[..., :23].argmax(-1)[~masked]
    assert torch.equal(unmasked_centres, sample["true_msa"][~masked])


def test_example_crop_keeps_inputs_and_targets_aligned(dataset_dir):
    reader = ChainReader(dataset_dir, use_templates=True, max_template_hits=20,
                         max_template_date=None)
    raw = reader.read("1s01_A")
    config = FeatureConfig(crop_size=12, max_msa_clusters=4, max_extra_msa=8, max_recycles=2)
    inputs, targets = make_example(raw, config, torch.Generator().manual_seed(3), train=True)
    assert inputs["msa_feat"].shape == (3, 4, 12, 49)
    assert inputs["template_aatype"].shape == (4, 12)
    start = int(inputs["residue_index"][0])
    window = slice(start, start + 12)
    assert torch.equal(inputs["aatype"], torch.from_numpy(raw.aatype[window]))
    torch.testing.assert_close(targets["all_atom_positions"],
                               torch.from_numpy(raw.all_atom_positions[window]))
    padded, _ = make_example(raw, FeatureConfig(crop_size=64, max_msa_clusters=4,
                                                max_extra_msa=8, max_recycles=0),
                             torch.Generator().manual_seed(3), train=True)
    assert padded["seq_mask"].sum() == raw.num_res and padded["seq_mask"].shape == (64,)


def test_dataset_batches_feed_the_model_and_loss(dataset_dir):
    train, _ = split_chains(dataset_dir, ChainFilter())
    reader = ChainReader(dataset_dir, True, 20, None)
    config = FeatureConfig(crop_size=16, max_msa_clusters=4, max_extra_msa=8, max_recycles=1)
    dataset = ProteinDataset(train, reader, config, train=True, seed=0)
    inputs, targets = torch.utils.data.default_collate([dataset[0], dataset[1]])
    assert inputs["msa_feat"].shape == (2, 2, 4, 16, 49)
    torch.manual_seed(0)
    model = AlphaFold(AlphaFoldConfig.tiny())
    outputs = model([iteration_features(inputs, i) for i in range(2)])
    loss, parts = AlphaFoldLoss().compute(outputs, targets)
    assert torch.isfinite(loss) and parts["masked_msa"] > 0
    loss.backward()
    first, again = dataset[0][0]["msa_feat"], dataset[0][0]["msa_feat"]
    assert torch.equal(first, again)  # reproducible for a given epoch
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0]["msa_feat"], first)


def test_packed_alignments_read_like_the_raw_folders(dataset_dir, tmp_path):
    packed_dir = tmp_path / "packed"
    shutil.copytree(dataset_dir, packed_dir, ignore=shutil.ignore_patterns("alignments"))
    assert pack_alignments(dataset_dir / "alignments", packed_dir / "pdb_alignments", 3) == 10
    raw_reader = ChainReader(dataset_dir, True, 20, None)
    packed_reader = ChainReader(packed_dir, True, 20, None)
    assert isinstance(packed_reader.alignments, PackedAlignments)
    assert split_chains(packed_dir, ChainFilter()) == split_chains(dataset_dir, ChainFilter())
    for chain in ("1s00_A", "1s03_A"):
        raw, packed = raw_reader.read(chain), packed_reader.read(chain)
        np.testing.assert_array_equal(raw.msa, packed.msa)
        np.testing.assert_array_equal(raw.deletion_matrix, packed.deletion_matrix)
        np.testing.assert_array_equal(raw.template_aatype, packed.template_aatype)


def test_broken_packed_alignments_name_the_file(dataset_dir, tmp_path):
    out = tmp_path / "pdb_alignments"
    pack_alignments(dataset_dir / "alignments", out, shards=1)
    (out / "0.db").write_bytes((out / "0.db").read_bytes()[:50])
    source = PackedAlignments(out)
    with pytest.raises(InputError, match=r"0\.db: .* \(truncated\?\)"):
        source.read(source.chain_ids()[0], "uniref90_hits.a3m")
    (out / "super.index").write_text("{not json")
    with pytest.raises(InputError, match="super.index"):
        PackedAlignments(out)
    assert pack_main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "super.index").exists()


def test_chains_table_filters_and_weights_like_the_reference(tmp_path):
    table = tmp_path / "chains.csv"
    rows = [  # chain, release, resolution, cluster, sequence
        ("1aaa_A", "2020-01-01", "2.0", "7", "ACDE" * 150),
        ("1bbb_A", "2020-01-01", "2.0", "7", "ACDE" * 25),
        ("1ggg_A", "2020-01-01", "", "5", "ACDE" * 75),
        ("1ccc_A", "2020-01-01", "2.0", "3", "AAAAAAAAAC"),  # one residue type above 80 %
        ("1ddd_A", "2020-01-01", "2.0", "-1", "ACDE" * 25),  # in no PDB cluster
        ("1eee_A", "2020-01-01", "9.0", "8", "ACDE" * 25),  # resolution not below 9 A
        ("1fff_A", "2022-01-01", "2.0", "9", "ACDE" * 25),  # released after the cut-off
    ]
    table.write_text("pdb_chain_id,release_date,resolution,pdb_cluster_id,sequence\n" + "".join(
        f"{chain},{release},{resolution},{cluster},{sequence}\n"
        for chain, release, resolution, cluster, sequence in rows))
    records = read_chains_table(table)
    chain_filter = ChainFilter(max_release_date=dt.date(2021, 9, 16), max_resolution=9.0)
    allowed = [chain for chain in records if records[chain].allowed(chain_filter)]
    assert allowed == ["1aaa_A", "1bbb_A", "1ggg_A"]
    weights = sampling_weights(allowed, records)
    assert weights == pytest.approx([1 / math.sqrt(2), 0.5 / math.sqrt(2), 300 / 512])
    assert sampling_weights(allowed, None) is None


def test_repeated_draws_of_a_chain_get_different_samples(dataset_dir):
    train, _ = split_chains(dataset_dir, ChainFilter())
    config = FeatureConfig(crop_size=8, max_msa_clusters=4, max_extra_msa=8, max_recycles=0)
    dataset = ProteinDataset(train, ChainReader(dataset_dir, False, 0, None), config,
                             train=True, seed=0)
    first, again, second = (dataset[key][0]["msa_feat"] for key in ((0, 3), (0, 3), (0, 4)))
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_recycled_features_are_padded_and_stacked_in_one_write():
    samples = [torch.randn(rows, 5, 3) for rows in (4, 2, 3)]
    expected = torch.stack([_pad_to(_pad_to(sample, 1, 7), 0, 6) for sample in samples])
    assert torch.equal(_stack_padded(samples, rows=6, size=7), expected)
