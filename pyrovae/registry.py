"""Names for the swappable parts, used by the command line and by saved configurations.

Python users pass objects; only strings from the command line or a ``config.json`` pass
through here, and an unknown name is answered with the list of valid ones. The tables
import nothing heavy, so the command line can list the names without loading torch.
"""

from pyrovae.config import Config
from pyrovae.errors import ConfigError

__all__ = ["DATASETS", "LIKELIHOODS", "GUIDES", "PRIORS", "ELBOS", "lookup", "build_vae", "build_elbo"]

DATASETS = ("mnist", "fashion-mnist", "mnist5k")


def _bernoulli(c: Config):
    from pyrovae.likelihoods import BernoulliLikelihood

    return BernoulliLikelihood()


def _gaussian(c: Config):
    from pyrovae.likelihoods import GaussianLikelihood

    return GaussianLikelihood(scale=c.likelihood_scale)


def _gaussian_learned(c: Config):
    from pyrovae.likelihoods import LearnedGaussianLikelihood

    return LearnedGaussianLikelihood(c.image_shape, init_scale=c.likelihood_scale)


def _continuous_bernoulli(c: Config):
    from pyrovae.likelihoods import ContinuousBernoulliLikelihood

    return ContinuousBernoulliLikelihood()


def _diag_normal(c: Config):
    from pyrovae.guides import DiagonalNormalGuide
    from pyrovae.networks import MLPEncoder

    return DiagonalNormalGuide(MLPEncoder(c.image_shape, c.hidden_dims), c.latent_dim)


def _standard_normal(c: Config):
    from pyrovae.priors import StandardNormalPrior

    return StandardNormalPrior(c.latent_dim)


def _trace_elbo():
    from pyro.infer import Trace_ELBO

    return Trace_ELBO()


def _meanfield_elbo():
    from pyro.infer import TraceMeanField_ELBO

    return TraceMeanField_ELBO()


LIKELIHOODS = {
    "bernoulli": _bernoulli,
    "gaussian": _gaussian,
    "gaussian_learned": _gaussian_learned,
    "continuous_bernoulli": _continuous_bernoulli,
}
GUIDES = {"diag_normal": _diag_normal}
PRIORS = {"standard_normal": _standard_normal}
ELBOS = {"trace": _trace_elbo, "meanfield": _meanfield_elbo}


def lookup(table: dict, kind: str, name: str):
    """``table[name]``, or a :class:`ConfigError` listing the valid names."""
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"Unknown {kind} {name!r}; choose one of: {', '.join(table)}.") from None


def build_vae(config: Config):
    """Build the :class:`~pyrovae.vae.VAE` a configuration describes (on the CPU)."""
    from pyrovae.networks import MLPDecoder
    from pyrovae.vae import VAE

    config.validate()
    return VAE(
        prior=lookup(PRIORS, "prior", config.prior)(config),
        decoder=MLPDecoder(config.latent_dim, config.image_shape, tuple(reversed(config.hidden_dims))),
        likelihood=lookup(LIKELIHOODS, "likelihood", config.likelihood)(config),
        guide=lookup(GUIDES, "guide", config.guide)(config),
    )


def build_elbo(config: Config):
    """The Pyro ELBO named by ``config.elbo``."""
    return lookup(ELBOS, "ELBO", config.elbo)()
