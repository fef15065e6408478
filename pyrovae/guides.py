"""Guides: amortized variational posteriors q(z|x) built on an encoder network."""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

__all__ = ["DiagonalNormalGuide"]


class DiagonalNormalGuide(PyroModule):
    """q(z|x) = N(loc(x), diag(scale(x)^2)) with two linear heads on an encoder's features.

    ``scale = softplus(.) + min_scale`` keeps the standard deviation positive and away from
    zero; an unconstrained linear layer for a variance (a mistake in some tutorials) can go
    negative.

    :param encoder: a module mapping images to features; its ``out_features`` attribute gives
        the feature size unless ``feature_dim`` is passed.
    :param int latent_dim: size of z.

    Example::

        guide = DiagonalNormalGuide(MLPEncoder(hidden_dims=(400,)), latent_dim=20)
        q = guide.distribution(images)      # batch_shape (N,), event_shape (20,)
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, feature_dim=None, min_scale: float = 1e-3):
        super().__init__()
        feature_dim = feature_dim or encoder.out_features
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.min_scale = min_scale
        self.loc = nn.Linear(feature_dim, latent_dim)
        self.scale = nn.Linear(feature_dim, latent_dim)

    def distribution(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) for a batch of images, with batch shape ``x.shape[:1]``."""
        features = self.encoder(x)
        scale = F.softplus(self.scale(features)) + self.min_scale
        return dist.Normal(self.loc(features), scale).to_event(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.distribution(x))
