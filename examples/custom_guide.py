"""Write your own guide: a full-covariance Normal q(z|x) = N(loc(x), L(x) L(x)^T).

A guide is an ``AmortizedGuide`` that returns q(z|x) from ``distribution``; the base class
already samples it as site "z" inside the data plate, so Pyro's ELBOs, pyrovae's trainer and
its evaluation all work with it unchanged.

    python examples/custom_guide.py --epochs 5
"""

import argparse

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyrovae import VAE, BernoulliLikelihood, MLPDecoder, MLPEncoder, StandardNormalPrior, evaluate, fit, load_dataset
from pyrovae.guides import AmortizedGuide
from pyrovae.train import prepare_test_images


class FullCovarianceGuide(AmortizedGuide):
    """The encoder's features give a mean and a lower-triangular Cholesky factor."""

    def __init__(self, encoder, latent_dim):
        super().__init__(encoder, latent_dim)
        self.loc = nn.Linear(self.feature_dim, latent_dim)
        self.tril = nn.Linear(self.feature_dim, latent_dim * latent_dim)
        self.register_buffer("strict_lower", torch.tril(torch.ones(latent_dim, latent_dim), diagonal=-1))

    def distribution(self, x):
        features = self.encoder(x)
        raw = self.tril(features).unflatten(-1, (self.latent_dim, self.latent_dim))
        # A positive diagonal (softplus, bounded away from zero) and a free strict lower triangle.
        diagonal = F.softplus(torch.diagonal(raw, dim1=-2, dim2=-1)) + 1e-3
        scale_tril = raw * self.strict_lower + torch.diag_embed(diagonal)
        return dist.MultivariateNormal(self.loc(features), scale_tril=scale_tril)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a VAE with a full-covariance guide on mnist5k.")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    data = load_dataset("mnist5k")
    vae = VAE(
        prior=StandardNormalPrior(8),
        decoder=MLPDecoder(8, hidden_dims=(400,)),
        likelihood=BernoulliLikelihood(),
        guide=FullCovarianceGuide(MLPEncoder(hidden_dims=(400,)), latent_dim=8),
    )
    history = fit(vae, data, num_epochs=args.epochs)
    scores = evaluate(vae, prepare_test_images(data.test_images, binary=True), num_samples=100)
    print(f"after {len(history)} epochs: test ELBO {scores.elbo:.2f}, log p(x) {scores.log_likelihood:.2f} (k=100)")
    return scores


if __name__ == "__main__":
    main()
