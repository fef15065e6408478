"""The VAE: a Pyro model p(z) p(x|z) and a guide q(z|x), held together with helpers to use them."""

import itertools
import math
import weakref
from typing import Callable, ClassVar, Optional, Set, Tuple

import pyro
import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from torch import nn
from torch.distributions import kl_divergence

from pyrovae.errors import ConfigError, DataError
from pyrovae.likelihoods import Likelihood, score_pixels
from pyrovae.plates import data_plate

__all__ = ["VAE", "VAEModel", "analytic_kl"]

# Pyro's parameter store keys PyroModule parameters by the module's name, so two VAEs with
# one name would share weights whenever a Pyro optimizer drives them. Each VAE takes a name
# no live VAE of this process holds (and never one an earlier VAE held: the store may still
# hold that one's weights, which the new VAE would pick up).
_LIVE_NAMES: "weakref.WeakValueDictionary[str, nn.Module]" = weakref.WeakValueDictionary()
_USED_NAMES: Set[str] = set()
_NAME_COUNTER = itertools.count(1)


def _claim_name(module: nn.Module, name: Optional[str], prefix: str) -> str:
    if name is not None:
        if name in _LIVE_NAMES:
            raise ValueError(f"Another VAE in this process is already named {name!r}; Pyro's parameter store "
                             "would make them share weights. Choose another name.")
    else:
        name = prefix
        while name in _USED_NAMES or name in _LIVE_NAMES:
            name = f"{prefix}_{next(_NAME_COUNTER)}"
    _LIVE_NAMES[name] = module
    _USED_NAMES.add(name)
    return name


def analytic_kl(q, p) -> Optional[torch.Tensor]:
    """KL(q || p) in closed form where torch registers one, or for a low-rank Normal q
    against a diagonal Normal p (the ``lowrank`` guide and the standard-normal prior); else None.

    The low-rank case is computed here rather than registered with torch, which would change
    ``kl_divergence`` for the whole process (so ``TraceMeanField_ELBO`` still samples it).
    """
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return _lowrank_diagonal_kl(q, p)


def _lowrank_diagonal_kl(q, p) -> Optional[torch.Tensor]:
    """KL(N(m, W W^T + D) || N(a, diag s^2)) = 1/2 [tr(S^-1 C) + (a - m)^T S^-1 (a - m) - d
    + log|S| - log|C|] (docs/elbo.md, "The general multivariate case"); log|C| from q's entropy."""
    from torch.distributions import LowRankMultivariateNormal

    from pyrovae.priors import diagonal_normal

    normal = diagonal_normal(p)
    if not isinstance(q, LowRankMultivariateNormal) or normal is None:
        return None
    loc, scale = normal.loc, normal.scale
    variance = scale.pow(2)
    d = q.event_shape[0]
    trace = ((q.cov_diag + q.cov_factor.pow(2).sum(-1)) / variance).sum(-1)
    mahalanobis = ((loc - q.loc).pow(2) / variance).sum(-1)
    log_det_q = 2 * q.entropy() - d * (1 + math.log(2 * math.pi))
    return 0.5 * (trace + mahalanobis - d + 2 * scale.log().sum(-1) - log_det_q)


def check_draw(num_samples, temperature: float = 1.0) -> None:
    """:raises ConfigError: for a number of codes or a temperature that cannot be."""
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
        raise ConfigError(f"num_samples must be a whole number of images, 0 or more, not {num_samples!r}.")
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"The temperature must be a positive number, not {temperature!r}.")


def _check_latent_sizes(prior, decoder, guide) -> None:
    """Parts that declare their code size (``latent_dim``) must agree, so that a mismatch is
    one sentence here and not a shape error deep inside the first training step."""
    sizes = {}
    for part, value in (("prior", prior), ("guide", guide)):
        if isinstance(getattr(value, "latent_dim", None), int):
            sizes[part] = value.latent_dim
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"The prior draws codes of {sizes['prior']} dimensions but the guide gives "
                          f"{sizes['guide']}; build both with the same latent_dim.")
    # A categorical code reaches the decoder one-hot: latent_dim * num_categories numbers.
    code = getattr(prior, "latent_dim", None)
    if isinstance(code, int) and isinstance(getattr(decoder, "latent_dim", None), int):
        code *= getattr(prior, "num_categories", 1)
        if decoder.latent_dim != code:
            raise ConfigError(f"The decoder takes codes of {decoder.latent_dim} numbers but the prior draws {code}; "
                              "build the decoder with the prior's latent_dim.")


class VAEModel(PyroModule):
    """The generative model: z ~ prior, x ~ likelihood(decoder(z)), one plate over images.

    ``model(x)`` scores a batch of images (site ``"x"`` observed); ``model(num_images=n)``
    generates n images, so Pyro's ``Predictive`` draws fresh images from it.
    """

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: Likelihood):
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood

    def forward(self, x: Optional[torch.Tensor] = None, num_images: Optional[int] = None, *,
                size: Optional[int] = None, subsample: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:param mask: booleans broadcast against the images, True on the pixels p(x|z) scores
            (:func:`~pyrovae.likelihoods.score_pixels`); ``poutine.mask`` masks whole images.
        :returns: the images, observed or generated."""
        with data_plate(x, num_images, size=size, subsample=subsample):
            z = pyro.sample("z", self.prior())
            likelihood = self.likelihood(self.decoder(z))
            if mask is not None:
                likelihood = score_pixels(likelihood, mask)
            return pyro.sample("x", likelihood, obs=x)


class VAE(PyroModule):
    """A variational autoencoder made of four swappable parts.

    :param prior: a module whose ``forward()`` returns p(z) with event shape ``(latent_dim,)``.
    :param decoder: a module mapping z to decoder output of shape ``(..., *image_shape)``.
    :param likelihood: a :class:`~pyrovae.likelihoods.Likelihood` turning decoder output into p(x|z).
    :param guide: q(z|x): an :class:`~pyrovae.guides.AmortizedGuide`, or any Pyro guide that takes
        the model's arguments (a function using ``pyro.param``, a Pyro autoguide of ``vae.model``,
        set after building with ``vae.guide = AutoNormal(vae.model, create_plates=vae.create_plates)``).
    :param str name: the prefix of this VAE's parameters in Pyro's parameter store; default a
        name no other VAE of this process has (``vae``, ``vae_1``, ...).

    ``vae.model`` and ``vae.guide`` are what Pyro's inference algorithms take::

        vae = VAE(StandardNormalPrior(20), MLPDecoder(20), BernoulliLikelihood(),
                  DiagonalNormalGuide(MLPEncoder(), latent_dim=20))
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
        svi.step(binary_images)
    """

    # A model family is a subclass in one file, named by one line of pyrovae.registry.MODELS.
    # It says everything about itself through what follows; the trainer, the run directory,
    # the evaluation, the figures and the command line ask it and never test its name.
    name_prefix = "vae"
    # A classmethod (config, likelihood, activation) building the family, where not from parts.
    from_config: ClassVar[Optional[Callable[..., "VAE"]]] = None
    model: PyroModule  # VAEModel here; a family's own model (M2Model, CVAEModel) in others
    # figure kinds of pyrovae.plots that do not apply ("levels" needs several levels of latents)
    skipped_figures = frozenset({"styles", "levels"})
    # the sample sites whose log-densities warm-up and beta weight (the KL term)
    latent_sites: Tuple[str, ...] = ("z",)
    num_classes = 0  # classes of a family that models them (M2); 0 for none
    class_names: tuple = ()
    row_cost = 1  # decoder rows one (image, sample) pair costs in evaluation, relative to this family
    likelihood_name = "log p(x)"  # what log_marginal estimates, as evaluate prints it
    continuous_code = True  # whether the code is a point in R^d (the latent-space figures walk it)

    @classmethod
    def check_config(cls, config) -> None:
        """:raises ConfigError: for options this family cannot take, in one sentence."""
        if config.num_labels is not None:
            raise ConfigError("{num_labels} applies to a model with classes ({model} m2).")
        if config.visible_quadrants != 1:
            raise ConfigError("{visible_quadrants} applies to a conditional model ({model} cvae).")

    @classmethod
    def code_features(cls, config) -> int:
        """How many numbers a code hands the decoder, when the family builds from named parts."""
        return config.latent_dim

    @classmethod
    def code_decoder(cls, decoder: nn.Module) -> nn.Module:
        """The decoder as the family's code reaches it (the categorical VAE's reads it one-hot)."""
        return decoder

    @classmethod
    def elbo_from_config(cls, config):
        """The family's own objective for ``config``, or None for the one ``--elbo`` names."""
        return None

    @classmethod
    def options_from_data(cls, config, data) -> dict:
        """Config fields this family takes from the data it trains on (M2: its class names)."""
        return {}

    def batch_source(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """The model's arguments for the training images at positions ``index``, images first:
        a function ``index -> args`` (M2 adds the labels, and labelled images when few are known).

        :param labels: the training labels (-1 where hidden), for a family that takes them.
        """
        return lambda index: (images[index],)

    def prior_once(self):
        """p(z) built once for a whole evaluation (the VampPrior encodes its pseudo-inputs once),
        or None for a family whose prior depends on the image (a conditional VAE)."""
        return self.prior()

    def scored_values(self, image_shape) -> int:
        """How many pixel values of an image the likelihood scores (bits per dimension divide by it)."""
        return math.prod(image_shape)

    def epoch_samples(self, num: int, seed: int, test_images: torch.Tensor) -> torch.Tensor:
        """The images of a run's per-epoch samples grid: prior samples decoded from the same
        codes every epoch (``seed``), as mean images."""
        return self.sample(num, mean=True, z=self.fixed_latents(num, seed))

    def code_levels(self) -> dict:
        """The levels of the code, in order, with their numbers of dimensions (``{"z": D}`` for
        one level): the KL figure draws one panel each."""
        return {"z": getattr(self.prior, "latent_dim", None)}

    def kl_per_dimension(self, images: torch.Tensor, latents) -> torch.Tensor:
        """Mean over ``images`` of each code dimension's KL term, in nats (the levels in the
        order of :meth:`code_levels`), from their ``latents`` (:func:`pyrovae.analysis.encode`).

        :raises ConfigError: where the KL does not split by dimension (a non-diagonal q or p).
        """
        from pyrovae.priors import kl_per_dimension

        return kl_per_dimension(latents.loc, latents.scale, self.prior())

    def level_grid(self, rows: int, columns: int, seed: int) -> torch.Tensor:
        """For a family with several levels of latents: ``rows`` x ``columns`` mean images,
        each row one draw of the upper levels, each column a fresh draw of the lower ones
        given it (what each level holds; the ``levels`` figure)."""
        raise ConfigError(f"The levels figure redraws the lower levels of a hierarchy; {type(self).__name__} has "
                          "one level of latents.")

    def complete(self, x: torch.Tensor, num_samples: int = 1, mean: bool = True) -> torch.Tensor:
        """Completions of images from a visible part: only a conditional family draws them."""
        raise ConfigError(f"Completing images needs a conditional model ({{model}} cvae); this is a "
                          f"{type(self).__name__}.")

    def extra_scores(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict:
        """Scores beside the ELBO and log p(x) that this family reports on test images (floats
        in [0, 1], or stored pixels: :func:`~pyrovae.pixels.to_unit` makes floats of them), by
        name (M2: its classifier's accuracy)."""
        return {}

    @classmethod
    def training_labels(cls, config, data) -> Optional[torch.Tensor]:
        """The labels training may see (-1 where hidden), for a family with classes; checked
        before anything is written."""
        return None

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: Likelihood, guide,
                 name: Optional[str] = None):
        _check_latent_sizes(prior, decoder, guide)
        super().__init__(_claim_name(self, name, self.name_prefix))
        self.model = VAEModel(prior, decoder, likelihood)
        self.guide = guide

    # The model's "data" plate for its arguments: what a Pyro autoguide needs to follow the
    # model's subsampling, AutoNormal(vae.model, create_plates=vae.create_plates).
    create_plates = staticmethod(data_plate)

    def default_elbo(self):
        """The objective this family trains with unless told otherwise: Pyro's ``Trace_ELBO``
        (pyrovae's subclass without its two end-of-loss syncs, :class:`pyrovae.objectives.Trace_ELBO`)."""
        from pyrovae.objectives import Trace_ELBO

        return Trace_ELBO()

    @property
    def name(self) -> str:
        """The prefix of this VAE's parameter names in Pyro's parameter store."""
        return self._pyro_name

    # The parts the model holds: ``vae.decoder = other`` replaces the model's own.
    MODEL_PARTS = ("prior", "decoder", "likelihood")

    def __setattr__(self, name, value):
        if name in self.MODEL_PARTS and "model" in self._modules:
            parts = {part: getattr(self.model, part) for part in self.MODEL_PARTS}
            parts[name] = value
            _check_latent_sizes(parts["prior"], parts["decoder"], getattr(self, "guide", None))
            setattr(self.model, name, value)
            return
        if name == "guide":
            if not isinstance(value, nn.Module):  # a guide function replaces a guide module
                self._modules.pop("guide", None)
                object.__setattr__(self, name, value)
                return
            if "model" in self._modules:
                _check_latent_sizes(self.prior, self.decoder, value)
            if not isinstance(value, PyroModule):
                # A plain nn.Module guide (Pyro's tutorials write them) becomes a PyroModule in
                # place, as pyro.nn.module.to_pyro_module_ does, so that SVI finds its parameters.
                to_pyro_module_(value)
        super().__setattr__(name, value)

    def __setstate__(self, state):
        # A copy (copy.deepcopy, pickle, torch.save and torch.load) is a VAE of its own: with
        # the original's name it would share the original's tensors in Pyro's parameter store,
        # and SVI on the copy would train the original.
        super().__setstate__(state)
        old, new = self._pyro_name, _claim_name(self, None, self.name_prefix)
        for module in self.modules():
            if isinstance(module, PyroModule) and module._pyro_name.startswith(old):
                module._pyro_name = new + module._pyro_name[len(old):]

    @property
    def prior(self):
        return self.model.prior

    @property
    def decoder(self):
        return self.model.decoder

    @property
    def likelihood(self):
        return self.model.likelihood

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the parameters, which images are converted to."""
        return next(self.parameters()).dtype

    @property
    def amortized(self) -> bool:
        """Whether the guide gives q(z|x) for any image (pyrovae's guides), which evaluation needs;
        a Pyro autoguide or a per-image ``pyro.param`` guide knows only its training images."""
        return hasattr(self.guide, "distribution")

    @property
    def image_shape(self) -> Optional[tuple]:
        """``(channels, height, width)`` of the images this VAE takes, where its guide's encoder
        says (pyrovae's encoders do); None otherwise."""
        shape = getattr(getattr(self.guide, "encoder", None), "image_shape", None)
        return tuple(shape) if shape is not None else None

    def as_batch(self, x, name: str = "The images") -> torch.Tensor:
        """``x`` as a batch this VAE can encode: a float tensor ``(N, C, H, W)`` of pixels in
        [0, 1] (the likelihood's ``data_range``), moved to the VAE's device and dtype.

        :raises DataError: in one sentence saying what is wrong and how to fix it.
        """
        shape = self.image_shape
        wanted = f"(N, {', '.join(map(str, shape))})" if shape else "(N, C, H, W)"
        if not torch.is_tensor(x):
            raise DataError(f"{name} must be a torch tensor {wanted} of pixels in [0, 1], not {type(x).__name__}; "
                            "torch.from_numpy(array) converts a numpy array (then .permute(0, 3, 1, 2) if it is "
                            "channels last).")
        if not x.is_floating_point():
            hint = " divide 8-bit pixels by 255" if x.dtype == torch.uint8 else " convert them with .float()"
            raise DataError(f"{name} are a tensor of {x.dtype}; this model takes float pixels in [0, 1]:{hint}.")
        if x.dim() < 2 or (shape is not None and tuple(x.shape[1:]) != shape):
            got, hint = tuple(x.shape), ""
            if shape is not None and got == shape:
                hint = "; for one image pass x.unsqueeze(0)"
            elif shape is not None and x.dim() == 4 and got[1:] == (*shape[1:], shape[0]):
                hint = "; these are channels last: pass x.permute(0, 3, 1, 2)"
            raise DataError(f"{name} have shape {got}, but this model takes a batch {wanted}{hint}.")
        bounds = getattr(self.likelihood, "data_range", (0.0, 1.0))
        if x.numel() and bounds is not None:
            low, high = torch.stack(torch.aminmax(x.detach())).tolist()
            if math.isnan(low) or math.isnan(high):
                raise DataError(f"{name} hold NaN pixel values.")
            if not (bounds[0] <= low and high <= bounds[1]):
                hint = " (divide 8-bit values by 255)" if bounds == (0.0, 1.0) and 1 < high <= 255 and low >= 0 else ""
                raise DataError(f"{name} hold values from {low:.4g} to {high:.4g}; this model takes pixels in "
                                f"[{bounds[0]:g}, {bounds[1]:g}]{hint}.")
        parameter = next(self.parameters())
        return x.to(device=parameter.device, dtype=parameter.dtype)

    def code_shape(self) -> Optional[tuple]:
        """The shape of one code the decoder takes (``(latent_dim,)``; a categorical code's
        ``(latent_dim, num_categories)``), or None where the prior does not say."""
        size = getattr(self.prior, "latent_dim", None)
        if not isinstance(size, int):
            return None
        return (size, self.prior.num_categories) if hasattr(self.prior, "num_categories") else (size,)

    def _check_codes(self, z) -> torch.Tensor:
        """``z`` as codes the decoder takes, on its device; :class:`DataError` otherwise."""
        event = self.code_shape()
        wanted = f"(N, {', '.join(map(str, event))})" if event else "(N, latent_dim)"
        if not torch.is_tensor(z) or not z.is_floating_point():
            what = f"a tensor of {z.dtype}" if torch.is_tensor(z) else f"a {type(z).__name__}"
            raise DataError(f"Codes must be a float tensor {wanted}, not {what}.")
        if event is not None and tuple(z.shape[-len(event):]) != event:
            raise DataError(f"Codes have shape {tuple(z.shape)}, but this model's decoder takes {wanted}.")
        if z.numel() and not bool(torch.isfinite(z).all()):
            raise DataError("Codes hold NaN or infinite values; the decoder takes finite codes.")
        parameter = next(self.parameters())
        return z.to(device=parameter.device, dtype=parameter.dtype)

    def _wants_gradients(self, inputs: torch.Tensor) -> bool:
        """Whether :meth:`encode` and :meth:`decode` track gradients: in training mode, or for
        inputs that require them (a code optimized through a trained decoder). A trained model
        (``pyrovae.load`` gives one in eval mode) then returns tensors that plot as they are."""
        return torch.is_grad_enabled() and (self.training or inputs.requires_grad)

    def encode(self, x: torch.Tensor):
        """q(z|x) for a batch of images ``(N, C, H, W)``, pixels in [0, 1] (checked: one
        :class:`~pyrovae.errors.DataError` sentence when they are not). With gradients in
        training mode or for ``x`` that requires them; else without, ready to plot."""
        if not self.amortized:
            raise TypeError(f"{type(self.guide).__name__} gives no q(z|x) for new images (it is not an amortized "
                            "guide with a distribution(x) method), so images cannot be encoded or scored with it.")
        x = self.as_batch(x)
        with torch.set_grad_enabled(self._wants_gradients(x)):
            return self._encode(x)

    def _encode(self, x: torch.Tensor):
        """q(z|x) for images already checked (the evaluation's own loop)."""
        return self.guide.distribution(x)

    def decode(self, z: torch.Tensor):
        """p(x|z) for a batch of latent codes ``(N, latent_dim)`` (checked); gradients as for
        :meth:`encode`."""
        z = self._check_codes(z)
        with torch.set_grad_enabled(self._wants_gradients(z)):
            return self._decode(z)

    def _decode(self, z: torch.Tensor):
        """p(x|z) for codes already checked (the evaluation's own loop)."""
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def posterior_mean(self, x: torch.Tensor, num_samples: int = 64) -> torch.Tensor:
        """E_q[z|x]: exact where q has a closed-form mean, else a Monte Carlo average (flows)."""
        q = self.encode(x)
        try:
            return q.mean
        except NotImplementedError:
            return q.sample((num_samples,)).mean(dim=0)

    def fixed_latents(self, n: int, seed: int) -> torch.Tensor:
        """``n`` codes from the prior's shape, drawn from a private generator seeded with
        ``seed``: the same every call, and the training random stream is left untouched."""
        generator = torch.Generator().manual_seed(seed)
        if hasattr(self.prior, "fixed_sample"):
            return self.prior.fixed_sample(n, generator)
        return torch.randn(n, self.prior.latent_dim, generator=generator)

    def elbo_parts(self, x: torch.Tensor, p):
        """The reconstruction term E_q[log p(x|z)] (one sample) and KL(q(z|x) || p(z)) of each
        image: in closed form when torch knows it, else a one-sample estimate. ``p`` is
        ``self.prior()``, built once by the caller."""
        q = self._encode(x)
        z = q.sample()
        kl = analytic_kl(q, p)
        if kl is None:
            kl = q.log_prob(z) - p.log_prob(z)
        return self._decode(z).log_prob(x), kl

    def importance_terms(self, x: torch.Tensor, p):
        """What importance sampling of log p(x) needs from this family: the proposal q(z|x), the
        log joint ``log p(x, z)`` of a batch of samples, and how to reduce the per-proposal log
        p(x) to one per image (M2 sums its classes here; the identity for a single code).
        ``p`` is ``self.prior()``, built once by the caller."""
        return self._encode(x), lambda z: p.log_prob(z) + self._decode(z).log_prob(x), lambda log_px: log_px

    def log_marginal(self, x: torch.Tensor, p, num_samples: int, samples_per_chunk: int) -> torch.Tensor:
        """log p(x) of each image ~ log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), drawing
        at most ``samples_per_chunk`` samples at a time and accumulating the log-mean-exp. The
        one loop of every family (:meth:`importance_terms`)."""
        q, log_joint, reduce = self.importance_terms(x, p)
        running = torch.full(q.batch_shape, -math.inf, device=x.device)
        for start in range(0, num_samples, samples_per_chunk):
            z = q.sample((min(samples_per_chunk, num_samples - start),))
            running = torch.logaddexp(running, torch.logsumexp(log_joint(z) - q.log_prob(z), dim=0))
        return reduce(running - math.log(num_samples))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean image decoded from the posterior mean of each image's code."""
        return self.likelihood.mean(self.decoder(self.posterior_mean(x)))

    def prior_codes(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """``num_samples`` codes drawn from p(z), its spread times ``temperature``
        (:func:`~pyrovae.priors.tempered`); a family with several levels tempers each.

        :raises ConfigError: for a count or temperature that cannot be, in one sentence.
        """
        check_draw(num_samples, temperature)
        from pyrovae.priors import tempered

        return tempered(self.prior(), temperature).sample((num_samples,))

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, z: Optional[torch.Tensor] = None,
               temperature: float = 1.0) -> torch.Tensor:
        """Images decoded from prior samples (or from the given ``z``), pixels in [0, 1].

        :param bool mean: the likelihood's mean image of each code (the default: for a
            Bernoulli, each pixel's probability of being white, which reads as a picture);
            False draws the pixels from p(x|z) (binary noise for a Bernoulli).
        :param temperature: the prior's spread times this (:meth:`prior_codes`); below 1
            draws more typical, often sharper images.
        """
        z = self.prior_codes(num_samples, temperature) if z is None else self._check_codes(z)
        out = self.decoder(z.to(self.device))
        return self.likelihood.mean(out) if mean else self.likelihood.sample(out)
