"""Neural networks for the encoder (image -> features) and the decoder (z -> image parameters)."""

import functools
import math
from contextlib import contextmanager
from typing import Iterator, Sequence, Tuple

import torch
from torch import nn

from pyrovae.errors import ConfigError

__all__ = ["MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "GatedDense", "ACTIVATIONS", "conv_sides",
           "he_init_", "autocast_forward", "compute_dtype"]

# What --precision names, as the dtype the networks compute in (None: their parameters' own).
PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def autocast_forward(forward):
    """Decorates a network's ``forward``: while the module's ``compute_dtype`` is set (by
    :func:`compute_dtype`), it runs under :func:`torch.autocast` in that dtype and its output
    is cast back to the parameters' dtype, so that distributions, log-probabilities and the
    ELBO's sums stay in full precision."""

    @functools.wraps(forward)
    def wrapped(self, *args, **kwargs):
        dtype = getattr(self, "compute_dtype", None)
        if dtype is None:
            return forward(self, *args, **kwargs)
        parameter = next(self.parameters())
        with torch.autocast(parameter.device.type, dtype=dtype):
            out = forward(self, *args, **kwargs)
        return out.to(parameter.dtype)

    wrapped.autocasts = True
    return wrapped


@contextmanager
def compute_dtype(module: nn.Module, precision: str = "fp32") -> Iterator[None]:
    """Within this block the networks of ``module`` (those whose ``forward`` is an
    :func:`autocast_forward`) compute in ``precision`` (``fp32`` or ``bf16``)."""
    dtype = PRECISION_DTYPES[precision]
    if dtype is None:
        yield
        return
    networks = [m for m in module.modules() if getattr(type(m).forward, "autocasts", False)]
    for network in networks:
        setattr(network, "compute_dtype", dtype)  # noqa: B010 - an attribute of the instance, not a submodule
    try:
        yield
    finally:
        for network in networks:
            setattr(network, "compute_dtype", None)  # noqa: B010

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


class GatedDense(nn.Module):
    """A gated dense layer (Dauphin et al. 2017), as in Tomczak & Welling's VampPrior code:
    ``(W x + b) * sigmoid(V x + c)``, the sigmoid deciding how much of each unit passes."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


def he_init_(module: nn.Module) -> nn.Module:
    """Draw the weights of every dense and convolutional layer in ``module`` from N(0, 2 / fan_in)
    (He et al. 2015; fan_in as :func:`torch.nn.init.kaiming_normal_` counts it), as Tomczak &
    Welling's VampPrior code does, in place of PyTorch's default uniform draw, whose spread is
    sqrt(6) times smaller. Biases keep PyTorch's default. Returns ``module``."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return module


def _mlp(sizes: Sequence[int], activation, gated: bool = False) -> nn.Sequential:
    """Dense layers of these widths, each followed by ``activation``, or gated layers (no
    activation of their own, as in the VampPrior code)."""
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [GatedDense(n_in, n_out)] if gated else [nn.Linear(n_in, n_out), activation()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Flattens an image and maps it through fully connected layers to a feature vector.

    A guide puts its own output heads on top, so the encoder knows nothing of distributions.

    :param tuple image_shape: ``(channels, height, width)`` of the input.
    :param tuple hidden_dims: widths of the hidden layers; the last one is :attr:`out_features`.
    :param bool gated: :class:`GatedDense` layers instead of dense layers and ``activation``.
    """

    def __init__(self, image_shape=(1, 28, 28), hidden_dims=(400,), activation=nn.ReLU, gated: bool = False):
        super().__init__()
        if not hidden_dims:
            raise ValueError("MLPEncoder needs at least one hidden layer.")
        self.image_shape = tuple(image_shape)
        self.hidden_dims = tuple(hidden_dims)
        self.out_features = self.hidden_dims[-1]
        self.net = _mlp((math.prod(self.image_shape),) + self.hidden_dims, activation, gated)

    @autocast_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(-len(self.image_shape)))


class MLPDecoder(nn.Module):
    """Maps latent codes through fully connected layers to one unconstrained value per pixel.

    The output keeps the leading (sample and batch) dimensions of ``z`` and ends in
    ``image_shape``; a likelihood turns it into a distribution over images.

    :param int latent_dim: size of z.
    :param tuple hidden_dims: widths of the hidden layers, from z outwards.
    :param bool gated: :class:`GatedDense` layers instead of dense layers and ``activation``.
    """

    def __init__(self, latent_dim: int, image_shape=(1, 28, 28), hidden_dims=(400,), activation=nn.ReLU,
                 gated: bool = False):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape: Tuple[int, ...] = tuple(image_shape)
        self.hidden_dims = tuple(hidden_dims)
        self.hidden = _mlp((latent_dim,) + self.hidden_dims, activation, gated)
        self.out = nn.Linear(self.hidden_dims[-1] if self.hidden_dims else latent_dim, math.prod(self.image_shape))

    @autocast_forward
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(z)).unflatten(-1, self.image_shape)


def conv_sides(side: int) -> Tuple[int, ...]:
    """Feature-map sides of the stride-2 convolutions of an image side: halved (rounding
    down) while the side is at least 8, at least once; 28 -> 14 -> 7, 64 -> 32 -> 16 -> 8 -> 4."""
    if side < 2:
        raise ConfigError(f"A convolutional network ({{net}} conv) needs image sides of at least 2 pixels, got "
                          f"{side}; use {{net}} mlp, or {{image_size}} N to enlarge the images.")
    sides = [side, side // 2]
    while sides[-1] >= 8:
        sides.append(sides[-1] // 2)
    return tuple(sides)


def _conv_plan(image_shape, channels: int):
    """The sides of each level (height and width) and the channels after each convolution
    (doubling each level, at most 8x ``channels``)."""
    _, h, w = image_shape
    heights, widths = conv_sides(h), conv_sides(w)
    depth = min(len(heights), len(widths)) - 1  # both sides are halved together
    heights, widths = heights[: depth + 1], widths[: depth + 1]
    widths_out = [channels * min(2 ** i, 8) for i in range(depth)]
    return heights, widths, widths_out


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (4x4 kernels) halving the image until its sides are below 8
    (28 -> 14 -> 7; 64 -> 32 -> 16 -> 8 -> 4), then a linear layer to ``out_features``.

    :param tuple image_shape: ``(channels, height, width)``; any size of at least 2x2.
    :param int channels: channels of the first convolution; each next one doubles them (up to 8x).
    """

    def __init__(self, image_shape=(1, 28, 28), channels: int = 32, out_features: int = 256, activation=nn.ReLU):
        super().__init__()
        c = image_shape[0]
        heights, widths, conv_channels = _conv_plan(image_shape, channels)
        self.image_shape = tuple(image_shape)
        self.out_features = out_features
        layers = []
        for n_in, n_out in zip((c,) + tuple(conv_channels[:-1]), conv_channels):
            layers += [nn.Conv2d(n_in, n_out, 4, stride=2, padding=1), activation()]
        layers += [nn.Flatten(), nn.Linear(conv_channels[-1] * heights[-1] * widths[-1], out_features), activation()]
        self.net = nn.Sequential(*layers)

    @autocast_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: -len(self.image_shape)]
        return self.net(x.reshape(-1, *self.image_shape)).reshape(*batch, self.out_features)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: linear layers to the smallest feature map, then
    stride-2 transposed convolutions back to the exact image size (odd sides included), one
    unconstrained value per output channel and pixel."""

    def __init__(self, latent_dim: int, image_shape=(1, 28, 28), channels: int = 32, hidden: int = 256,
                 activation=nn.ReLU):
        super().__init__()
        c = image_shape[0]
        heights, widths, conv_channels = _conv_plan(image_shape, channels)
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self.map_shape = (conv_channels[-1], heights[-1], widths[-1])
        layers = [nn.Linear(latent_dim, hidden), activation(),
                  nn.Linear(hidden, math.prod(self.map_shape)), activation(),
                  nn.Unflatten(-1, self.map_shape)]
        outs = tuple(reversed(conv_channels[:-1])) + (c,)
        for i, (n_in, n_out) in enumerate(zip(reversed(conv_channels), outs)):
            level = len(conv_channels) - 1 - i  # from map size heights[level + 1] to heights[level]
            padding = (heights[level] - 2 * heights[level + 1], widths[level] - 2 * widths[level + 1])
            layers.append(nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1, output_padding=padding))
            if level:
                layers.append(activation())
        self.net = nn.Sequential(*layers)

    @autocast_forward
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        return self.net(z.reshape(-1, self.latent_dim)).reshape(*batch, *self.image_shape)
