"""ImageNet in the ImageFolder layout, and a learnable synthetic ImageFolder of real JPEGs.

Layout: ``<data_dir>/train/<wnid>/*.JPEG`` and ``<data_dir>/val/<wnid>/*.JPEG``; classes are
the sorted folder names of ``train``. Every image is decoded to RGB whatever it holds (real
ImageNet has grayscale and CMYK JPEGs and one PNG named .JPEG), and an unreadable image is
an ``InputError`` naming the file. Training uses RandomResizedCrop + horizontal flip,
evaluation Resize + CenterCrop. The workers deliver the uint8 crops; :class:`ImageTransform`
normalises a batch of them with the ImageNet mean and std on the training device (a quarter
of the bytes to pin and copy, and the arithmetic off the CPU).

``data.decoder`` picks the JPEG decoder: ``torchvision`` (torchvision.io, faster per core:
``bench/jpeg_decode.py``) or ``pil`` (for torchvision builds without image codecs, common in
source builds on clusters, and for the release that drops torchvision.io decoding, deprecated
since torchvision 0.29). Both feed the same transforms v2 pipeline.

``data.decode_device`` says where JPEGs are decoded: ``cpu`` (the default) in the workers, or
``cuda``: the workers only read the files and :class:`ImageTransform` decodes each batch with
``torchvision.io.decode_jpeg`` (nvJPEG) on the training device, then crops each image there.
Files nvJPEG may not take (PNG, CMYK, progressive or arithmetic-coded JPEG) are still decoded
in the workers. In a CPU run ``cuda`` decodes on the CPU through the same code path.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms import v2
from tqdm import tqdm

from benchmarks.core.config import DataConfig, Fraction, PositiveInt
from benchmarks.core.data import require_dir
from benchmarks.core.errors import ConfigError, InputError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The MLPerf TF2 reference's channel means on 0-255 (imagenet_preprocessing.py).
REFERENCE_CHANNEL_MEANS = (123.68, 116.78, 103.94)


@dataclass
class ImageNetDataConfig(DataConfig):
    """``image_size`` is the crop fed to the network, ``resize_size`` the eval resize."""

    train_dir: str = "train"
    eval_dir: str = "val"
    image_size: PositiveInt = 224
    resize_size: PositiveInt = 256
    decoder: Literal["torchvision", "pil"] = "torchvision"
    # Training crop: RandomResizedCrop's range of the image area it keeps.
    crop_area: list[Fraction] = field(default_factory=lambda: [0.08, 1.0])
    # mean_std: (x - mean) / std on [0, 1] (torchvision); mean: x - mean on [0, 255] (the
    # MLPerf TF2 reference's mean subtraction).
    normalize: Literal["mean_std", "mean"] = "mean_std"
    decode_device: Literal["cpu", "cuda"] = "cpu"


class ImageFolderRGB(Dataset):
    """(image, class index) pairs from one split of an ImageFolder tree.

    The image is ``transform`` of the decoded uint8 RGB tensor, or with ``encoded`` the file's
    bytes as a :class:`JpegBytes` where the device can decode it (else the decoded tensor);
    batch those with :func:`collate_encoded`.
    """

    def __init__(self, root: Path, classes: list[str], transform: v2.Transform,
                 subset: int = 0, subset_seed: int = 0, decoder: str = "torchvision",
                 encoded: bool = False) -> None:
        self.root = root
        self.decoder = decoder
        self.encoded = encoded
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

    def __getitem__(self, item: int) -> tuple[torch.Tensor | JpegBytes, int]:
        path, label = self.samples[item]
        if self.encoded:
            data = read_file(str(path))
            if device_decodable(data):
                return JpegBytes(data, path), label
        return self.transform(load_rgb(path, self.decoder)), label


class JpegBytes:
    """A JPEG file's bytes, to be decoded on the training device (never moved there itself:
    ``decode_jpeg`` takes its input on the CPU)."""

    def __init__(self, data: torch.Tensor, path: Path) -> None:
        self.data, self.path = data, path


class ImageList:
    """A batch of :class:`JpegBytes` and decoded images of different sizes, of the training or
    the evaluation split. Not a tensor nor a list: the loop's device transfer and the loader's
    pinning leave it as it is."""

    def __init__(self, images: list[torch.Tensor | JpegBytes], train: bool) -> None:
        self.images, self.train = images, train


def collate_encoded(samples: list[tuple[torch.Tensor | JpegBytes, int]],
                    train: bool) -> tuple[ImageList, torch.Tensor]:
    """Batch of :meth:`ImageFolderRGB.__getitem__` results in ``encoded`` mode."""
    images, labels = zip(*samples, strict=True)
    return ImageList(list(images), train), torch.tensor(labels)


# Baseline and extended-sequential Huffman JPEG frames (SOF0, SOF1); nvJPEG's batched decoder
# takes these with one (gray) or three (YCbCr) components.
_DEVICE_FRAMES = {0xC0, 0xC1}
_OTHER_FRAMES = set(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}


def device_decodable(data: torch.Tensor) -> bool:
    """Whether ``data`` is a baseline gray or YCbCr JPEG, read from its frame header through a
    view of the tensor (a copy of the whole file per sample would be wasted)."""
    raw = memoryview(data.numpy())
    if raw[:2] != b"\xff\xd8":
        return False
    position = 2
    while position + 9 < len(raw) and raw[position] == 0xFF:
        marker = raw[position + 1]
        if marker in _DEVICE_FRAMES:
            return raw[position + 9] in (1, 3)
        if marker in _OTHER_FRAMES or marker == 0xDA:
            return False
        position += 2 + int.from_bytes(raw[position + 2:position + 4], "big")
    return False


class ImageTransform:
    """A batch of images -> float32 [B, 3, S, S] normalised with ``mean`` and ``std`` (on
    [0, 1] pixels), on the device the labels are on. A batch of uint8 crops (decoded in the
    workers) is normalised as it is; an :class:`ImageList` is first decoded there
    (``decode_jpeg``) and each image cropped by the crop of its split."""

    def __init__(self, train_crop: v2.Transform, eval_crop: v2.Transform,
                 mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        self.train_crop, self.eval_crop = train_crop, eval_crop
        self.mean, self.std = list(mean), list(std)

    def __call__(self, batch: tuple[torch.Tensor | ImageList, torch.Tensor]) -> tuple[
            torch.Tensor, torch.Tensor]:
        images, labels = batch
        if isinstance(images, ImageList):
            crop = self.train_crop if images.train else self.eval_crop
            images = torch.stack([crop(image) for image in decode(images, labels.device)])
        images = v2.functional.to_dtype(images, torch.float32, scale=True)
        return v2.functional.normalize(images, self.mean, self.std), labels


def decode(batch: ImageList, device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 tensors on ``device``: the JPEGs decoded there in one batch, the rest moved."""
    images = batch.images
    encoded = [image for image in images if isinstance(image, JpegBytes)]
    try:
        decoded = iter(decode_jpeg([image.data for image in encoded], mode=ImageReadMode.RGB,
                                   device=device)) if encoded else iter(())
    except RuntimeError:
        for image in encoded:  # find the file to name
            try:
                decode_jpeg(image.data, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as err:
                reason = str(err).splitlines()[0]
                raise InputError(f"{image.path}: cannot decode image ({reason})") from None
        raise
    return [next(decoded) if isinstance(image, JpegBytes) else image.to(device)
            for image in images]


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
    """Training and evaluation splits with the standard augmentation (uint8 crops, or the
    files' bytes with ``decode_device: cuda``; see :func:`build_transforms`)."""
    root = require_dir(cfg.data_dir, "ImageNet data_dir")
    train_root = require_dir(root / cfg.train_dir, "training split (data.train_dir)")
    eval_root = require_dir(root / cfg.eval_dir, "evaluation split (data.eval_dir)")
    low, high = (cfg.crop_area + [0.0, 0.0])[:2]
    if len(cfg.crop_area) != 2 or not 0 < low <= high <= 1:
        raise ConfigError(f"config key 'data.crop_area': expected [low, high] with "
                          f"0 < low <= high <= 1, got {cfg.crop_area}")
    train_crop, eval_crop = crops(cfg)
    classes = class_names(train_root)
    encoded = cfg.decode_device == "cuda"
    return (ImageFolderRGB(train_root, classes, train_crop, cfg.train_subset,
                           decoder=cfg.decoder, encoded=encoded),
            ImageFolderRGB(eval_root, classes, eval_crop, cfg.eval_subset, decoder=cfg.decoder,
                           encoded=encoded))


def crops(cfg: ImageNetDataConfig) -> tuple[v2.Transform, v2.Transform]:
    """(training, evaluation) crops of a uint8 image, wherever it is."""
    return (v2.Compose([v2.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_area),
                                             antialias=True),
                        v2.RandomHorizontalFlip()]),
            v2.Compose([v2.Resize(cfg.resize_size, antialias=True),
                        v2.CenterCrop(cfg.image_size)]))


def normalization(cfg: ImageNetDataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] pixels. ``mean_std`` is torchvision's; ``mean`` is the MLPerf TF2
    reference's mean subtraction on 0-255: (x - mean / 255) / (1 / 255) is x - mean on 0-255."""
    if cfg.normalize == "mean_std":
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(m / 255 for m in REFERENCE_CHANNEL_MEANS), (1 / 255,) * 3


def build_transform(cfg: ImageNetDataConfig) -> ImageTransform:
    """The device transform that finishes the loaders' batches."""
    return ImageTransform(*crops(cfg), *normalization(cfg))


def collate_fns(cfg: ImageNetDataConfig) -> tuple[Callable | None, Callable | None]:
    """(training, evaluation) ``collate_fn`` of the loaders: the default one for uint8 crops,
    :func:`collate_encoded` for device decoding."""
    if cfg.decode_device == "cpu":
        return None, None
    return (functools.partial(collate_encoded, train=True),
            functools.partial(collate_encoded, train=False))


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
