"""One writer per run directory.

Training (new, ``--overwrite`` or ``--resume``) holds an advisory lock on the run directory
itself (``flock`` on the directory, which cannot be deleted, replaced or redirected while it
holds files) for as long as it writes the run. The operating system releases it when the
process ends in any way, SIGKILL and power loss included, so a dead holder never blocks the
run. Beside it, ``RUN/.lock`` holds the holder's pid and host, which the refusal names: it
is only a note, written by replacing it (never through a link, never by opening a FIFO),
and deleting or swapping it changes nothing. Readers (evaluate, sample, plot) take no lock:
every file is replaced atomically, so they always read whole files.
"""

import json
import os
import socket
import stat
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from pyrovae.errors import RunInUseError, StorageError, describe_os_error

__all__ = ["RunLock", "LOCK_FILE"]

LOCK_FILE = ".lock"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

if sys.platform != "win32":
    import fcntl

    def _open_directory(path: Path) -> int:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)

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

    def _open_directory(path: Path) -> int:  # Windows cannot lock a directory: a file in it
        return os.open(path / ".lock-win", os.O_RDWR | os.O_CREAT, 0o666)

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
    :raises StorageError: if the directory cannot be opened (gone, no permission).
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd = None

    def holder(self) -> str:
        """The recorded holder, in words (``process 123 on host, since 2026-11-21 10:00:00``)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return "another process"
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "another process"
            info = json.loads(os.read(fd, 4096))
            return f"process {int(info['pid'])} on {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"
        finally:
            os.close(fd)

    def acquire(self) -> "RunLock":
        try:
            fd = _open_directory(self.run_dir)
        except OSError as e:
            raise StorageError(f"Cannot lock the run directory {self.run_dir}: {describe_os_error(e)}.") from None
        if not _try_lock(fd):
            os.close(fd)
            raise RunInUseError(f"Run directory {self.run_dir} is being written by {self.holder()}; wait for "
                                "it to finish or stop it (Ctrl-C) first.")
        self._fd = fd
        self._write_note()
        return self

    def _write_note(self) -> None:
        """Replace ``.lock`` with the holder's note (a new file renamed over whatever was there)."""
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().isoformat(" ", "seconds")}
        try:
            handle, name = tempfile.mkstemp(dir=self.run_dir, prefix=".lock.", suffix=".tmp")
            with os.fdopen(handle, "w") as f:
                f.write(json.dumps(info) + "\n")
            os.replace(name, self.path)
        except OSError:
            pass  # the lock holds without the note; only the refusal's wording suffers

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
