"""pyrovae against a plain-PyTorch conv VAE on the colour emoji set, in bits per dimension.

Both get the same 3,407 training and 379 test images (3x64x64, 8-bit, transparency on
white), the same layers (four stride-2 convolutions each way, a 256-unit layer, z of 20),
the same discretized logistic likelihood (written independently on each side), Adam at
1e-3 and batch 128. Epochs alternate (A B B A ...) so machine noise hits both alike; log
p(x) uses k importance samples on every test image. One run's final bits/dim moves by
tenths from seed to seed (the test ELBO jumps between epochs), so both sides train with
each of several seeds and the means are compared.

    python benchmarks/emoji.py --epochs 20 --seeds 0 1 2 --num-samples 100 --figure docs/images/emoji.png
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import (ReferenceConvVAE, conv_negative_elbo, dlogistic_log_px, test_log_likelihood,  # noqa: E402
                       train_epoch)

from pyrovae.config import Config  # noqa: E402
from pyrovae.data import load_dataset, spread_subset  # noqa: E402
from pyrovae.evaluation import bits_per_dim, evaluate  # noqa: E402
from pyrovae.registry import build_vae  # noqa: E402
from pyrovae.train import Trainer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=100, help="importance samples per test image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--figure", type=Path, default=None, help="write pyrovae's samples and reconstructions here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    data = load_dataset("emoji")
    print(f"{data!r} on {device} ({torch.get_num_threads()} threads), {args.epochs} epochs, seeds {args.seeds}",
          flush=True)
    runs = [_pair(data, device, seed, args) for seed in args.seeds]
    summary = {}
    for name in ("pyrovae", "reference"):
        bits = [run[name]["bits_per_dim"] for run in runs]
        summary[name] = {"bits_per_dim": statistics.mean(bits), "sd": statistics.stdev(bits) if len(bits) > 1 else 0.0,
                         "seconds_per_epoch": statistics.median(s for run in runs for s in run[name]["seconds"])}
    result = {"dataset": data.name, "device": str(device), "epochs": args.epochs, "batch_size": args.batch_size,
              "num_samples": args.num_samples, "test_images": len(data.test_images), "runs": runs, **summary,
              "time_ratio": summary["pyrovae"]["seconds_per_epoch"] / summary["reference"]["seconds_per_epoch"]}
    print("\n| seed | pyrovae bits/dim | reference bits/dim |\n| --- | --- | --- |")
    for seed, run in zip(args.seeds, runs):
        print(f"| {seed} | {run['pyrovae']['bits_per_dim']:.4f} | {run['reference']['bits_per_dim']:.4f} |")
    print(f"| mean (sd) | {summary['pyrovae']['bits_per_dim']:.4f} ({summary['pyrovae']['sd']:.3f}) | "
          f"{summary['reference']['bits_per_dim']:.4f} ({summary['reference']['sd']:.3f}) |")
    difference = summary['pyrovae']['bits_per_dim'] - summary['reference']['bits_per_dim']
    print(f"\nmean bits/dim difference {difference:+.4f}; "
          f"seconds per epoch (median), pyrovae / reference: {result['time_ratio']:.3f} ({device})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _pair(data, device, seed, args):
    """Train pyrovae and the reference with one seed; their test log p(x) and epoch times."""
    train_images, test_images = data.train_images.to(device), data.test_images.to(device)
    config = Config(net="conv", likelihood="dlogistic", hidden_dims=(256,), image_shape=data.image_shape,
                    dataset="emoji", seed=seed)
    torch.manual_seed(seed)
    vae = build_vae(config).to(device)
    trainer = Trainer(vae, data, batch_size=args.batch_size, lr=1e-3)
    torch.manual_seed(seed)
    reference = ReferenceConvVAE().to(device)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    seconds = {"pyrovae": [], "reference": []}

    def run_pyrovae():
        seconds["pyrovae"].append(trainer.run_epoch(args.epochs, progress=False).seconds)

    def run_reference():
        _sync(device)
        start = time.perf_counter()
        train_epoch(reference, optimizer, train_images, args.batch_size, loss=conv_negative_elbo)
        _sync(device)
        seconds["reference"].append(time.perf_counter() - start)

    for epoch in range(args.epochs):
        for run in (run_pyrovae, run_reference) if epoch % 2 == 0 else (run_reference, run_pyrovae):
            run()
        print(f"seed {seed} epoch {epoch + 1}: pyrovae {seconds['pyrovae'][-1]:.2f}s (test ELBO "
              f"{trainer.history[-1].test_elbo:.1f}), reference {seconds['reference'][-1]:.2f}s", flush=True)
    ours = evaluate(vae.eval(), test_images, num_samples=args.num_samples, dataset="emoji")
    reference.eval()
    theirs = test_log_likelihood(reference, test_images, args.num_samples, rows=2048, log_px=dlogistic_log_px)
    if args.figure and seed == args.seeds[0]:
        _figure(vae, data.test_images, args.figure)
    return {"seed": seed,
            "pyrovae": {"log_likelihood": ours.log_likelihood, "bits_per_dim": ours.bits_per_dim,
                        "seconds": seconds["pyrovae"]},
            "reference": {"log_likelihood": theirs, "bits_per_dim": bits_per_dim(theirs, data.image_shape),
                          "seconds": seconds["reference"]}}


def _figure(vae, test_images, path):
    """Two panels: 32 decoded prior samples, and 16 test images above their reconstructions."""
    from pyrovae.run import save_grid

    samples = vae.sample(32, mean=True, z=vae.fixed_latents(32, 0)).cpu()
    originals = test_images[spread_subset(16, len(test_images))]
    reconstructions = vae.reconstruct(originals.to(vae.device)).cpu()
    rows = torch.cat([samples, torch.ones(8, *samples.shape[1:]), originals[:8], reconstructions[:8],
                      originals[8:], reconstructions[8:]])
    save_grid(rows, path, nrow=8)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
