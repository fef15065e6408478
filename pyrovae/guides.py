"""Guides: amortized variational posteriors q(z|x) built on an encoder network.

Every guide is an :class:`AmortizedGuide`: it returns q(z|x) from :meth:`distribution`
(used directly by evaluation) and samples the latent site ``"z"`` inside the data plate
in :meth:`forward` (used by Pyro's ELBOs). A new guide only writes ``distribution``.
"""

from typing import Optional, Tuple

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN, PyroModule
from torch import nn
from torch.nn import functional as F

from pyrovae.plates import guide_plate

__all__ = ["AmortizedGuide", "DiagonalNormalGuide", "LowRankNormalGuide", "IAFGuide"]


def head_scale(head: torch.Tensor, min_scale: float,
               logvar_range: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """The standard deviations a linear head's outputs stand for: ``softplus(head) + min_scale``,
    or, given ``logvar_range=(lo, hi)``, ``exp(clip(head, lo, hi) / 2)``."""
    if logvar_range is None:
        return F.softplus(head) + min_scale
    return F.hardtanh(head, *logvar_range).mul(0.5).exp()


class AmortizedGuide(PyroModule):
    """Base class: an encoder and heads that give q(z|x) with event shape ``(latent_dim,)``.

    :param encoder: a module mapping images to features; its ``out_features`` attribute gives
        the feature size unless ``feature_dim`` is passed.
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, feature_dim=None):
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.feature_dim = feature_dim or encoder.out_features

    def distribution(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) for a batch of images, with batch shape ``x.shape[:1]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, num_images: Optional[int] = None, *, size: Optional[int] = None,
                subsample: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sample site ``"z"`` from q(z|x); takes the model's arguments (:class:`~pyrovae.vae.VAEModel`;
        a pixel ``mask`` only changes what the model scores)."""
        with guide_plate(x, num_images, size=size, subsample=subsample):
            return pyro.sample("z", self.distribution(x))


class DiagonalNormalGuide(AmortizedGuide):
    """q(z|x) = N(loc(x), diag(scale(x)^2)) with two linear heads on an encoder's features.

    ``scale = softplus(.) + min_scale`` keeps the standard deviation positive and away from
    zero; an unconstrained linear layer for a variance (a mistake in some tutorials) can go
    negative. With ``logvar_range=(lo, hi)`` the head is a log-variance clipped to
    ``[lo, hi]`` instead (Tomczak & Welling's VampPrior code uses ``(-6, 2)``): the standard
    deviation lies in ``[exp(lo / 2), exp(hi / 2)]`` and the head gets no gradient outside.

    Example::

        guide = DiagonalNormalGuide(MLPEncoder(hidden_dims=(400,)), latent_dim=20)
        q = guide.distribution(images)      # batch_shape (N,), event_shape (20,)
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, feature_dim=None, min_scale: float = 1e-3,
                 logvar_range: Optional[Tuple[float, float]] = None):
        super().__init__(encoder, latent_dim, feature_dim)
        self.min_scale = min_scale
        self.logvar_range = logvar_range
        self.loc = nn.Linear(self.feature_dim, latent_dim)
        self.scale = nn.Linear(self.feature_dim, latent_dim)

    def normal(self, features: torch.Tensor) -> dist.TorchDistribution:
        scale = head_scale(self.scale(features), self.min_scale, self.logvar_range)
        return dist.Normal(self.loc(features), scale).to_event(1)

    def distribution(self, x):
        return self.normal(self.encoder(x))


class LowRankNormalGuide(AmortizedGuide):
    """q(z|x) = N(loc(x), W(x) W(x)^T + diag(d(x))) with a rank-``rank`` factor W: correlated
    latents at a cost linear in ``latent_dim``."""

    def __init__(self, encoder: nn.Module, latent_dim: int, rank: int = 2, feature_dim=None,
                 min_scale: float = 1e-3, logvar_range: Optional[Tuple[float, float]] = None):
        super().__init__(encoder, latent_dim, feature_dim)
        self.rank = rank
        self.min_scale = min_scale
        self.logvar_range = logvar_range
        self.loc = nn.Linear(self.feature_dim, latent_dim)
        self.diag = nn.Linear(self.feature_dim, latent_dim)
        self.factor = nn.Linear(self.feature_dim, latent_dim * rank)

    def distribution(self, x):
        features = self.encoder(x)
        diag = head_scale(self.diag(features), self.min_scale, self.logvar_range).pow(2)
        factor = self.factor(features).unflatten(-1, (self.latent_dim, self.rank))
        return dist.LowRankMultivariateNormal(self.loc(features), factor, diag)


class IAFGuide(AmortizedGuide):
    """A diagonal Normal from the encoder followed by ``num_flows`` inverse autoregressive
    flows (Kingma et al. 2016) conditioned on the encoder's features, each in the natural
    order of the latent dimensions, with the order reversed between flows: from two flows on,
    every output dimension depends on every input dimension.

    Sampling is one pass per flow; the density of a sample comes from the cached forward
    pass, so the ELBO costs no inversions (see docs/elbo.md for the change of variables).
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, num_flows: int = 2, hidden_dims=None,
                 feature_dim=None, min_scale: float = 1e-3, logvar_range: Optional[Tuple[float, float]] = None):
        super().__init__(encoder, latent_dim, feature_dim)
        self.base = DiagonalNormalGuide(nn.Identity(), latent_dim, feature_dim=self.feature_dim, min_scale=min_scale,
                                        logvar_range=logvar_range)
        hidden_dims = list(hidden_dims or [max(10 * latent_dim, 64)])
        # Pyro's conditional_affine_autoregressive orders each flow by a random permutation, and
        # two random orders need not mix every dimension (docs/flows.md). The order is a buffer
        # of the network, so checkpoints made with random orders load with their own.
        order = torch.arange(latent_dim)
        self.flows = nn.ModuleList(
            T.ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(latent_dim, self.feature_dim, hidden_dims, permutation=order))
            for _ in range(num_flows))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def distribution(self, x):
        features = self.encoder(x)
        transforms = []
        for i, flow in enumerate(self.flows):
            if i:
                transforms.append(T.Permute(self.reverse))
            transforms.append(flow.condition(features))
        return dist.TransformedDistribution(self.base.normal(features), transforms)
