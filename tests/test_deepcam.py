"""DeepCAM: model size, the HDF5 reader, loss and IoU, optimizer stepping, and the smoke run."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.core import runner
from benchmarks.core.config import GlobalContext, build_config, load_config
from benchmarks.core.data import build_loader
from benchmarks.core.distributed import DistEnv
from benchmarks.core.errors import ConfigError, InputError
from benchmarks.deepcam.data import (
    CHANNELS,
    HEIGHT,
    WIDTH,
    DeepCAMDataConfig,
    DeepCAMDataset,
    block_mean,
    build_datasets,
    build_transform,
    input_shape,
    read_sample,
    read_stats,
    split_files,
    synthesize,
)
from benchmarks.deepcam.model import DeepLabV3Plus, ModelConfig
from benchmarks.deepcam.train import SPEC, MeanIoU, WeightedCrossEntropy
from tests.conftest import REPO, check_closed, run_mlbench, synth_with_cli

DEEPCAM_PARAMETERS = 56_454_720
TINY_MODEL = ["--set", "model.width_divisor=16", "--set", "model.middle_blocks=0",
              "--set", "data.crop_height=384", "--set", "data.crop_width=512",
              "--set", "data.downsample=8", "--set", "data.num_workers=0"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three training and two validation files with stats.h5, at the real size."""
    outdir = tmp_path_factory.mktemp("deepcam-small")
    synthesize(outdir, samples=3, seed=4)
    return outdir


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset the smoke config is calibrated on: `mlbench synth deepcam DIR`."""
    return synth_with_cli(tmp_path_factory, "deepcam", 32)


# --- model ------------------------------------------------------------------------------------

def test_parameter_count_is_the_mlperf_reference():
    with torch.device("meta"):
        model = DeepLabV3Plus(ModelConfig())
    assert sum(p.numel() for p in model.parameters()) == DEEPCAM_PARAMETERS


def test_configs_build_their_models():
    full = load_config(SPEC.folder / "config.yaml", SPEC.schema)
    smoke = load_config(SPEC.folder / "smoke.yaml", SPEC.schema)
    with torch.device("meta"):
        assert sum(p.numel() for p in SPEC.build_model(full).parameters()) == DEEPCAM_PARAMETERS
        assert sum(p.numel() for p in SPEC.build_model(smoke).parameters()) < 1_000_000


def test_sync_batchnorm_keeps_the_parameters():
    config = load_config(SPEC.folder / "config.yaml", SPEC.schema,
                         ["model.sync_batchnorm=true"])
    with torch.device("meta"):
        model = SPEC.build_model(config)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == DEEPCAM_PARAMETERS


def test_logits_have_the_input_resolution():
    model = DeepLabV3Plus(ModelConfig(width_divisor=16, middle_blocks=1)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 16, 48, 80)).shape == (2, 3, 48, 80)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 16, 40, 48))


def test_image_shape_must_fit_the_output_stride():
    assert input_shape(DeepCAMDataConfig()) == (HEIGHT, WIDTH)
    assert input_shape(DeepCAMDataConfig(downsample=8)) == (96, 144)
    assert input_shape(DeepCAMDataConfig(crop_height=192, crop_width=288, downsample=2)) == (
        96, 144)
    with pytest.raises(ConfigError, match="data.crop_height"):
        input_shape(DeepCAMDataConfig(crop_height=100))
    with pytest.raises(ConfigError, match="data.downsample"):
        input_shape(DeepCAMDataConfig(downsample=5))
    with pytest.raises(ConfigError, match="data.crop_width"):
        build_config({"data": {"crop_width": 2000}}, SPEC.schema)


# --- loss and metric --------------------------------------------------------------------------

def test_loss_is_the_reference_weighted_cross_entropy():
    logits, labels = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    weights = torch.tensor([0.986267818390377, 0.0004578708870701058,
                            0.01327431072255291]) ** -0.125
    per_pixel = -torch.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
    expected = (per_pixel * weights[labels]).mean()
    assert WeightedCrossEntropy()(logits, labels).item() == pytest.approx(expected.item())


def one_hot_logits(classes: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float()


def test_mean_iou_per_sample_over_classes():
    labels = torch.tensor([[[0, 0, 1, 1]], [[0, 0, 0, 0]]])
    predictions = torch.tensor([[[0, 1, 1, 1]], [[0, 0, 0, 0]]])
    metric = MeanIoU()
    metric.update(one_hot_logits(predictions), labels)
    # Sample 1: background 1/2, river 2/3, cyclone absent from both (counts as 1).
    # Sample 2: background 1, the absent classes 1 each.
    expected = ((1 / 2 + 2 / 3 + 1) / 3 + 1.0) / 2
    assert metric.compute(torch.device("cpu")) == pytest.approx(expected)
    assert metric.higher_is_better and metric.mllog_key == "eval_accuracy"


def test_mean_iou_accumulates_over_batches_before_dividing():
    labels = torch.randint(0, 3, (5, 6, 7))
    predictions = torch.randint(0, 3, (5, 6, 7))
    whole, parts = MeanIoU(), MeanIoU()
    whole.update(one_hot_logits(predictions), labels)
    for start in (0, 2, 3):
        stop = {0: 2, 2: 3, 3: 5}[start]
        parts.update(one_hot_logits(predictions[start:stop]), labels[start:stop])
    cpu = torch.device("cpu")
    assert parts.compute(cpu) == pytest.approx(whole.compute(cpu))
    assert parts.state[1].item() == 5


# --- data -------------------------------------------------------------------------------------

def test_synthesize_writes_the_real_layout(small_data):
    assert sorted(p.name for p in (small_data / "train").iterdir()) == [
        "data-000000.h5", "data-000001.h5", "data-000002.h5"]
    assert len(list((small_data / "validation").glob("data-*.h5"))) == 2
    with h5py.File(small_data / "train" / "data-000000.h5") as handle:
        assert handle["climate/data"].shape == (HEIGHT, WIDTH, CHANNELS)
        assert handle["climate/data"].dtype == np.float32
        assert handle["climate/labels_0"].shape == (HEIGHT, WIDTH)
        assert set(np.unique(handle["climate/labels_0"][()])) == {0, 1, 2}
    with h5py.File(small_data / "stats.h5") as handle:
        for key in ("mean", "sqmean", "minval", "maxval"):
            assert handle[f"climate/{key}"].shape == (CHANNELS,)
        assert handle["climate/count"][()] == 3


def transformed(small_data: Path, files: list[Path], channels_last: bool = False,
                **crop) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of all ``files`` through the loader and the device transform (on the CPU)."""
    loader = build_loader(DeepCAMDataset(files, **crop), len(files), train=False, env=DistEnv(),
                          device=torch.device("cpu"), num_workers=0)
    config = DeepCAMDataConfig(data_dir=str(small_data))
    return build_transform(config, channels_last)(next(iter(loader)))


def per_sample_preprocessing(data: np.ndarray, labels: np.ndarray, minval: np.ndarray,
                             maxval: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-sample numpy pipeline the loader's workers ran before the device transform."""
    if factor > 1:
        data = block_mean(data, factor)
        labels = labels[factor // 2::factor, factor // 2::factor]
    shift = minval.astype(np.float32)
    scale = (1.0 / (maxval - minval)).astype(np.float32)
    image = np.empty((CHANNELS, *data.shape[:2]), np.float32)
    np.subtract(data.transpose(2, 0, 1), shift[:, None, None], out=image)
    image *= scale[:, None, None]
    return image, labels.astype(np.int64)


@pytest.mark.parametrize("crop", [{}, {"crop_height": 192, "crop_width": 320, "downsample": 4},
                                  {"downsample": 8}])
@pytest.mark.parametrize("channels_last", [False, True])
def test_device_transform_gives_the_per_sample_tensors(small_data, crop, channels_last):
    minval, maxval = read_stats(small_data / "stats.h5")
    files = split_files(DeepCAMDataConfig(data_dir=str(small_data)), "train")[:2]
    images, labels = transformed(small_data, files, channels_last, **crop)
    factor = crop.get("downsample", 1)
    height, width = crop.get("crop_height", HEIGHT), crop.get("crop_width", WIDTH)
    assert images.shape == (2, CHANNELS, height // factor, width // factor)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert images.is_contiguous(memory_format=memory_format)
    for index, path in enumerate(files):
        raw, raw_labels = read_sample(path, (height, width))
        expected, expected_labels = per_sample_preprocessing(raw, raw_labels, minval, maxval,
                                                             factor)
        torch.testing.assert_close(images[index], torch.from_numpy(expected), rtol=0, atol=0)
        assert torch.equal(labels[index], torch.from_numpy(expected_labels))


def test_samples_are_min_max_normalised_and_channels_first(small_data):
    minval, maxval = read_stats(small_data / "stats.h5")
    files = split_files(DeepCAMDataConfig(data_dir=str(small_data)), "train")
    data, labels = transformed(small_data, files[1:2])
    assert data.shape == (1, CHANNELS, HEIGHT, WIDTH) and labels.shape == (1, HEIGHT, WIDTH)
    assert data.amin().item() >= 0.0 and data.amax().item() <= 1.0
    raw, _ = read_sample(files[1])
    expected = (raw[5, 7] - minval) / (maxval - minval)
    np.testing.assert_allclose(data[0, :, 5, 7].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_crop_and_downsample(small_data):
    files = split_files(DeepCAMDataConfig(data_dir=str(small_data)), "train")[:1]
    full, full_labels = transformed(small_data, files)
    small, small_labels = transformed(small_data, files, crop_height=192, crop_width=320,
                                      downsample=4)
    assert small.shape == (1, CHANNELS, 48, 80) and small_labels.shape == (1, 48, 80)
    assert small[0, 3, 2, 5].item() == pytest.approx(full[0, 3, 8:12, 20:24].mean().item(),
                                                     rel=1e-5)
    assert small_labels[0, 2, 5] == full_labels[0, 10, 22]


def test_sorted_subset_then_shard_by_rank(small_data):
    cfg = DeepCAMDataConfig(data_dir=str(small_data), eval_subset=2)
    files = split_files(cfg, "eval")
    dataset = DeepCAMDataset(files, downsample=16)
    shards = [list(build_loader(dataset, 1, train=False, env=DistEnv(rank=rank, world_size=2),
                                device=torch.device("cpu"), num_workers=0).sampler)
              for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == [0, 1] and shards[0] != shards[1]


def write_file(path: Path, data_shape=(HEIGHT, WIDTH, CHANNELS), labels=True,
               label_value: int = 0) -> Path:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("climate/data", shape=data_shape, dtype=np.float32)
        if labels:
            handle.create_dataset("climate/labels_0", shape=(HEIGHT, WIDTH), dtype=np.int32,
                                  fillvalue=label_value)
    return path


@pytest.mark.parametrize("kwargs, message", [
    ({"data_shape": (768, 1152, 4)}, r"'climate/data' has shape \[768, 1152, 4\]"),
    ({"labels": False}, "no dataset 'climate/labels_0'"),
    ({"label_value": 3}, "'climate/labels_0' has values outside 0..2"),
])
def test_bad_sample_names_the_file(tmp_path, kwargs, message):
    path = write_file(tmp_path / "data-bad.h5", **kwargs)
    with pytest.raises(InputError, match=f"data-bad.h5: {message}"):
        read_sample(path)


def test_truncated_sample_names_the_file(small_data, tmp_path):
    path = tmp_path / "data-cut.h5"
    path.write_bytes((small_data / "train" / "data-000000.h5").read_bytes()[:1_000_000])
    with pytest.raises(InputError, match="data-cut.h5"):
        read_sample(path)


def test_stats_file_is_checked(tmp_path):
    with pytest.raises(InputError, match="stats.h5: DeepCAM statistics file not found"):
        read_stats(tmp_path / "stats.h5")
    with h5py.File(tmp_path / "stats.h5", "w") as handle:
        handle["climate/minval"] = np.zeros(CHANNELS, np.float32)
        handle["climate/maxval"] = np.zeros(CHANNELS, np.float32)
    with pytest.raises(InputError, match="stats.h5: climate/maxval must exceed"):
        read_stats(tmp_path / "stats.h5")


def test_missing_split_names_the_folder(small_data, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "stats.h5").write_bytes((small_data / "stats.h5").read_bytes())
    with pytest.raises(InputError, match="no DeepCAM HDF5 files"):
        build_datasets(DeepCAMDataConfig(data_dir=str(tmp_path)))
    write_file(tmp_path / "train" / "data-0.h5")
    with pytest.raises(InputError, match=f"{tmp_path / 'validation'}: DeepCAM validation split"):
        build_datasets(DeepCAMDataConfig(data_dir=str(tmp_path)))


def test_sync_batchnorm_on_cpu_processes_is_a_config_error(small_data):
    context = GlobalContext()
    context.reset()
    context.config = load_config(SPEC.folder / "smoke.yaml", SPEC.schema,
                                 [f"data.data_dir={small_data}", "model.sync_batchnorm=true"])
    context.env, context.device = DistEnv(rank=0, world_size=2), torch.device("cpu")
    try:
        with pytest.raises(ConfigError, match="model.sync_batchnorm"):
            SPEC.build_task(context)
    finally:
        context.reset()


def test_train_py_runs_directly():
    done = subprocess.run([sys.executable, "benchmarks/deepcam/train.py", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "--config" in done.stdout


# --- optimizer stepping -----------------------------------------------------------------------

@pytest.mark.parametrize("accumulation, steps_per_epoch", [(1, 3), (2, 2), (3, 1), (4, 1)])
def test_optimizer_steps_every_gradient_accumulation_batches(small_data, monkeypatch,
                                                            accumulation, steps_per_epoch):
    """3 micro-batches per epoch: one optimizer and scheduler step per group of
    ``accumulation`` (the last group may be short), not one per epoch."""
    steps: list[int] = []
    build_optimizer = runner.build_optimizer

    def counting_optimizer(*args, **kwargs):
        optimizer = build_optimizer(*args, **kwargs)
        optimizer.register_step_post_hook(lambda opt, *_: steps.append(1))
        return optimizer

    monkeypatch.setattr(runner, "build_optimizer", counting_optimizer)
    epochs = 2
    code = runner.main(SPEC, ["--config", "smoke", "--data-dir", str(small_data), "--device",
                              "cpu", *TINY_MODEL, "--set", "data.local_batch_size=1",
                              "--set", f"data.gradient_accumulation={accumulation}",
                              "--set", f"training.n_epochs={epochs}",
                              "--set", "training.target=null"])
    assert code == 0
    assert len(steps) == epochs * steps_per_epoch


# --- end to end -------------------------------------------------------------------------------

def assert_reached_target(done, target: float = 0.82) -> None:
    assert done.returncode == 0, done.stderr
    run_start, run_stop = done.events("run_start"), done.events("run_stop")
    assert len(run_start) == 1 and run_stop[0]["metadata"]["status"] == "success"
    scores = [e["value"] for e in done.events("eval_accuracy")]
    assert scores and scores[-1] >= target
    assert all(e["value"] > 0 for e in done.events("mlbench_throughput"))
    assert done.events("gradient_accumulation_frequency")[0]["value"] == 1


@pytest.mark.slow
def test_smoke_run_reaches_target(smoke_data, tmp_path):
    log_file = tmp_path / "mllog.txt"
    done = run_mlbench("train", "deepcam", "--config", "smoke", "--data-dir", str(smoke_data),
                       "--set", f"training.log_file={log_file}")
    assert_reached_target(done)
    failed, missing, report = check_closed(log_file, tmp_path, "hpc", "3.0.0")
    assert not missing, report
    # The smoke dataset is small on purpose.
    assert failed <= {"train_samples", "eval_samples"}, report


@pytest.mark.slow
def test_smoke_run_with_two_processes(smoke_data):
    done = run_mlbench("train", "deepcam", "--config", "smoke", "--data-dir", str(smoke_data),
                       launcher=("torchrun", "--standalone", "--nproc_per_node=2"))
    assert_reached_target(done)
    assert "rank=1/2" in done.stderr and "backend=gloo" in done.stderr
