"""The conditional VAE of Sohn et al. (2015), as Pyro's CVAE example builds it: complete the
hidden part of an image from its visible part.

Given the visible pixels v of an image (the others marked -1, as Pyro's example does) and a
baseline network's guess of the hidden ones, a prior network gives p(z | v); the decoder
gives p(h | z) over the hidden pixels h; the guide is q(z | v, h), an encoder of the whole
image. The bound is

    log p(h | v) >= E_q[log p(h | z)] - KL(q(z | v, h) || p(z | v)),

and the baseline (an MLP from v straight to h, Pyro's ``BaselineNet``) is fitted alongside by
its own log-likelihood of h, which :class:`CVAE_ELBO` adds. Its guess enters the prior
network detached, so the bound does not train it. ``evaluate`` scores log p(h | v) by
importance sampling, beside the baseline's log-likelihood: what the latent code adds.

Which pixels are visible is a mask of the image's shape: ``--visible-quadrants Q`` shows the
first Q quadrants in the order top-left, top-right, bottom-left (Pyro's example uses 1 to 3).
"""

import math
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pyrovae._pyro import get_traces, trace_elbo_particle
from pyrovae.errors import ConfigError, DataError
from pyrovae.guides import DiagonalNormalGuide
from pyrovae.likelihoods import Likelihood, score_pixels
from pyrovae.networks import MLPDecoder, MLPEncoder
from pyrovae.objectives import ThroughDifferentiableLoss, Trace_ELBO
from pyrovae.pixels import to_unit
from pyrovae.plates import data_plate, guide_plate
from pyrovae.vae import VAE, _claim_name, analytic_kl

__all__ = ["CVAE", "CVAEModel", "CVAEGuide", "CVAE_ELBO", "quadrant_mask", "BASELINE_SITE"]

# The model's masked factor holding the baseline's log-likelihood of the hidden pixels.
BASELINE_SITE = "baseline"
HIDDEN = -1.0  # what a hidden pixel reads as in the networks' input, as in Pyro's example


def quadrant_mask(image_shape, visible_quadrants: int) -> torch.Tensor:
    """``(C, H, W)`` booleans, True on the first ``visible_quadrants`` quadrants in the order
    top-left, top-right, bottom-left (the visible part)."""
    if not 1 <= visible_quadrants <= 3:
        raise ConfigError(f"{{visible_quadrants}} must be 1, 2 or 3, got {visible_quadrants}.")
    _, height, width = image_shape
    if height < 2 or width < 2:
        raise ConfigError(f"Quadrants need images of at least 2x2 pixels, got {height}x{width}.")
    mask = torch.zeros(tuple(image_shape), dtype=torch.bool)
    corners = [(slice(0, height // 2), slice(0, width // 2)), (slice(0, height // 2), slice(width // 2, width)),
               (slice(height // 2, height), slice(0, width // 2))]
    for rows, columns in corners[:visible_quadrants]:
        mask[:, rows, columns] = True
    return mask


class CVAEModel(PyroModule):
    """z ~ p(z | visible part), hidden part ~ likelihood(decoder(z)), one plate over images.

    ``model(x)`` scores the hidden pixels of the images ``x`` (the visible ones condition the
    prior); ``model(x, complete=True)`` draws the hidden pixels and returns the completed
    images, so ``Predictive(vae.model, num_samples=k)(x, complete=True)`` draws k completions.
    """

    def __init__(self, baseline: nn.Module, prior_net: DiagonalNormalGuide, decoder: nn.Module,
                 likelihood: Likelihood, visible: torch.Tensor):
        super().__init__()
        self.baseline = baseline
        self.prior_net = prior_net
        self.decoder = decoder
        self.likelihood = likelihood
        self.register_buffer("visible", visible)

    def visible_input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.visible, x, torch.full_like(x, HIDDEN))

    def baseline_distribution(self, x: torch.Tensor) -> dist.TorchDistribution:
        """The baseline's p(hidden | visible), scoring the hidden pixels only."""
        return score_pixels(self.likelihood(self.baseline(self.visible_input(x))), ~self.visible)

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z | visible part of x), from the visible pixels and the baseline's guess (detached)."""
        visible = self.visible_input(x)
        guess = self.likelihood.mean(self.baseline(visible)).detach()
        return self.prior_net.distribution(torch.cat([visible, guess], dim=-3))

    def forward(self, x: torch.Tensor, num_images: Optional[int] = None, *, size: Optional[int] = None,
                subsample: Optional[torch.Tensor] = None, complete: bool = False) -> torch.Tensor:
        if x is None:
            raise ValueError("A conditional VAE completes images: pass the images x whose visible part it sees.")
        with data_plate(x, num_images, size=size, subsample=subsample):
            z = pyro.sample("z", self.prior(x))
            if not complete:  # masked out of the bound; CVAE_ELBO adds it
                with poutine.mask(mask=False):
                    pyro.factor(BASELINE_SITE, self.baseline_distribution(x).log_prob(x))
            hidden = score_pixels(self.likelihood(self.decoder(z)), ~self.visible)
            drawn = pyro.sample("x", hidden, obs=None if complete else x)
        return torch.where(self.visible, x, drawn)


class CVAEGuide(DiagonalNormalGuide):
    """q(z | visible, hidden): a diagonal Normal from an encoder of the whole image."""

    def forward(self, x: torch.Tensor, num_images: Optional[int] = None, *, size: Optional[int] = None,
                subsample: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                complete: bool = False) -> torch.Tensor:
        if complete:
            raise ValueError("Completions come from the model's prior, which sees only the visible part: "
                             "Predictive(vae.model, num_samples=k)(x, complete=True), without the guide.")
        with guide_plate(x, num_images, size=size, subsample=subsample):
            return pyro.sample("z", self.distribution(x))


class CVAE_ELBO(ThroughDifferentiableLoss, Trace_ELBO):
    """The CVAE's objective: Pyro's ``Trace_ELBO`` of log p(hidden | visible) plus the
    baseline's log-likelihood of the hidden pixels, read from the model's masked factor
    ``"baseline"`` (the way ``pyro.contrib.cevae`` adds its auxiliary terms). ``loss`` and
    ``loss_and_grads`` (what SVI calls) go through it too."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in get_traces(self, model, guide, args, kwargs):
            site = model_trace.nodes.get(BASELINE_SITE)
            baseline = site["unscaled_log_prob"].sum() if site is not None else 0.0
            loss_particle, surrogate_particle = trace_elbo_particle(self, model_trace, guide_trace)
            particle = loss_particle + (surrogate_particle - surrogate_particle.detach()) - baseline
            loss = loss + particle / self.num_particles
        return loss


class CVAE(VAE):
    """A conditional VAE and its baseline, with the helpers of :class:`~pyrovae.vae.VAE`:
    ``reconstruct`` completes images from their visible part (the prior's mean code), and
    :meth:`complete` draws completions."""

    name_prefix = "cvae"
    # Figures that decode codes drawn from an unconditional prior, or split its KL by dimension.
    skipped_figures = frozenset({"samples", "manifold", "interpolate", "kl", "styles", "levels"})
    likelihood_name = "log p(hidden | visible)"

    @classmethod
    def from_config(cls, config, likelihood: Likelihood, activation=nn.ReLU) -> "CVAE":
        """MLPs of ``hidden_dims`` everywhere, as in Pyro's example: the baseline, the prior
        network (on the visible part and the baseline's guess, 2C channels) and the guide's
        encoder; the decoder mirrors them."""
        channels, height, width = config.image_shape
        output_shape = likelihood.decoder_shape(config.image_shape)
        hidden = tuple(config.hidden_dims)
        baseline = nn.Sequential(MLPEncoder(config.image_shape, hidden, activation),
                                 nn.Linear(hidden[-1], math.prod(output_shape)), nn.Unflatten(-1, output_shape))
        prior_net = DiagonalNormalGuide(MLPEncoder((2 * channels, height, width), hidden, activation),
                                        config.latent_dim)
        decoder = MLPDecoder(config.latent_dim, output_shape, tuple(reversed(hidden)), activation)
        guide = CVAEGuide(MLPEncoder(config.image_shape, hidden, activation), config.latent_dim)
        visible = quadrant_mask(config.image_shape, config.visible_quadrants)
        return cls(CVAEModel(baseline, prior_net, decoder, likelihood, visible), guide)

    @classmethod
    def check_config(cls, config) -> None:
        if config.num_labels is not None:
            raise ConfigError("{num_labels} applies to a model with classes ({model} m2).")
        if (config.guide, config.prior, config.net, config.elbo) != ("diag_normal", "standard_normal", "mlp", "trace"):
            raise ConfigError("{model} cvae has its own guide, conditional prior, MLP networks and ELBO; "
                              "leave {guide}, {prior}, {net} and {elbo} at their defaults.")
        if config.logvar_range is not None:
            raise ConfigError("{logvar_range} clips the plain VAE's guide; {model} cvae has its own.")
        quadrant_mask(config.image_shape, config.visible_quadrants)

    @classmethod
    def elbo_from_config(cls, config) -> CVAE_ELBO:
        return CVAE_ELBO()

    def __init__(self, model: CVAEModel, guide: CVAEGuide, name: Optional[str] = None):
        PyroModule.__init__(self, _claim_name(self, name, self.name_prefix))
        self.model = model
        self.guide = guide

    def default_elbo(self) -> CVAE_ELBO:
        return CVAE_ELBO()

    def prior_once(self):
        return None  # p(z | visible part) is the image's own

    def scored_values(self, image_shape) -> int:
        return int((~self.model.visible).sum())

    def elbo_parts(self, x: torch.Tensor, p):
        """E_q[log p(hidden | z)] (one sample) and KL(q(z | x) || p(z | visible)) in closed form."""
        q = self._encode(x)
        z = q.sample()
        return self._decode(z).log_prob(x), analytic_kl(q, self.model.prior(x))

    def _decode(self, z: torch.Tensor):
        return score_pixels(self.likelihood(self.decoder(z)), ~self.model.visible)

    def importance_terms(self, x: torch.Tensor, p):
        """log p(hidden | visible) ~ log (1/k) sum_i p(z_i | v) p(h | z_i) / q(z_i | v, h)."""
        prior = self.model.prior(x)
        return self._encode(x), lambda z: prior.log_prob(z) + self._decode(z).log_prob(x), lambda log_p: log_p

    @torch.no_grad()
    def baseline_log_likelihood(self, images: torch.Tensor, batch_size: int = 1000) -> float:
        """The baseline's mean log p(hidden | visible) of ``images``, in nats per image."""
        total = 0.0
        for x in images.split(batch_size):
            x = to_unit(x, self.dtype, self.device)
            total += float(self.model.baseline_distribution(x).log_prob(x).sum())
        return total / len(images)

    def extra_scores(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict:
        return {"baseline log p(hidden | visible)": self.baseline_log_likelihood(images)}

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int = 1, mean: bool = True) -> torch.Tensor:
        """``num_samples`` completions of each image from its visible part: ``(num_samples, N,
        C, H, W)``, the visible pixels kept; the likelihood's mean image of each code drawn from
        p(z | visible) unless ``mean`` is False (then the pixels are drawn too)."""
        x = self.as_batch(x)
        z = self.model.prior(x).sample((num_samples,))
        out = self.decoder(z)
        drawn = self.likelihood.mean(out) if mean else self.likelihood.sample(out)
        return torch.where(self.model.visible, x, drawn)

    def seen(self, x: torch.Tensor) -> torch.Tensor:
        """What the model sees of each image, for pictures: the visible part, the hidden part grey."""
        return torch.where(self.model.visible, x, torch.full_like(x, 0.5))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The completion of each image at the prior's mean code: what the model predicts for
        the hidden part from the visible part alone (the hidden pixels of ``x`` are not seen)."""
        x = self.as_batch(x)
        drawn = self.likelihood.mean(self.decoder(self.model.prior(x).mean))
        return torch.where(self.model.visible, x, drawn)

    def epoch_samples(self, num: int, seed: int, test_images: torch.Tensor) -> torch.Tensor:
        """Completions of the first ``num`` test images, one each, from codes drawn with ``seed``."""
        if not len(test_images):
            raise DataError("A conditional VAE's samples complete test images, and there are none.")
        images = to_unit(test_images[torch.arange(num) % len(test_images)], self.dtype, self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self.complete(images)[0]

    def sample(self, num_samples: int, mean: bool = True, z: Optional[torch.Tensor] = None,
               temperature: float = 1.0) -> torch.Tensor:
        raise ConfigError("A conditional VAE draws completions of images, not images from nothing: "
                          "vae.complete(images), or pyrovae sample RUN --complete IMAGES.")
