"""What the figures are made of: a run's test set encoded once, active units, per-dimension
KL, principal axes of the latent means, and interpolation paths."""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from torch.distributions import Normal, kl_divergence

from pyrovae.config import Config
from pyrovae.errors import ConfigError
from pyrovae.vae import VAE

__all__ = ["Latents", "RunView", "encode", "active_units", "kl_per_dimension", "principal_axes", "slerp",
           "ACTIVITY_THRESHOLD"]

# A latent dimension is active when Var_x E_q[z_u | x] exceeds this (Burda et al. 2015, IWAE).
ACTIVITY_THRESHOLD = 0.01


@dataclass
class Latents:
    """Posterior means and standard deviations of a set of images, on the CPU."""

    loc: torch.Tensor  # (N, latent_dim)
    scale: torch.Tensor  # (N, latent_dim)
    labels: torch.Tensor  # (N,)


def _diagonal_normal(q) -> Normal:
    base = getattr(q, "base_dist", q)
    if not isinstance(base, Normal):
        raise ConfigError("This analysis needs a diagonal Normal guide and prior.")
    return base


@torch.no_grad()
def encode(vae: VAE, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
           progress: Optional[Callable[[int], None]] = None) -> Latents:
    """q(z|x) of every image, kept as its mean and standard deviation."""
    locs, scales = [], []
    for x in images.split(batch_size):
        q = _diagonal_normal(vae.encode(x.to(vae.device)))
        locs.append(q.loc.cpu())
        scales.append(q.scale.expand_as(q.loc).cpu())
        if progress is not None:
            progress(len(x))
    return Latents(torch.cat(locs), torch.cat(scales), labels.cpu())


def active_units(loc: torch.Tensor, threshold: float = ACTIVITY_THRESHOLD) -> Tuple[torch.Tensor, torch.Tensor]:
    """Activity A_u = Var_x E_q[z_u | x] of each latent dimension, and which exceed ``threshold``."""
    activity = loc.var(dim=0)
    return activity, activity > threshold


def kl_per_dimension(latents: Latents, prior) -> torch.Tensor:
    """Mean over images of KL(q(z_u|x) || p(z_u)) for each dimension u, in nats."""
    p = _diagonal_normal(prior)
    q = Normal(latents.loc, latents.scale)
    return kl_divergence(q, Normal(p.loc.cpu(), p.scale.cpu())).mean(dim=0)


def principal_axes(loc: torch.Tensor, k: int = 2):
    """The mean of ``loc`` and its ``k`` leading principal directions.

    :returns: ``(mean, directions (k, D), standard deviations (k,), explained variance ratios (k,))``
    """
    mean = loc.mean(dim=0)
    _, singular, vh = torch.linalg.svd(loc - mean, full_matrices=False)
    variance = singular.pow(2) / max(1, len(loc) - 1)
    ratio = variance / variance.sum().clamp_min(1e-12)
    return mean, vh[:k], variance[:k].sqrt(), ratio[:k]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows ``a`` and ``b`` (White 2016) at fractions ``t``.

    Returns shape ``(len(a), len(t), D)``; falls back to a straight line when a and b are parallel.
    """
    t = t.view(1, -1, 1)
    a, b = a.unsqueeze(1), b.unsqueeze(1)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1).unsqueeze(-1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin.clamp_min(1e-8)
    return torch.where(sin > 1e-6, spherical, (1 - t) * a + t * b)


class RunView:
    """A trained run with its test set, loaded once for any number of figures.

    :param num_images: use only N test images, spread evenly over the test set (encoding is
        done once, lazily).
    :param progress: a factory ``progress(total, description)`` returning an object with
        ``update(n)`` and ``close()``, used while encoding the test set.
    """

    def __init__(self, run_dir, device="cpu", num_images: Optional[int] = None, progress=None):
        from pyrovae.data import load_dataset, spread_subset
        from pyrovae.run import load_run
        from pyrovae.train import EpochMetrics, prepare_test_images

        self.run_dir = Path(run_dir)
        self.config: Config
        self.config, self.vae, state = load_run(self.run_dir, device)
        self.history: List[EpochMetrics] = [EpochMetrics(**m) for m in state["history"]]
        data = load_dataset(self.config.dataset, self.config.data_dir, fallback=False)
        # Binarize the whole test set first, so a subset shows the same pixels as the full set.
        index = spread_subset(num_images, len(data.test_images))
        self.images = prepare_test_images(data.test_images, self.vae.likelihood.binary_data)[index]
        self.labels = data.test_labels[index]
        self.class_names = class_names(self.config.dataset)
        self._progress = progress

    @cached_property
    def latents(self) -> Latents:
        bar = self._progress(len(self.images), "encoding the test set") if self._progress else None
        try:
            return encode(self.vae, self.images, self.labels, progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()


def class_names(dataset: str) -> List[str]:
    if dataset == "fashion-mnist":
        from torchvision.datasets import FashionMNIST

        return list(FashionMNIST.classes)
    return [str(digit) for digit in range(10)]
