"""The reading side of what pyrovae writes: the layout of a run directory, its checkpoints
and history, and the folders ``pyrovae export`` writes; rebuilding a model from either.

A run directory holds::

    config.json                     the Config, including the data set actually used
    metrics.jsonl                   one EpochMetrics per line
    checkpoint.pt                   model, guide, optimizer, epoch, step, data order, RNG states
    checkpoints/epoch_0001.pt       the last N end-of-epoch checkpoints, with --keep-checkpoints N > 1
    best.pt                         the checkpoint of the epoch with the best validation ELBO (--validation-size)
    samples/epoch_0001.png          decoded prior samples (the same z every epoch)
    samples/epoch_0001.pt           the first 16 of them as 8-bit tensors (the evolution figure)
    reconstructions/epoch_0001.png  rows of test images, each followed by its reconstruction
    tensorboard/                    TensorBoard's event files, with --log tensorboard (pyrovae.tracking)
    .lock                           held by the process writing the run (pyrovae.lock)

Writing runs (training, resuming) is :mod:`pyrovae.run`; writing exported folders is
:mod:`pyrovae.exported`. Nothing here imports either.
"""

import hashlib
import json
import os
import math
import warnings
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch

from pyrovae.checkpoint import RUN_KEYS, load_checkpoint, mismatch_detail, state_problem
from pyrovae.config import Config
from pyrovae.devices import resolve_device
from pyrovae.errors import CheckpointError, ConfigError
from pyrovae.metrics import EpochMetrics
from pyrovae.registry import build_vae
from pyrovae.vae import VAE

__all__ = ["CONFIG", "METRICS", "CHECKPOINT", "CHECKPOINTS", "BEST", "SAMPLES", "RECONSTRUCTIONS", "MODEL_FILE",
           "RunRecoveryWarning", "best_epoch", "kept_epochs", "full_history", "load_run", "load", "load_exported",
           "is_exported", "with_data_dir"]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
CHECKPOINTS = "checkpoints"
BEST = "best.pt"
SAMPLES = "samples"
RECONSTRUCTIONS = "reconstructions"

# An exported folder (pyrovae export): the model card, its config and weights.
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FORMAT = "pyrovae-model-v1"


class RunRecoveryWarning(UserWarning):
    """A run's files were incomplete or damaged, and pyrovae carried on from what is intact."""


def best_epoch(history: List[EpochMetrics]) -> Optional[int]:
    """The first epoch with the highest validation ELBO, or None when none was measured."""
    scored = [m for m in history if m.validation_elbo is not None and math.isfinite(m.validation_elbo)]
    return max(scored, key=lambda m: (m.validation_elbo, -m.epoch)).epoch if scored else None


def _kept_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / CHECKPOINTS / f"epoch_{epoch:04d}.pt"


def _load_state(run_dir: Path, epoch: Union[int, str]) -> Tuple[Path, dict]:
    """The checkpoint to load and its state: ``"last"`` the newest (``checkpoint.pt``),
    ``"best"`` the best-validation one (``best.pt``, else the newest), or the one kept at the
    end of epoch ``epoch`` (``--keep-checkpoints``).

    :raises CheckpointError: naming the epochs that are kept, when ``epoch`` is not one of them.
    """
    newest = run_dir / CHECKPOINT
    if epoch == "best" and (run_dir / BEST).is_file():
        return run_dir / BEST, load_checkpoint(run_dir / BEST, RUN_KEYS)
    if epoch in ("best", "last"):
        if not newest.is_file() and (run_dir / CONFIG).is_file():
            raise CheckpointError(f"Run {run_dir} has no checkpoint ({CHECKPOINT}): it stopped before saving one, or "
                                  f"the file was removed; pyrovae train --resume {run_dir} starts it again.")
        return newest, load_checkpoint(newest, RUN_KEYS)
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise ConfigError(f"Unknown checkpoint {epoch!r}; use 'best', 'last' or an epoch number.")
    if _kept_path(run_dir, epoch).is_file():
        return _kept_path(run_dir, epoch), load_checkpoint(_kept_path(run_dir, epoch), RUN_KEYS)
    for path in (newest, run_dir / BEST):  # with --keep-checkpoints 1 an epoch may live on only here
        try:
            state = load_checkpoint(path, RUN_KEYS) if path.is_file() else {}
            if state.get("epoch") == epoch and not state.get("step"):
                return path, state
        except CheckpointError:  # a missing or damaged checkpoint is no epoch's
            pass
    epochs = kept_epochs(run_dir)
    have = (f"the kept ones are of epochs {', '.join(map(str, epochs))}" if epochs else
            "it keeps only its newest (train with --keep-checkpoints N to keep more)")
    raise CheckpointError(f"Run {run_dir} has no checkpoint of epoch {epoch}; {have}.")


def full_history(run_dir, state: dict) -> List[EpochMetrics]:
    """The metrics of every epoch of the run whose checkpoint ``state`` is: those of its
    newest checkpoint when ``state`` is an earlier one (``best.pt``, a kept epoch)."""
    history, run_dir = state["history"], Path(run_dir)
    earlier_kept = (run_dir / BEST).is_file() or kept_epochs(run_dir)  # else ``state`` is the newest
    if earlier_kept and (run_dir / CHECKPOINT).is_file():
        try:
            newest = load_checkpoint(run_dir / CHECKPOINT, RUN_KEYS)["history"]
            if len(newest) > len(history):
                history = newest
        except (CheckpointError, KeyError, TypeError):
            pass  # the loaded checkpoint's own metrics are still true
    return [EpochMetrics(**m) for m in history]


def kept_epochs(run_dir) -> List[int]:
    """The epochs whose end-of-epoch checkpoints ``run_dir`` keeps in ``checkpoints/``."""
    folder = Path(run_dir) / CHECKPOINTS
    epochs = []
    for path in folder.glob("epoch_*.pt") if folder.is_dir() else ():
        try:
            epochs.append(int(path.stem.split("_")[1]))
        except (IndexError, ValueError):
            continue
    return sorted(epochs)


def load_run(run_dir, device="cpu", epoch: Union[int, str] = "best") -> Tuple[Config, VAE, dict]:
    """Rebuild a run's model from its checkpoint (or a model written by ``pyrovae export``),
    on ``device``.

    :param epoch: ``"best"``: the epoch with the best validation ELBO of a run trained with
        ``--validation-size`` (``best.pt``), else the newest; ``"last"``: the newest
        (``checkpoint.pt``); a number: the checkpoint kept at the end of that epoch
        (``--keep-checkpoints``).
    :returns: the config, the VAE (in eval mode) and the raw checkpoint state.
    :raises CheckpointError: if the directory, its config or its checkpoint is missing,
        unsafe, corrupt, or describes a different model.
    """
    epoch = "best" if epoch is None else epoch
    if not isinstance(run_dir, (str, os.PathLike)):
        raise CheckpointError(f"A run is named by its folder (a path), not by a {type(run_dir).__name__}.")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"Run directory {run_dir} does not exist.")
    if is_exported(run_dir):
        return load_exported(run_dir, device, epoch)
    path, state = _load_state(run_dir, epoch)
    try:
        config = Config.from_dict(state["config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"Checkpoint {path} holds no valid configuration ({e}).") from None
    config_path = run_dir / CONFIG
    if config_path.is_file():
        try:
            on_disk = Config.from_dict(json.loads(config_path.read_text()))
        except (OSError, ValueError, TypeError, AttributeError, RecursionError, ConfigError) as e:
            # The checkpoint holds the whole configuration; resuming writes config.json again.
            warnings.warn(RunRecoveryWarning(f"{config_path} is damaged ({str(e).splitlines()[0] if str(e) else e!r}); "
                                             f"using the configuration saved in {path}."), stacklevel=2)
            on_disk = config
        if on_disk.model_signature() != config.model_signature():
            diff = [f"{k} {v} vs {config.model_signature()[k]}"
                    for k, v in on_disk.model_signature().items() if v != config.model_signature()[k]]
            raise CheckpointError(
                f"Checkpoint {path} is from another model than {config_path} describes "
                f"({'; '.join(diff)}); if {CONFIG} was edited, delete it: the checkpoint holds the run's "
                "configuration, and resuming writes it again."
            )
    vae = build_vae(config)
    try:
        vae.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"Checkpoint {path} does not fit the model of its config: {mismatch_detail(e)}") from None
    _check_finite(vae, path)
    return config, vae.to(device).eval(), state


def _check_finite(vae: VAE, path: Path) -> None:
    """:raises CheckpointError: when a weight of the model read from ``path`` is NaN or infinite."""
    for name, tensor in vae.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path} holds NaN or infinite weights ({name}); the model cannot be used. Use an "
                                  "earlier checkpoint (--checkpoint EPOCH) or train again.")


def with_data_dir(config: Config, data_dir, run_dir) -> Config:
    """A run's config with its named data set looked for in ``data_dir`` (where it has moved);
    the config itself when ``data_dir`` is None."""
    if data_dir is None:
        return config
    if config.data:
        raise ConfigError(f"{{data_dir}} finds the named data sets; {run_dir} was trained on images from "
                          f"{config.data}.")
    return _absolute_paths(config.replace(data_dir=data_dir))


def _absolute_paths(config: Config) -> Config:
    """The config with its data paths made absolute, so the run finds them from anywhere."""
    paths = {name: str(Path(getattr(config, name)).expanduser().resolve())
             for name in ("data", "test_data", "data_dir") if getattr(config, name)}
    return config.replace(**paths)


def is_exported(folder) -> bool:
    """Whether ``folder`` holds an exported model rather than a training run."""
    folder = Path(folder)
    return (folder / MODEL_FILE).is_file() and not (folder / CHECKPOINT).is_file()


def load(path, checkpoint: Union[str, int] = "best", device="cpu") -> VAE:
    """The trained VAE of a run directory or of a folder written by :func:`export`, on
    ``device``, in eval mode; ``vae.config`` is its :class:`~pyrovae.config.Config`.

    :param checkpoint: for a run: ``"best"`` (the best validation epoch, else the newest),
        ``"last"`` or an epoch kept by ``--keep-checkpoints``. An exported folder holds one.
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`.
    :raises CheckpointError: when the folder holds no model, or a damaged or foreign one.

    Example::

        vae = pyrovae.load("runs/demo")
        q = vae.encode(images)                  # q(z|x); images (N, C, H, W), pixels in [0, 1]
        codes = vae.posterior_mean(images)      # E_q[z|x], (N, latent_dim)
        pictures = vae.sample(16)               # mean images, pixels in [0, 1]
    """
    config, vae, _ = load_run(path, resolve_device(str(device)), checkpoint)
    vae.config = config
    return vae


def load_exported(folder, device="cpu", epoch: Union[str, int] = "best") -> Tuple[Config, VAE, dict]:
    """:func:`load_run` for an exported folder: the config, the VAE (eval mode,
    on ``device``) and a state holding the exported epoch and the run's metrics."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    path, config_path = folder / MODEL_FILE, folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{folder} holds {MODEL_FILE} but no {CONFIG_FILE}, which says what model the weights "
                              "belong to.")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else repr(e)
        raise CheckpointError(f"{path} is truncated or corrupt ({detail}).") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a model exported by pyrovae.")
    try:
        state = {"epoch": int(metadata.get("epoch", 0)), "step": int(metadata.get("step", 0)),
                 "history": json.loads(metadata.get("history", "[]"))}
    except (ValueError, RecursionError):
        raise CheckpointError(f"The metadata of {path} is damaged.") from None
    problem = state_problem(state)
    if problem:
        raise CheckpointError(f"The metadata of {path} is damaged: {problem}.")
    if epoch not in ("best", "last", state["epoch"]):
        raise CheckpointError(f"{folder} is an exported model of epoch {state['epoch']} only; leave out --checkpoint.")
    try:
        config_bytes = config_path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"Cannot read {config_path}: {e.strerror or e}.") from None
    expected = metadata.get("config_sha256")
    if expected is not None and hashlib.sha256(config_bytes).hexdigest() != expected:
        raise CheckpointError(f"{folder} holds the weights of one export and the {CONFIG_FILE} of another (an "
                              f"export was interrupted, or {CONFIG_FILE} was edited); export the model into it again.")
    try:
        values = json.loads(config_bytes)
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        config = Config.from_dict(values)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError, ConfigError) as e:
        detail = str(e).splitlines()[0] if str(e) else repr(e)
        raise CheckpointError(f"{config_path} is damaged ({detail}); it describes the model the weights belong to.") \
            from None
    vae = build_vae(config)
    try:
        vae.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the model {config_path} describes: {mismatch_detail(e)}") from None
    _check_finite(vae, path)
    return config, vae.to(device).eval(), state
