"""Figures of a trained run, one function per kind, each returning a matplotlib ``Figure``.

Figures are built with matplotlib's object API (no pyplot), so importing this module
changes no global state and needs no display. Image grids are laid out with torchvision's
``make_grid``, in colour for colour images. Colours come from ``viridis``, whose lightness
rises monotonically, and classes also differ by marker, so every figure reads in greyscale.
"""

import math
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from pyrovae.analysis import ACTIVITY_THRESHOLD, RunView, active_units, describe_activity, principal_axes, slerp
from pyrovae.checkpoint import atomic_write
from pyrovae.data import spread_subset
from pyrovae.errors import ConfigError
from pyrovae.grids import GRID_PADDING

__all__ = ["PLOTS", "kinds_for", "figure_formats", "save_figure", "plot_curves", "plot_reconstructions", "plot_samples",
           "plot_evolution", "plot_latent", "plot_manifold", "plot_interpolate", "plot_kl", "plot_styles"]

DPI = 100
FONT = 12
MARKERS = "osD^vP*X<>"
PAD = GRID_PADDING


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    figure.set_facecolor("white")
    return figure


def _grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """Images in [0, 1] laid out by torchvision's make_grid: (H, W) for grey images,
    (H, W, 3) for colour ones."""
    grid = make_grid(images.detach().cpu().float(), nrow=nrow, padding=PAD, pad_value=1.0)
    return grid[0].numpy() if images.shape[-3] == 1 else grid.permute(1, 2, 0).clamp(0, 1).numpy()


def _centres(count: int, side: int) -> list:
    """Pixel centres of ``count`` consecutive tiles of ``side`` pixels in a grid."""
    return [PAD + side / 2 + k * (side + PAD) for k in range(count)]


def _show(ax, array: np.ndarray, title: str) -> None:
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=FONT)
    ax.set_xticks([])
    ax.set_yticks([])


def figure_formats() -> Dict[str, str]:
    """The file name suffixes matplotlib can write (``.png``, ``.pdf``, ``.svg``, ``.jpg``, ...),
    each with its description."""
    from matplotlib.backend_bases import FigureCanvasBase

    return {f".{suffix}": name for suffix, name in FigureCanvasBase.get_supported_filetypes().items()}


def save_figure(figure: Figure, path) -> None:
    """Write a figure, atomically, in the format its suffix names (``.png``, ``.pdf``, ``.svg``, ...).

    :raises ConfigError: for a suffix matplotlib cannot write.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in figure_formats():
        raise ConfigError(f"Cannot write a figure as {path}; use a name ending in one of "
                          f"{', '.join(sorted(figure_formats()))}.")
    atomic_write(path, lambda f: figure.savefig(f, format=suffix[1:], dpi=DPI))


def plot_curves(view: RunView) -> Figure:
    """Train and test ELBO per epoch, and the test ELBO's two terms."""
    if not view.history:
        raise ConfigError(f"Run {view.run_dir} has no finished epoch to plot yet.")
    epochs = [m.epoch for m in view.history]
    figure = _figure(14, 4.5)
    axes = figure.subplots(1, 3)
    panels = [
        ("ELBO (higher is better)", [("train ELBO", [m.train_elbo for m in view.history], "o-"),
                                     ("test ELBO", [m.test_elbo for m in view.history], "s--")]),
        ("Reconstruction term E_q[log p(x|z)]", [("test", [m.test_reconstruction for m in view.history], "s--")]),
        ("KL term KL(q(z|x) || p(z))", [("test", [m.test_kl for m in view.history], "D:")]),
    ]
    colours = ["#1f3b73", "#5fa35f"]
    for ax, (title, series) in zip(axes, panels):
        for (label, values, style), colour in zip(series, colours):
            ax.plot(epochs, values, style, color=colour, label=label, markersize=4)
        ax.set_title(title, fontsize=FONT)
        ax.set_xlabel("epoch", fontsize=FONT)
        ax.set_ylabel("nats per image", fontsize=FONT)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT - 2)
    figure.suptitle(f"Training curves of {view.run_dir.name} ({view.config.dataset})", fontsize=FONT + 2)
    return figure


def plot_reconstructions(view: RunView, count: int = 32) -> Figure:
    """Test images beside their reconstructions (the likelihood's mean at the posterior mean)."""
    images = view.images[spread_subset(count, len(view.images))]
    reconstructions = view.vae.reconstruct(images.to(view.vae.device))
    figure = _figure(11, 3.9)
    left, right = figure.subplots(1, 2)
    kind = "binarized test images" if view.vae.likelihood.binary_data else "test images"
    _show(left, _grid(images, 8), kind.capitalize())
    _show(right, _grid(reconstructions, 8), "Their reconstructions (same positions)")
    figure.suptitle("Reconstructions: mean of p(x | z) at z = E_q[z | x]", fontsize=FONT + 2)
    return figure


def _continuous_code(view: RunView, kind: str) -> None:
    if not view.vae.continuous_code:
        raise ConfigError(f"The {kind} figure walks a continuous latent space; {view.run_dir} has a categorical code "
                          "(try samples or reconstructions).")


def _unconditional(view: RunView, kind: str) -> None:
    if view.vae.num_classes:
        raise ConfigError(f"The {kind} figure decodes z alone, but {view.run_dir} is a model that also needs "
                          "a class; the styles figure shows its codes for every class.")


def plot_samples(view: RunView, count: int = 64, seed: int = 0) -> Figure:
    """Decoded prior samples (for M2, the classes in turn)."""
    # prior_codes: every level of a hierarchy (p(z2) alone would be half of an HVAE's code)
    z = view.vae.prior_codes(count) if seed is None else view.vae.fixed_latents(count, seed)
    images = view.vae.sample(count, mean=True, z=z)
    figure = _figure(7, 7.4)
    _show(figure.subplots(), _grid(images, math.ceil(math.sqrt(count))),
          f"Means of p(x | z) for {count} draws z ~ p(z)")
    return figure


def plot_evolution(view: RunView, columns: int = 10, max_rows: int = 12) -> Figure:
    """The same fixed z decoded after each saved epoch (from the samples kept in samples/*.pt)."""
    paths = sorted((view.run_dir / "samples").glob("epoch_*.pt"))
    if not paths:
        raise ConfigError(f"Run {view.run_dir} has no per-epoch samples (samples/epoch_*.pt) to show; runs "
                          "written before pyrovae kept them can be plotted with the samples figure.")
    chosen = [paths[int(i)] for i in spread_subset(max_rows, len(paths))]
    rows = []
    for path in chosen:
        try:
            pixels = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises RuntimeError, pickle and zip errors for a damaged file
            raise ConfigError(f"{path} is damaged ({type(e).__name__}); delete it to plot the other epochs.") from None
        if (not torch.is_tensor(pixels) or pixels.dtype != torch.uint8 or pixels.dim() != 4 or not len(pixels)
                or tuple(pixels.shape[1:]) != tuple(view.config.image_shape)):
            raise ConfigError(f"{path} does not hold this run's sample images; delete it to plot the other epochs.")
        rows.append(pixels[:columns].float() / 255)
    columns = min(columns, min(len(r) for r in rows))
    side = view.config.image_shape[1]
    figure = _figure(1.0 + 0.75 * columns, 0.9 + 0.75 * len(chosen))
    ax = figure.subplots()
    _show(ax, _grid(torch.cat([r[:columns] for r in rows]), columns),
          f"Samples from the same {columns} z as training goes on")
    ax.set_yticks(_centres(len(chosen), side))
    ax.set_yticklabels([f"epoch {int(p.stem.split('_')[1])}" for p in chosen], fontsize=FONT - 1)
    return figure


def _latent_axes(view: RunView):
    """2-D coordinates of every test image's latent mean, with axis names."""
    _continuous_code(view, "latent")
    loc = view.latents.loc
    if loc.shape[1] == 1:
        raise ConfigError("A 1-D latent space has no second axis to plot.")
    if loc.shape[1] == 2:
        return loc.numpy(), "z[0]", "z[1]", "Latent means of the test set"
    mean, directions, _, ratio = principal_axes(loc)
    points = ((loc - mean) @ directions.T).numpy()
    return (points, f"principal component 1 ({ratio[0]:.0%} of variance)",
            f"principal component 2 ({ratio[1]:.0%} of variance)",
            f"Latent means of the test set, projected from {loc.shape[1]} dimensions")


def plot_latent(view: RunView) -> Figure:
    """Test-set latent means coloured (and marked) by label."""
    points, xlabel, ylabel, title = _latent_axes(view)
    labels = view.latents.labels.numpy()
    figure = _figure(9.5, 7)
    ax = figure.subplots()
    classes = np.unique(labels)
    colours = [_viridis(i / max(1, len(classes) - 1)) for i in range(len(classes))]
    for i, label in enumerate(classes):
        mask = labels == label
        ax.scatter(points[mask, 0], points[mask, 1], s=7, alpha=0.6, color=colours[i],
                   marker=MARKERS[i % len(MARKERS)], label=view.class_names[label], linewidths=0)
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.set_title(title, fontsize=FONT + 1)
    ax.legend(title="label", fontsize=FONT - 2, markerscale=2.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    return figure


def _viridis(value: float):
    from matplotlib import colormaps

    return colormaps["viridis"](0.9 * value)  # the top of viridis is too pale on white


def plot_manifold(view: RunView, n: int = 15) -> Figure:
    """Images decoded over a grid of z placed at standard-normal quantiles 5%..95%."""
    _continuous_code(view, "manifold")
    _unconditional(view, "manifold")
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    a, b = torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy")  # b: top row is largest
    if view.config.latent_dim == 2:
        z = torch.stack([a, b], dim=-1).reshape(-1, 2)
        xlabel, ylabel = "z[0] (standard-normal quantiles)", "z[1]"
        title = "Latent manifold: decoded grid of z through the inverse normal CDF"
    elif view.config.latent_dim > 2:
        mean, directions, sd, _ = principal_axes(view.latents.loc)
        z = mean + (a.reshape(-1, 1) * sd[0]) * directions[0] + (b.reshape(-1, 1) * sd[1]) * directions[1]
        xlabel, ylabel = "principal direction 1 (standard deviations)", "principal direction 2"
        title = "Latent manifold: walking the two leading principal directions around the mean"
    else:
        raise ConfigError("A 1-D latent space has no manifold grid to plot.")
    images = view.vae.sample(len(z), mean=True, z=z)
    figure = _figure(9, 9.6)
    ax = figure.subplots()
    _show(ax, _grid(images, n), title)
    _, height, width = view.config.image_shape
    ticks = list(range(0, n, max(1, n // 5)))
    ax.set_xticks([_centres(n, width)[k] for k in ticks])
    ax.set_xticklabels([f"{quantiles[k]:.1f}" for k in ticks], fontsize=FONT - 2)
    ax.set_yticks([_centres(n, height)[k] for k in ticks])
    ax.set_yticklabels([f"{quantiles.flip(0)[k]:.1f}" for k in ticks], fontsize=FONT - 2)
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    return figure


def plot_interpolate(view: RunView, pairs: int = 4, steps: int = 10) -> Figure:
    """Decoded straight-line and spherical paths between the latents of pairs of test images."""
    _continuous_code(view, "interpolate")
    _unconditional(view, "interpolate")
    loc = view.latents.loc
    labels = view.latents.labels
    # Start from images spread over the test set; end at the middle image of another class.
    starts = spread_subset(pairs, len(loc))
    others = [torch.nonzero(labels != labels[i]).flatten() for i in starts]
    ends = torch.stack([o[len(o) // 2] if len(o) else (i + len(loc) // 2) % len(loc) for i, o in zip(starts, others)])
    t = torch.linspace(0, 1, steps)
    linear = loc[starts].unsqueeze(1) + t.view(1, -1, 1) * (loc[ends] - loc[starts]).unsqueeze(1)
    spherical = slerp(loc[starts], loc[ends], t)
    paths = torch.stack([linear, spherical], dim=1).reshape(-1, loc.shape[1])  # rows: pair k linear, spherical
    images = view.vae.sample(len(paths), mean=True, z=paths)
    originals = torch.stack([view.images[starts], view.images[ends]], dim=1)  # (pairs, 2, C, H, W)
    tile_inches = 10.5 / (steps + 2)  # the grids share the width; keep the figure as tall as they are
    figure = _figure(12, 1.0 + tile_inches * 2 * pairs)
    left, right = figure.subplots(1, 2, width_ratios=[2, steps])
    _show(left, _grid(originals.repeat_interleave(2, dim=0).flatten(0, 1), 2), "endpoints")
    _show(right, _grid(images, steps), f"Decoded interpolations, t = 0 .. 1 in {steps} steps")
    right.set_yticks(_centres(2 * pairs, view.config.image_shape[1]))
    right.set_yticklabels([f"pair {k // 2 + 1}, {'linear' if k % 2 == 0 else 'spherical'}" for k in range(2 * pairs)],
                          fontsize=FONT - 2)
    right.yaxis.tick_right()
    return figure


def kl_levels(view: RunView):
    """Each level of the code (:meth:`VAE.code_levels <pyrovae.vae.VAE.code_levels>`) with its
    KL per dimension and which of its units are active: ``[(name, kl, active), ...]``."""
    kl = view.vae.kl_per_dimension(view.images, view.latents)
    active = active_units(view.latents.loc)[1]
    levels, start = [], 0
    for name, size in view.vae.code_levels().items():
        size = len(kl) - start if size is None else size
        levels.append((name, kl[start:start + size], active[start:start + size]))
        start += size
    return levels


def plot_kl(view: RunView) -> Figure:
    """KL per latent dimension, with the active units (A_u > 0.01) marked: one panel a level."""
    _continuous_code(view, "kl")
    levels = kl_levels(view)
    width = sum(max(4, 0.35 * len(kl) + 1.5) for _, kl, _ in levels)
    figure = _figure(max(7, width + 1.5), 4.8 + 0.4 * (len(levels) > 1))
    axes = figure.subplots(1, len(levels), sharey=True, squeeze=False)[0]
    for ax, (name, kl, active) in zip(axes, levels):
        kl, active = kl.numpy(), active.numpy()
        dims = np.arange(len(kl))
        ax.bar(dims[active], kl[active], color="#1f3b73", label=f"active (A_u > {ACTIVITY_THRESHOLD})")
        if not active.all():
            ax.bar(dims[~active], kl[~active], color="#c8c8c8", hatch="//", edgecolor="#707070",
                   label="inactive (collapsed to the prior)")
        ax.set_xlabel(f"dimension u of {name}", fontsize=FONT)
        ax.set_xticks(dims if len(dims) <= 32 else dims[:: math.ceil(len(dims) / 32)])
        title = describe_activity(torch.from_numpy(active), float(kl.sum())).replace("; ", ";\n", 1)
        ax.set_title(f"KL per dimension of {name}: {title}" if len(levels) > 1 else
                     f"KL per latent dimension: {title}", fontsize=FONT + 1 - (len(levels) > 1))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean KL(q(z_u|x) || p(z_u)), nats", fontsize=FONT)
    axes[0].legend(fontsize=FONT - 2)
    return figure


def plot_styles(view: RunView, styles: int = 10, seed: int = 0) -> Figure:
    """M2: each row one code z ~ p(z) (a handwriting style), each column one class."""
    if not view.vae.num_classes:
        raise ConfigError(f"The styles figure needs a model with classes ({{model}} m2); {view.run_dir} has none.")
    images = view.vae.styles(view.vae.fixed_latents(styles, seed))
    classes = view.vae.num_classes
    figure = _figure(1.2 + 0.8 * classes, 1.0 + 0.8 * styles)
    ax = figure.subplots()
    _show(ax, _grid(images, classes), "One style z per row, one class per column: means of p(x | y, z)")
    ax.set_xticks(_centres(classes, view.config.image_shape[2]))
    rotation = 45 if len(view.class_names[0]) > 2 else 0
    ax.set_xticklabels(view.class_names[:classes], fontsize=FONT - 2, rotation=rotation)
    return figure


def plot_levels(view: RunView, rows: int = 6, columns: int = 8, seed: int = 0) -> Figure:
    """A hierarchy of latents: each row one draw of the upper level, each column a fresh draw
    of the lower one given it. What stays along a row is the upper level's; what changes, the
    lower's (:meth:`VAE.level_grid <pyrovae.vae.VAE.level_grid>`)."""
    images = view.vae.level_grid(rows, columns, seed)
    side = view.config.image_shape[1]
    figure = _figure(1.2 + 0.8 * columns, 1.0 + 0.8 * rows)
    ax = figure.subplots()
    _show(ax, _grid(images, columns), "One upper-level code per row; the lower level redrawn along it")
    ax.set_yticks(_centres(rows, side))
    ax.set_yticklabels([f"z2 #{r + 1}" for r in range(rows)], fontsize=FONT - 1)
    ax.set_xticks(_centres(columns, view.config.image_shape[2]))
    ax.set_xticklabels([f"z1 #{c + 1}" for c in range(columns)], fontsize=FONT - 2)
    return figure


PLOTS: Dict[str, Callable[[RunView], Figure]] = {
    "curves": plot_curves,
    "reconstructions": plot_reconstructions,
    "samples": plot_samples,
    "evolution": plot_evolution,
    "latent": plot_latent,
    "manifold": plot_manifold,
    "interpolate": plot_interpolate,
    "kl": plot_kl,
    "styles": plot_styles,
    "levels": plot_levels,
}


def kinds_for(config) -> list:
    """The figure kinds that apply to a run's model (``styles`` needs classes; the latent-space
    figures need a continuous code, and manifold and interpolate decode z without a class)."""
    from pyrovae.registry import model_family

    skip = set(model_family(config).skipped_figures)
    return [kind for kind in PLOTS if kind not in skip]
