"""A top-down hierarchical VAE (``--model ladder --levels L``) for images in colour or grey:
the generative path of Sønderby et al.'s ladder VAE, Kingma et al.'s bidirectional inference
(IAF-VAE), NVAE and VDVAE, with their residual cells, small enough to train on a CPU.

The generative model walks down from a learned feature map at the coarsest resolution:

    h = start;  for l = L, ..., 1:  z_l ~ p(z_l | h) = N(mu_p(h), sigma_p(h)),  h = cell(h + proj(z_l))
    x ~ p(x | out(h))    (h upsampled to the image's size through residual cells)

so p(z_l | z_>l) depends on every level above. Each z_l is a spatial latent ``(C, H/f, W/f)``
at one of the resolutions of the path (:func:`level_sides`). The guide runs the same top-down
path (its networks are the model's, shared, not copied) and corrects the prior at each level
with features of x from a bottom-up encoder at that resolution:

    q(z_l | x, z_>l) = N(mu_p + d_mu,  sigma_p * exp(d_log_sigma))

(NVAE's residual parameterisation), so posterior and prior start equal and the KL of a level
is small until its correction learns something. Scales are bounded (log-scales soft-clamped
to [-5, 5] as NVAE does, so no level's variance can under- or overflow). Each level is one
Pyro sample site, ``"zL"`` down to ``"z1"``; the KL warm-up and ``--beta`` weight every one.

For evaluation and the figures the levels are one flat code (each level flattened, the top
first), :class:`LadderCode`; ``evaluate`` scores log p(x) by importance sampling over all
levels with one top-down pass per sample (:meth:`Ladder.log_marginal`).
"""

import math
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, cast

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import constraints

from pyrovae.errors import ConfigError
from pyrovae.likelihoods import Likelihood, score_pixels
from pyrovae.networks import _conv_plan, autocast_forward
from pyrovae.plates import data_plate, guide_plate
from pyrovae.vae import VAE, _claim_name, check_draw

__all__ = ["Ladder", "LadderModel", "LadderGuide", "LadderCode", "TopDown", "BottomUp", "Cell", "level_sides"]

LOG_SCALE_BOUND = 5.0  # each log-scale (prior's, and posterior's correction) soft-clamped to +-5


def soft_clamp(x: torch.Tensor, bound: float = LOG_SCALE_BOUND) -> torch.Tensor:
    """``bound * tanh(x / bound)``: the identity near 0, never beyond +-bound (NVAE's soft clamp)."""
    return bound * torch.tanh(x / bound)


def level_sides(image_shape, levels: int) -> Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]:
    """The path's resolutions, coarsest first and the image's own last (those of the conv
    networks, :func:`pyrovae.networks.conv_sides`: 28 -> 14 -> 7; 64 -> 32 -> ... -> 4), and
    each level's resolution, top first: the levels are spread evenly over the resolutions below
    the image's own, from the coarsest (28x28 images, 3 levels: 7, 7, 14; 64x64, 2 levels: 4, 16)."""
    heights, widths, _ = _conv_plan(image_shape, 1)
    path = list(zip(heights, widths))[::-1]
    below = path[:-1]
    return path, [below[min(i * len(below) // levels, len(below) - 1)] for i in range(levels)]


def _per_image(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net`` on feature maps ``(..., C, H, W)`` with any leading dimensions (samples, images)."""
    lead = x.shape[:-3]
    out = net(x.reshape(-1, *x.shape[-3:]))
    return out.reshape(*lead, *out.shape[-3:])


def _join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two feature maps stacked along the channels, their leading dimensions broadcast."""
    lead = torch.broadcast_shapes(a.shape[:-3], b.shape[:-3])
    return torch.cat([a.expand(*lead, *a.shape[-3:]), b.expand(*lead, *b.shape[-3:])], dim=-3)


def _resize(h: torch.Tensor, side: Tuple[int, int]) -> torch.Tensor:
    """Feature maps ``(..., C, H, W)`` at ``side``: nearest-neighbour up, average down."""
    if tuple(h.shape[-2:]) == tuple(side):
        return h
    flat = h.reshape(-1, *h.shape[-3:])
    if side[0] > h.shape[-2]:
        flat = F.interpolate(flat, size=side, mode="nearest")
    else:
        flat = F.adaptive_avg_pool2d(flat, side)
    return flat.reshape(*h.shape[:-2], *side)


class _Net(nn.Sequential):
    """Layers in turn, computing in ``--precision`` during training (:func:`~pyrovae.networks.autocast_forward`)."""

    forward = autocast_forward(nn.Sequential.forward)


def _convs(sizes, kernels, activation) -> _Net:
    """Convolutions of these channel ``sizes`` and ``kernels`` (1 or 3), each after ``activation``."""
    layers: List[nn.Module] = []
    for n_in, n_out, k in zip(sizes[:-1], sizes[1:], kernels):
        layers += [activation(), nn.Conv2d(n_in, n_out, k, padding=k // 2)]
    return _Net(*layers)


class Cell(nn.Module):
    """VDVAE's residual cell: ``h + f(h)``, f a bottleneck of 1x1, 3x3, 3x3, 1x1 convolutions
    (each after the activation) whose last layer starts scaled by ``1 / sqrt(depth)``, so that a
    deep path starts near the identity (VDVAE's ``zero_last`` scaling)."""

    def __init__(self, width: int, depth: int = 1, activation=nn.GELU):
        super().__init__()
        middle = max(8, width // 4)
        self.f = _convs((width, middle, middle, middle, width), (1, 3, 3, 1), activation)
        with torch.no_grad():
            cast(nn.Conv2d, self.f[-1]).weight.mul_(1 / math.sqrt(depth))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.f(h)


class BottomUp(nn.Module):
    """The guide's encoder: a 3x3 convolution, then a :class:`Cell` at each resolution from the
    image's own down to the coarsest, averaging down between them; returns the features at
    every resolution ``{(H, W): (..., width, H, W)}``."""

    def __init__(self, image_shape, width: int, path: List[Tuple[int, int]], activation=nn.GELU):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.path: List[Tuple[int, int]] = [(int(h), int(w)) for h, w in path]
        self.stem = _Net(nn.Conv2d(image_shape[0], width, 3, padding=1))
        self.cells = nn.ModuleList(Cell(width, len(path), activation) for _ in path)

    def forward(self, x: torch.Tensor) -> Dict[Tuple[int, int], torch.Tensor]:
        h = _per_image(self.stem, x)
        out = {}
        for side, cell in zip(reversed(self.path), self.cells):
            h = _per_image(cell, _resize(h, side))
            out[side] = h
        return out


class Level(nn.Module):
    """One level's networks: the prior's head on the path's features h (loc, log-scale, and a
    feature residual added to h, as VDVAE's prior block), the posterior's correction from h
    and x's features, and the projection of z back into h, followed by a cell."""

    def __init__(self, width: int, channels: int, side: Tuple[int, int], depth: int, activation=nn.GELU):
        super().__init__()
        self.channels, self.side = channels, tuple(side)
        middle = max(8, width // 4)
        self.prior = _convs((width, middle, middle, 2 * channels + width), (1, 3, 1), activation)
        self.posterior = _convs((2 * width, middle, middle, 2 * channels), (1, 3, 1), activation)
        self.project = nn.Conv2d(channels, width, 1)
        self.cell = Cell(width, depth, activation)
        with torch.no_grad():  # corrections and residuals start at zero: q = p, and h passes unchanged
            for layer in (cast(nn.Conv2d, self.prior[-1]), cast(nn.Conv2d, self.posterior[-1])):
                layer.weight.mul_(0.1)
                cast(torch.Tensor, layer.bias).zero_()
            self.project.weight.mul_(1 / math.sqrt(depth))

    @property
    def size(self) -> int:
        return self.channels * self.side[0] * self.side[1]

    def prior_of(self, h: torch.Tensor):
        """``(loc, log_scale, h)``: p(z | h) and h with the prior block's residual added."""
        out = _per_image(self.prior, h)
        loc, log_scale, residual = out.split([self.channels, self.channels, out.shape[-3] - 2 * self.channels], -3)
        return loc, soft_clamp(log_scale), h + residual

    def posterior_of(self, h: torch.Tensor, features: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor):
        """q(z | x, h)'s ``(loc, log_scale)``: the prior's, corrected."""
        d_loc, d_log_scale = _per_image(self.posterior, _join(h, features)).split(self.channels, -3)
        return loc + d_loc, log_scale + soft_clamp(d_log_scale)

    def absorb(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return _per_image(self.cell, h + _per_image(self.project, z))


def _normal(loc: torch.Tensor, log_scale: torch.Tensor) -> dist.TorchDistribution:
    # Unvalidated: the scale is an exp, so positive; checking would read every level's values
    # back to the host (a sync on a GPU) each time evaluation builds one.
    return dist.Normal(loc, log_scale.exp(), validate_args=False).to_event(3)


class _Passed(NamedTuple):
    """One level of a top-down pass: its prior p(z | h) and the prior's log-scale, the path's
    state where the prior was read (``middle``), the code, the code's version counter when the
    pass used it, and the state after the code was absorbed."""

    prior: dist.TorchDistribution
    log_scale: torch.Tensor
    middle: torch.Tensor
    code: torch.Tensor
    version: int
    after: torch.Tensor

    def drew(self, z: torch.Tensor) -> bool:
        """Whether ``z`` is this pass's code, the same tensor, unchanged since (an inference
        tensor, of torch.inference_mode, keeps no version: never taken as unchanged)."""
        return z is self.code and not z.is_inference() and z._version == self.version


# choose(level index, p(z_l | h), h) -> z_l: where a pass gets each level's code.
Choose = Callable[[int, dist.TorchDistribution, torch.Tensor], torch.Tensor]


class TopDown(nn.Module):
    """The generative path (the decoder): from a learned map at the coarsest resolution,
    through every resolution up to the image's, each level's prior, code and cell on the way,
    then a cell and a 1x1 convolution to the likelihood's parameters.

    ``top_down(code)`` decodes flat codes ``(..., code_dim)`` (:class:`LadderCode`);
    :meth:`descend` is the pass itself, which the model, the guide and evaluation share.
    """

    _handed: Optional[Tuple[tuple, List[_Passed]]] = None  # the guide's last pass (hand_over)

    def __init__(self, image_shape, output_shape, width: int, channels: int, levels: int, activation=nn.GELU):
        super().__init__()
        self.image_shape, self.output_shape = tuple(image_shape), tuple(output_shape)
        self.path, sides = level_sides(image_shape, levels)
        depth = len(self.path) + levels
        self.start = nn.Parameter(torch.zeros(width, *self.path[0]))
        self.levels = nn.ModuleList(Level(width, channels, side, depth, activation) for side in sides)
        self.cells = nn.ModuleList(Cell(width, depth, activation) for _ in self.path[1:])
        self.out = _convs((width, output_shape[0]), (1,), activation)
        self.sizes: List[int] = [level.size for level in self._levels()]

    @property
    def latent_dim(self) -> int:
        """Numbers in a flat code, every level."""
        return sum(self.sizes)

    def shapes(self) -> List[Tuple[int, int, int]]:
        """Each level's code shape ``(C, H, W)``, top first."""
        return [(level.channels, level.side[0], level.side[1]) for level in self._levels()]

    def _levels(self) -> List[Level]:
        return [cast(Level, level) for level in self.levels]

    def descend(self, choose: Optional[Choose], features: Optional[Dict] = None, output: bool = True,
                on_posterior: Optional[Callable] = None, record: Optional[List["_Passed"]] = None,
                handoff: Optional[List["_Passed"]] = None) -> Optional[torch.Tensor]:
        """One top-down pass: at each level, p(z | h) (and, given x's ``features``, q(z | x, h),
        handed to ``on_posterior(i, q, p)``, whose return value is the level's code); else
        ``choose(i, p, h)`` gives it. Returns the likelihood's parameters (``output``) or None.

        ``record`` (a list) receives each level's prior, states and code. ``handoff``, such a
        record of an earlier pass (:meth:`take_over`), stands in for the path as long as this
        pass's codes are the very tensors that pass drew: a level's prior depends only on the
        weights and the codes above it, so what was computed for them is reused, not recomputed.
        """
        h: torch.Tensor = self.start
        levels, index = self._levels(), 0
        for step, side in enumerate(self.path):
            if step and handoff is None:
                h = _per_image(self.cells[step - 1], _resize(h, side))
            while index < len(levels) and levels[index].side == side:
                level = levels[index]
                if handoff is not None:
                    p, log_scale, middle = handoff[index].prior, handoff[index].log_scale, handoff[index].middle
                else:
                    loc, log_scale, middle = level.prior_of(h)
                    p = _normal(loc, log_scale)
                if features is not None and on_posterior is not None:
                    q_loc, q_log_scale = level.posterior_of(middle, features[side], p.base_dist.loc, log_scale)
                    z = on_posterior(index, _normal(q_loc, q_log_scale), p)
                else:
                    assert choose is not None, "descend needs choose, or features and on_posterior"
                    z = choose(index, p, middle)
                if handoff is not None and handoff[index].drew(z):
                    h = handoff[index].after
                else:
                    handoff = None  # from here on, this pass's own codes: the path is computed
                    h = level.absorb(middle, z)
                if record is not None:
                    record.append(_Passed(p, log_scale, middle, z, -1 if z.is_inference() else z._version, h))
                index += 1
            if index == len(levels):
                handoff = None
        if not output:
            return None
        lead = h.shape[:-3]
        out = _per_image(self.out, h)
        return out.reshape(*lead, *self.output_shape)

    def _context(self) -> tuple:
        """What a pass depends on besides its codes: every weight (its storage, and its version
        counter, which each in-place update such as an optimizer's step advances), grad mode,
        autocast and ``--precision``. Read on the host: no device synchronisation."""
        return (torch.is_grad_enabled(), torch.is_autocast_enabled(self.start.device.type),
                getattr(self.out, "compute_dtype", None), tuple((w.data_ptr(), w._version) for w in self.parameters()))

    def hand_over(self, record: List[_Passed]) -> None:
        """Keep a guide's pass for the model's pass that scores its codes (:meth:`take_over`)."""
        self._handed = (self._context(), record)

    def take_over(self) -> Optional[List[_Passed]]:
        """The pass kept by :meth:`hand_over`, given out once, and only if nothing it depends on
        has changed since; else None (the model then computes its own path)."""
        handed, self._handed = self._handed, None
        if handed is None or handed[0] != self._context():
            return None
        return handed[1]

    def __getstate__(self):
        """A copy or a pickle leaves the kept pass behind (its tensors belong to one step's graph)."""
        state = super().__getstate__()
        state.pop("_handed", None)
        return state

    def split(self, code: torch.Tensor) -> List[torch.Tensor]:
        """A flat code ``(..., code_dim)`` as each level's ``(..., C, H, W)``, top first."""
        return [part.unflatten(-1, shape) for part, shape in zip(code.split(self.sizes, -1), self.shapes())]

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        levels = self.split(code)
        return cast(torch.Tensor, self.descend(lambda i, p, h: levels[i]))


def _flat(levels: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat([z.flatten(-3) for z in levels], dim=-1)


class LadderCode(dist.TorchDistribution):
    """Every level of a ladder's code as one flat vector (each level flattened, the top first):
    the prior p(z_L) ... p(z_1 | z_>1), or, given x's bottom-up ``features``, the posterior
    q(z_L | x) ... q(z_1 | x, z_>1). Sampling and ``log_prob`` each run one top-down pass.

    ``mean`` is the code of the pass that takes each level's mean (what a reconstruction
    decodes), not the exact mean of the lower levels.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, top_down: TopDown, batch_shape=torch.Size(), features: Optional[Dict] = None):
        self.top_down, self.features = top_down, features
        super().__init__(torch.Size(batch_shape), torch.Size([top_down.latent_dim]), validate_args=False)

    def _pass(self, pick, sample_shape=torch.Size()):
        """A top-down pass where ``pick(i, d)`` gives level i's code from its distribution ``d``
        (the posterior's given features); returns the codes and the summed log-densities
        ``(log q or log p, log p)``."""
        codes, log_q, log_p = [], 0.0, 0.0
        shape = torch.Size(sample_shape) + self.batch_shape

        def expand(d):
            return d.expand(shape) if d.batch_shape != shape else d

        def on_level(i, d, p):
            nonlocal log_q, log_p
            d, p = expand(d), expand(p)
            z = pick(i, d)
            codes.append(z)
            log_q, log_p = log_q + d.log_prob(z), log_p + p.log_prob(z)
            return z

        if self.features is not None:
            self.top_down.descend(None, self.features, output=False, on_posterior=on_level)
        else:
            self.top_down.descend(lambda i, p, h: on_level(i, p, p), output=False)
        return _flat(codes), log_q, log_p

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self._pass(lambda i, d: d.rsample(), sample_shape)[0]

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        levels = self.top_down.split(value)
        return self._pass(lambda i, d: levels[i], value.shape[: value.dim() - 1 - len(self.batch_shape)])[1]

    @property
    def mean(self) -> torch.Tensor:
        return self._pass(lambda i, d: d.base_dist.loc)[0]


class LadderModel(PyroModule):
    """``z_L ~ p(z_L | start)``, ..., ``z_1 ~ p(z_1 | h)``, ``x ~ likelihood(out(h))``, one plate
    over images; ``model(num_images=n)`` generates images, as :class:`~pyrovae.vae.VAEModel`."""

    def __init__(self, top_down: TopDown, likelihood: Likelihood):
        super().__init__()
        self.decoder = top_down
        self.likelihood = likelihood
        self.prior = _LadderPrior(top_down)
        self.sites = tuple(f"z{i}" for i in range(len(top_down.levels), 0, -1))

    def forward(self, x: Optional[torch.Tensor] = None, num_images: Optional[int] = None, *,
                size: Optional[int] = None, subsample: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        plate = data_plate(x, num_images, size=size, subsample=subsample)
        with plate:
            n = plate.subsample_size

            def choose(i, p, h):
                return pyro.sample(self.sites[i], p.expand(torch.Size([n])) if p.batch_shape == () else p)

            # Under the guide's codes (SVI, Predictive), the guide's pass already computed each
            # level's prior: take it over rather than run the path again (TopDown.take_over).
            out = self.decoder.descend(choose, handoff=self.decoder.take_over())
            likelihood = self.likelihood(out)
            if mask is not None:
                likelihood = score_pixels(likelihood, mask)
            return pyro.sample("x", likelihood, obs=x)


class _LadderPrior(nn.Module):
    """``prior()`` is the model's p over the flat code (:class:`LadderCode`); the top-down path
    is the model's decoder, referred to here, not registered twice."""

    _top_down: TopDown

    def __init__(self, top_down: TopDown):
        super().__init__()
        object.__setattr__(self, "_top_down", top_down)

    @property
    def latent_dim(self) -> int:
        return self._top_down.latent_dim

    def forward(self) -> LadderCode:
        return LadderCode(self._top_down)


class LadderGuide(PyroModule):
    """q(z_L | x) ... q(z_1 | x, z_>1): x's bottom-up features, then the model's own top-down
    path with each level's prior corrected by them. The path is the model's, referred to (one
    set of weights, registered once, as the model's decoder)."""

    _top_down: TopDown

    def __init__(self, encoder: BottomUp, top_down: TopDown, sites: Tuple[str, ...]):
        super().__init__()
        self.encoder = encoder
        object.__setattr__(self, "_top_down", top_down)
        self.sites = sites
        self.latent_dim = top_down.latent_dim

    def distribution(self, x: torch.Tensor) -> LadderCode:
        """q over the flat code of every level."""
        return LadderCode(self._top_down, x.shape[:-3], self.encoder(x))

    def forward(self, x: torch.Tensor, num_images: Optional[int] = None, *, size: Optional[int] = None,
                subsample: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None) -> None:
        with guide_plate(x, num_images, size=size, subsample=subsample):
            record: List[_Passed] = []
            self._top_down.descend(None, self.encoder(x), output=False, record=record,
                                   on_posterior=lambda i, q, p: pyro.sample(self.sites[i], q))
            self._top_down.hand_over(record)


class Ladder(VAE):
    """A top-down hierarchical VAE of ``--levels`` spatial levels (``--model ladder``):
    :class:`LadderModel` and :class:`LadderGuide`, with the helpers of
    :class:`~pyrovae.vae.VAE` working on the flat code of every level (:class:`LadderCode`)."""

    name_prefix = "ladder"
    skipped_figures = frozenset({"styles", "manifold"})

    @classmethod
    def from_config(cls, config, likelihood: Likelihood, activation=nn.GELU) -> "Ladder":
        """``--levels`` levels of ``--z-dim`` channels each, at the resolutions of
        :func:`level_sides`; every feature map ``--conv-channels`` wide."""
        width = config.conv_channels
        output_shape = likelihood.decoder_shape(config.image_shape)
        top_down = TopDown(config.image_shape, output_shape, width, config.latent_dim, config.levels, activation)
        model = LadderModel(top_down, likelihood)
        guide = LadderGuide(BottomUp(config.image_shape, width, top_down.path, activation), top_down, model.sites)
        return cls(model, guide)

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if (config.guide != "diag_normal" or config.prior != "standard_normal" or config.elbo != "trace"
                or config.net == "gated"):
            raise ConfigError("{model} ladder has its own networks (convolutional residual cells), guide and prior and "
                              "trains with Trace_ELBO; leave {net}, {guide}, {prior} and {elbo} at their defaults.")
        level_sides(config.image_shape, config.levels)  # images too small for convolutions: one sentence

    @classmethod
    def options_from_data(cls, config, data) -> dict:
        """Its networks are convolutional whatever ``--net`` says: the config records so."""
        return {"net": "conv"}

    def __init__(self, model: LadderModel, guide: LadderGuide, name: Optional[str] = None):
        PyroModule.__init__(self, _claim_name(self, name, self.name_prefix))
        self.model = model
        self.guide = guide
        self.latent_sites = model.sites

    @property
    def row_cost(self) -> int:  # type: ignore[override]  # a class attribute of VAE, a property here
        """Evaluation's rows per (image, sample): every feature map of the path, in units of about 1,024 floats."""
        width = self.top_down.start.shape[0]
        return max(1, 3 * width * sum(h * w for h, w in self.top_down.path) // 1024)

    @property
    def top_down(self) -> TopDown:
        return self.model.decoder

    @property
    def code_dim(self) -> int:
        return self.top_down.latent_dim

    def prior_once(self) -> LadderCode:
        return LadderCode(self.top_down)

    def code_shape(self) -> tuple:
        """Every level flattened, the top first."""
        return (self.code_dim,)

    def code_levels(self) -> dict:
        return {site: size for site, size in zip(self.latent_sites, self.top_down.sizes)}

    def fixed_latents(self, n: int, seed: int) -> torch.Tensor:
        """``n`` codes drawn from the prior, level by level, with a private generator seeded with ``seed``."""
        return self._prior_pass(n, self._seeded_draw(seed))

    def _seeded_draw(self, seed: int):
        """``draw(p)``: a code from the Normal ``p`` with noise from a private generator seeded with
        ``seed`` (on the CPU, so the same on every device), leaving the global random stream alone."""
        generator = torch.Generator().manual_seed(seed)
        return lambda d: d.base_dist.loc + d.base_dist.scale * torch.randn(
            d.batch_shape + d.event_shape, generator=generator).to(self.device, self.dtype)

    @torch.no_grad()
    def _prior_pass(self, n: int, draw, keep: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """A prior pass for ``n`` images: each level from ``draw(p)``, or from ``keep`` where it
        holds a level's code (the upper levels of :meth:`level_grid`)."""
        codes = []

        def choose(i, p, h):
            z = keep[i] if keep is not None and i < len(keep) else draw(p.expand(torch.Size([n])))
            codes.append(z)
            return z

        self.top_down.descend(choose, output=False)
        return _flat(codes)

    def prior_codes(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """Codes of every level, each level's spread times ``temperature`` given the levels above."""
        check_draw(num_samples, temperature)
        return self._prior_pass(num_samples, lambda p: p.base_dist.loc + temperature * p.base_dist.scale
                                * torch.randn_like(p.base_dist.loc))

    def elbo_parts(self, x: torch.Tensor, p):
        """One posterior pass: the reconstruction term at the sampled code, and each level's KL
        in closed form given the levels above (both Normals), summed."""
        kl = torch.zeros(x.shape[:-3], device=x.device, dtype=x.dtype)

        def on_posterior(i, q, prior):
            nonlocal kl
            kl = kl + torch.distributions.kl_divergence(q, prior)
            return q.sample()

        out = self.top_down.descend(None, self.guide.encoder(x), on_posterior=on_posterior)
        return self.likelihood(out).log_prob(x), kl

    def log_marginal(self, x: torch.Tensor, p, num_samples: int, samples_per_chunk: int) -> torch.Tensor:
        """log p(x) by importance sampling over every level, as :meth:`VAE.log_marginal
        <pyrovae.vae.VAE.log_marginal>`, each sample scored in the pass that draws it."""
        features = self.guide.encoder(x)
        running = torch.full(x.shape[:-3], -math.inf, device=x.device)
        for start in range(0, num_samples, samples_per_chunk):
            k = min(samples_per_chunk, num_samples - start)
            running = torch.logaddexp(running, torch.logsumexp(self._log_weights(x, features, k), dim=0))
        return running - math.log(num_samples)

    def _log_weights(self, x: torch.Tensor, features: Dict, k: int) -> torch.Tensor:
        """log p(x, z) - log q(z | x) of ``k`` codes per image drawn from q, in one pass."""
        shape = torch.Size([k]) + x.shape[:-3]
        log_w = torch.zeros(shape, device=x.device, dtype=x.dtype)

        def on_posterior(i, q, prior):
            nonlocal log_w
            z = (q if q.batch_shape == shape else q.expand(shape)).sample()
            log_w = log_w + prior.log_prob(z) - q.log_prob(z)
            return z

        out = self.top_down.descend(None, features, on_posterior=on_posterior)
        return log_w + self.likelihood(out).log_prob(x)

    @torch.no_grad()
    def kl_per_dimension(self, images: torch.Tensor, latents=None, batch_size: int = 500) -> torch.Tensor:
        """Per number of the flat code, the mean closed-form KL(q(z_l | x, z_>l) || p(z_l | z_>l))
        at codes drawn from q (the levels above sampled): their sum is the ELBO's KL term."""
        total = torch.zeros(self.code_dim, dtype=torch.float64, device=self.device)
        for x in images.split(batch_size):
            total += self._kl_parts(x.to(self.device, self.dtype)).double().sum(0)
        return (total / len(images)).float().cpu()

    def _kl_parts(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's closed-form KL of every number of the flat code, along one posterior pass."""
        parts = []

        def on_posterior(i, q, prior):
            parts.append(torch.distributions.kl_divergence(q.base_dist, prior.base_dist).flatten(-3))
            return q.sample()

        self.top_down.descend(None, self.guide.encoder(x), output=False, on_posterior=on_posterior)
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def level_grid(self, rows: int, columns: int, seed: int) -> torch.Tensor:
        """Each row one draw of the top level (with ``seed``), each column every lower level
        drawn afresh given it: what the top level holds, and what the lower ones add."""
        top = self.fixed_latents(rows, seed).split(self.top_down.sizes, -1)[0]
        top = top.repeat_interleave(columns, 0).unflatten(-1, self.top_down.shapes()[0])
        codes = self._prior_pass(rows * columns, self._seeded_draw(seed + 1), keep=[top])
        return self.likelihood.mean(self.top_down(codes))
