"""``pyrovae evaluate``: test ELBO and importance-sampled log-likelihood of a run."""

import math

import click

from pyrovae.cli.options import (COMMON_STATUSES, checkpoint_option, data_options, dataset_choice, device_options,
                                 exit_statuses, json_line, json_option, progress_enabled)


@click.command(epilog=exit_statuses(*COMMON_STATUSES, 3))
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-k", "--num-samples", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Importance samples per image for log p(x).")
@click.option("--num-images", type=click.IntRange(min=1), default=None,
              help="Score only N test images, spread evenly over the test set [default: all].")
@click.option("--dataset", type=dataset_choice, default=None,
              help="Evaluate on this data set's test split instead of the run's own.")
@data_options
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the evaluation's own noise.")
@json_option
@checkpoint_option
@device_options
def evaluate(run, num_samples, num_images, dataset, data_dir, seed, as_json, epoch, cuda, device):
    """Score RUN on test images: the ELBO with its reconstruction and KL terms, and
    log p(x) estimated with k importance samples (in nats per image; higher is better)."""
    from pyrovae.data import load_data, load_dataset, prepare_test_pixels, spread_subset
    from pyrovae.errors import DataError, NumericalError
    from pyrovae.evaluation import evaluate as score
    from pyrovae.devices import resolve_device
    from pyrovae.rundir import best_epoch, load_run, with_data_dir
    from pyrovae.progress import progress
    from pyrovae.train import EpochMetrics

    device = resolve_device(device, cuda)
    config, vae, state = load_run(run, device, epoch)
    best = best_epoch([EpochMetrics(**m) for m in state["history"]])
    if dataset:
        data = load_dataset(dataset, data_dir, fallback=False, progress=progress_enabled())
    else:
        data = load_data(with_data_dir(config, data_dir, run), fallback=False, progress=progress_enabled())
    if data.image_shape != config.image_shape:
        raise DataError(f"{data.name} holds images of shape {data.image_shape} but the run's model "
                        f"expects {config.image_shape}.")
    images = prepare_test_pixels(data.test_pixels, vae.likelihood.binary_data)  # uint8 where 8-bit
    images = images[spread_subset(num_images, len(images))]
    with progress(len(images), f"log p(x), k={num_samples}", "image", enabled=progress_enabled()) as bar:
        labels = data.test_labels[spread_subset(num_images, len(data.test_labels))]
        result = score(vae.to(device), images, num_samples=num_samples, seed=seed, dataset=data.name,
                       progress=bar.update, labels=labels)
    figures = [result.elbo, result.reconstruction, result.kl, result.log_likelihood, *result.extra.values()]
    if as_json:
        click.echo(json_line({"run": str(run), "epoch": state["epoch"], "best_epoch": best, **result.to_dict()}))
    if not all(map(math.isfinite, figures)):
        raise NumericalError(f"{run} scores NaN or infinite on {data.name} (ELBO {result.elbo}, log p(x) "
                             f"{result.log_likelihood}): its model is numerically broken; evaluate an earlier "
                             "checkpoint (--checkpoint EPOCH).")
    if as_json:
        return
    binarized = " (binarized with a fixed seed)" if vae.likelihood.binary_data else ""
    trained = f"epoch {state['epoch']}" + (f" and {state['step']} steps" if state["step"] else "")
    if best == state["epoch"] and not state["step"]:
        trained += " (its best validation ELBO)"
    click.echo(f"{run} after {trained}: {data.name} test set, {result.num_images} images{binarized}, nats per image")
    click.echo(f"  ELBO                 {result.elbo:10.2f}")
    click.echo(f"    reconstruction     {result.reconstruction:10.2f}")
    click.echo(f"    KL                 {result.kl:10.2f}")
    click.echo(f"  {result.likelihood_name}, k={num_samples:<7d} {result.log_likelihood:10.2f}")
    if result.bits_per_dim is not None:
        scored = vae.scored_values(config.image_shape)
        click.echo(f"  bits per dimension   {result.bits_per_dim:10.4f}  (-log2 of it / {scored} pixel values)")
    else:
        click.echo(f"  bits per dimension          n/a  ({config.likelihood} is a density, not a probability of "
                   "the 8-bit image)")
    if result.accuracy is not None:
        click.echo(f"  classifier accuracy  {100 * result.accuracy:9.2f}%  (q(y|x) on the test labels)")
    for name, value in result.extra.items():
        click.echo(f"  {name}  {value:10.2f}")
