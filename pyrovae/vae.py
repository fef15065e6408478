"""The VAE: a Pyro model p(z) p(x|z) and a guide q(z|x), held together with helpers to use them."""

import math

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrovae.likelihoods import Likelihood

__all__ = ["VAE", "VAEModel"]

# Parameters live in each module, not in Pyro's global parameter store, so that two VAEs in
# one process can never share or overwrite each other's weights.
pyro.settings.set(module_local_params=True)


class VAEModel(PyroModule):
    """The generative model: z ~ prior, x ~ likelihood(decoder(z)), one plate over images."""

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: Likelihood):
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)


class VAE(PyroModule):
    """A variational autoencoder made of four swappable parts.

    :param prior: a module whose ``forward()`` returns p(z) with event shape ``(latent_dim,)``.
    :param decoder: a module mapping z to decoder output of shape ``(..., *image_shape)``.
    :param likelihood: a :class:`~pyrovae.likelihoods.Likelihood` turning decoder output into p(x|z).
    :param guide: a module whose ``forward(x)`` samples site ``"z"`` in plate ``"data"`` and
        whose ``distribution(x)`` returns q(z|x).

    ``vae.model`` and ``vae.guide`` are what Pyro's inference algorithms take::

        vae = VAE(StandardNormalPrior(20), MLPDecoder(20), BernoulliLikelihood(),
                  DiagonalNormalGuide(MLPEncoder(), latent_dim=20))
        loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, images)
    """

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: Likelihood, guide: nn.Module):
        super().__init__()
        self.model = VAEModel(prior, decoder, likelihood)
        self.guide = guide

    @property
    def prior(self):
        return self.model.prior

    @property
    def decoder(self):
        return self.model.decoder

    @property
    def likelihood(self):
        return self.model.likelihood

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, x: torch.Tensor):
        """q(z|x) for a batch of images."""
        return self.guide.distribution(x)

    def decode(self, z: torch.Tensor):
        """p(x|z) for a batch of latent codes."""
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def posterior_mean(self, x: torch.Tensor, num_samples: int = 64) -> torch.Tensor:
        """E_q[z|x]: exact where q has a closed-form mean, else a Monte Carlo average (flows)."""
        q = self.encode(x)
        try:
            return q.mean
        except NotImplementedError:
            return q.sample((num_samples,)).mean(dim=0)

    def fixed_latents(self, n: int, seed: int) -> torch.Tensor:
        """``n`` codes from the prior's shape, drawn from a private generator seeded with
        ``seed``: the same every call, and the training random stream is left untouched."""
        generator = torch.Generator().manual_seed(seed)
        if hasattr(self.prior, "fixed_sample"):
            return self.prior.fixed_sample(n, generator)
        return torch.randn(n, self.prior.latent_dim, generator=generator)

    def elbo_parts(self, x: torch.Tensor, p):
        """The reconstruction term E_q[log p(x|z)] (one sample) and KL(q(z|x) || p(z)) of each
        image: in closed form when torch knows it, else a one-sample estimate. ``p`` is
        ``self.prior()``, built once by the caller."""
        from pyrovae.evaluation import analytic_kl

        q = self.encode(x)
        z = q.sample()
        kl = analytic_kl(q, p)
        if kl is None:
            kl = q.log_prob(z) - p.log_prob(z)
        return self.decode(z).log_prob(x), kl

    def log_marginal(self, x: torch.Tensor, p, num_samples: int, samples_per_chunk: int) -> torch.Tensor:
        """log p(x) of each image ~ log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), drawing
        at most ``samples_per_chunk`` samples at a time and accumulating the log-mean-exp."""
        q = self.encode(x)
        running = torch.full((len(x),), -math.inf, device=x.device)
        for start in range(0, num_samples, samples_per_chunk):
            z = q.sample((min(samples_per_chunk, num_samples - start),))
            log_w = p.log_prob(z) + self.decode(z).log_prob(x) - q.log_prob(z)
            running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
        return running - math.log(num_samples)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean image decoded from the posterior mean of each image's code."""
        return self.likelihood.mean(self.decoder(self.posterior_mean(x)))

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False, z: torch.Tensor = None) -> torch.Tensor:
        """Images decoded from prior samples (or from the given ``z``), pixels in [0, 1].

        :param bool mean: return the likelihood's mean image instead of a sampled one.
        """
        if z is None:
            z = self.prior().sample((num_samples,))
        out = self.decoder(z.to(self.device))
        return self.likelihood.mean(out) if mean else self.likelihood.sample(out)
