"""Checkpoints as plain data: written atomically, read without executing anything.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts saved with
:func:`torch.save` and read with ``torch.load(weights_only=True)``, whose unpickler refuses
any other object, so a file crafted to run code on load is rejected instead of run.
"""

import dataclasses
import io
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pyrovae.errors import CheckpointError, StorageError, describe_os_error

__all__ = ["FORMAT", "RUN_KEYS", "atomic_write", "save_checkpoint", "load_checkpoint", "mismatch_detail",
           "get_rng_state", "set_rng_state", "state_problem", "history_problem"]

FORMAT = "pyrovae-checkpoint-v1"


def atomic_write(path, write) -> None:
    """Call ``write(file)`` on an in-memory buffer, then write the bytes to a temporary file
    beside ``path``, fsync it and rename it over ``path``: a crash at any moment leaves either
    the old file or the new one, never half.

    Serializing first keeps a library's own failure modes out of the file write (torch.save
    on a full disk raises ``RuntimeError: ... unexpected pos`` and loses the cause).

    :raises StorageError: naming ``path`` and the cause (no space, read-only, permission);
        the old file is left as it was.
    """
    path = Path(path)
    buffer = io.BytesIO()
    write(buffer)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give them the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as e:
        raise StorageError(f"Cannot write {path}: {describe_os_error(e)}.") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (where the platform lets a folder be opened)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself has happened
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path, state: dict) -> None:
    """Atomically save ``state`` (plain data only) with the format tag."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path, required=()) -> dict:
    """Load a checkpoint safely onto the CPU (a training checkpoint: ``required=RUN_KEYS``).

    :raises CheckpointError: naming the file, if it is missing, unsafe, corrupt or not ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights_only" in str(e) or "global" in str(e).lower():
            raise CheckpointError(
                f"Checkpoint {path} contains objects other than plain data (it could run code "
                "when loaded); refusing to load it."
            ) from None
        raise CheckpointError(f"Checkpoint {path} is corrupt: {detail}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        # torch's own message runs to a paragraph; its first clause names the problem.
        detail = str(e).strip().split(". ")[0].splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt ({detail}).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyrovae checkpoint.")
    problem = state_problem(state, required)
    if problem:
        raise CheckpointError(f"Checkpoint {path} is damaged: {problem}.")
    return state


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def history_problem(history) -> Optional[str]:
    """What is wrong with a run's history of epoch metrics (plain data), or None."""
    from pyrovae.metrics import EpochMetrics

    fields = {f.name for f in dataclasses.fields(EpochMetrics)}
    required = {f.name for f in dataclasses.fields(EpochMetrics) if f.default is dataclasses.MISSING}
    if not isinstance(history, list):
        return f"its history is a {type(history).__name__}, not a list of epochs"
    for i, entry in enumerate(history):
        if (not isinstance(entry, dict) or not required <= set(entry) <= fields
                or not all(value is None or _number(value) for value in entry.values())
                or not _count(entry["epoch"])):
            return f"entry {i} of its history is not an epoch's metrics"
    return None


# What every training checkpoint holds (pyrovae.run writes them; load_run requires them).
RUN_KEYS = ("config", "model", "epoch", "step", "history")


def state_problem(state: dict, required=()) -> Optional[str]:
    """What is wrong with the plain data of a checkpoint, or None: the types :class:`Trainer`
    and :func:`~pyrovae.rundir.load_run` rely on, checked before either reads them, and the
    ``required`` keys present."""
    def weights(v) -> bool:
        return isinstance(v, dict) and all(isinstance(k, str) and torch.is_tensor(t) for k, t in v.items())

    checks = [
        ("config", lambda v: isinstance(v, dict), "a dict of options"),
        ("model", weights, "a dict of tensors"),
        ("trained_weights", weights, "a dict of tensors"),  # with --ema; "model" is then their average
        ("optimizer", lambda v: isinstance(v, dict) and isinstance(v.get("state", {}), dict)
         and isinstance(v.get("param_groups", []), list), "an optimizer's state"),
        ("epoch", _count, "a whole number"),
        ("step", _count, "a whole number"),
        ("skip_streak", _count, "a whole number"),
        ("seconds", _number, "a number"),
        ("permutation", lambda v: v is None or (torch.is_tensor(v) and v.dtype == torch.int64 and v.dim() == 1),
         "a permutation"),
        ("step_losses", lambda v: v is None or (torch.is_tensor(v) and v.is_floating_point()), "a tensor of losses"),
        ("step_skips", lambda v: v is None or (torch.is_tensor(v) and v.is_floating_point() and v.dim() == 1),
         "a tensor of skipped steps"),
        ("step_norms", lambda v: v is None or (torch.is_tensor(v) and v.is_floating_point() and v.dim() == 1),
         "a tensor of gradient norms"),
        ("rng", lambda v: isinstance(v, dict), "random states"),
    ]
    for key, ok, want in checks:
        if key in state and not ok(state[key]):
            return f"its {key} is not {want}"
    for key in required:
        if key not in state:
            return f"it has no {key}"
    return history_problem(state["history"]) if "history" in state else None


def mismatch_detail(error: Exception) -> str:
    """The line of ``load_state_dict``'s error that names what does not fit (a size, a
    missing or an unexpected name)."""
    lines = str(error).splitlines() or [type(error).__name__]
    return next((line.strip() for line in lines if "size mismatch" in line or "Missing" in line
                 or "Unexpected" in line), lines[0])


def get_rng_state() -> dict:
    """Every random state training draws from, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": list(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
