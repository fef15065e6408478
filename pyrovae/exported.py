"""Trained models without their training state, to use and to share.

:func:`export` writes a folder in the layout of a Hugging Face model repository (upload it
as it is)::

    config.json          every option of the run (pyrovae train --config config.json trains it again)
    model.safetensors    the weights; safetensors holds tensors only, so loading it runs no code
    README.md            a model card: what was trained, its scores, how to load it

:func:`load` reads such a folder, or any run directory, back as a VAE ready to use.
"""

import json
from pathlib import Path
from typing import Tuple, Union

from pyrovae import __version__
from pyrovae.checkpoint import atomic_write, mismatch_detail
from pyrovae.config import Config
from pyrovae.errors import CheckpointError, ConfigError, StorageError, describe_os_error
from pyrovae.vae import VAE

__all__ = ["MODEL_FILE", "export", "load", "is_exported", "load_exported"]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FORMAT = "pyrovae-model-v1"


def is_exported(folder) -> bool:
    """Whether ``folder`` holds an exported model rather than a training run."""
    from pyrovae.run import CHECKPOINT

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
    from pyrovae.run import load_run, resolve_device

    config, vae, _ = load_run(path, resolve_device(str(device)), checkpoint)
    vae.config = config
    return vae


def load_exported(folder, device="cpu", epoch: Union[str, int] = "best") -> Tuple[Config, VAE, dict]:
    """:func:`~pyrovae.run.load_run` for an exported folder: the config, the VAE (eval mode,
    on ``device``) and a state holding the exported epoch and the run's metrics."""
    from safetensors import SafetensorError, safe_open

    from pyrovae.registry import build_vae

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
    except ValueError:
        raise CheckpointError(f"The metadata of {path} is damaged.") from None
    if epoch not in ("best", "last", state["epoch"]):
        raise CheckpointError(f"{folder} is an exported model of epoch {state['epoch']} only; leave out --checkpoint.")
    try:
        config = Config.from_dict(json.loads(config_path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError, ConfigError) as e:
        detail = str(e).splitlines()[0] if str(e) else repr(e)
        raise CheckpointError(f"{config_path} is damaged ({detail}); it describes the model the weights belong to.") \
            from None
    vae = build_vae(config)
    try:
        vae.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the model {config_path} describes: {mismatch_detail(e)}") from None
    return config, vae.to(device).eval(), state


def export(run_dir, folder, checkpoint: Union[str, int] = "best", overwrite: bool = False) -> Path:
    """Write the model of ``run_dir``'s ``checkpoint`` to ``folder`` (created if needed) as
    ``config.json``, ``model.safetensors`` and a ``README.md`` model card; no optimizer, data
    order or random state. :func:`load` reads it back with identical outputs.

    :raises ConfigError: when ``folder`` is a run directory, or already holds a model and
        ``overwrite`` is False.
    :returns: ``folder``.
    """
    from safetensors.torch import save as save_tensors

    from pyrovae.run import CHECKPOINT, METRICS, best_epoch, load_run
    from pyrovae.train import EpochMetrics

    folder, run_dir = Path(folder), Path(run_dir)
    config, vae, state = load_run(run_dir, "cpu", checkpoint)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder.")
    if (folder / CHECKPOINT).exists() or (folder / METRICS).exists():
        raise ConfigError(f"{folder} is a run directory; export into a folder of its own.")
    existing = [name for name in (CONFIG_FILE, MODEL_FILE, CARD_FILE) if (folder / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{folder} already holds {', '.join(existing)}; pass --overwrite to replace them.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"Cannot create {folder}: {describe_os_error(e)}.") from None
    tensors = {name: value.detach().contiguous() for name, value in vae.state_dict().items()}
    history = [EpochMetrics(**m) for m in state["history"]]
    metadata = {"format": FORMAT, "pyrovae_version": __version__, "epoch": str(state["epoch"]),
                "step": str(state["step"]), "history": json.dumps(state["history"])}
    atomic_write(folder / MODEL_FILE, lambda f: f.write(save_tensors(tensors, metadata)))
    atomic_write(folder / CONFIG_FILE, lambda f: f.write(config.to_json().encode()))
    card = model_card(folder.name, config, state["epoch"], best_epoch(history), history)
    atomic_write(folder / CARD_FILE, lambda f: f.write(card.encode()))
    return folder


def model_card(name: str, config: Config, epoch: int, best, history) -> str:
    """A Hugging Face model card (front matter, then Markdown) for an exported model."""
    shape = "x".join(map(str, config.image_shape[1:])) + (" colour" if config.image_shape[0] == 3 else " grey")
    hidden = ", ".join(map(str, config.hidden_dims))
    chosen = " (its best validation ELBO)" if best == epoch else ""
    lines = [
        "---", "library_name: pyrovae", "tags:", "- pyro", "- variational-autoencoder", "- generative", "---", "",
        f"# {name}", "",
        f"A variational autoencoder trained with pyrovae on {config.dataset} ({shape} images): "
        f"{config.prior.replace('_', ' ')} prior, z of {config.latent_dim} dimensions, {config.net} networks "
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
