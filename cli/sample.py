"""``pyrovae sample``: a grid of images decoded from prior samples."""

import math
from pathlib import Path

import click

from pyrovae.cli.options import (COMMON_STATUSES, check_output, checkpoint_option, device_options, emit,
                                 exit_statuses, json_option)


@click.command(epilog=exit_statuses(*COMMON_STATUSES))
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-n", "--num-samples", type=click.IntRange(min=1, max=10000), default=64, show_default=True,
              help="Images to draw, laid out in a square grid.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default="samples.png",
              show_default=True, help="Image file to write (.png, .jpg, ...).")
@click.option("--mean/--sampled", default=True, show_default=True,
              help="--mean: the likelihood's mean image of each code (for black-and-white images, each pixel's "
                   "probability of being white); --sampled: pixels drawn from p(x|z), which look like noise "
                   "for a Bernoulli.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible samples.")
@click.option("--class", "--digit", "label", default=None, metavar="CLASS",
              help="Draw this class from a model with classes (--model m2): its name (a folder name of the "
                   "training data) or its index from 0 (--digit is the same option, MNIST's word).")
@json_option
@checkpoint_option
@device_options
def sample(run, num_samples, output, mean, seed, label, as_json, epoch, cuda, device):
    """Decode NUM_SAMPLES draws from the prior of RUN's model into one image grid."""
    import torch

    from pyrovae.errors import ConfigError
    from pyrovae.devices import resolve_device
    from pyrovae.grids import save_grid
    from pyrovae.rundir import load_run

    check_output(output)
    device = resolve_device(device, cuda)
    config, vae, state = load_run(run, device, epoch)
    index = None
    if label is not None:
        if not hasattr(vae, "class_index"):
            raise ConfigError(f"--class needs a model with classes (train with --model m2); {run} is a plain "
                              f"{config.model} without them.")
        index = vae.class_index(label)  # a name or an index; anything else is one sentence
    if seed is not None:
        torch.manual_seed(seed)
    images = vae.sample(num_samples, mean=mean) if index is None else vae.sample(num_samples, mean=mean, label=index)
    save_grid(images, output, nrow=math.ceil(math.sqrt(num_samples)))
    of_class = f" of class {vae.class_names[index]}" if index is not None else ""
    emit(as_json, {"output": str(output), "num_samples": num_samples, "pixels": "mean" if mean else "sampled",
                   "class": index, "class_name": None if index is None else vae.class_names[index],
                   "run": str(run), "epoch": state["epoch"]},
         f"Wrote {num_samples} {'mean images' if mean else 'images of sampled pixels'}{of_class} to {output}")
