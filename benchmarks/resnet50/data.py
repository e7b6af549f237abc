"""ImageNet in the ImageFolder layout, and a learnable synthetic ImageFolder of real JPEGs.

Layout: ``<data_dir>/train/<wnid>/*.JPEG`` and ``<data_dir>/val/<wnid>/*.JPEG``; classes are
the sorted folder names of ``train``. Every image is decoded to RGB whatever it holds (real
ImageNet has grayscale and CMYK JPEGs and one PNG named .JPEG), and an unreadable image is
an ``InputError`` naming the file. Training uses RandomResizedCrop + horizontal flip,
evaluation Resize + CenterCrop, both normalised with the ImageNet mean and std.

``data.decoder`` picks the JPEG decoder: ``torchvision`` (torchvision.io, faster per core:
``bench/jpeg_decode.py``) or ``pil`` (for torchvision builds without image codecs, common in
source builds on clusters, and for the release that drops torchvision.io decoding, deprecated
since torchvision 0.29). Both feed the same transforms v2 pipeline.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2
from tqdm import tqdm

from benchmarks.core.config import DataConfig, PositiveInt
from benchmarks.core.data import require_dir
from benchmarks.core.errors import InputError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageNetDataConfig(DataConfig):
    """``image_size`` is the crop fed to the network, ``resize_size`` the eval resize."""

    train_dir: str = "train"
    eval_dir: str = "val"
    image_size: PositiveInt = 224
    resize_size: PositiveInt = 256
    decoder: Literal["torchvision", "pil"] = "torchvision"


class ImageFolderRGB(Dataset):
    """(image tensor, class index) pairs from one split of an ImageFolder tree."""

    def __init__(self, root: Path, classes: list[str], transform: v2.Transform,
                 subset: int = 0, subset_seed: int = 0, decoder: str = "torchvision") -> None:
        self.root = root
        self.decoder = decoder
        self.classes = classes
        self.transform = transform
        index = {name: i for i, name in enumerate(classes)}
        samples = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.name not in index:
                raise InputError(f"{folder}: class folder not present in the training split")
            samples += [(path, index[folder.name]) for path in sorted(folder.iterdir())
                        if path.suffix.lower() in IMAGE_SUFFIXES]
        if not samples:
            raise InputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class "
                             "folders")
        if subset and subset < len(samples):
            generator = torch.Generator().manual_seed(subset_seed)
            keep = sorted(torch.randperm(len(samples), generator=generator)[:subset].tolist())
            samples = [samples[i] for i in keep]
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[item]
        return self.transform(load_rgb(path, self.decoder)), label


def load_rgb(path: Path, decoder: str = "torchvision") -> torch.Tensor:
    """Decode a JPEG or PNG (whatever its suffix says) to an RGB uint8 tensor [3, H, W]."""
    try:
        if decoder == "pil":
            with Image.open(path) as image:
                return v2.functional.pil_to_tensor(image.convert("RGB"))
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        reason = str(err).splitlines()[0].split(". ")[0].split(", ")[-1]
        raise InputError(f"{path}: cannot decode image ({reason})") from None


def class_names(train_root: Path) -> list[str]:
    """Sorted class folder names of the training split."""
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"{train_root}: no class folders")
    return classes


def build_datasets(cfg: ImageNetDataConfig) -> tuple[ImageFolderRGB, ImageFolderRGB]:
    """Training and evaluation splits with the standard augmentation."""
    root = require_dir(cfg.data_dir, "ImageNet data_dir")
    train_root = require_dir(root / cfg.train_dir, "training split (data.train_dir)")
    eval_root = require_dir(root / cfg.eval_dir, "evaluation split (data.eval_dir)")
    to_normalized_float = [v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = v2.Compose([v2.RandomResizedCrop(cfg.image_size, antialias=True),
                           v2.RandomHorizontalFlip(), *to_normalized_float])
    eval_tf = v2.Compose([v2.Resize(cfg.resize_size, antialias=True),
                          v2.CenterCrop(cfg.image_size), *to_normalized_float])
    classes = class_names(train_root)
    return (ImageFolderRGB(train_root, classes, train_tf, cfg.train_subset, decoder=cfg.decoder),
            ImageFolderRGB(eval_root, classes, eval_tf, cfg.eval_subset, decoder=cfg.decoder))


SYNTH_CLASSES = 10
SYNTH_IMAGE_SIZE = 48


def synthesize(outdir: Path, samples: int, seed: int) -> None:
    """A learnable ImageFolder of real JPEG files: ``samples`` training images, a quarter as many
    for validation, over 10 classes.

    Each class has its own colour and stripe frequency, under noise; a grayscale JPEG, a CMYK
    JPEG and a PNG named .JPEG are among the files, as in real ImageNet.
    """
    outdir = Path(outdir)
    rng = np.random.default_rng(seed)
    splits = {"train": samples, "val": max(SYNTH_CLASSES, samples // 4)}
    total = sum(splits.values())
    with tqdm(total=total, desc=f"resnet50 synth -> {outdir}", unit="img") as progress:
        for split, count in splits.items():
            for i in range(count):
                label = i % SYNTH_CLASSES
                folder = outdir / split / f"n{label:08d}"
                folder.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(_class_image(label, rng))
                path = folder / f"{split}_{i:06d}.JPEG"
                _write_image(image, path, variant=i if split == "train" else -1)
                progress.update()


def _class_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """Class colour + class-dependent stripes + noise; random phase so crops differ."""
    size = SYNTH_IMAGE_SIZE
    hue = label / SYNTH_CLASSES * 2 * np.pi
    colour = 127 + 100 * np.array([np.cos(hue), np.cos(hue + 2.1), np.cos(hue + 4.2)])
    y, x = np.mgrid[0:size, 0:size]
    stripes = np.sin((x + rng.uniform(0, size)) * (label + 1) * np.pi / size)
    image = colour[None, None, :] + 40 * stripes[..., None] + rng.normal(0, 20, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_image(image: Image.Image, path: Path, variant: int) -> None:
    """Mostly RGB JPEGs; variants 1-3 are grayscale JPEG, CMYK JPEG and PNG-in-.JPEG."""
    buffer = io.BytesIO()
    if variant == 1:
        image.convert("L").save(buffer, format="JPEG", quality=90)
    elif variant == 2:
        image.convert("CMYK").save(buffer, format="JPEG", quality=90)
    elif variant == 3:
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=90)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
