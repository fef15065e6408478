"""pyrovae: variational autoencoders in Pyro, with swappable priors, guides, likelihoods and ELBOs.

Names are imported on first use, so ``import pyrovae`` (and ``pyrovae --help``) does not
load torch until a model is touched::

    from pyrovae import VAE, StandardNormalPrior, MLPDecoder, MLPEncoder
    from pyrovae import BernoulliLikelihood, DiagonalNormalGuide, load_dataset, fit

and a trained run (or a folder written by ``pyrovae export``) is one call away::

    vae = pyrovae.load("runs/demo")
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "VAE": "pyrovae.vae",
    "VAEModel": "pyrovae.vae",
    "StandardNormalPrior": "pyrovae.priors",
    "VampPrior": "pyrovae.priors",
    "AmortizedGuide": "pyrovae.guides",
    "DiagonalNormalGuide": "pyrovae.guides",
    "LowRankNormalGuide": "pyrovae.guides",
    "IAFGuide": "pyrovae.guides",
    "CategoricalGuide": "pyrovae.discrete",
    "UniformCategoricalPrior": "pyrovae.discrete",
    "M2VAE": "pyrovae.m2",
    "M2_ELBO": "pyrovae.m2",
    "Callback": "pyrovae.train",
    "MLPEncoder": "pyrovae.networks",
    "MLPDecoder": "pyrovae.networks",
    "ConvEncoder": "pyrovae.networks",
    "ConvDecoder": "pyrovae.networks",
    "IWAE_ELBO": "pyrovae.objectives",
    "Trace_ELBO": "pyrovae.objectives",
    "TraceMeanField_ELBO": "pyrovae.objectives",
    "LatentScale": "pyrovae.objectives",
    "RunView": "pyrovae.analysis",
    "write_report": "pyrovae.report",
    "Likelihood": "pyrovae.likelihoods",
    "BernoulliLikelihood": "pyrovae.likelihoods",
    "GaussianLikelihood": "pyrovae.likelihoods",
    "LearnedGaussianLikelihood": "pyrovae.likelihoods",
    "ContinuousBernoulliLikelihood": "pyrovae.likelihoods",
    "DiscretizedLogisticLikelihood": "pyrovae.likelihoods",
    "DiscretizedLogisticMixtureLikelihood": "pyrovae.likelihoods",
    "ImageData": "pyrovae.data",
    "load_dataset": "pyrovae.data",
    "load_images": "pyrovae.data",
    "binarize": "pyrovae.data",
    "Config": "pyrovae.config",
    "build_vae": "pyrovae.registry",
    "fit": "pyrovae.train",
    "Trainer": "pyrovae.train",
    "EpochMetrics": "pyrovae.metrics",
    "evaluate": "pyrovae.evaluation",
    "EvalResult": "pyrovae.evaluation",
    "train_run": "pyrovae.run",
    "resume_run": "pyrovae.run",
    "load_run": "pyrovae.rundir",
    "load": "pyrovae.rundir",
    "export": "pyrovae.exported",
    "TrainingRun": "pyrovae.train",
    "TensorBoardLogger": "pyrovae.tracking",
    "PyroVAEError": "pyrovae.errors",
    "DataError": "pyrovae.errors",
    "CheckpointError": "pyrovae.errors",
    "ConfigError": "pyrovae.errors",
    "NumericalError": "pyrovae.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pyrovae' has no attribute {name!r}")


def __dir__():
    return __all__
