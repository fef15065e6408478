"""Names for the swappable parts, used by the command line and by saved configurations.

Python users pass objects; only strings from the command line or a ``config.json`` pass
through here, and an unknown name is answered with the list of valid ones. The tables
import nothing heavy, so the command line can list the names without loading torch.
"""

import importlib

from pyrovae.config import DATASETS, INITS, OPTIMIZERS, PRECISIONS, STORAGES, Config
from pyrovae.errors import ConfigError

__all__ = ["DATASETS", "MODELS", "LIKELIHOODS", "GUIDES", "PRIORS", "ELBOS", "OPTIMIZERS", "INITS", "NETS",
           "STORAGES", "PRECISIONS", "ACTIVATION_NAMES", "LOGGERS", "lookup", "model_family", "build_vae",
           "build_elbo", "build_optimizer", "build_loggers", "resolve", "validate"]


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


def _dlogistic(c: Config):
    from pyrovae.likelihoods import DiscretizedLogisticLikelihood

    return DiscretizedLogisticLikelihood()


def _dlogistic_mix(c: Config):
    from pyrovae.likelihoods import DiscretizedLogisticMixtureLikelihood

    return DiscretizedLogisticMixtureLikelihood(c.mixture_components)


def _activation(c: Config):
    from pyrovae.networks import ACTIVATIONS

    return lookup(ACTIVATIONS, "activation", c.activation)


def _mlp(c: Config, output_shape, gated: bool = False):
    from pyrovae.networks import MLPDecoder, MLPEncoder

    act = _activation(c)
    return (MLPEncoder(c.image_shape, c.hidden_dims, act, gated=gated),
            MLPDecoder(c.latent_dim, output_shape, tuple(reversed(c.hidden_dims)), act, gated=gated))


def _gated(c: Config, output_shape):
    return _mlp(c, output_shape, gated=True)


def _conv(c: Config, output_shape):
    from pyrovae.networks import ConvDecoder, ConvEncoder

    act = _activation(c)
    return (ConvEncoder(c.image_shape, c.conv_channels, c.hidden_dims[-1], act),
            ConvDecoder(c.latent_dim, output_shape, c.conv_channels, c.hidden_dims[-1], act))


def _diag_normal(c: Config, encoder):
    from pyrovae.guides import DiagonalNormalGuide

    return DiagonalNormalGuide(encoder, c.latent_dim, logvar_range=c.logvar_range)


def _lowrank(c: Config, encoder):
    from pyrovae.guides import LowRankNormalGuide

    return LowRankNormalGuide(encoder, c.latent_dim, rank=c.rank, logvar_range=c.logvar_range)


def _iaf(c: Config, encoder):
    from pyrovae.guides import IAFGuide

    return IAFGuide(encoder, c.latent_dim, num_flows=c.num_flows, logvar_range=c.logvar_range)


def _standard_normal(c: Config, guide, init_images):
    from pyrovae.priors import StandardNormalPrior

    return StandardNormalPrior(c.latent_dim)


def _vamp(c: Config, guide, init_images):
    from pyrovae.priors import VampPrior

    return VampPrior(guide, c.num_pseudo_inputs, c.image_shape, data=init_images)


def _categorical_guide(c: Config, encoder):
    from pyrovae.discrete import CategoricalGuide

    return CategoricalGuide(encoder, c.latent_dim, c.num_categories, c.temperature, c.min_temperature)


def _categorical_prior(c: Config, guide, init_images):
    from pyrovae.discrete import UniformCategoricalPrior

    return UniformCategoricalPrior(c.latent_dim, c.num_categories, c.temperature, c.min_temperature)


def _trace_elbo(c: Config):
    from pyrovae.objectives import Trace_ELBO

    return Trace_ELBO()


def _meanfield_elbo(c: Config):
    from pyrovae.objectives import TraceMeanField_ELBO

    return TraceMeanField_ELBO()


def _iwae(c: Config):
    from pyrovae.objectives import IWAE_ELBO

    return IWAE_ELBO(num_particles=c.num_particles)


NETS = {"mlp": _mlp, "gated": _gated, "conv": _conv}
LIKELIHOODS = {
    "bernoulli": _bernoulli,
    "gaussian": _gaussian,
    "gaussian_learned": _gaussian_learned,
    "continuous_bernoulli": _continuous_bernoulli,
    "dlogistic": _dlogistic,
    "dlogistic_mix": _dlogistic_mix,
}
GUIDES = {"diag_normal": _diag_normal, "lowrank": _lowrank, "iaf": _iaf, "categorical": _categorical_guide}
PRIORS = {"standard_normal": _standard_normal, "vamp": _vamp, "categorical": _categorical_prior}


def resolve(target: str):
    """The object a ``"module:attribute"`` target names, imported when first asked for: the
    tables below name what they build without importing it (nor anything it imports)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


# Each model family is a VAE class that builds itself from a Config and says what it needs.
MODELS = {"vae": "pyrovae.vae:VAE", "categorical": "pyrovae.discrete:CategoricalVAE", "m2": "pyrovae.m2:M2VAE",
          "cvae": "pyrovae.cvae:CVAE", "hvae": "pyrovae.hvae:HVAE",
          "ladder": "pyrovae.ladder:Ladder"}
ELBOS = {"trace": _trace_elbo, "meanfield": _meanfield_elbo, "iwae": _iwae}
ACTIVATION_NAMES = ("relu", "elu", "tanh", "gelu", "softplus")


# Where a run's progress is logged besides its own files (pyrovae.tracking).
LOGGERS = {"tensorboard": "pyrovae.tracking:TensorBoardLogger"}


def lookup(table: dict, kind: str, name: str):
    """``table[name]``, or a :class:`ConfigError` listing the valid names."""
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"Unknown {kind} {name!r}; choose one of: {', '.join(table)}.") from None


def validate(config: Config) -> Config:
    """``config.validate()`` and its model family's own rules (``check_config``): every
    impossible option as one :class:`ConfigError` sentence, before anything is loaded or written."""
    config.validate()
    model_family(config).check_config(config)
    return config


def build_vae(config: Config, init_images=None):
    """Build the :class:`~pyrovae.vae.VAE` a configuration describes (on the CPU).

    :param init_images: training images some parts start from (the VampPrior's pseudo-inputs).
    """
    validate(config)
    vae = _build_vae(config, init_images)
    if config.init == "he":
        from pyrovae.networks import he_init_

        he_init_(vae)
    return vae


def _named_likelihood(config: Config) -> str:
    """The likelihood a named data set takes when the config names none (``likelihood=None``);
    for the user's own images the data decide, once loaded (``pyrovae.run.config_for_data``)."""
    if config.data:
        raise ConfigError(f"The likelihood of {config.data} follows its pixels: pass {{likelihood}}, "
                          "or the config through pyrovae.run.config_for_data with the loaded images.")
    from pyrovae.data import named_likelihood

    return named_likelihood(config.dataset)


def _build_vae(config: Config, init_images):
    family = model_family(config)
    likelihood = lookup(LIKELIHOODS, "likelihood", config.likelihood or _named_likelihood(config))(config)
    if family.from_config is not None:
        return family.from_config(config, likelihood=likelihood, activation=_activation(config))
    nets = lookup(NETS, "network", config.net)
    output_shape = likelihood.decoder_shape(config.image_shape)
    features = family.code_features(config)
    if features == config.latent_dim:
        encoder, decoder = nets(config, output_shape)
    else:  # the code reaches the decoder in another shape (the categorical VAE's one-hot variables)
        encoder, _ = nets(config, output_shape)
        _, decoder = nets(config.replace(latent_dim=features), output_shape)
    decoder = family.code_decoder(decoder)
    guide = lookup(GUIDES, "guide", config.guide)(config, encoder)
    return family(
        prior=lookup(PRIORS, "prior", config.prior)(config, guide, init_images),
        decoder=decoder,
        likelihood=likelihood,
        guide=guide,
    )


def build_loggers(names) -> list:
    """The logging callback of each name (``--log``), each once; a missing
    package is a :class:`ConfigError` here, before anything is written."""
    return [resolve(lookup(LOGGERS, "logger", name))() for name in dict.fromkeys(names or ())]


def model_family(config: Config):
    """The VAE class of ``config.model`` (``VAE``, ``M2VAE``)."""
    return resolve(lookup(MODELS, "model", config.model))


def build_elbo(config: Config):
    """The Pyro ELBO named by ``config.elbo``, or the model family's own objective where it has
    one (M2: :class:`~pyrovae.m2.M2_ELBO`)."""
    elbo = model_family(config).elbo_from_config(config)
    if elbo is not None:
        return elbo
    return lookup(ELBOS, "ELBO", config.elbo)(config)


def build_optimizer(config: Config, parameters):
    """The torch optimizer ``config.optimizer`` names, at ``config.lr``
    (:func:`~pyrovae.train.adam`, or :class:`~pyrovae.train.AdamNormGrad`)."""
    from pyrovae.train import adam

    config.validate()
    return adam(parameters, config.lr, normalize_gradients=config.optimizer == "adamnormgrad")
