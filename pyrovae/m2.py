"""The M2 semi-supervised VAE of Kingma et al. (2014): p(x|y,z) p(y) p(z) with the class y a
discrete latent, observed when a label is known and summed out exactly when it is not.

The guide is q(y|x) (a classifier) and q(z|x,y). For an unlabelled image Pyro's
``TraceEnum_ELBO`` enumerates all classes of y in parallel, so the bound is

    U(x) = sum_y q(y|x) [ log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y) ] + H(q(y|x))

with z drawn from q(z|x,y) for each y, computed exactly over y instead of estimated from a
sample of it. A labelled pair gives L(x,y), the ordinary ELBO with y observed; since L does
not train q(y|x), :class:`M2_ELBO` adds ``classifier_weight`` times the classifier's
log-likelihood of the known labels (the alpha term of the paper), the way
``pyro.contrib.cevae.TraceCausalEffect_ELBO`` adds its auxiliary terms: the guide scores a
known label at a masked factor, which Pyro's stock ELBOs ignore (value and gradient).
"""

import math
import warnings
from typing import Optional, Sequence, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from pyrovae._pyro import dice_elbo, get_traces
from pyrovae.errors import ConfigError
from pyrovae.guides import DiagonalNormalGuide
from pyrovae.objectives import ThroughDifferentiableLoss
from pyrovae.likelihoods import Likelihood
from pyrovae.networks import _mlp, autocast_forward
from pyrovae.pixels import to_unit
from pyrovae.plates import data_plate, guide_plate
from pyrovae.priors import StandardNormalPrior
from pyrovae.vae import VAE, _claim_name, analytic_kl

NUM_CLASSES = 10  # the classes of a config that names none (runs made before class_names); M2VAE takes any number

__all__ = ["TwoInputMLP", "M2Model", "M2Guide", "M2VAE", "M2_ELBO", "balanced_labels", "CLASSIFIER_SITE"]

# The guide's masked factor holding the classifier's verdict on a known label.
CLASSIFIER_SITE = "y_classifier"


class TwoInputMLP(nn.Module):
    """``act(A a + B b)`` followed by more layers: an MLP on the concatenation of ``a`` and
    ``b`` without building it. With ``b`` a one-hot class enumerated over 10 values and ``a``
    a batch of images, ``A a`` is computed once rather than ten times.

    :param int out_features: size of a final linear layer, or None to end at the last hidden layer.
    """

    def __init__(self, a_features: int, b_features: int, hidden_dims: Sequence[int], out_features=None,
                 activation=nn.ReLU):
        super().__init__()
        self.a = nn.Linear(a_features, hidden_dims[0])
        self.b = nn.Linear(b_features, hidden_dims[0], bias=False)
        self.activation = activation()
        self.hidden = _mlp(tuple(hidden_dims), activation)
        self.out = nn.Linear(hidden_dims[-1], out_features) if out_features else nn.Identity()
        self.out_features = out_features or hidden_dims[-1]

    @autocast_forward
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.activation(self.a(a) + self.b(b))))


class M2Model(PyroModule):
    """z ~ N(0, I), y ~ Categorical(uniform), x ~ likelihood(decoder(z, y)), in one plate.

    ``model(x, y)`` scores images with known classes (``y`` class indices), ``model(x)``
    leaves y latent (for ``TraceEnum_ELBO`` or ``infer_discrete``), and
    ``model(num_images=n)`` or ``model(y=classes)`` generates images.
    """

    def __init__(self, latent_dim: int, num_classes: int, decoder: TwoInputMLP, likelihood: Likelihood,
                 image_shape=(1, 28, 28)):
        super().__init__()
        self.prior = StandardNormalPrior(latent_dim)
        self.decoder = decoder
        self.likelihood = likelihood
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.register_buffer("class_logits", torch.zeros(num_classes))

    def class_prior(self) -> dist.TorchDistribution:
        return dist.Categorical(logits=self.class_logits)

    @staticmethod
    def plate(x=None, y=None, num_images=None, *, size=None, subsample=None) -> pyro.plate:
        """The ``"data"`` plate for the model's arguments: as many images as ``x`` or, when
        generating, as classes given in ``y`` (or ``num_images``)."""
        if num_images is None and x is None and y is not None:
            num_images = len(y)
        return data_plate(x, num_images, size=size, subsample=subsample)

    def decoder_output(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Decoder output for codes ``z`` and class indices ``y`` (broadcast against each other)."""
        one_hot = F.one_hot(y, self.num_classes).to(z.dtype)
        return self.decoder(z, one_hot).unflatten(-1, self.likelihood.decoder_shape(self.image_shape))

    def forward(self, x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
                num_images: Optional[int] = None, *, size: Optional[int] = None,
                subsample: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:param y: class indices of shape ``(batch,)``, or None when unknown."""
        with self.plate(x, y, num_images, size=size, subsample=subsample):
            z = pyro.sample("z", self.prior())
            y = pyro.sample("y", self.class_prior(), obs=y)
            return pyro.sample("x", self.likelihood(self.decoder_output(z, y)), obs=x)


class M2Guide(PyroModule):
    """q(y|x) = Categorical(classifier(x)) and q(z|x,y) = N(loc(x,y), scale(x,y)^2).

    When y is not given, its site is marked for parallel enumeration: under
    ``TraceEnum_ELBO`` it takes all ``num_classes`` values at once (a leading dimension of
    size 10), and q(z|x,y) is computed for each. When y is given, the classifier's
    log q(y|x) is recorded at the masked factor ``"y_classifier"``, so that a stock ELBO
    computes exactly L(x, y), value and gradient (the classifier gets none from it);
    :class:`M2_ELBO` adds it with its weight.
    """

    def __init__(self, latent_dim: int, num_classes: int, image_shape=(1, 28, 28), hidden_dims=(400,),
                 activation=nn.ReLU):
        super().__init__()
        pixels = math.prod(image_shape)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.image_dims = len(image_shape)
        self.classifier = nn.Sequential(_mlp((pixels,) + tuple(hidden_dims), activation),
                                        nn.Linear(hidden_dims[-1], num_classes))
        self.encoder = TwoInputMLP(pixels, num_classes, hidden_dims, activation=activation)
        self.head = DiagonalNormalGuide(nn.Identity(), latent_dim, feature_dim=hidden_dims[-1])

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.flatten(-self.image_dims))

    def distribution(self, x: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x,y); ``y`` class indices, broadcastable against the batch (e.g. all classes at once)."""
        one_hot = F.one_hot(y, self.num_classes).to(x.dtype)
        return self.head.normal(self.encoder(x.flatten(-self.image_dims), one_hot))

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, num_images: Optional[int] = None, *,
                size: Optional[int] = None, subsample: Optional[torch.Tensor] = None) -> torch.Tensor:
        with guide_plate(x, num_images, size=size, subsample=subsample):
            classes = dist.Categorical(logits=self.class_logits(x))
            if y is None:
                y = pyro.sample("y", classes, infer={"enumerate": "parallel"})
            else:
                # A factor, not an observed sample site: Pyro masks a site's log-probability but
                # not its score-function term, so a masked observed Categorical here still gave
                # q(y|x) a REINFORCE gradient under every stock ELBO. As a factor marked
                # reparameterized it has no score-function term, and the mask removes the rest.
                with poutine.mask(mask=False):
                    pyro.factor(CLASSIFIER_SITE, classes.log_prob(y), has_rsample=True)
            return pyro.sample("z", self.distribution(x, y))


class M2_ELBO(ThroughDifferentiableLoss, TraceEnum_ELBO):
    """The M2 objective: Pyro's ``TraceEnum_ELBO`` (U(x) with the class summed out where it
    is unknown, L(x, y) where it is known) plus ``classifier_weight`` times log q(y|x) of the
    known labels, read from the guide's masked factor ``"y_classifier"``.

    ``differentiable_loss(model, guide, x, y)`` takes class indices ``y`` with -1 where a
    label is hidden: it scores the two kinds of rows in two passes. ``loss`` and
    ``loss_and_grads`` (what :class:`pyro.infer.SVI` calls) go through it too, as Pyro's
    ``JitTraceEnum_ELBO`` does, so ``SVI(model, guide, optim, M2_ELBO())`` optimizes this
    objective.

    :param float classifier_weight: alpha of Kingma et al. (2014), per labelled image.
    """

    def __init__(self, classifier_weight: float = 50.0, **kwargs):
        kwargs.setdefault("max_plate_nesting", 1)
        super().__init__(**kwargs)
        self.classifier_weight = classifier_weight

    def differentiable_loss(self, model, guide, x, y=None, *args, **kwargs):
        if y is None or x is None:
            return self._loss(model, guide, (x, y) + args, kwargs)
        known = y >= 0
        unknown_rows, known_rows = torch.nonzero(~known).flatten(), torch.nonzero(known).flatten()
        loss = x.new_zeros(())
        for rows, labels in ((unknown_rows, None), (known_rows, y)):
            if len(rows):
                part = {**kwargs}
                if kwargs.get("subsample") is not None:
                    part["subsample"] = kwargs["subsample"][rows]
                loss = loss + self._loss(model, guide, (x[rows], None if labels is None else labels[rows]) + args, part)
        return loss

    def _loss(self, model, guide, args, kwargs) -> torch.Tensor:
        loss = 0.0
        with warnings.catch_warnings():  # with every class known there is nothing to enumerate, as intended
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
            traces = list(get_traces(self, model, guide, args, kwargs))
        for model_trace, guide_trace in traces:
            site = guide_trace.nodes.get(CLASSIFIER_SITE)
            if site is not None:
                guide_trace.remove_node(CLASSIFIER_SITE)  # masked: no part of the ELBO
                loss = loss - self.classifier_weight * site["unscaled_log_prob"].sum()
            loss = loss - dice_elbo(model_trace, guide_trace)
        return loss / self.num_particles


def _num_classes(config) -> int:
    """The classes a config's M2 has: its data's (``class_names``), else the 10 of runs made before them."""
    return len(config.class_names) if config.class_names else NUM_CLASSES


class M2VAE(VAE):
    """An M2 model and guide with the helpers of :class:`~pyrovae.vae.VAE`.

    ``encode`` and ``reconstruct`` condition on the classifier's most likely class;
    ``sample`` takes a ``digit`` (a class index), and goes through the classes in turn
    when it is None.
    """

    name_prefix = "m2"
    skipped_figures = frozenset({"manifold", "interpolate", "levels"})  # they decode z without a class
    # Only z: the class is summed out exactly, and weighting its log-probabilities would
    # reweight that sum (q(y|x) is its weights), not only its KL.
    latent_sites = ("z",)

    @classmethod
    def check_config(cls, config) -> None:
        if (config.guide, config.prior, config.net, config.elbo) != ("diag_normal", "standard_normal", "mlp", "trace"):
            raise ConfigError("{model} m2 has its own guide, prior, MLP networks and enumerated ELBO; "
                              "leave {guide}, {prior}, {net} and {elbo} at their defaults.")
        if config.logvar_range is not None:
            raise ConfigError("{logvar_range} clips the plain VAE's guide; {model} m2 has its own.")
        if config.visible_quadrants != 1:
            raise ConfigError("{visible_quadrants} applies to a conditional model ({model} cvae).")

    def batch_source(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """Images and their labels (-1 where hidden). When only some are known, each step also
        scores as many images again, drawn with replacement from the labelled ones, so that
        some labels are seen every step: over an epoch this weights each labelled image about
        N / N_labelled times more than the written M2 objective does (docs/m2.md)."""
        if labels is None:
            raise ConfigError("M2 trains on class labels (-1 where hidden); pass labels.")
        labels = labels.to(images.device)
        labelled = torch.nonzero(labels >= 0).flatten()
        if not len(labelled):
            raise ConfigError("A model with classes needs at least one labelled training image.")
        if len(labelled) == len(labels):
            return lambda index: (images[index], labels[index])

        def batch(index):
            pick = labelled[torch.randint(len(labelled), (len(index),), device=index.device)]
            return torch.cat([images[index], images[pick]]), torch.cat([labels[index], labels[pick]])

        return batch

    @classmethod
    def from_config(cls, config, likelihood: Likelihood, activation=nn.ReLU) -> "M2VAE":
        """The M2 model a :class:`~pyrovae.config.Config` describes: MLPs of ``hidden_dims``, one
        class for each of ``config.class_names``."""
        num_classes = _num_classes(config)
        decoder = TwoInputMLP(config.latent_dim, num_classes, tuple(reversed(config.hidden_dims)),
                              math.prod(likelihood.decoder_shape(config.image_shape)), activation)
        return cls(M2Model(config.latent_dim, num_classes, decoder, likelihood, config.image_shape),
                   M2Guide(config.latent_dim, num_classes, config.image_shape, config.hidden_dims, activation),
                   class_names=config.class_names)

    @classmethod
    def options_from_data(cls, config, data) -> dict:
        """One class for each class of the data: its folder names, else its labels 0 to the largest."""
        labels = data.train_labels
        names = data.classes or [str(label) for label in range(int(labels.max()) + 1 if len(labels) else 0)]
        return {"class_names": tuple(names)}

    @classmethod
    def elbo_from_config(cls, config) -> "M2_ELBO":
        return M2_ELBO(config.classifier_weight)

    @classmethod
    def training_labels(cls, config, data) -> torch.Tensor:
        """``--labels`` of the training labels, balanced over the classes (:func:`balanced_labels`)."""
        labels = data.train_labels
        if not len(labels) or int(labels.max()) == 0:
            raise ConfigError(f"{{model}} m2 learns from class labels, but the images of {data.name} have none; put "
                              "them in one folder per class, or pass labels with the array.")
        num_classes = _num_classes(config)
        if int(labels.max()) >= num_classes:
            raise ConfigError(f"{{model}} m2 has {num_classes} classes, but {data.name} has labels up to "
                              f"{int(labels.max())}.")
        return balanced_labels(labels, config.num_labels, num_classes, config.seed)

    def __init__(self, model: M2Model, guide: M2Guide, name: Optional[str] = None,
                 class_names: Optional[Sequence[str]] = None):
        PyroModule.__init__(self, _claim_name(self, name, self.name_prefix))
        self.model = model
        self.guide = guide
        names = tuple(class_names) if class_names else tuple(str(i) for i in range(guide.num_classes))
        if len(names) != guide.num_classes:
            raise ConfigError(f"{len(names)} class names given for a model of {guide.num_classes} classes.")
        self.class_names = names

    def class_index(self, label) -> int:
        """The index of class ``label``, given by its name (:attr:`class_names`) or its index.

        :raises ConfigError: in one sentence listing the classes, for any other label.
        """
        if isinstance(label, str) and label in self.class_names:
            return self.class_names.index(label)
        if isinstance(label, (int, str)) and not isinstance(label, bool) and str(label).strip().isdigit():
            if int(label) < self.num_classes:
                return int(label)
        listed = ", ".join(self.class_names[:12]) + (", ..." if self.num_classes > 12 else "")
        raise ConfigError(f"{label!r} is not a class of this model; name one of its {self.num_classes} classes "
                          f"({listed}) or give its index, 0 to {self.num_classes - 1}.")

    @property
    def num_classes(self) -> int:
        return self.guide.num_classes

    create_plates = staticmethod(M2Model.plate)  # for a Pyro autoguide's create_plates

    def default_elbo(self, classifier_weight: float = 50.0) -> "M2_ELBO":
        """:class:`M2_ELBO`: the class summed out where unknown, plus the classifier's term."""
        return M2_ELBO(classifier_weight)

    @property
    def row_cost(self) -> int:
        """Evaluation decodes every image once per class."""
        return self.num_classes

    def all_classes(self) -> torch.Tensor:
        """Every class index, shaped ``(num_classes, 1)`` to broadcast over a batch."""
        return torch.arange(self.num_classes, device=self.device).unsqueeze(1)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely class of each image under q(y|x)."""
        return self.guide.class_logits(x).argmax(-1)

    def _encode(self, x: torch.Tensor):
        return self.guide.distribution(x, self.classify(x))

    def _cycle(self, z: torch.Tensor) -> torch.Tensor:
        """Classes 0, 1, ..., K-1, 0, ... along the codes in ``z``: deterministic, so pictures
        show every class and draw nothing from the training random stream."""
        return (torch.arange(z.shape[:-1].numel(), device=z.device) % self.num_classes).view(z.shape[:-1])

    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None):
        """p(x|z,y); ``y`` are class indices, the classes in turn when None (gradients as for
        :meth:`VAE.encode <pyrovae.vae.VAE.encode>`)."""
        z = self._check_codes(z)
        if y is None:
            y = self._cycle(z)
        with torch.set_grad_enabled(self._wants_gradients(z)):
            return self.likelihood(self.model.decoder_output(z, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        x = self.as_batch(x)
        y = self.classify(x)
        return self.likelihood.mean(self.model.decoder_output(self.guide.distribution(x, y).mean, y))

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, z: Optional[torch.Tensor] = None,
               label: Union[int, str, None] = None, temperature: float = 1.0) -> torch.Tensor:
        """Images of class ``label`` (a name or an index; the classes in turn when None) from
        prior or given codes; the likelihood's mean image unless ``mean`` is False
        (:meth:`VAE.sample`)."""
        z = self.prior_codes(num_samples, temperature).to(self.device) if z is None else self._check_codes(z)
        if label is None:
            classes = self._cycle(z)
        else:
            classes = torch.full(z.shape[:-1], self.class_index(label), device=self.device)
        out = self.model.decoder_output(z, classes)
        return self.likelihood.mean(out) if mean else self.likelihood.sample(out)

    @torch.no_grad()
    def styles(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images for every code in ``z`` (rows) and every class (columns): ``(len(z) * K, ...)``."""
        z = z.to(self.device).unsqueeze(1).expand(-1, self.num_classes, -1)
        classes = torch.arange(self.num_classes, device=self.device).expand(len(z), -1)
        return self.likelihood.mean(self.model.decoder_output(z, classes)).flatten(0, 1)

    def elbo_parts(self, x: torch.Tensor, p) -> Tuple[torch.Tensor, torch.Tensor]:
        """U(x) split into its expected reconstruction and KL terms, summed exactly over y:
        KL = KL(q(y|x) || p(y)) + sum_y q(y|x) KL(q(z|x,y) || p(z))."""
        qy = dist.Categorical(logits=self.guide.class_logits(x))
        y = self.all_classes()
        qz = self.guide.distribution(x, y)  # batch (K, N)
        z = qz.sample()
        reconstruction = self.likelihood(self.model.decoder_output(z, y)).log_prob(x)
        kl_z = analytic_kl(qz, p)
        weights = qy.probs.T  # (K, N)
        kl = (weights * kl_z).sum(0) + torch.distributions.kl_divergence(qy, self.model.class_prior())
        return (weights * reconstruction).sum(0), kl

    def importance_terms(self, x: torch.Tensor, p):
        """log p(x) = logsumexp_y [log p(y) + log p(x|y)], each log p(x|y) importance-sampled
        from q(z|x,y) for every class at once (a leading class dimension): the sum over classes
        is exact."""
        y = self.all_classes()
        log_py = self.model.class_prior().log_prob(y)  # (K, 1)
        return (self.guide.distribution(x, y),
                lambda z: p.log_prob(z) + self.likelihood(self.model.decoder_output(z, y)).log_prob(x),
                lambda log_px_given_y: torch.logsumexp(log_px_given_y + log_py, dim=0))

    def extra_scores(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict:
        return {} if labels is None else {"accuracy": self.accuracy(images, labels)}

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
        """The fraction of images whose most likely class under q(y|x) is their label."""
        correct = sum(int((self.classify(to_unit(x, self.dtype, self.device)) == t.to(self.device)).sum())
                      for x, t in zip(images.split(batch_size), labels.split(batch_size)))
        return correct / len(images)


def balanced_labels(labels: torch.Tensor, count: Optional[int], num_classes: int, seed: int) -> torch.Tensor:
    """Which training labels the model may see: ``count`` of them, balanced over classes
    (class sizes differ by at most one), chosen with ``seed``; all when ``count`` is None.

    :returns: a copy of ``labels`` with -1 where the label is hidden.
    """
    if count is None:
        return labels.clone()
    if count < num_classes:
        raise ConfigError(f"{{num_labels}} {count} is fewer than one image per class; give at least {num_classes}.")
    if count > len(labels):
        raise ConfigError(f"{{num_labels}} {count} is more than the {len(labels)} training images.")
    generator = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    per_class = [members[torch.randperm(len(members), generator=generator)] for members in per_class]
    # Round robin over the classes: the i-th pick of every class before any (i+1)-th.
    order = sorted(((i, c) for c, members in enumerate(per_class) for i in range(len(members))))
    chosen = torch.stack([per_class[c][i] for i, c in order[:count]])
    visible = torch.full_like(labels, -1)
    visible[chosen] = labels[chosen]
    return visible
