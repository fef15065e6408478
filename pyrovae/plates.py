"""The plate over images that every model and guide of pyrovae shares, with Pyro's subsampling."""

from typing import Optional

import pyro
import torch

__all__ = ["data_plate"]


def data_plate(x: Optional[torch.Tensor], num_images: Optional[int], size: Optional[int],
               subsample: Optional[torch.Tensor]) -> pyro.plate:
    """The ``"data"`` plate shared by a model and its guide.

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
        return pyro.plate("data", num_images)
    if len(subsample) != num_images:
        raise ValueError(f"subsample holds {len(subsample)} positions for {num_images} images.")
    return pyro.plate("data", size, subsample=subsample)
