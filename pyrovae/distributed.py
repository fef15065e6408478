"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

Every rank holds the whole training set and the same random state. Each step, every rank
takes the same global batch from the epoch's permutation, keeps its contiguous share of
the rows, and computes the summed negative ELBO of its share under
:class:`~torch.nn.parallel.DistributedDataParallel`, scaled by ``world_size / global_batch``
so that DDP's gradient average is the gradient of (sum of all ranks' losses) / global
batch: the single-process loss for the same global batch.

Random numbers are drawn for the global batch on every rank and sliced (the binarization
of the pixels, and every guide sample through :class:`ShardedSampling`), so each rank uses
its own part of one stream, exactly the numbers a single process would use for those
images, and the ranks' random states stay equal. A 2-process run therefore follows the
1-process run up to floating-point summation order.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Tuple

import torch
from pyro.poutine.messenger import Messenger

from pyrovae.errors import PyroVAEError

__all__ = ["Distributed", "ShardedSampling", "DistributedError", "launched_by_torchrun"]

# Seconds a rank waits for the others in a collective before giving up (a dead or stuck peer).
TIMEOUT_ENV = "PYROVAE_DIST_TIMEOUT"


class DistributedError(PyroVAEError):
    """A rank lost contact with the others, or the process group could not be formed.

    ``group_lost``: a peer died mid-training, and the process group's background threads
    still wait on it; the process should leave without the interpreter's teardown, which can
    then end in ``std::terminate`` (SIGABRT) after the message was printed.
    """

    group_lost = False


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a ``torchrun`` (or compatible) launch."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


@dataclass
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size``, on GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that prints and writes the run directory."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.initialized and self.world_size > 1

    @classmethod
    def from_env(cls, device: torch.device) -> Tuple["Distributed", torch.device]:
        """Join the process group that ``torchrun`` describes in the environment: NCCL for
        CUDA devices, gloo for the CPU.

        :returns: the joined group, and the device this rank should use (``cuda:LOCAL_RANK``
            when ``device`` is CUDA) as ``(distributed, device)``.
        """
        import torch.distributed as dist

        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise DistributedError(f"Rank {rank} needs GPU {local_rank} but this machine has "
                                       f"{torch.cuda.device_count()}; use --nproc-per-node {torch.cuda.device_count()} "
                                       "or fewer.")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 300)))
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                    device_id=device if device.type == "cuda" else None)
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"Rank {rank} could not join the process group: {str(e).splitlines()[0]}") from None
        return cls(rank, world_size, local_rank, initialized=True), device

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``tensor`` over all ranks (a new tensor)."""
        if not self.active:
            return tensor.clone()
        import torch.distributed as dist

        total = tensor.clone()
        self._collective(dist.all_reduce, total)
        return total

    def any(self, flag: bool, device) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.active:
            return flag
        return bool(self.all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)

    def agree(self, error: "Exception | None", device) -> None:
        """Raise on every rank if any rank failed: ``error`` itself where it happened, a
        :class:`DistributedError` naming the failure elsewhere."""
        failed_somewhere = self.any(error is not None, device)  # every rank takes part
        if error is not None:
            raise error
        if failed_somewhere:
            raise DistributedError("Another rank stopped with an error (rank 0 prints it).")

    def _collective(self, operation, *args) -> None:
        try:
            operation(*args)
        except (RuntimeError, ConnectionError) as e:  # DistBackendError and gloo's socket errors
            raise self.lost_contact(e) from None

    def lost_contact(self, error: Exception) -> DistributedError:
        """The error to report when a collective failed because a peer died or hung."""
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        detail = detail.split("] ", 1)[-1].split(". ")[0][:160]  # drop gloo's source-file prefix and advice
        error = DistributedError(
            f"Rank {self.rank} lost contact with the other ranks ({detail}); the last checkpoint of the run "
            "is intact: resume with the same torchrun command and --resume RUN."
        )
        error.group_lost = True
        return error

    @staticmethod
    def is_communication_error(error: BaseException) -> bool:
        """Whether an exception raised inside a step came from the process group (a dead peer,
        a timeout) rather than from the model."""
        import torch.distributed as dist

        if isinstance(error, (dist.DistError, ConnectionError)):
            return True
        text = str(error)
        return isinstance(error, RuntimeError) and any(
            marker in text for marker in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out"))

    def data_parallel(self, step_loss: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``step_loss`` (a module computing one step's loss from the VAE's parameters) under
        :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients of all
        ranks in ``backward()``."""
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (prior constants, a temperature) are equal on every rank: no per-step sync.
        return DistributedDataParallel(step_loss, device_ids=[device] if device.type == "cuda" else None,
                                       forward_sync_buffers=False)

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.initialized = False


class ShardedSampling(Messenger):
    """Draw every latent sample for the global batch and keep this rank's rows.

    At a sample site whose distribution has batch shape ``(rows, ...)`` for this rank's rows,
    the distribution is expanded to ``(world_size, rows, ...)``, sampled once (consuming the
    random numbers a single process would draw for ``world_size * rows`` images) and the
    slice ``[rank]`` becomes the site's value. Observed, replayed and enumerated sites are
    left alone.
    """

    def __init__(self, rank: int, world_size: int):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def _pyro_sample(self, msg):
        fn = msg["fn"]
        if (msg["is_observed"] or msg["value"] is not None or msg["infer"].get("enumerate")
                or not isinstance(fn, torch.distributions.Distribution)):  # e.g. a plate's subsample site
            return
        wide = fn.expand((self.world_size,) + tuple(fn.batch_shape))
        msg["value"] = (wide.rsample() if fn.has_rsample else wide.sample())[self.rank]
