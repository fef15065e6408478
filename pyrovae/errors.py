"""The errors pyrovae raises for problems a user can fix: bad data, bad checkpoints, bad options.

Each carries one sentence meant for a person; the command line prints it and exits with
status 2 instead of showing a traceback.
"""

__all__ = ["PyroVAEError", "DataError", "CheckpointError", "ConfigError", "NumericalError"]


class PyroVAEError(Exception):
    """Base class of every error pyrovae reports to a user."""

    exit_code = 2


class DataError(PyroVAEError):
    """A data file or folder is missing, unreadable or malformed."""


class CheckpointError(PyroVAEError):
    """A checkpoint or run directory is missing, corrupt, unsafe or from another model."""


class ConfigError(PyroVAEError):
    """An option or combination of options cannot work."""


class NumericalError(PyroVAEError):
    """Training produced a NaN or infinite loss."""

    exit_code = 3
