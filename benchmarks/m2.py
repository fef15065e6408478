"""M2 with few labels: the classifier's test accuracy against logistic regression on the same
labelled images, and whether conditional samples are of the asked class.

For each label count, M2 trains on all training images with only that many labels
(balanced over classes). A separate judge (an MLP trained on all labels, not part of any
model) then classifies 100 mean images drawn for each asked class; the agreement is the
fraction it assigns to the asked class.

    python benchmarks/m2.py --dataset fashion-mnist --labels 100,1000 --epochs 10 --z-dim 20
"""

import argparse
import json
import time

import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.config import Config
from pyrovae.data import load_dataset
from pyrovae.m2 import balanced_labels
from pyrovae.train import Trainer
from pyrovae.registry import build_elbo, build_vae


def accuracy(classify, images, labels, batch_size=2000) -> float:
    with torch.no_grad():
        hits = sum(int((classify(x).argmax(-1) == y).sum())
                   for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return hits / len(images)


def logistic_regression(images, labels, weight_decay=1e-3, steps=200):
    """Multinomial logistic regression on raw pixels, fitted to convergence with L-BFGS."""
    model = nn.Linear(images[0].numel(), 10)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    x = images.flatten(1)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), labels) + weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda images: model(images.flatten(1))


def train_judge(images, labels, epochs=8, seed=0):
    """An MLP classifier on every training label: the judge of conditional samples."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 512),
                          nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(images)).split(128):
            optimizer.zero_grad()
            F.cross_entropy(model(images[index]), labels[index]).backward()
            optimizer.step()
    model.eval()
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--labels", default="100,1000", help="comma-separated label counts, or 'all'")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--z-dim", type=int, default=20)
    parser.add_argument("--classifier-weight", type=float, default=50.0)
    parser.add_argument("--beta", type=float, default=1.0, help="weight of z's KL term in training")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset)
    judge = train_judge(data.train_images, data.train_labels)
    judge_accuracy = accuracy(judge, data.test_images, data.test_labels)
    print(f"judge (MLP on all {len(data.train_labels)} labels): test accuracy {judge_accuracy:.4f}", flush=True)
    rows = []
    for count in (None if c == "all" else int(c) for c in args.labels.split(",")):
        config = Config(model="m2", num_labels=count, dataset=data.name, latent_dim=args.z_dim,
                        classifier_weight=args.classifier_weight, beta=args.beta)
        visible = balanced_labels(data.train_labels, count, 10, config.seed)
        known = visible >= 0
        baseline = accuracy(logistic_regression(data.train_images[known], visible[known]),
                            data.test_images, data.test_labels)
        torch.manual_seed(config.seed)
        vae = build_vae(config)
        trainer = Trainer(vae, data, labels=visible, elbo=build_elbo(config), beta=config.beta)
        start = time.perf_counter()
        for _ in range(args.epochs):
            m = trainer.run_epoch(args.epochs, progress=False)
            print(f"  labels {count} epoch {m.epoch}: test ELBO {m.test_elbo:.2f}, "
                  f"accuracy {vae.accuracy(data.test_images, data.test_labels):.4f}", flush=True)
        vae.eval()
        n = args.samples_per_class
        agree = []
        for digit in range(10):
            torch.manual_seed(digit)
            samples = vae.sample(n, mean=True, label=digit)
            agree.append(int((judge(samples).argmax(-1) == digit).sum()))
        row = {"labels": count, "m2_accuracy": vae.accuracy(data.test_images, data.test_labels),
               "logistic_regression_accuracy": baseline, "judge_accuracy": judge_accuracy,
               "conditional_agreement": sum(agree) / (10 * n), "agreement_per_class": [a / n for a in agree],
               "test_elbo": m.test_elbo, "epochs": args.epochs, "z_dim": args.z_dim,
               "classifier_weight": args.classifier_weight, "beta": args.beta, "seconds": time.perf_counter() - start,
               "dataset": data.name}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| labels | M2 accuracy | logistic regression (same labels) | samples judged the asked class | test ELBO |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['labels']} | {100 * r['m2_accuracy']:.1f}% | {100 * r['logistic_regression_accuracy']:.1f}% | "
              f"{100 * r['conditional_agreement']:.1f}% | {r['test_elbo']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
