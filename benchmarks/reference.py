"""A plain-PyTorch VAE to measure pyrovae against: no Pyro, nothing shared with pyrovae's model.

The architecture and training follow PyTorch's own ``examples/vae/main.py``: a 784-400-20
MLP encoder with ``fc21``/``fc22`` heads, a 20-400-784 decoder, ReLU, a Bernoulli likelihood
through ``binary_cross_entropy_with_logits`` summed over pixels, the closed-form Gaussian
KL, and Adam at 1e-3. Unlike that example, pixels are binarized (dynamically for training)
so that the loss is a true negative log-likelihood, and the log-variance head is read as
``softplus`` standard deviation like pyrovae's guide, so both models have one parametrisation.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


class ReferenceVAE(nn.Module):
    def __init__(self, latent_dim=20, hidden=400, pixels=784, min_scale=1e-3):
        super().__init__()
        self.fc1 = nn.Linear(pixels, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, pixels)
        self.min_scale = min_scale

    def encode(self, x):
        h = F.relu(self.fc1(x.flatten(1)))
        return self.fc21(h), F.softplus(self.fc22(h)) + self.min_scale

    def decode(self, z):
        return self.fc4(F.relu(self.fc3(z)))  # logits

    def forward(self, x):
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn_like(loc)  # reparameterization: the noise times the standard deviation
        return self.decode(z), loc, scale


def negative_elbo(logits, x, loc, scale):
    """Summed over pixels and latent dimensions, summed over the batch."""
    reconstruction = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum")
    kl = 0.5 * torch.sum(loc.pow(2) + scale.pow(2) - 1 - 2 * torch.log(scale))
    return reconstruction + kl


def binarized_negative_elbo(model, images):
    """The MLP's objective on a batch of grey images, binarized afresh."""
    x = torch.bernoulli(images)
    logits, loc, scale = model(x)
    return negative_elbo(logits, x, loc, scale)


def train_epoch(model, optimizer, images, batch_size, loss=binarized_negative_elbo):
    """One epoch over ``images`` (on the model's device), batches from a random permutation;
    ``loss(model, batch)`` is the batch's summed negative ELBO."""
    model.train()
    permutation = torch.randperm(len(images)).to(images.device)
    total = torch.zeros((), device=images.device)
    for index in permutation.split(batch_size):
        value = loss(model, images[index])
        optimizer.zero_grad(set_to_none=True)
        (value / len(index)).backward()
        optimizer.step()
        total += value.detach()
    return -total.item() / len(images)


@torch.no_grad()
def test_elbo(model, images, batch_size=1000):
    """Mean ELBO per image on fixed binary ``images``."""
    total = 0.0
    for x in images.split(batch_size):
        logits, loc, scale = model(x)
        total += negative_elbo(logits, x, loc, scale).item()
    return -total / len(images)


def bernoulli_log_px(model, x, z):
    """log p(x|z) of binary images under the MLP's Bernoulli, for each z (leading dimensions)."""
    logits = model.decode(z)
    return -F.binary_cross_entropy_with_logits(logits, x.flatten(1).expand_as(logits), reduction="none").sum(-1)


@torch.no_grad()
def test_log_likelihood(model, images, num_samples=1000, rows=16384, log_px=bernoulli_log_px):
    """Mean importance-sampled log p(x) with ``num_samples`` samples from q(z|x) per image,
    decoding at most about ``rows`` codes at once; ``log_px(model, x, z)`` scores the images."""
    per_chunk = max(1, rows // num_samples)
    total = 0.0
    for x in images.split(per_chunk):
        loc, scale = model.encode(x)
        z = loc + scale * torch.randn(num_samples, *loc.shape, device=x.device)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_w = log_px(model, x, z) + log_pz - log_qz
        total += (torch.logsumexp(log_w, 0) - math.log(num_samples)).sum().item()
    return total / len(images)

class ReferenceConvVAE(nn.Module):
    """A plain-PyTorch convolutional VAE for 3x64x64 images with a discretized logistic
    likelihood: the same layers as pyrovae's ``--net conv`` at 64x64 (four stride-2 4x4
    convolutions 32-64-128-256 to 4x4, a 256-unit layer, and the mirror image), written out
    by hand, with the decoder giving a location and a log-scale per pixel value."""

    def __init__(self, latent_dim=20, channels=3, hidden=256, min_scale=1e-3):
        super().__init__()
        widths = (channels, 32, 64, 128, 256)
        self.encoder = nn.Sequential(
            *[layer for a, b in zip(widths[:-1], widths[1:]) for layer in (nn.Conv2d(a, b, 4, 2, 1), nn.ReLU())],
            nn.Flatten(), nn.Linear(256 * 4 * 4, hidden), nn.ReLU())
        self.loc_head = nn.Linear(hidden, latent_dim)
        self.scale_head = nn.Linear(hidden, latent_dim)
        outs = (128, 64, 32, 2 * channels)
        decoder = [nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 256 * 4 * 4), nn.ReLU(),
                   nn.Unflatten(-1, (256, 4, 4))]
        for i, (a, b) in enumerate(zip((256,) + outs[:-1], outs)):
            decoder += [nn.ConvTranspose2d(a, b, 4, 2, 1)] + ([nn.ReLU()] if i < 3 else [])
        self.decoder = nn.Sequential(*decoder)
        self.min_scale = min_scale

    def encode(self, x):
        h = self.encoder(x)
        return self.loc_head(h), F.softplus(self.scale_head(h)) + self.min_scale

    def decode(self, z):
        """Location and scale of each pixel value's logistic."""
        out = self.decoder(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1, 64, 64)
        loc, log_scale = out.chunk(2, dim=-3)
        return 0.5 + loc, log_scale.clamp(min=-7 - math.log(2)).exp()  # PixelCNN++'s floor, per bin width


def discretized_logistic_log_prob(x, loc, scale):
    """log P(x) of 8-bit pixel values x = k/255 summed per image, the PixelCNN++ way: the
    difference of the two CDFs at the bin edges, the tails for 0 and 1, and the density at
    the bin centre times its width where the difference underflows."""
    centred = x - loc
    plus = torch.sigmoid((centred + 0.5 / 255) / scale)
    minus = torch.sigmoid((centred - 0.5 / 255) / scale)
    log_cdf_plus = (centred + 0.5 / 255) / scale - F.softplus((centred + 0.5 / 255) / scale)
    log_one_minus_cdf_minus = -F.softplus((centred - 0.5 / 255) / scale)
    mid = centred / scale
    log_pdf_mid = mid - torch.log(scale) - 2 * F.softplus(mid)
    inner = torch.where(plus - minus > 1e-5, torch.log((plus - minus).clamp(min=1e-12)),
                        log_pdf_mid - math.log(255))
    log_p = torch.where(x < 0.001, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, inner))
    return log_p.flatten(-3).sum(-1)


def conv_negative_elbo(model, x):
    """Summed over the batch; the KL term as pyrovae's Trace_ELBO estimates it (log q - log p at z)."""
    loc, scale = model.encode(x)
    z = loc + scale * torch.randn_like(loc)
    log_px = discretized_logistic_log_prob(x, *model.decode(z))
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return -(log_px - log_q + log_p).sum()


def dlogistic_log_px(model, x, z):
    """log p(x|z) of 8-bit images under the conv VAE's discretized logistic, for each z."""
    return discretized_logistic_log_prob(x, *model.decode(z))
