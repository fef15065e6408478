"""Parameter types and options shared by several commands."""

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import click

from pyrovae.registry import DATASETS


class Choice(click.Choice):
    """click's Choice that takes ``-`` and ``_`` alike: ``continuous-bernoulli`` and
    ``continuous_bernoulli`` (or ``fashion_mnist``) name the same choice."""

    def normalize_choice(self, choice, ctx):
        return super().normalize_choice(choice, ctx).replace("-", "_")

    def get_invalid_choice_message(self, value, ctx):
        return f"{value!r} is not one of {', '.join(map(repr, self.choices))}."


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
    """``--data-dir``: where the named data sets are found (and downloaded to)."""
    return click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                        help="Folder holding the IDX files (or torchvision's <dir>/MNIST/raw layout); "
                             "downloads (and the emoji images) go here.")(command)


def checkpoint_option(command):
    """``--checkpoint N``: one of the end-of-epoch checkpoints kept by ``--keep-checkpoints``."""
    return click.option("--checkpoint", "epoch", type=click.IntRange(min=1), default=None, metavar="EPOCH",
                        help="Use the checkpoint kept at the end of this epoch (train --keep-checkpoints) "
                             "[default: the newest].")(command)


dataset_choice = Choice(DATASETS)


def check_output(output: Path, suffixes=None) -> None:
    """Refuse, before any work, an output file whose format its name does not tell (an image
    format Pillow knows, or one of ``suffixes``) or whose folder does not exist."""
    from pyrovae.errors import ConfigError, StorageError

    if suffixes is None:
        from PIL import Image

        known, what, hint = Image.registered_extensions(), "image format", ".png or .jpg"
    else:
        names = sorted(suffixes)
        known, what, hint = suffixes, "format", " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    if output.suffix.lower() not in known:
        raise ConfigError(f"Cannot tell the {what} of {output}; use a name ending in {hint}.")
    if not output.parent.is_dir():
        raise ConfigError(f"Folder {output.parent} for {output} does not exist.")
    if not os.access(output.parent, os.W_OK):
        raise StorageError(f"Cannot write {output}: its folder is read-only or not writable by you.")


def progress_enabled() -> bool:
    """Progress bars only where a person is watching."""
    from pyrovae.train import watching

    return watching()


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
