"""``pyrovae encode`` and ``pyrovae reconstruct``: a trained run applied to the user's own files."""

import math
from pathlib import Path

import click

from pyrovae.cli.options import (COMMON_STATUSES, check_output, checkpoint_option, device_options, emit,
                                 exit_statuses, json_option, progress_enabled)


def _keep_earlier_output(ctx, param, value: Path) -> Path:
    """The default output file is never replaced unasked: an earlier result is kept."""
    from pyrovae.errors import ConfigError

    if ctx.get_parameter_source(param.name) is click.core.ParameterSource.DEFAULT and value.exists():
        raise ConfigError(f"{value} already exists (an earlier result?); name the output with -o FILE, which "
                          "replaces FILE if it exists.")
    return value


def _run_and_inputs(default_output: str, output_help: str):
    """RUN, the IMAGE... inputs and -o, shared by both commands."""
    def decorate(command):
        command = click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                               default=default_output, show_default=True, callback=_keep_earlier_output,
                               help=output_help + " An existing file is replaced only when named with -o.")(command)
        command = click.argument("inputs", nargs=-1, required=True, metavar="IMAGE...",
                                 type=click.Path(exists=True, path_type=Path))(command)
        command = click.argument("run", type=click.Path(file_okay=False))(command)
        return device_options(checkpoint_option(json_option(command)))
    return decorate


def _load(run, inputs, epoch, cuda, device):
    """The run's model and the inputs prepared as its images, with notes printed on stderr."""
    from pyrovae.devices import resolve_device
    from pyrovae.images import images_for_model
    from pyrovae.progress import progress
    from pyrovae.rundir import load_run

    config, vae, _ = load_run(run, resolve_device(device, cuda), epoch)
    with progress(None, "reading images", "image", enabled=progress_enabled()) as bar:
        images, names, notes = images_for_model(inputs, config.image_shape, progress=bar.update)
    for note in notes:
        click.echo(f"Note: {note}", err=True)
    return config, vae, images, names


@click.command(epilog=exit_statuses(*COMMON_STATUSES))
@_run_and_inputs("codes.npz", "A .npz file: loc (N, D), scale where q is a diagonal Normal, and files.")
def encode(run, inputs, output, as_json, epoch, cuda, device):
    """Encode image files (or folders of them, or .npy/.npz arrays) with RUN's guide:
    the posterior mean E_q[z|x] of each, and q's standard deviations where it has them."""
    import numpy as np
    import torch

    from pyrovae.analysis import encode as encode_images
    from pyrovae.checkpoint import atomic_write
    from pyrovae.errors import ConfigError

    check_output(output, (".npz",))
    config, vae, images, names = _load(run, inputs, epoch, cuda, device)
    if not vae.amortized:
        raise ConfigError(f"The guide of {run} cannot encode new images.")
    latents = encode_images(vae, images, torch.zeros(len(images), dtype=torch.long))
    arrays = {"loc": latents.loc.numpy(), "files": np.array(names)}
    if latents.scale is not None:
        arrays["scale"] = latents.scale.numpy()
    atomic_write(output, lambda f: np.savez(f, **arrays))
    emit(as_json, {"output": str(output), "num_images": len(names), "latent_dim": latents.loc.shape[1],
                   "arrays": list(arrays)},
         f"Wrote the codes of {len(names)} image(s) ({latents.loc.shape[1]} dimensions) to {output}: "
         f"{', '.join(arrays)}")


@click.command(epilog=exit_statuses(*COMMON_STATUSES))
@_run_and_inputs("reconstructions.png", "Image file to write (.png, .jpg, ...).")
def reconstruct(run, inputs, output, as_json, epoch, cuda, device):
    """Reconstruct image files (or folders of them, or .npy/.npz arrays) through RUN's model:
    each image beside the mean of p(x|z) at its posterior mean, up to 4 pairs a row."""
    import torch

    from pyrovae.errors import ConfigError
    from pyrovae.grids import save_grid

    check_output(output)
    config, vae, images, names = _load(run, inputs, epoch, cuda, device)
    if not vae.amortized:
        raise ConfigError(f"The guide of {run} cannot encode new images.")
    reconstructions = torch.cat([vae.reconstruct(x.to(vae.device)).cpu() for x in images.split(256)])
    pairs = torch.stack([images, reconstructions], dim=1).flatten(0, 1)
    save_grid(pairs, output, nrow=2 * min(4, len(images)))
    rows = math.ceil(len(images) / 4)
    emit(as_json, {"output": str(output), "num_images": len(images), "files": names},
         f"Wrote {len(images)} image(s) and their reconstructions to {output} ({rows} row(s) of pairs)")
