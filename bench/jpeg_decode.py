"""ImageNet-style JPEG decode + training augmentation per core: PIL path vs torchvision.io path.

Writes ImageNet-sized JPEGs (500x375, textured, quality 90) to a temporary folder, then
times, in one thread, the two ways of producing a normalised 224x224 training crop:

- ``pil``: ``PIL.Image.open(...).convert("RGB")`` + torchvision transforms on PIL images;
- ``torchvision.io``: ``decode_image(read_file(...), mode=RGB)`` + transforms v2 on uint8
  tensors (what ``benchmarks/resnet50/data.py`` does).

With ``--device cuda`` a third path runs ResNet's ``data.decode_device: cuda``: the files'
bytes are read on the CPU (that is all the workers do) and each batch of ``--batch`` is
decoded with nvJPEG, cropped and normalised on the GPU (``ImageTransform``); its images/s is
per GPU, not per core.

Repetitions are interleaved and medians compared. Prints images/s and the ratio to PIL.

    python bench/jpeg_decode.py --images 200 --repeats 5
    python bench/jpeg_decode.py --images 512 --device cuda      # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from benchmarks.resnet50.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageList,
    ImageNetDataConfig,
    JpegBytes,
    build_transform,
)


def write_jpegs(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        y, x = np.mgrid[0:375, 0:500]
        base = np.sin(x / (10 + index % 7)) + np.cos(y / (13 + index % 5))
        image = (127 + 60 * base[..., None] + rng.normal(0, 25, (375, 500, 3))).clip(0, 255)
        path = folder / f"img_{index:05d}.JPEG"
        Image.fromarray(image.astype(np.uint8)).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


PIL_TRANSFORM = transforms.Compose([
    transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
TENSOR_TRANSFORM = v2.Compose([
    v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
    v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def pil_path(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return PIL_TRANSFORM(image.convert("RGB"))


def torchvision_io_path(path: Path) -> torch.Tensor:
    return TENSOR_TRANSFORM(decode_image(read_file(str(path)), mode=ImageReadMode.RGB))


PATHS = {"pil": pil_path, "torchvision.io": torchvision_io_path}


def device_decoding(files: list[Path], batch: int, device: torch.device):
    """A pass over ``files`` as ResNet's ``decode_device: cuda`` runs it, ``batch`` at a time."""
    transform = build_transform(ImageNetDataConfig())
    labels = torch.zeros(batch, dtype=torch.int64, device=device)

    def run() -> None:
        for start in range(0, len(files), batch):
            chunk = files[start:start + batch]
            images = ImageList([JpegBytes(read_file(str(path)), path) for path in chunk], True)
            transform((images, labels[:len(chunk)]))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cuda: also time decoding on the GPU")
    parser.add_argument("--batch", type=int, default=256, help="images per GPU decode batch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(Path(tmp), args.images)
        passes = {name: (lambda read=read: [read(path) for path in files])
                  for name, read in PATHS.items()}
        if args.device != "cpu":
            passes[f"decode_jpeg on {args.device} (per GPU)"] = device_decoding(
                files, args.batch, torch.device(args.device))
            next(reversed(passes.values()))()  # nvJPEG and kernel start-up
        rates: dict[str, list[float]] = {name: [] for name in passes}
        names = list(passes)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                started = time.perf_counter()
                passes[name]()
                rates[name].append(len(files) / (time.perf_counter() - started))
    floor = statistics.median(rates["pil"])
    print(f"{args.images} JPEGs 500x375 -> 224x224 train crop, 1 thread, "
          f"{args.repeats} interleaved repeats, medians")
    print("| decode path | images/s | ratio to PIL |")
    print("|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / floor:.2f} |")


if __name__ == "__main__":
    main()
