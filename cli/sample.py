"""``pyrovae sample``: a grid of images decoded from prior samples."""

import math
from pathlib import Path

import click

from pyrovae.cli.options import (COMMON_STATUSES, check_output, checkpoint_option, device_options, emit,
                                 exit_statuses, json_option)


@click.command(epilog=exit_statuses(*COMMON_STATUSES))
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-n", "--num-samples", type=click.IntRange(min=1, max=10000), default=None,
              help="Images to draw, laid out in a square grid; with --complete, completions of each image "
                   "[default: 64; with --complete, 8].")
@click.option("--complete", "inputs", multiple=True, type=click.Path(exists=True, path_type=Path), metavar="IMAGE",
              help="A conditional model (--model cvae): complete this image (a file, a folder of them or a "
                   ".npy/.npz array; repeat for more) from its visible part. Each row: what the model sees, its "
                   "completions, the image.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default="samples.png",
              show_default=True, help="Image file to write (.png, .jpg, ...).")
@click.option("--mean/--sampled", default=True, show_default=True,
              help="--mean: the likelihood's mean image of each code (for black-and-white images, each pixel's "
                   "probability of being white); --sampled: pixels drawn from p(x|z), which look like noise "
                   "for a Bernoulli.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible samples.")
@click.option("-t", "--temperature", type=click.FloatRange(min=0, min_open=True, max=100), default=1.0,
              show_default=True, help="The prior's spread times T (every level's, for --model hvae): below 1 "
                                      "draws more typical, often sharper images.")
@click.option("--class", "--digit", "label", default=None, metavar="CLASS",
              help="Draw this class from a model with classes (--model m2): its name (a folder name of the "
                   "training data) or its index from 0 (--digit is the same option, MNIST's word).")
@json_option
@checkpoint_option
@device_options
def sample(run, num_samples, inputs, output, mean, seed, temperature, label, as_json, epoch, cuda, device):
    """Decode NUM_SAMPLES draws from the prior of RUN's model into one image grid (or, with
    --complete, draw completions of images from their visible part)."""
    import torch

    from pyrovae.errors import ConfigError
    from pyrovae.devices import resolve_device
    from pyrovae.grids import save_grid
    from pyrovae.rundir import load_run

    check_output(output)
    if inputs and temperature != 1:
        raise ConfigError("--temperature tempers prior samples; completions (--complete) come from the "
                          "conditional prior of each image as it is.")
    if inputs:
        return _complete(run, inputs, num_samples or 8, output, mean, seed, label, as_json, epoch, cuda, device)
    num_samples = num_samples or 64
    device = resolve_device(device, cuda)
    config, vae, state = load_run(run, device, epoch)
    index = None
    if label is not None:
        if not vae.num_classes:
            raise ConfigError(f"--class needs a model with classes (train with --model m2); {run} is a plain "
                              f"{config.model} without them.")
        index = vae.class_index(label)  # a name or an index; anything else is one sentence
    if seed is not None:
        torch.manual_seed(seed)
    images = vae.sample(num_samples, mean=mean, temperature=temperature) if index is None else \
        vae.sample(num_samples, mean=mean, label=index, temperature=temperature)
    save_grid(images, output, nrow=math.ceil(math.sqrt(num_samples)))
    of_class = f" of class {vae.class_names[index]}" if index is not None else ""
    emit(as_json, {"output": str(output), "num_samples": num_samples, "pixels": "mean" if mean else "sampled",
                   "temperature": temperature,
                   "class": index, "class_name": None if index is None else vae.class_names[index],
                   "run": str(run), "epoch": state["epoch"]},
         f"Wrote {num_samples} {'mean images' if mean else 'images of sampled pixels'}{of_class} to {output}")


def _complete(run, inputs, num_samples, output, mean, seed, label, as_json, epoch, cuda, device):
    """``sample --complete``: rows of what the model sees, its completions, and the image."""
    import torch

    from pyrovae.cli.encode import _load
    from pyrovae.data import prepare_test_images
    from pyrovae.errors import ConfigError
    from pyrovae.grids import save_grid

    if label is not None:
        raise ConfigError("--class draws from a model with classes; --complete completes images: give one of them.")
    config, vae, images, names = _load(run, inputs, epoch, cuda, device)
    images = prepare_test_images(images, vae.likelihood.binary_data).to(vae.device, vae.dtype)
    if seed is not None:
        torch.manual_seed(seed)
    completions = vae.complete(images, num_samples, mean=mean)  # (k, N, C, H, W); refused by other families
    rows = torch.cat([vae.seen(images).unsqueeze(1), completions.transpose(0, 1), images.unsqueeze(1)], dim=1)
    save_grid(rows.flatten(0, 1), output, nrow=num_samples + 2)
    emit(as_json, {"output": str(output), "num_images": len(images), "completions": num_samples, "files": names,
                   "pixels": "mean" if mean else "sampled", "run": str(run)},
         f"Wrote {num_samples} completion(s) of each of {len(images)} image(s) to {output}: each row what the model "
         "sees (the hidden part grey), its completions, then the image")
