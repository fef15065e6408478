"""``pyrovae plot`` and ``pyrovae report``: figures of a trained run."""

from pathlib import Path

import click

from pyrovae.cli.options import device_options, progress_enabled

KINDS = ("curves", "reconstructions", "samples", "evolution", "latent", "manifold", "interpolate", "kl", "styles")


def _view(run, num_images, cuda, device):
    from tqdm.auto import tqdm

    from pyrovae.analysis import RunView
    from pyrovae.run import resolve_device

    def progress(total, description):
        return tqdm(total=total, desc=description, unit="image", leave=False, disable=not progress_enabled())

    return RunView(run, resolve_device(device, cuda), num_images=num_images, progress=progress)


num_images_option = click.option("--num-images", type=click.IntRange(min=2), default=None,
                                  help="Use only N test images, spread evenly over the test set [default: all].")


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("kind", type=click.Choice(KINDS))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG file to write [default: RUN/plots/KIND.png].")
@num_images_option
@device_options
def plot(run, kind, output, num_images, cuda, device):
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
    """
    from pyrovae.errors import ConfigError
    from pyrovae.plots import PLOTS, save_figure

    view = _view(run, num_images, cuda, device)
    output = output or view.run_dir / "plots" / f"{kind}.png"
    if not output.parent.exists():
        if output.parent != view.run_dir / "plots":
            raise ConfigError(f"Folder {output.parent} for {output} does not exist.")
        output.parent.mkdir()
    save_figure(PLOTS[kind](view), output)
    click.echo(f"Wrote {output}")
    if kind == "kl":
        from pyrovae.analysis import ACTIVITY_THRESHOLD, active_units

        _, active = active_units(view.latents.loc)
        click.echo(f"Active units (A_u > {ACTIVITY_THRESHOLD}): {int(active.sum())} of {len(active)}")


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [default: RUN/report.html].")
@num_images_option
@device_options
def report(run, output, num_images, cuda, device):
    """Write one self-contained HTML page with RUN's configuration, metrics and every figure."""
    from tqdm.auto import tqdm

    from pyrovae.errors import ConfigError
    from pyrovae.plots import kinds_for
    from pyrovae.report import write_report

    if output is not None and not output.parent.is_dir():
        raise ConfigError(f"Folder {output.parent} for {output} does not exist.")
    view = _view(run, num_images, cuda, device)
    with tqdm(total=len(kinds_for(view.config)), desc="figures", unit="figure", leave=False, disable=not progress_enabled()) as bar:
        path = write_report(view, output, on_figure=lambda kind: bar.update())
    click.echo(f"Wrote {path}")
