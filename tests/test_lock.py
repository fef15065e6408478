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
