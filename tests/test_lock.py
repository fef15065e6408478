"""One writer per run directory: pyrovae.lock, and train/resume respecting it."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pyrovae.config import Config
from pyrovae.errors import ConfigError, RunInUseError
from pyrovae.lock import LOCK_FILE, RunLock
from pyrovae.run import resume_run, train_run

from conftest import SMALL_OPTIONS

HOLD = textwrap.dedent("""
    import sys, time
    from pyrovae.lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run."""
    run = tmp_path / "run"
    run.mkdir()
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield run, process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_with_the_holders_pid(holder):
    run, process = holder
    with pytest.raises(RunInUseError, match=f"being written by process {process.pid} on "):
        RunLock(run).acquire()
    with pytest.raises(RunInUseError, match=str(process.pid)):
        train_run(Config(**SMALL_OPTIONS), run, overwrite=True, progress=False)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE], "nothing written, nothing removed"


def test_a_killed_holder_leaves_no_lock_behind(holder):
    run, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run / LOCK_FILE).exists()  # the file stays; the lock went with the process
    with RunLock(run):
        assert f'"pid": {os.getpid()}' in (run / LOCK_FILE).read_text()
    RunLock(run).acquire().release()  # released on exit


def test_the_lock_is_released_when_training_ends_or_fails(tmp_path):
    run = tmp_path / "run"
    train_run(Config(**{**SMALL_OPTIONS, "num_epochs": 1}), run, progress=False)
    RunLock(run).acquire().release()
    with pytest.raises(ConfigError, match="has already trained for 1 epochs"):
        resume_run(run, 1, progress=False)  # already trained for 1 epoch: refused...
    RunLock(run).acquire().release()  # ...and the lock is free again


def test_resume_while_another_process_writes_is_refused(holder, trained_run, tmp_path):
    import shutil

    run, process = holder
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl"):
        shutil.copy(trained_run / name, run / name)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(RunInUseError, match=str(process.pid)):
        resume_run(run, 5, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_lock_note_that_is_a_symlink_is_replaced_not_followed(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "precious.txt"
    run.mkdir()
    outside.write_text("keep me")
    (run / LOCK_FILE).symlink_to(outside)
    with RunLock(run):
        assert outside.read_text() == "keep me"
        assert not (run / LOCK_FILE).is_symlink() and str(os.getpid()) in (run / LOCK_FILE).read_text()


def test_a_lock_note_that_is_a_fifo_never_blocks(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / LOCK_FILE)
    code = "import sys; from pyrovae.lock import RunLock; RunLock(sys.argv[1]).acquire(); print('held')"
    done = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "held", done.stderr


def _tamper(note, how: str, target) -> None:
    """Put something else where the (deleted) lock note was: nothing, another note, a link, a FIFO."""
    if how == "replace":
        note.write_text('{"pid": 1, "host": "elsewhere", "since": "never"}')
    elif how == "symlink":
        note.symlink_to(target)
    elif how == "fifo":
        os.mkfifo(note)


@pytest.mark.parametrize("tamper", ["delete", "replace", "symlink", "fifo"])
def test_tampering_with_the_note_does_not_let_a_second_writer_in(holder, tamper, tmp_path):
    run, process = holder
    (run / LOCK_FILE).unlink()
    _tamper(run / LOCK_FILE, tamper, tmp_path / "nowhere")
    with pytest.raises(RunInUseError, match="is being written by"):
        RunLock(run).acquire()


RACER = textwrap.dedent("""
    import os, sys, time
    from pyrovae.errors import RunInUseError
    from pyrovae.lock import RunLock
    run, owner, deadline = sys.argv[1], sys.argv[2], time.time() + float(sys.argv[3])
    held = clashes = 0
    while time.time() < deadline:
        try:
            lock = RunLock(run).acquire()
        except RunInUseError:
            continue
        try:
            fd = os.open(owner, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if the other writer is inside
        except FileExistsError:
            clashes += 1
        else:
            held += 1
            time.sleep(0.002)
            os.close(fd)
            os.unlink(owner)
        lock.release()
    print(held, clashes)
""")


def test_two_writers_never_hold_the_lock_together_while_an_adversary_swaps_the_note(tmp_path):
    """Two processes take and release the lock as fast as they can while this one deletes the
    note, replaces it, makes it a symlink and a FIFO: never are both inside at once."""
    import random
    import threading
    import time

    run = tmp_path / "run"
    run.mkdir()
    owner = tmp_path / "owner"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(run), str(owner), "4"], stdout=subprocess.PIPE,
                               text=True) for _ in range(2)]
    stop = threading.Event()

    def adversary():
        note, rng = run / LOCK_FILE, random.Random(0)
        while not stop.is_set():
            try:
                if note.exists() or note.is_symlink():
                    note.unlink()
                _tamper(note, rng.choice(["delete", "replace", "symlink", "fifo"]), tmp_path / "target")
            except OSError:
                pass
            time.sleep(0.001)

    thread = threading.Thread(target=adversary)
    thread.start()
    try:
        results = [tuple(map(int, racer.communicate(timeout=120)[0].split())) for racer in racers]
    finally:
        stop.set()
        thread.join()
    assert all(clashes == 0 for _, clashes in results), results
    assert all(held > 0 for held, _ in results), results
    assert not (tmp_path / "target").exists()  # no note was written through a link
