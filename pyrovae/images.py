"""The user's own images: folders of image files, ``.npy``/``.npz`` arrays, tensors and
torchvision data sets, turned into tensors of shape ``(N, C, H, W)`` with pixels in [0, 1].

Files are decoded by Pillow (torchvision's own image loader) and resized with torchvision's
transforms. Every problem a user can fix (an empty folder, a damaged file, images of mixed
sizes, an array of the wrong shape) is a :class:`~pyrovae.errors.DataError` naming the file.
"""

import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as F

from pyrovae.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "ImageFiles", "find_images", "read_images", "read_array", "probe_file",
           "decode_file",
           "images_from_tensor", "images_from_dataset", "resize_images", "to_grayscale", "images_for_model"]

IMAGE_EXTENSIONS = tuple(sorted(set(IMG_EXTENSIONS) | {".gif"}))
# Pillow refuses only images above twice its own limit, and only with a warning below that.
# One picture of more than 64 megapixels is no training image; refuse it before decoding.
MAX_PIXELS = 64 * 1024 * 1024
_WHITE = 255


class ImageFiles:
    """The image files below a folder (or a list of files), with class labels taken from the
    first level of subfolders as torchvision's ``ImageFolder`` does.

    :ivar paths: the image files, sorted.
    :ivar labels: the class index of each file (all 0 when the images sit in no class folders).
    :ivar classes: the class names (subfolder names), or None without class folders.
    :ivar skipped: files that are not images by their extension (not read).
    """

    def __init__(self, paths: List[Path], labels: List[int], classes: Optional[List[str]], skipped: List[Path]):
        self.paths, self.labels, self.classes, self.skipped = paths, labels, classes, skipped


def find_images(root) -> ImageFiles:
    """Every image file below ``root``, recursively (hidden files and folders left out)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist.")
    files: List[Path] = []
    skipped: List[Path] = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        (files if path.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(path)
    if not files:
        extra = f" (only {len(skipped)} other files, such as {skipped[0].name})" if skipped else ""
        raise DataError(f"Image folder {root} holds no image files{extra}; pyrovae reads "
                        f"{', '.join(IMAGE_EXTENSIONS)}.")
    top = [p.relative_to(root).parts for p in files]
    if all(len(parts) > 1 for parts in top):  # every image sits in a class folder
        classes = sorted({parts[0] for parts in top})
        index = {name: i for i, name in enumerate(classes)}
        return ImageFiles(files, [index[parts[0]] for parts in top], classes, skipped)
    return ImageFiles(files, [0] * len(files), None, skipped)


def _open(path: Path, grayscale: bool) -> torch.Tensor:
    """One image file as a uint8 tensor (C, H, W): RGB or grey, transparency composited on white."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise DataError(f"Image {path} is {width}x{height} pixels, more than pyrovae reads "
                                f"({MAX_PIXELS // (1 << 20)} megapixels); is it a decompression bomb?")
            image.load()
            image = _flatten(image, grayscale)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"Image {path} claims to be too large to decode safely; is it a decompression bomb?") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for unknown, damaged or truncated files
        raise DataError(f"Image {path} cannot be read ({e}); remove it or replace it.") from None
    return F.pil_to_tensor(image)


def _flatten(image, grayscale: bool):
    """An RGB or L (grey) Pillow image; alpha is composited onto white, never cut off."""
    from PIL import Image

    if image.mode.startswith("I"):  # 16-bit grey: keep the top 8 bits (Pillow's convert would clip at 255)
        pixels = np.asarray(image).astype(np.int64)
        image = Image.fromarray((pixels >> 8 if pixels.max() > 255 else pixels).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P" or image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "F"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode == "P" else
                              ("L" if image.mode in ("1", "F") else "RGB"))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (_WHITE, _WHITE, _WHITE, 255))
        image = Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if grayscale and image.mode != "L":
        image = image.convert("L")
    return image


def _fit(image: torch.Tensor, size) -> torch.Tensor:
    """Resize so the image covers ``size`` (N, or (H, W)), keeping its aspect ratio, and cut
    the centre; no change without a size."""
    if size is None:
        return image
    height, width = (size, size) if isinstance(size, int) else size
    if tuple(image.shape[-2:]) == (height, width):
        return image
    h, w = image.shape[-2:]
    scale = max(height / h, width / w)
    image = F.resize(image, [max(height, round(h * scale)), max(width, round(w * scale))], antialias=True)
    return F.center_crop(image, [height, width])


def grayscale_mode(mode: str) -> bool:
    """Whether :func:`_flatten` keeps an image of this Pillow mode grey (one channel)."""
    return mode in ("1", "L", "F") or mode.startswith("I")


def probe_file(path: Path, strict: bool = False):
    """An image file's channels (1 or 3, as :func:`_open` would give them) and size (H, W),
    read from its header alone; a :class:`~pyrovae.errors.DataError` (returned, or raised when
    ``strict``) when it cannot be read."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                grey = grayscale_mode(image.mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        error = DataError(f"Image {path} claims to be too large to decode safely; is it a decompression bomb?")
    except (OSError, SyntaxError, ValueError) as e:
        error = DataError(f"Image {path} cannot be read ({e}); remove it or replace it.")
    else:
        if width * height <= MAX_PIXELS:
            return (1 if grey else 3), (height, width)
        error = DataError(f"Image {path} is {width}x{height} pixels, more than pyrovae reads "
                          f"({MAX_PIXELS // (1 << 20)} megapixels); is it a decompression bomb?")
    if strict:
        raise error
    return error


def decode_file(path: Path, image_size: Optional[int], grayscale: bool, channels: int, strict: bool = False):
    """One image file as a uint8 array (C, H, W) with ``channels`` channels, resized as
    :func:`read_images` does; a :class:`~pyrovae.errors.DataError` (returned, or raised when
    ``strict``) when it cannot be decoded."""
    try:
        image = _fit(_open(Path(path), grayscale), image_size)
    except DataError as error:
        if strict:
            raise
        return error
    if image.shape[0] != channels:
        image = image.expand(channels, -1, -1)
    return image.numpy()


def read_images(paths: Sequence[Path], image_size: Optional[int] = None, grayscale: bool = False,
                progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Decode image files into one float tensor ``(N, C, H, W)`` in [0, 1].

    Colour images give 3 channels and grey ones 1; a mix is all converted to colour unless
    ``grayscale``. Without ``image_size`` every image must already have the same size.
    """
    images = []
    for path in paths:
        images.append(_fit(_open(Path(path), grayscale), image_size))
        if progress is not None:
            progress(1)
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) > 1:
        by_size: Dict[Tuple[int, ...], Path] = {}
        for path, image in zip(paths, images):
            by_size.setdefault(tuple(image.shape[-2:]), path)
        examples = "; ".join(f"{Path(p).name} is {h}x{w}" for (h, w), p in list(by_size.items())[:3])
        raise DataError(f"The images differ in size ({examples}); pass --image-size N to resize them all to NxN.")
    channels = max(image.shape[0] for image in images)
    if channels == 3:
        images = [image.expand(3, -1, -1) for image in images]  # grey images among colour ones
    return torch.stack(images).float().div_(255)


def read_array(path) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Images (and labels) from a ``.npy`` or ``.npz`` file.

    A ``.npy`` file holds the images. A ``.npz`` file holds them under ``images``, ``x`` or
    ``x_train`` (or as its only array), optionally with ``labels``/``y``/``y_train``, and a
    test split under ``x_test`` (with ``y_test``). Arrays are ``(N, H, W)`` or ``(N, H, W, C)``
    with C = 1, 3 or 4 (RGBA, composited on white), uint8 or floats in [0, 1].

    :returns: train images, train labels, test images, test labels (None where absent).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"Array file {path} does not exist.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npy/.npz file ({e}).") from None
    if isinstance(loaded, np.ndarray):
        return images_from_array(loaded, str(path)), None, None, None
    try:
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # object arrays, damaged members
        raise DataError(f"{path} is not a readable .npz file of plain arrays ({e}).") from None
    image_key = next((k for k in ("images", "x", "x_train", "train") if k in arrays), None)
    if image_key is None and len(arrays) == 1:
        image_key = next(iter(arrays))
    if image_key is None:
        raise DataError(f"{path} holds arrays {', '.join(sorted(arrays)) or '(none)'}; name the images "
                        "'images' (or x / x_train), the labels 'labels' (or y / y_train), a test split x_test.")
    train = images_from_array(arrays[image_key], f"{path}[{image_key}]")
    train_labels = _labels(arrays, ("labels", "y", "y_train"), len(train), path)
    test = test_labels = None
    if "x_test" in arrays:
        test = images_from_array(arrays["x_test"], f"{path}[x_test]")
        test_labels = _labels(arrays, ("y_test",), len(test), path)
        if test.shape[1:] != train.shape[1:]:
            raise DataError(f"{path}: x_test holds images of shape {tuple(test.shape[1:])} but the training "
                            f"images are {tuple(train.shape[1:])}.")
    return train, train_labels, test, test_labels


def _labels(arrays: dict, keys, count: int, path) -> Optional[torch.Tensor]:
    key = next((k for k in keys if k in arrays), None)
    if key is None:
        return None
    labels = arrays[key]
    if labels.ndim != 1 or len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}[{key}] should hold one integer label per image ({count}), "
                        f"not a {labels.dtype} array of shape {labels.shape}.")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}[{key}] holds negative labels; classes are numbered 0, 1, 2, ...")
    return torch.from_numpy(labels.astype(np.int64))


def images_from_array(array: np.ndarray, source: str) -> torch.Tensor:
    """A channels-last numpy array ``(N, H, W[, C])`` as a float tensor ``(N, C, H, W)`` in [0, 1]."""
    if not (array.dtype == np.uint8 or array.dtype.kind in "bf"):
        raise DataError(f"{source} holds {array.dtype} values; pass uint8 pixels (0-255) or floats in [0, 1].")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape[1:3]:
        raise DataError(f"{source} has shape {array.shape}; images must be (N, H, W) or (N, H, W, C) with "
                        "C = 1, 3 or 4 and at least one pixel.")
    return _as_unit_float(torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2), source)


def images_from_tensor(images, source: str = "the tensor") -> torch.Tensor:
    """A torch tensor ``(N, C, H, W)`` or ``(N, H, W)`` (or a numpy array, channels last) as
    float images in [0, 1]; uint8 is divided by 255, and a 4th channel is alpha."""
    if isinstance(images, np.ndarray):
        return images_from_array(images, source)
    if not torch.is_tensor(images):
        raise DataError(f"{source} is a {type(images).__name__}, not a tensor or array of images.")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3, 4):
        raise DataError(f"{source} has shape {tuple(images.shape)}; images must be (N, C, H, W) with C = 1, 3 "
                        "or 4, or (N, H, W).")
    return _as_unit_float(images.detach().cpu(), source)


def _as_unit_float(images: torch.Tensor, source: str) -> torch.Tensor:
    if len(images) == 0:
        raise DataError(f"{source} holds no images.")
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    elif images.dtype == torch.bool:
        images = images.float()
    elif images.is_floating_point():
        images = images.float()
        if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError(f"{source} holds floats outside [0, 1] (from {images.min().item():g} to "
                            f"{images.max().item():g}); scale pixels to [0, 1] or pass uint8.")
    else:
        raise DataError(f"{source} holds {str(images.dtype).replace('torch.', '')} values; pass uint8 pixels "
                        "(0-255) or floats in [0, 1].")
    if images.shape[1] == 4:  # RGBA: composite onto white
        alpha = images[:, 3:]
        images = images[:, :3] * alpha + (1 - alpha)
    return images.contiguous()


def images_from_dataset(dataset, source: Optional[str] = None,
                        progress: Optional[Callable[[int], None]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every item of a map-style data set (a torchvision data set such as ``CIFAR10(root)``)
    as images in [0, 1] and labels. Items are ``(image, label)`` or images alone; an image is
    a PIL image or a tensor (C, H, W) in [0, 1] (as ``transforms.ToTensor()`` gives)."""
    from PIL import Image

    source = source or type(dataset).__name__
    try:
        count = len(dataset)
    except TypeError:
        raise DataError(f"{source} has no length; pass a map-style data set or a tensor.") from None
    images, labels = [], []
    for i in range(count):
        item = dataset[i]
        image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, 0)
        if isinstance(image, Image.Image):
            image = F.pil_to_tensor(_flatten(image, grayscale=False))
        elif not torch.is_tensor(image):
            raise DataError(f"Item {i} of {source} is a {type(image).__name__}, not a PIL image or a tensor.")
        images.append(image)
        labels.append(int(label))
        if progress is not None:
            progress(1)
    if not images:
        raise DataError(f"{source} holds no images.")
    if len({tuple(image.shape) for image in images}) > 1:
        raise DataError(f"The images of {source} differ in shape; add a transform such as Resize and CenterCrop.")
    return images_from_tensor(torch.stack(images), source), torch.tensor(labels, dtype=torch.long)


def resize_images(images: torch.Tensor, size) -> torch.Tensor:
    """Images ``(N, C, H, W)`` scaled to cover ``size`` (N or (H, W)) and cut to it at the centre."""
    return torch.cat([_fit(chunk, size).clamp_(0, 1) for chunk in images.split(1024)])


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Colour images as grey ones (ITU-R 601 luma, as Pillow's ``convert("L")``)."""
    return F.rgb_to_grayscale(images) if images.shape[1] == 3 else images


def images_for_model(inputs: Sequence, image_shape, progress: Optional[Callable[[int], None]] = None):
    """Image files, folders of them and ``.npy``/``.npz`` arrays, as images of ``image_shape``
    (C, H, W) for a trained model: colour or grey as the model wants, and resized (covering
    the size, centre cut) where their size differs.

    :returns: the images, the name of each (a file, or ``array[i]``), and notes on what was done.
    """
    channels, height, width = image_shape
    names: List[str] = []
    images: List[torch.Tensor] = []
    notes: List[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.suffix.lower() in (".npy", ".npz") and path.is_file():
            array = read_array(path)[0]
            images += list(array)
            names += [f"{path.name}[{i}]" for i in range(len(array))]
            continue
        if path.is_dir():
            files = find_images(path).paths
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"{path} does not exist.")
        for file in files:
            images.append(_open(file, grayscale=channels == 1).float() / 255)
            names.append(str(file))
            if progress is not None:
                progress(1)
    if not images:
        raise DataError("No images were given.")
    fitted = []
    for name, image in zip(names, images):
        if image.shape[0] != channels:
            image = to_grayscale(image[None])[0] if channels == 1 else image.expand(3, -1, -1)
        if tuple(image.shape[-2:]) != (height, width):
            if not notes:
                notes.append(f"resized to the model's {height}x{width} (first: {Path(name).name}, "
                             f"{image.shape[-2]}x{image.shape[-1]})")
            image = _fit(image, (height, width)).clamp(0, 1)
        fitted.append(image)
    return torch.stack(fitted), names, notes
