"""Fitting a VAE with stochastic variational inference on in-memory tensors.

Pyro's ELBO is used as a differentiable ``nn.Module`` (``Trace_ELBO()(model, guide)``) and
driven by a plain torch optimizer, the pattern of Pyro's ``examples/svi_torch.py``. Batches
are slices of a random permutation of tensors already on the training device; the loop
never waits for the device except to refresh the progress bar.
"""

import functools
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

import pyro
import torch
from tqdm.auto import tqdm

from pyrovae.checkpoint import get_rng_state, set_rng_state
from pyrovae.data import ImageData, binarize
from pyrovae.distributed import Distributed, ShardedSampling
from pyrovae.errors import ConfigError, DataError, NumericalError
from pyrovae.evaluation import elbo_terms
from pyrovae.objectives import LatentScale, Trace_ELBO, kl_weight
from pyrovae.vae import VAE

__all__ = ["EpochMetrics", "Trainer", "adam", "fit", "TEST_BINARIZATION_SEED"]

# The binary test set is drawn once with this seed, so that every model, whatever its own
# training seed, is scored on the same images (shared/BENCHMARKS.md).
TEST_BINARIZATION_SEED = 0
# Progress-bar refreshes per epoch; each costs one host-device sync.
REFRESHES_PER_EPOCH = 50


@dataclass
class EpochMetrics:
    """One line of ``metrics.jsonl``: per-image nats, and the seconds spent training."""

    epoch: int
    train_elbo: float
    test_elbo: float
    test_reconstruction: float
    test_kl: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def direct_call(module: torch.nn.Module) -> Callable:
    """``module.forward`` without :class:`~pyro.nn.PyroModule`'s call context.

    Inside that context every access to a plain ``nn.Module`` attribute emits one Pyro
    ``param`` message per parameter, so that Pyro's own optimizers can find them: ten
    messages per step here, 0.7 of the 1.6 ms that a step cost beyond plain PyTorch on
    2 CPU cores (docs/benchmarks.md). The trainer's torch optimizer already holds every parameter, so
    it skips them; the loss and gradients are the same (tests/test_train.py).
    """
    return functools.partial(type(module).forward, module)


def adam(parameters, lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where the parameters' device has one (CPU, CUDA).

    The same algorithm and settings as ``torch.optim.Adam(parameters, lr)``, but one kernel
    for all parameters instead of a dozen small operations per parameter: about 0.9 ms less
    per step on 2 CPU cores at batch 128 (docs/benchmarks.md).
    """
    parameters = list(parameters)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    return torch.optim.Adam(parameters, lr=lr, fused=fused or None)


def prepare_test_images(images: torch.Tensor, binary: bool) -> torch.Tensor:
    """The test images a model is scored on: binarized once, reproducibly, for binary likelihoods."""
    return binarize(images, seed=TEST_BINARIZATION_SEED) if binary else images


class Trainer:
    """Trains a :class:`~pyrovae.vae.VAE` epoch by epoch, and can stop between any two steps.

    All that is needed to continue exactly where it stopped (parameters, optimizer, the
    epoch's permutation, the step within it, the random states) is in :meth:`state_dict`.

    :param vae: the model and guide; train it on the device it is on.
    :param data: train and test images in [0, 1].
    :param elbo: a Pyro ELBO; default :class:`pyrovae.objectives.Trace_ELBO` (Pyro's,
        without its per-step host syncs).
    :param optimizer: default :func:`adam`, torch's Adam with the fused kernel.
    :param warmup_epochs: the KL term's weight rises linearly from 0 to ``beta`` over this
        many epochs, step by step (:class:`~pyrovae.objectives.LatentScale`).
    :param beta: the KL term's final weight (1: the ELBO; > 1: a beta-VAE). The test
        metrics always use the unweighted ELBO; ``train_elbo`` is the weighted objective.
    """

    def __init__(
        self,
        vae: VAE,
        data: ImageData,
        batch_size: int = 128,
        lr: float = 1e-3,
        elbo=None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        warmup_epochs: float = 0,
        beta: float = 1.0,
        distributed: Optional[Distributed] = None,
    ):
        if batch_size > len(data.train_images):
            raise ConfigError(
                f"--batch-size {batch_size} is larger than the {len(data.train_images)} training images of {data.name}."
            )
        self.vae = vae
        self.batch_size = batch_size
        self.binary = vae.likelihood.binary_data
        device = vae.device
        for split, images in (("training", data.train_images), ("test", data.test_images)):
            if images.min() < 0 or images.max() > 1:
                raise DataError(f"The {split} images of {data.name} are not scaled to [0, 1].")
        self.train_images = data.train_images.to(device)
        self.test_images = prepare_test_images(data.test_images, self.binary).to(device)
        self.elbo = elbo or Trace_ELBO()
        self.optimizer = optimizer or adam(vae.parameters(), lr)
        self.warmup_epochs, self.beta = warmup_epochs, beta
        self.epoch = 0  # completed epochs
        self.step = 0  # completed steps of the current epoch
        self.seconds = 0.0  # training time spent in the current epoch
        self.permutation: Optional[torch.Tensor] = None
        self.step_losses: Optional[torch.Tensor] = None  # summed -ELBO of each step, on the device
        self.history: List[EpochMetrics] = []
        self.distributed = distributed or Distributed()
        if self.distributed.active:
            self._ddp = self._data_parallel()

    def _data_parallel(self):
        from torch.nn.parallel import DistributedDataParallel

        world = self.distributed.world_size
        if self.batch_size % world:
            raise ConfigError(f"--batch-size {self.batch_size} must be a multiple of the {world} processes, "
                              "so that every rank gets the same share of each batch.")
        device = self.train_images.device
        # Buffers (prior constants, a temperature) are equal on every rank: no per-step sync.
        return DistributedDataParallel(_StepModule(self), device_ids=[device] if device.type == "cuda" else None,
                                       forward_sync_buffers=False)

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.train_images) / self.batch_size)

    @property
    def images_per_epoch(self) -> int:
        """Training images used per epoch: all, except that with N processes the last batch
        is cut to a multiple of N (fewer than N images, a different few each epoch)."""
        n = len(self.train_images)
        return n - (n % self.batch_size) % self.distributed.world_size

    def run_epoch(
        self, num_epochs: Optional[int] = None, should_stop: Callable[[], bool] = None, progress: bool = True
    ) -> Optional[EpochMetrics]:
        """Train until the end of the current epoch, then score the test set.

        :param should_stop: polled before every step (with torchrun, at every progress
            refresh); when it returns True the epoch is left unfinished (resumable from
            :meth:`state_dict`) and None is returned.
        :raises NumericalError: if the loss became NaN or infinite.
        """
        device = self.train_images.device
        if self.permutation is None:
            # Drawn on the CPU generator so the data order is part of the saved RNG state.
            self.permutation = torch.randperm(len(self.train_images)).to(device)
            self.step_losses = torch.zeros(self.num_batches, device=device)
            self.step, self.seconds = 0, 0.0
        for module in self.vae.modules():  # e.g. the temperature of a relaxed categorical code
            if hasattr(module, "anneal"):
                module.anneal(self.epoch)
        refresh = max(1, self.num_batches // REFRESHES_PER_EPOCH)
        label = f"epoch {self.epoch + 1}" + (f"/{num_epochs}" if num_epochs else "")
        bar = tqdm(total=self.num_batches, initial=self.step, desc=label, unit="batch",
                   leave=False, disable=not progress, dynamic_ncols=True)
        model, guide = direct_call(self.vae.model), direct_call(self.vae.guide)
        world = self.distributed.world_size
        weighted = self.weighted
        if weighted:  # the KL term's weight, changed before every step
            latent_scale = LatentScale(1.0)
            model, guide = latent_scale(model), latent_scale(guide)
        started = time.perf_counter()
        try:
            # Arguments were checked once above; per-step validation only costs time. NaN
            # losses are reported by _check_finite with the step, so Pyro's warning is muted.
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Encountered NaN")
                while self.step < self.num_batches:
                    if should_stop is not None and self._stop_now(should_stop, refresh, device):
                        return None
                    index = self.permutation[self.step * self.batch_size : (self.step + 1) * self.batch_size]
                    index = index[: len(index) - len(index) % world]  # equal shares for every rank
                    if len(index):  # empty only in the last batch, when fewer images than ranks are left
                        x = self.train_images[index]
                        if self.binary:
                            x = binarize(x)  # dynamic binarization: a fresh draw every time
                        if weighted:
                            progress_epochs = self.epoch + (self.step + 1) / self.num_batches
                            latent_scale.scale = kl_weight(progress_epochs, self.warmup_epochs, self.beta)
                        if self.distributed.active:  # this rank's rows; DDP averages the gradients
                            rank = self.distributed.rank
                            with ShardedSampling(rank, world):
                                objective, loss = self._ddp(model, guide, x.tensor_split(world)[rank],
                                                            index.tensor_split(world)[rank])
                        else:
                            objective, loss = self._loss(model, guide, x, index)
                        self.optimizer.zero_grad(set_to_none=True)
                        # Per image of the global batch once DDP has averaged over the ranks.
                        (objective / (len(index) // world)).backward()
                        self.optimizer.step()
                        self.step_losses[self.step] = loss.detach()
                    self.step += 1
                    if self.step % refresh == 0 or self.step == self.num_batches:
                        losses = self._check_finite()
                        done = min(self.step * self.batch_size, self.images_per_epoch)
                        bar.set_postfix(elbo=f"{-losses.sum().item() / done:.2f}")
                        bar.update(self.step - bar.n)
        except RuntimeError as error:  # DDP's gradient all-reduce runs inside backward()
            if self.distributed.active and Distributed.is_communication_error(error):
                raise self.distributed.lost_contact(error) from None
            raise
        finally:
            self.seconds += time.perf_counter() - started
            bar.close()
        train_elbo = -self.distributed.all_reduce_sum(self.step_losses).sum().item() / self.images_per_epoch
        test = elbo_terms(self.vae, self.test_images)
        self.epoch += 1
        metrics = EpochMetrics(self.epoch, train_elbo, test.elbo, test.reconstruction, test.kl, self.seconds)
        self.history.append(metrics)
        self.permutation = self.step_losses = None
        self.step = 0
        return metrics

    def _stop_now(self, should_stop: Callable[[], bool], refresh: int, device) -> bool:
        """Poll ``should_stop``: before every step in one process; with several, only every
        ``refresh`` steps, where all ranks agree in one all-reduce (which waits for the device),
        so that they stop at the same step without a host sync per step."""
        if not self.distributed.active:
            return should_stop()
        return self.step % refresh == 0 and self.distributed.any(should_stop(), device)

    @property
    def weighted(self) -> bool:
        """Whether the KL term is weighted (warm-up or beta), which the plain ELBO is not."""
        return self.warmup_epochs > 0 or self.beta != 1

    def _loss(self, model, guide, x: torch.Tensor, index: torch.Tensor):
        """The summed objective to minimise on batch ``x`` (rows ``index`` of the training set),
        and the summed negative ELBO of those images that the epoch's metric adds up."""
        loss = self.elbo.differentiable_loss(model, guide, x)
        return loss, loss

    def _check_finite(self) -> torch.Tensor:
        """The losses of the steps so far, summed over ranks; raise if any is NaN or infinite."""
        losses = self.distributed.all_reduce_sum(self.step_losses[: self.step])
        if torch.isfinite(losses.sum()):
            return losses
        bad = int(torch.nonzero(~torch.isfinite(losses))[0])
        value = losses[bad].item()
        hint = f"try a lower learning rate (now {self.optimizer.param_groups[0]['lr']:g})"
        if hasattr(self.vae.likelihood, "scale"):
            hint += " or a larger likelihood scale"
        raise NumericalError(f"The loss became {value} at epoch {self.epoch + 1}, step {bad + 1}; {hint}.")

    def state_dict(self) -> dict:
        return {
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "permutation": None if self.permutation is None else self.permutation.cpu(),
            "step_losses": None if self.step_losses is None else self.step_losses.cpu(),
            "history": [m.to_dict() for m in self.history],
            "rng": get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`; the model must already hold ``state["model"]``."""
        device = self.train_images.device
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
        self.permutation = None if state["permutation"] is None else state["permutation"].to(device)
        self.step_losses = None if state["step_losses"] is None else state["step_losses"].to(device)
        self.history = [EpochMetrics(**m) for m in state["history"]]
        set_rng_state(state["rng"])


class _StepModule(torch.nn.Module):
    """One training step's loss as a module whose parameters are the VAE's, for DDP."""

    def __init__(self, trainer: "Trainer"):
        super().__init__()
        self.vae = trainer.vae
        object.__setattr__(self, "_trainer", trainer)  # a reference, not a submodule

    def forward(self, model, guide, x, index):
        return self._trainer._loss(model, guide, x, index)


def fit(
    vae: VAE,
    data: ImageData,
    num_epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    elbo=None,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[EpochMetrics], None]] = None,
    warmup_epochs: float = 0,
    beta: float = 1.0,
) -> List[EpochMetrics]:
    """Train ``vae`` on ``data`` for ``num_epochs`` and return the metrics of every epoch.

    Example::

        data = load_dataset("mnist5k")
        history = fit(vae, data, num_epochs=5)
        history[-1].test_elbo
    """
    trainer = Trainer(vae, data, batch_size=batch_size, lr=lr, elbo=elbo, warmup_epochs=warmup_epochs, beta=beta)
    while trainer.epoch < num_epochs:
        metrics = trainer.run_epoch(num_epochs, progress=progress)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    return trainer.history
