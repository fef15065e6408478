"""Run directories: what a training run writes, and how a run is rebuilt to resume or evaluate.

A run directory holds::

    config.json                     the Config, including the data set actually used
    metrics.jsonl                   one EpochMetrics per line
    checkpoint.pt                   model, guide, optimizer, epoch, step, data order, RNG states
    checkpoints/epoch_0001.pt       older end-of-epoch checkpoints, with --keep-checkpoints N > 1
    samples/epoch_0001.png          decoded prior samples (the same z every epoch)
    samples/epoch_0001.pt           the first 16 of them as 8-bit tensors (the evolution figure)
    reconstructions/epoch_0001.png  rows of test images, each followed by its reconstruction
"""

import json
import os
import random
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from pyrovae.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from pyrovae.config import Config
from pyrovae.data import MNIST_FAMILY, ImageData, load_data, spread_subset
from pyrovae.distributed import Distributed
from pyrovae.errors import CheckpointError, ConfigError, PyroVAEError
from pyrovae.registry import build_elbo, build_vae, model_family
from pyrovae.train import EpochMetrics, Trainer
from pyrovae.vae import VAE

__all__ = ["RunResult", "train_run", "resume_run", "load_run", "resolve_device", "default_run_dir", "save_grid"]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
RECONSTRUCTIONS = "reconstructions"
# Everything a run writes; --overwrite removes exactly these and nothing else.
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, CHECKPOINTS, SAMPLES, RECONSTRUCTIONS)
NUM_PICTURES = 64
EVOLUTION_IMAGES = 16  # of each epoch's samples, kept as tensors for the evolution figure
GRID_PADDING = 2  # pixels between the images of a saved grid


@dataclass
class RunResult:
    run_dir: Path
    config: Config
    history: List[EpochMetrics]
    finished: bool  # False when training was stopped early and can be resumed


def resolve_device(device: Optional[str] = None, cuda: bool = False) -> torch.device:
    """The torch device for ``--device``/``--cuda``, or a :class:`ConfigError` if it is not there."""
    name = "cuda" if cuda and not device else (device or "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device {name!r}; use cpu, cuda or cuda:N.") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"CUDA was requested ({name}) but no CUDA device is available on this machine.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"{name} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif resolved.type != "cpu":
        raise ConfigError(f"Device {name!r} is not supported; use cpu, cuda or cuda:N.")
    return resolved


def default_run_dir(config: Config, root="runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{config.dataset}-z{config.latent_dim}-{config.likelihood}-{stamp}"


def save_grid(images: torch.Tensor, path, nrow: int = 8) -> None:
    """Save images in [0, 1] as one grid, in the format the file name says (written atomically)."""
    from PIL import Image

    grid = make_grid(images.detach().cpu(), nrow=nrow, padding=GRID_PADDING, pad_value=1.0)
    image_format = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    atomic_write(path, lambda f: save_image(grid, f, format=image_format))


def _save_pictures(run_dir: Path, vae: VAE, trainer: Trainer, config: Config, epoch: int) -> None:
    vae.eval()
    samples = vae.sample(NUM_PICTURES, mean=True, z=vae.fixed_latents(NUM_PICTURES, config.seed))
    save_grid(samples, run_dir / SAMPLES / f"epoch_{epoch:04d}.png")
    pixels = samples[:EVOLUTION_IMAGES].mul(255).round().to(torch.uint8).cpu()
    atomic_write(run_dir / SAMPLES / f"epoch_{epoch:04d}.pt", lambda f: torch.save(pixels, f))
    per_row = min(8, len(trainer.test_images))
    rows = min(4, len(trainer.test_images) // per_row)
    originals = trainer.test_images[spread_subset(rows * per_row, len(trainer.test_images))]
    reconstructions = vae.reconstruct(originals)
    # Rows of originals, each followed by the row of their reconstructions.
    pairs = torch.stack([originals.view(rows, per_row, *originals.shape[1:]),
                         reconstructions.view(rows, per_row, *originals.shape[1:])], dim=1)
    save_grid(pairs.flatten(0, 2), run_dir / RECONSTRUCTIONS / f"epoch_{epoch:04d}.png", nrow=per_row)
    vae.train()


def _write_metrics(run_dir: Path, history: List[EpochMetrics]) -> None:
    lines = "".join(json.dumps(m.to_dict()) + "\n" for m in history)
    atomic_write(run_dir / METRICS, lambda f: f.write(lines.encode()))


def _prepare_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"Run directory {run_dir} exists and is not a directory.")
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"Run directory {run_dir} already holds a run; pass --resume {run_dir} to continue it "
            "or --overwrite to replace it."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".pyrovae-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"Run directory {run_dir} is not writable: {e.strerror or e}.") from None
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def load_run(run_dir, device="cpu") -> Tuple[Config, VAE, dict]:
    """Rebuild a run's model from its checkpoint, on ``device``.

    :returns: the config, the VAE (in eval mode) and the raw checkpoint state.
    :raises CheckpointError: if the directory, its config or its checkpoint is missing,
        unsafe, corrupt, or describes a different model.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"Run directory {run_dir} does not exist.")
    state = load_checkpoint(run_dir / CHECKPOINT)
    try:
        config = Config.from_dict(state["config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"Checkpoint {run_dir / CHECKPOINT} holds no valid configuration ({e}).") from None
    config_path = run_dir / CONFIG
    if config_path.is_file():
        try:
            on_disk = Config.from_dict(json.loads(config_path.read_text()))
        except (ValueError, TypeError, ConfigError) as e:
            raise CheckpointError(f"{config_path} is not a valid pyrovae configuration ({e}).") from None
        if on_disk.model_signature() != config.model_signature():
            diff = [f"{k} {v} vs {config.model_signature()[k]}"
                    for k, v in on_disk.model_signature().items() if v != config.model_signature()[k]]
            raise CheckpointError(
                f"Checkpoint {run_dir / CHECKPOINT} is from another model than {config_path} describes "
                f"({'; '.join(diff)})."
            )
    vae = build_vae(config)
    try:
        vae.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line
                       or "Missing" in line or "Unexpected" in line), str(e).splitlines()[0])
        raise CheckpointError(f"Checkpoint {run_dir / CHECKPOINT} does not fit the model of its config: {detail}") from None
    return config, vae.to(device).eval(), state


def train_run(
    config: Config,
    run_dir=None,
    *,
    overwrite: bool = False,
    device="cpu",
    fallback: bool = True,
    progress: bool = True,
    should_stop: Optional[Callable[[], bool]] = None,
    on_start: Optional[Callable[[Path, Config, ImageData, int], None]] = None,
    on_epoch_end: Optional[Callable[[EpochMetrics], None]] = None,
    distributed: Optional[Distributed] = None,
) -> RunResult:
    """Train a new run, writing its directory as it goes.

    All inputs (options, data, the run directory) are checked before anything is written.
    ``config.dataset`` in the saved config is the data set actually used.

    :param run_dir: default ``runs/<dataset>-z<latent_dim>-<likelihood>-<time>``.
    :param bool overwrite: replace the files of a run already in ``run_dir``.
    :param bool fallback: see :func:`~pyrovae.data.load_dataset`.
    :param should_stop: polled before every step; when it returns True a checkpoint of the
        current step is saved and the run returns unfinished, ready for :func:`resume_run`.
    :param on_start: called with the run directory, config, data and first epoch before training.
    :param on_epoch_end: called with each epoch's metrics after its checkpoint is saved.
    :param distributed: this process's rank in a ``torchrun`` job (:mod:`pyrovae.distributed`);
        only rank 0 writes the run directory.
    """
    distributed = distributed or Distributed()
    device = torch.device(device) if distributed.active else resolve_device(str(device))
    config = _absolute_paths(config)
    config.validate()
    data = _main_first(distributed, device, lambda: load_data(config, fallback=fallback, progress=progress))
    config = fit_to_data(config, data)
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    if config.batch_size > len(data.train_images):
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {len(data.train_images)} "
            f"training images of {data.name}."
        )
    if config.batch_size % distributed.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} must be a multiple of the {distributed.world_size} "
                          "processes, so that every rank gets the same share of each batch.")
    model_family(config).training_labels(config, data)  # labels must fit before anything is written
    _main_first(distributed, device, lambda: _prepare_new_run_dir(run_dir, overwrite), others=False)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    vae = build_vae(config, init_images=data.train_images).to(device)
    return _train(run_dir, config, vae, data, None, progress, should_stop, on_start, on_epoch_end, distributed)


def resume_run(
    run_dir,
    num_epochs: Optional[int] = None,
    *,
    device="cpu",
    progress: bool = True,
    should_stop: Optional[Callable[[], bool]] = None,
    on_start: Optional[Callable[[Path, Config, ImageData, int], None]] = None,
    on_epoch_end: Optional[Callable[[EpochMetrics], None]] = None,
    distributed: Optional[Distributed] = None,
) -> RunResult:
    """Continue a run from its checkpoint exactly where it stopped (with any number of
    processes: a step means the same global batch whatever the number of ranks).

    :param num_epochs: a new total number of epochs; default the run's own.
    """
    distributed = distributed or Distributed()
    device = torch.device(device) if distributed.active else resolve_device(str(device))
    run_dir = Path(run_dir)
    config, vae, state = load_run(run_dir, device)
    if num_epochs is not None:
        config = config.replace(num_epochs=num_epochs).validate()
    if state["epoch"] >= config.num_epochs and not state["step"]:
        raise ConfigError(
            f"Run {run_dir} has already trained for {state['epoch']} epochs; "
            "pass --epochs with a larger total to train longer."
        )
    data = _main_first(distributed, device, lambda: load_data(config, fallback=False, progress=progress))
    if data.image_shape != config.image_shape:
        raise ConfigError(f"The images of {data.name} now have shape {data.image_shape}, but run {run_dir} was "
                          f"trained on {config.image_shape}; have the files changed?")
    return _train(run_dir, config, vae, data, state, progress, should_stop, on_start, on_epoch_end, distributed)


def _absolute_paths(config: Config) -> Config:
    """The config with its data paths made absolute, so the run finds them from anywhere."""
    paths = {name: str(Path(getattr(config, name)).expanduser().resolve())
             for name in ("data", "test_data", "data_dir") if getattr(config, name)}
    return config.replace(**paths)


def default_likelihood(data: ImageData, named: bool = True) -> str:
    """bernoulli for the MNIST family (binarized, as in the literature; ``named``: the data is
    a named data set, not the user's folder of the same name) and binary images, dlogistic
    for other 8-bit images, gaussian for continuous pixel values."""
    if (named and data.name in MNIST_FAMILY) or data.levels == 2:
        return "bernoulli"
    return "dlogistic" if data.levels == 256 else "gaussian"


def fit_to_data(config: Config, data: ImageData) -> Config:
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
    alternatives = "choose dlogistic or dlogistic_mix (8-bit pixels), gaussian, gaussian_learned or continuous_bernoulli"
    if likelihood == "bernoulli" and data.image_shape[0] > 1 and data.levels != 2:
        raise ConfigError(f"--likelihood bernoulli models black-and-white pixels, but {data.name} holds colour "
                          f"images; {alternatives}.")
    if likelihood.startswith("dlogistic") and data.levels is None:
        raise ConfigError(f"--likelihood {likelihood} models the 256 values of 8-bit pixels, but {data.name} holds "
                          "values between them; pass uint8 images, or use gaussian or continuous_bernoulli.")
    return config.replace(**changes).validate()


def _keep_epoch_checkpoints(run_dir: Path, epoch: int, keep: int) -> None:
    """Keep the newest ``keep - 1`` end-of-epoch checkpoints besides ``checkpoint.pt``."""
    folder = run_dir / CHECKPOINTS
    if keep > 1:
        folder.mkdir(exist_ok=True)
        target = folder / f"epoch_{epoch:04d}.pt"
        target.unlink(missing_ok=True)
        # A hard link costs no space: the next atomic save of checkpoint.pt replaces the
        # name, not the file this link points to.
        try:
            os.link(run_dir / CHECKPOINT, target)
        except OSError:
            shutil.copyfile(run_dir / CHECKPOINT, target)
    if folder.is_dir():
        saved = sorted(folder.glob("epoch_*.pt"))
        for old in saved[: max(0, len(saved) - (keep - 1))]:
            old.unlink()


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files left by a process killed in the middle of an atomic write."""
    for path in run_dir.rglob(".*.tmp"):
        path.unlink(missing_ok=True)


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
    return Trainer(vae, data, batch_size=config.batch_size, lr=config.lr, elbo=build_elbo(config),
                   warmup_epochs=config.warmup_epochs, beta=config.beta, distributed=distributed, labels=labels)


def _train(run_dir, config, vae, data, state, progress, should_stop, on_start, on_epoch_end,
           distributed) -> RunResult:
    writes = distributed.is_main  # with torchrun, rank 0 alone writes the run directory
    if writes:
        _remove_stale_temporaries(run_dir)
        for name in (SAMPLES, RECONSTRUCTIONS):
            (run_dir / name).mkdir(exist_ok=True)
    vae.train()
    trainer = _trainer(config, vae, data, distributed)
    if state is not None:
        trainer.load_state_dict(state)
    if writes:
        atomic_write(run_dir / CONFIG, lambda f: f.write(config.to_json().encode()))
        _write_metrics(run_dir, trainer.history)
    if on_start is not None:
        on_start(run_dir, config, data, trainer.epoch + 1)

    def checkpoint():
        if writes:
            save_checkpoint(run_dir / CHECKPOINT, {"config": config.to_dict(), **trainer.state_dict()})

    while trainer.epoch < config.num_epochs:
        metrics = trainer.run_epoch(config.num_epochs, should_stop=should_stop, progress=progress and writes)
        if metrics is None:
            checkpoint()
            return RunResult(run_dir, config, trainer.history, finished=False)
        if writes:
            _save_pictures(run_dir, vae, trainer, config, metrics.epoch)
            checkpoint()
            _keep_epoch_checkpoints(run_dir, metrics.epoch, config.keep_checkpoints)
            _write_metrics(run_dir, trainer.history)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    return RunResult(run_dir, config, trainer.history, finished=True)
