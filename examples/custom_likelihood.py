"""Write your own likelihood: independent Laplace pixels with one learned scale.

A likelihood is a ``Likelihood`` module whose ``forward`` turns decoder output into p(x|z)
with the image as one event. It owns its parameters (here the scale), so swapping it in
never touches the decoder. ``binary_data = False`` tells the trainer to keep grey pixels.

    python examples/custom_likelihood.py --epochs 5
"""

import argparse

import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch.distributions import constraints

from pyrovae import VAE, DiagonalNormalGuide, MLPDecoder, MLPEncoder, StandardNormalPrior, evaluate, fit, load_dataset
from pyrovae.likelihoods import IMAGE_EVENT_DIM, Likelihood


class LaplaceLikelihood(Likelihood):
    """x ~ Laplace(sigmoid(out), scale) per pixel, with a learned scale of at least ``min_scale``."""

    binary_data = False

    def __init__(self, init_scale=0.1, min_scale=0.01):
        super().__init__()
        self.scale = PyroParam(torch.tensor(init_scale), constraint=constraints.greater_than(min_scale))

    def forward(self, out):
        return dist.Laplace(torch.sigmoid(out), self.scale).to_event(IMAGE_EVENT_DIM)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a VAE with a Laplace likelihood on mnist5k.")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    data = load_dataset("mnist5k")
    likelihood = LaplaceLikelihood()
    vae = VAE(
        prior=StandardNormalPrior(20),
        decoder=MLPDecoder(20, hidden_dims=(400,)),
        likelihood=likelihood,
        guide=DiagonalNormalGuide(MLPEncoder(hidden_dims=(400,)), latent_dim=20),
    )
    history = fit(vae, data, num_epochs=args.epochs)
    scores = evaluate(vae, data.test_images, num_samples=100)
    print(f"after {len(history)} epochs: test ELBO {scores.elbo:.2f} (a density on grey pixels), "
          f"learned scale {likelihood.scale.item():.3f}")
    return scores


if __name__ == "__main__":
    main()
