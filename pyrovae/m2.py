"""The M2 semi-supervised VAE of Kingma et al. (2014): p(x|y,z) p(y) p(z) with the class y a
discrete latent, observed when a label is known and summed out exactly when it is not.

The guide is q(y|x) (a classifier) and q(z|x,y). For an unlabelled image Pyro's
``TraceEnum_ELBO`` enumerates all classes of y in parallel, so the bound is

    U(x) = sum_y q(y|x) [ log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y) ] + H(q(y|x))

with z drawn from q(z|x,y) for each y, computed exactly over y instead of estimated from a
sample of it. A labelled pair gives L(x,y), the ordinary ELBO with y observed; since L does
not train q(y|x), the classifier also gets ``classifier_weight`` times its cross-entropy on
labelled images (the alpha term of the paper).
"""

import math
from typing import Optional, Sequence, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from pyrovae.data import binarize
from pyrovae.errors import ConfigError
from pyrovae.guides import DiagonalNormalGuide
from pyrovae.likelihoods import Likelihood
from pyrovae.networks import _mlp
from pyrovae.objectives import Trace_ELBO
from pyrovae.priors import StandardNormalPrior
from pyrovae.train import Trainer
from pyrovae.vae import VAE

__all__ = ["TwoInputMLP", "M2Model", "M2Guide", "M2VAE", "M2Trainer", "balanced_labels"]


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

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.activation(self.a(a) + self.b(b))))


class M2Model(PyroModule):
    """z ~ N(0, I), y ~ Categorical(uniform), x ~ likelihood(decoder(z, y)), in one plate."""

    def __init__(self, latent_dim: int, num_classes: int, decoder: TwoInputMLP, likelihood: Likelihood,
                 image_shape=(1, 28, 28)):
        super().__init__()
        self.prior = StandardNormalPrior(latent_dim)
        self.decoder = decoder
        self.likelihood = likelihood
        self.image_shape = tuple(image_shape)
        self.register_buffer("class_logits", torch.zeros(num_classes))

    def class_prior(self) -> dist.TorchDistribution:
        return dist.OneHotCategorical(logits=self.class_logits)

    def decoder_output(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, y).unflatten(-1, self.image_shape)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        """:param y: one-hot classes of shape ``(batch, num_classes)``, or None when unknown."""
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            y = pyro.sample("y", self.class_prior(), obs=y)
            pyro.sample("x", self.likelihood(self.decoder_output(z, y)), obs=x)


class M2Guide(PyroModule):
    """q(y|x) = Categorical(classifier(x)) and q(z|x,y) = N(loc(x,y), scale(x,y)^2).

    When y is not given, its site is marked for parallel enumeration: under
    ``TraceEnum_ELBO`` it takes all ``num_classes`` values at once (a leading dimension of
    size 10), and q(z|x,y) is computed for each.
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
        """q(z|x,y); ``y`` one-hot, broadcastable against the batch (e.g. all classes at once)."""
        return self.head.normal(self.encoder(x.flatten(-self.image_dims), y))

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", dist.OneHotCategorical(logits=self.class_logits(x)),
                                infer={"enumerate": "parallel"})
            return pyro.sample("z", self.distribution(x, y))


class M2VAE(VAE):
    """An M2 model and guide with the helpers of :class:`~pyrovae.vae.VAE`.

    ``encode`` and ``reconstruct`` condition on the classifier's most likely class;
    ``sample`` takes a ``digit`` (a class index), and goes through the classes in turn
    when it is None.
    """

    def __init__(self, model: M2Model, guide: M2Guide):
        PyroModule.__init__(self)
        self.model = model
        self.guide = guide

    @property
    def num_classes(self) -> int:
        return self.guide.num_classes

    @property
    def row_cost(self) -> int:
        """Evaluation decodes every image once per class."""
        return self.num_classes

    def one_hot(self, classes: torch.Tensor) -> torch.Tensor:
        return F.one_hot(classes, self.num_classes).to(self.model.class_logits.dtype)

    def all_classes(self) -> torch.Tensor:
        """Every class as a one-hot row, shaped ``(num_classes, 1, num_classes)`` to broadcast over a batch."""
        return self.one_hot(torch.arange(self.num_classes, device=self.device)).unsqueeze(1)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely class of each image under q(y|x)."""
        return self.guide.class_logits(x).argmax(-1)

    def encode(self, x: torch.Tensor):
        return self.guide.distribution(x, self.one_hot(self.classify(x)))

    def _cycle(self, z: torch.Tensor) -> torch.Tensor:
        """Classes 0, 1, ..., K-1, 0, ... along the codes in ``z``: deterministic, so pictures
        show every class and draw nothing from the training random stream."""
        return (torch.arange(z.shape[:-1].numel(), device=z.device) % self.num_classes).view(z.shape[:-1])

    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None):
        """p(x|z,y); ``y`` are class indices, the classes in turn when None."""
        if y is None:
            y = self._cycle(z)
        return self.likelihood(self.model.decoder_output(z, self.one_hot(y)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        y = self.one_hot(self.classify(x))
        return self.likelihood.mean(self.model.decoder_output(self.guide.distribution(x, y).mean, y))

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False, z: torch.Tensor = None,
               digit: Optional[int] = None) -> torch.Tensor:
        """Images of class ``digit`` (the classes in turn when None) from prior or given codes."""
        if z is None:
            z = self.prior().sample((num_samples,))
        z = z.to(self.device)
        if digit is None:
            classes = self._cycle(z)
        else:
            if not 0 <= digit < self.num_classes:
                raise ConfigError(f"--digit must be a class from 0 to {self.num_classes - 1}, got {digit}.")
            classes = torch.full(z.shape[:-1], digit, device=self.device)
        out = self.model.decoder_output(z, self.one_hot(classes))
        return self.likelihood.mean(out) if mean else self.likelihood.sample(out)

    @torch.no_grad()
    def styles(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images for every code in ``z`` (rows) and every class (columns): ``(len(z) * K, ...)``."""
        z = z.to(self.device).unsqueeze(1).expand(-1, self.num_classes, -1)
        classes = torch.arange(self.num_classes, device=self.device).expand(len(z), -1)
        return self.likelihood.mean(self.model.decoder_output(z, self.one_hot(classes))).flatten(0, 1)

    def elbo_parts(self, x: torch.Tensor, p) -> Tuple[torch.Tensor, torch.Tensor]:
        """U(x) split into its expected reconstruction and KL terms, summed exactly over y:
        KL = KL(q(y|x) || p(y)) + sum_y q(y|x) KL(q(z|x,y) || p(z))."""
        from pyrovae.evaluation import analytic_kl

        qy = dist.OneHotCategorical(logits=self.guide.class_logits(x))
        y = self.all_classes()
        qz = self.guide.distribution(x, y)  # batch (K, N)
        z = qz.sample()
        reconstruction = self.likelihood(self.model.decoder_output(z, y)).log_prob(x)
        kl_z = analytic_kl(qz, p)
        weights = qy.probs.T  # (K, N)
        kl = (weights * kl_z).sum(0) + torch.distributions.kl_divergence(qy, self.model.class_prior())
        return (weights * reconstruction).sum(0), kl

    def log_marginal(self, x: torch.Tensor, p, num_samples: int, samples_per_chunk: int) -> torch.Tensor:
        """log p(x) = logsumexp_y [log p(y) + log p(x|y)], each log p(x|y) importance-sampled
        from q(z|x,y): the sum over classes is exact."""
        y = self.all_classes()
        qz = self.guide.distribution(x, y)
        running = torch.full(qz.batch_shape, -math.inf, device=x.device)
        for start in range(0, num_samples, samples_per_chunk):
            z = qz.sample((min(samples_per_chunk, num_samples - start),))
            log_w = p.log_prob(z) + self.likelihood(self.model.decoder_output(z, y)).log_prob(x) - qz.log_prob(z)
            running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
        log_py = self.model.class_prior().log_prob(y.squeeze(1)).unsqueeze(1)
        return torch.logsumexp(running - math.log(num_samples) + log_py, dim=0)

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
        """The fraction of images whose most likely class under q(y|x) is their label."""
        correct = sum(int((self.classify(x.to(self.device)) == t.to(self.device)).sum())
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
        raise ConfigError(f"--labels {count} is fewer than one image per class; give at least {num_classes}.")
    if count > len(labels):
        raise ConfigError(f"--labels {count} is more than the {len(labels)} training images.")
    generator = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    per_class = [members[torch.randperm(len(members), generator=generator)] for members in per_class]
    # Round robin over the classes: the i-th pick of every class before any (i+1)-th.
    order = sorted(((i, c) for c, members in enumerate(per_class) for i in range(len(members))))
    chosen = torch.stack([per_class[c][i] for i, c in order[:count]])
    visible = torch.full_like(labels, -1)
    visible[chosen] = labels[chosen]
    return visible


class M2Trainer(Trainer):
    """Trains an :class:`M2VAE` on a batch of images whose labels are partly hidden.

    Each step sums U(x) (Pyro's ``TraceEnum_ELBO``) over the batch's unlabelled images, L(x, y) over its labelled ones,
    and, when only some labels are known, L(x, y) over a batch of the same size drawn (with
    replacement) from the labelled images, so that a hundred labels are seen every step; the
    classifier's cross-entropy on all labelled images counted, times ``classifier_weight``.
    ``train_elbo`` is the ELBO of the epoch's own images (labelled ones with their label).

    :param labels: the training labels, -1 where hidden (:func:`balanced_labels`).
    """

    def __init__(self, vae: M2VAE, data, labels: torch.Tensor, classifier_weight: float = 50.0, **kwargs):
        kwargs.setdefault("elbo", TraceEnum_ELBO(max_plate_nesting=1))
        super().__init__(vae, data, **kwargs)
        self.labels = labels.to(self.train_images.device)
        self.labelled = torch.nonzero(self.labels >= 0).flatten()
        if not len(self.labelled):
            raise ConfigError("--model m2 needs at least one labelled training image.")
        self.classifier_weight = classifier_weight
        self.labelled_elbo = Trace_ELBO()  # nothing to enumerate once y is observed

    def _loss(self, model, guide, x, index):
        y = self.labels[index]
        known = y >= 0
        x_u, x_l, y_l = x[~known], x[known], y[known]
        batch_neg_elbo = x.new_zeros(())
        if len(x_u):
            batch_neg_elbo = batch_neg_elbo + self.elbo.differentiable_loss(model, guide, x_u)
        if len(x_l):
            batch_neg_elbo = batch_neg_elbo + self.labelled_elbo.differentiable_loss(model, guide, x_l,
                                                                                      self.vae.one_hot(y_l))
        objective = batch_neg_elbo
        if len(self.labelled) < len(self.labels):  # few labels: a labelled batch every step
            pick = self.labelled[torch.randint(len(self.labelled), (len(x),), device=x.device)]
            extra = self.train_images[pick]
            extra = binarize(extra) if self.binary else extra
            objective = objective + self.labelled_elbo.differentiable_loss(model, guide, extra,
                                                                           self.vae.one_hot(self.labels[pick]))
            x_l, y_l = torch.cat([x_l, extra]), torch.cat([y_l, self.labels[pick]])
        if len(x_l):
            logits = self.vae.guide.class_logits(x_l)
            objective = objective + self.classifier_weight * F.cross_entropy(logits, y_l, reduction="sum")
        return objective, batch_neg_elbo
