"""CosmoFlow: model size, the TFRecord and HDF5 readers, rank sharding, and the smoke run."""

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from benchmarks.core.config import build_config, load_config
from benchmarks.core.data import build_loader
from benchmarks.core.distributed import DistEnv
from benchmarks.core.errors import ConfigError, InputError
from benchmarks.cosmoflow import tfrecord
from benchmarks.cosmoflow.data import (
    SAMPLE_SHAPE,
    CosmoFlowDataConfig,
    CosmoFlowDataset,
    CosmoFlowTransform,
    PoissonTables,
    build_datasets,
    build_transform,
    input_edge,
    read_hdf5_sample,
    read_tfrecord_sample,
    split_files,
    synthesize,
    synthetic_sample,
    write_sample,
)
from benchmarks.cosmoflow.model import CosmoFlow, ModelConfig
from benchmarks.cosmoflow.train import SPEC, MeanAbsoluteError
from tests.conftest import REPO, check_closed, run_mlbench, synth_with_cli

COSMOFLOW_PARAMETERS = 8_907_556

# tf.train.Example from the TensorFlow TFRecord tutorial (feature0=False, feature1=4,
# feature2=b"goat", feature3=0.9876), as TensorFlow serialises it.
TF_TUTORIAL_EXAMPLE = (b"\nR\n\x11\n\x08feature0\x12\x05\x1a\x03\n\x01\x00\n\x11\n\x08feature1"
                       b"\x12\x05\x1a\x03\n\x01\x04\n\x14\n\x08feature2\x12\x08\n\x06\n\x04goat"
                       b"\n\x14\n\x08feature3\x12\x08\x12\x06\n\x04[\xd3|?")
# One record of a TensorFlow event file (TensorFlow's event_file_loader_test): TFRecord
# framing with both masked CRC32Cs, written by TensorFlow.
TF_EVENT_RECORD = (b"\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7fK\"\t\x00\x00\xc0%\xddu"
                   b"\xd5A\x1a\rbrain.Event:1\xec\xf32\x8d")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five training and two validation samples in both layouts."""
    outdir = tmp_path_factory.mktemp("cosmoflow-small")
    synthesize(outdir, samples=5, seed=3)
    return outdir


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset the smoke config is calibrated on: `mlbench synth cosmoflow DIR`."""
    return synth_with_cli(tmp_path_factory, "cosmoflow", 64)


def data_config(data_dir: Path, **keys) -> CosmoFlowDataConfig:
    return CosmoFlowDataConfig(data_dir=str(data_dir), **keys)


# --- model ------------------------------------------------------------------------------------

def test_parameter_count_is_the_mlperf_reference():
    with torch.device("meta"):
        model = CosmoFlow(ModelConfig())
    assert sum(p.numel() for p in model.parameters()) == COSMOFLOW_PARAMETERS


def test_configs_build_their_models():
    full = load_config(SPEC.folder / "config.yaml", SPEC.schema)
    smoke = load_config(SPEC.folder / "smoke.yaml", SPEC.schema)
    with torch.device("meta"):
        assert sum(p.numel() for p in SPEC.build_model(full).parameters()) == COSMOFLOW_PARAMETERS
        assert sum(p.numel() for p in SPEC.build_model(smoke).parameters()) < 200_000


def test_smoke_model_maps_volumes_to_bounded_parameters():
    model = CosmoFlow(ModelConfig(conv_channels=[4, 8, 8], hidden_sizes=[8, 8]), input_size=16)
    out = model(torch.randn(3, 4, 16, 16, 16))
    assert out.shape == (3, 4) and out.abs().max() <= 1.2


def test_input_edge_must_survive_every_pooling():
    with pytest.raises(ConfigError, match="model.conv_channels"):
        CosmoFlow(ModelConfig(), input_size=48)
    with pytest.raises(ConfigError, match="data.downsample"):
        input_edge(CosmoFlowDataConfig(crop_size=30, downsample=4))
    with pytest.raises(ConfigError, match="data.crop_size"):
        build_config({"data": {"crop_size": 256}}, SPEC.schema)
    assert input_edge(CosmoFlowDataConfig(crop_size=64, downsample=2)) == 32


# --- TFRecord and tf.train.Example ------------------------------------------------------------

def test_example_encoding_matches_tensorflow_bytes():
    features = {"feature0": np.array([0]), "feature1": np.array([4]), "feature2": b"goat",
                "feature3": np.array([0.9876], np.float32)}
    assert tfrecord.encode_example(features) == TF_TUTORIAL_EXAMPLE
    parsed = tfrecord.parse_example(TF_TUTORIAL_EXAMPLE)
    assert parsed["feature0"].tolist() == [0] and parsed["feature1"].tolist() == [4]
    assert [bytes(v) for v in parsed["feature2"]] == [b"goat"]
    assert parsed["feature3"].tolist() == [np.float32(0.9876)]


def test_unpacked_floats_are_read_too():
    # FloatList with each value as its own fixed32 field (older writers do this).
    values = b"".join(b"\x0d" + struct.pack("<f", v) for v in (1.5, -2.0))
    feature = b"\x12" + bytes([len(values)]) + values
    entry = b"\x0a\x01y" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    record = b"\x0a" + bytes([len(features)]) + features
    assert tfrecord.parse_example(record)["y"].tolist() == [1.5, -2.0]


def test_record_written_by_tensorflow_is_read(tmp_path):
    path = tmp_path / "events.tfrecord"
    path.write_bytes(TF_EVENT_RECORD)
    assert [bytes(r) for r in tfrecord.iter_records(path)] == [TF_EVENT_RECORD[12:-4]]
    tfrecord.write_records(path, [TF_EVENT_RECORD[12:-4]], compress=False)
    assert path.read_bytes() == TF_EVENT_RECORD


def test_gzip_records_round_trip(tmp_path):
    path = tmp_path / "two.tfrecord"
    tfrecord.write_records(path, [b"first", b"second" * 1000])
    assert path.read_bytes()[:2] == tfrecord.GZIP_MAGIC
    assert [bytes(r) for r in tfrecord.iter_records(path)] == [b"first", b"second" * 1000]


@pytest.mark.parametrize("position, message", [(3, "bad length CRC"), (20, "bad data CRC"),
                                               (-2, "bad data CRC")])
def test_bad_crc_names_the_file(tmp_path, position, message):
    path = tmp_path / "sample_007.tfrecord"
    tfrecord.write_records(path, [b"payload bytes of one record"], compress=False)
    corrupt = bytearray(path.read_bytes())
    corrupt[position] ^= 0x01
    path.write_bytes(gzip.compress(bytes(corrupt)))
    with pytest.raises(InputError, match=f"sample_007.tfrecord: record 0 has a {message}"):
        list(tfrecord.iter_records(path))


def test_truncated_record_names_the_file(tmp_path):
    path = tmp_path / "cut.tfrecord"
    tfrecord.write_records(path, [b"x" * 100], compress=False)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(InputError, match="cut.tfrecord: record 0 truncated"):
        list(tfrecord.iter_records(path))


def test_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(tfrecord.GZIP_MAGIC + b"\x08\x00 not a gzip stream")
    with pytest.raises(InputError, match="bad.tfrecord: corrupt gzip"):
        read_tfrecord_sample(path)


# --- the two sample layouts -------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    counts, target = synthetic_sample(np.random.default_rng(11))
    stem = tmp_path_factory.mktemp("cosmoflow-one") / "univ_000"
    write_sample(stem, counts, target)
    return stem, counts, target


def test_both_layouts_hold_the_same_sample(one_sample):
    stem, counts, target = one_sample
    for path, reader in ((stem.with_suffix(".tfrecord"), read_tfrecord_sample),
                         (stem.with_suffix(".h5"), read_hdf5_sample)):
        read_counts, read_target = reader(path)
        assert read_counts.dtype == torch.int16 and read_counts.shape == SAMPLE_SHAPE
        np.testing.assert_array_equal(read_counts.numpy(), counts)
        np.testing.assert_array_equal(read_target, target)
    with h5py.File(stem.with_suffix(".h5")) as handle:
        assert handle["x"].dtype == np.int16 and handle["y"].dtype == np.float32


def per_sample_preprocessing(counts: np.ndarray, apply_log: bool, crop: int,
                             downsample: int) -> torch.Tensor:
    """The per-sample numpy pipeline the loader's workers ran before the device transform."""
    volume = counts[:crop, :crop, :crop].astype(np.float32)
    if apply_log:
        np.log1p(volume, out=volume)
    else:
        volume /= max(float(volume.mean()), np.finfo(np.float32).tiny)
    tensor = torch.from_numpy(np.ascontiguousarray(volume.transpose(3, 0, 1, 2)))
    return torch.nn.functional.avg_pool3d(tensor, downsample) if downsample > 1 else tensor


@pytest.mark.parametrize("fmt, suffix", [("tfrecord", ".tfrecord"), ("hdf5", ".h5")])
@pytest.mark.parametrize("apply_log, crop, downsample", [(True, 0, 1), (True, 32, 2),
                                                         (False, 0, 1), (False, 64, 4)])
def test_device_transform_gives_the_per_sample_tensors(one_sample, tmp_path, fmt, suffix,
                                                       apply_log, crop, downsample):
    # A batch of two different samples through loader and device transform equals, to float32
    # rounding, the per-sample preprocessing the workers used to do.
    stem, counts, target = one_sample
    other = np.ascontiguousarray(counts[::-1])
    write_sample(tmp_path / "flipped", other, target[::-1].copy())
    files = [stem.with_suffix(suffix), (tmp_path / "flipped").with_suffix(suffix)]
    dataset = CosmoFlowDataset(files, fmt, crop_size=crop)
    loader = build_loader(dataset, 2, train=False, env=DistEnv(), device=torch.device("cpu"),
                          num_workers=0)
    transform = CosmoFlowTransform(apply_log, downsample)
    (volumes, targets), = [transform(batch) for batch in loader]
    edge = (crop or 128) // downsample
    assert volumes.shape == (2, 4, edge, edge, edge) and volumes.dtype == torch.float32
    assert volumes.is_contiguous()
    for index, sample in enumerate((counts, other)):
        expected = per_sample_preprocessing(sample, apply_log, crop or 128, downsample)
        torch.testing.assert_close(volumes[index], expected, rtol=2e-6, atol=1e-6)
    assert torch.equal(targets[0], torch.from_numpy(target))
    if not apply_log and downsample == 1:
        assert volumes.mean(dim=(1, 2, 3, 4)).tolist() == pytest.approx([1.0, 1.0], rel=1e-4)


def test_training_configs_build_the_transform(one_sample):
    stem, counts, _ = one_sample
    smoke = load_config(SPEC.folder / "smoke.yaml", SPEC.schema)
    transform = build_transform(smoke.data)
    volume, _ = transform((torch.from_numpy(counts[None, :32, :32, :32]), torch.zeros(1, 4)))
    assert volume.shape == (1, 4, 32, 32, 32)
    assert volume.shape[-1] == input_edge(smoke.data)


def test_tfrecord_without_target_names_the_file(tmp_path):
    path = tmp_path / "no_y.tfrecord"
    tfrecord.write_records(path, [tfrecord.encode_example({"x": b"\x00" * 16})])
    with pytest.raises(InputError, match="no_y.tfrecord: tf.train.Example has no feature 'y'"):
        read_tfrecord_sample(path)


def test_tfrecord_of_wrong_size_names_the_file(tmp_path):
    path = tmp_path / "small.tfrecord"
    record = tfrecord.encode_example({"x": np.zeros((8, 8, 8, 4), "<i2").tobytes(),
                                      "y": np.zeros(4, np.float32)})
    tfrecord.write_records(path, [record])
    with pytest.raises(InputError, match=r"small.tfrecord: feature 'x' has 4096 bytes"):
        read_tfrecord_sample(path)


def test_hdf5_of_wrong_shape_names_the_file(tmp_path):
    path = tmp_path / "wrong.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = np.zeros((64, 64, 64, 4), np.int16)
        handle["y"] = np.zeros(4, np.float32)
    with pytest.raises(InputError, match=r"wrong.h5: dataset 'x' is int16 \[64, 64, 64, 4\]"):
        read_hdf5_sample(path)


def test_hdf5_without_target_names_the_file(tmp_path):
    path = tmp_path / "no_y.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", shape=SAMPLE_SHAPE, dtype=np.int16)
    with pytest.raises(InputError, match="no_y.h5: no dataset 'y'"):
        read_hdf5_sample(path)


def test_truncated_hdf5_names_the_file(one_sample, tmp_path):
    stem, _, _ = one_sample
    path = tmp_path / "truncated.h5"
    path.write_bytes(stem.with_suffix(".h5").read_bytes()[:100_000])
    with pytest.raises(InputError, match="truncated.h5"):
        read_hdf5_sample(path)


# --- folders, subsets and rank sharding -------------------------------------------------------

def test_synthesize_writes_both_layouts(small_data):
    for split, count in (("train", 5), ("validation", 2)):
        names = sorted(p.name for p in (small_data / split).iterdir())
        assert names == sorted([f"cosmo_{i:06d}{s}" for i in range(count)
                                for s in (".h5", ".tfrecord")])
    first = small_data / "train" / "cosmo_000000.tfrecord"
    assert first.read_bytes()[:2] == tfrecord.GZIP_MAGIC


def test_table_sampler_draws_poisson_counts():
    # Rates from 0.3 to 60 (the synthetic range and beyond): the frequency of every count
    # matches the Poisson pmf, including the draws the byte tables leave to the exact search.
    rates = np.array([[0.3, 2.5, 11.0], [0.8, 25.0, 60.0]])
    levels = np.repeat(np.arange(3, dtype=np.int32), 100_000)
    counts = PoissonTables(rates).draw(np.random.default_rng(5), levels)
    assert counts.dtype == np.int16 and counts.shape == (300_000, 2)
    for channel in range(2):
        for level in range(3):
            drawn = counts[levels == level, channel]
            rate = rates[channel, level]
            values = np.arange(drawn.max() + 1)
            pmf = np.exp(-rate + values * np.log(rate) - np.cumsum(np.log(np.maximum(values, 1))))
            frequency = np.bincount(drawn) / drawn.size
            sigma = np.sqrt(pmf * (1 - pmf) / drawn.size)
            assert np.all(np.abs(frequency - pmf) < 5 * sigma + 1e-4), (channel, level)


def test_synthetic_targets_are_recoverable_from_the_volume(small_data):
    # Learnable: the mean log-density of channel c rises with target c in every sample.
    dataset = CosmoFlowDataset(split_files(data_config(small_data, format="hdf5"), "train"),
                               "hdf5", crop_size=32)
    loader = build_loader(dataset, len(dataset), train=False, env=DistEnv(),
                          device=torch.device("cpu"), num_workers=0)
    volumes, targets = CosmoFlowTransform()(next(iter(loader)))
    means = volumes.mean(dim=(2, 3, 4)).flatten()
    targets = targets.flatten()
    assert torch.corrcoef(torch.stack([means, targets]))[0, 1] > 0.95


@pytest.mark.parametrize("fmt", ["tfrecord", "hdf5"])
def test_sorted_subset_then_shard_by_rank(small_data, fmt):
    cfg = data_config(small_data, format=fmt, train_subset=4)
    files = split_files(cfg, "train")
    assert [f.name for f in files] == [f"cosmo_{i:06d}.{'h5' if fmt == 'hdf5' else fmt}"
                                       for i in range(4)]
    dataset = CosmoFlowDataset(files, fmt)
    shards = []
    for rank in range(2):
        loader = build_loader(dataset, 2, train=True, env=DistEnv(rank=rank, world_size=2),
                              device=torch.device("cpu"), num_workers=0, seed=5)
        shards.append({files[i].name for i in loader.sampler})
        assert len(loader) == 1
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == {f.name for f in files}


def test_missing_or_empty_split_names_the_folder(small_data, tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path / 'train'}: CosmoFlow train split"):
        build_datasets(data_config(tmp_path))
    (tmp_path / "train").mkdir()
    with pytest.raises(InputError, match="no CosmoFlow tfrecord files"):
        build_datasets(data_config(tmp_path))
    with pytest.raises(InputError, match="train_subset asks for 9 files, found 5"):
        split_files(data_config(small_data, train_subset=9), "train")


def test_build_datasets_checks_a_sample_before_training(small_data, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "validation"):
        (data / split).mkdir(parents=True)
        for source in sorted((small_data / split).glob("*.tfrecord")):
            (data / split / source.name).write_bytes(source.read_bytes())
    victim = data / "train" / "cosmo_000000.tfrecord"
    raw = bytearray(gzip.decompress(victim.read_bytes()))
    raw[1000] ^= 0xFF
    victim.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    with pytest.raises(InputError, match="cosmo_000000.tfrecord: record 0 has a bad data CRC"):
        build_datasets(data_config(data))


def test_mae_metric():
    metric = MeanAbsoluteError()
    metric.update(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    metric.update(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5]]))
    assert metric.compute(torch.device("cpu")) == pytest.approx(2 / 6)
    assert not metric.higher_is_better and metric.mllog_key == "eval_error"
    assert metric.reached(0.12, 0.124) and not metric.reached(0.13, 0.124)


def test_train_py_runs_directly():
    done = subprocess.run([sys.executable, "benchmarks/cosmoflow/train.py", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "--config" in done.stdout


# --- end to end -------------------------------------------------------------------------------

def assert_reached_target(done, target: float = 0.124) -> None:
    assert done.returncode == 0, done.stderr
    run_start, run_stop = done.events("run_start"), done.events("run_stop")
    assert len(run_start) == 1 and run_stop[0]["metadata"]["status"] == "success"
    errors = [e["value"] for e in done.events("eval_error")]
    assert errors and errors[-1] <= target
    assert not done.events("eval_accuracy")
    assert all(e["value"] > 0 for e in done.events("mlbench_throughput"))
    assert done.events("mlbench_target")[0]["metadata"]["lower_is_better"] is True


@pytest.mark.slow
def test_smoke_run_reaches_target(smoke_data, tmp_path):
    log_file = tmp_path / "mllog.txt"
    done = run_mlbench("train", "cosmoflow", "--config", "smoke", "--data-dir", str(smoke_data),
                       "--set", f"training.log_file={log_file}")
    assert_reached_target(done)
    failed, missing, report = check_closed(log_file, tmp_path, "hpc", "3.0.0")
    assert not missing, report
    assert not failed and "SUCCESS" in report, report


@pytest.mark.slow
def test_smoke_run_with_two_processes(smoke_data):
    done = run_mlbench("train", "cosmoflow", "--config", "smoke", "--data-dir", str(smoke_data),
                       launcher=("torchrun", "--standalone", "--nproc_per_node=2"))
    assert_reached_target(done)
    assert "rank=1/2" in done.stderr and "backend=gloo" in done.stderr


@pytest.mark.slow
def test_tfrecord_layout_trains_end_to_end(smoke_data):
    done = run_mlbench("train", "cosmoflow", "--config", "smoke", "--data-dir", str(smoke_data),
                       "--set", "data.format=tfrecord", "--set", "data.train_subset=16",
                       "--set", "data.eval_subset=4", "--set", "training.n_epochs=1",
                       "--set", "training.target=null")
    assert done.returncode == 0, done.stderr
    assert done.events("train_samples")[0]["value"] == 16
    assert len(done.events("eval_error")) == 1
