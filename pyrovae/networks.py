"""Neural networks for the encoder (image -> features) and the decoder (z -> image parameters)."""

import math
from typing import Sequence, Tuple

import torch
from torch import nn

__all__ = ["MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "ACTIVATIONS"]

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


def _mlp(sizes: Sequence[int], activation) -> nn.Sequential:
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), activation()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Flattens an image and maps it through fully connected layers to a feature vector.

    A guide puts its own output heads on top, so the encoder knows nothing of distributions.

    :param tuple image_shape: ``(channels, height, width)`` of the input.
    :param tuple hidden_dims: widths of the hidden layers; the last one is :attr:`out_features`.
    """

    def __init__(self, image_shape=(1, 28, 28), hidden_dims=(400,), activation=nn.ReLU):
        super().__init__()
        if not hidden_dims:
            raise ValueError("MLPEncoder needs at least one hidden layer.")
        self.image_shape = tuple(image_shape)
        self.hidden_dims = tuple(hidden_dims)
        self.out_features = self.hidden_dims[-1]
        self.net = _mlp((math.prod(self.image_shape),) + self.hidden_dims, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(-len(self.image_shape)))


class MLPDecoder(nn.Module):
    """Maps latent codes through fully connected layers to one unconstrained value per pixel.

    The output keeps the leading (sample and batch) dimensions of ``z`` and ends in
    ``image_shape``; a likelihood turns it into a distribution over images.

    :param int latent_dim: size of z.
    :param tuple hidden_dims: widths of the hidden layers, from z outwards.
    """

    def __init__(self, latent_dim: int, image_shape=(1, 28, 28), hidden_dims=(400,), activation=nn.ReLU):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape: Tuple[int, ...] = tuple(image_shape)
        self.hidden_dims = tuple(hidden_dims)
        self.hidden = _mlp((latent_dim,) + self.hidden_dims, activation)
        self.out = nn.Linear(self.hidden_dims[-1] if self.hidden_dims else latent_dim, math.prod(self.image_shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(z)).unflatten(-1, self.image_shape)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (28 -> 14 -> 7) and a linear layer to ``out_features``.

    :param int channels: channels of the first convolution; the second has twice as many.
    """

    def __init__(self, image_shape=(1, 28, 28), channels: int = 32, out_features: int = 256, activation=nn.ReLU):
        super().__init__()
        c, h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"ConvEncoder needs image sides divisible by 4, got {h}x{w}.")
        self.image_shape = tuple(image_shape)
        self.out_features = out_features
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 4, stride=2, padding=1), activation(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), activation(),
            nn.Flatten(), nn.Linear(2 * channels * (h // 4) * (w // 4), out_features), activation(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: -len(self.image_shape)]
        return self.net(x.reshape(-1, *self.image_shape)).reshape(*batch, self.out_features)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: a linear layer to a 7x7 map, then two stride-2
    transposed convolutions back to the image, one unconstrained value per pixel."""

    def __init__(self, latent_dim: int, image_shape=(1, 28, 28), channels: int = 32, hidden: int = 256,
                 activation=nn.ReLU):
        super().__init__()
        c, h, w = image_shape
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self.map_shape = (2 * channels, h // 4, w // 4)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), activation(),
            nn.Linear(hidden, math.prod(self.map_shape)), activation(),
            nn.Unflatten(-1, self.map_shape),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), activation(),
            nn.ConvTranspose2d(channels, c, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        return self.net(z.reshape(-1, self.latent_dim)).reshape(*batch, *self.image_shape)
