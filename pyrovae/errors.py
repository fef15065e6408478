"""The errors pyrovae raises for problems a user can fix: bad data, bad checkpoints, bad options,
a full or read-only disk, a run directory in use.

Each carries one sentence meant for a person; the command line prints it and exits with the
error's ``exit_code`` instead of showing a traceback (the table in the README).
"""

import errno
import re
from typing import Dict, Optional

__all__ = ["PyroVAEError", "DataError", "CheckpointError", "ConfigError", "NumericalError", "StorageError",
           "RunInUseError", "NamesOptions", "describe_os_error"]


_FIELD = re.compile(r"\{(\w+)\}")


class PyroVAEError(Exception):
    """Base class of every error pyrovae reports to a user."""

    exit_code = 2


class DataError(PyroVAEError):
    """A data file or folder is missing, unreadable or malformed."""


class CheckpointError(PyroVAEError):
    """A checkpoint or run directory is missing, corrupt, unsafe or from another model."""


class NamesOptions:
    """A message that names an option as ``{field}``, the :class:`~pyrovae.config.Config`
    field: it reads ``latent_dim`` for a Python user, and the command line shows the flag,
    ``--z-dim`` (:meth:`command_line_message`)."""

    # Every Config field and its flag (None for one that is not an option): pyrovae.config
    # fills it in, so that this module imports nothing of pyrovae.
    fields: Dict[str, Optional[str]] = {}

    args: tuple

    def __str__(self) -> str:
        return self._render(lambda name: name)

    def command_line_message(self) -> str:
        """The message with each option named by its flag."""
        return self._render(lambda name: self.fields[name] or name)

    def _render(self, name_of) -> str:
        message = str(self.args[0]) if self.args else ""
        return _FIELD.sub(lambda m: name_of(m.group(1)) if m.group(1) in self.fields else m.group(0), message)


class ConfigError(NamesOptions, PyroVAEError):
    """An option or combination of options cannot work (with this data, on this machine);
    its message names options as ``{field}`` (:class:`NamesOptions`)."""


class NumericalError(NamesOptions, PyroVAEError):
    """Training produced a NaN or infinite loss, or stopped changing the weights."""

    exit_code = 3


class StorageError(PyroVAEError):
    """A file could not be written: no space left, a read-only file system, no permission.
    What was written before is intact (every write is atomic)."""

    exit_code = 4


class RunInUseError(PyroVAEError):
    """Another process is writing the run directory."""

    exit_code = 5


_CAUSES = {
    getattr(errno, "EDQUOT", errno.ENOSPC): "the disk quota is exceeded",  # (Windows has no EDQUOT)
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file would be too large",
    errno.ENOENT: "its folder does not exist",
    errno.ENOTDIR: "a part of its path is not a folder",
    errno.EISDIR: "it is a folder",
}


def describe_os_error(error: OSError) -> str:
    """The cause of a failed file operation in a few plain words."""
    return _CAUSES.get(error.errno, (error.strerror or str(error) or type(error).__name__).rstrip(".").lower())
