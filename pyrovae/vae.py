"""The VAE: a Pyro model p(z) p(x|z) and a guide q(z|x), held together with helpers to use them."""

import itertools
import math
import weakref
from typing import Optional

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import kl_divergence

from pyrovae.errors import ConfigError
from pyrovae.likelihoods import Likelihood
from pyrovae.plates import data_plate

__all__ = ["VAE", "VAEModel", "analytic_kl"]

# Pyro's parameter store keys PyroModule parameters by the module's name, so two VAEs with
# one name would share weights whenever a Pyro optimizer drives them. Each VAE takes a name
# no live VAE of this process holds (and never one an earlier VAE held: the store may still
# hold that one's weights, which the new VAE would pick up).
_LIVE_NAMES: "weakref.WeakValueDictionary[str, nn.Module]" = weakref.WeakValueDictionary()
_USED_NAMES = set()
_NAME_COUNTER = itertools.count(1)


def _claim_name(module: nn.Module, name: Optional[str], prefix: str) -> str:
    if name is not None:
        if name in _LIVE_NAMES:
            raise ValueError(f"Another VAE in this process is already named {name!r}; Pyro's parameter store "
                             "would make them share weights. Choose another name.")
    else:
        name = prefix
        while name in _USED_NAMES or name in _LIVE_NAMES:
            name = f"{prefix}_{next(_NAME_COUNTER)}"
    _LIVE_NAMES[name] = module
    _USED_NAMES.add(name)
    return name


def analytic_kl(q, p) -> Optional[torch.Tensor]:
    """KL(q || p) in closed form where torch knows one, else None."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def _check_latent_sizes(prior, decoder, guide) -> None:
    """Parts that declare their code size (``latent_dim``) must agree, so that a mismatch is
    one sentence here and not a shape error deep inside the first training step."""
    sizes = {}
    for part, value in (("prior", prior), ("guide", guide)):
        if isinstance(getattr(value, "latent_dim", None), int):
            sizes[part] = value.latent_dim
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"The prior draws codes of {sizes['prior']} dimensions but the guide gives "
                          f"{sizes['guide']}; build both with the same latent_dim.")
    # A categorical code reaches the decoder one-hot: latent_dim * num_categories numbers.
    code = getattr(prior, "latent_dim", None)
    if isinstance(code, int) and isinstance(getattr(decoder, "latent_dim", None), int):
        code *= getattr(prior, "num_categories", 1)
        if decoder.latent_dim != code:
            raise ConfigError(f"The decoder takes codes of {decoder.latent_dim} numbers but the prior draws {code}; "
                              "build the decoder with the prior's latent_dim.")


class VAEModel(PyroModule):
    """The generative model: z ~ prior, x ~ likelihood(decoder(z)), one plate over images.

    ``model(x)`` scores a batch of images (site ``"x"`` observed); ``model(num_images=n)``
    generates n images, so Pyro's ``Predictive`` draws fresh images from it.
    """

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: Likelihood):
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood

    def forward(self, x: Optional[torch.Tensor] = None, num_images: Optional[int] = None, *,
                size: Optional[int] = None, subsample: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:returns: the images, observed or generated."""
        with data_plate(x, num_images, size=size, subsample=subsample):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)


class VAE(PyroModule):
    """A variational autoencoder made of four swappable parts.

    :param prior: a module whose ``forward()`` returns p(z) with event shape ``(latent_dim,)``.
    :param decoder: a module mapping z to decoder output of shape ``(..., *image_shape)``.
    :param likelihood: a :class:`~pyrovae.likelihoods.Likelihood` turning decoder output into p(x|z).
    :param guide: q(z|x): an :class:`~pyrovae.guides.AmortizedGuide`, or any Pyro guide that takes
        the model's arguments (a function using ``pyro.param``, a Pyro autoguide of ``vae.model``,
        set after building with ``vae.guide = AutoNormal(vae.model, create_plates=vae.create_plates)``).
    :param str name: the prefix of this VAE's parameters in Pyro's parameter store; default a
        name no other VAE of this process has (``vae``, ``vae_1``, ...).

    ``vae.model`` and ``vae.guide`` are what Pyro's inference algorithms take::

        vae = VAE(StandardNormalPrior(20), MLPDecoder(20), BernoulliLikelihood(),
                  DiagonalNormalGuide(MLPEncoder(), latent_dim=20))
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
        svi.step(binary_images)
    """

    name_prefix = "vae"
    # What the command line needs to know of a model family (pyrovae.registry.MODELS).
    from_config = None  # a classmethod building the family from a Config, where not from parts
    skipped_figures = frozenset({"styles"})  # figure kinds of pyrovae.plots that do not apply

    @classmethod
    def elbo_from_config(cls, config):
        """The family's own objective for ``config``, or None for the one ``--elbo`` names."""
        return None

    @classmethod
    def training_labels(cls, config, data) -> Optional[torch.Tensor]:
        """The labels training may see (-1 where hidden), for a family with classes; checked
        before anything is written."""
        return None

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: Likelihood, guide,
                 name: Optional[str] = None):
        _check_latent_sizes(prior, decoder, guide)
        super().__init__(_claim_name(self, name, self.name_prefix))
        self.model = VAEModel(prior, decoder, likelihood)
        self.guide = guide

    # The model's "data" plate for its arguments: what a Pyro autoguide needs to follow the
    # model's subsampling, AutoNormal(vae.model, create_plates=vae.create_plates).
    create_plates = staticmethod(data_plate)

    def default_elbo(self):
        """The objective this family trains with unless told otherwise: Pyro's ``Trace_ELBO``
        (pyrovae's sync-free subclass, :class:`pyrovae.objectives.Trace_ELBO`)."""
        from pyrovae.objectives import Trace_ELBO

        return Trace_ELBO()

    @property
    def name(self) -> str:
        """The prefix of this VAE's parameter names in Pyro's parameter store."""
        return self._pyro_name

    def __setattr__(self, name, value):
        if name == "guide" and not isinstance(value, nn.Module):  # a guide function replaces a guide module
            self._modules.pop("guide", None)
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

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

    @property
    def amortized(self) -> bool:
        """Whether the guide gives q(z|x) for any image (pyrovae's guides), which evaluation needs;
        a Pyro autoguide or a per-image ``pyro.param`` guide knows only its training images."""
        return hasattr(self.guide, "distribution")

    def encode(self, x: torch.Tensor):
        """q(z|x) for a batch of images."""
        if not self.amortized:
            raise TypeError(f"{type(self.guide).__name__} gives no q(z|x) for new images (it is not an amortized "
                            "guide with a distribution(x) method), so images cannot be encoded or scored with it.")
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
