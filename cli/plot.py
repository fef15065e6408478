"""``pyrovae plot`` and ``pyrovae report``: figures of a trained run."""

from pathlib import Path

import click

from pyrovae.cli.options import (COMMON_STATUSES, Choice, check_output, checkpoint_option, data_options,
                                 device_options, emit, exit_statuses, json_option, progress_enabled)

KINDS = ("curves", "reconstructions", "samples", "evolution", "latent", "manifold", "interpolate", "kl", "styles",
         "levels")


def _view(run, num_images, epoch, data_dir, cuda, device):
    from pyrovae.analysis import RunView
    from pyrovae.devices import resolve_device
    from pyrovae.progress import progress

    def counter(total, description):
        return progress(total, description, "image", enabled=progress_enabled())

    return RunView(run, resolve_device(device, cuda), num_images=num_images, progress=counter, epoch=epoch,
                   data_dir=data_dir)


def view_options(command):
    """What every figure command shares: which test images, which checkpoint, where the data is."""
    command = device_options(command)
    command = data_options(command)
    command = checkpoint_option(command)
    command = json_option(command)
    return click.option("--num-images", type=click.IntRange(min=2), default=None,
                        help="Use only N test images, spread evenly over the test set [default: all].")(command)


@click.command(epilog=exit_statuses(*COMMON_STATUSES))
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("kind", type=Choice(KINDS))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write, in the format its suffix names (.png, .pdf, .svg, .jpg, ...) "
                   "[default: RUN/plots/KIND.png].")
@view_options
def plot(run, kind, output, num_images, as_json, epoch, data_dir, cuda, device):
    """Draw one figure of RUN.

    \b
    curves           ELBO, reconstruction and KL per epoch
    reconstructions  test images beside their reconstructions
    samples          decoded prior samples
    evolution        the same z decoded after each saved epoch
    latent           test-set latent means by label (principal components above 2-D)
    manifold         decoded grid over the latent space
    interpolate      linear and spherical interpolations between test images
    kl               KL per latent dimension, active units marked
    styles           M2 only: one style z per row, one class per column
    levels           --model hvae: one upper-level z2 per row, the lower level z1 redrawn along it
    """
    from pyrovae.errors import StorageError, describe_os_error
    from pyrovae.plots import PLOTS, figure_formats, save_figure
    from pyrovae.rundir import is_exported

    if output is not None:
        check_output(output, figure_formats())
    view = _view(run, num_images, epoch, data_dir, cuda, device)
    if output is None and is_exported(view.run_dir):  # a folder meant for upload: written beside, not into
        output = Path(f"{view.run_dir.resolve().name}-{kind}.png")
    elif output is None:
        output = view.run_dir / "plots" / f"{kind}.png"
        try:
            output.parent.mkdir(exist_ok=True)
        except OSError as e:
            raise StorageError(f"Cannot create {output.parent}: {describe_os_error(e)}; pass -o FILE to write "
                               "the figure elsewhere.") from None
    save_figure(PLOTS[kind](view), output)
    result, message = {"output": str(output), "kind": kind, "epoch": view.epoch}, f"Wrote {output}"
    if kind == "kl":
        from pyrovae.analysis import ACTIVITY_THRESHOLD
        from pyrovae.plots import kl_levels

        levels = kl_levels(view)
        active = sum(int(a.sum()) for _, _, a in levels)
        result.update(active_units=active, latent_dim=sum(len(a) for _, _, a in levels),
                      levels={name: {"active_units": int(a.sum()), "dimensions": len(a), "kl": float(kl.sum())}
                              for name, kl, a in levels})
        message += f"\nActive units (A_u > {ACTIVITY_THRESHOLD}): {active} of {result['latent_dim']}"
        if len(levels) > 1:
            message += "".join(f"\n  {name}: {int(a.sum())} of {len(a)} active, KL {float(kl.sum()):.2f} nats"
                               for name, kl, a in levels)
    emit(as_json, result, message)


@click.command(epilog=exit_statuses(*COMMON_STATUSES))
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [default: RUN/report.html].")
@view_options
def report(run, output, num_images, as_json, epoch, data_dir, cuda, device):
    """Write one self-contained HTML page with RUN's configuration, metrics and every figure."""
    from pyrovae.plots import kinds_for
    from pyrovae.progress import progress
    from pyrovae.report import write_report

    if output is not None:
        check_output(output, (".html", ".htm"))
    view = _view(run, num_images, epoch, data_dir, cuda, device)
    with progress(len(kinds_for(view.config)), "figures", "figure", enabled=progress_enabled()) as bar:
        path = write_report(view, output, on_figure=lambda kind: bar.update())
    emit(as_json, {"output": str(path), "epoch": view.epoch}, f"Wrote {path}")
