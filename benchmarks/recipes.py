"""The recipes' plain-PyTorch reference, and the test log p(x) curve of a recipe's run.

``reference`` trains Tomczak & Welling's setup written out by hand in plain PyTorch, with
nothing from pyrovae but the data and the checkpoint file write (the same 50,000 / 10,000
split of the Fashion-MNIST training images, the same fixed binarization of the validation
and test images): two gated dense layers of 300 units each way, a 40-dimensional z with a
softplus standard deviation (pyrovae's parametrisation), a standard-normal prior or a
VampPrior with 500 pseudo-inputs started at training images, the KL weight rising step by
step over the warm-up, Adam at 5e-4, batches of 100, and early stopping on the validation
ELBO with the same rule as ``pyrovae train --patience``, after the same ``--lr-drops`` (the
learning rate cut tenfold at the first plateaus). The prior's log-density is
written the way the VampPrior code writes it (every z against every component, broadcast).
It prints one line per epoch and, at the end, the best-validation epoch's test ELBO and
log p(x). With ``--checkpoint`` it saves after every epoch and, run again, resumes
bit-exactly where it stopped.

``side-by-side`` times pyrovae's Trainer and the reference on the same recipe for a few
epochs, alternating them so that machine noise hits both alike.

``curve`` scores checkpoint files (copies of a run's kept checkpoints, one every N epochs)
with k importance samples, for the curve the docs show when a run is cut short.

    python benchmarks/recipes.py reference --prior vamp --checkpoint runs/reference-vamp.pt
    python benchmarks/recipes.py side-by-side --prior standard_normal --epochs 3
    python benchmarks/recipes.py curve snapshots/vae-*.pt -k 5000 --num-images 1000
"""

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.checkpoint import atomic_write
from pyrovae.data import load_dataset, spread_subset
from pyrovae.train import prepare_test_images

VALIDATION_SIZE = 10_000


class GatedDense(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.h, self.g = nn.Linear(n_in, n_out), nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.h(x) * torch.sigmoid(self.g(x))


class ReferenceRecipeVAE(nn.Module):
    """Gated MLP encoder and decoder, Bernoulli pixels, N(0, I) or VampPrior."""

    def __init__(self, latent_dim=40, hidden=(300, 300), pixels=784, pseudo_inputs=0, init_images=None):
        super().__init__()
        widths = (pixels,) + tuple(hidden)
        self.encoder = nn.Sequential(*[GatedDense(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.loc_head, self.scale_head = nn.Linear(hidden[-1], latent_dim), nn.Linear(hidden[-1], latent_dim)
        widths = (latent_dim,) + tuple(reversed(hidden))
        self.decoder = nn.Sequential(*[GatedDense(a, b) for a, b in zip(widths[:-1], widths[1:])],
                                     nn.Linear(hidden[0], pixels))
        self.pseudo_inputs = None
        if pseudo_inputs:
            start = init_images[torch.randperm(len(init_images))[:pseudo_inputs]].flatten(1).clamp(0.05, 0.95)
            self.pseudo_inputs = nn.Parameter(torch.logit(start))

    def encode(self, x):
        h = self.encoder(x.flatten(-3) if x.dim() > 2 else x)
        return self.loc_head(h), F.softplus(self.scale_head(h)) + 1e-3

    def log_prior(self, z):
        if self.pseudo_inputs is None:
            return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        loc, scale = self.encode(torch.sigmoid(self.pseudo_inputs))  # (K, D)
        log_components = torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1)  # (..., K)
        return torch.logsumexp(log_components, -1) - math.log(len(loc))

    def log_px(self, x, z):
        logits = self.decoder(z)
        return -F.binary_cross_entropy_with_logits(logits, x.flatten(1).expand_as(logits), reduction="none").sum(-1)

    def terms(self, x):
        """log p(x|z) and log q(z|x) - log p(z) of one sample per image."""
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn_like(loc)
        kl = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1) - self.log_prior(z)
        return self.log_px(x, z), kl


@torch.no_grad()
def elbo(model, images, batch_size=1000):
    """Mean ELBO per image (one sample each; the KL as pyrovae scores it: closed form for N(0, I))."""
    total = 0.0
    for x in images.split(batch_size):
        log_px, kl = model.terms(x)
        if model.pseudo_inputs is None:  # the closed form, like pyrovae's elbo_terms
            loc, scale = model.encode(x)
            kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum(-1)
        total += (log_px - kl).sum().item()
    return total / len(images)


@torch.no_grad()
def log_likelihood(model, images, num_samples=5000, rows=50_000):
    per_chunk = max(1, rows // num_samples)
    total = 0.0
    for x in images.split(per_chunk):
        loc, scale = model.encode(x)
        z = loc + scale * torch.randn(num_samples, *loc.shape)
        log_w = (model.log_px(x, z) + model.log_prior(z)
                 - torch.distributions.Normal(loc, scale).log_prob(z).sum(-1))
        total += (torch.logsumexp(log_w, 0) - math.log(num_samples)).sum().item()
    return total / len(images)


class Recipe:
    """The data and schedule of a recipe, shared by both implementations."""

    def __init__(self, prior, batch_size=100, lr=5e-4, warmup=100, patience=50, seed=0, lr_drops=1,
                 lr_drop_factor=0.1):
        data = load_dataset("fashion-mnist").with_validation(VALIDATION_SIZE)
        self.train_images = data.train_images
        self.validation = prepare_test_images(data.validation_images, binary=True)
        self.test = prepare_test_images(data.test_images, binary=True)
        self.prior, self.batch_size, self.lr, self.warmup, self.patience, self.seed = \
            prior, batch_size, lr, warmup, patience, seed
        self.lr_drops, self.lr_drop_factor = lr_drops, lr_drop_factor

    def reference(self):
        torch.manual_seed(self.seed)
        model = ReferenceRecipeVAE(pseudo_inputs=500 if self.prior == "vamp" else 0, init_images=self.train_images)
        return model, torch.optim.Adam(model.parameters(), lr=self.lr)

    def reference_epoch(self, model, optimizer, epoch):
        """One epoch (``epoch`` epochs done before it); returns minus the mean objective."""
        model.train()
        batches = torch.randperm(len(self.train_images)).split(self.batch_size)
        total = 0.0
        for step, index in enumerate(batches):
            weight = min(1.0, (epoch + (step + 1) / len(batches)) / self.warmup) if self.warmup else 1.0
            x = torch.bernoulli(self.train_images[index])
            log_px, kl = model.terms(x)
            loss = -(log_px - weight * kl).sum()
            optimizer.zero_grad(set_to_none=True)
            (loss / len(index)).backward()
            optimizer.step()
            total += loss.detach()
        return -float(total) / len(self.train_images)

    def pyrovae(self):
        from pyrovae.config import Config
        from pyrovae.data import ImageData
        from pyrovae.registry import build_elbo, build_vae
        from pyrovae.train import Trainer

        config = Config(net="gated", hidden_dims=(300, 300), latent_dim=40, prior=self.prior, warmup_epochs=self.warmup,
                        lr=self.lr, batch_size=self.batch_size, seed=self.seed)
        torch.manual_seed(self.seed)
        vae = build_vae(config, init_images=self.train_images)
        data = ImageData("fashion-mnist", "memory", self.train_images, torch.zeros(len(self.train_images)),
                         self.test, torch.zeros(len(self.test)))
        return Trainer(vae, data, batch_size=self.batch_size, lr=self.lr, elbo=build_elbo(config),
                       warmup_epochs=self.warmup)


def reference(args):
    recipe = Recipe(args.prior, seed=args.seed, lr_drops=args.lr_drops)
    model, optimizer = recipe.reference()
    state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "seconds": 0.0, "cuts": [],
             "best_state": copy.deepcopy(model.state_dict())}  # kept if no epoch scores a finite ELBO
    if args.checkpoint and args.checkpoint.exists():
        state = torch.load(args.checkpoint, weights_only=True)
        model.load_state_dict(state.pop("model"))
        optimizer.load_state_dict(state.pop("optimizer"))
        torch.set_rng_state(state.pop("rng"))
        state.setdefault("cuts", [])  # a checkpoint from before the learning-rate drops
        print(f"resuming after epoch {state['epoch']}", file=sys.stderr, flush=True)
    started = time.perf_counter() - state["seconds"]
    while state["epoch"] < args.epochs:
        if plateau(state, recipe):
            if len(state["cuts"]) == recipe.lr_drops:
                break
            state["cuts"].append(state["epoch"])
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * recipe.lr_drop_factor ** len(state["cuts"])
        epoch = state["epoch"]
        train = recipe.reference_epoch(model, optimizer, epoch)
        model.eval()
        validation = elbo(model, recipe.validation)
        state["epoch"], state["seconds"] = epoch + 1, time.perf_counter() - started
        if validation > state["best"]:
            state.update(best=validation, best_epoch=epoch + 1, best_state=copy.deepcopy(model.state_dict()))
        if args.checkpoint:  # the epoch is only reported once it would survive an interruption
            snapshot = {**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "rng": torch.get_rng_state()}
            atomic_write(args.checkpoint, lambda f: torch.save(snapshot, f))
        print(json.dumps({"epoch": epoch + 1, "train_elbo": train, "validation_elbo": validation,
                          "seconds": state["seconds"], "lr": optimizer.param_groups[0]["lr"]}), flush=True)
    model.load_state_dict(state["best_state"])
    torch.manual_seed(0)
    test_elbo = elbo(model.eval(), recipe.test)
    score = log_likelihood(model, recipe.test, args.num_samples)
    print(json.dumps({"best_epoch": state["best_epoch"], "epochs": state["epoch"], "seconds": state["seconds"],
                      "test_elbo": test_elbo, "test_log_px": score, "k": args.num_samples}))


def plateau(state, recipe):
    """``pyrovae train --patience``'s rule: ``patience`` epochs after the warm-up, the best epoch and the
    last learning-rate cut brought no better one (cut the rate while ``--lr-drops`` allow, then stop)."""
    return state["epoch"] - max(state["best_epoch"], math.ceil(recipe.warmup), *state["cuts"]) >= recipe.patience


def side_by_side(args):
    """Epoch times of pyrovae and the reference, alternating A B B A ..."""
    recipe = Recipe(args.prior, seed=args.seed)
    trainer = recipe.pyrovae()
    model, optimizer = recipe.reference()
    times = {"pyrovae": [], "reference": []}
    order = ["pyrovae", "reference"]
    for epoch in range(args.epochs):
        for name in order:
            started = time.perf_counter()
            if name == "pyrovae":  # its training time, without the test scoring run_epoch adds
                trainer.run_epoch(progress=False)
                value, seconds = trainer.history[-1].train_elbo, trainer.history[-1].seconds
            else:
                value = recipe.reference_epoch(model, optimizer, epoch)
                seconds = time.perf_counter() - started
            times[name].append(seconds)
            print(f"epoch {epoch + 1} {name:9s} train objective {value:9.2f}  {times[name][-1]:6.1f} s", flush=True)
        order.reverse()
    ratio = sum(times["pyrovae"]) / sum(times["reference"])
    print(json.dumps({"prior": args.prior, "epochs": args.epochs, "pyrovae_seconds": times["pyrovae"],
                      "reference_seconds": times["reference"], "ratio": ratio}))


def curve(args):
    from pyrovae.config import Config
    from pyrovae.evaluation import log_likelihood as pyrovae_log_likelihood
    from pyrovae.registry import build_vae

    test = prepare_test_images(load_dataset("fashion-mnist").test_images, binary=True)
    test = test[spread_subset(args.num_images, len(test))]
    states = {path: torch.load(path, map_location="cpu", weights_only=False) for path in args.checkpoints}
    # By prior, then epoch: the shell's order would put epoch 100 before 25, and best.pt anywhere.
    for path, state in sorted(states.items(), key=lambda item: (item[1]["config"]["prior"], item[1]["epoch"])):
        vae = build_vae(Config.from_dict(state["config"]))
        vae.load_state_dict(state["model"])
        started = time.perf_counter()
        score = pyrovae_log_likelihood(vae.eval(), test, num_samples=args.num_samples)
        print(json.dumps({"checkpoint": path.name, "epoch": state["epoch"], "images": len(test), "k": args.num_samples,
                          "test_log_px": score, "seconds": time.perf_counter() - started}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("reference", "side-by-side"):
        command = commands.add_parser(name)
        command.add_argument("--prior", choices=("standard_normal", "vamp"), default="standard_normal")
        command.add_argument("--epochs", type=int, default=2000 if name == "reference" else 3)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("-k", "--num-samples", type=int, default=5000)
    commands.choices["reference"].add_argument(
        "--checkpoint", type=Path, help="save after every epoch and resume from this file if it exists")
    commands.choices["reference"].add_argument(
        "--lr-drops", type=int, default=1, help="learning-rate cuts before early stopping, as the recipes' lr-drops")
    command = commands.add_parser("curve")
    command.add_argument("checkpoints", type=Path, nargs="+")
    command.add_argument("-k", "--num-samples", type=int, default=5000)
    command.add_argument("--num-images", type=int, default=1000)
    args = parser.parse_args(argv)
    {"reference": reference, "side-by-side": side_by_side, "curve": curve}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
