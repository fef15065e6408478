"""Training batches read from disk as they are needed: a background thread reads the images
of the next few steps from a memory-mapped set (or any images held on the host) while the
current step runs, so the step does not wait on the disk.

With several processes each reads only its own rows of each batch and places them in a
batch-sized tensor of zeros, so that the batch's binarization draws the same random numbers
on every rank as in one process (the other rows are never used).
"""

import queue
import threading
from typing import Optional

import torch

from pyrovae.pixels import Pixels

__all__ = ["BatchLoader", "DEPTH"]

# Batches read ahead of the step that uses them.
DEPTH = 4
_DONE = object()


class BatchLoader:
    """Reads the training images of an epoch's steps ahead, in order, on a background thread.

    :param pixels: the stored training images (indexable on the host).
    :param device: where the batches go (pinned host memory first, for a GPU).
    """

    def __init__(self, pixels: Pixels, device, batch_size: int, rank: int = 0, world_size: int = 1):
        self.pixels, self.device, self.batch_size = pixels, torch.device(device), batch_size
        self.rank, self.world_size = rank, world_size
        self._thread: Optional[threading.Thread] = None
        self._queue: "queue.Queue" = queue.Queue(DEPTH)
        self._stop = threading.Event()
        self._next = 0

    def start(self, order: torch.Tensor, first_step: int, num_steps: int) -> None:
        """Read the batches of steps ``first_step`` to ``num_steps - 1`` of the epoch whose
        image order (on the CPU) is ``order``."""
        self.stop()
        self._stop.clear()
        self._queue = queue.Queue(DEPTH)
        self._next = first_step
        self._thread = threading.Thread(target=self._read, args=(order, first_step, num_steps, self._queue),
                                        name="pyrovae-batches", daemon=True)
        self._thread.start()

    def rows(self, order: torch.Tensor, step: int) -> torch.Tensor:
        """The images of ``step``: cut to a multiple of the processes, as the trainer does."""
        rows = order[step * self.batch_size:(step + 1) * self.batch_size]
        return rows[: len(rows) - len(rows) % self.world_size]

    def _read(self, order, first_step, num_steps, out: "queue.Queue") -> None:
        try:
            for step in range(first_step, num_steps):
                rows = self.rows(order, step)
                if self.world_size > 1:
                    sizes = [len(part) for part in rows.tensor_split(self.world_size)]
                    start = sum(sizes[: self.rank])
                    mine = self.pixels[rows[start:start + sizes[self.rank]]]
                    block = torch.zeros((len(rows), *mine.shape[1:]), dtype=mine.dtype)
                    block[start:start + len(mine)] = mine
                else:
                    block = self.pixels[rows]
                if self.device.type == "cuda":
                    block = block.pin_memory()
                if not self._put(out, (step, block)):
                    return
        except BaseException as error:  # handed to the training loop, which raises it
            self._put(out, (None, error))
            return
        self._put(out, (None, _DONE))

    def _put(self, out: "queue.Queue", item) -> bool:
        """Hand ``item`` to the training loop, waiting while it is DEPTH batches behind; False
        (and nothing handed) once asked to stop, so that a stopped loader never blocks."""
        while not self._stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, step: int) -> torch.Tensor:
        """The images of ``step`` on the device (steps are asked for in order)."""
        got, block = self._queue.get()
        if got is None:
            if block is _DONE:
                raise RuntimeError(f"The batch loader has no step {step}.")
            raise block
        if got != step:
            raise RuntimeError(f"The batch loader read step {got}, but step {step} was asked for.")
        return block.to(self.device, non_blocking=True)

    def stop(self) -> None:
        """Stop reading ahead (at the end of an epoch, or when training stops early)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
