"""Priors p(z) over the latent code."""

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["StandardNormalPrior"]


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) over ``latent_dim`` dimensions, one event per image.

    ``loc`` and ``scale`` are buffers, so ``.to(device)`` moves the prior with the model.
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
