"""The ``pyrovae`` command line: thin click commands over the library.

Commands only parse options, call :mod:`pyrovae` and print. Heavy imports happen inside
the commands, so ``pyrovae --help`` answers at once. Errors the user can fix are printed as
one sentence with the error's exit status (:data:`EXIT_STATUSES`), never as a traceback.
"""

import os
import sys

import click

from pyrovae import __version__
from pyrovae.cli.options import EXIT_STATUSES, exit_statuses, plain_warnings
from pyrovae.errors import ConfigError, NamesOptions, PyroVAEError, StorageError, describe_os_error

class _UserError(click.ClickException):
    def __init__(self, error: PyroVAEError):
        # A config or numerical error names options by their Config field; here they read as flags.
        super().__init__(error.command_line_message() if isinstance(error, NamesOptions) else str(error))
        self.exit_code = error.exit_code  # type: ignore[misc]  # click reads it from the instance


class PyroVAEGroup(click.Group):
    """A click group that turns :class:`~pyrovae.errors.PyroVAEError` into a clean exit."""

    def invoke(self, ctx):
        try:
            with plain_warnings():
                return super().invoke(ctx)
        except PyroVAEError as error:
            if getattr(error, "group_lost", False):
                # A torchrun peer died: the process group's threads still wait on it, and the
                # interpreter's teardown can abort (SIGABRT) after the message. The checkpoint is
                # already safe on disk (written atomically and synced), so leave at once.
                _UserError(error).show()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(error.exit_code)
            raise _UserError(error) from None
        except KeyboardInterrupt:  # a second Ctrl-C while training, or one anywhere else
            click.echo("\nAborted; files already written are intact.", err=True)
            ctx.exit(130)
        except OSError as error:  # a file operation the library did not expect to fail
            if error.errno is None:
                raise
            what = error.filename or "A file operation"
            raise _UserError(StorageError(f"{what}: {describe_os_error(error)}.")) from None
        except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
            if not (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
                    or "can't allocate memory" in str(error)):
                raise
            raise _UserError(ConfigError("Ran out of memory; lower --batch-size (or --particles, or -k for "
                                         "evaluate).")) from None


@click.group(cls=PyroVAEGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=exit_statuses(*EXIT_STATUSES))
@click.version_option(__version__, prog_name="pyrovae")
def main():
    """Train, evaluate and sample variational autoencoders built with Pyro.

    \b
    Quick start (offline, a few minutes on a laptop CPU):
      pyrovae train --dataset mnist5k --epochs 10 --run-dir runs/demo
      pyrovae evaluate runs/demo
      pyrovae sample runs/demo -n 64 -o samples.png
      pyrovae report runs/demo

    \b
    Your own images (a folder, class subfolders optional, or a .npy/.npz array):
      pyrovae train --data ~/photos --image-size 64 --net conv --run-dir runs/photos
      pyrovae reconstruct runs/photos ~/photos/cat.jpg -o rec.png

    \b
    Use and share a trained model:
      pyrovae export runs/demo my-vae      # config.json + model.safetensors
      python -c 'import pyrovae; vae = pyrovae.load("my-vae")'

    Every command takes --json: one JSON object on stdout (train: one per epoch, then a
    summary); messages and progress go to stderr.
    """


from pyrovae.cli.encode import encode, reconstruct  # noqa: E402
from pyrovae.cli.evaluate import evaluate  # noqa: E402
from pyrovae.cli.export import export  # noqa: E402
from pyrovae.cli.plot import plot, report  # noqa: E402
from pyrovae.cli.sample import sample  # noqa: E402
from pyrovae.cli.train import train  # noqa: E402

main.add_command(train)
main.add_command(evaluate)
main.add_command(sample)
main.add_command(encode)
main.add_command(reconstruct)
main.add_command(plot)
main.add_command(report)
main.add_command(export)

__all__ = ["main", "EXIT_STATUSES"]
