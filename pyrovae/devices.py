"""Which torch device a command runs on (``--device``, ``--cuda``)."""

from typing import Optional

import torch

from pyrovae.errors import ConfigError

__all__ = ["resolve_device"]


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
