"""Priors p(z) over the latent code."""

import math

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.errors import ConfigError
from pyrovae.pixels import to_unit

__all__ = ["StandardNormalPrior", "VampPrior", "DiagonalNormalMixture", "diagonal_normal", "tempered",
           "kl_per_dimension"]


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
            start = data[torch.randperm(len(data))[:num_pseudo_inputs]]
            start = to_unit(start, start.dtype if start.is_floating_point() else torch.float32).clamp(0.05, 0.95)
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
        mixture = DiagonalNormalMixture if diagonal_normal(components) is not None else dist.MixtureSameFamily
        return mixture(dist.Categorical(logits=self.mixture_logits), components)


def tempered(p: dist.TorchDistribution, temperature: float) -> dist.TorchDistribution:
    """``p`` with its standard deviations times ``temperature`` (< 1: codes nearer the
    prior's modes, the sharper, more typical samples NVAE and VDVAE draw): a diagonal Normal,
    or a mixture of them (each component's, as the VampPrior's).

    :raises ConfigError: for a distribution with no scale to temper (a categorical code).
    """
    if temperature == 1:
        return p
    normal = diagonal_normal(p)
    if normal is not None:
        return dist.Normal(normal.loc, normal.scale * temperature).to_event(1)
    if isinstance(p, dist.MixtureSameFamily) and diagonal_normal(p.component_distribution) is not None:
        components = tempered(p.component_distribution, temperature)
        return type(p)(p.mixture_distribution, components)
    raise ConfigError(f"A temperature scales a Normal prior's spread; this model's p(z) is a "
                      f"{type(p).__name__}, which has none.")


def kl_per_dimension(loc: torch.Tensor, scale, prior) -> torch.Tensor:
    """Mean over images of KL(N(loc, scale) || p(z_u)) for each dimension u, in nats, for
    posterior means ``loc`` and standard deviations ``scale`` (N, D) of a diagonal Normal q.

    :raises ConfigError: unless q (``scale`` given) and ``prior`` are diagonal Normals, the
        only case where the KL splits into one term per dimension.
    """
    p = diagonal_normal(prior)
    if p is None or scale is None:
        raise ConfigError("KL per dimension needs a diagonal Normal guide and prior "
                          "(the KL of this model does not split by dimension).")
    q = torch.distributions.Normal(loc, scale)
    return torch.distributions.kl_divergence(q, torch.distributions.Normal(p.loc.cpu(), p.scale.cpu())).mean(dim=0)


def diagonal_normal(d):
    """The Normal inside an ``Independent(Normal, 1)`` (a diagonal Normal over vectors), or
    None for any other distribution."""
    if (isinstance(d, torch.distributions.Independent) and isinstance(d.base_dist, torch.distributions.Normal)
            and d.reinterpreted_batch_ndims == 1):
        return d.base_dist
    return None


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """Pyro's ``MixtureSameFamily`` of diagonal Normals (``Normal(loc, scale).to_event(1)``
    components), with the same distribution and methods but a faster ``log_prob``.

    The stock ``log_prob`` builds a tensor of every (z, component, dimension) triple, ten or
    so passes over S x K x D values; with the VampPrior's 500 components that was half of a
    training step's time. Here the quadratic form is expanded,
    sum_d (z_d - m_kd)^2 / s_kd^2 = z^2 . (1/s_k^2) - 2 z . (m_k / s_k^2) + sum_d m_kd^2 / s_kd^2,
    which is two matrix products, in float64 so that the expansion's cancellation costs no
    precision (its terms reach 1e4 or more for narrow components). Components that differ
    along a batch dimension (not the VampPrior's) use the stock computation.
    """

    def log_prob(self, x):
        if self._validate_args:
            self._validate_sample(x)
        normal = self.component_distribution.base_dist
        loc, scale = _shared(normal.loc, 2), _shared(normal.scale, 2)
        logits = _shared(self.mixture_distribution.logits, 1)
        if loc is None or scale is None or logits is None:
            return super().log_prob(x)
        z, loc, scale = x.double(), loc.double(), scale.double()
        precision = scale.pow(-2)  # (K, D)
        quadratic = (z * z) @ precision.T - 2 * z @ (loc * precision).T + (loc.pow(2) * precision).sum(-1)
        log_components = -0.5 * quadratic - scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        log_weights = torch.log_softmax(logits.double(), dim=-1)
        return torch.logsumexp(log_components + log_weights, dim=-1).to(x.dtype)


def _shared(t: torch.Tensor, keep: int):
    """``t`` without its batch dimensions (all but the last ``keep``) when they only repeat it,
    as after ``expand``; None when the batch entries differ."""
    lead = t.dim() - keep
    if any(size > 1 and stride != 0 for size, stride in zip(t.shape[:lead], t.stride()[:lead])):
        return None
    return t[(0,) * lead]
