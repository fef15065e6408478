"""``pyrovae train``: train a new run, or resume one."""

import dataclasses
import json
import shlex
import signal
from contextlib import contextmanager
from functools import partial

import click
from click.core import ParameterSource

from pyrovae.cli.options import (EXIT_STATUSES, Choice, config_file_option, config_options, device_options,
                                 exit_statuses, json_option, progress_enabled)
from pyrovae.config import Config, changeable_on_resume, flags, option_name
from pyrovae.registry import LOGGERS

# Options that cannot change when a run is resumed: those of the config fields marked fixed
# (the model, its data, its training), and where and how the run is written.
FIXED_ON_RESUME = tuple(option_name(f.name) for f in dataclasses.fields(Config)
                        if f.metadata.get("fixed")) + ("run_dir", "overwrite", "fallback")
# Config fields whose option has another name (latent_dim: z_dim), for --config files.
OPTION_OF_FIELD = {name: option_name(name) for name in flags() if option_name(name) != name}


@click.command(epilog=exit_statuses(*EXIT_STATUSES))
@config_file_option(OPTION_OF_FIELD)
@config_options
@click.option("--fallback/--no-fallback", default=True, show_default=True,
              help="Use the offline mnist5k digits when MNIST cannot be found or downloaded.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Where the run is written [default: runs/<dataset>-z<dim>-<likelihood>-<time>].")
@click.option("--overwrite", is_flag=True, help="Replace a run that already exists in --run-dir.")
@click.option("--resume", "resume", type=click.Path(file_okay=False), default=None, metavar="RUN",
              help="Continue the run in RUN from its last checkpoint.")
@click.option("--log", type=Choice(list(LOGGERS)), multiple=True, metavar="tensorboard",
              help="Also log to TensorBoard, in RUN/tensorboard: the metrics, the running train ELBO, the pictures, "
                   "the options as hyperparameters and the test set's latent means (tensorboard --logdir runs).")
@json_option
@device_options
@click.pass_context
def train(ctx, config, fallback, run_dir, overwrite, resume, log, as_json, cuda, device, **options):
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

    data, test_data = options["data"], options["test_data"]
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
        values = {name: options[option_name(name)] for name in flags()}
        values["num_epochs"] = values["num_epochs"] or Config.num_epochs  # --epochs: the new total when resuming
        _train(ctx, distributed, device, resume, run_dir, overwrite, fallback, loggers, as_json, Config(**values))
    except PyroVAEError as error:
        if not distributed.is_main:
            error.args = (f"[rank {distributed.rank}] {error.args[0] if error.args else error}",)  # its template
        raise
    finally:
        distributed.close()


def _train(ctx, distributed, device, resume, run_dir, overwrite, fallback, loggers, as_json, config):
    from pyrovae.run import last_improvement, plateaus, resume_run, train_run

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
            # the options that may change (--epochs, --lr-drops, --grad-clip, --precision, ...), where given
            changes = {name: getattr(config, name) for name in changeable_on_resume()
                       if ctx.get_parameter_source(option_name(name)) == ParameterSource.COMMANDLINE}
            result = resume_run(resume, should_stop=should_stop, changes=changes, **callbacks)
        else:
            # options left at their defaults (not given, nor in --config) follow the data's size
            fitted = [name for name in ("batch_size", "num_epochs")
                      if ctx.get_parameter_source(option_name(name)) == ParameterSource.DEFAULT]
            result = train_run(config, run_dir, overwrite=overwrite, fallback=fallback, should_stop=should_stop,
                               schedule_from_data=fitted, **callbacks)
        requested.saved = True  # from here a second Ctrl-C has nothing to abort: the closing lines are printed
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
                by = f" by more than {result.config.min_delta:g} nats" if result.config.min_delta else ""
                click.echo(f"Stopped early at epoch {result.history[-1].epoch}: the validation ELBO has not improved"
                           f"{by} since epoch {last_improvement(result.history, result.config)} (--patience "
                           f"{result.config.patience}" + (f", --min-delta {result.config.min_delta:g}" if by else "")
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
            echo(f"Training on {data.name} ({len(data.train_pixels)} train / {len(data.test_pixels)} test images, "
                 f"{shape}, from {data.source}); run directory {run_dir}")
            for note in data.notes:
                echo(f"  {note[0].upper()}{note[1:]}")
            echo(f"  Likelihood {config.likelihood}, {config.net} networks, z of {config.latent_dim} dimensions")
            if config.ema is not None:
                echo(f"  The held-out ELBOs, best.pt and the pictures are of the weights' moving average (--ema "
                     f"{config.ema:g})")
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
            guards = "" if m.grad_norm is None else f"  gradient norm {m.grad_norm:.3g} (median)"
            if m.skipped_steps:
                guards += f", {m.skipped_steps} of {run.trainer.num_batches} steps skipped"
            click.echo(f"epoch {m.epoch:3d}  train ELBO {m.train_elbo:9.2f}{validation}  test ELBO {m.test_elbo:9.2f} "
                       f"(reconstruction {m.test_reconstruction:.2f}, KL {m.test_kl:.2f})  {m.seconds:.1f}s{guards}")

        def on_run_end(self, run):
            from pyrovae.analysis import collapse_advice

            advice = collapse_advice(run.trainer.history, run.trainer.num_batches, run.config.image_shape,
                                     hierarchical=len(run.trainer.vae.latent_sites) > 1)
            if advice:
                click.echo(f"Note: {advice}", err=True)

    return EpochLines(as_json)


class _Signals(list):
    """The signals received, and whether the run has been saved since (a second Ctrl-C then
    has nothing left to abort)."""

    saved = False


@contextmanager
def _stop_on_interrupt(quiet: bool = False):
    """The first Ctrl-C (or SIGTERM, or SIGHUP: the terminal or ssh session closed) asks
    training to stop after the current step; a second
    Ctrl-C aborts at once, until the run is saved (``requested.saved``), after which more
    signals are only noted. Yields the list of the signals received."""
    requested = _Signals()

    def handler(signum, frame):
        if requested and signum == signal.SIGINT and not requested.saved:
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
