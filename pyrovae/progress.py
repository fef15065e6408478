"""Progress of long work: a tqdm bar where a person watches (a terminal, a notebook), and
otherwise a line in the log every few seconds with what is done and an estimate of what is
left, so that a job's log shows that it is alive and when it will end."""

import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional

__all__ = ["watching", "progress", "LogProgress", "LOG_EVERY"]

# Seconds between two progress lines in a log (work shorter than this prints none).
LOG_EVERY = 10.0


def watching() -> bool:
    """Whether a person watches this process's output: stderr is a terminal, or a notebook runs it."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LogProgress:
    """Counts work done and writes ``desc: n/total unit (p%), rate, about T left`` to ``stream``
    at most every ``every`` seconds (default :data:`LOG_EVERY`); ``initial``: work done before it started."""

    def __init__(self, total: Optional[int], desc: str, unit: str, every: Optional[float] = None, stream=None,
                 initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.every = LOG_EVERY if every is None else every
        self.stream = stream or sys.stderr
        self.n = self.initial = initial
        self.started = self.last = time.monotonic()

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: Optional[float] = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = (self.n - self.initial) / elapsed
        plural = self.unit + ("es" if self.unit.endswith(("s", "x", "ch", "sh")) else "s")
        text = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {plural}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {rate:.3g} {self.unit}/s"
        if self.total and rate > 0:
            text += f", about {_duration((self.total - self.n) / rate)} left"
        return text

    def close(self) -> None:
        pass


@contextmanager
def progress(total: Optional[int], desc: str, unit: str = "image", enabled: Optional[bool] = None) -> Iterator:
    """A progress counter with ``update(n)``: a tqdm bar where a person watches, log lines
    every :data:`LOG_EVERY` seconds otherwise (``enabled`` True or None); nothing when
    ``enabled`` is False."""
    if enabled is False:
        yield LogProgress(total, desc, unit, every=float("inf"))
    elif watching():
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True) as bar:
            yield bar
    else:
        yield LogProgress(total, desc, unit)
