"""The plate over images that every model and guide of pyrovae shares, with Pyro's subsampling."""

from typing import Optional

import pyro
import torch

__all__ = ["data_plate", "guide_plate"]


class _DataPlate(pyro.plate):
    """``pyro.plate("data", ...)`` that says in one sentence why it cannot open inside another
    plate named ``"data"``, instead of Pyro's bare "duplicate plate 'data'"."""

    def __enter__(self):
        try:
            return super().__enter__()
        except ValueError as error:
            if str(error) != f"duplicate plate '{self.name}'":
                raise
            raise ValueError(
                f"pyrovae's model and guide open their own plate {self.name!r} over the images, so they cannot run "
                f"inside another plate named {self.name!r}: call them outside it (for a minibatch of a larger data "
                "set pass size=N and subsample=positions, and the plate scales the batch to the data set).") from None


def data_plate(x: Optional[torch.Tensor] = None, num_images: Optional[int] = None, *, size: Optional[int] = None,
               subsample: Optional[torch.Tensor] = None) -> pyro.plate:
    """The ``"data"`` plate shared by a model and its guide, for the model's arguments (so it
    also serves as a Pyro autoguide's ``create_plates``).

    :param x: a batch of images, or None to generate ``num_images`` of them.
    :param size: the number of images in the whole data set, when ``x`` is a minibatch ...
    :param subsample: ... made of the images at these positions: log-densities are then scaled by
        ``size / len(x)`` (an unbiased estimate of the data set's ELBO), and a non-amortized guide
        (such as a Pyro autoguide) indexes its per-image parameters with ``subsample``.
    """
    if x is not None:
        if num_images is not None and num_images != len(x):
            raise ValueError(f"num_images={num_images} does not match the {len(x)} images given.")
        num_images = len(x)
    elif num_images is None:
        raise ValueError("Pass a batch of images x, or num_images to generate that many with x=None.")
    if (size is None) != (subsample is None):
        raise ValueError("Pass size (the data set's size) together with subsample (the batch's positions in it).")
    if subsample is None:
        return _DataPlate("data", num_images)
    if len(subsample) != num_images:
        raise ValueError(f"subsample holds {len(subsample)} positions for {num_images} images.")
    return _DataPlate("data", size, subsample=subsample)


def guide_plate(x: Optional[torch.Tensor], num_images: Optional[int] = None, *, size: Optional[int] = None,
                subsample: Optional[torch.Tensor] = None) -> pyro.plate:
    """:func:`data_plate` for a guide, which needs the images it encodes."""
    if x is None:
        raise ValueError("A guide needs the images x to encode; to generate images, run the model alone.")
    return data_plate(x, num_images, size=size, subsample=subsample)
