"""Training runs: writing a run directory epoch by epoch, and resuming one where it stopped.

The layout of a run directory, and reading one back, is :mod:`pyrovae.rundir`.
"""

import json
import math
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pyrovae.checkpoint import RUN_KEYS, atomic_write, load_checkpoint, save_checkpoint
from pyrovae.config import Config, changeable_on_resume
from pyrovae.data import MNIST_FAMILY, ImageData, fingerprint, load_data, named_likelihood, spread_subset
from pyrovae.distributed import Distributed
from pyrovae.errors import CheckpointError, ConfigError, DataError, PyroVAEError, StorageError, describe_os_error
from pyrovae.evaluation import eval_mode
from pyrovae.lock import RunLock
from pyrovae.memory import check_step_memory
from pyrovae.pixels import to_unit
from pyrovae.registry import build_elbo, build_optimizer, build_vae, model_family, validate
from pyrovae.tracking import TENSORBOARD_DIR
from pyrovae.devices import resolve_device
from pyrovae.grids import save_grid
from pyrovae.metrics import EpochMetrics
from pyrovae.rundir import (BEST, CHECKPOINT, CHECKPOINTS, CONFIG, METRICS, RECONSTRUCTIONS, SAMPLES,
                            RunRecoveryWarning, _absolute_paths, _kept_path, best_epoch, full_history, is_exported,
                            kept_epochs, load_run, with_data_dir)
from pyrovae.train import Callback, Trainer, TrainingRun, observed, watching
from pyrovae.vae import VAE

__all__ = ["RunResult", "RunRecoveryWarning", "train_run", "resume_run", "load_run", "kept_epochs", "best_epoch",
           "stopped_early", "plateaus", "last_improvement", "learning_rate", "full_history",
           "check_against_data", "with_data_dir", "resolve_device", "default_run_dir", "save_grid"]

# Everything a run writes; --overwrite removes exactly these and nothing else.
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, CHECKPOINTS, BEST, SAMPLES, RECONSTRUCTIONS, TENSORBOARD_DIR)
NUM_PICTURES = 64
EVOLUTION_IMAGES = 16  # of each epoch's samples, kept as tensors for the evolution figure


@dataclass
class RunResult:
    run_dir: Path
    config: Config
    history: List[EpochMetrics]
    finished: bool  # False when training was interrupted and can be resumed

    @property
    def best_epoch(self) -> Optional[int]:
        """The epoch with the best validation ELBO (kept as ``best.pt``), or None without validation."""
        return best_epoch(self.history)

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping ended the run before its last epoch (``--patience``)."""
        return stopped_early(self.history, self.config)


def stopped_early(history: List[EpochMetrics], config: Config) -> bool:
    """Whether early stopping has ended the run (see :func:`plateaus`)."""
    return plateaus(history, config)[1]


def plateaus(history: List[EpochMetrics], config: Config) -> Tuple[List[int], bool]:
    """The epochs after which the learning rate was cut, and whether the run has stopped early.

    A plateau is ``config.patience`` epochs without a better validation ELBO, counted from the
    last better epoch, the end of the warm-up (Tomczak & Welling's early stopping: epochs of the
    warm-up do not count, since the objective is still changing) or the last cut, whichever is
    latest. An epoch is better when it beats the best before it by more than ``config.min_delta``
    (the best then moves to it; one that beats it by less moves nothing, so a slow creep counts
    once it adds up to more). The first ``config.lr_drops`` plateaus cut the learning rate; the
    next stops the run. All of it follows from the history, so a resumed run cuts where it would
    have.
    """
    cuts, stopped, _ = _plateau_scan(history, config)
    return cuts, stopped


def last_improvement(history: List[EpochMetrics], config: Config) -> Optional[int]:
    """The last epoch that was better in the sense of :func:`plateaus` (by ``config.min_delta``);
    :func:`best_epoch` when that is 0. None without a validation ELBO."""
    return _plateau_scan(history, config)[2]


def _plateau_scan(history: List[EpochMetrics], config: Config) -> Tuple[List[int], bool, Optional[int]]:
    cuts: List[int] = []
    warmup = math.ceil(config.warmup_epochs)
    best, best_at = -math.inf, None
    for m in history:
        if m.validation_elbo is not None and m.validation_elbo > best + config.min_delta:  # NaN is never better
            best, best_at = m.validation_elbo, m.epoch
        if config.patience is not None and best_at is not None \
                and m.epoch - max(best_at, warmup, *cuts) >= config.patience:
            if len(cuts) < config.lr_drops:
                cuts.append(m.epoch)
            elif m is history[-1]:
                return cuts, True, best_at
    return cuts, False, best_at


def _by_more(config: Config) -> str:
    return f" by more than {config.min_delta:g} nats ({{min_delta}})" if config.min_delta else ""


def learning_rate(history: List[EpochMetrics], config: Config) -> float:
    """The learning rate of the epoch after ``history``: ``config.lr``, cut at each plateau."""
    return config.lr * config.lr_drop_factor ** len(plateaus(history, config)[0])


def default_run_dir(config: Config, root="runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{config.dataset}-z{config.latent_dim}-{config.likelihood}-{stamp}"


def _save_pictures(run_dir: Path, vae: VAE, trainer: Trainer, config: Config, epoch: int) -> Dict[str, torch.Tensor]:
    """Write the epoch's sample and reconstruction grids; returns them by name."""
    with eval_mode(vae):
        samples = vae.epoch_samples(NUM_PICTURES, config.seed, trainer.test_images)
        samples_grid = save_grid(samples, run_dir / SAMPLES / f"epoch_{epoch:04d}.png")
        pixels = samples[:EVOLUTION_IMAGES].mul(255).round().to(torch.uint8).cpu()
        atomic_write(run_dir / SAMPLES / f"epoch_{epoch:04d}.pt", lambda f: torch.save(pixels, f))
        per_row = min(8, len(trainer.test_images))
        rows = min(4, len(trainer.test_images) // per_row)
        originals = to_unit(trainer.test_images[spread_subset(rows * per_row, len(trainer.test_images))], vae.dtype)
        reconstructions = vae.reconstruct(originals)
        # Rows of originals, each followed by the row of their reconstructions.
        pairs = torch.stack([originals.view(rows, per_row, *originals.shape[1:]),
                             reconstructions.view(rows, per_row, *originals.shape[1:])], dim=1)
        pairs_grid = save_grid(pairs.flatten(0, 2), run_dir / RECONSTRUCTIONS / f"epoch_{epoch:04d}.png",
                               nrow=per_row)
    return {"samples": samples_grid, "reconstructions": pairs_grid}


def _write_metrics(run_dir: Path, history: List[EpochMetrics]) -> None:
    lines = "".join(json.dumps(m.to_dict()) + "\n" for m in history)
    atomic_write(run_dir / METRICS, lambda f: f.write(lines.encode()))


def _claim_new_run_dir(run_dir: Path, overwrite: bool) -> RunLock:
    """Create ``run_dir``, take its lock, and with ``overwrite`` remove the run it holds.

    :returns: the lock, held; the caller releases it when the run is written.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"Run directory {run_dir} exists and is not a directory.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"Cannot create the run directory {run_dir}: {describe_os_error(e)}.") from None
    lock = RunLock(run_dir).acquire()
    try:
        existing = [name for name in RUN_FILES if (run_dir / name).exists()]
        if existing and not overwrite:
            raise ConfigError(
                f"Run directory {run_dir} already holds a run; pass --resume {run_dir} to continue it "
                "or --overwrite to replace it."
            )
        _remove_run_files(run_dir, existing)
    except BaseException:
        lock.release()
        raise
    return lock


def _remove_run_files(run_dir: Path, names) -> None:
    try:
        for name in names:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    except OSError as e:
        raise StorageError(f"Cannot replace the run in {run_dir}: {describe_os_error(e)}.") from None


def train_run(
    config: Config,
    run_dir=None,
    *,
    overwrite: bool = False,
    device="cpu",
    fallback: bool = True,
    progress: Optional[bool] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    distributed: Optional[Distributed] = None,
    callbacks: Sequence[Callback] = (),
    schedule_from_data: Sequence[str] = (),
) -> RunResult:
    """Train a new run, writing its directory as it goes.

    All inputs (options, data, the run directory, the memory one step needs) are checked
    before anything is written. ``config.dataset`` in the saved config is the data set
    actually used. The run directory is locked while it is written (:class:`~pyrovae.lock.RunLock`).

    :param run_dir: default ``runs/<dataset>-z<latent_dim>-<likelihood>-<time>``.
    :param bool overwrite: replace the files of a run already in ``run_dir``.
    :param bool fallback: see :func:`~pyrovae.data.load_dataset`.
    :param progress: draw progress bars; default only where a person watches (a terminal).
    :param should_stop: polled before every step; when it returns True a checkpoint of the
        current step is saved and the run returns unfinished, ready for :func:`resume_run`.
    :param distributed: this process's rank in a ``torchrun`` job (:mod:`pyrovae.distributed`);
        only rank 0 writes the run directory.
    :param callbacks: :class:`~pyrovae.train.Callback` objects (rank 0 only), told of the run
        (with its directory and config), of every epoch once it is saved, and of every step:
        :class:`~pyrovae.tracking.TensorBoardLogger`, or your own.
    :param schedule_from_data: ``"batch_size"`` and/or ``"num_epochs"``: options the user left
        at their defaults, to fit to the number of training images (:func:`schedule_for_data`).
    :raises RunInUseError: when another process is writing ``run_dir``.
    :raises StorageError: when a file cannot be written; the last checkpoint is intact.
    """
    distributed = distributed or Distributed()
    device = torch.device(device) if distributed.active else resolve_device(str(device))
    progress = watching() if progress is None else progress
    config = _absolute_paths(config)
    validate(config)
    if config.data_dir and not Path(config.data_dir).is_dir():  # given just now: a typo, not a move
        raise DataError(f"Data directory {config.data_dir} does not exist.")
    data = _main_first(distributed, device, lambda: load_data(config, fallback=fallback, progress=progress))
    config = config_for_data(config, data)
    if schedule_from_data:
        config, note = schedule_for_data(config, len(data.train_pixels), schedule_from_data, distributed.world_size)
        if note:
            data.notes.append(note)
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    claim = lambda: _claim_new_run_dir(run_dir, overwrite)  # noqa: E731
    return _start(config, data, run_dir, claim, device, progress, should_stop, distributed, callbacks)


def _start(config, data, run_dir, claim, device, progress, should_stop, distributed, callbacks) -> RunResult:
    """Build a fresh model for ``config``, check that it fits the data and the memory, then
    ``claim()`` the run directory (returning its held lock) and train."""
    check_against_data(config, data)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    vae = build_vae(config, init_images=data.train_pixels).to(device)
    trainer = _trainer(config, vae, data, distributed)
    check_step_memory(trainer, config.batch_size // distributed.world_size)
    lock = _main_first(distributed, device, claim, others=False)
    try:
        return _train(run_dir, config, trainer, None, progress, should_stop, distributed, callbacks)
    finally:
        if lock is not None:
            lock.release()


# A run left to its defaults takes at least this many steps: ten epochs of 4,000 images at
# batch 128 (mnist5k). 300 images at batch 128 make 3 steps an epoch, 30 in ten epochs, and
# the code collapses (issue 34: KL 2 nats, every reconstruction the same blob).
MIN_DEFAULT_STEPS = 320
SMALL_BATCH = 16  # the smallest batch size a small data set is given


def schedule_for_data(config: Config, count: int, names: Sequence[str],
                      processes: int = 1) -> Tuple[Config, Optional[str]]:
    """The batch size and epochs of ``names`` (options left at their defaults) fitted to
    ``count`` training images: batches of ``count // 16`` images (at least 16, at most the
    default, a multiple of ``processes``), so that an epoch has about 16 steps or more, and enough
    epochs for :data:`MIN_DEFAULT_STEPS` steps. Large data sets keep the defaults (MNIST: 128 and 10).

    :returns: the config, and a note saying what changed (None when nothing did).
    """
    changes = {}
    if "batch_size" in names:
        batch = min(config.batch_size, count, max(SMALL_BATCH, count // 16))
        changes["batch_size"] = max(processes, batch - batch % processes)
    batch = changes.get("batch_size", config.batch_size)
    if "num_epochs" in names:
        changes["num_epochs"] = max(config.num_epochs, math.ceil(MIN_DEFAULT_STEPS / math.ceil(count / batch)))
    changed = {name: value for name, value in changes.items() if value != getattr(config, name)}
    if not changed:
        return config, None
    config = config.replace(**changed).validate()
    steps = math.ceil(count / config.batch_size) * config.num_epochs
    said = {"batch_size": f"batches of {config.batch_size}", "num_epochs": f"{config.num_epochs} epochs"}
    return config, (f"{count} training images are few for the defaults: {' and '.join(said[n] for n in changed)} "
                    f"({steps} steps in all); --batch-size and --epochs choose")


def check_against_data(config: Config, data: ImageData) -> None:
    """Options that are impossible only with this data set: one sentence each, before anything
    is written."""
    count = len(data.train_pixels)  # (the Trainer checks --batch-size against it)
    if config.prior == "vamp" and config.num_pseudo_inputs > count:
        raise ConfigError(f"{{num_pseudo_inputs}} {config.num_pseudo_inputs} is more than the {count} training "
                          f"images of {data.name} they start from; use at most {count}.")
    model_family(config).training_labels(config, data)


def resume_run(
    run_dir,
    num_epochs: Optional[int] = None,
    *,
    device="cpu",
    progress: Optional[bool] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    distributed: Optional[Distributed] = None,
    callbacks: Sequence[Callback] = (),
    lr_drops: Optional[int] = None,
    changes: Optional[Dict[str, Any]] = None,
) -> RunResult:
    """Continue a run from its checkpoint exactly where it stopped (with any number of
    processes: a step means the same global batch whatever the number of ranks).

    A run that stopped before its first checkpoint starts again from its ``config.json``
    (the same seed gives the same run); one whose ``checkpoint.pt`` is gone continues from
    the newest checkpoint it keeps (``--keep-checkpoints``).

    :param num_epochs: a new total number of epochs; default the run's own.
    :param lr_drops: a new number of learning-rate cuts (``Config.lr_drops``); more than the run
        had continues one that stopped early, as if it had been started with them.
    :param changes: new values of other options that may change on resume
        (:func:`~pyrovae.config.changeable_on_resume`: ``grad_clip``, ``skip_grad_norm``,
        ``precision``, ``data_storage``); the run's ``config.json`` records them. Any other
        field raises :class:`~pyrovae.errors.ConfigError`.
    :param callbacks: as for :func:`train_run`; a TensorBoard log continues where it stopped.
    :raises RunInUseError: when another process is writing ``run_dir``.
    """
    changes = dict(changes or {}, **{k: v for k, v in (("num_epochs", num_epochs), ("lr_drops", lr_drops))
                                     if v is not None})
    fixed = sorted(set(changes) - set(changeable_on_resume()))
    if fixed:
        raise ConfigError(f"{', '.join('{' + name + '}' for name in fixed)} cannot change when a run resumes.")
    distributed = distributed or Distributed()
    device = torch.device(device) if distributed.active else resolve_device(str(device))
    progress = watching() if progress is None else progress
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"Run directory {run_dir} does not exist.")
    if is_exported(run_dir):
        raise ConfigError(f"{run_dir} holds an exported model (weights only, no training state), which cannot be "
                          "resumed; resume the run it was exported from.")
    lock = _main_first(distributed, device, lambda: RunLock(run_dir).acquire(), others=False)
    try:
        if not (run_dir / CHECKPOINT).is_file():
            restart = _main_first(distributed, device, lambda: _recover_checkpoint(run_dir, changes))
            if restart is not None:  # nothing saved yet: start again, with the lock already held
                data = _main_first(distributed, device, lambda: load_data(restart, fallback=False, progress=progress))
                claim = lambda: _remove_run_files(run_dir, [n for n in RUN_FILES if (run_dir / n).exists()])  # noqa: E731
                return _start(restart, data, run_dir, claim, device, progress, should_stop, distributed, callbacks)
        config, vae, state = load_run(run_dir, device, "last")
        if changes:
            config = config.replace(**changes).validate()
        history = [EpochMetrics(**m) for m in state["history"]]
        if not state["step"] and stopped_early(history, config):
            raise ConfigError(f"Run {run_dir} stopped early at epoch {state['epoch']}: its validation ELBO has not "
                              f"improved{_by_more(config)} since epoch {last_improvement(history, config)} "
                              f"({{patience}} {config.patience}); "
                              f"its best model is {run_dir / BEST}. To go on at a lower learning rate, resume it "
                              f"with {{lr_drops}} {config.lr_drops + 1}.")
        if state["epoch"] >= config.num_epochs and not state["step"]:
            raise ConfigError(
                f"Run {run_dir} has already trained for {state['epoch']} epochs; "
                "pass {num_epochs} with a larger total to train longer."
            )
        data = _main_first(distributed, device, lambda: load_data(config, fallback=False, progress=progress))
        if data.image_shape != config.image_shape:
            raise ConfigError(f"The images of {data.name} now have shape {data.image_shape}, but run {run_dir} was "
                              f"trained on {config.image_shape}; have the files changed?")
        check_same_data(state, data, run_dir)
        trainer = _trainer(config, vae, data, distributed)
        check_step_memory(trainer, config.batch_size // distributed.world_size)
        return _train(run_dir, config, trainer, state, progress, should_stop, distributed, callbacks)
    finally:
        if lock is not None:
            lock.release()


def check_same_data(state: dict, data: ImageData, run_dir) -> None:
    """:raises DataError: when the data a run's checkpoint recorded (:func:`~pyrovae.data.fingerprint`)
    is not the data found now: resuming would silently train on other images."""
    recorded = state.get("data")
    if not isinstance(recorded, dict):  # checkpoints from before the record
        return
    now = fingerprint(data)
    if recorded == now:
        return
    changes = [f"{recorded.get(split)} {split} images then, {now.get(split)} now"
               for split in ("train", "test", "validation") if recorded.get(split) != now.get(split)]
    what = "; ".join(changes) if changes else "as many images, but other pixels or labels"
    raise DataError(f"The images of run {run_dir} ({data.source}) changed since it was trained ({what}); resuming "
                    "would train on other data. Put the images back, or start a new run.")


def _recover_checkpoint(run_dir: Path, changes: Dict[str, Any]) -> Optional[Config]:
    """For a run without ``checkpoint.pt``: put the newest kept checkpoint in its place and
    return None, or, when the run never saved one, return the config to start it again with
    (its ``config.json`` with ``changes``).

    :raises CheckpointError: when there is neither a kept checkpoint nor a valid config.json.
    """
    candidates = [(epoch, _kept_path(run_dir, epoch), f"the checkpoint kept at the end of epoch {epoch}")
                   for epoch in kept_epochs(run_dir)]
    if (run_dir / BEST).is_file():  # the best epoch's full training state: never thrown away
        try:
            epoch = load_checkpoint(run_dir / BEST, RUN_KEYS)["epoch"]
            candidates.append((epoch, run_dir / BEST, f"{BEST}, its best epoch ({epoch})"))
        except CheckpointError as error:
            raise CheckpointError(f"Run {run_dir} has no {CHECKPOINT} and its {BEST} cannot be read ({error}); "
                                  f"move {BEST} away to start the run again from its {CONFIG}.") from None
    if candidates:
        _, source, words = max(candidates, key=lambda c: c[0])
        warnings.warn(RunRecoveryWarning(f"{run_dir / CHECKPOINT} is missing; continuing from {words}."),
                      stacklevel=2)
        atomic_write(run_dir / CHECKPOINT, lambda f: f.write(source.read_bytes()))
        return None
    config_path = run_dir / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} holds no run to resume (no {CHECKPOINT}, no {CONFIG}); start one with "
                              f"pyrovae train --run-dir {run_dir}.")
    try:
        config = Config.from_dict(json.loads(config_path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError, RecursionError, ConfigError) as e:
        raise CheckpointError(f"Run {run_dir} has no checkpoint and its {CONFIG} is damaged ({e}); start it again "
                              f"with pyrovae train --run-dir {run_dir} --overwrite and its options.") from None
    warnings.warn(RunRecoveryWarning(f"Run {run_dir} stopped before its first checkpoint; starting it again from "
                                     f"its {CONFIG}."), stacklevel=2)
    return config.replace(**changes).validate() if changes else config


def default_likelihood(data: ImageData, named: bool = True) -> str:
    """bernoulli for the MNIST family (binarized, as in the literature; ``named``: the data is
    a named data set, not the user's folder of the same name) and binary images, dlogistic
    for other 8-bit images, gaussian for continuous pixel values."""
    if named and data.name in MNIST_FAMILY:
        return named_likelihood(data.name)
    if data.levels == 2:
        return "bernoulli"
    return "dlogistic" if data.levels == 256 else "gaussian"


def config_for_data(config: Config, data: ImageData) -> Config:
    """The config for training on ``data``: its image shape, the data set actually loaded, a
    likelihood chosen for the data where none was (``likelihood=None``); an error for a
    likelihood that cannot describe the data."""
    changes = {"image_shape": data.image_shape}
    if not config.data and data.name != config.dataset:  # the offline fallback
        changes.update(dataset=data.name, data_dir=None)
    if config.data:
        changes["dataset"] = data.name
    likelihood = config.likelihood or default_likelihood(data, named=not config.data)
    changes["likelihood"] = likelihood
    alternatives = ("choose dlogistic or dlogistic_mix (8-bit pixels), gaussian, gaussian_learned or "
                    "continuous_bernoulli")
    if likelihood == "bernoulli" and data.image_shape[0] > 1 and data.levels != 2:
        raise ConfigError(f"{{likelihood}} bernoulli models black-and-white pixels, but {data.name} holds colour "
                          f"images; {alternatives}.")
    if likelihood.startswith("dlogistic") and data.levels is None:
        raise ConfigError(f"{{likelihood}} {likelihood} models the 256 values of 8-bit pixels, but {data.name} holds "
                          "values between them; pass uint8 images, or use gaussian or continuous_bernoulli.")
    changes.update(model_family(config).options_from_data(config, data))
    return config.replace(**changes).validate()


def _link_checkpoint(run_dir: Path, target: Path) -> None:
    """Make ``target`` the checkpoint just saved, atomically: a hard link where the file system
    has them (it costs no space: the next atomic save of checkpoint.pt replaces the name, not
    the file the link points to), else a copy."""
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        try:
            os.link(run_dir / CHECKPOINT, temporary)
        except OSError:
            shutil.copyfile(run_dir / CHECKPOINT, temporary)
        os.replace(temporary, target)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise StorageError(f"Cannot write {target}: {describe_os_error(e)}.") from None


def _keep_epoch_checkpoints(run_dir: Path, epoch: int, keep: int) -> None:
    """With ``keep`` > 1, keep the last ``keep`` end-of-epoch checkpoints in ``checkpoints/``
    (the newest is also ``checkpoint.pt``)."""
    folder = run_dir / CHECKPOINTS
    try:
        if keep > 1:
            folder.mkdir(exist_ok=True)
            _link_checkpoint(run_dir, _kept_path(run_dir, epoch))
        if folder.is_dir():
            saved = sorted(folder.glob("epoch_*.pt"))
            for old in saved[: max(0, len(saved) - (keep if keep > 1 else 0))]:
                old.unlink()
    except OSError as e:
        raise StorageError(f"Cannot keep the checkpoint of epoch {epoch} in {folder}: "
                           f"{describe_os_error(e)}.") from None


def _restore_lost_copies(run_dir: Path, config: Config, trainer: Trainer) -> None:
    """A run resumed at the end of an epoch whose kept checkpoint or ``best.pt`` was not
    written (a full disk stopped it after ``checkpoint.pt``): write them now, and say so."""
    epoch = trainer.epoch
    if not epoch or trainer.step or not (run_dir / CHECKPOINT).is_file():
        return
    lost = []
    if config.keep_checkpoints > 1 and not _kept_path(run_dir, epoch).is_file():
        _keep_epoch_checkpoints(run_dir, epoch, config.keep_checkpoints)
        lost.append(f"the kept checkpoint of epoch {epoch}")
    if best_epoch(trainer.history) == epoch and not (run_dir / BEST).is_file():
        _link_checkpoint(run_dir, run_dir / BEST)
        lost.append(f"{BEST} (epoch {epoch})")
    if lost:
        warnings.warn(RunRecoveryWarning(f"Wrote {' and '.join(lost)}, which an earlier write had left out."),
                      stacklevel=2)


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files left by a process killed in the middle of an atomic write."""
    try:
        for path in run_dir.rglob(".*.tmp"):
            path.unlink(missing_ok=True)
    except OSError as e:
        raise StorageError(f"Cannot clean up {run_dir}: {describe_os_error(e)}.") from None


def _main_first(distributed: Distributed, device, task: Callable, others: bool = True):
    """Run ``task`` on rank 0 (which may download or create files), then, once it succeeded,
    on the other ranks when ``others``; a failure anywhere is raised on every rank."""
    result, error = None, None
    if distributed.is_main:
        try:
            result = task()
        except PyroVAEError as e:
            error = e
    distributed.agree(error, device)
    if others and not distributed.is_main:
        result = task()
    return result


def _trainer(config: Config, vae: VAE, data: ImageData, distributed: Distributed) -> Trainer:
    labels = model_family(config).training_labels(config, data)
    return Trainer(vae, data, batch_size=config.batch_size, elbo=build_elbo(config),
                   optimizer=build_optimizer(config, vae.parameters()), warmup_epochs=config.warmup_epochs,
                   beta=config.beta, distributed=distributed, labels=labels, storage=config.data_storage,
                   precision=config.precision, grad_clip=config.grad_clip,
                   skip_grad_norm=config.skip_grad_norm, ema=config.ema)


def _train(run_dir, config, trainer, state, progress, should_stop, distributed, callbacks) -> RunResult:
    writes = distributed.is_main  # with torchrun, rank 0 alone writes the run directory
    vae = trainer.vae
    if writes:
        _remove_stale_temporaries(run_dir)
        for name in (SAMPLES, RECONSTRUCTIONS):
            try:
                (run_dir / name).mkdir(exist_ok=True)
            except OSError as e:
                raise StorageError(f"Cannot create {run_dir / name}: {describe_os_error(e)}.") from None
    vae.train()
    if state is not None:
        trainer.load_state_dict(state)
    if writes:
        atomic_write(run_dir / CONFIG, lambda f: f.write(config.to_json().encode()))
        _write_metrics(run_dir, trainer.history)
    callbacks = list(callbacks) if writes else []
    trainer.callbacks += callbacks  # they see every step too
    with observed(TrainingRun(trainer, run_dir, config), callbacks) as run:
        return _epochs(run, should_stop, progress, writes, callbacks)


def _epochs(run: TrainingRun, should_stop, progress, writes, callbacks) -> RunResult:
    """Train epoch after epoch until the last, early stopping, or a stop request."""
    run_dir, config, trainer = run.run_dir, run.config, run.trainer

    data = fingerprint(trainer.data)
    if writes:
        _restore_lost_copies(run_dir, config, trainer)

    def checkpoint():
        if writes:
            save_checkpoint(run_dir / CHECKPOINT, {"config": config.to_dict(), "data": data, **trainer.state_dict()})

    while trainer.epoch < config.num_epochs and not stopped_early(trainer.history, config):
        lr = learning_rate(trainer.history, config)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        metrics = trainer.run_epoch(config.num_epochs, should_stop=should_stop, progress=progress and writes)
        if metrics is None:
            checkpoint()
            return RunResult(run_dir, config, trainer.history, finished=False)
        if writes:
            pictures = _save_pictures(run_dir, trainer.scored, trainer, config, metrics.epoch)
            checkpoint()
            _keep_epoch_checkpoints(run_dir, metrics.epoch, config.keep_checkpoints)
            if best_epoch(trainer.history) == metrics.epoch:
                _link_checkpoint(run_dir, run_dir / BEST)
            _write_metrics(run_dir, trainer.history)
            for callback in callbacks:
                callback.on_epoch_saved(run, metrics, pictures)
    return RunResult(run_dir, config, trainer.history, finished=True)
