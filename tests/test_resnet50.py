"""ResNet50 v1.5: model size, ImageFolder reading, and the smoke run end to end."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torchvision.io import read_file
from torchvision.transforms import v2

from benchmarks.core.data import build_loader
from benchmarks.core.distributed import DistEnv
from benchmarks.core.errors import InputError
from benchmarks.resnet50.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderRGB,
    ImageList,
    ImageNetDataConfig,
    JpegBytes,
    build_datasets,
    build_transform,
    collate_fns,
    crops,
    device_decodable,
    load_rgb,
)
from benchmarks.resnet50.model import ResNetModelConfig, build_resnet
from tests.conftest import REPO, check_closed, run_mlbench

RESNET50_V15_PARAMETERS = 25_557_032


def test_parameter_count_is_torchvision_resnet50():
    with torch.device("meta"):
        model = build_resnet(ResNetModelConfig(), 1000)
    assert sum(p.numel() for p in model.parameters()) == RESNET50_V15_PARAMETERS


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
def test_odd_images_decode_to_rgb(tmp_path, decoder):
    image = Image.new("RGB", (8, 8), (200, 10, 10))
    gray, cmyk, png = tmp_path / "gray.JPEG", tmp_path / "cmyk.JPEG", tmp_path / "png.JPEG"
    image.convert("L").save(gray, format="JPEG")
    image.convert("CMYK").save(cmyk, format="JPEG")
    image.save(png, format="PNG")
    for path in (gray, cmyk, png):
        assert load_rgb(path, decoder).shape == (3, 8, 8)
    assert load_rgb(png, decoder)[:, 0, 0].tolist() == [200, 10, 10]


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
def test_unreadable_image_names_the_file(tmp_path, decoder):
    bad = tmp_path / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="broken.JPEG"):
        load_rgb(bad, decoder)


def test_subset_is_spread_over_classes(resnet_data):
    dataset = ImageFolderRGB(resnet_data / "train", sorted(os.listdir(resnet_data / "train")),
                             transform=lambda image: image, subset=50)
    assert len(dataset) == 50
    assert len({label for _, label in dataset.samples}) == 10


def test_only_baseline_gray_or_ycbcr_jpegs_go_to_the_device(tmp_path):
    image = Image.new("RGB", (16, 12), (200, 10, 10))
    saved = {"rgb.JPEG": ("RGB", {}), "gray.JPEG": ("L", {}), "cmyk.JPEG": ("CMYK", {}),
             "progressive.JPEG": ("RGB", {"progressive": True}), "png.JPEG": ("RGB", None)}
    for name, (mode, options) in saved.items():
        fmt = "PNG" if options is None else "JPEG"
        image.convert(mode).save(tmp_path / name, format=fmt, **(options or {}))
    decodable = {name for name in saved if device_decodable(read_file(str(tmp_path / name)))}
    assert decodable == {"rgb.JPEG", "gray.JPEG"}


def one_batch(resnet_data, train: bool, **keys) -> tuple[torch.Tensor, torch.Tensor]:
    """The first evaluation (or training) batch of 16 through loader and device transform."""
    config = ImageNetDataConfig(data_dir=str(resnet_data), image_size=32, resize_size=36,
                                train_subset=16, eval_subset=16, **keys)
    datasets = build_datasets(config)
    collate = collate_fns(config)[0 if train else 1]
    loader = build_loader(datasets[0 if train else 1], 16, train=False, env=DistEnv(),
                          device=torch.device("cpu"), num_workers=0, collate_fn=collate)
    return build_transform(config)(next(iter(loader)))


@pytest.mark.parametrize("decode_device", ["cpu", "cuda"])
def test_device_transform_gives_the_per_sample_tensors(resnet_data, decode_device):
    # Today's per-sample pipeline (crop, then ToDtype and Normalize in the worker) equals the
    # batch normalised on the device, whether the JPEGs were decoded in the worker or there.
    images, labels = one_batch(resnet_data, train=False, decode_device=decode_device)
    config = ImageNetDataConfig(image_size=32, resize_size=36)
    per_sample = v2.Compose([crops(config)[1], v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    reference = ImageFolderRGB(resnet_data / "val", sorted(os.listdir(resnet_data / "train")),
                               per_sample, subset=16)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    for index in range(16):
        expected, label = reference[index]
        torch.testing.assert_close(images[index], expected, rtol=0, atol=0)
        assert labels[index] == label


def test_device_decoding_crops_training_images_there(resnet_data):
    torch.manual_seed(0)
    images, labels = one_batch(resnet_data, train=True, decode_device="cuda")
    assert images.shape == (16, 3, 32, 32) and labels.shape == (16,)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_corrupt_jpeg_decoded_on_the_device_names_the_file(tmp_path):
    good, bad = tmp_path / "good.JPEG", tmp_path / "bad.JPEG"
    Image.new("RGB", (8, 8)).save(good, format="JPEG")
    bad.write_bytes(good.read_bytes()[:200] + b"\x00" * 64)
    batch = ImageList([JpegBytes(read_file(str(path)), path) for path in (good, bad)], False)
    transform = build_transform(ImageNetDataConfig(image_size=8, resize_size=8))
    with pytest.raises(InputError, match="bad.JPEG: cannot decode image"):
        transform((batch, torch.tensor([0, 1])))


@pytest.mark.slow
def test_smoke_run_reaches_target(resnet_data, tmp_path):
    log_file = tmp_path / "mllog.txt"
    done = run_mlbench("train", "resnet50", "--config", "smoke", "--data-dir", str(resnet_data),
                       "--set", f"training.log_file={log_file}")
    assert done.returncode == 0, done.stderr
    run_start, run_stop = done.events("run_start"), done.events("run_stop")
    assert len(run_start) == 1 and run_stop[0]["metadata"]["status"] == "success"
    accuracies = [e["value"] for e in done.events("eval_accuracy")]
    assert accuracies and accuracies[-1] >= 0.9
    assert done.time_to_target() > 0
    assert all(e["value"] > 0 for e in done.events("mlbench_throughput"))
    assert done.events("mlbench_num_parameters")[0]["value"] > 0
    assert log_file.read_text().count(":::MLLOG") == len(done.mllog)
    failed, missing, report = check_closed(log_file, tmp_path, "training", "4.0.0")
    assert not missing, report
    on_purpose = {"eval_accuracy", "global_batch_size", "train_samples", "eval_samples"}
    assert failed <= on_purpose, report


@pytest.mark.slow
def test_two_processes_under_torchrun(resnet_data):
    done = run_mlbench("train", "resnet50", "--config", "smoke", "--data-dir", str(resnet_data),
                       launcher=("torchrun", "--standalone", "--nproc_per_node=2"))
    assert done.returncode == 0, done.stderr
    assert len(done.events("run_start")) == 1, "only rank 0 logs"
    assert done.events("run_stop")[0]["metadata"]["status"] == "success"
    assert "rank=1/2" in done.stderr and "backend=gloo" in done.stderr


@pytest.mark.slow
def test_unreachable_target_exits_3_aborted(resnet_data):
    done = run_mlbench("train", "resnet50", "--config", "smoke", "--data-dir", str(resnet_data),
                       "--set", "training.target=1.01", "--set", "training.n_epochs=1")
    assert done.returncode == 3, done.stderr
    assert done.events("run_stop")[0]["metadata"]["status"] == "aborted"
    assert "not reached" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "model.widht=3"], "model.widht"),
    (["--set", "training.n_epochs=two"], "training.n_epochs"),
    (["--data-dir", "/nonexistent/imagenet"], "/nonexistent/imagenet"),
    (["--config", "/nonexistent/config.yaml"], "/nonexistent/config.yaml"),
])
def test_bad_input_exits_2_with_one_line(resnet_data, args, message):
    base = ["train", "resnet50", "--config", "smoke", "--data-dir", str(resnet_data)]
    done = run_mlbench(*base, *args)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not done.events("run_start")


@pytest.mark.slow
def test_unreadable_image_exits_2_naming_it(resnet_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(resnet_data, data)
    victim = sorted((data / "train" / "n00000004").iterdir())[0]
    victim.write_bytes(b"garbage")
    done = run_mlbench("train", "resnet50", "--config", "smoke", "--data-dir", str(data),
                       "--set", "data.num_workers=0")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and victim.name in errors[0]


def test_train_py_runs_directly():
    done = subprocess.run([sys.executable, "benchmarks/resnet50/train.py", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "--config" in done.stdout
