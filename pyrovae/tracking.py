"""Watching training in TensorBoard: what a run logs besides its own files.

:class:`TensorBoardLogger` is a :class:`~pyrovae.train.Callback`: told when a run starts,
a few times an epoch, after each epoch (with the metrics and the picture grids the run has
just written) and when it stops, it writes them with TensorBoard's own writer (``torch.utils.tensorboard``) to
``RUN/tensorboard``, so ``tensorboard --logdir runs`` shows every run. Everything it logs is
a value the training loop already has on the host: it adds no device syncs.
"""

import importlib
import math
from pathlib import Path


from pyrovae.config import Config
from pyrovae.errors import ConfigError
from pyrovae.train import Callback, EpochMetrics, Trainer

__all__ = ["TensorBoardLogger", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"
# TensorBoard's projector draws the label images from one sprite of at most 8192x8192 pixels.
SPRITE_SIDE = 8192
MAX_EMBEDDED = 10000
RUNNING_LOGS_PER_EPOCH = 5


class TensorBoardLogger(Callback):
    """Logs to ``RUN/tensorboard``, against the optimizer step:

    - ``epoch/*``: every field of :class:`~pyrovae.train.EpochMetrics` after each epoch;
    - ``train/running_elbo``: minus the training objective per image of the epoch so far
      (the ELBO, KL-weighted during a warm-up), a few times an epoch;
    - images ``samples`` and ``reconstructions``: the grids the run writes each epoch;
    - the run's options as hyperparameters (the HPARAMS tab), once, when the log begins;
    - the test set's latent means, with labels and images, for the projector, when
      training stops.

    A resumed run appends to the same log; events written after its last checkpoint by a
    process that was killed are dropped (``purge_step``).
    """

    def __init__(self):
        try:
            importlib.import_module("torch.utils.tensorboard")  # which imports the tensorboard package
        except ImportError:
            raise ConfigError("--log tensorboard needs the tensorboard package: pip install tensorboard "
                              '(or pip install -e ".[tensorboard]").') from None
        self.writer = None
        self.every = self.next_step = 1

    def on_run_start(self, run):
        from torch.utils.tensorboard import SummaryWriter

        if run.run_dir is None:
            raise ConfigError("TensorBoardLogger writes into a run directory: train with pyrovae.run.train_run.")
        run_dir, config, trainer = run.run_dir, run.config, run.trainer
        folder = Path(run_dir) / TENSORBOARD_DIR
        fresh = not folder.is_dir()
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=None if fresh else trainer.global_step + 1)
        if fresh:  # a new log, possibly of a resumed run: the options, and the epochs it already has
            self._log_options(config, trainer)
            for metrics in trainer.history:
                self._log_metrics(metrics, metrics.epoch * trainer.num_batches)

    def on_epoch_start(self, trainer):
        # The running training ELBO a few times an epoch, from the value the loop has already
        # read for its NaN check (trainer.running_elbo): no sync of its own.
        self.every = max(1, trainer.num_batches // RUNNING_LOGS_PER_EPOCH)
        self.next_step = (trainer.step // self.every + 1) * self.every

    def on_refresh(self, trainer, losses):
        if self.writer is not None and (trainer.step >= self.next_step or trainer.step == trainer.num_batches):
            self.writer.add_scalar("train/running_elbo", trainer.running_elbo, trainer.global_step)
            self.next_step = (trainer.step // self.every + 1) * self.every

    def _log_options(self, config: Config, trainer: Trainer) -> None:
        from torch.utils.tensorboard.summary import hparams

        options = {}
        for name, value in config.to_dict().items():
            if isinstance(value, (list, tuple)):
                value = ",".join(map(str, value))
            options[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
        metrics = ["epoch/test_elbo"] + (["epoch/validation_elbo"] if trainer.validation_images is not None else [])
        for summary in hparams(options, {name: math.nan for name in metrics}):
            self.writer.file_writer.add_summary(summary)

    def _log_metrics(self, metrics: EpochMetrics, step: int) -> None:
        for name, value in metrics.to_dict().items():
            if value is not None:
                self.writer.add_scalar(f"epoch/{name}", value, step)

    def on_epoch_saved(self, run, metrics, pictures):
        step = run.trainer.global_step
        self._log_metrics(metrics, step)
        for name, grid in pictures.items():
            self.writer.add_image(name, grid, step)
        self.writer.flush()

    def on_run_end(self, run):
        if self.writer is not None and run.trainer.vae.amortized and run.trainer.history:
            self._log_latents(run.trainer)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _log_latents(self, trainer: Trainer) -> None:
        from pyrovae.analysis import encode
        from pyrovae.data import spread_subset
        from pyrovae.evaluation import eval_mode
        from pyrovae.pixels import to_unit

        images, labels = trainer.test_images, trainer.data.test_labels
        side = max(images.shape[-2:])
        index = spread_subset(min(len(images), MAX_EMBEDDED, (SPRITE_SIDE // side) ** 2), len(images))
        vae = trainer.scored
        images, labels = to_unit(images[index], vae.dtype), labels[index]
        with eval_mode(vae):
            latents = encode(vae, images, labels)
        names = trainer.data.classes
        metadata = [names[label] if names and 0 <= label < len(names) else str(label)
                    for label in latents.labels.tolist()]
        self.writer.add_embedding(latents.loc, metadata=metadata, label_img=images.cpu(),
                                  global_step=trainer.global_step, tag="test_latent_means")

