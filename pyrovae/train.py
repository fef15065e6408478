"""Fitting a VAE with stochastic variational inference on in-memory tensors.

Pyro's ELBO computes the loss (``elbo.differentiable_loss(model, guide, x)``) and a plain
torch optimizer follows its gradient, the pattern of Pyro's ``examples/svi_torch.py``. Batches
are slices of a random permutation of tensors already on the training device, and each
step's loss stays there until one of the few progress refreshes of an epoch reads it: a step
hands no value to Python (tests/test_train.py counts them; docs/benchmarks.md).

The loop knows no model family: a KL weight, a temperature schedule, the progress bar, stop
requests and NaN checks are :class:`Callback` objects, a model that takes class labels (M2)
gets them as its second argument, and with ``torchrun`` the step is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`.
"""

import copy
import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pyro
import torch
from pyro import poutine
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm.auto import tqdm

from pyrovae._pyro import direct_call
from pyrovae.checkpoint import get_rng_state, set_rng_state
from pyrovae.config import PRECISIONS, STORAGES
from pyrovae.data import TEST_BINARIZATION_SEED, ImageData, binarize, prepare_test_images, prepare_test_pixels
from pyrovae.loader import BatchLoader
from pyrovae.memory import available_memory
from pyrovae.networks import compute_dtype
from pyrovae.pixels import MappedImages, Pixels, to_unit, value_range
from pyrovae.progress import LogProgress, watching
from pyrovae.distributed import Distributed, ShardedSampling
from pyrovae.errors import ConfigError, DataError, NumericalError
from pyrovae.evaluation import ELBOTerms, elbo_terms
from pyrovae.metrics import EpochMetrics
from pyrovae.objectives import LatentScale, kl_weight
from pyrovae.vae import VAE

__all__ = ["EpochMetrics", "Trainer", "Callback", "TrainingRun", "observed",
           "ProgressBar", "KLWeight", "Annealing", "FiniteCheck",
           "StopRequest", "adam", "AdamNormGrad", "fit", "direct_call", "watching", "TEST_BINARIZATION_SEED",
           "prepare_test_images",
           "STORAGES", "PRECISIONS"]

# Progress refreshes per epoch, at most, and steps between two, at least: a refresh is the one
# host-device sync of the training loop (it reads the running ELBO), and the steps between
# two make none, so a short epoch (32 steps of mnist5k) syncs 8 times, not at every step.
REFRESHES_PER_EPOCH = 50
MIN_STEPS_PER_REFRESH = 4
# With --skip-grad-norm, this many skipped steps in a row end training: the weights have
# stopped changing (VDVAE's users met it, openai/vdvae#25: norms settle above the threshold).
STALLED_STEPS = 100


@dataclass
class TrainingRun:
    """What a callback's run hooks see: the trainer (its model, data, history and position),
    and, for a run of :func:`~pyrovae.run.train_run`, its directory and config (None in
    :func:`fit`)."""

    trainer: "Trainer"
    run_dir: Optional[Path] = None
    config: Optional[Any] = None  # a pyrovae.config.Config

    @property
    def first_epoch(self) -> int:
        """The epoch training starts (or resumes) with."""
        return self.trainer.epoch + 1


class Callback:
    """The one way to observe and steer training; every method does nothing unless overridden.

    Around a run (:func:`~pyrovae.run.train_run`, :func:`~pyrovae.run.resume_run`, :func:`fit`):
    :meth:`on_run_start`, :meth:`on_epoch_saved` after each epoch, :meth:`on_run_end` when
    training stops (finished, stopped early or interrupted), then :meth:`close`, which also
    runs when training fails. Inside each epoch (:meth:`Trainer.run_epoch`): :meth:`wrap`,
    :meth:`on_epoch_start`, :meth:`on_step`, :meth:`on_refresh`, :meth:`stop_requested`,
    :meth:`on_epoch_end`. The progress bar, the KL weight, TensorBoard logging and the command
    line's epoch lines are callbacks.
    """

    def on_run_start(self, run: TrainingRun) -> None:
        """Training starts or resumes (``run.first_epoch``)."""

    def on_epoch_saved(self, run: TrainingRun, metrics: "EpochMetrics", pictures: Dict[str, torch.Tensor]) -> None:
        """An epoch ended and the run saved it: its metrics, and the picture grids the run
        wrote (``(C, H, W)`` in [0, 1]; none in :func:`fit`, nor on torchrun's other ranks)."""

    def on_run_end(self, run: TrainingRun) -> None:
        """Training stopped: finished, stopped early, or interrupted with a checkpoint saved."""

    def close(self) -> None:
        """Release what the callback holds; called after :meth:`on_run_end`, and when training fails."""

    def wrap(self, model: Callable, guide: Callable):
        """Return the model and guide to train this epoch (e.g. under a Pyro handler)."""
        return model, guide

    def on_epoch_start(self, trainer: "Trainer") -> None:
        pass

    def on_step(self, trainer: "Trainer") -> None:
        """Before each step (``trainer.step`` steps of the epoch are done)."""

    def on_refresh(self, trainer: "Trainer", losses: torch.Tensor) -> None:
        """About 50 times an epoch, with the summed objective of each step so far (on the
        device); ``trainer.running_elbo`` is minus their sum per image, already on the host."""

    def stop_requested(self, trainer: "Trainer") -> bool:
        """Polled before each step (with torchrun, at each refresh): True stops the epoch early."""
        return False

    def on_epoch_end(self, trainer: "Trainer") -> None:
        """After the last step of the epoch, or when it stopped early or failed."""


class ProgressBar(Callback):
    """The epoch's steps with the running training ELBO per image: a tqdm bar where a person
    watches (:func:`~pyrovae.progress.watching`), else a line in the log every few seconds
    with an estimate of the epoch's end (:class:`~pyrovae.progress.LogProgress`)."""

    def __init__(self, num_epochs: Optional[int] = None):
        self.num_epochs = num_epochs
        self.bar: Any = None

    def on_epoch_start(self, trainer):
        label = f"epoch {trainer.epoch + 1}" + (f"/{self.num_epochs}" if self.num_epochs else "")
        if watching():
            self.bar = tqdm(total=trainer.num_batches, initial=trainer.step, desc=label, unit="batch", leave=False,
                            dynamic_ncols=True)
        else:
            self.bar = LogProgress(trainer.num_batches, label, "batch", initial=trainer.step)

    def on_refresh(self, trainer, losses):
        if isinstance(self.bar, LogProgress):
            self.bar.desc = self.bar.desc.split(" (")[0] + f" (elbo {trainer.running_elbo:.2f})"
        else:
            self.bar.set_postfix(elbo=f"{trainer.running_elbo:.2f}")
        self.bar.update(trainer.step - self.bar.n)

    def on_epoch_end(self, trainer):
        self.bar.close()


class KLWeight(Callback):
    """Weights the latent sites' log-densities (the KL term) by ``beta`` times a linear ramp
    from 0 to 1 over ``warmup_epochs``, updated before every step
    (:class:`~pyrovae.objectives.LatentScale`). The trainer passes the model family's
    ``latent_sites``, so a family with several levels of latents has every level weighted."""

    def __init__(self, warmup_epochs: float = 0, beta: float = 1.0, sites=("z",)):
        self.warmup_epochs, self.beta = warmup_epochs, beta
        self.scale = LatentScale(1.0, sites)

    def wrap(self, model, guide):
        return self.scale(model), self.scale(guide)

    def on_step(self, trainer):
        progress_epochs = trainer.epoch + (trainer.step + 1) / trainer.num_batches
        self.scale.scale = kl_weight(progress_epochs, self.warmup_epochs, self.beta)


class Annealing(Callback):
    """Calls ``anneal(epoch)`` on every module that has it (a relaxed categorical's temperature)
    at the start of each epoch."""

    def on_epoch_start(self, trainer):
        for module in trainer.vae.modules():
            if hasattr(module, "anneal"):
                module.anneal(trainer.epoch)


class FiniteCheck(Callback):
    """Raises :class:`~pyrovae.errors.NumericalError` naming the first step whose loss is NaN
    or infinite, with a hint."""

    def on_refresh(self, trainer, losses):
        if math.isfinite(trainer.running_elbo):
            return
        bad = int(torch.nonzero(~torch.isfinite(losses))[0])
        hint = f"try a lower learning rate (now {trainer.optimizer.param_groups[0]['lr']:g})"
        if hasattr(trainer.vae.likelihood, "scale"):
            hint += " or a larger likelihood scale"
        raise NumericalError(f"The loss became {losses[bad].item()} at epoch {trainer.epoch + 1}, "
                             f"step {bad + 1}; {hint}.")


class StopRequest(Callback):
    """Stops the epoch, resumably, when ``should_stop()`` returns True."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def stop_requested(self, trainer):
        return self.should_stop()


class AdamNormGrad(torch.optim.Adam):
    """Adam on gradients divided by their L2 norm, tensor by tensor (``g / (||g|| + 1e-7)``).

    The optimizer of Tomczak & Welling's VampPrior code (jmtomczak/vae_vampprior,
    ``utils/optimizer.py``), which the Exemplar VAE code also uses: each parameter tensor's
    step no longer depends on how large its gradient happens to be in this batch, only on its
    direction. The settings are Adam's; the normalization happens before Adam's averages, so
    ``lr`` keeps its meaning.
    """

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.div_(torch.linalg.vector_norm(p.grad) + 1e-7)
        super().step()
        return loss


def adam(parameters, lr: float, normalize_gradients: bool = False) -> torch.optim.Adam:
    """Adam with torch's fused kernel where the parameters' device has one (CPU, CUDA).

    The same algorithm and settings as ``torch.optim.Adam(parameters, lr)``, but one kernel
    for all parameters instead of a dozen small operations per parameter: about 0.9 ms less
    per step on 2 CPU cores at batch 128 (docs/benchmarks.md).

    :param normalize_gradients: :class:`AdamNormGrad` instead (``--optimizer adamnormgrad``).
    """
    parameters = list(parameters)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    kind = AdamNormGrad if normalize_gradients else torch.optim.Adam
    return kind(parameters, lr=lr, fused=fused or None)


def takes_subsample(guide) -> bool:
    """Whether ``guide`` takes the model's subsampling keywords ``size`` and ``subsample`` (as
    pyrovae's guides and Pyro's autoguides of ``vae.model`` do); a textbook ``guide(x)`` does not."""
    try:
        # A module's own call takes anything (*args, **kwargs): its forward says what it takes.
        function = guide.forward if isinstance(guide, torch.nn.Module) else guide
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read: pass them, as Pyro would
        return True
    names = {p.name for p in parameters}
    return {"size", "subsample"} <= names or any(p.kind is p.VAR_KEYWORD for p in parameters)


def streams(storage: str, pixels: Pixels, device) -> bool:
    """Whether training reads its batches from the host as it goes (``storage`` ``stream``,
    or ``auto`` for a memory-mapped set larger than a quarter of the device's free memory)."""
    if storage != "auto":
        return storage == "stream"
    if not isinstance(pixels, MappedImages):
        return False
    free = available_memory(device)
    return free is None or pixels.nbytes > free / 4


def on_device(pixels: Pixels, device, dtype: torch.dtype) -> torch.Tensor:
    """Stored images on ``device``: uint8 stays uint8 (floats are made per batch), floats in ``dtype``."""
    if isinstance(pixels, MappedImages):
        pixels = pixels.load()
    return pixels.to(device) if pixels.dtype == torch.uint8 else pixels.to(device, dtype)


class _Streamed:
    """The training images of a streamed Trainer, as a model family's ``batch_source`` indexes
    them: the batch the loader read for this step, or (for other rows, such as M2's labelled
    extras) read at once."""

    def __init__(self, pixels: Pixels, device):
        self.pixels, self.device = pixels, torch.device(device)
        self.current = None  # (index, images) of the step being taken

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        if self.current is not None and index is self.current[0]:
            return self.current[1]
        return self.pixels[index].to(self.device, non_blocking=True)


class Trainer:
    """Trains a :class:`~pyrovae.vae.VAE` epoch by epoch, and can stop between any two steps.

    All that is needed to continue exactly where it stopped (parameters, optimizer, the
    epoch's permutation, the step within it, the random states) is in :meth:`state_dict`.

    :param vae: the model and guide; train it on the device it is on. Any Pyro guide works:
        one that is not amortized (a Pyro autoguide, a per-image ``pyro.param`` guide) gets
        the batch's positions in the data set (``size``, ``subsample``), and its parameters,
        created on first use, join the optimizer then.
    :param data: train and test images in [0, 1] (an :class:`~pyrovae.data.ImageData`), or a
        torchvision data set object, of which a seeded 10% is held out for testing. Its
        validation images (:meth:`~pyrovae.data.ImageData.with_validation`), if any, are
        scored after every epoch like the test images.
    :param elbo: a Pyro ELBO; default the model family's own (``vae.default_elbo()``).
    :param optimizer: default :func:`adam`, torch's Adam with the fused kernel.
    :param warmup_epochs: the KL term's weight rises linearly from 0 to ``beta`` over this
        many epochs, step by step (:class:`KLWeight`).
    :param beta: the KL term's final weight (1: the ELBO; > 1: a beta-VAE).
    :param labels: for a model with classes (M2): the training labels, -1 where hidden
        (default: all of ``data.train_labels``); the family decides how batches use them
        (:meth:`M2VAE.batch_source <pyrovae.m2.M2VAE.batch_source>`).
    :param callbacks: more :class:`Callback` objects, run after the built-in ones.
    :param storage: where the training images are kept: ``memory`` (on the device, uint8 for
        8-bit images), ``stream`` (read from the host, or from disk for a memory-mapped set,
        by a background :class:`~pyrovae.loader.BatchLoader`), or ``auto``: stream a
        memory-mapped set that would take more than a quarter of the free memory.
    :param precision: ``fp32``, or ``bf16``: the networks run under :func:`torch.autocast`
        in bfloat16 during an epoch's training steps (set once an epoch); log-probabilities
        and the ELBO stay float32 (:func:`~pyrovae.networks.compute_dtype`).
    :param grad_clip: scale each step's gradient down to this total L2 norm when larger.
    :param skip_grad_norm: skip the update of a step whose gradient's total norm (before
        clipping) is this or more, or not finite, as VDVAE does: the optimizer's fused kernel
        leaves parameters and moments as they were, decided on the device (no host sync);
        ``EpochMetrics.skipped_steps`` counts them. Needs an optimizer with the fused kernel
        (:func:`adam` builds one). When :data:`STALLED_STEPS` steps in a row are skipped, the
        weights have stopped changing, and :meth:`run_epoch` raises :class:`~pyrovae.errors.NumericalError`
        with the epoch's median gradient norm. With either option, ``EpochMetrics.grad_norm``
        is the median of the epoch's gradient norms (before clipping): what a threshold is set by.
    :param ema: keep an exponential moving average of the weights, ``w_avg = ema * w_avg +
        (1 - ema) * w`` after each step (VDVAE's EMA model), in :attr:`averaged`, a copy of the
        VAE: the held-out ELBOs score it and :meth:`state_dict` saves it as the model (the
        trained weights as ``"trained_weights"``). On the device, no host sync; buffers are copied.
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
        labels: Optional[torch.Tensor] = None,
        callbacks: Sequence[Callback] = (),
        storage: str = "auto",
        precision: str = "fp32",
        grad_clip: Optional[float] = None,
        skip_grad_norm: Optional[float] = None,
        ema: Optional[float] = None,
    ):
        if not isinstance(data, ImageData):  # a torchvision data set object
            data = ImageData.from_dataset(data)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"{{batch_size}} must be a whole number of images, at least 1, not {batch_size!r}.")
        if batch_size > len(data.train_pixels):
            raise ConfigError(
                f"{{batch_size}} {batch_size} is larger than the {len(data.train_pixels)} training images of "
                f"{data.name}."
            )
        if storage not in STORAGES:
            raise ConfigError(f"{{data_storage}} must be one of {', '.join(STORAGES)}, not {storage!r}.")
        if precision not in PRECISIONS:
            raise ConfigError(f"{{precision}} must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
        self.precision = precision
        self.vae = vae
        self.data = data
        self.batch_size = batch_size
        self.binary = vae.likelihood.binary_data
        self.device = device = vae.device  # where the steps run (streamed images stay on the host)
        splits = (("training", data.train_pixels), ("test", data.test_pixels),
                  ("validation", data.validation_pixels))
        for split, images in filter(lambda s: s[1] is not None, splits):
            low, high = value_range(images) if images.dtype != torch.uint8 else (0, 1)
            if not (low >= 0 and high <= 1):
                raise DataError(f"The {split} images of {data.name} are not scaled to [0, 1].")
            if not self.binary:  # a binary likelihood sees binarized images, whatever the grey levels
                vae.likelihood.check_support(images, f"The {split} images of {data.name}")
        self.distributed = distributed or Distributed()
        # Images stay as stored (uint8 for 8-bit images) and become floats of the parameters'
        # type per batch, on the device: float32 data train a float64 model too.
        dtype = vae.dtype
        self.streamed = streams(storage, data.train_pixels, device)
        self._loader: Optional[BatchLoader] = None
        if self.streamed:
            self.train_images = data.train_pixels
            self._loader = BatchLoader(self.train_images, device, batch_size, self.distributed.rank,
                                       self.distributed.world_size)
            source: Any = _Streamed(self.train_images, device)
        else:
            self.train_images = source = on_device(data.train_pixels, device, dtype)
        self.test_images = on_device(prepare_test_pixels(data.test_pixels, self.binary), device, dtype)
        self.validation_images = (None if data.validation_pixels is None else
                                  on_device(prepare_test_pixels(data.validation_pixels, self.binary), device, dtype))
        self._source = source
        self._batches = vae.batch_source(source, data.train_labels if labels is None else labels)
        self.elbo = elbo or vae.default_elbo()
        self.optimizer = optimizer or adam(vae.parameters(), lr)
        for name, value in (("grad_clip", grad_clip), ("skip_grad_norm", skip_grad_norm)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"{{{name}}} must be a positive number, not {value!r}.")
        if skip_grad_norm is not None and not all(g.get("fused") for g in self.optimizer.param_groups):
            raise ConfigError("{skip_grad_norm} skips updates inside the optimizer's fused kernel; use pyrovae's Adam "
                              "(pyrovae.train.adam), or leave it out.")
        self.grad_clip, self.skip_grad_norm = grad_clip, skip_grad_norm
        if ema is not None and not (isinstance(ema, (int, float)) and 0 < ema < 1):
            raise ConfigError(f"{{ema}} must be between 0 and 1, not {ema!r}.")
        self.step_skips: Optional[torch.Tensor] = None  # 1 where a step's update was skipped, on the device
        self.step_norms: Optional[torch.Tensor] = None  # each step's gradient norm (NaN: not measured)
        self.skip_streak = 0  # steps skipped in a row up to the end of the last epoch
        # pyrovae's own guides are called directly (direct_call); any other guide as Pyro
        # would, with the batch's place in the data set, and its parameters found by tracing.
        self.amortized = vae.amortized and isinstance(vae.guide, torch.nn.Module)
        # The batch's place in the data set goes to guides that take Pyro's subsampling keywords
        # (per-image parameters, autoguides); a textbook guide(x) scores the batch alone.
        self.subsampled = not self.amortized and takes_subsample(vae.guide)
        self.callbacks = [FiniteCheck(), Annealing()]
        if warmup_epochs > 0 or beta != 1:
            self.callbacks.append(KLWeight(warmup_epochs, beta, sites=vae.latent_sites))
        self.callbacks += list(callbacks)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed steps of the current epoch
        self.seconds = 0.0  # training time spent in the current epoch
        self.permutation: Optional[torch.Tensor] = None
        self.step_losses: Optional[torch.Tensor] = None  # summed objective of each step, on the device
        self.running_elbo = math.nan  # minus the objective per image of the epoch so far, at the last refresh
        self.history: List[EpochMetrics] = []
        self._loss = _StepLoss(self)
        if self.distributed.active:
            self._loss = self.distributed.data_parallel(self._loss, self.device)
            if self.batch_size % self.distributed.world_size:
                raise ConfigError(f"{{batch_size}} {self.batch_size} must be a multiple of the "
                                  f"{self.distributed.world_size} processes, so that every rank gets the same "
                                  "share of each batch.")
        # The weights' moving average: what the held-out ELBOs score and checkpoints keep as the
        # model. Copied after DDP has given every rank rank 0's weights, so every rank's is the same.
        # torch's AveragedModel is not used: its update_parameters reads a counter back to the
        # host every step (bool(n_averaged == 0)); its EMA function alone syncs nothing.
        self.averaged: Optional[VAE] = None
        if ema is not None:
            self.averaged = copy.deepcopy(vae)
            self._average = get_ema_multi_avg_fn(ema)
            self._pairs = (list(self.averaged.parameters()), list(vae.parameters()))

    @property
    def weighted(self) -> bool:
        """Whether the KL term is weighted (warm-up or beta), which the plain ELBO is not."""
        return any(isinstance(c, KLWeight) for c in self.callbacks)

    @property
    def global_step(self) -> int:
        """Optimizer steps taken since the run began."""
        return self.epoch * self.num_batches + self.step

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
        self, num_epochs: Optional[int] = None, should_stop: Callable[[], bool] = None,
        progress: Optional[bool] = None,
    ) -> Optional[EpochMetrics]:
        """Train until the end of the current epoch, then score the test set.

        :param progress: draw a progress bar; default only where a person watches (:func:`watching`).
        :param should_stop: polled before every step (with torchrun, at every progress
            refresh); when it returns True the epoch is left unfinished (resumable from
            :meth:`state_dict`) and None is returned.
        :raises NumericalError: if the loss became NaN or infinite.
        """
        device = self.device
        if self.permutation is None:
            # Drawn on the CPU generator so the data order is part of the saved RNG state.
            # Streamed batches are gathered on the host, so their order stays there.
            order = torch.randperm(len(self.train_images))
            self.permutation = order if self.streamed else order.to(device)
            self.step_losses = torch.zeros(self.num_batches, device=device)
            self.step_skips = torch.zeros(self.num_batches, device=device)
            self.step_norms = torch.full((self.num_batches,), math.nan, device=device)
            self.step, self.seconds = 0, 0.0
        if self.step_skips is None:  # resumed from a checkpoint of before they were kept
            self.step_skips = torch.zeros(self.num_batches, device=device)
        if self.step_norms is None:
            self.step_norms = torch.full((self.num_batches,), math.nan, device=device)
        callbacks = list(self.callbacks)
        if watching() if progress is None else progress:
            callbacks.insert(0, ProgressBar(num_epochs))
        if should_stop is not None:
            callbacks.append(StopRequest(should_stop))
        model, guide = direct_call(self.vae.model), self.vae.guide
        if self.amortized:
            guide = direct_call(guide)
        for callback in callbacks:
            model, guide = callback.wrap(model, guide)
        refresh = max(MIN_STEPS_PER_REFRESH, self.num_batches // REFRESHES_PER_EPOCH)
        for callback in callbacks:
            callback.on_epoch_start(self)
        started = time.perf_counter()
        if self._loader is not None:
            self._loader.start(self.permutation, self.step, self.num_batches)
        try:
            # Arguments were checked once above; per-step validation only costs time. NaN
            # losses are reported by FiniteCheck with the step, so Pyro's warning is muted.
            # The networks compute in self.precision for the epoch's steps only; scoring after it is fp32.
            with pyro.validation_enabled(False), warnings.catch_warnings(), compute_dtype(self.vae, self.precision):
                warnings.filterwarnings("ignore", message="Encountered NaN")
                while self.step < self.num_batches:
                    if self._stop_requested(callbacks, refresh, device):
                        return None
                    for callback in callbacks:
                        callback.on_step(self)
                    index = self.permutation[self.step * self.batch_size : (self.step + 1) * self.batch_size]
                    index = index[: len(index) - len(index) % self.distributed.world_size]  # equal shares
                    if self._loader is not None:  # the images the loader read for this step
                        self._source.current = (index, self._loader.get(self.step))
                    if len(index):  # empty only in the last batch, when fewer images than ranks are left
                        self.step_losses[self.step] = self._train_step(model, guide, index)
                    self.step += 1
                    if self.step % refresh == 0 or self.step == self.num_batches:
                        losses = self.distributed.all_reduce_sum(self.step_losses[: self.step])
                        # The refresh's one host sync; every callback reads this number.
                        done = min(self.step * self.batch_size, self.images_per_epoch)
                        self.running_elbo = -losses.sum().item() / done
                        for callback in callbacks:
                            callback.on_refresh(self, losses)
        except RuntimeError as error:  # DDP's gradient all-reduce runs inside backward()
            if self.distributed.active and Distributed.is_communication_error(error):
                raise self.distributed.lost_contact(error) from None
            raise
        finally:
            if self._loader is not None:
                self._loader.stop()
                self._source.current = None
            self.seconds += time.perf_counter() - started
            for callback in callbacks:
                callback.on_epoch_end(self)
        train_elbo = -self.distributed.all_reduce_sum(self.step_losses).sum().item() / self.images_per_epoch
        skipped, grad_norm = self._guard_summary()
        test = self.held_out_terms()
        validation = None if self.validation_images is None else self.held_out_terms(self.validation_images).elbo
        self.epoch += 1
        metrics = EpochMetrics(self.epoch, train_elbo, test.elbo, test.reconstruction, test.kl, self.seconds,
                               validation, self.optimizer.param_groups[0]["lr"], skipped, grad_norm)
        self.history.append(metrics)
        self.permutation = self.step_losses = self.step_skips = self.step_norms = None
        self.step = 0
        return metrics

    def _guard_summary(self) -> Tuple[int, Optional[float]]:
        """At the end of an epoch, in one host sync: its skipped steps and the median of its
        gradient norms (with ``grad_clip`` or ``skip_grad_norm``; else 0 and None). Raises
        :class:`~pyrovae.errors.NumericalError` once :data:`STALLED_STEPS` steps in a row were skipped."""
        if self.grad_clip is None and self.skip_grad_norm is None:
            return 0, None
        assert self.step_skips is not None and self.step_norms is not None
        # The steps taken: under torchrun the last batch is empty when fewer images than ranks are left.
        taken = math.ceil(self.images_per_epoch / self.batch_size)
        skips = self.step_skips[:taken]
        trailing = skips.flip(0).cumprod(0).sum()  # skipped steps at the end of the epoch
        skipped, trailing, grad_norm = torch.stack([skips.sum(), trailing, self.step_norms.nanmedian()]).tolist()
        skipped, trailing = int(skipped), int(trailing)
        self.skip_streak = self.skip_streak + trailing if trailing == taken else trailing
        if self.skip_streak >= STALLED_STEPS:
            stalled = f"The last {self.skip_streak} steps were all skipped (epoch {self.epoch + 1}), so the weights no "
            if not math.isfinite(grad_norm):
                raise NumericalError(stalled + "longer change: their gradients are NaN or infinite; try a lower "
                                     f"learning rate (now {self.optimizer.param_groups[0]['lr']:g}).")
            raise NumericalError(stalled + f"longer change: the gradient norms (this epoch's median "
                                 f"{grad_norm:.4g}) stay at or above {{skip_grad_norm}} {self.skip_grad_norm:g}; "
                                 f"raise it above them (to {_round_up(2 * grad_norm):g}, say) and resume.")
        return skipped, grad_norm

    def held_out_terms(self, images: Optional[torch.Tensor] = None) -> ELBOTerms:
        """The ELBO and its terms on held-out images: the test set, or ``images`` (the validation
        set, say), of :attr:`scored`; NaN when the guide cannot encode new images."""
        if not self.vae.amortized:
            return ELBOTerms(math.nan, math.nan, math.nan, 0)
        return elbo_terms(self.scored, self.test_images if images is None else images)

    @property
    def scored(self) -> VAE:
        """The model the held-out ELBOs score, the pictures show and checkpoints keep: with
        ``ema``, the weights' moving average (its buffers, such as a temperature, the VAE's
        own); else the VAE itself."""
        if self.averaged is None:
            return self.vae
        with torch.no_grad():
            for kept, own in zip(self.averaged.buffers(), self.vae.buffers()):
                kept.copy_(own)
        return self.averaged

    def _stop_requested(self, callbacks, refresh: int, device) -> bool:
        """Poll the callbacks: before every step in one process; with several, only every
        ``refresh`` steps, where all ranks agree in one all-reduce (which waits for the device),
        so that they stop at the same step without a host sync per step."""
        if not self.distributed.active:
            return any(c.stop_requested(self) for c in callbacks)
        return self.step % refresh == 0 and self.distributed.any(any(c.stop_requested(self) for c in callbacks),
                                                                 device)

    def batch(self, index: torch.Tensor):
        """The model's arguments for the training images at ``index``, as the model family
        makes them (:meth:`VAE.batch_source <pyrovae.vae.VAE.batch_source>`), with the images
        binarized afresh for a binary likelihood."""
        x, *rest = self._batches(index)
        x = to_unit(x, self.vae.dtype, self.device)
        return (binarize(x) if self.binary else x, *rest)

    def _train_step(self, model, guide, index: torch.Tensor) -> torch.Tensor:
        """One optimizer step on the images at ``index``; returns the summed objective (detached)."""
        args = self.batch(index)
        kwargs = {"size": len(self.train_images), "subsample": index} if self.subsampled else {}
        world, rank = self.distributed.world_size, self.distributed.rank
        if self.distributed.active:  # this rank's rows; DDP averages the gradients
            args = tuple(a.tensor_split(world)[rank] for a in args)
            kwargs = {k: (v.tensor_split(world)[rank] if torch.is_tensor(v) else v) for k, v in kwargs.items()}
            with ShardedSampling(rank, world):
                objective = self._loss(model, guide, args, kwargs)
        else:
            objective = self._loss(model, guide, args, kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        # Per image of the global batch once DDP has averaged over the ranks.
        (objective / (len(index) // world)).backward()
        if self.grad_clip is not None or self.skip_grad_norm is not None:
            self._guard_update()
        self.optimizer.step()
        if self.averaged is not None:
            self._average(*self._pairs, None)
        return objective.detach()

    def _guard_update(self) -> None:
        """Clip the gradient (``grad_clip``) and mark a step to skip (``skip_grad_norm``), on
        the device: the fused optimizer reads ``found_inf`` and leaves everything as it was."""
        parameters = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.grad_clip is not None:  # torch's clipping returns the norm from before it clipped
            norm = torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        self.step_norms[self.step] = norm
        if self.skip_grad_norm is not None:
            skip = ((norm >= self.skip_grad_norm) | ~torch.isfinite(norm)).float()
            self.optimizer.found_inf = skip  # type: ignore[attr-defined]  # fused Adam's skip flag
            self.step_skips[self.step] = skip

    def state_dict(self) -> dict:
        return {
            "model": self.scored.state_dict(),
            **({} if self.averaged is None else {"trained_weights": self.vae.state_dict()}),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "permutation": None if self.permutation is None else self.permutation.cpu(),
            "step_losses": None if self.step_losses is None else self.step_losses.cpu(),
            "step_skips": None if self.step_skips is None else self.step_skips.cpu(),
            "step_norms": None if self.step_norms is None else self.step_norms.cpu(),
            "skip_streak": self.skip_streak,
            "history": [m.to_dict() for m in self.history],
            "rng": get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`. With a moving average of the weights
        (``ema``), ``state["model"]`` is the average and ``state["trained_weights"]`` the trained
        weights; ``ema`` may differ from the checkpoint's: an average begun now starts from the
        trained weights, and one given up leaves the trained weights to train on."""
        device = self.device
        # With a moving average "model" is the average; without, the trained weights, where a new average starts.
        trained = state.get("trained_weights", state["model"])
        if self.averaged is not None:
            self.averaged.load_state_dict(state["model"])
        self.vae.load_state_dict(trained)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
        self.permutation = (None if state["permutation"] is None else
                            state["permutation"] if self.streamed else state["permutation"].to(device))
        self.step_losses = None if state["step_losses"] is None else state["step_losses"].to(device)
        skips = state.get("step_skips")  # absent from checkpoints of before --skip-grad-norm
        fits = skips is not None and self.step_losses is not None and skips.shape == self.step_losses.shape
        self.step_skips = skips.to(device) if fits else None
        norms = state.get("step_norms")  # absent from checkpoints of before it was kept
        fits = norms is not None and self.step_losses is not None and norms.shape == self.step_losses.shape
        self.step_norms = norms.to(device) if fits else None
        self.skip_streak = int(state.get("skip_streak", 0))  # absent from checkpoints of before it was kept
        self.history = [EpochMetrics(**m) for m in state["history"]]
        set_rng_state(state["rng"])


def _round_up(x: float) -> float:
    """``x`` rounded up to one significant digit (912 -> 1000, 450 -> 500)."""
    unit = 10 ** math.floor(math.log10(x))
    return math.ceil(x / unit) * unit


class _StepLoss(torch.nn.Module):
    """One step's summed objective as a module whose parameters are the VAE's (what DDP wraps).

    For a guide that is not amortized and takes Pyro's subsampling keywords, the loss is
    computed over the batch's rows of the whole data set (Pyro scales it by size / batch) and
    scaled back to the batch's sum. For any guide that is not a pyrovae guide, any
    parameter the guide created (Pyro's param store, a lazily built autoguide) joins the
    optimizer the first time it is seen.
    """

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.vae = trainer.vae
        object.__setattr__(self, "_trainer", trainer)  # a reference, not a submodule

    def forward(self, model, guide, args, kwargs):
        trainer = self._trainer
        if trainer.amortized:
            return trainer.elbo.differentiable_loss(model, guide, *args, **kwargs)
        scale = len(kwargs["subsample"]) / kwargs["size"] if kwargs else 1.0
        with poutine.trace(param_only=True) as params, poutine.scale(scale=scale):
            loss = trainer.elbo.differentiable_loss(model, guide, *args, **kwargs)
        known = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        found = {}
        for site in params.trace.nodes.values():
            value = site["value"]
            value = value.unconstrained() if hasattr(value, "unconstrained") else value
            if value.requires_grad and value.is_leaf and id(value) not in known:
                found[id(value)] = value
        if found:
            trainer.optimizer.add_param_group({"params": list(found.values())})
        return loss


def fit(
    vae: VAE,
    data: ImageData,
    num_epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    elbo=None,
    progress: Optional[bool] = None,
    warmup_epochs: float = 0,
    beta: float = 1.0,
    labels: Optional[torch.Tensor] = None,
    callbacks: Sequence[Callback] = (),
) -> List[EpochMetrics]:
    """Train ``vae`` on ``data`` for ``num_epochs`` and return the metrics of every epoch.

    :param progress: draw a progress bar; default only where a person watches (a terminal).
    :param callbacks: :class:`Callback` objects, told of the run and of every step.
    Other arguments are :class:`Trainer`'s.

    Example::

        data = load_dataset("mnist5k")
        history = fit(vae, data, num_epochs=5)
        history[-1].test_elbo
    """
    if progress is None:
        progress = watching()
    trainer = Trainer(vae, data, batch_size=batch_size, lr=lr, elbo=elbo, warmup_epochs=warmup_epochs, beta=beta,
                      labels=labels, callbacks=callbacks)
    run = TrainingRun(trainer)
    with observed(run, callbacks):
        while trainer.epoch < num_epochs:
            metrics = trainer.run_epoch(num_epochs, progress=progress)
            for callback in callbacks:
                callback.on_epoch_saved(run, metrics, {})
    return trainer.history


@contextmanager
def observed(run: TrainingRun, callbacks: Sequence[Callback]):
    """Tell ``callbacks`` of a run: :meth:`~Callback.on_run_start` on entering,
    :meth:`~Callback.on_run_end` when the body ends, and :meth:`~Callback.close` in any case."""
    try:
        for callback in callbacks:
            callback.on_run_start(run)
        yield run
        for callback in callbacks:
            callback.on_run_end(run)
    finally:
        for callback in callbacks:
            callback.close()
