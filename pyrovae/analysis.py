"""What the figures are made of: a run's test set encoded once, active units, per-dimension
KL, principal axes of the latent means, and interpolation paths."""

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import torch

from pyrovae.config import Config
from pyrovae.errors import ConfigError
from pyrovae import priors
from pyrovae.priors import diagonal_normal
from pyrovae.vae import VAE

__all__ = ["Latents", "RunView", "encode", "active_units", "describe_activity", "kl_per_dimension", "principal_axes",
           "slerp", "ACTIVITY_THRESHOLD", "COLLAPSE_KL", "collapse_advice"]

# A latent dimension is active when Var_x E_q[z_u | x] exceeds this (Burda et al. 2015, IWAE).
ACTIVITY_THRESHOLD = 0.01
# Below this KL per image the code carries almost nothing: whatever z is, the decoder draws
# nearly the same image (posterior collapse). Burda's test can still call units active then,
# when their posterior means move a little (a variance of 0.02 is 0.01 nats at unit scale).
COLLAPSE_KL = 5.0
# ... and, for large images, below this many nats per pixel value: 300 emoji (3x64x64) with a
# one-level conv VAE at 19 nats (0.0015 a value) reconstruct every image as the same blob; a
# working MNIST VAE carries 0.03 nats a value, the top-down hierarchy on those emoji 0.05.
COLLAPSE_KL_PER_VALUE = 0.005


def describe_activity(active: torch.Tensor, kl_per_image: Optional[float]) -> str:
    """How much of the code is used, in words: Burda's active units, and the KL per image beside
    them (where known), with posterior collapse named when it is under :data:`COLLAPSE_KL`."""
    words = f"{int(active.sum())} of {len(active)} units active (Var_x E_q[z_u|x] > {ACTIVITY_THRESHOLD})"
    if kl_per_image is None or not math.isfinite(kl_per_image):
        return words
    words += f"; the code carries {kl_per_image:.1f} nats per image"
    if kl_per_image < COLLAPSE_KL:
        words += " (collapsed: the decoder draws nearly the same image whatever the code)"
    return words


def collapse_advice(history, steps_per_epoch: Optional[int] = None, image_shape=None,
                    hierarchical: bool = False) -> Optional[str]:
    """What to say at the end of training when the newest epoch's code carries under
    :data:`COLLAPSE_KL` nats per test image, or (for an image of ``image_shape``) under
    :data:`COLLAPSE_KL_PER_VALUE` nats per pixel value (posterior collapse), or None."""
    values = math.prod(image_shape) if image_shape is not None else 0
    limit = max(COLLAPSE_KL, COLLAPSE_KL_PER_VALUE * values)
    if not history or not math.isfinite(history[-1].test_kl) or history[-1].test_kl >= limit:
        return None
    tries = ["KL warm-up (--warmup 10)", "more epochs"]
    if steps_per_epoch is not None and steps_per_epoch < 20:
        tries.insert(0, f"a smaller --batch-size (an epoch is only {steps_per_epoch} steps)")
    if image_shape is not None and image_shape[0] > 1 and not hierarchical:
        tries.append("the top-down hierarchy for colour images (--model ladder)")
    return (f"The code carries only {history[-1].test_kl:.1f} nats per test image (under {limit:g}): the model "
            f"has learned to ignore z (posterior collapse), so its reconstructions and samples look alike. Try "
            f"{', '.join(tries[:-1])} or {tries[-1]}; docs/evaluation.md explains collapse.")


@dataclass
class Latents:
    """Posterior means of a set of images (and standard deviations for diagonal Normal
    guides, else None), on the CPU."""

    loc: torch.Tensor  # (N, latent_dim)
    scale: Optional[torch.Tensor]  # (N, latent_dim)
    labels: torch.Tensor  # (N,)


@torch.no_grad()
def encode(vae: VAE, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
           progress: Optional[Callable[[int], None]] = None) -> Latents:
    """E_q[z|x] of every image (and q's standard deviations when q is a diagonal Normal)."""
    locs, scales = [], []
    for x in images.split(batch_size):
        x = x.to(vae.device, vae.dtype)
        normal = diagonal_normal(vae.encode(x))
        # A categorical code's mean is (variables, categories) of probabilities: one unit each.
        locs.append((normal.loc if normal is not None else vae.posterior_mean(x).flatten(1)).cpu())
        scales.append(normal.scale.expand_as(normal.loc).cpu() if normal is not None else None)
        if progress is not None:
            progress(len(x))
    scale = None if any(s is None for s in scales) else torch.cat([s for s in scales if s is not None])
    return Latents(torch.cat(locs), scale, labels.cpu())


def active_units(loc: torch.Tensor, threshold: float = ACTIVITY_THRESHOLD) -> Tuple[torch.Tensor, torch.Tensor]:
    """Activity A_u = Var_x E_q[z_u | x] of each latent dimension, and which exceed ``threshold``."""
    activity = loc.var(dim=0)
    return activity, activity > threshold


def kl_per_dimension(latents: Latents, prior) -> torch.Tensor:
    """Mean over images of KL(q(z_u|x) || p(z_u)) for each dimension u, in nats.

    The KL splits into one term per dimension only when q and p are diagonal Normals.
    """
    return priors.kl_per_dimension(latents.loc, latents.scale, prior)


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
    :param progress: a factory ``progress(total, description)`` returning a context manager
        whose value has ``update(n)`` (a tqdm bar, or :func:`pyrovae.progress.progress`), used
        while encoding the test set.
    :param epoch: the checkpoint to show (:func:`~pyrovae.rundir.load_run`): ``"best"`` (the
        default, the best-validation epoch where the run has one, else the newest), ``"last"``
        or an epoch number. The training curves always cover the whole run.
    :param data_dir: where the run's named data set is now, when it has moved.
    """

    def __init__(self, run_dir, device="cpu", num_images: Optional[int] = None, progress=None,
                 epoch: Union[int, str] = "best", data_dir=None):
        from pyrovae.data import load_data, prepare_test_pixels, spread_subset
        from pyrovae.pixels import to_unit
        from pyrovae.metrics import EpochMetrics
        from pyrovae.rundir import full_history, load_run, with_data_dir

        self.run_dir = Path(run_dir)
        self.config: Config
        self.config, self.vae, state = load_run(self.run_dir, device, epoch)
        self.epoch: int = state["epoch"]  # the epoch whose model is shown
        self.history: List[EpochMetrics] = full_history(self.run_dir, state)
        self.config = with_data_dir(self.config, data_dir, self.run_dir)
        data = load_data(self.config, fallback=False)
        if data.image_shape != self.config.image_shape:
            raise ConfigError(f"The images of {data.name} now have shape {data.image_shape}, but run {self.run_dir} "
                              f"was trained on {self.config.image_shape}; have the files changed?")
        # Binarize the whole test set first, so a subset shows the same pixels as the full set.
        index = spread_subset(num_images, len(data.test_pixels))
        pixels = prepare_test_pixels(data.test_pixels, self.vae.likelihood.binary_data)[index]
        self.images = to_unit(pixels, self.vae.dtype)
        self.labels = data.test_labels[index]
        self.class_names = list(self.config.class_names or data.classes
                                or [str(label) for label in range(int(data.test_labels.max()) + 1)])
        self._progress = progress

    @cached_property
    def latents(self) -> Latents:
        if self._progress is None:
            return encode(self.vae, self.images, self.labels)
        with self._progress(len(self.images), "encoding the test set") as bar:
            return encode(self.vae, self.images, self.labels, progress=bar.update)

