"""One writer per run directory.

Training (new, ``--overwrite`` or ``--resume``) holds an advisory lock on ``RUN/.lock`` for
as long as it writes the run. The operating system releases it when the process ends in any
way, SIGKILL and power loss included, so a dead holder never blocks the run; the file stays
behind, holding the last holder's pid and host, which the refusal names. Readers (evaluate,
sample, plot) take no lock: every file is replaced atomically, so they always read whole
files.
"""

import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

from pyrovae.errors import RunInUseError, StorageError, describe_os_error

__all__ = ["RunLock", "LOCK_FILE"]

LOCK_FILE = ".lock"

if sys.platform != "win32":
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

else:
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class RunLock:
    """The lock of one run directory, as a context manager::

        with RunLock(run_dir):
            ...  # write the run

    :raises RunInUseError: on entry, naming the holder, if another process holds it.
    :raises StorageError: if the lock file cannot be created (read-only, no permission).
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd = None

    def holder(self) -> str:
        """The recorded holder, in words (``process 123 on host, since 2026-11-21 10:00:00``)."""
        try:
            info = json.loads(self.path.read_text())
            return f"process {int(info['pid'])} on {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise StorageError(f"Cannot create the lock file {self.path}: {describe_os_error(e)}.") from None
        if not _try_lock(fd):
            os.close(fd)
            raise RunInUseError(f"Run directory {self.path.parent} is being written by {self.holder()}; wait for "
                                "it to finish or stop it (Ctrl-C) first.")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().isoformat(" ", "seconds")}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(info) + "\n").encode())
        except OSError:
            pass  # the lock holds without the note; only the refusal's wording suffers
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                _unlock(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
