"""Trained models without their training state, to use and to share.

:func:`export` writes a folder in the layout of a Hugging Face model repository (upload it
as it is)::

    config.json          every option of the run (pyrovae train --config config.json trains it again)
    model.safetensors    the weights; safetensors holds tensors only, so loading it runs no code
    README.md            a model card: what was trained, its scores, how to load it

:func:`load` (defined with the rest of the reading side, :mod:`pyrovae.rundir`) reads such a
folder, or any run directory, back as a VAE ready to use.
"""

import hashlib
import json
from pathlib import Path
from typing import Optional, Union

from pyrovae import __version__
from pyrovae.checkpoint import atomic_write
from pyrovae.config import Config
from pyrovae.errors import ConfigError, StorageError, describe_os_error
from pyrovae.metrics import EpochMetrics
from pyrovae.rundir import (CARD_FILE, CHECKPOINT, CONFIG_FILE, FORMAT, METRICS, MODEL_FILE, best_epoch, is_exported,
                            load, load_exported, load_run)

__all__ = ["MODEL_FILE", "export", "load", "is_exported", "load_exported"]

# What a folder may hold besides an export: a Hugging Face model repository's own files.
REPOSITORY_FILES = (".git", ".gitattributes", ".huggingface", ".cache")


def export(run_dir, folder, checkpoint: Union[str, int] = "best", overwrite: bool = False) -> Path:
    """Write the model of ``run_dir``'s ``checkpoint`` to ``folder`` (created if needed) as
    ``config.json``, ``model.safetensors`` and a ``README.md`` model card; no optimizer, data
    order or random state. :func:`load` reads it back with identical outputs.

    The files are made in memory first and then written weights first; the weights record a
    hash of the ``config.json`` they belong to, so a folder left with the weights of one
    export and the config of another (a full disk between two files) is refused by
    :func:`load`, never scored.

    :raises ConfigError: when ``folder`` is a run directory, holds files other than an
        export's (a Hugging Face repository's ``.git`` and ``.gitattributes`` aside), or already
        holds a model and ``overwrite`` is False.
    :returns: ``folder``.
    """
    from safetensors.torch import save as save_tensors

    folder, run_dir = Path(folder), Path(run_dir)
    config, vae, state = load_run(run_dir, "cpu", checkpoint)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder.")
    if (folder / CHECKPOINT).exists() or (folder / METRICS).exists():
        raise ConfigError(f"{folder} is a run directory; export into a folder of its own.")
    existing = [name for name in (CONFIG_FILE, MODEL_FILE, CARD_FILE) if (folder / name).exists()]
    others = sorted(p.name for p in folder.iterdir() if p.name not in (CONFIG_FILE, MODEL_FILE, CARD_FILE)
                    and p.name not in REPOSITORY_FILES) if folder.is_dir() else []
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ConfigError(f"{folder} already holds other files ({listed}); export into an empty folder or an "
                          "earlier export.")
    if existing and not overwrite:
        raise ConfigError(f"{folder} already holds {', '.join(existing)}; pass --overwrite to replace them.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"Cannot create {folder}: {describe_os_error(e)}.") from None
    tensors = {name: value.detach().contiguous() for name, value in vae.state_dict().items()}
    history = [EpochMetrics(**m) for m in state["history"]]
    config_bytes = config.to_json().encode()
    metadata = {"format": FORMAT, "pyrovae_version": __version__, "epoch": str(state["epoch"]),
                "step": str(state["step"]), "history": json.dumps(state["history"]),
                "config_sha256": hashlib.sha256(config_bytes).hexdigest()}
    weights = save_tensors(tensors, metadata)
    card = model_card(folder.name, config, state["epoch"], best_epoch(history), history, vae.code_levels()).encode()
    atomic_write(folder / MODEL_FILE, lambda f: f.write(weights))
    atomic_write(folder / CONFIG_FILE, lambda f: f.write(config_bytes))
    atomic_write(folder / CARD_FILE, lambda f: f.write(card))
    return folder


def model_card(name: str, config: Config, epoch: int, best, history, levels: Optional[dict] = None) -> str:
    """A Hugging Face model card (front matter, then Markdown) for an exported model; ``levels``
    (the family's ``code_levels()``) names each level of a hierarchy with its size."""
    shape = "x".join(map(str, config.image_shape[1:])) + (" colour" if config.image_shape[0] == 3 else " grey")
    hidden = ", ".join(map(str, config.hidden_dims))
    chosen = " (its best validation ELBO)" if best == epoch else ""
    code = f"z of {config.latent_dim} dimensions"
    if levels is not None and len(levels) > 1:
        code = "levels of latents " + ", ".join(f"{site} ({size} numbers)" for site, size in levels.items())
    lines = [
        "---", "library_name: pyrovae", "tags:", "- pyro", "- variational-autoencoder", "- generative", "---", "",
        f"# {name}", "",
        f"A variational autoencoder trained with pyrovae on {config.dataset} ({shape} images): "
        f"{config.prior.replace('_', ' ')} prior, {code}, {config.net} networks "
        f"({hidden}), {config.guide.replace('_', ' ')} guide, {config.likelihood} likelihood, seed {config.seed}.", "",
        f"These are the weights after epoch {epoch}{chosen}.",
    ]
    scored = next((m for m in history if m.epoch == epoch), None)
    if scored is not None:
        lines += ["", "| epoch | train ELBO | validation ELBO | test ELBO |", "| --- | --- | --- | --- |",
                  f"| {epoch} | {scored.train_elbo:.2f} | "
                  f"{'-' if scored.validation_elbo is None else f'{scored.validation_elbo:.2f}'} | "
                  f"{scored.test_elbo:.2f} |", "",
                  "Nats per image, higher is better (the test ELBO is a lower bound on log p(x); "
                  "`pyrovae evaluate` on this folder adds an importance-sampled log p(x))."]
    lines += [
        "", "## Use", "", "```python", "import pyrovae", "", f'vae = pyrovae.load("{name}")  # this folder',
        f"images = vae.sample(16)             # mean images, (16, {', '.join(map(str, config.image_shape))}), "
        "pixels in [0, 1]",
        "codes = vae.posterior_mean(images)  # E_q[z|x], one row per image",
        "again = vae.reconstruct(images)     # decoded from those codes", "```", "",
        f"Or from the command line: `pyrovae sample {name} -n 64 -o samples.png`, "
        f"`pyrovae evaluate {name}`, `pyrovae encode {name} image.png`.", "",
        "## Files", "",
        "- `config.json`: every option of the training run; `pyrovae train --config config.json` trains it again.",
        "- `model.safetensors`: the weights. safetensors holds tensors only: loading it runs no code.", "",
    ]
    return "\n".join(lines)
