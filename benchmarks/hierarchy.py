"""The top-down hierarchy (``--model ladder``) against one-level conv VAEs on the emoji set,
in bits per dimension: the best of the ``--candidates`` one-level conv VAEs closest to the
ladder's parameter count, and (``--with-large``) the one of benchmarks/emoji.py (3.5M parameters).

All train on the same 3,407 training images and are scored on the same 379 test images
(3x64x64, 8-bit, discretized logistic likelihood), with Adam at 1e-3, the same batch size and
epochs, the same KL warm-up, and the same seeds; the one-level candidates are the conv networks
(first-layer channels, hidden width) whose parameter counts come closest to the ladder's
(printed), each trained on every seed, and the best by mean bits/dim is the one compared (on
the test images: the choice favours the one-level side). log p(x) uses k importance samples
per test image, over every level for the ladder. The figure puts the models' samples
(temperature 1 and 0.7) side by side, with test images and their reconstructions.

    python benchmarks/hierarchy.py --epochs 4 --seeds 0 1 2 --num-samples 20 \\
        --figure docs/images/emoji-hierarchy.png --json hierarchy.json
"""

import argparse
import json
import statistics
from pathlib import Path

import torch
from torchvision.utils import make_grid

from pyrovae.config import Config
from pyrovae.data import load_dataset, spread_subset
from pyrovae.evaluation import evaluate
from pyrovae.registry import build_vae
from pyrovae.run import save_grid  # imported now: a library edited during a long run cannot break the figure
from pyrovae.train import Trainer


def parameters(vae) -> int:
    return sum(p.numel() for p in vae.parameters())


def one_level_grid(image_shape):
    """The one-level conv VAEs the candidates are drawn from: first-layer channels x hidden width."""
    return [Config(net="conv", likelihood="dlogistic", conv_channels=channels, hidden_dims=(hidden,),
                   image_shape=image_shape, dataset="emoji")
            for channels in (2, 3, 4, 6, 8, 12, 16, 24, 32) for hidden in (16, 32, 64, 128, 256)]


def configs(image_shape, levels: int, latent_channels: int, width: int, large: bool, candidates: int = 1):
    """The ladder, the ``candidates`` one-level conv VAEs of the closest sizes (``conv`` if one,
    else ``conv-CxH``), and (``large``) benchmarks/emoji.py's."""
    ladder = Config(model="ladder", net="conv", likelihood="dlogistic", conv_channels=width, levels=levels,
                    latent_dim=latent_channels, image_shape=image_shape, dataset="emoji")
    target = parameters(build_vae(ladder))
    closest = sorted(one_level_grid(image_shape), key=lambda c: abs(parameters(build_vae(c)) - target))[:candidates]
    chosen = {"ladder": ladder}
    for config in closest:
        chosen["conv" if candidates == 1 else f"conv-{config.conv_channels}x{config.hidden_dims[0]}"] = config
    if large:
        chosen["conv-large"] = Config(net="conv", likelihood="dlogistic", hidden_dims=(256,), image_shape=image_shape,
                                      dataset="emoji")
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0, help="KL warm-up epochs, both models")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--width", type=int, default=32, help="the ladder's feature maps")
    parser.add_argument("--with-large", action="store_true", help="also benchmarks/emoji.py's 3.5M-parameter conv VAE")
    parser.add_argument("--latent-channels", type=int, default=4, help="the ladder's channels per level")
    parser.add_argument("--num-samples", type=int, default=100, help="importance samples per test image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--candidates", type=int, default=1,
                        help="one-level conv VAEs of the sizes closest to the ladder's, the best compared")
    parser.add_argument("--only", choices=["conv", "ladder", "conv-large"], default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--figure", type=Path, default=None, help="write both models' samples here (first seed)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    data = load_dataset("emoji")
    chosen = configs(data.image_shape, args.levels, args.latent_channels, args.width,
                     args.with_large or args.only == "conv-large", args.candidates)
    if args.only:  # "conv": every one-level candidate
        chosen = {n: c for n, c in chosen.items() if n == args.only or (args.only == "conv" and _candidate(n))}
    sizes = {name: parameters(build_vae(config)) for name, config in chosen.items()}
    print(f"{data!r} on {device} ({torch.get_num_threads()} threads), {args.epochs} epochs, batch "
          f"{args.batch_size}, warm-up {args.warmup}, seeds {args.seeds}; parameters {sizes}", flush=True)
    results = {name: [] for name in chosen}
    trained = {}
    for seed in args.seeds:
        for name, config in chosen.items():
            torch.manual_seed(seed)
            vae = build_vae(config.replace(seed=seed)).to(device)
            trainer = Trainer(vae, data, batch_size=args.batch_size, lr=1e-3, warmup_epochs=args.warmup)
            for _ in range(args.epochs):
                m = trainer.run_epoch(args.epochs, progress=False)
                print(f"{name} seed {seed} epoch {m.epoch}: test ELBO {m.test_elbo:.1f} (KL {m.test_kl:.1f}"
                      f"{_level_kls(vae, data.test_images)}) {m.seconds:.1f}s", flush=True)
            score = evaluate(vae.eval(), data.test_images.to(device), num_samples=args.num_samples, dataset="emoji")
            seconds = statistics.median(m.seconds for m in trainer.history)
            results[name].append({"seed": seed, "bits_per_dim": score.bits_per_dim, "elbo": score.elbo,
                                  "kl": score.kl, "log_likelihood": score.log_likelihood, "seconds_per_epoch": seconds})
            print(f"{name} seed {seed}: {score.bits_per_dim:.4f} bits/dim (ELBO {score.elbo:.1f}, KL {score.kl:.1f})",
                  flush=True)
            if seed == args.seeds[0]:
                trained[name] = vae
    summary = {}
    print("\n| model | parameters | bits/dim, mean (sd) | seeds | seconds/epoch |\n| --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        bits = [r["bits_per_dim"] for r in runs]
        summary[name] = {"parameters": sizes[name], "bits_per_dim": statistics.mean(bits),
                         "sd": statistics.stdev(bits) if len(bits) > 1 else 0.0,
                         "seconds_per_epoch": statistics.median(r["seconds_per_epoch"] for r in runs)}
        print(f"| {name} | {sizes[name]:,} | {summary[name]['bits_per_dim']:.4f} ({summary[name]['sd']:.3f}) | "
              f"{', '.join(f'{b:.3f}' for b in bits)} | {summary[name]['seconds_per_epoch']:.1f} |")
    best = min((n for n in summary if _candidate(n)), key=lambda n: summary[n]["bits_per_dim"], default=None)
    if best is not None and sum(map(_candidate, summary)) > 1:
        print(f"\nBest one-level candidate: {best}, {summary[best]['parameters']:,} parameters, "
              f"{summary[best]['bits_per_dim']:.4f} bits/dim")
    if args.json:
        args.json.write_text(json.dumps({"epochs": args.epochs, "batch_size": args.batch_size, "device": str(device),
                                         "num_samples": args.num_samples, "best_one_level": best,
                                         "configs": {n: c.to_dict() for n, c in chosen.items()},
                                         "runs": results, "summary": summary}, indent=2))
    if args.figure:  # the ladder, the best candidate, and the large model if trained
        _figure({n: vae for n, vae in trained.items() if not _candidate(n) or n == best}, data.test_images, args.figure)
    return summary


def _level_kls(vae, test_images) -> str:
    """For a hierarchy: each level's KL on 200 test images, top first (where the code lives),
    with random numbers of its own: training goes on as without it."""
    if len(vae.latent_sites) == 1:
        return ""
    with torch.random.fork_rng(devices=[vae.device] if vae.device.type == "cuda" else []):
        kl = vae.kl_per_dimension(test_images[:200].to(vae.device)).split(list(vae.code_levels().values()))
    return "; " + ", ".join(f"{site} {float(part.sum()):.1f}" for site, part in zip(vae.latent_sites, kl))


def _candidate(name: str) -> bool:
    """Whether ``name`` is a one-level candidate of the ladder's size (not the large model)."""
    return name == "conv" or (name.startswith("conv-") and name != "conv-large")


def _figure(models: dict, test_images, path):
    """A column per model: 16 samples at temperature 1, 16 at 0.7, and 8 test images above their
    reconstructions."""
    originals = test_images[spread_subset(8, len(test_images))]
    panels = []
    for vae in models.values():
        torch.manual_seed(0)
        warm, cold = vae.sample(16), vae.sample(16, temperature=0.7)
        recon = vae.reconstruct(originals.to(vae.device)).cpu()
        rows = torch.cat([warm.cpu(), cold.cpu(), originals, recon])
        panels.append(make_grid(rows, nrow=8, padding=2, pad_value=1.0))
    gap = torch.ones(3, panels[0].shape[1], 16)
    picture = torch.cat([panels[0], gap, *panels[1:]], dim=2) if len(panels) > 1 else panels[0]
    save_grid(picture.unsqueeze(0), path, nrow=1)


if __name__ == "__main__":
    main()
