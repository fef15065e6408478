"""The run configuration: everything needed to rebuild a model and repeat its training."""

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Optional, Tuple

from pyrovae.errors import ConfigError

__all__ = ["Config", "DATASETS", "OPTIMIZERS", "INITS"]

# The named data sets (pyrovae.data loads them); here so the command line can list them without torch.
DATASETS = ("mnist", "fashion-mnist", "mnist5k", "emoji")
# adam: torch's Adam; adamnormgrad: Adam on norm-1 gradients (pyrovae.train.AdamNormGrad).
OPTIMIZERS = ("adam", "adamnormgrad")
# torch: PyTorch's default initial weights; he: N(0, 2 / fan_in) (pyrovae.networks.he_init_).
INITS = ("torch", "he")


@dataclass
class Config:
    """Options of a training run; saved as ``config.json`` and inside every checkpoint."""

    model: str = "vae"  # "m2": Kingma et al.'s semi-supervised VAE with the class as a discrete latent
    latent_dim: int = 20  # size of z (categorical variables with --guide categorical); 2 lets you plot it directly
    hidden_dims: Tuple[int, ...] = (400,)  # encoder widths (the decoder mirrors them), as in PyTorch's VAE example
    net: str = "mlp"  # "gated": gated dense layers (VampPrior code); "conv": stride-2 convolutions each way
    activation: str = "relu"
    init: str = "torch"  # "he": weights from N(0, 2 / fan_in), as in the VampPrior code
    conv_channels: int = 32  # channels of the first convolution with --net conv
    # None: follow the data, in Python as on the command line: bernoulli (binarized, comparable
    # with the literature) for the MNIST family, dlogistic for other 8-bit images, gaussian else.
    likelihood: Optional[str] = None
    likelihood_scale: float = 0.5  # fixed Gaussian scale, or the initial learned one
    mixture_components: int = 10  # logistics per pixel of dlogistic_mix (PixelCNN++ used 10)
    guide: str = "diag_normal"
    logvar_range: Optional[Tuple[float, float]] = None  # the guide's log-variance clipped to it; None: softplus scale
    rank: int = 2  # rank of the covariance factor of the lowrank guide
    num_flows: int = 2  # inverse autoregressive flows of the iaf guide
    prior: str = "standard_normal"
    num_pseudo_inputs: int = 500  # mixture components of the VampPrior (Tomczak & Welling used 500)
    elbo: str = "trace"  # Pyro's Trace_ELBO: one sample of both terms; "meanfield" uses the analytic KL
    num_particles: int = 5  # importance samples per image of the iwae objective
    num_categories: int = 10  # values of each categorical latent (--guide/--prior categorical)
    temperature: float = 1.0  # Gumbel-softmax temperature of the first epoch ...
    min_temperature: float = 0.5  # ... falling by exp(-0.2) an epoch to this
    num_labels: Optional[int] = None  # M2: labelled training images, balanced over classes; None = all
    visible_quadrants: int = 1  # CVAE: quadrants it sees (top-left, top-right, bottom-left); the rest it completes
    class_names: Optional[Tuple[str, ...]] = None  # the data's classes, label i named class_names[i] (M2 takes them)
    classifier_weight: float = 50.0  # M2: weight of the classifier's cross-entropy per labelled image
    warmup_epochs: float = 0  # KL weight rises linearly from 0 to beta over this many epochs (Sonderby et al.)
    beta: float = 1.0  # final KL weight; 1 is the true ELBO, > 1 a beta-VAE
    num_epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # Adam; the classic MNIST VAE setting
    optimizer: str = "adam"  # "adamnormgrad": Adam on norm-1 gradients (the VampPrior code's optimizer)
    dataset: str = "mnist"  # the data set actually used (after any offline fallback); with --data, its name
    data_dir: Optional[str] = None
    data: Optional[str] = None  # the user's own images: a folder or .npy/.npz file (absolute path)
    test_data: Optional[str] = None  # their test images; default a held-out fraction of data
    test_fraction: float = 0.1  # held out (with a fixed seed) when no test split is given
    image_size: Optional[int] = None  # resize to NxN (shorter side scaled, centre cut); None keeps the size
    grayscale: bool = False  # convert colour images to grey
    image_shape: Tuple[int, ...] = (1, 28, 28)
    seed: int = 0
    keep_checkpoints: int = 1  # > 1: the last N end-of-epoch checkpoints kept in checkpoints/
    validation_size: int = 0  # training images held out (seeded) to pick the best epoch; 0: none
    patience: Optional[int] = None  # stop after this many epochs past warm-up without a better validation ELBO
    lr_drops: int = 0  # with patience: times the learning rate is cut at a plateau before the run stops
    lr_drop_factor: float = 0.1  # what each cut multiplies the learning rate by

    def __post_init__(self):
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if self.logvar_range is not None:
            self.logvar_range = tuple(float(v) for v in self.logvar_range)
        if self.class_names is not None:
            self.class_names = tuple(str(name) for name in self.class_names)

    def validate(self) -> "Config":
        """Raise :class:`ConfigError` with one sentence for the first impossible value. The
        rules of a model family (``--model``) are its own: :func:`pyrovae.registry.validate`
        checks both."""
        checks = [
            (self.latent_dim >= 1, f"--z-dim must be at least 1, got {self.latent_dim}."),
            (len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1,
             f"--hidden needs one or more positive layer widths, got {self.hidden_dims}."),
            (0 < self.test_fraction < 1, f"--test-fraction must be between 0 and 1, got {self.test_fraction}."),
            (self.image_size is None or self.image_size >= 2,
             f"--image-size must be at least 2, got {self.image_size}."),
            (self.num_epochs >= 1, f"--epochs must be at least 1, got {self.num_epochs}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}."),
            (self.optimizer in OPTIMIZERS,
             f"Unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}."),
            (self.keep_checkpoints >= 1, f"--keep-checkpoints must be at least 1, got {self.keep_checkpoints}."),
            (self.validation_size >= 0, f"--validation-size must be zero or more, got {self.validation_size}."),
            (self.patience is None or self.patience >= 1, f"--patience must be at least 1, got {self.patience}."),
            (self.patience is None or self.validation_size > 0,
             "--patience stops on the validation ELBO; hold out images for it with --validation-size N."),
            (self.lr_drops >= 0, f"--lr-drops must be zero or more, got {self.lr_drops}."),
            (self.lr_drops == 0 or self.patience is not None,
             "--lr-drops cuts the learning rate when --patience epochs pass without a better validation ELBO; "
             "give --patience too."),
            (0 < self.lr_drop_factor < 1, f"--lr-drop-factor must be between 0 and 1, got {self.lr_drop_factor}."),
            (self.init in INITS, f"Unknown init {self.init!r}; choose one of: {', '.join(INITS)}."),
            (self.logvar_range is None or (len(self.logvar_range) == 2 and all(map(math.isfinite, self.logvar_range))
                                           and self.logvar_range[0] < self.logvar_range[1]),
             f"--logvar-range needs two finite numbers LO,HI with LO < HI, got {self.logvar_range}."),
            (self.logvar_range is None or self.guide in ("diag_normal", "lowrank", "iaf"),
             "--logvar-range clips a Normal guide's log-variance; use it with --guide diag_normal, lowrank or iaf."),
            (self.rank >= 1, f"--rank must be at least 1, got {self.rank}."),
            (self.num_flows >= 1, f"--flows must be at least 1, got {self.num_flows}."),
            (self.num_pseudo_inputs >= 1, f"--pseudo-inputs must be at least 1, got {self.num_pseudo_inputs}."),
            (self.num_particles >= 1, f"--particles must be at least 1, got {self.num_particles}."),
            (self.mixture_components >= 1, f"--mixtures must be at least 1, got {self.mixture_components}."),
            (self.conv_channels >= 1, f"--conv-channels must be at least 1, got {self.conv_channels}."),
            (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0,
             f"--warmup must be zero or more epochs, got {self.warmup_epochs}."),
            (math.isfinite(self.beta) and self.beta > 0, f"--beta must be a positive number, got {self.beta}."),
            (not (self.prior == "vamp" and self.guide == "iaf"),
             "--prior vamp mixes the guide's Normal posteriors; use it with --guide diag_normal or lowrank, not iaf."),
            (math.isfinite(self.likelihood_scale) and self.likelihood_scale > 0,
             f"--likelihood-scale must be a positive number, got {self.likelihood_scale}."),
            (self.num_labels is None or self.num_labels >= 1, f"--labels must be at least 1, got {self.num_labels}."),
            (math.isfinite(self.classifier_weight) and self.classifier_weight >= 0,
             f"--classifier-weight must be zero or more, got {self.classifier_weight}."),
            ((self.guide == "categorical") == (self.prior == "categorical"),
             "A categorical code needs both --guide categorical and --prior categorical."),
            (self.guide != "categorical" or self.elbo == "trace",
             "--guide categorical trains with the relaxed Trace_ELBO; use --elbo trace."),
            (self.num_categories >= 2, f"--categories must be at least 2, got {self.num_categories}."),
            (math.isfinite(self.min_temperature) and 0 < self.min_temperature <= self.temperature
             and math.isfinite(self.temperature),
             f"Temperatures must satisfy 0 < --min-temperature <= --temperature, got "
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
                    "rank", "num_flows", "prior", "num_pseudo_inputs", "image_shape")

    def model_signature(self) -> dict:
        return {name: getattr(self, name) for name in self.MODEL_FIELDS}
