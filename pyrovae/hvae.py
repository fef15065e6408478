"""A VAE with two levels of latents, as Tomczak & Welling (2018) build it (their
``HVAE_2level``): the generative model

    z2 ~ p(z2),   z1 ~ p(z1 | z2),   x ~ p(x | z1, z2),

and the guide q(z2 | x) q(z1 | x, z2), each level one Pyro sample site (``"z2"``, then
``"z1"``). p(z2) is a standard Normal or the VampPrior over q(z2 | x); p(z1 | z2), q(z1 | x, z2)
are diagonal Normals from networks; the image networks are those of ``--net`` (MLP, gated or
conv, the last as their ``convHVAE_2level``). The ELBO is

    E_q[log p(x | z1, z2)] - E_q[log q(z2 | x) + log q(z1 | x, z2) - log p(z2) - log p(z1 | z2)],

whose KL term has no closed form (p(z1 | z2) depends on the sampled z2): Pyro's Trace_ELBO
estimates it by sampling, as ``evaluate`` does. For evaluation and the figures the two levels
are one code ``[z2, z1]`` (:class:`Hierarchy`), so log p(x) is importance-sampled over both.
"""

from typing import Callable, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import constraints

from pyrovae.errors import ConfigError
from pyrovae.guides import DiagonalNormalGuide, head_scale
from pyrovae.likelihoods import Likelihood, score_pixels
from pyrovae.m2 import TwoInputMLP
from pyrovae.networks import _mlp, autocast_forward
from pyrovae.plates import data_plate, guide_plate
from pyrovae.priors import StandardNormalPrior, VampPrior, tempered
from pyrovae.vae import VAE, _claim_name, check_draw

__all__ = ["HVAE", "HVAEModel", "HVAEGuide", "Hierarchy", "NormalHeads", "JointDecoder"]


class Hierarchy(dist.TorchDistribution):
    """Two levels of a code as one vector ``[z2, z1]``: ``z2 ~ top``, ``z1 ~ lower(z2)``.

    ``log_prob`` is ``log top(z2) + log lower(z2)(z1)``; ``mean`` is the top's mean followed by
    the lower level's mean at it (the code a reconstruction decodes), not the exact mean of z1.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, top: dist.TorchDistribution, lower: Callable[[torch.Tensor], dist.TorchDistribution],
                 lower_dim: int):
        self.top, self.lower, self.lower_dim = top, lower, lower_dim
        self.top_dim = top.event_shape[0]
        super().__init__(top.batch_shape, torch.Size([self.top_dim + lower_dim]), validate_args=False)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        top = self.top.rsample(sample_shape) if self.top.has_rsample else self.top.sample(sample_shape)
        return torch.cat([top, self.lower(top).rsample()], dim=-1)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        top, lower = value.split([self.top_dim, self.lower_dim], dim=-1)
        return self.top.log_prob(top) + self.lower(top).log_prob(lower)

    @property
    def mean(self) -> torch.Tensor:
        top = self.top.mean
        return torch.cat([top, self.lower(top).mean], dim=-1)


class NormalHeads(nn.Module):
    """Two linear heads on features: a diagonal Normal with ``softplus`` standard deviations
    (or a clipped log-variance, as :class:`~pyrovae.guides.DiagonalNormalGuide`)."""

    def __init__(self, features: int, latent_dim: int, min_scale: float = 1e-3, logvar_range=None):
        super().__init__()
        self.latent_dim, self.min_scale, self.logvar_range = latent_dim, min_scale, logvar_range
        self.loc = nn.Linear(features, latent_dim)
        self.scale = nn.Linear(features, latent_dim)

    def forward(self, features: torch.Tensor) -> dist.TorchDistribution:
        scale = head_scale(self.scale(features), self.min_scale, self.logvar_range)
        return dist.Normal(self.loc(features), scale).to_event(1)


class _Features(nn.Module):
    """A network from z2 to features (the top-down path of p(z1 | z2))."""

    def __init__(self, latent_dim: int, hidden_dims, activation, gated: bool):
        super().__init__()
        self.net = _mlp((latent_dim,) + tuple(hidden_dims), activation, gated)

    @autocast_forward
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class JointDecoder(nn.Module):
    """p(x | z1, z2)'s network on the code ``[z2, z1]`` (both levels, as Tomczak & Welling's
    decoder reads them)."""

    def __init__(self, net: nn.Module, levels: int = 2):
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)


class HVAEModel(PyroModule):
    """``z2 ~ prior()``, ``z1 ~ conditional(z2)``, ``x ~ likelihood(decoder([z2, z1]))``, one
    plate over images; ``model(num_images=n)`` generates images, as :class:`~pyrovae.vae.VAEModel`."""

    def __init__(self, prior: nn.Module, top_down: nn.Module, heads: NormalHeads, decoder: nn.Module,
                 likelihood: Likelihood):
        super().__init__()
        self.prior = prior
        self.top_down = top_down
        self.heads = heads
        self.decoder = decoder
        self.likelihood = likelihood

    def conditional(self, z2: torch.Tensor) -> dist.TorchDistribution:
        """p(z1 | z2)."""
        return self.heads(self.top_down(z2))

    def joint_prior(self) -> Hierarchy:
        """p(z2) p(z1 | z2) as one distribution over ``[z2, z1]``."""
        return Hierarchy(self.prior(), self.conditional, self.heads.latent_dim)

    def forward(self, x: Optional[torch.Tensor] = None, num_images: Optional[int] = None, *,
                size: Optional[int] = None, subsample: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        with data_plate(x, num_images, size=size, subsample=subsample):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", self.conditional(z2))
            likelihood = self.likelihood(self.decoder(torch.cat([z2, z1], dim=-1)))
            if mask is not None:
                likelihood = score_pixels(likelihood, mask)
            return pyro.sample("x", likelihood, obs=x)


class HVAEGuide(PyroModule):
    """q(z2 | x) (``top``, a :class:`~pyrovae.guides.DiagonalNormalGuide`) and q(z1 | x, z2): an
    encoder of x and a network joining its features with z2, then Normal heads."""

    def __init__(self, top: DiagonalNormalGuide, encoder: nn.Module, joint: TwoInputMLP, heads: NormalHeads):
        super().__init__()
        self.top = top
        self.lower_encoder = encoder
        self.joint = joint
        self.heads = heads
        self.latent_dim = top.latent_dim  # of each level

    @property
    def encoder(self) -> nn.Module:
        """The image encoder of the top level (its ``image_shape`` is the images this guide takes)."""
        return self.top.encoder

    def lower(self, features: torch.Tensor, z2: torch.Tensor) -> dist.TorchDistribution:
        """q(z1 | x, z2) from the lower encoder's features of x."""
        return self.heads(self.joint(features, z2))

    def distribution(self, x: torch.Tensor) -> Hierarchy:
        """q(z2 | x) q(z1 | x, z2) as one distribution over ``[z2, z1]``."""
        features = self.lower_encoder(x)
        return Hierarchy(self.top.distribution(x), lambda z2: self.lower(features, z2), self.heads.latent_dim)

    def forward(self, x: torch.Tensor, num_images: Optional[int] = None, *, size: Optional[int] = None,
                subsample: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        with guide_plate(x, num_images, size=size, subsample=subsample):
            z2 = pyro.sample("z2", self.top.distribution(x))
            return pyro.sample("z1", self.lower(self.lower_encoder(x), z2))


class HVAE(VAE):
    """Two levels of latents (``--model hvae``): :class:`HVAEModel` and :class:`HVAEGuide`, with
    the helpers of :class:`~pyrovae.vae.VAE` working on the code ``[z2, z1]`` (``encode`` gives
    q over both levels, ``decode`` takes both, ``sample`` draws z2 then z1)."""

    name_prefix = "hvae"
    latent_sites = ("z2", "z1")
    # The manifold walks a 2-D code and the styles need classes; the levels figure applies.
    skipped_figures = frozenset({"styles", "manifold"})

    @classmethod
    def from_config(cls, config, likelihood: Likelihood, activation=nn.ReLU) -> "HVAE":
        """Both levels of ``latent_dim`` numbers. The image encoders of q(z2 | x) and q(z1 | x, z2)
        and the decoder of p(x | z1, z2) are the ``--net`` networks (:data:`pyrovae.registry.NETS`:
        MLPs of ``hidden_dims``, gated or not, or convolutions, as Tomczak & Welling's
        ``convHVAE_2level``), the decoder reading the code ``[z2, z1]``; q(z1 | x, z2) joins the
        encoder's features with z2 and p(z1 | z2) is an MLP (gated with ``--net gated``)."""
        from pyrovae.registry import NETS, lookup

        nets = lookup(NETS, "network", config.net)
        gated, hidden, d = config.net == "gated", tuple(config.hidden_dims), config.latent_dim
        output_shape = likelihood.decoder_shape(config.image_shape)
        top_encoder, _ = nets(config, output_shape)
        lower_encoder, decoder = nets(config.replace(latent_dim=2 * d), output_shape)
        features = lower_encoder.out_features
        top = DiagonalNormalGuide(top_encoder, d, logvar_range=config.logvar_range)
        guide = HVAEGuide(top, lower_encoder, TwoInputMLP(features, d, (hidden[-1],), activation=activation),
                          NormalHeads(hidden[-1], d, logvar_range=config.logvar_range))
        if config.prior == "vamp":  # a mixture of q(z2 | x) at learned pseudo-inputs
            prior: nn.Module = VampPrior(guide.top, config.num_pseudo_inputs, config.image_shape)
        else:
            prior = StandardNormalPrior(d)
        model = HVAEModel(prior, _Features(d, hidden, activation, gated), NormalHeads(hidden[-1], d),
                          JointDecoder(decoder), likelihood)
        return cls(model, guide)

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.guide != "diag_normal" or config.elbo != "trace":
            raise ConfigError("{model} hvae has its own guide and Trace_ELBO; leave {guide} and {elbo} at their "
                              "defaults.")
        if config.prior not in ("standard_normal", "vamp"):
            raise ConfigError("{model} hvae takes {prior} standard_normal or vamp (over q(z2|x)).")

    def __init__(self, model: HVAEModel, guide: HVAEGuide, name: Optional[str] = None):
        PyroModule.__init__(self, _claim_name(self, name, self.name_prefix))
        self.model = model
        self.guide = guide

    @property
    def code_dim(self) -> int:
        """Numbers in the code ``[z2, z1]``."""
        return self.model.prior.latent_dim + self.model.heads.latent_dim

    def prior_once(self) -> Hierarchy:
        return self.model.joint_prior()

    def code_shape(self) -> tuple:
        """Both levels, ``[z2, z1]``."""
        return (self.code_dim,)

    def fixed_latents(self, n: int, seed: int) -> torch.Tensor:
        """``n`` codes drawn from p(z2) p(z1 | z2) with a private generator seeded with ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        prior = self.model.prior
        top = prior.fixed_sample(n, generator) if hasattr(prior, "fixed_sample") else \
            torch.randn(n, prior.latent_dim, generator=generator)
        top = top.to(self.device, self.dtype)
        with torch.no_grad():
            lower = self.model.conditional(top)
        noise = torch.randn(n, self.model.heads.latent_dim, generator=generator).to(self.device, self.dtype)
        return torch.cat([top, lower.mean + lower.stddev * noise], dim=-1)

    def prior_codes(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """Codes ``[z2, z1]`` from p(z2) p(z1 | z2), each level's spread times ``temperature``."""
        check_draw(num_samples, temperature)
        conditional = self.model.conditional
        joint = Hierarchy(tempered(self.model.prior(), temperature),
                          lambda z2: tempered(conditional(z2), temperature), self.model.heads.latent_dim)
        return joint.sample((num_samples,))

    def code_levels(self) -> dict:
        return {"z2": self.model.prior.latent_dim, "z1": self.model.heads.latent_dim}

    @torch.no_grad()
    def kl_per_dimension(self, images: torch.Tensor, latents=None, batch_size: int = 1000) -> torch.Tensor:
        """Per dimension, the mean of KL(q(z2|x) || p(z2)) and of KL(q(z1|x,z2) || p(z1|z2)) at
        a z2 drawn from q(z2|x): both diagonal Normals, so each splits by dimension (the sum is
        the ELBO's KL term, estimated over z2). Needs a diagonal Normal p(z2)."""
        from pyrovae.priors import diagonal_normal

        top_prior = diagonal_normal(self.model.prior())
        if top_prior is None:
            raise ConfigError("KL per dimension needs a diagonal Normal p(z2) (the VampPrior's KL does not split "
                              "by dimension).")
        total = torch.zeros(self.code_dim, dtype=torch.float64, device=self.device)
        for x in images.split(batch_size):
            q = self.guide.distribution(x.to(self.device, self.dtype))
            top = diagonal_normal(q.top)
            z2 = q.top.sample()
            lower, prior_lower = diagonal_normal(q.lower(z2)), diagonal_normal(self.model.conditional(z2))
            kl = torch.cat([torch.distributions.kl_divergence(top, top_prior),
                            torch.distributions.kl_divergence(lower, prior_lower)], dim=-1)
            total += kl.double().sum(0)
        return (total / len(images)).float().cpu()

    @torch.no_grad()
    def level_grid(self, rows: int, columns: int, seed: int) -> torch.Tensor:
        """Each row one z2 (drawn with ``seed``), each column a fresh z1 ~ p(z1 | z2) given it."""
        codes = self.fixed_latents(rows * columns, seed).view(columns, rows, -1)
        top = codes[0, :, : self.model.prior.latent_dim].expand(columns, -1, -1)  # the same z2 down each row
        lower = self.model.conditional(top)
        generator = torch.Generator().manual_seed(seed + 1)
        noise = torch.randn(lower.mean.shape, generator=generator).to(self.device, self.dtype)
        z = torch.cat([top, lower.mean + lower.stddev * noise], dim=-1).transpose(0, 1).reshape(rows * columns, -1)
        return self.likelihood.mean(self.decoder(z))
