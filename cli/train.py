"""``pyrovae train``: train a new run, or resume one."""

import json
import shlex
import signal
from contextlib import contextmanager
from functools import partial
from typing import List

import click
from click.core import ParameterSource

from pyrovae.config import INITS, OPTIMIZERS, Config
from pyrovae.cli.options import (EXIT_STATUSES, Choice, HiddenDims, LabelCount, LogVarRange, config_file_option,
                                 data_options, dataset_choice, device_options, exit_statuses, json_option,
                                 progress_enabled)
from pyrovae.registry import ACTIVATION_NAMES, ELBOS, GUIDES, LIKELIHOODS, LOGGERS, MODELS, NETS, PRIORS

# Options that define the model or its data; they cannot change when a run is resumed.
FIXED_ON_RESUME = ("data", "test_data", "test_fraction", "image_size", "grayscale", "mixtures", "model",
                   "visible_quadrants", "labels",
                   "classifier_weight", "categories", "temperature", "min_temperature", "z_dim", "hidden", "net",
                   "activation", "init", "conv_channels", "likelihood", "likelihood_scale", "guide", "logvar_range",
                   "rank", "flows", "prior", "pseudo_inputs", "elbo", "particles", "warmup", "beta", "batch_size",
                   "lr", "optimizer", "dataset", "data_dir", "seed", "run_dir", "overwrite", "fallback",
                   "keep_checkpoints", "validation_size", "patience", "lr_drop_factor")

# Config fields whose option has another name; every other field is its option's name.
OPTION_OF_FIELD = {"latent_dim": "z_dim", "hidden_dims": "hidden", "num_labels": "labels",
                   "num_categories": "categories", "num_flows": "flows", "num_pseudo_inputs": "pseudo_inputs",
                   "num_particles": "particles", "warmup_epochs": "warmup", "num_epochs": "epochs",
                   "mixture_components": "mixtures"}


@click.command(epilog=exit_statuses(*EXIT_STATUSES))
@config_file_option(OPTION_OF_FIELD)
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Number of epochs (the new total when resuming) [default: 10].")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Images per optimizer step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Adam's learning rate.")
@click.option("--optimizer", type=Choice(list(OPTIMIZERS)), default="adam", show_default=True,
              help="adam; or adamnormgrad: Adam on each weight tensor's gradient divided by its norm, the "
                   "optimizer of Tomczak & Welling's VampPrior code.")
@click.option("--model", type=Choice(list(MODELS)), default="vae", show_default=True,
              help="vae; m2: the semi-supervised VAE with the class as a latent (Kingma et al. 2014); cvae: the "
                   "conditional VAE that completes an image from its visible part (Sohn et al. 2015).")
@click.option("--visible-quadrants", type=click.IntRange(1, 3), default=1, show_default=True,
              help="--model cvae: quadrants it sees (top-left, top-right, bottom-left in turn); it completes the rest.")
@click.option("--labels", type=LabelCount(), default="all", show_default=True,
              help="--model m2: how many training labels it sees, balanced over classes, or 'all'.")
@click.option("--classifier-weight", type=click.FloatRange(min=0), default=50.0, show_default=True,
              help="--model m2: weight of the classifier's cross-entropy on labelled images.")
@click.option("--z-dim", type=click.IntRange(min=1), default=20, show_default=True,
              help="Size of the latent code (categorical variables with --guide categorical).")
@click.option("--hidden", type=HiddenDims(), default="400", show_default=True,
              help="Encoder layer widths, comma-separated; the decoder mirrors them.")
@click.option("--likelihood", type=Choice(list(LIKELIHOODS)), default=None,
              help="p(x|z): bernoulli binarizes grey pixels; dlogistic(_mix): 8-bit pixel values, in colour too; "
                   "gaussian(_learned), continuous_bernoulli: densities on [0, 1] [default: bernoulli for the "
                   "MNIST family, dlogistic for other 8-bit images, gaussian for other pixel values].")
@click.option("--mixtures", type=click.IntRange(min=1), default=10, show_default=True,
              help="Logistics per pixel of --likelihood dlogistic_mix.")
@click.option("--likelihood-scale", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="Pixel standard deviation of the gaussian likelihood (initial value for gaussian_learned).")
@click.option("--net", type=Choice(list(NETS)), default="mlp", show_default=True,
              help="Encoder and decoder networks: dense layers; gated: gated dense layers (Tomczak & Welling's "
                   "VampPrior setup, --activation unused); conv: stride-2 convolutions each way.")
@click.option("--activation", type=Choice(ACTIVATION_NAMES), default="relu", show_default=True,
              help="Nonlinearity between the layers of the encoder and decoder.")
@click.option("--init", type=Choice(list(INITS)), default="torch", show_default=True,
              help="Initial weights: PyTorch's defaults; or he: every dense and convolutional layer's weights from "
                   "N(0, 2 / fan_in), as in Tomczak & Welling's VampPrior code.")
@click.option("--conv-channels", type=click.IntRange(min=1), default=32, show_default=True,
              help="Channels of the first convolution with --net conv.")
@click.option("--guide", type=Choice(list(GUIDES)), default="diag_normal", show_default=True,
              help="q(z|x): diagonal Normal, low-rank-plus-diagonal Normal, inverse autoregressive flows, "
                   "or relaxed categoricals (with --prior categorical).")
@click.option("--logvar-range", type=LogVarRange(), default=None, metavar="LO,HI",
              help="A Normal guide's log-variance head clipped to [LO, HI] (the VampPrior code's: -6,2), so that "
                   "q's standard deviation lies in [exp(LO/2), exp(HI/2)] [default: a softplus standard deviation].")
@click.option("--rank", type=click.IntRange(min=1), default=2, show_default=True,
              help="Covariance rank of the lowrank guide.")
@click.option("--flows", type=click.IntRange(min=1), default=2, show_default=True,
              help="Number of flows of the iaf guide.")
@click.option("--prior", type=Choice(list(PRIORS)), default="standard_normal", show_default=True,
              help="p(z): N(0, I), the VampPrior (a mixture of q at learned pseudo-inputs), "
                   "or uniform categoricals.")
@click.option("--pseudo-inputs", type=click.IntRange(min=1), default=500, show_default=True,
              help="Mixture components of the vamp prior.")
@click.option("--categories", type=click.IntRange(min=2), default=10, show_default=True,
              help="Values of each categorical latent (--guide and --prior categorical).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Gumbel-softmax temperature of the first epoch (categorical code).")
@click.option("--min-temperature", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="The temperature falls by a factor exp(-0.2) each epoch down to this.")
@click.option("--elbo", type=Choice(list(ELBOS)), default="trace", show_default=True,
              help="trace: Pyro's Trace_ELBO; meanfield: TraceMeanField_ELBO with the analytic KL; "
                   "iwae: the importance-weighted bound with --particles samples.")
@click.option("--particles", type=click.IntRange(min=1), default=5, show_default=True,
              help="Importance samples per image of --elbo iwae.")
@click.option("--warmup", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Epochs over which the KL term's weight rises linearly from 0 to --beta.")
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Final weight of z's KL term (1: the ELBO; > 1: a beta-VAE; with --model m2, "
                   "5 makes samples follow the asked class).")
@click.option("--dataset", type=dataset_choice, default="mnist", show_default=True,
              help="A named data set (emoji: 3,786 colour 64x64 Twemoji images, fetched with npm).")
@data_options
@click.option("--data", type=click.Path(exists=True, path_type=str), default=None, metavar="PATH",
              help="Train on your own images: a folder (read recursively; class subfolders give labels) "
                   "or a .npy/.npz array (N, H, W[, C]).")
@click.option("--test-data", type=click.Path(exists=True, path_type=str), default=None, metavar="PATH",
              help="Test images for --data [default: a held-out --test-fraction of it].")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of --data (and of emoji) held out, with a fixed seed, as the test set.")
@click.option("--image-size", type=click.IntRange(min=2), default=None, metavar="N",
              help="Resize images to NxN (shorter side scaled to N, centre cut).")
@click.option("--grayscale", is_flag=True, help="Convert colour images to grey.")
@click.option("--fallback/--no-fallback", default=True, show_default=True,
              help="Use the offline mnist5k digits when MNIST cannot be found or downloaded.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Where the run is written [default: runs/<dataset>-z<dim>-<likelihood>-<time>].")
@click.option("--overwrite", is_flag=True, help="Replace a run that already exists in --run-dir.")
@click.option("--resume", "resume", type=click.Path(file_okay=False), default=None, metavar="RUN",
              help="Continue the run in RUN from its last checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initial weights, data order and noise: the same seed gives the same run.")
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep the last N end-of-epoch checkpoints in RUN/checkpoints (evaluate --checkpoint EPOCH "
                   "reads them); the newest is also checkpoint.pt.")
@click.option("--validation-size", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Hold out N training images (a fixed seed) as a validation set, scored every epoch; the epoch "
                   "with the best validation ELBO is kept as RUN/best.pt, which evaluate, sample and plot use.")
@click.option("--patience", type=click.IntRange(min=1), default=None, metavar="EPOCHS",
              help="Early stopping: end the run when the validation ELBO has not improved for this many epochs "
                   "(not counting the --warmup epochs) [default: train all --epochs].")
@click.option("--lr-drops", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="With --patience: the first N times the validation ELBO stops improving, multiply the learning "
                   "rate by --lr-drop-factor and go on instead of stopping. Can be raised when resuming, to go on "
                   "with a run that stopped early.")
@click.option("--lr-drop-factor", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, metavar="F", help="What each of the --lr-drops multiplies the learning rate by.")
@click.option("--log", type=Choice(list(LOGGERS)), multiple=True, metavar="tensorboard",
              help="Also log to TensorBoard, in RUN/tensorboard: the metrics, the running train ELBO, the pictures, "
                   "the options as hyperparameters and the test set's latent means (tensorboard --logdir runs).")
@json_option
@device_options
@click.pass_context
def train(ctx, config, epochs, batch_size, lr, optimizer, model, visible_quadrants, labels, classifier_weight,
          categories, temperature, min_temperature, z_dim, hidden, likelihood, likelihood_scale, net, activation, init,
          conv_channels, mixtures, guide, logvar_range, rank, flows, prior, pseudo_inputs, elbo, particles, warmup,
          beta, dataset, data_dir, data, test_data, test_fraction, image_size, grayscale, fallback, run_dir, overwrite,
          resume, seed, keep_checkpoints, validation_size, patience, lr_drops, lr_drop_factor, log, as_json, cuda,
          device):
    """Train a VAE and write a run directory (config, metrics, checkpoint, pictures).

    Ctrl-C stops at the next step, saves a checkpoint and exits with status 130 (143 after
    SIGTERM, 129 after SIGHUP); --resume RUN continues it exactly. Another status than 0
    means the run is not finished: 2 a bad option or file, 3 a NaN loss, 4 a file that could
    not be written, 5 the run directory in use by another process.

    --config FILE reads options from a TOML recipe (recipes/ holds some that follow published
    setups) or from a run's config.json, to repeat it; options given here override the file.

    Under torchrun (torchrun --nproc-per-node N -m pyrovae train ...) the N processes train
    one model with DistributedDataParallel; --batch-size is the global batch.

    --json prints one JSON object per epoch (the fields of metrics.jsonl) and a final summary
    (run_dir, finished, stopped_early, best_epoch, resume) on stdout; everything else goes to stderr.
    """
    from pyrovae.distributed import Distributed, launched_by_torchrun
    from pyrovae.errors import PyroVAEError
    from pyrovae.registry import build_loggers
    from pyrovae.devices import resolve_device

    for name in ("dataset", "data_dir", "fallback"):
        if data and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            raise click.UsageError(f"--data trains on your own images; leave out --{name.replace('_', '-')}.")
    if config and resume:
        raise click.UsageError("--resume continues a run with its own options; leave out --config.")
    if test_data and not data:
        raise click.UsageError("--test-data goes with --data (your own training images).")
    device = resolve_device(device, cuda)
    loggers = build_loggers(log)
    distributed = Distributed()
    try:
        if launched_by_torchrun():
            distributed, device = Distributed.from_env(device)
        _train(ctx, distributed, device, epochs, resume, run_dir, overwrite, fallback, loggers, as_json, Config(
            model=model, visible_quadrants=visible_quadrants, num_labels=labels, classifier_weight=classifier_weight,
            num_categories=categories,
            temperature=temperature, min_temperature=min_temperature, latent_dim=z_dim, hidden_dims=hidden, net=net,
            activation=activation, init=init, conv_channels=conv_channels, likelihood=likelihood,
            likelihood_scale=likelihood_scale, mixture_components=mixtures, data=data, test_data=test_data,
            test_fraction=test_fraction, image_size=image_size, grayscale=grayscale, guide=guide,
            logvar_range=logvar_range, rank=rank, num_flows=flows, prior=prior,
            num_pseudo_inputs=pseudo_inputs, elbo=elbo, num_particles=particles, warmup_epochs=warmup, beta=beta,
            num_epochs=epochs or Config.num_epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, dataset=dataset,
            data_dir=data_dir, seed=seed, keep_checkpoints=keep_checkpoints, validation_size=validation_size,
            patience=patience, lr_drops=lr_drops, lr_drop_factor=lr_drop_factor))
    except PyroVAEError as error:
        if not distributed.is_main:
            error.args = (f"[rank {distributed.rank}] {error}",)
        raise
    finally:
        distributed.close()


def _train(ctx, distributed, device, epochs, resume, run_dir, overwrite, fallback, loggers, as_json, config):
    from pyrovae.run import plateaus, resume_run, train_run

    main = distributed.is_main
    callbacks = dict(progress=progress_enabled() and main, device=device, distributed=distributed,
                     callbacks=[_epoch_lines(as_json), *loggers])  # run hooks reach rank 0 alone
    with _stop_on_interrupt(quiet=not main) as requested:
        should_stop = lambda: bool(requested)  # noqa: E731
        if resume:
            fixed = [f"--{name.replace('_', '-')}" for name in FIXED_ON_RESUME
                     if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
            if fixed:
                raise click.UsageError(f"{', '.join(fixed)} cannot be changed when resuming a run.")
            given = ctx.get_parameter_source("lr_drops") == ParameterSource.COMMANDLINE
            result = resume_run(resume, epochs, should_stop=should_stop, lr_drops=config.lr_drops if given else None,
                                **callbacks)
        else:
            result = train_run(config, run_dir, overwrite=overwrite, fallback=fallback, should_stop=should_stop,
                               **callbacks)
    run = shlex.quote(str(result.run_dir))
    resume_command = f"pyrovae train --resume {run}" + "".join(f" --log {name}" for name in ctx.params["log"])
    if main and as_json:
        click.echo(json.dumps({"run_dir": str(result.run_dir), "finished": result.finished,
                               "stopped_early": result.stopped_early, "epochs": len(result.history),
                               "best_epoch": result.best_epoch,
                               "resume": None if result.finished else resume_command}))
    elif main:
        if result.stopped_early:
            cuts = len(plateaus(result.history, result.config)[0])
            click.echo(f"Stopped early at epoch {result.history[-1].epoch}: the validation ELBO has not improved "
                       f"since epoch {result.best_epoch} (--patience {result.config.patience}"
                       + (f", after {cuts} learning-rate drop{'s' * (cuts > 1)}" if cuts else "") + ").")
        if result.finished:
            click.echo(f"Done. Pictures in {result.run_dir}/samples and {result.run_dir}/reconstructions; "
                       f"next: pyrovae evaluate {run}")
        else:
            click.echo(f"Interrupted; checkpoint saved. Resume with: {resume_command}")
    if not result.finished:  # as a shell reports a process stopped by that signal
        ctx.exit(128 + requested[0])


def _epoch_lines(as_json: bool):
    """What the CLI says as a run goes, as a training callback: what is trained where, then a
    line per epoch once it is saved (a JSON object on stdout with ``as_json``, everything else
    then on stderr). Built when training starts, so that ``--help`` imports no torch."""
    from pyrovae.train import Callback

    class EpochLines(Callback):

        def __init__(self, as_json: bool):
            self.as_json = as_json
            self.lr = None

        def on_run_start(self, run):
            run_dir, config, data, first_epoch = run.run_dir, run.config, run.trainer.data, run.first_epoch
            self.lr = config.lr
            echo = partial(click.echo, err=self.as_json)
            shape = "x".join(map(str, data.image_shape[1:])) + (" colour" if data.image_shape[0] == 3 else " grey")
            echo(f"Training on {data.name} ({len(data.train_images)} train / {len(data.test_images)} test images, "
                 f"{shape}, from {data.source}); run directory {run_dir}")
            for note in data.notes:
                echo(f"  {note[0].upper()}{note[1:]}")
            echo(f"  Likelihood {config.likelihood}, {config.net} networks, z of {config.latent_dim} dimensions")
            if first_epoch > 1:
                echo(f"Resuming at epoch {first_epoch} of {config.num_epochs}.")

        def on_epoch_saved(self, run, m, pictures):
            if m.lr is not None and self.lr is not None and m.lr != self.lr:
                click.echo(f"Learning rate {m.lr:g} from epoch {m.epoch} on (--lr-drops: the validation ELBO had "
                           "stopped improving).", err=self.as_json)
            self.lr = m.lr
            if self.as_json:
                click.echo(json.dumps(m.to_dict()))
                return
            validation = f"  validation ELBO {m.validation_elbo:9.2f}" if m.validation_elbo is not None else ""
            click.echo(f"epoch {m.epoch:3d}  train ELBO {m.train_elbo:9.2f}{validation}  test ELBO {m.test_elbo:9.2f} "
                       f"(reconstruction {m.test_reconstruction:.2f}, KL {m.test_kl:.2f})  {m.seconds:.1f}s")

    return EpochLines(as_json)


@contextmanager
def _stop_on_interrupt(quiet: bool = False):
    """The first Ctrl-C (or SIGTERM, or SIGHUP: the terminal or ssh session closed) asks
    training to stop after the current step; a second
    Ctrl-C aborts at once. Yields the list of the signals received."""
    requested: List[int] = []

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)
        if not quiet:
            click.echo("\nStopping after this step (Ctrl-C again to abort without saving)...", err=True)

    signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    # A SIGHUP that was ignored (nohup) stays ignored.
    signals = [sig for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
