"""A guide written with ``pyro.param``, trained by Pyro's textbook SVI loop.

This guide is not amortized: every training image has its own variational parameters, a
mean and a scale for its code, kept in Pyro's parameter store and looked up with the
minibatch's positions (``subsample``) inside the model's plate. It is the classic
stochastic variational inference baseline that amortization (an encoder network) trades
a little accuracy for: its ELBO has no amortization gap, but it knows only the images it
was trained on, so it is scored on those. The decoder is pyrovae's, trained at the same
time. ``pyrovae.fit`` takes this guide too.

    python examples/param_guide.py --epochs 20
"""

import argparse
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from torch.distributions import constraints

from pyrovae import VAE, BernoulliLikelihood, MLPDecoder, StandardNormalPrior, binarize, load_dataset

LATENT_DIM = 8


def guide(x, num_images=None, *, size, subsample):
    """q(z_n) = N(loc_n, scale_n^2) for the images at positions ``subsample`` of ``size``.

    A guide takes the model's arguments: here the images (unused: nothing is amortized) and
    where they sit in the data set.
    """
    loc = pyro.param("per_image.loc", lambda: torch.zeros(size, LATENT_DIM))
    scale = pyro.param("per_image.scale", lambda: torch.ones(size, LATENT_DIM), constraint=constraints.positive)
    with pyro.plate("data", size, subsample=subsample):
        pyro.sample("z", dist.Normal(loc[subsample], scale[subsample]).to_event(1))


@dataclass
class Scores:
    elbo: float  # nats per training image
    log_likelihood: float  # the importance-weighted bound with k samples, nats per image


def score(vae: VAE, images: torch.Tensor, num_samples: int = 100, chunk: int = 250) -> Scores:
    """ELBO and IWAE bound per image, on the training images the guide knows."""
    size, elbo, iwae = len(images), 0.0, 0.0
    for subsample in torch.arange(size).split(chunk):
        # Pyro scales a subsample by size / len(subsample); undo that to get this chunk's sum,
        # so that the importance weights inside the IWAE bound are unscaled densities.
        unscaled = poutine.scale(scale=len(subsample) / size)
        args, kwargs = (images[subsample],), dict(size=size, subsample=subsample)
        elbo -= Trace_ELBO(num_particles=10).loss(unscaled(vae.model), unscaled(guide), *args, **kwargs)
        iwae -= RenyiELBO(alpha=0, num_particles=num_samples, vectorize_particles=True, max_plate_nesting=1).loss(
            unscaled(vae.model), unscaled(guide), *args, **kwargs)
    return Scores(elbo / size, iwae / size)


def main(argv=None):
    parser = argparse.ArgumentParser(description="A pyro.param guide and SVI on 1,000 mnist5k digits.")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    images = binarize(load_dataset("mnist5k").train_images[:1000], seed=0)  # one fixed binarization
    vae = VAE(
        prior=StandardNormalPrior(LATENT_DIM),
        decoder=MLPDecoder(LATENT_DIM, hidden_dims=(400,)),
        likelihood=BernoulliLikelihood(),
        guide=guide,
    )
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(args.epochs):
        for subsample in torch.randperm(len(images)).split(100):
            svi.step(images[subsample], size=len(images), subsample=subsample)
    with torch.no_grad():
        scores = score(vae, images)
    print(f"after {args.epochs} epochs: training-set ELBO {scores.elbo:.2f}, "
          f"IWAE bound {scores.log_likelihood:.2f} (k=100)")
    return scores


if __name__ == "__main__":
    main()
