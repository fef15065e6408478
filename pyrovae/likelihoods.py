"""Likelihoods p(x|z): each turns decoder output into a distribution over whole images.

A likelihood owns any parameter of its own (such as a learned pixel scale), so swapping it
never touches the decoder. ``binary_data`` tells the training loop whether pixels must be
binarized first: a Bernoulli is a distribution over {0, 1}, not over grey levels. A
``discrete`` likelihood gives probabilities of the image's exact pixel values, so its
log-likelihood converts to bits per dimension (docs/likelihoods.md). A likelihood that needs
several numbers per pixel (``outputs_per_pixel``) asks the decoder for that many channels
per image channel: :meth:`Likelihood.decoder_shape`.
"""

import math
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from pyrovae.errors import DataError
from pyrovae.pixels import MappedImages, chunks, to_unit

__all__ = [
    "score_pixels",
    "Likelihood",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "LearnedGaussianLikelihood",
    "ContinuousBernoulliLikelihood",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "DiscretizedLogisticMixtureLikelihood",
]

# Images are (channels, height, width): one event per image.
IMAGE_EVENT_DIM = 3


class _EightBit(constraints.Constraint):
    """The 256 pixel values k/255 of 8-bit images (up to float32 rounding)."""

    is_discrete = True

    def check(self, value):
        steps = value * 255
        return (value >= 0) & (value <= 1) & ((steps - steps.round()).abs() < 1e-3)


eight_bit = _EightBit()


class Likelihood(PyroModule):
    """Base class: ``forward(decoder_output)`` returns p(x|z) with the image as one event.

    ``support`` is the set of pixel values p(x|z) is a distribution over; :meth:`check_support`
    refuses images that leave it, with ``support_hint`` saying what to do instead.
    ``data_range`` is where the images' values lie, which :meth:`VAE.encode
    <pyrovae.vae.VAE.as_batch>` checks: pixels in [0, 1], as every data set pyrovae loads
    is scaled; a likelihood for other data (standardized values, say) sets None.
    """

    binary_data = False
    data_range = (0.0, 1.0)
    discrete = False  # probabilities of the exact pixel values (binary or 8-bit), not densities
    outputs_per_pixel = 1  # decoder channels per image channel
    support: constraints.Constraint = constraints.real
    support_words = "real pixel values"
    support_hint = ""

    def check_support(self, images, name: str = "The images") -> None:
        """:raises DataError: in one sentence, when ``images`` (floats, or stored pixels:
        uint8 or memory-mapped, :mod:`pyrovae.pixels`) hold values p(x|z) cannot score."""
        if not isinstance(images, MappedImages) and (
                not torch.is_tensor(images) or not (images.is_floating_point() or images.dtype == torch.uint8)):
            raise DataError(f"{name} must be a float tensor of pixels, not {type(images).__name__}"
                            f"{' of ' + str(images.dtype) if torch.is_tensor(images) else ''}.")
        if images.dtype == torch.uint8 and bool(self.support.check(torch.arange(256) / 255).all()):
            return  # every byte is a value p(x|z) scores: nothing to read
        count, example = 0, None
        for chunk in chunks(images):  # bounded temporaries, whatever the size of the data
            chunk = to_unit(chunk, chunk.dtype if chunk.is_floating_point() else torch.float32)
            if not torch.isfinite(chunk).all():
                raise DataError(f"{name} hold NaN or infinite pixel values.")
            outside = ~self.support.check(chunk)
            if outside.any():
                count += int(outside.sum())
                example = chunk[outside][0].item() if example is None else example
        if count:
            raise DataError(f"{name} hold pixel values outside what {type(self).__name__} models ({self.support_words}"
                            f"; {count} values such as {example:.4g} are not); {self.support_hint}")

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def decoder_shape(self, image_shape) -> tuple:
        """The decoder output this likelihood reads for images of ``image_shape`` (C, H, W)."""
        c, *size = image_shape
        return (c * self.outputs_per_pixel, *size)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The expected image, as pixels in [0, 1]."""
        return self(out).mean.clamp(0, 1)

    def sample(self, out: torch.Tensor) -> torch.Tensor:
        """A sampled image, as pixels in [0, 1]."""
        return self(out).sample().clamp(0, 1)


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels with logits from the decoder, for binarized images."""

    binary_data = True
    discrete = True
    support = constraints.boolean
    support_words = "pixels that are exactly 0 or 1"
    support_hint = "binarize the images first (pyrovae.binarize)."

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

    support = constraints.unit_interval
    support_words = "pixels in [0, 1]"
    support_hint = "scale the images to [0, 1] (8-bit values divided by 255)."

    def forward(self, out):
        return dist.ContinuousBernoulli(logits=out).to_event(IMAGE_EVENT_DIM)


# 8-bit pixels k / 255: each value owns a bin of this half-width in [0, 1].
_HALF_BIN = 0.5 / 255
# The narrowest logistic: PixelCNN++ and NVAE clamp the log-scale at -7 on data in [-1, 1],
# where a bin is 2/255 wide; pyrovae's bins on [0, 1] are half as wide, so the same floor
# relative to a bin is -7 - ln 2. An interior value then gets up to tanh(255 e^7 / 1020) =
# 0.973 of the mass; a floor of -7 here capped it at 0.791 (0.34 bits/dim lost for good).
_MIN_LOG_SCALE = -7.0 - math.log(2.0)
# The widest: at e^10 the logistic is flat over [0, 1] (each value gets about 1/(4 e^10 255)
# of the mass), and an unbounded exp() overflows to infinity under a large step, which turns
# the bin's log-width into log 0 and its gradient into NaN.
_MAX_LOG_SCALE = 10.0


class DiscretizedLogistic(dist.TorchDistribution):
    """A logistic distribution over the 256 pixel values k/255 of 8-bit images
    (Salimans et al. 2017, PixelCNN++): value k/255 gets the logistic's mass in its bin
    [k/255 - 1/510, k/255 + 1/510], and the two end values all the mass beyond them.

    ``log_prob`` is a log probability (summing to 1 over the 256 values), computed stably as
    log(sigma(a) - sigma(b)) = log sigma(a) + log sigma(-b) + log(1 - exp(b - a)).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = eight_bit

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        upper = (value - self.loc + _HALF_BIN) / self.scale
        lower = (value - self.loc - _HALF_BIN) / self.scale
        below = F.logsigmoid(upper)  # log P(X < the bin's top): all of value 0's mass
        above = F.logsigmoid(-lower)  # log P(X > the bin's bottom): all of value 1's mass
        # The bin's width in standard units, a - b = 1 / (255 scale), taken from the scale alone:
        # far from the location, upper and lower are large and their difference rounds to 0.
        inner = below + above + torch.log(-torch.expm1(-2 * _HALF_BIN / self.scale))
        return torch.where(value < _HALF_BIN, below, torch.where(value > 1 - _HALF_BIN, above, inner))

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp_(1e-6, 1 - 1e-6)
            x = self.loc.expand(shape) + self.scale.expand(shape) * (torch.log(u) - torch.log1p(-u))
            return x.clamp(0, 1).mul(255).round().div(255)

    @property
    def mean(self):
        """The mean of the logistic clamped to [0, 1], s (softplus(mu/s) - softplus((mu-1)/s)),
        within half a grey level of the discretized mean."""
        return self.scale * (F.softplus(self.loc / self.scale) - F.softplus((self.loc - 1) / self.scale))


def _logistic_parameters(loc, log_scale):
    # Centred on grey so an untrained decoder (output near 0) starts in the middle of [0, 1].
    return 0.5 + loc, log_scale.clamp(_MIN_LOG_SCALE, _MAX_LOG_SCALE).exp()


class _EightBitLikelihood(Likelihood):
    """A likelihood over the 256 values of 8-bit pixels: probabilities, not densities."""

    discrete = True
    support = eight_bit
    support_words = "the 256 values k/255 of 8-bit pixels"
    support_hint = ("pass 8-bit images divided by 255, or use a density (GaussianLikelihood, "
                    "ContinuousBernoulliLikelihood).")


class DiscretizedLogisticLikelihood(_EightBitLikelihood):
    """Each 8-bit pixel value (each colour channel separately) from a discretized logistic
    whose location and log-scale the decoder gives (two outputs per pixel): a true
    probability of the image, so its log-likelihood converts to bits per dimension."""

    outputs_per_pixel = 2

    def forward(self, out):
        loc, log_scale = out.chunk(2, dim=-3)
        return DiscretizedLogistic(*_logistic_parameters(loc, log_scale)).to_event(IMAGE_EVENT_DIM)


class DiscretizedLogisticMixtureLikelihood(_EightBitLikelihood):
    """Each 8-bit pixel value from a mixture of ``num_components`` discretized logistics
    (PixelCNN++, NVAE), with weights, locations and log-scales from the decoder (3K outputs
    per pixel). Colour channels are modelled independently given z (PixelCNN++ also couples
    them linearly; docs/likelihoods.md)."""

    def __init__(self, num_components: int = 10):
        super().__init__()
        if num_components < 1:
            raise ValueError(f"A mixture needs at least one component, got {num_components}.")
        self.num_components = num_components
        self.outputs_per_pixel = 3 * num_components

    def forward(self, out):
        # (..., 3 K C, H, W) -> three of (..., C, H, W, K)
        logits, loc, log_scale = out.unflatten(-3, (3, self.num_components, -1)).movedim(-4, -1).unbind(-5)
        components = DiscretizedLogistic(*_logistic_parameters(loc, log_scale))
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), components).to_event(IMAGE_EVENT_DIM)


def score_pixels(distribution: dist.TorchDistribution, mask: torch.Tensor) -> dist.TorchDistribution:
    """p(x|z) that scores only the pixels where ``mask`` is True (a per-pixel mask broadcast
    against the images, ``(C, H, W)`` or ``(N, C, H, W)``): the image's log-probability is
    the sum over those pixels. ``poutine.mask`` masks whole images (the batch dimensions);
    this masks inside one. Samples still draw every pixel.
    """
    if not isinstance(distribution, dist.Independent):
        raise TypeError(f"score_pixels needs a likelihood whose image is an Independent event (pyrovae's are), "
                        f"not {type(distribution).__name__}.")
    return dist.Independent(distribution.base_dist.mask(mask), distribution.reinterpreted_batch_ndims)
