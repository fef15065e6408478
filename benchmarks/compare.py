"""Train pyrovae and the plain-PyTorch reference VAE side by side and compare quality and speed.

Both get the same data already in memory on the same device, the same architecture
(784-400-20 MLP, Bernoulli on dynamically binarized pixels), Adam at 1e-3, batch 128 and
the same seed. Their epochs alternate (A B B A ...) so that machine noise hits both alike.
Both are scored on the same fixed binarization of the test set.

    python benchmarks/compare.py --dataset fashion-mnist --epochs 10 --num-samples 1000
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import ReferenceVAE, test_elbo, test_log_likelihood, train_epoch  # noqa: E402

from pyrovae.config import Config  # noqa: E402
from pyrovae.data import load_dataset  # noqa: E402
from pyrovae.evaluation import evaluate  # noqa: E402
from pyrovae.registry import build_vae  # noqa: E402
from pyrovae.train import Trainer, prepare_test_images  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples per test image")
    parser.add_argument("--test-images", type=int, default=None, help="score only the first N test images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    data = load_dataset(args.dataset, args.data_dir)
    train_images = data.train_images.to(device)
    test_images = prepare_test_images(data.test_images, binary=True)[: args.test_images].to(device)

    torch.manual_seed(args.seed)
    vae = build_vae(Config(dataset=data.name)).to(device)
    trainer = Trainer(vae, data, batch_size=args.batch_size, lr=1e-3)
    torch.manual_seed(args.seed)
    reference = ReferenceVAE().to(device)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)

    seconds = {"pyrovae": [], "reference": []}

    def run_pyrovae():
        metrics = trainer.run_epoch(args.epochs, progress=False)
        seconds["pyrovae"].append(metrics.seconds)
        return metrics.train_elbo

    def run_reference():
        _sync(device)
        start = time.perf_counter()
        elbo = train_epoch(reference, optimizer, train_images, args.batch_size)
        seconds["reference"].append(time.perf_counter() - start)
        return elbo

    print(f"{data!r} on {device} ({torch.get_num_threads()} threads), {args.epochs} epochs", flush=True)
    for epoch in range(args.epochs):
        order = (run_pyrovae, run_reference) if epoch % 2 == 0 else (run_reference, run_pyrovae)
        for run in order:
            run()
        print(f"epoch {epoch + 1}: pyrovae {seconds['pyrovae'][-1]:.2f}s, reference {seconds['reference'][-1]:.2f}s",
              flush=True)

    start = time.perf_counter()
    ours = evaluate(vae, test_images, num_samples=args.num_samples)
    ours_eval = time.perf_counter() - start
    start = time.perf_counter()
    theirs = {"elbo": test_elbo(reference, test_images),
              "log_likelihood": test_log_likelihood(reference, test_images, args.num_samples)}
    theirs_eval = time.perf_counter() - start

    med = {name: statistics.median(s) for name, s in seconds.items()}
    result = {
        "dataset": data.name, "device": str(device), "epochs": args.epochs, "batch_size": args.batch_size,
        "num_samples": args.num_samples, "test_images": len(test_images),
        "pyrovae": {"test_elbo": ours.elbo, "log_likelihood": ours.log_likelihood,
                    "seconds_per_epoch": med["pyrovae"], "eval_seconds": ours_eval},
        "reference": {"test_elbo": theirs["elbo"], "log_likelihood": theirs["log_likelihood"],
                      "seconds_per_epoch": med["reference"], "eval_seconds": theirs_eval},
        "time_ratio": med["pyrovae"] / med["reference"],
    }
    print()
    print(f"| | test ELBO | log p(x), k={args.num_samples} | s/epoch (median) |")
    print("| --- | --- | --- | --- |")
    for name in ("pyrovae", "reference"):
        r = result[name]
        print(f"| {name} | {r['test_elbo']:.2f} | {r['log_likelihood']:.2f} | {r['seconds_per_epoch']:.3f} |")
    print(f"\nseconds per epoch, pyrovae / reference: {result['time_ratio']:.3f} "
          f"({len(test_images)} test images, {data.name}, {device})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
