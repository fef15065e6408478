"""Parameter types and options shared by several commands."""

import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import click

from pyrovae.registry import DATASETS


class HiddenDims(click.ParamType):
    """Comma-separated positive layer widths, such as ``400`` or ``512,256``."""

    name = "WIDTHS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        try:
            widths = tuple(int(part) for part in parts)
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of layer widths such as 400 or 512,256.", param, ctx)
        if not widths or min(widths) < 1:
            self.fail(f"{value!r}: every layer width must be a positive integer.", param, ctx)
        return widths


class LabelCount(click.ParamType):
    """A number of labelled images, or ``all`` (returned as None)."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "all":
            return None
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of labels nor 'all'.", param, ctx)
        if count < 1:
            self.fail(f"{value!r}: give at least one label, or 'all'.", param, ctx)
        return count


def device_options(command):
    """``--cuda`` and ``--device``, resolved later by :func:`pyrovae.run.resolve_device`."""
    command = click.option("--device", default=None, metavar="DEVICE",
                           help="Torch device, e.g. cpu, cuda or cuda:1 [default: cpu].")(command)
    return click.option("--cuda", is_flag=True, help="Use the GPU (same as --device cuda).")(command)


def data_options(command):
    command = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                           help="Folder holding the IDX files (or torchvision's <dir>/MNIST/raw layout); "
                                "downloads (and the emoji images) go here.")(command)
    return command


dataset_choice = click.Choice(DATASETS)


def check_output(output: Path, suffixes=None) -> None:
    """Refuse, before any work, an output file whose format its name does not tell (an image
    format Pillow knows, or one of ``suffixes``) or whose folder does not exist."""
    from pyrovae.errors import ConfigError

    if suffixes is None:
        from PIL import Image

        known, what, hint = Image.registered_extensions(), "image format", ".png or .jpg"
    else:
        known, what, hint = suffixes, "format", " or ".join(suffixes)
    if output.suffix.lower() not in known:
        raise ConfigError(f"Cannot tell the {what} of {output}; use a name ending in {hint}.")
    if not output.parent.is_dir():
        raise ConfigError(f"Folder {output.parent} for {output} does not exist.")


def progress_enabled() -> bool:
    """Progress bars only where a person is watching."""
    return sys.stderr.isatty()


@contextmanager
def plain_warnings():
    """Show library warnings as one ``Warning: ...`` line on stderr, as they happen."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        previous = warnings.showwarning
        warnings.showwarning = lambda message, *args, **kwargs: click.echo(f"Warning: {message}", err=True)
        try:
            yield
        finally:
            warnings.showwarning = previous
