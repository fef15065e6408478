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


def train_epoch(model, optimizer, images, batch_size):
    """One epoch over ``images`` (on the model's device), batches from a random permutation."""
    model.train()
    permutation = torch.randperm(len(images)).to(images.device)
    total = torch.zeros((), device=images.device)
    for index in permutation.split(batch_size):
        x = torch.bernoulli(images[index])
        logits, loc, scale = model(x)
        loss = negative_elbo(logits, x, loc, scale)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(x)).backward()
        optimizer.step()
        total += loss.detach()
    return -total.item() / len(images)


@torch.no_grad()
def test_elbo(model, images, batch_size=1000):
    """Mean ELBO per image on fixed binary ``images``."""
    total = 0.0
    for x in images.split(batch_size):
        logits, loc, scale = model(x)
        total += negative_elbo(logits, x, loc, scale).item()
    return -total / len(images)


@torch.no_grad()
def test_log_likelihood(model, images, num_samples=1000, rows=16384):
    """Mean importance-sampled log p(x) with ``num_samples`` samples from q(z|x) per image."""
    per_chunk = max(1, rows // num_samples)
    total = 0.0
    for x in images.split(per_chunk):
        loc, scale = model.encode(x)
        z = loc + scale * torch.randn(num_samples, *loc.shape, device=x.device)
        logits = model.decode(z)
        log_px_z = -F.binary_cross_entropy_with_logits(
            logits, x.flatten(1).expand_as(logits), reduction="none"
        ).sum(-1)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_w = log_px_z + log_pz - log_qz
        total += (torch.logsumexp(log_w, 0) - math.log(num_samples)).sum().item()
    return total / len(images)
