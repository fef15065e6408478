"""Priors p(z) over the latent code."""

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["StandardNormalPrior", "VampPrior"]


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


class VampPrior(nn.Module):
    """The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k), a mixture of the
    guide's own posteriors at K learned pseudo-inputs u_k.

    The pseudo-inputs are images, kept in [0, 1] by a sigmoid. The guide is shared, not
    copied: it stays registered once, as ``vae.guide``, and this prior only refers to it.

    :param guide: an :class:`~pyrovae.guides.AmortizedGuide` whose ``distribution`` has a
        batch dimension (diagonal or low-rank Normal; flows are not mixed this way).
    :param data: optional training images; pseudo-inputs start at K of them (else noise).
    """

    def __init__(self, guide: nn.Module, num_pseudo_inputs: int = 500, image_shape=(1, 28, 28),
                 data: torch.Tensor = None):
        super().__init__()
        object.__setattr__(self, "_guide", guide)  # a reference, not a submodule
        self.latent_dim = guide.latent_dim
        if data is not None:
            start = data[torch.randperm(len(data))[:num_pseudo_inputs]].clamp(0.05, 0.95)
        else:
            start = 0.5 + 0.05 * torch.randn(num_pseudo_inputs, *image_shape)
        self.pseudo_inputs = nn.Parameter(torch.logit(start.clamp(0.01, 0.99)))
        self.register_buffer("mixture_logits", torch.zeros(num_pseudo_inputs))

    @property
    def num_pseudo_inputs(self) -> int:
        return len(self.pseudo_inputs)

    @property
    def row_cost(self) -> int:
        """Its density holds one value per component and latent dimension for each z: in units
        of 1,024 floats, what evaluation budgets per row to keep memory bounded."""
        return max(1, self.num_pseudo_inputs * self.latent_dim // 1024)

    def forward(self) -> dist.TorchDistribution:
        components = self._guide.distribution(torch.sigmoid(self.pseudo_inputs))
        return dist.MixtureSameFamily(dist.Categorical(logits=self.mixture_logits), components)
