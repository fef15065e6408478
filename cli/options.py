"""Parameter types and options shared by several commands."""

import dataclasses
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import click

from pyrovae.registry import DATASETS

# What scripts can rely on; the README's table says the same.
EXIT_STATUSES = {
    0: "done",
    1: "an unexpected error (a bug: please report the traceback)",
    2: "a problem you can fix: a bad option, path, data file or checkpoint (one sentence on stderr)",
    3: "training diverged (NaN or infinite numbers) or every step was skipped (the last good checkpoint is "
       "kept), or a model scores NaN",
    4: "a file could not be written (no space, read-only, permission); what was written before is intact",
    5: "the run directory is being written by another process",
    129: "train was stopped by SIGHUP (its terminal or ssh session closed) after saving a checkpoint",
    130: "interrupted with Ctrl-C (train saves a checkpoint first; --resume continues it)",
    143: "train was stopped with SIGTERM after saving a checkpoint; --resume continues it",
}
# The statuses every command can end with.
COMMON_STATUSES = (0, 1, 2, 4, 130)


def exit_statuses(*codes: int) -> str:
    """A command's help epilog listing the exit statuses it can end with."""
    lines = "\n".join(f"  {code:<4d}{EXIT_STATUSES[code]}" for code in sorted(codes))
    return f"\b\nExit statuses:\n{lines}"


def json_option(command):
    """``--json``: the command's result as one JSON object on stdout (messages go to stderr)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as one JSON object on stdout instead of sentences.")(command)


def emit(as_json: bool, result: dict, message: str) -> None:
    """Print ``result`` as one line of JSON with ``--json``, else ``message``."""
    if as_json:
        click.echo(json_line(result))
    else:
        click.echo(message)


def json_line(result: dict) -> str:
    """``result`` as one line of valid JSON: a NaN or infinite number is ``null``."""
    import json

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(result), allow_nan=False)


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


class LogVarRange(click.ParamType):
    """Two numbers ``LO,HI`` with LO < HI, such as ``-6,2``."""

    name = "LO,HI"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            bounds = tuple(float(part) for part in str(value).split(","))
        except ValueError:
            bounds = ()
        if len(bounds) != 2 or not all(map(math.isfinite, bounds)) or bounds[0] >= bounds[1]:
            self.fail(f"{value!r} is not two numbers LO,HI with LO < HI, such as -6,2.", param, ctx)
        return bounds


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


def _set_threads(ctx, param, value):
    if value is not None:
        import torch

        torch.set_num_threads(value)
    return value


def device_options(command):
    """``--cuda`` and ``--device``, resolved later by :func:`pyrovae.devices.resolve_device`,
    and ``--threads``, applied at once."""
    command = click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N", expose_value=False,
                           callback=_set_threads,
                           help="CPU threads torch computes with [default: torch's choice, one per core]. On a "
                                "machine whose cores other work shares, 1 is often several times faster "
                                "(README: Speed).")(command)
    command = click.option("--device", default=None, metavar="DEVICE",
                           help="Torch device, e.g. cpu, cuda or cuda:1 [default: cpu].")(command)
    return click.option("--cuda", is_flag=True, help="Use the GPU (same as --device cuda).")(command)


def _config_option(field: dataclasses.Field):
    """The click option of a :class:`~pyrovae.config.Config` field, from its metadata."""
    from pyrovae import registry

    meta, kind = field.metadata, field.metadata["kind"]
    default = meta.get("cli_default", field.default)
    kwargs = {"help": meta["help"]}
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    if kind == "flag":
        return click.option(meta["flag"], is_flag=True, **kwargs)
    kind_type: Any
    if kind == "int":
        kind_type = click.IntRange(meta.get("min"), meta.get("max")) if {"min", "max"} & set(meta) else int
    elif kind == "float":
        kind_type = click.FloatRange(meta.get("min"), meta.get("max"), min_open=meta.get("min_open", False),
                                     max_open=meta.get("max_open", False))
    elif kind == "choice":
        kind_type = Choice(list(getattr(registry, meta["table"])))
    elif kind == "path":
        kind_type = (click.Path(file_okay=False) if meta.get("directory")
                     else click.Path(exists=True, path_type=str))
    else:
        kind_type = {"hidden": HiddenDims(), "labels": LabelCount(), "logvar": LogVarRange()}[kind]
    if kind == "hidden":
        default = ",".join(map(str, default))
    return click.option(meta["flag"], type=kind_type, default=default, show_default=default is not None, **kwargs)


def config_options(command, only=None):
    """The click options of the :class:`~pyrovae.config.Config` fields (of those in ``only``),
    in the order of the fields, built from each field's metadata: a new option is one field."""
    from pyrovae.config import Config

    for field in reversed(dataclasses.fields(Config)):
        if "flag" in field.metadata and (only is None or field.name in only):
            command = _config_option(field)(command)
    return command


def data_options(command):
    """``--data-dir``: where the named data sets are found (and downloaded to)."""
    return config_options(command, only={"data_dir"})


class CheckpointName(click.ParamType):
    """``best``, ``last`` or an epoch number (:func:`~pyrovae.rundir.load_run`)."""

    name = "checkpoint"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value in ("best", "last"):
            return value
        text = str(value).strip().lower()
        if text in ("best", "last"):
            return text
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is not best, last or an epoch number of 1 or more.", param, ctx)


def checkpoint_option(command):
    """``--checkpoint best|last|EPOCH``: which of a run's checkpoints to use."""
    return click.option("--checkpoint", "epoch", type=CheckpointName(), default="best", metavar="best|last|EPOCH",
                        help="best: the epoch with the best validation ELBO (train --validation-size), else the "
                             "newest; last: the newest; EPOCH: one kept by train --keep-checkpoints "
                             "[default: best].")(command)


dataset_choice = Choice(DATASETS)


def derived_fields() -> set:
    """Fields of a run's config.json that the data decides, not an option (no flag)."""
    from pyrovae.config import Config

    return {f.name for f in dataclasses.fields(Config) if "flag" not in f.metadata}


def read_options_file(path: Path, command: click.Command, renamed: dict) -> dict:
    """The options a recipe file sets, keyed by the command's parameter names.

    A ``.toml`` file names options as on the command line, with ``-`` or ``_`` (``z-dim = 40``,
    ``hidden = [300, 300]`` or ``"300,300"``); a run's ``config.json`` names the fields of
    :class:`~pyrovae.config.Config`, which ``renamed`` maps to options (fields no option sets,
    such as the image shape, are skipped).

    :raises click.BadParameter: for a file that cannot be read or a key no option has.
    """
    options = {p.name: p for p in command.params
               if isinstance(p, click.Option) and p.name not in ("config", "resume", "as_json")}
    valid = set(options)
    try:
        if path.suffix.lower() == ".json":
            import json

            fields = json.loads(path.read_text())
            if not isinstance(fields, dict):
                raise ValueError("not a JSON object")
            if fields.get("data"):  # the user's own images: the data set is named after them
                fields = {k: v for k, v in fields.items() if k not in ("dataset", "data_dir")}
            values: dict = {}
            unknown, derived = [], derived_fields()
            for field, value in fields.items():
                if renamed.get(field, field) in valid:
                    values[renamed.get(field, field)] = value
                elif field not in derived:
                    unknown.append(field)
        else:
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                import tomli as tomllib  # type: ignore[no-redef]

            values = {k.replace("-", "_"): v for k, v in tomllib.loads(path.read_text()).items()}
            unknown = [k for k in values if k not in valid]
    except (OSError, ValueError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise click.BadParameter(f"cannot read {path}: {e}", param_hint="--config") from None
    except RecursionError:
        raise click.BadParameter(f"cannot read {path}: it is nested too deeply to be a recipe.",
                                 param_hint="--config") from None
    if unknown:
        raise click.BadParameter(f"{path} sets {', '.join(sorted(unknown))}, which no option of this command is; "
                                 f"valid keys: {', '.join(sorted(n.replace('_', '-') for n in valid))}.",
                                 param_hint="--config")
    # As a person would type them: lists of widths as "300,300" (a repeatable option such as
    # log takes a list, or one name); null means the default.
    def typed(name, value):
        if options[name].multiple:
            return list(value) if isinstance(value, (list, tuple)) else [value]
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value

    for key, value in values.items():
        want = None if value is None else _wrong_type(options[key], value)
        if want:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise click.BadParameter(f"{path} sets {key.replace('_', '-')} = {shown}, which is not {want}.",
                                     param_hint="--config")
    return {k: typed(k, v) for k, v in values.items() if v is not None}


def _wrong_type(option: click.Option, value) -> Optional[str]:
    """What ``value`` from a recipe file should have been for ``option``, or None when it is
    of the right type: click would make 2 of 2.5 and 1 of true, and a string of anything."""
    def number(v, whole):
        return isinstance(v, int if whole else (int, float)) and not isinstance(v, bool)

    kind = option.type
    if option.is_flag:
        return None if isinstance(value, bool) else "true or false"
    if option.multiple:
        names = value if isinstance(value, (list, tuple)) else [value]
        return None if all(isinstance(v, str) for v in names) else "a name or a list of names"
    if isinstance(kind, click.types.IntParamType):
        return None if number(value, True) else "a whole number"
    if isinstance(kind, click.types.FloatParamType):
        return None if number(value, False) else "a number"
    if isinstance(kind, (click.Choice, click.Path, click.types.StringParamType)):
        return None if isinstance(value, str) else "a string"
    if isinstance(kind, LabelCount):
        return None if number(value, True) or value == "all" else "a whole number or \"all\""
    # widths, or LO,HI: a list or its text
    if isinstance(value, str) or (isinstance(value, (list, tuple))
                                  and all(number(v, isinstance(kind, HiddenDims)) for v in value)):
        return None
    return "a list of whole numbers" if isinstance(kind, HiddenDims) else "a list of numbers"


def config_file_option(renamed: dict):
    """``--config FILE``: option values from a TOML recipe or a run's config.json; options on
    the command line override them (:func:`read_options_file`)."""
    def load(ctx, param, value):
        if value is not None:
            ctx.default_map = {**(ctx.default_map or {}), **read_options_file(value, ctx.command, renamed)}
        return value

    return click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                        is_eager=True, callback=load, metavar="FILE",
                        help="Read options from a TOML recipe (keys as the options' names, e.g. z-dim = 40) or a "
                             "run's config.json, to repeat it; options given here override the file.")


def check_output(output: Path, suffixes=None) -> None:
    """Refuse, before any work, an output file whose format its name does not tell (an image
    format Pillow knows, or one of ``suffixes``) or whose folder does not exist."""
    from pyrovae.errors import ConfigError, StorageError

    if suffixes is None:
        from PIL import Image

        known, what, hint = Image.registered_extensions(), "image format", ".png or .jpg"
    else:
        names = sorted(suffixes)
        listed = [", ".join(names[:-1]), names[-1]] if len(names) > 1 else names
        known, what, hint = suffixes, "format", " or ".join(listed)
    if output.suffix.lower() not in known:
        raise ConfigError(f"Cannot tell the {what} of {output}; use a name ending in {hint}.")
    problem = _cannot_write(output.suffix.lower(), suffixes)
    if problem:
        raise ConfigError(f"Cannot write {output}: {problem}; use another format, such as .png.")
    if not output.parent.is_dir():
        raise ConfigError(f"Folder {output.parent} for {output} does not exist.")
    if not os.access(output.parent, os.W_OK):
        raise StorageError(f"Cannot write {output}: its folder is read-only or not writable by you.")


def _cannot_write(suffix: str, suffixes) -> Optional[str]:
    """Why a file of this suffix cannot be written here, found by writing a tiny one into
    memory first (Pillow and matplotlib list formats they can only read, or that need
    programs this machine lacks, such as LaTeX for .pgf); None when it can."""
    import io

    try:
        if suffixes is None:  # an image: a 2x2 picture, in grey and in colour
            from PIL import Image

            for mode in ("L", "RGB"):
                Image.new(mode, (2, 2)).save(io.BytesIO(), format=Image.registered_extensions()[suffix])
        elif suffix not in (".html", ".htm", ".npz"):  # a figure format of matplotlib's
            from matplotlib.figure import Figure

            figure = Figure(figsize=(1, 1))
            figure.subplots().set_title("x")  # text to lay out: .pgf then needs LaTeX, as real figures do
            figure.savefig(io.BytesIO(), format=suffix.lstrip("."))
    except Exception as error:  # Pillow and matplotlib raise OSError, KeyError, RuntimeError and more
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"this format cannot be written here ({reason[:120]})"
    return None


def progress_enabled() -> bool:
    """Long work reports its progress: a bar where a person watches, a line in the log every
    few seconds otherwise (:func:`pyrovae.progress.progress`)."""
    return True


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
