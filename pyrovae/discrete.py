"""A VAE whose code is ``latent_dim`` categorical variables of ``num_categories`` values each.

Training uses the Gumbel-softmax / Concrete relaxation (Jang et al. 2017; Maddison et al.
2017): the guide draws a relaxed one-hot vector for each variable, reparameterized, and
the prior is the relaxed uniform categorical at the same temperature, so Pyro's Trace_ELBO
is a true ELBO of the relaxed model. Both densities are taken in log space
(``ExpRelaxedCategorical``), where they stay finite at low temperatures; the decoder reads
``exp`` of the code. The temperature falls each epoch from ``temperature`` towards
``min_temperature``.

In eval mode the guide and prior are the exact categoricals, the decoder reads a hard
one-hot code, and evaluation scores the discrete model: its KL term is the exact
KL(q(z|x) || Uniform) and log p(x) is importance-sampled with q's one-hot samples.

Why not Pyro's enumeration? ``TraceEnum_ELBO`` sums a discrete site exactly, with no
gradient variance, and M2 (:mod:`pyrovae.m2`) uses it for its one class variable of 10
values. A code of 20 variables with 10 values each has 10^20 joint values; enumerating
them is impossible, and mean-field enumeration of one variable at a time still decodes
``latent_dim * num_categories`` codes per image. The relaxation costs one decoder pass.
"""

import math

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import nn
from torch.distributions import relaxed_categorical
from torch.nn import functional as F

from pyrovae.errors import ConfigError
from pyrovae.guides import AmortizedGuide
from pyrovae.networks import autocast_forward
from pyrovae.vae import VAE

__all__ = ["CategoricalVAE", "ExpRelaxedCategorical", "CategoricalGuide", "UniformCategoricalPrior",
           "OneHotCodeDecoder", "temperature_at"]


class ExpRelaxedCategorical(relaxed_categorical.ExpRelaxedCategorical, TorchDistributionMixin):
    """torch's ``ExpRelaxedCategorical`` (the log of a Concrete sample) usable at a Pyro site."""


def temperature_at(epoch: int, start: float, minimum: float, rate: float = 0.2) -> float:
    """The relaxation's temperature during epoch ``epoch`` (counted from 0):
    ``max(minimum, start * exp(-rate * epoch))``."""
    return max(minimum, start * math.exp(-rate * epoch))


class _Annealed:
    """A ``temperature`` buffer that the trainer lowers every epoch (a mixin for modules)."""

    def _init_temperature(self, temperature: float, min_temperature: float) -> None:
        self.start, self.minimum = temperature, min_temperature
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def anneal(self, epoch: int) -> None:
        """Set the temperature for epoch ``epoch`` (from 0); the trainer calls it every epoch."""
        self.temperature.fill_(temperature_at(epoch, self.start, self.minimum))


class CategoricalGuide(AmortizedGuide, _Annealed):
    """q(z|x): ``latent_dim`` independent categoricals with logits from a linear head.

    Training mode: their relaxation in log space, event shape ``(latent_dim, num_categories)``.
    Eval mode: the categoricals themselves, as one-hot vectors of the same shape.
    """

    def __init__(self, encoder: nn.Module, latent_dim: int, num_categories: int = 10, temperature: float = 1.0,
                 min_temperature: float = 0.5, feature_dim=None):
        super().__init__(encoder, latent_dim, feature_dim)
        self._init_temperature(temperature, min_temperature)
        self.num_categories = num_categories
        self.logits = nn.Linear(self.feature_dim, latent_dim * num_categories)

    def distribution(self, x):
        logits = self.logits(self.encoder(x)).unflatten(-1, (self.latent_dim, self.num_categories))
        if self.training:
            return ExpRelaxedCategorical(self.temperature, logits=logits).to_event(1)
        return dist.OneHotCategorical(logits=logits).to_event(1)


class UniformCategoricalPrior(_Annealed, nn.Module):
    """p(z): ``latent_dim`` independent uniform categoricals (relaxed in training mode)."""

    def __init__(self, latent_dim: int, num_categories: int = 10, temperature: float = 1.0,
                 min_temperature: float = 0.5):
        super().__init__()
        self._init_temperature(temperature, min_temperature)
        self.latent_dim, self.num_categories = latent_dim, num_categories
        self.register_buffer("logits", torch.zeros(latent_dim, num_categories))

    def forward(self) -> dist.TorchDistribution:
        if self.training:
            return ExpRelaxedCategorical(self.temperature, logits=self.logits).to_event(1)
        return dist.OneHotCategorical(logits=self.logits).to_event(1)

    def fixed_sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` one-hot codes drawn with ``generator`` (the same pictures every epoch)."""
        values = torch.randint(self.num_categories, (n, self.latent_dim), generator=generator)
        return F.one_hot(values, self.num_categories).float()


class OneHotCodeDecoder(nn.Module):
    """Flattens a categorical code into a decoder's input: ``exp`` of a log-space relaxed code
    in training mode, the one-hot (or probability) vectors themselves in eval mode."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    @autocast_forward
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder((z.exp() if self.training else z).flatten(-2))


class CategoricalVAE(VAE):
    """The VAE whose code is ``latent_dim`` categorical variables of ``num_categories`` values
    (``--model categorical``, or its older spelling ``--guide categorical --prior categorical``):
    the plain VAE's parts, with a decoder that reads the code one-hot."""

    skipped_figures = VAE.skipped_figures | {"latent", "manifold", "interpolate", "kl"}
    continuous_code = False

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if (config.guide, config.prior) != ("categorical", "categorical"):
            raise ConfigError("{model} categorical takes {guide} categorical and {prior} categorical.")

    @classmethod
    def code_features(cls, config) -> int:
        return config.latent_dim * config.num_categories

    @classmethod
    def code_decoder(cls, decoder: nn.Module) -> nn.Module:
        return OneHotCodeDecoder(decoder)
