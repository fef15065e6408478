"""Image grids written to files: samples, reconstructions, encoded images."""

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from pyrovae.checkpoint import atomic_write

__all__ = ["GRID_PADDING", "save_grid"]

GRID_PADDING = 2  # pixels between the images of a saved grid


def save_grid(images: torch.Tensor, path, nrow: int = 8) -> torch.Tensor:
    """Save images in [0, 1] as one grid, in the format the file name says (written atomically).

    :returns: the grid, ``(C, H, W)``.
    """
    from PIL import Image

    grid = make_grid(images.detach().cpu(), nrow=nrow, padding=GRID_PADDING, pad_value=1.0)
    image_format = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    atomic_write(path, lambda f: save_image(grid, f, format=image_format))
    return grid
