"""The ``pyrovae`` command line: thin click commands over the library.

Commands only parse options, call :mod:`pyrovae` and print. Heavy imports happen inside
the commands, so ``pyrovae --help`` answers at once. Errors the user can fix are printed as
one sentence with exit status 2, never as a traceback.
"""

import click

from pyrovae import __version__
from pyrovae.errors import PyroVAEError


class _UserError(click.ClickException):
    def __init__(self, error: PyroVAEError):
        super().__init__(str(error))
        self.exit_code = error.exit_code


class PyroVAEGroup(click.Group):
    """A click group that turns :class:`~pyrovae.errors.PyroVAEError` into a clean exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PyroVAEError as error:
            raise _UserError(error) from None


@click.group(cls=PyroVAEGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    """


from pyrovae.cli.encode import encode, reconstruct  # noqa: E402
from pyrovae.cli.evaluate import evaluate  # noqa: E402
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

__all__ = ["main"]
