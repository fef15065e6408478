"""TensorBoard logging (pyrovae.tracking), read back with TensorBoard's own reader."""

import json
import sys

import pytest
import torch
from conftest import SMALL_OPTIONS

# tensorboard is an optional extra (pip install -e ".[tensorboard]"): without it, skip.
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from pyrovae.config import Config
from pyrovae.errors import ConfigError
from pyrovae.registry import build_loggers
from pyrovae.run import resume_run, train_run
from pyrovae.tracking import TensorBoardLogger
from pyrovae.train import Trainer


def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_every_epoch_metric_the_running_elbo_pictures_options_and_latents(tmp_path):
    run = tmp_path / "run"
    result = train_run(Config(**{**SMALL_OPTIONS, "validation_size": 500}), run, progress=False,
                       callbacks=[TensorBoardLogger()])
    log = events(run)
    steps = 35  # 3,500 training images in batches of 100
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name in ("train_elbo", "test_elbo", "test_reconstruction", "test_kl", "validation_elbo", "seconds"):
        logged = log.Scalars(f"epoch/{name}")
        assert [e.step for e in logged] == [steps, 2 * steps]
        assert [e.value for e in logged] == pytest.approx([m[name] for m in metrics], rel=1e-6)
    running = log.Scalars("train/running_elbo")
    assert 2 * 3 <= len(running) <= 2 * 7 and [e.step for e in running] == sorted({e.step for e in running})
    assert running[-1].value == pytest.approx(result.history[-1].train_elbo, rel=1e-6)  # the epoch's own mean
    for tag in ("samples", "reconstructions"):
        assert [e.step for e in log.Images(tag)] == [steps, 2 * steps]
        assert log.Images(tag)[0].width > 28 * 4

    content = log.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["latent_dim"].number_value == 4 and start.hparams["hidden_dims"].string_value == "64"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"epoch/test_elbo", "epoch/validation_elbo"}

    projector = (run / "tensorboard" / "projector_config.pbtxt").read_text()
    assert f"test_latent_means:{2 * steps:05d}" in projector and "sprite" in projector
    folder = run / "tensorboard" / f"{2 * steps:05d}" / "test_latent_means"
    rows = (folder / "tensors.tsv").read_text().splitlines()
    assert len(rows) == 1000 and len(rows[0].split("\t")) == 4
    assert len((folder / "metadata.tsv").read_text().splitlines()) == 1000


def test_a_resumed_run_appends_and_drops_what_came_after_its_checkpoint(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    stops = iter([False] * 50 + [True])  # 40 steps an epoch: stop after step 10 of epoch 2
    first = train_run(Config(**SMALL_OPTIONS), run, progress=False, should_stop=lambda: next(stops, True),
                      callbacks=[TensorBoardLogger()])
    assert not first.finished
    with SummaryWriter(str(run / "tensorboard")) as killed:  # what a killed process logged after step 50
        killed.add_scalar("epoch/test_elbo", 999.0, 75)
    resume_run(run, progress=False, callbacks=[TensorBoardLogger()])
    log = events(run)
    assert [e.step for e in log.Scalars("epoch/test_elbo")] == [40, 80]
    assert 999.0 not in [e.value for e in log.Scalars("epoch/test_elbo")]
    running = [e.step for e in log.Scalars("train/running_elbo")]
    assert running == sorted(set(running)) and running[-1] == 80


def test_logging_adds_no_host_syncs_to_the_training_loop(mnist5k, monkeypatch):
    """Counts the calls that wait for the device (.item(), bool()) during one epoch with and
    without the TensorBoard logger's per-step callback."""
    from pyrovae.registry import build_vae

    class Writer:
        def __init__(self):
            self.logged = []

        def add_scalar(self, tag, value, step):
            assert isinstance(value, float)  # already on the host
            self.logged.append(step)

    def syncs(callbacks):
        torch.manual_seed(0)
        trainer = Trainer(build_vae(Config(**SMALL_OPTIONS).replace(image_shape=(1, 28, 28))), mnist5k, batch_size=100,
                          callbacks=callbacks)
        counts = {"n": 0}
        for name in ("item", "__bool__"):
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original):
                counts["n"] += 1
                return _original(self, *args)
            monkeypatch.setattr(torch.Tensor, name, counted)
        trainer.run_epoch(progress=False)
        monkeypatch.undo()
        return counts["n"]

    logger = TensorBoardLogger()
    logger.writer = Writer()  # as on_run_start would set it
    assert syncs([logger]) == syncs([])
    assert len(logger.writer.logged) >= 5


def test_a_missing_tensorboard_package_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it now raises ImportError
    with pytest.raises(ConfigError, match="needs the tensorboard package: pip install tensorboard"):
        build_loggers(["tensorboard"])
    with pytest.raises(ConfigError, match="Unknown logger 'mlflow'"):
        build_loggers(["mlflow"])


def test_logging_that_starts_on_resume_gets_the_options_and_the_earlier_epochs(tmp_path):
    run = tmp_path / "run"
    train_run(Config(**{**SMALL_OPTIONS, "num_epochs": 1}), run, progress=False)
    resume_run(run, 2, progress=False, callbacks=[TensorBoardLogger()])
    log = events(run)
    assert [e.step for e in log.Scalars("epoch/test_elbo")] == [40, 80]
    assert "_hparams_/session_start_info" in log.PluginTagToContent("hparams")
