"""How images are stored: 8-bit pixels as uint8 (one byte a pixel), other pixel values as
float32 in [0, 1], and arrays on disk memory-mapped (:class:`MappedImages`) so that a data set
need not fit in memory. Floats are made per batch, on the device (:func:`to_unit`).

Storage never changes a value: :func:`compact` keeps float images as floats unless every
pixel comes back bit for bit from its byte, so a model trains on exactly the numbers it
would have had in float32.
"""

from typing import Any, Iterator, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["MappedImages", "Pixels", "to_unit", "compact", "chunks", "pixel_levels", "CHUNK"]

# Images converted at a time where a whole split is scanned or converted (levels, ranges, caches).
CHUNK = 4096


class MappedImages:
    """Images in a memory-mapped array on disk, read only where indexed.

    Indexing (an integer tensor or array, a slice) reads those images into a torch tensor
    ``(n, C, H, W)`` of the array's dtype (uint8 or float32); nothing else is read. ``rows``
    selects and orders the images of the array this object shows (a train or test split).

    :param array: a numpy memmap ``(N, C, H, W)`` (``channels_last=False``), or ``(N, H, W)`` /
        ``(N, H, W, C)`` as a ``.npy`` of images is usually written.
    :param str path: the file, for messages.
    """

    def __init__(self, array: np.ndarray, path: str, rows: Optional[np.ndarray] = None, channels_last: bool = True):
        self.array, self.path, self.rows, self.channels_last = array, str(path), rows, channels_last
        if channels_last:
            n, h, w = array.shape[:3]
            c = array.shape[3] if array.ndim == 4 else 1
        else:
            n, c, h, w = array.shape
        self._shape = (n if rows is None else len(rows), c, h, w)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._shape)

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.array.dtype == np.uint8 else torch.float32

    device = torch.device("cpu")

    @property
    def nbytes(self) -> int:
        return int(np.prod(self._shape)) * self.array.dtype.itemsize

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"MappedImages({self.path!r}, shape={tuple(self._shape)}, dtype={self.array.dtype})"

    def take(self, rows) -> "MappedImages":
        """The images at ``rows`` (positions in this object) as another view of the same file."""
        rows = np.asarray(rows.cpu() if torch.is_tensor(rows) else rows, dtype=np.int64)
        mine = rows if self.rows is None else self.rows[rows]
        return MappedImages(self.array, self.path, mine, self.channels_last)

    def __getitem__(self, index) -> torch.Tensor:
        rows: Any
        if isinstance(index, slice):
            rows = index if self.rows is None else self.rows[index]
        else:
            rows = np.asarray(index.cpu() if torch.is_tensor(index) else index, dtype=np.int64)
            if self.rows is not None:
                rows = self.rows[rows]
        scalar = not isinstance(rows, slice) and np.ndim(rows) == 0
        block = self.array[np.atleast_1d(rows) if scalar else rows]
        if block.dtype not in (np.uint8, np.float32):
            block = block.astype(np.float32)
        block = np.ascontiguousarray(block)
        images = torch.from_numpy(block if block.flags.writeable else block.copy())  # a slice is a view of the file
        if self.channels_last:
            images = images.unsqueeze(-1) if images.dim() == 3 else images
            images = images.permute(0, 3, 1, 2).contiguous()
        return images[0] if scalar else images

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """The images in order, ``size`` at a time, as tensors (read one chunk at a time)."""
        for start in range(0, len(self), size):
            yield self[start:start + size]

    def load(self) -> torch.Tensor:
        """All the images in memory, one chunk read at a time."""
        out = torch.empty(self._shape, dtype=self.dtype)
        for start, chunk in zip(range(0, len(self), CHUNK), self.split(CHUNK)):
            out[start:start + len(chunk)] = chunk
        return out


Pixels = Union[torch.Tensor, MappedImages]


def to_unit(pixels: torch.Tensor, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Stored pixels as floats in [0, 1] of ``dtype`` on ``device``: uint8 divided by 255 on
    the device (the copy moves one byte a pixel), bool as 0/1, floats as they are."""
    if pixels.dtype == torch.uint8:  # k / 255 in float32 first, as the images always were, then dtype
        return pixels.to(device, non_blocking=True).float().div_(255).to(dtype)
    return pixels.to(device, dtype, non_blocking=True)


def compact(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] stored in the fewest bytes that keep every value: uint8 when each
    float is exactly ``k / 255`` as :func:`to_unit` computes it, otherwise float32."""
    if images.dtype == torch.uint8:
        return images
    if images.dtype == torch.bool:
        return images.to(torch.uint8).mul_(255)
    images = images.float()
    out = torch.empty(images.shape, dtype=torch.uint8)
    for chunk, target in zip(images.split(CHUNK), out.split(CHUNK)):
        if not (chunk >= 0).all() or not (chunk <= 1).all():
            return images
        target.copy_(chunk.mul(255).round_())
        if not torch.equal(target.float().div_(255), chunk):
            return images
    return out


def chunks(pixels: Pixels, size: int = CHUNK) -> Iterator[torch.Tensor]:
    """The stored pixels ``size`` images at a time, as stored (one chunk in memory at a time)."""
    return iter(pixels.split(size))


def pixel_levels(images: torch.Tensor) -> Optional[int]:
    """2 when every pixel is 0 or 1 (0 or 255 when stored as bytes), 256 when every pixel is
    a multiple of 1/255 (any byte), else None (continuous values)."""
    if images.dtype == torch.uint8:
        return 2 if bool(((images == 0) | (images == 255)).all()) else 256
    if bool(((images == 0) | (images == 1)).all()):
        return 2
    scaled = images * 255
    return 256 if bool(((scaled - scaled.round()).abs() < 1e-3).all()) else None


def value_range(pixels: Pixels) -> Tuple[float, float]:
    """The smallest and largest value of the stored pixels (NaN when any is NaN), read by chunk."""
    low, high = float("inf"), float("-inf")
    for chunk in chunks(pixels):
        if chunk.dtype == torch.uint8:
            chunk = chunk.float().div_(255)
        if chunk.numel():
            a, b = torch.aminmax(chunk)
            if bool(torch.isnan(a)) or bool(torch.isnan(b)):
                return float("nan"), float("nan")
            low, high = min(low, a.item()), max(high, b.item())
    return low, high
