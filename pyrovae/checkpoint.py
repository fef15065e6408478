"""Checkpoints as plain data: written atomically, read without executing anything.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts saved with
:func:`torch.save` and read with ``torch.load(weights_only=True)``, whose unpickler refuses
any other object, so a file crafted to run code on load is rejected instead of run.
"""

import io
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from pyrovae.errors import CheckpointError, StorageError, describe_os_error

__all__ = ["FORMAT", "atomic_write", "save_checkpoint", "load_checkpoint", "mismatch_detail", "get_rng_state",
           "set_rng_state"]

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


def load_checkpoint(path) -> dict:
    """Load a checkpoint safely onto the CPU.

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
    return state


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
