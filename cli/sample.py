"""``pyrovae sample``: a grid of images decoded from prior samples."""

import math
from pathlib import Path

import click

from pyrovae.cli.options import check_output, checkpoint_option, device_options


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-n", "--num-samples", type=click.IntRange(min=1, max=10000), default=64, show_default=True,
              help="Images to draw, laid out in a square grid.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default="samples.png",
              show_default=True, help="Image file to write (.png, .jpg, ...).")
@click.option("--mean", is_flag=True, help="Draw the likelihood's mean image instead of a sample from it.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible samples.")
@click.option("--digit", type=click.IntRange(0, 9), default=None,
              help="Draw this class (0-9) from a model with classes (--model m2).")
@checkpoint_option
@device_options
def sample(run, num_samples, output, mean, seed, digit, epoch, cuda, device):
    """Decode NUM_SAMPLES draws from the prior of RUN's model into one image grid."""
    import torch

    from pyrovae.errors import ConfigError
    from pyrovae.run import load_run, resolve_device, save_grid

    check_output(output)
    device = resolve_device(device, cuda)
    config, vae, _ = load_run(run, device, epoch)
    if digit is not None and not hasattr(vae, "num_classes"):
        raise ConfigError(f"--digit needs a model with classes (train with --model m2); {run} is a plain "
                          f"{config.model} without them.")
    if seed is not None:
        torch.manual_seed(seed)
    images = vae.sample(num_samples, mean=mean) if digit is None else vae.sample(num_samples, mean=mean, digit=digit)
    save_grid(images, output, nrow=math.ceil(math.sqrt(num_samples)))
    of_class = f" of class {digit}" if digit is not None else ""
    click.echo(f"Wrote {num_samples} {'mean images' if mean else 'samples'}{of_class} to {output}")
