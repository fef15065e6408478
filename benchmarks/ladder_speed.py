"""The ladder's training step in pyrovae against one written by hand with the same modules.

Pyro runs the guide and the model as two programs: the guide's top-down pass draws every
level's code, then the model's pass scores the same codes, taking over the priors the guide's
pass computed (``TopDown.hand_over``; without it the path's prior heads and cells would run
twice a step). The hand-written step runs one pass: it draws each level from the corrected
posterior, accumulates log q - log p as it goes, and decodes. Same model, same batches
(binarized Fashion-MNIST-sized MNIST images), fused Adam on both sides, epochs alternated
(A B B A ...). pyrovae's epoch time is the trainer's steps only (its test scoring left out).

    python benchmarks/ladder_speed.py --rounds 4
"""

import argparse
import statistics
import time

import torch

from pyrovae.config import Config
from pyrovae.data import load_dataset
from pyrovae.pixels import to_unit
from pyrovae.registry import build_vae
from pyrovae.train import Trainer, adam


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--z-dim", type=int, default=20)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = load_dataset("mnist5k")
    data = data.replace(train_images=data.train_images[: args.images], test_images=data.test_images[:100])
    config = Config(model="ladder", levels=args.levels, latent_dim=args.z_dim, conv_channels=args.width,
                    likelihood="bernoulli", image_shape=(1, 28, 28))
    vae = build_vae(config)
    trainer = Trainer(vae, data, batch_size=args.batch_size)
    hand = build_vae(config)
    optimizer = adam(hand.parameters(), 1e-3)
    images = (to_unit(data.train_pixels, torch.float32) > 0.5).float()

    def hand_step(x):
        features = hand.guide.encoder(x)
        kl = torch.zeros(len(x))

        def on_posterior(i, q, p):
            nonlocal kl
            z = q.rsample()
            kl = kl + q.log_prob(z) - p.log_prob(z)
            return z

        out = hand.top_down.descend(None, features, on_posterior=on_posterior)
        loss = -(hand.likelihood(out).log_prob(x) - kl).sum() / len(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def pyrovae_epoch():
        return trainer.run_epoch(progress=False).seconds

    def hand_epoch():
        start = time.perf_counter()
        for i in range(0, len(images), args.batch_size):
            hand_step(images[i: i + args.batch_size])
        return time.perf_counter() - start

    ours, theirs = [], []
    for r in range(args.rounds):
        for run in (pyrovae_epoch, hand_epoch) if r % 2 == 0 else (hand_epoch, pyrovae_epoch):
            (ours if run is pyrovae_epoch else theirs).append(run())
    print(f"{torch.get_num_threads()} threads, {args.images} images, batch {args.batch_size}, width {args.width}, "
          f"{args.levels} levels of {args.z_dim} channels")
    print("pyrovae epoch seconds:", ", ".join(f"{s:.2f}" for s in ours))
    print("by hand epoch seconds:", ", ".join(f"{s:.2f}" for s in theirs))
    print(f"pyrovae / by hand (medians): {statistics.median(ours) / statistics.median(theirs):.3f}")


if __name__ == "__main__":
    main()
