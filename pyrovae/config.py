"""The run configuration: everything needed to rebuild a model and repeat its training."""

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from pyrovae.errors import ConfigError, NamesOptions

__all__ = ["Config", "DATASETS", "OPTIMIZERS", "INITS", "STORAGES", "PRECISIONS", "option", "flags", "option_name",
           "changeable_on_resume"]

# The named data sets (pyrovae.data loads them); here so the command line can list them without torch.
DATASETS = ("mnist", "fashion-mnist", "mnist5k", "emoji")
# adam: torch's Adam; adamnormgrad: Adam on norm-1 gradients (pyrovae.train.AdamNormGrad).
OPTIMIZERS = ("adam", "adamnormgrad")
# torch: PyTorch's default initial weights; he: N(0, 2 / fan_in) (pyrovae.networks.he_init_).
INITS = ("torch", "he")
# Seeds numpy accepts: 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# Log-variance bounds beyond which a clipped Normal's scale under- or overflows float32 (exp(44) ~ 1.3e19).
MAX_LOGVAR = 40.0
# Where training keeps its images (pyrovae.train.Trainer's storage).
STORAGES = ("auto", "memory", "stream")
# The arithmetic of the networks in training steps (pyrovae.networks.compute_dtype).
PRECISIONS = ("fp32", "bf16")


def option(default, flag: str, *, help: str, kind: str, fixed: bool = True, **spec) -> Any:
    """A :class:`Config` field with what the command line makes of it: its ``flag`` and
    ``help``, and its ``kind`` of value (``int``, ``float``, ``choice`` of a registry
    ``table``, ``path``, ``flag``, or ``hidden``/``labels``/``logvar`` lists), with range and
    metavar in ``spec``. ``fixed``: it cannot change when a run resumes. The click options of
    ``pyrovae train`` are built from these (``pyrovae.cli.options.config_options``), so a new
    option is one field here; this module itself needs no click.
    """
    return field(default=default, metadata={"flag": flag, "help": help, "kind": kind, "fixed": fixed, **spec})


@dataclass
class Config:
    """Options of a training run; saved as ``config.json`` and inside every checkpoint. Each
    field's metadata says what it is on the command line (:func:`option`); the defaults are
    the library's and the command line's alike."""

    # "m2": Kingma et al.'s semi-supervised VAE with the class as a discrete latent
    model: str = option(
        "vae", "--model", kind="choice", table="MODELS",
        help="vae; categorical: a code of categorical variables (with --guide categorical --prior categorical); "
             "m2: the semi-supervised VAE with the class as a latent (Kingma et al. 2014); cvae: the conditional "
             "VAE that completes an image from its visible part (Sohn et al. 2015); hvae: two levels of latents, "
             "z2 then z1 (Tomczak & Welling 2018), each of --z-dim numbers; ladder: a top-down hierarchy of --levels "
             "spatial levels of --z-dim channels each, for colour images (NVAE/VDVAE-style residual cells).")
    # levels of latents of --model ladder, spread over the resolutions of the path, coarsest first
    levels: int = option(
        3, "--levels", kind="int", min=1,
        help="--model ladder: levels of latents, spread from the coarsest resolution (a quarter of the image's side "
             "or less) to half the image's side.")
    # size of z (categorical variables with --guide categorical); 2 lets you plot it directly
    latent_dim: int = option(
        20, "--z-dim", kind="int", min=1,
        help="Size of the latent code (categorical variables with --guide categorical).")
    # encoder widths (the decoder mirrors them), as in PyTorch's VAE example
    hidden_dims: Tuple[int, ...] = option(
        (400,), "--hidden", kind="hidden",
        help="Encoder layer widths, comma-separated; the decoder mirrors them.")
    # "gated": gated dense layers (VampPrior code); "conv": stride-2 convolutions each way
    net: str = option(
        "mlp", "--net", kind="choice", table="NETS",
        help="Encoder and decoder networks: dense layers; gated: gated dense layers (Tomczak & Welling's "
             "VampPrior setup, --activation unused); conv: stride-2 convolutions each way.")
    activation: str = option(
        "relu", "--activation", kind="choice", table="ACTIVATION_NAMES",
        help="Nonlinearity between the layers of the encoder and decoder.")
    # "he": weights from N(0, 2 / fan_in), as in the VampPrior code
    init: str = option(
        "torch", "--init", kind="choice", table="INITS",
        help="Initial weights: PyTorch's defaults; or he: every dense and convolutional layer's weights from N(0, "
             "2 / fan_in), as in Tomczak & Welling's VampPrior code.")
    # channels of the first convolution with --net conv
    conv_channels: int = option(
        32, "--conv-channels", kind="int", min=1,
        help="Channels of the first convolution with --net conv.")
    # None: follow the data, in Python as on the command line: bernoulli (binarized, comparable
    # with the literature) for the MNIST family, dlogistic for other 8-bit images, gaussian else.
    likelihood: Optional[str] = option(
        None, "--likelihood", kind="choice", table="LIKELIHOODS",
        help="p(x|z): bernoulli binarizes grey pixels; dlogistic(_mix): 8-bit pixel values, in colour too; "
             "gaussian(_learned), continuous_bernoulli: densities on [0, 1] [default: bernoulli for the MNIST "
             "family, dlogistic for other 8-bit images, gaussian for other pixel values].")
    # fixed Gaussian scale, or the initial learned one
    likelihood_scale: float = option(
        0.5, "--likelihood-scale", kind="float", min=0.0, min_open=True,
        help="Pixel standard deviation of the gaussian likelihood (initial value for gaussian_learned).")
    # logistics per pixel of dlogistic_mix (PixelCNN++ used 10)
    mixture_components: int = option(
        10, "--mixtures", kind="int", min=1,
        help="Logistics per pixel of --likelihood dlogistic_mix.")
    guide: str = option(
        "diag_normal", "--guide", kind="choice", table="GUIDES",
        help="q(z|x): diagonal Normal, low-rank-plus-diagonal Normal, inverse autoregressive flows, or relaxed "
             "categoricals (with --prior categorical).")
    # the guide's log-variance clipped to it; None: softplus scale
    logvar_range: Optional[Tuple[float, float]] = option(
        None, "--logvar-range", kind="logvar", metavar="LO,HI",
        help="A Normal guide's log-variance head clipped to [LO, HI] (the VampPrior code's: -6,2), so that q's "
             "standard deviation lies in [exp(LO/2), exp(HI/2)] [default: a softplus standard deviation].")
    # rank of the covariance factor of the lowrank guide
    rank: int = option(
        2, "--rank", kind="int", min=1,
        help="Covariance rank of the lowrank guide.")
    # inverse autoregressive flows of the iaf guide
    num_flows: int = option(
        2, "--flows", kind="int", min=1,
        help="Number of flows of the iaf guide.")
    prior: str = option(
        "standard_normal", "--prior", kind="choice", table="PRIORS",
        help="p(z): N(0, I), the VampPrior (a mixture of q at learned pseudo-inputs), or uniform categoricals.")
    # mixture components of the VampPrior (Tomczak & Welling used 500)
    num_pseudo_inputs: int = option(
        500, "--pseudo-inputs", kind="int", min=1,
        help="Mixture components of the vamp prior.")
    # Pyro's Trace_ELBO: one sample of both terms; "meanfield" uses the analytic KL
    elbo: str = option(
        "trace", "--elbo", kind="choice", table="ELBOS",
        help="trace: Pyro's Trace_ELBO; meanfield: TraceMeanField_ELBO with the analytic KL; iwae: the "
             "importance-weighted bound with --particles samples.")
    # importance samples per image of the iwae objective
    num_particles: int = option(
        5, "--particles", kind="int", min=1,
        help="Importance samples per image of --elbo iwae.")
    # values of each categorical latent (--guide/--prior categorical)
    num_categories: int = option(
        10, "--categories", kind="int", min=2,
        help="Values of each categorical latent (--guide and --prior categorical).")
    # Gumbel-softmax temperature of the first epoch ...
    temperature: float = option(
        1.0, "--temperature", kind="float", min=0.0, min_open=True,
        help="Gumbel-softmax temperature of the first epoch (categorical code).")
    # ... falling by exp(-0.2) an epoch to this
    min_temperature: float = option(
        0.5, "--min-temperature", kind="float", min=0.0, min_open=True,
        help="The temperature falls by a factor exp(-0.2) each epoch down to this.")
    # M2: labelled training images, balanced over classes; None = all
    num_labels: Optional[int] = option(
        None, "--labels", kind="labels", cli_default="all",
        help="--model m2: how many training labels it sees, balanced over classes, or 'all'.")
    # CVAE: quadrants it sees (top-left, top-right, bottom-left); the rest it completes
    visible_quadrants: int = option(
        1, "--visible-quadrants", kind="int", min=1, max=3,
        help="--model cvae: quadrants it sees (top-left, top-right, bottom-left in turn); it completes the rest.")
    # the data's classes, label i named class_names[i] (M2 takes them)
    class_names: Optional[Tuple[str, ...]] = None  # from the data, not an option
    # M2: weight of the classifier's cross-entropy per labelled image
    classifier_weight: float = option(
        50.0, "--classifier-weight", kind="float", min=0.0,
        help="--model m2: weight of the classifier's cross-entropy on labelled images.")
    # KL weight rises linearly from 0 to beta over this many epochs (Sonderby et al.)
    warmup_epochs: float = option(
        0, "--warmup", kind="float", min=0.0,
        help="Epochs over which the KL term's weight rises linearly from 0 to --beta.")
    # final KL weight; 1 is the true ELBO, > 1 a beta-VAE
    beta: float = option(
        1.0, "--beta", kind="float", min=0.0, min_open=True,
        help="Final weight of z's KL term (1: the ELBO; > 1: a beta-VAE; with --model m2, 5 makes samples follow "
             "the asked class).")
    num_epochs: int = option(
        10, "--epochs", kind="int", min=1, fixed=False, cli_default=None,
        help="Number of epochs (the new total when resuming) [default: 10, or more for a small data set: enough for "
             "320 steps].")
    batch_size: int = option(
        128, "--batch-size", kind="int", min=1,
        help="Images per optimizer step [default: 128, or for fewer than 2,048 training images 1/16 of them (at "
             "least 16)].")
    # clip the gradient's total norm to this (VDVAE: 200); None: no clipping
    grad_clip: Optional[float] = option(
        None, "--grad-clip", kind="float", min=0.0, min_open=True, fixed=False, metavar="NORM",
        help="Scale the gradient down to this total L2 norm when it is larger (VDVAE clips at 200) [default: no "
             "clipping].")
    # skip the update of a step whose gradient norm is this or more (VDVAE: 400), or not finite
    skip_grad_norm: Optional[float] = option(
        None, "--skip-grad-norm", kind="float", min=0.0, min_open=True, fixed=False, metavar="NORM",
        help="Skip the update of a step whose gradient's total norm (before --grad-clip) is at least NORM or not "
             "finite, as VDVAE does (400 there); the epoch line counts them [default: never skip].")
    # keep an exponential moving average of the weights (VDVAE: 0.9999), scored and saved as the model
    ema: Optional[float] = option(
        None, "--ema", kind="float", min=0.0, max=1.0, min_open=True, max_open=True, fixed=False, metavar="RATE",
        help="Keep an exponential moving average of the weights, each step w_avg = RATE * w_avg + (1 - RATE) * w "
             "(VDVAE: 0.9999; 0.999 for runs of a few thousand steps): the average is what the epoch lines score, "
             "what picks the best epoch, and what evaluate, sample, plot and export use; given on --resume, the "
             "average starts from the weights then [default: the weights themselves].")
    # Adam; the classic MNIST VAE setting
    lr: float = option(
        1e-3, "--lr", kind="float", min=0.0, min_open=True,
        help="Adam's learning rate.")
    # "adamnormgrad": Adam on norm-1 gradients (the VampPrior code's optimizer)
    optimizer: str = option(
        "adam", "--optimizer", kind="choice", table="OPTIMIZERS",
        help="adam; or adamnormgrad: Adam on each weight tensor's gradient divided by its norm, the optimizer of "
             "Tomczak & Welling's VampPrior code.")
    # the data set actually used (after any offline fallback); with --data, its name
    dataset: str = option(
        "mnist", "--dataset", kind="choice", table="DATASETS",
        help="A named data set (emoji: 3,786 colour 64x64 Twemoji images, fetched with npm).")
    data_dir: Optional[str] = option(
        None, "--data-dir", kind="path", directory=True,
        help="Folder holding the IDX files (or torchvision's <dir>/MNIST/raw layout); downloads (and the emoji "
             "images) go here.")
    # the user's own images: a folder or .npy/.npz file (absolute path)
    data: Optional[str] = option(
        None, "--data", kind="path", metavar="PATH",
        help="Train on your own images: a folder (read recursively; class subfolders give labels) or a .npy/.npz "
             "array (N, H, W[, C]).")
    # their test images; default a held-out fraction of data
    test_data: Optional[str] = option(
        None, "--test-data", kind="path", metavar="PATH",
        help="Test images for --data [default: a held-out --test-fraction of it].")
    # held out (with a fixed seed) when no test split is given
    test_fraction: float = option(
        0.1, "--test-fraction", kind="float", min=0.0, max=1.0, min_open=True, max_open=True,
        help="Share of --data (and of emoji) held out, with a fixed seed, as the test set.")
    # resize to NxN (shorter side scaled, centre cut); None keeps the size
    image_size: Optional[int] = option(
        None, "--image-size", kind="int", min=2, metavar="N",
        help="Resize images to NxN (shorter side scaled to N, centre cut).")
    # convert colour images to grey
    grayscale: bool = option(
        False, "--grayscale", kind="flag",
        help="Convert colour images to grey.")
    # a folder with unreadable image files: refuse it (else they are skipped, with a note)
    strict_images: bool = option(
        False, "--strict-images", kind="flag",
        help="Refuse a --data folder holding an image file that cannot be read [default: skip such files and say "
             "how many].")
    # where training keeps its images; any choice gives the same numbers
    data_storage: str = option(
        "auto", "--data-storage", kind="choice", table="STORAGES", fixed=False,
        help="Where training keeps the images: memory (on the device, one byte a pixel for 8-bit images); "
             "stream: read each batch from disk (a memory-mapped .npy or decoded folder) in a background thread; "
             "auto streams a memory-mapped set larger than a quarter of the free memory. The numbers are the "
             "same either way.")
    # the networks' arithmetic in training steps; log-probabilities and the ELBO stay float32
    precision: str = option(
        "fp32", "--precision", kind="choice", table="PRECISIONS", fixed=False,
        help="bf16: the encoder and decoder compute in bfloat16 (torch.autocast) during training, on CPU and "
             "GPU; log-probabilities and the ELBO stay float32 (docs/benchmarks.md#scale has the trade-off).")
    image_shape: Tuple[int, ...] = (1, 28, 28)  # from the data, not an option
    seed: int = option(
        0, "--seed", kind="int", min=0, max=MAX_SEED,
        help="Seed of the initial weights, data order and noise: the same seed gives the same run.")
    # > 1: the last N end-of-epoch checkpoints kept in checkpoints/
    keep_checkpoints: int = option(
        1, "--keep-checkpoints", kind="int", min=1,
        help="Keep the last N end-of-epoch checkpoints in RUN/checkpoints (evaluate --checkpoint EPOCH reads "
             "them); the newest is also checkpoint.pt.")
    # training images held out (seeded) to pick the best epoch; 0: none
    validation_size: int = option(
        0, "--validation-size", kind="int", min=0, metavar="N",
        help="Hold out N training images (a fixed seed) as a validation set, scored every epoch; the epoch with "
             "the best validation ELBO is kept as RUN/best.pt, which evaluate, sample and plot use.")
    # stop after this many epochs past warm-up without a better validation ELBO
    patience: Optional[int] = option(
        None, "--patience", kind="int", min=1, metavar="EPOCHS",
        help="Early stopping: end the run when the validation ELBO has not improved for this many epochs (not "
             "counting the --warmup epochs) [default: train all --epochs].")
    # with patience: how much a validation ELBO must beat the best so far by to count as better
    min_delta: float = option(
        0.0, "--min-delta", kind="float", min=0.0, metavar="NATS", fixed=False,
        help="With --patience: a validation ELBO counts as better only when it beats the best so far by more than "
             "NATS per image (the ELBOs of --ema creep up by hundredths for hundreds of epochs, which would never "
             "read as a plateau). best.pt is still the best epoch. Can change when resuming: the plateaus are "
             "then read from the run's history with the new value.")
    # with patience: times the learning rate is cut at a plateau before the run stops
    lr_drops: int = option(
        0, "--lr-drops", kind="int", min=0, metavar="N", fixed=False,
        help="With --patience: the first N times the validation ELBO stops improving, multiply the learning rate "
             "by --lr-drop-factor and go on instead of stopping. Can be raised when resuming, to go on with a run "
             "that stopped early.")
    # what each cut multiplies the learning rate by
    lr_drop_factor: float = option(
        0.1, "--lr-drop-factor", kind="float", min=0.0, max=1.0, min_open=True, max_open=True, metavar="F",
        help="What each of the --lr-drops multiplies the learning rate by.")

    def __post_init__(self):
        _check_types(self)
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if self.logvar_range is not None:
            self.logvar_range = tuple(float(v) for v in self.logvar_range)
        if self.class_names is not None:
            self.class_names = tuple(str(name) for name in self.class_names)
        if self.model == "vae" and self.guide == "categorical":
            # The categorical VAE is a model family; its older spelling, a plain VAE with a
            # categorical guide (and prior), still means it, in old runs' configs too.
            self.model = "categorical"

    def validate(self) -> "Config":
        """Raise :class:`ConfigError` with one sentence for the first impossible value. The
        rules of a model family (``--model``) are its own: :func:`pyrovae.registry.validate`
        checks both."""
        checks = [
            (self.latent_dim >= 1, f"{{latent_dim}} must be at least 1, got {self.latent_dim}."),
            (len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1,
             f"{{hidden_dims}} needs one or more positive layer widths, got {self.hidden_dims}."),
            (0 < self.test_fraction < 1, f"{{test_fraction}} must be between 0 and 1, got {self.test_fraction}."),
            (self.image_size is None or self.image_size >= 2,
             f"{{image_size}} must be at least 2, got {self.image_size}."),
            (self.num_epochs >= 1, f"{{num_epochs}} must be at least 1, got {self.num_epochs}."),
            (self.batch_size >= 1, f"{{batch_size}} must be at least 1, got {self.batch_size}."),
            (math.isfinite(self.lr) and self.lr > 0, f"{{lr}} must be a positive number, got {self.lr}."),
            (self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip > 0),
             f"{{grad_clip}} must be a positive number, got {self.grad_clip}."),
            (self.skip_grad_norm is None or (math.isfinite(self.skip_grad_norm) and self.skip_grad_norm > 0),
             f"{{skip_grad_norm}} must be a positive number, got {self.skip_grad_norm}."),
            (self.ema is None or 0 < self.ema < 1, f"{{ema}} must be between 0 and 1, got {self.ema}."),
            (self.optimizer in OPTIMIZERS,
             f"Unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}."),
            (self.keep_checkpoints >= 1, f"{{keep_checkpoints}} must be at least 1, got {self.keep_checkpoints}."),
            (self.validation_size >= 0, f"{{validation_size}} must be zero or more, got {self.validation_size}."),
            (self.patience is None or self.patience >= 1, f"{{patience}} must be at least 1, got {self.patience}."),
            (self.patience is None or self.validation_size > 0,
             "{patience} stops on the validation ELBO; hold out images for it with {validation_size} N."),
            (math.isfinite(self.min_delta) and self.min_delta >= 0,
             f"{{min_delta}} must be zero or a positive number, got {self.min_delta}."),
            (self.min_delta == 0 or self.patience is not None,
             "{min_delta} says how much better a validation ELBO must be to reset {patience}; give {patience} too."),
            (self.lr_drops >= 0, f"{{lr_drops}} must be zero or more, got {self.lr_drops}."),
            (self.lr_drops == 0 or self.patience is not None,
             "{lr_drops} cuts the learning rate when {patience} epochs pass without a better validation ELBO; "
             "give {patience} too."),
            (0 < self.lr_drop_factor < 1, f"{{lr_drop_factor}} must be between 0 and 1, got {self.lr_drop_factor}."),
            (self.init in INITS, f"Unknown init {self.init!r}; choose one of: {', '.join(INITS)}."),
            (self.logvar_range is None or (len(self.logvar_range) == 2 and all(map(math.isfinite, self.logvar_range))
                                           and self.logvar_range[0] < self.logvar_range[1]),
             f"{{logvar_range}} needs two finite numbers LO,HI with LO < HI, got {self.logvar_range}."),
            (self.logvar_range is None or all(abs(v) <= MAX_LOGVAR for v in self.logvar_range),
             f"{{logvar_range}} bounds must lie within [-{MAX_LOGVAR:g}, {MAX_LOGVAR:g}] (a standard deviation "
             f"from 2e-9 to 5e8), got {self.logvar_range}."),
            (0 <= self.seed <= MAX_SEED, f"{{seed}} must be between 0 and {MAX_SEED}, got {self.seed}."),
            (self.logvar_range is None or self.guide in ("diag_normal", "lowrank", "iaf"),
             "{logvar_range} clips a Normal guide's log-variance; use it with {guide} diag_normal, lowrank or iaf."),
            (self.rank >= 1, f"{{rank}} must be at least 1, got {self.rank}."),
            (self.num_flows >= 1, f"{{num_flows}} must be at least 1, got {self.num_flows}."),
            (self.num_pseudo_inputs >= 1, f"{{num_pseudo_inputs}} must be at least 1, got {self.num_pseudo_inputs}."),
            (self.num_particles >= 1, f"{{num_particles}} must be at least 1, got {self.num_particles}."),
            (self.mixture_components >= 1,
             f"{{mixture_components}} must be at least 1, got {self.mixture_components}."),
            (self.levels >= 1, f"{{levels}} must be at least 1, got {self.levels}."),
            (self.conv_channels >= 1, f"{{conv_channels}} must be at least 1, got {self.conv_channels}."),
            (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0,
             f"{{warmup_epochs}} must be zero or more epochs, got {self.warmup_epochs}."),
            (math.isfinite(self.beta) and self.beta > 0, f"{{beta}} must be a positive number, got {self.beta}."),
            (not (self.prior == "vamp" and self.guide == "iaf"),
             "{prior} vamp mixes the guide's Normal posteriors; use it with {guide} diag_normal or lowrank, not iaf."),
            (math.isfinite(self.likelihood_scale) and self.likelihood_scale > 0,
             f"{{likelihood_scale}} must be a positive number, got {self.likelihood_scale}."),
            (self.num_labels is None or self.num_labels >= 1,
             f"{{num_labels}} must be at least 1, got {self.num_labels}."),
            (math.isfinite(self.classifier_weight) and self.classifier_weight >= 0,
             f"{{classifier_weight}} must be zero or more, got {self.classifier_weight}."),
            ((self.guide == "categorical") == (self.prior == "categorical"),
             "A categorical code needs both {guide} categorical and {prior} categorical."),
            (self.guide != "categorical" or self.elbo == "trace",
             "{guide} categorical trains with the relaxed Trace_ELBO; use {elbo} trace."),
            (self.num_categories >= 2, f"{{num_categories}} must be at least 2, got {self.num_categories}."),
            (math.isfinite(self.min_temperature) and 0 < self.min_temperature <= self.temperature
             and math.isfinite(self.temperature),
             f"Temperatures must satisfy 0 < {{min_temperature}} <= {{temperature}}, got "
             f"{self.min_temperature} and {self.temperature}."),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown configuration keys {', '.join(unknown)}; was this written by a newer pyrovae?")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    # The options that define the model (its shape, and what its outputs mean): a checkpoint fits
    # only a model with these.
    MODEL_FIELDS = ("model", "num_categories", "latent_dim", "hidden_dims", "net", "activation", "conv_channels",
                    "likelihood", "mixture_components", "guide", "logvar_range", "class_names", "visible_quadrants",
                    "rank", "num_flows", "prior", "num_pseudo_inputs", "image_shape", "levels")

    def model_signature(self) -> dict:
        return {name: getattr(self, name) for name in self.MODEL_FIELDS}


def _want(hint) -> str:
    """What a value of type ``hint`` is, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(_want(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_want(args[0]).replace('a ', '', 1)}s"
        return f"a list of {len(args)} {_want(args[0]).replace('a ', '', 1)}s"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            type(None): "none"}.get(hint, str(hint))


def _fits(value, hint) -> bool:
    """Whether ``value`` is of type ``hint`` as a configuration means it (a bool is no number)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, type(None)):
        return isinstance(value, hint)
    return True


def _check_types(config: "Config") -> None:
    """:raises ConfigError: for the first field whose value is of the wrong type (a string for
    a number, 2.5 or true for a whole number), from a hand-written or damaged file."""
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _fits(value, hints[f.name]):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise ConfigError(f"{{{f.name}}} is {shown}, which is not {_want(hints[f.name])}.")


def flags() -> Dict[str, str]:
    """Each :class:`Config` field that is an option, and its flag (``latent_dim``: ``--z-dim``)."""
    return {f.name: f.metadata["flag"] for f in dataclasses.fields(Config) if "flag" in f.metadata}


def option_name(field_name: str) -> str:
    """The name click gives the option of a field (``latent_dim``: ``z_dim``)."""
    return flags()[field_name].lstrip("-").replace("-", "_")


def changeable_on_resume() -> Tuple[str, ...]:
    """The :class:`Config` fields whose option may take a new value when a run resumes (those
    not marked ``fixed``: epochs, gradient clipping and skipping, precision, storage, ...)."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("fixed") is False)


NamesOptions.fields = {f.name: f.metadata.get("flag") for f in dataclasses.fields(Config)}
