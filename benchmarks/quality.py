"""The quality table: each family on dynamically binarized Fashion-MNIST, same epoch budget.

Each row trains with the pyrovae command shown and is scored by ``pyrovae evaluate`` on the
whole test set (binarized once with a fixed seed) with k importance samples per image.

    python benchmarks/quality.py --epochs 12 --num-samples 1000 --out runs/quality
"""

import argparse
import json
import time
from pathlib import Path

from pyrovae.config import Config
from pyrovae.data import load_dataset
from pyrovae.evaluation import evaluate
from pyrovae.run import load_run, train_run
from pyrovae.train import prepare_test_images

ROWS = [
    ("plain VAE", {}, ""),
    ("+ KL warm-up", {"warmup_epochs": 5}, "--warmup 5"),
    ("+ IAF guide", {"guide": "iaf", "num_flows": 2}, "--guide iaf --flows 2"),
    ("+ VampPrior", {"prior": "vamp", "num_pseudo_inputs": 500}, "--prior vamp --pseudo-inputs 500"),
    ("IWAE objective", {"elbo": "iwae", "num_particles": 5}, "--elbo iwae --particles 5"),
    ("VampPrior + IWAE + warm-up", {"prior": "vamp", "elbo": "iwae", "num_particles": 5, "warmup_epochs": 5},
     "--prior vamp --elbo iwae --particles 5 --warmup 5"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--only", default=None, help="run only the rows whose name contains this")
    args = parser.parse_args(argv)
    test = prepare_test_images(load_dataset("fashion-mnist").test_images, binary=True)
    results = []
    for name, options, flags in ROWS:
        if args.only and args.only not in name:
            continue
        run_dir = args.out / name.replace(" ", "_").replace("+", "plus")
        started = time.perf_counter()
        result = train_run(Config(dataset="fashion-mnist", num_epochs=args.epochs, **options), run_dir,
                           overwrite=True, progress=False)
        train_seconds = time.perf_counter() - started
        _, vae, _ = load_run(run_dir)
        started = time.perf_counter()
        scores = evaluate(vae, test, num_samples=args.num_samples)
        curve = [m.test_elbo for m in result.history]
        row = {"name": name, "command": f"pyrovae train --dataset fashion-mnist --epochs {args.epochs} {flags}".strip(),
               "test_elbo": scores.elbo, "log_likelihood": scores.log_likelihood, "kl": scores.kl,
               "curve": curve, "slope_last_3_epochs": (curve[-1] - curve[-4]) / 3 if len(curve) >= 4 else None,
               "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - started}
        results.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "quality.json").write_text(json.dumps(results, indent=2))
    print(f"\n| configuration | test ELBO | log p(x), k={args.num_samples} | test ELBO gain per epoch, last 3 |")
    print("| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['name']} | {r['test_elbo']:.2f} | {r['log_likelihood']:.2f} | {r['slope_last_3_epochs']:+.2f} |")


if __name__ == "__main__":
    main()
