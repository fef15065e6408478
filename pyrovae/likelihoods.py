"""Likelihoods p(x|z): each turns decoder output into a distribution over whole images.

A likelihood owns any parameter of its own (such as a learned pixel scale), so swapping it
never touches the decoder. ``binary_data`` tells the training loop whether pixels must be
binarized first: a Bernoulli is a distribution over {0, 1}, not over grey levels.
"""

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "LearnedGaussianLikelihood",
    "ContinuousBernoulliLikelihood",
]

# Images are (channels, height, width): one event per image.
IMAGE_EVENT_DIM = 3


class Likelihood(PyroModule):
    """Base class: ``forward(decoder_output)`` returns p(x|z) with the image as one event."""

    binary_data = False

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The expected image, as pixels in [0, 1]."""
        return self(out).mean.clamp(0, 1)

    def sample(self, out: torch.Tensor) -> torch.Tensor:
        """A sampled image, as pixels in [0, 1]."""
        return self(out).sample().clamp(0, 1)


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels with logits from the decoder, for binarized images."""

    binary_data = True

    def forward(self, out):
        return dist.Bernoulli(logits=out).to_event(IMAGE_EVENT_DIM)


class GaussianLikelihood(Likelihood):
    """Independent Normal pixels, ``loc = sigmoid(out)``, with one fixed ``scale``.

    A fixed scale sets the weight of reconstruction against the KL term: halving it
    multiplies the squared-error term by four (see ``docs/``).
    """

    def __init__(self, scale: float = 0.5):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"GaussianLikelihood needs a positive scale, got {scale}.")
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, out):
        return dist.Normal(torch.sigmoid(out), self.scale).to_event(IMAGE_EVENT_DIM)


class LearnedGaussianLikelihood(Likelihood):
    """Independent Normal pixels, ``loc = sigmoid(out)``, with a learned scale per pixel.

    The scale is constrained to be at least ``min_scale``: pixels that are always 0 would
    otherwise drive their scale to zero and the density to infinity.
    """

    def __init__(self, image_shape=(1, 28, 28), init_scale: float = 0.5, min_scale: float = 1e-2):
        super().__init__()
        if not init_scale > min_scale > 0:
            raise ValueError("LearnedGaussianLikelihood needs init_scale > min_scale > 0.")
        self.min_scale = min_scale
        self.scale = PyroParam(
            torch.full(tuple(image_shape), float(init_scale)),
            constraint=constraints.greater_than(min_scale),
        )

    def forward(self, out):
        return dist.Normal(torch.sigmoid(out), self.scale).to_event(IMAGE_EVENT_DIM)


class ContinuousBernoulliLikelihood(Likelihood):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a proper density on [0, 1]
    for grey pixels, with logits from the decoder."""

    def forward(self, out):
        return dist.ContinuousBernoulli(logits=out).to_event(IMAGE_EVENT_DIM)
