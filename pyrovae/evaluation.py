"""Scoring a trained VAE: the ELBO with its two terms, and the importance-sampled log-likelihood.

All figures are nats per image, summed over pixels and latent dimensions (docs/elbo.md).
Evaluation draws its noise from a fixed seed inside :func:`torch.random.fork_rng`, so the
same model scores the same on every call and training's random stream is left untouched.
"""

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

import torch

from pyrovae.errors import ConfigError, DataError
from pyrovae.pixels import to_unit
from pyrovae.vae import VAE, analytic_kl

__all__ = ["ELBOTerms", "EvalResult", "check_support", "elbo_terms", "log_likelihood", "evaluate", "bits_per_dim",
           "analytic_kl", "eval_mode"]

# Rows (images x importance samples) decoded at once: bounds memory to about
# MAX_ROWS x (hidden + pixels) floats, some 80 MB for the default MLP. A prior whose density
# costs more per row declares ``row_cost`` (in units of about 1,024 floats per row).
MAX_ROWS = 16384


@dataclass
class ELBOTerms:
    """Per-image means, in nats: ``elbo = reconstruction - kl``."""

    elbo: float
    reconstruction: float
    kl: float
    num_images: int


@dataclass
class EvalResult:
    """What ``pyrovae evaluate`` reports; ``log_likelihood`` is >= ``elbo`` up to Monte Carlo error."""

    elbo: float
    reconstruction: float
    kl: float
    log_likelihood: float
    num_samples: int
    num_images: int
    dataset: str = ""
    accuracy: Optional[float] = None  # test accuracy of a model with classes (M2)
    # -log2 p(x) per pixel value, for a likelihood that gives probabilities of the exact pixel
    # values (Bernoulli on binarized, discretized logistic on 8-bit images); None for densities.
    bits_per_dim: Optional[float] = None
    # What log_likelihood is of ("log p(x)"; a conditional VAE's "log p(hidden | visible)"),
    # and the model family's own further scores by name (a CVAE's baseline).
    likelihood_name: str = "log p(x)"
    extra: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _seeded(seed: Optional[int], device: torch.device):
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


@contextmanager
def eval_mode(vae: VAE):
    """Within the block, ``vae`` is in eval mode; afterwards in the mode it was in."""
    was_training = vae.training
    vae.eval()
    try:
        yield
    finally:
        vae.train(was_training)


def check_support(vae: VAE, images: torch.Tensor) -> None:
    """:raises DataError: in one sentence, when ``images`` leave the support of the model's
    likelihood (grey pixels for a Bernoulli, values off the 8-bit grid for a discretized
    logistic, NaN anywhere)."""
    check = getattr(getattr(vae, "likelihood", None), "check_support", None)
    if check is not None:
        check(images)


def _check_some(images) -> None:
    """:raises DataError: when there are no images to score (a mean over none is no number)."""
    if not len(images):
        raise DataError("There are no images to score; pass at least one.")


@torch.no_grad()
def elbo_terms(vae: VAE, images: torch.Tensor, batch_size: int = 1000, seed: Optional[int] = 0) -> ELBOTerms:
    """The ELBO on ``images`` with one sample per image for the reconstruction term, and the
    KL term in closed form when it exists (a one-sample estimate otherwise): see
    :meth:`VAE.elbo_parts <pyrovae.vae.VAE.elbo_parts>`. The model is scored in eval mode.

    :raises DataError: when the images leave the likelihood's support (:func:`check_support`).
    """
    _check_some(images)
    check_support(vae, images)
    device = vae.device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    with _seeded(seed, device), eval_mode(vae):
        p = vae.prior_once()
        for x in images.split(batch_size):
            reconstruction, kl = vae.elbo_parts(to_unit(x, vae.dtype, device), p)
            totals += torch.stack([reconstruction.sum(), kl.sum()]).double()
    reconstruction, kl = (totals / len(images)).tolist()
    return ELBOTerms(reconstruction - kl, reconstruction, kl, len(images))


def _row_cost(vae: VAE) -> int:
    """Decoder rows each (image, sample) pair costs, relative to a plain VAE with a Normal prior."""
    return vae.row_cost * getattr(vae.prior, "row_cost", 1)


@torch.no_grad()
def log_likelihood(
    vae: VAE, images: torch.Tensor, num_samples: int = 1000, seed: Optional[int] = 0, progress=None
) -> float:
    """Mean over images of log p(x) ~ log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x)
    (:meth:`VAE.log_marginal <pyrovae.vae.VAE.log_marginal>`).

    Images and samples are processed in chunks of at most :data:`MAX_ROWS` decoder rows, and
    the log-mean-exp is accumulated across chunks, so memory does not grow with k.

    :param progress: optional callable receiving the number of images finished after each chunk.
    :raises DataError: when the images leave the likelihood's support (:func:`check_support`).
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ConfigError(f"num_samples must be a whole number, at least 1, not {num_samples!r}.")
    _check_some(images)
    check_support(vae, images)
    device = vae.device
    # A mixture prior scores every row against each component, M2 decodes every class: fewer rows per chunk.
    max_rows = max(1, MAX_ROWS // _row_cost(vae))
    images_per_chunk = max(1, max_rows // num_samples)
    samples_per_chunk = min(num_samples, max(1, max_rows // images_per_chunk))
    total = torch.zeros((), dtype=torch.float64, device=device)
    with _seeded(seed, device), eval_mode(vae):
        p = vae.prior_once()  # the same for every image: built once (the VampPrior encodes its pseudo-inputs)
        for x in images.split(images_per_chunk):
            x = to_unit(x, vae.dtype, device)
            total += vae.log_marginal(x, p, num_samples, samples_per_chunk).double().sum()
            if progress is not None:
                progress(len(x))
    return total.item() / len(images)


def evaluate(
    vae: VAE, images: torch.Tensor, num_samples: int = 1000, seed: int = 0, dataset: str = "", progress=None,
    labels: Optional[torch.Tensor] = None,
) -> EvalResult:
    """Both scores on the same images (binarize them first for a binary likelihood), and the
    classifier's accuracy on ``labels`` for a model with classes."""
    terms = elbo_terms(vae, images, seed=seed)
    ll = log_likelihood(vae, images, num_samples, seed=seed, progress=progress)
    extra = vae.extra_scores(images, labels)
    accuracy = extra.pop("accuracy", None)
    discrete = getattr(vae.likelihood, "discrete", False)
    bits = bits_per_dim(ll, images.shape[1:], vae.scored_values(images.shape[1:])) if discrete else None
    return EvalResult(terms.elbo, terms.reconstruction, terms.kl, ll, num_samples, len(images), dataset, accuracy,
                      bits, vae.likelihood_name, extra)


def bits_per_dim(log_likelihood: float, image_shape, values: Optional[int] = None) -> float:
    """Nats per image as bits per dimension: -log p(x) / (C H W log 2), or over the ``values``
    the likelihood scores when they are fewer (a conditional VAE's hidden pixels)."""
    return -log_likelihood / ((values or math.prod(image_shape)) * math.log(2))
