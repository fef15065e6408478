"""Signals sent to a real ``pyrovae train`` process: nothing is lost, resumption is exact."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from pyrovae.config import Config
from pyrovae.run import load_run, train_run

PYROVAE = str(Path(sys.executable).with_name("pyrovae"))
SMALL_ARGS = ["--dataset", "mnist5k", "--z-dim", "4", "--hidden", "64", "--batch-size", "100", "--seed", "3"]


def start(*args):
    return subprocess.Popen([PYROVAE, "train", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(process, prefix):
    for line in process.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"the process ended before printing {prefix!r}: {process.stderr.read()}")


def metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_sigint_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    run = tmp_path / "interrupted"
    process = start(*SMALL_ARGS, "--epochs", 500, "--run-dir", run)
    try:
        wait_for_line(process, "epoch   2")
        time.sleep(0.05)  # land somewhere inside epoch 3 or later, between two steps
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err  # as a shell reports Ctrl-C: `train && evaluate` stops here
    assert f"Interrupted; checkpoint saved. Resume with: pyrovae train --resume {run}" in out
    stopped = load_run(run)[2]
    total = stopped["epoch"] + 2

    resumed = subprocess.run([PYROVAE, "train", "--resume", str(run), "--epochs", str(total)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming at epoch {stopped['epoch'] + 1} of {total}" in resumed.stdout

    straight = tmp_path / "straight"
    train_run(Config(dataset="mnist5k", latent_dim=4, hidden_dims=(64,), batch_size=100, seed=3,
                     num_epochs=total), straight, progress=False)
    assert metrics(run) == metrics(straight)
    a, b = load_run(run)[1].state_dict(), load_run(straight)[1].state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_repeated_sigkill_while_another_process_evaluates_the_run_loses_nothing(tmp_path):
    """A week-long run's worst afternoon: training killed at random moments and resumed, again
    and again, while a second process keeps evaluating the same run. Large weights and 4
    steps per epoch make checkpoint writes fill much of each epoch, so kills often land inside
    one. Every kill leaves a loadable checkpoint; every evaluation either scores a whole
    checkpoint or says in one sentence why it cannot yet; no restart is blocked by a dead
    process's lock; no epoch is lost or repeated."""
    import threading

    run = tmp_path / "run"
    rng = random.Random(0)
    evaluations, stop, epochs_seen = [], threading.Event(), []

    def evaluate_repeatedly():
        while not stop.is_set():
            done = subprocess.run([PYROVAE, "evaluate", str(run), "-k", "2", "--num-images", "20"],
                                  capture_output=True, text=True, timeout=120)
            evaluations.append(done)

    evaluator = threading.Thread(target=evaluate_repeatedly)
    evaluator.start()
    try:
        for attempt in range(6):
            args = ["--resume", run, "--epochs", 10_000] if attempt else [
                "--dataset", "mnist5k", "--hidden", "1024", "--batch-size", "1000", "--epochs", 10_000,
                "--keep-checkpoints", 2, "--run-dir", run]
            process = start(*args)
            try:
                wait_for_line(process, "epoch")
                time.sleep(rng.uniform(0.0, 1.5))
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=60)
            finally:
                process.kill()
            config, vae, state = load_run(run)
            epochs_seen.append(state["epoch"])
            assert all(torch.isfinite(p).all() for p in vae.parameters())
            assert len(list((run / "checkpoints").glob("epoch_*.pt"))) <= 2
            assert len(metrics(run)) >= state["epoch"] - 1  # metrics are written right after the checkpoint
    finally:
        stop.set()
        evaluator.join(timeout=300)
    assert epochs_seen == sorted(epochs_seen) and epochs_seen[-1] > epochs_seen[0]
    assert len(evaluations) >= 2
    for done in evaluations:
        assert "Traceback" not in done.stderr, done.stderr
        if done.returncode:  # before the first checkpoint only
            assert done.returncode == 2 and done.stderr.count("Error:") == 1, done.stderr
    assert any(done.returncode == 0 for done in evaluations)
    finished = subprocess.run([PYROVAE, "train", "--resume", str(run), "--epochs", str(epochs_seen[-1] + 1)],
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert not list(run.rglob(".*.tmp")), "temporaries of killed writes are cleaned up on resume"
    assert [m["epoch"] for m in metrics(run)] == list(range(1, epochs_seen[-1] + 2))
