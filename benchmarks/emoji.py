"""pyrovae against a plain-PyTorch conv VAE on the colour emoji set, in bits per dimension.

Both get the same 3,407 training and 379 test images (3x64x64, 8-bit, transparency on
white), the same layers (four stride-2 convolutions each way, a 256-unit layer, z of 20),
the same discretized logistic likelihood (written independently on each side), Adam at
1e-3, batch 128 and the same seed. Epochs alternate (A B B A ...) so machine noise hits both
alike; log p(x) uses k importance samples on every test image.

    python benchmarks/emoji.py --epochs 30 --num-samples 100 --figure docs/images/emoji.png
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import ReferenceConvVAE, conv_test_log_likelihood, train_conv_epoch  # noqa: E402

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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--figure", type=Path, default=None, help="write pyrovae's samples and reconstructions here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    data = load_dataset("emoji")
    train_images, test_images = data.train_images.to(device), data.test_images.to(device)
    config = Config(net="conv", likelihood="dlogistic", hidden_dims=(256,), image_shape=data.image_shape,
                    dataset="emoji")

    torch.manual_seed(args.seed)
    vae = build_vae(config).to(device)
    trainer = Trainer(vae, data, batch_size=args.batch_size, lr=1e-3)
    torch.manual_seed(args.seed)
    reference = ReferenceConvVAE().to(device)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    seconds = {"pyrovae": [], "reference": []}

    def run_pyrovae():
        seconds["pyrovae"].append(trainer.run_epoch(args.epochs, progress=False).seconds)

    def run_reference():
        _sync(device)
        start = time.perf_counter()
        train_conv_epoch(reference, optimizer, train_images, args.batch_size)
        _sync(device)
        seconds["reference"].append(time.perf_counter() - start)

    print(f"{data!r} on {device} ({torch.get_num_threads()} threads), {args.epochs} epochs", flush=True)
    for epoch in range(args.epochs):
        for run in (run_pyrovae, run_reference) if epoch % 2 == 0 else (run_reference, run_pyrovae):
            run()
        print(f"epoch {epoch + 1}: pyrovae {seconds['pyrovae'][-1]:.2f}s (test ELBO "
              f"{trainer.history[-1].test_elbo:.1f}), reference {seconds['reference'][-1]:.2f}s", flush=True)

    ours = evaluate(vae.eval(), test_images, num_samples=args.num_samples, dataset="emoji")
    reference.eval()
    theirs = conv_test_log_likelihood(reference, test_images, args.num_samples)
    med = {name: statistics.median(s) for name, s in seconds.items()}
    result = {
        "dataset": data.name, "device": str(device), "epochs": args.epochs, "batch_size": args.batch_size,
        "num_samples": args.num_samples, "test_images": len(test_images),
        "pyrovae": {"log_likelihood": ours.log_likelihood, "bits_per_dim": ours.bits_per_dim,
                    "test_elbo": ours.elbo, "seconds_per_epoch": med["pyrovae"]},
        "reference": {"log_likelihood": theirs, "bits_per_dim": bits_per_dim(theirs, data.image_shape),
                      "seconds_per_epoch": med["reference"]},
        "time_ratio": med["pyrovae"] / med["reference"],
    }
    print(f"\n| | log p(x), k={args.num_samples} (nats) | bits/dim | s/epoch (median) |\n| --- | --- | --- | --- |")
    for name in ("pyrovae", "reference"):
        r = result[name]
        print(f"| {name} | {r['log_likelihood']:.1f} | {r['bits_per_dim']:.4f} | {r['seconds_per_epoch']:.2f} |")
    print(f"\nbits/dim difference {result['pyrovae']['bits_per_dim'] - result['reference']['bits_per_dim']:+.4f}; "
          f"seconds per epoch, pyrovae / reference: {result['time_ratio']:.3f} ({device})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.figure:
        _figure(vae, data.test_images, args.figure)
    return result


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
