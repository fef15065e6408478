"""What each speed lever gives: milliseconds per training step, pyrovae against plain PyTorch.

Every loop trains on the same Fashion-MNIST images (batch 128 by default, data in memory,
dynamic binarization); rounds of ``--steps`` steps alternate between loops in one process
and medians are reported. The pyrovae rows add one lever at a time, from Pyro's textbook
path to what :class:`pyrovae.train.Trainer` does; levers that failed are listed with the
error they raised.

    python benchmarks/levers.py --rounds 8 --steps 100
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import ReferenceVAE, negative_elbo  # noqa: E402

from pyrovae.config import Config  # noqa: E402
from pyrovae.data import load_dataset  # noqa: E402
from pyrovae.objectives import Trace_ELBO  # noqa: E402
from pyrovae.registry import build_vae  # noqa: E402
from pyrovae._pyro import direct_call  # noqa: E402


def batches(images, batch_size):
    """An endless stream of freshly binarized batches from a random permutation."""
    while True:
        for index in torch.randperm(len(images), device=images.device).split(batch_size):
            if len(index) == batch_size:
                yield torch.bernoulli(images[index])


def reference_step(images, batch_size, hidden, fused):
    model = ReferenceVAE(hidden=hidden).to(images.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    stream = batches(images, batch_size)

    def step():
        x = next(stream)
        logits, loc, scale = model(x)
        loss = negative_elbo(logits, x, loc, scale)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(x)).backward()
        optimizer.step()

    return step


def pyro_step(images, batch_size, hidden, *, direct=False, no_end_syncs=False, fused=None, compiled=False, jit=False):
    torch.manual_seed(0)
    vae = build_vae(Config(hidden_dims=(hidden,))).to(images.device)
    if compiled:
        vae.model.decoder = torch.compile(vae.model.decoder)
        vae.guide.encoder = torch.compile(vae.guide.encoder)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=fused)
    # JitTrace_ELBO looks parameters up in Pyro's store, so it needs PyroModule calls (direct=False).
    elbo = pyro.infer.JitTrace_ELBO() if jit else Trace_ELBO() if no_end_syncs else pyro.infer.Trace_ELBO()
    model, guide = (direct_call(vae.model), direct_call(vae.guide)) if direct else (vae.model, vae.guide)
    stream = batches(images, batch_size)

    def step():
        loss = elbo.differentiable_loss(model, guide, next(stream))
        optimizer.zero_grad(set_to_none=True)
        (loss / batch_size).backward()
        optimizer.step()

    return step


def svi_step(images, batch_size, hidden, *, jit=False):
    """Pyro's textbook loop on pyrovae's model and guide: SVI.step with pyro.optim.Adam."""
    torch.manual_seed(0)
    vae = build_vae(Config(hidden_dims=(hidden,))).to(images.device)
    elbo = pyro.infer.JitTrace_ELBO() if jit else pyro.infer.Trace_ELBO()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    stream = batches(images, batch_size)
    return lambda: svi.step(next(stream))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the networks")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    images = load_dataset("fashion-mnist").train_images[:20000].to(device)
    b, h = args.batch_size, args.hidden
    candidates = {
        "plain PyTorch, torch's default Adam": lambda: reference_step(images, b, h, fused=None),
        "plain PyTorch, fused Adam": lambda: reference_step(images, b, h, fused=True),
        "Pyro Trace_ELBO through PyroModule calls, default Adam": lambda: pyro_step(images, b, h),
        "+ model and guide called directly": lambda: pyro_step(images, b, h, direct=True),
        "+ Trace_ELBO without its end-of-loss syncs": lambda: pyro_step(images, b, h, direct=True, no_end_syncs=True),
        "+ fused Adam (pyrovae's Trainer)": lambda: pyro_step(images, b, h, direct=True, no_end_syncs=True, fused=True),
        "SVI.step, Trace_ELBO, pyro.optim.Adam (the textbook loop, data in memory)": lambda: svi_step(images, b, h),
        "SVI.step, JitTrace_ELBO, pyro.optim.Adam": lambda: svi_step(images, b, h, jit=True),
        "JitTrace_ELBO through PyroModule calls, fused Adam": lambda: pyro_step(images, b, h, fused=True, jit=True),
    }
    if args.compile:
        candidates["+ torch.compile of encoder and decoder"] = lambda: pyro_step(
            images, b, h, direct=True, no_end_syncs=True, fused=True, compiled=True)
    loops, failed = {}, {}
    with pyro.validation_enabled(False):
        for label, make in candidates.items():
            try:
                loops[label] = make()
                for _ in range(20):  # untimed: first steps carry one-time costs (and compilation)
                    loops[label]()
            except Exception as error:  # a lever that does not work is reported, not fatal
                failed[label] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                loops.pop(label, None)
        times = {label: [] for label in loops}
        for r in range(args.rounds):
            for label in list(loops) if r % 2 == 0 else list(loops)[::-1]:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    loops[label]()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[label].append((time.perf_counter() - start) * 1000 / args.steps)
    base = statistics.median(times["plain PyTorch, torch's default Adam"])
    base_fused = statistics.median(times["plain PyTorch, fused Adam"])
    print(f"device: {name}; batch {b}, hidden {h}; medians of {args.rounds} alternated rounds of {args.steps} steps\n")
    print("| loop | ms / step | vs PyTorch (default Adam) | vs PyTorch (fused Adam) |")
    print("| --- | --- | --- | --- |")
    for label, values in times.items():
        ms = statistics.median(values)
        print(f"| {label} | {ms:.2f} | {ms / base:.2f}x | {ms / base_fused:.2f}x |")
    for label, error in failed.items():
        print(f"| {label} | failed: {error} | | |")


if __name__ == "__main__":
    main()
