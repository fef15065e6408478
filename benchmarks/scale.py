"""Scale: host syncs per step, memory against data-set size, memory-mapped against in-memory
throughput, one epoch of a 1 GB set inside a 768 MiB memory cgroup, and bf16 against fp32.

Every figure of docs/benchmarks.md's "Scale" section comes from one of these commands:

    python benchmarks/scale.py flips /tmp/flips.npy          # 240,000 Fashion-MNIST images at 64x64, uint8
    python benchmarks/scale.py syncs                          # value reads per step and per epoch
    python benchmarks/scale.py memory /tmp/flips.npy          # peak RSS against data-set size
    python benchmarks/scale.py throughput /tmp/flips.npy      # stream / memory, alternated
    python benchmarks/scale.py cgroup /tmp/flips.npy          # one epoch under a 768 MiB cap (root)
    python benchmarks/scale.py bf16 --epochs 10               # fp32 against bf16, MLP and conv

Timings are ratios measured in one process, alternating the two sides, as BENCHMARKS.md asks.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pyrovae.config import Config
from pyrovae.data import load_dataset, load_images
from pyrovae.images import resize_images
from pyrovae.registry import build_vae
from pyrovae.train import Trainer

SIDE = 64
CGROUP = Path("/sys/fs/cgroup/memory/pyrovae-scale")


def flips(args):
    """The four flips (none, left-right, up-down, both) of each of Fashion-MNIST's 60,000
    training images, resized to 64x64, written as a uint8 .npy (N, 64, 64) chunk by chunk."""
    data = load_dataset("fashion-mnist", download=False)
    images = data.train_pixels  # uint8 (60000, 1, 28, 28)
    out = np.lib.format.open_memmap(args.output, mode="w+", dtype=np.uint8, shape=(4 * len(images), SIDE, SIDE))
    row = 0
    for chunk in images.split(2000):
        big = resize_images(chunk.float() / 255, SIDE).mul(255).round().to(torch.uint8)[:, 0]
        for flipped in (big, big.flip(-1), big.flip(-2), big.flip(-1, -2)):
            out[row:row + len(flipped)] = flipped.numpy()
            row += len(flipped)
    out.flush()
    print(json.dumps({"output": args.output, "images": row, "bytes": os.path.getsize(args.output)}))


def syncs(args):
    """Calls that hand a tensor's value to Python, in each step and in a whole epoch of 32
    steps on mnist5k with its test scoring, for in-memory and streamed data."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero", "aten.equal"}

    class Count(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func.overloadpacket) in reads:
                Count.count += 1
            return func(*args, **(kwargs or {}))

    data = load_dataset("mnist5k")
    result = {}
    for storage in ("memory", "stream"):
        torch.manual_seed(0)
        trainer = Trainer(build_vae(Config()), data, storage=storage)
        real, per_step = trainer._train_step, []

        def counted(*a, real=real, per_step=per_step):
            before = Count.count
            out = real(*a)
            per_step.append(Count.count - before)
            return out

        trainer._train_step = counted
        Count.count = 0
        with Count():
            trainer.run_epoch(progress=False)
        result[storage] = {"steps": len(per_step), "reads_in_steps": sum(per_step), "reads_per_epoch": Count.count}
    print(json.dumps(result))


def _subset(path, count):
    data = load_images(path, test_fraction=0.02)
    if count < len(data.train_pixels):
        data = data.replace(train_pixels=data.train_pixels.take(torch.arange(count)))
    return data


def _trainer(data, storage, hidden=400, batch_size=128):
    torch.manual_seed(0)
    config = Config(hidden_dims=(hidden,), latent_dim=20, image_shape=data.image_shape, likelihood="bernoulli")
    return Trainer(build_vae(config), data, batch_size=batch_size, storage=storage)


def _peak_of(command):
    """Peak RSS in MiB of a child process running ``command`` (this script, another mode)."""
    done = subprocess.run([sys.executable, __file__, *command], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _steps(trainer, steps):
    """Train ``steps`` steps of an epoch (stopping early), returning the seconds taken."""
    started = time.perf_counter()
    trainer.run_epoch(progress=False, should_stop=lambda: trainer.step >= steps)
    if trainer.step < steps:
        raise SystemExit("the epoch ended early")
    seconds = time.perf_counter() - started
    trainer.permutation = trainer.step_losses = None  # a fresh epoch next time
    return seconds


def peak(args):
    """(child) Load ``count`` images, build the trainer, take a few steps; print peak RSS."""
    data = _subset(args.path, args.count)
    trainer = _trainer(data, args.storage)
    _steps(trainer, 20)
    print(json.dumps({"count": args.count, "storage": args.storage, "streamed": trainer.streamed,
                      "data_mib": data.train_pixels.nbytes / 2**20,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory(args):
    rows = []
    for count in args.counts:
        for storage in ("memory", "stream"):
            rows.append(_peak_of(["peak", args.path, "--count", str(count), "--storage", storage]))
            print(json.dumps(rows[-1]), flush=True)
    float32 = [{"count": r["count"], "float32_mib": r["count"] * SIDE * SIDE * 4 / 2**20} for r in rows[::2]]
    print(json.dumps({"rows": rows, "float32_would_need": float32}))


def throughput(args):
    """Images per second of streamed (memory-mapped) against in-memory training on data that
    fits, rounds alternating which goes first."""
    data = _subset(args.path, args.count)
    trainers = {storage: _trainer(data, storage) for storage in ("memory", "stream")}
    seconds = {storage: [] for storage in trainers}
    for round_ in range(args.rounds):
        order = ("memory", "stream") if round_ % 2 == 0 else ("stream", "memory")
        for storage in order:
            seconds[storage].append(_steps(trainers[storage], args.steps))
    images = args.steps * 128
    rate = {s: images * len(v) / sum(v) for s, v in seconds.items()}
    print(json.dumps({"count": args.count, "steps_per_round": args.steps, "rounds": args.rounds,
                      "images_per_second": rate, "stream_over_memory": rate["stream"] / rate["memory"],
                      "threads": torch.get_num_threads()}))


def cgroup(args):
    """One epoch from the memory-mapped set as a child process inside a memory cgroup (v1)
    capped at ``--limit-mib``: the command a user would type."""
    CGROUP.mkdir(exist_ok=True)
    (CGROUP / "memory.limit_in_bytes").write_text(str(args.limit_mib << 20))
    for counter in ("memory.max_usage_in_bytes", "memory.failcnt"):  # counted afresh for this run
        try:
            (CGROUP / counter).write_text("0")
        except OSError:
            pass
    run_dir = Path(args.run_dir)
    command = [sys.executable, "-m", "pyrovae", "train", "--data", args.path, "--epochs", "1", "--hidden", "400",
               "--likelihood", "bernoulli", "--test-fraction", "0.02", "--run-dir", str(run_dir), "--overwrite",
               "--threads", str(args.threads)]

    def enter():
        (CGROUP / "cgroup.procs").write_text(str(os.getpid()))

    started = time.perf_counter()
    done = subprocess.run(command, preexec_fn=enter, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_bytes = int((CGROUP / "memory.max_usage_in_bytes").read_text())
    failcnt = int((CGROUP / "memory.failcnt").read_text())
    result = {"limit_mib": args.limit_mib, "exit": done.returncode, "seconds": round(seconds, 1),
              "peak_usage_mib": round(peak_bytes / 2**20, 1), "limit_hits": failcnt,
              "file_mib": round(os.path.getsize(args.path) / 2**20, 1),
              "float32_would_need_mib": round(os.path.getsize(args.path) * 4 / 2**20, 1),
              "stdout_tail": done.stdout.strip().splitlines()[-3:], "stderr_tail": done.stderr.strip()[-500:]}
    print(json.dumps(result))


def bf16(args):
    """fp32 and bf16 trainers of the same seed on Fashion-MNIST, epochs alternated: img/s and
    the test ELBO after ``--epochs`` epochs, for the MLP and the conv net."""
    data = load_dataset("fashion-mnist", download=False)
    if args.images:
        data = data.replace(train_pixels=data.train_pixels[: args.images])
    out = {}
    for net in args.nets:
        trainers = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            vae = build_vae(Config(net=net, hidden_dims=(400,), latent_dim=20))
            trainers[precision] = Trainer(vae, data, batch_size=128, precision=precision)
        seconds = {p: 0.0 for p in trainers}
        history = {p: [] for p in trainers}
        for epoch in range(args.epochs):
            order = ("fp32", "bf16") if epoch % 2 == 0 else ("bf16", "fp32")
            for precision in order:
                metrics = trainers[precision].run_epoch(progress=False)
                seconds[precision] += metrics.seconds
                history[precision].append(round(metrics.test_elbo, 2))
            print(net, epoch + 1, {p: history[p][-1] for p in history}, flush=True)
        images = args.epochs * len(data.train_pixels)
        rate = {p: images / s for p, s in seconds.items()}
        out[net] = {"images_per_second": rate, "bf16_over_fp32": rate["bf16"] / rate["fp32"],
                    "test_elbo": {p: h[-1] for p, h in history.items()},
                    "elbo_difference": history["bf16"][-1] - history["fp32"][-1]}
    print(json.dumps({"epochs": args.epochs, "threads": torch.get_num_threads(), **out}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("flips")
    p.add_argument("output")
    commands.add_parser("syncs")
    p = commands.add_parser("memory")
    p.add_argument("path")
    p.add_argument("--counts", type=int, nargs="+", default=[30000, 60000, 120000, 235200])
    p = commands.add_parser("peak")
    p.add_argument("path")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--storage", choices=("memory", "stream"), required=True)
    p = commands.add_parser("throughput")
    p.add_argument("path")
    p.add_argument("--count", type=int, default=60000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=6)
    p = commands.add_parser("cgroup")
    p.add_argument("path")
    p.add_argument("--limit-mib", type=int, default=768)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", default="/tmp/pyrovae-scale-run")
    p = commands.add_parser("bf16")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--nets", nargs="+", default=["mlp", "conv"])
    args = parser.parse_args(argv)
    {"flips": flips, "syncs": syncs, "memory": memory, "peak": peak, "throughput": throughput, "cgroup": cgroup,
     "bf16": bf16}[args.command](args)


if __name__ == "__main__":
    main()
