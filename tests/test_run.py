import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SMALL_OPTIONS
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pyrovae.config import Config
from pyrovae.data import load_dataset
from pyrovae.errors import CheckpointError, ConfigError, StorageError
from pyrovae.evaluation import elbo_terms
from pyrovae.registry import build_vae
from pyrovae.run import (best_epoch, last_improvement, learning_rate, load_run, plateaus, resolve_device, resume_run,
                         stopped_early, train_run)
from pyrovae.train import Callback, EpochMetrics, Trainer, prepare_test_images


def test_run_directory_holds_everything(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["dataset"] == "mnist5k" and config["latent_dim"] == 4 and config["hidden_dims"] == [64]
    lines = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert set(lines[0]) == {"epoch", "train_elbo", "test_elbo", "test_reconstruction", "test_kl", "seconds",
                             "validation_elbo", "lr", "skipped_steps", "grad_norm"}
    assert [m["lr"] for m in lines] == [Config.lr] * 2
    assert not (trained_run / "best.pt").exists()  # no validation set, no best epoch
    for kind, size in (("samples", 8 * 28 + 9 * 2), ("reconstructions", 8 * 28 + 9 * 2)):
        for epoch in (1, 2):
            image = np.asarray(Image.open(trained_run / kind / f"epoch_{epoch:04d}.png").convert("L"), float)
            assert image.shape == (size, size)
            assert image.std() > 20  # not blank


def test_checkpoint_round_trip_gives_the_same_test_elbo(trained_run):
    config, vae, state = load_run(trained_run)
    data = load_dataset(config.dataset)
    terms = elbo_terms(vae, prepare_test_images(data.test_images, binary=True))
    assert terms.elbo == state["history"][-1]["test_elbo"]


def test_existing_run_is_refused_and_overwrite_keeps_other_files(trained_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(trained_run, run_dir)
    (run_dir / "notes.txt").write_text("mine")
    before = (run_dir / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train_run(Config(**SMALL_OPTIONS), run_dir, progress=False)
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    train_run(Config(**{**SMALL_OPTIONS, "num_epochs": 1}), run_dir, overwrite=True, progress=False)
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert not (run_dir / "samples" / "epoch_0002.png").exists()


def test_unwritable_run_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="Cannot create the run directory .*: a part of its path is not a folder"):
        train_run(Config(**SMALL_OPTIONS), blocker / "run", progress=False)


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="batch_size 5000 is larger"):
        train_run(Config(**{**SMALL_OPTIONS, "batch_size": 5000}), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="latent_dim"):
        train_run(Config(**{**SMALL_OPTIONS, "latent_dim": 0}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_after_a_stop_matches_an_uninterrupted_run(trained_run, tmp_path):
    polls = iter(range(10**6))
    stopped = train_run(Config(**SMALL_OPTIONS), tmp_path / "run", progress=False,
                        should_stop=lambda: next(polls) == 55)
    assert not stopped.finished and len(stopped.history) == 1
    resumed = resume_run(tmp_path / "run", progress=False)
    assert resumed.finished
    straight = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m.to_dict() | {"seconds": 0} for m in resumed.history] == [m | {"seconds": 0} for m in straight]
    _, a, _ = load_run(trained_run)
    _, b, _ = load_run(tmp_path / "run")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_run_with_a_moving_average_scores_saves_and_resumes_it(trained_run, tmp_path):
    """--ema: the epoch lines score the average of the weights, load_run (evaluate, sample,
    plot, export) gives the average, and a stopped run resumes to the numbers of one that was not."""
    options = {**SMALL_OPTIONS, "ema": 0.99}
    straight = train_run(Config(**options), tmp_path / "straight", progress=False)
    polls = iter(range(10**6))
    stopped = train_run(Config(**options), tmp_path / "run", progress=False, should_stop=lambda: next(polls) == 55)
    assert not stopped.finished
    resumed = resume_run(tmp_path / "run", progress=False)
    assert [m.to_dict() | {"seconds": 0} for m in resumed.history] == \
           [m.to_dict() | {"seconds": 0} for m in straight.history]
    config, vae, state = load_run(tmp_path / "run")
    assert config.ema == 0.99 and set(state["trained_weights"]) == set(state["model"])
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in state["model"].items())
    data = load_dataset(config.dataset)
    assert elbo_terms(vae, prepare_test_images(data.test_images, binary=True)).elbo == resumed.history[-1].test_elbo
    plain = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])  # the same run without --ema
    assert plain["train_elbo"] == pytest.approx(resumed.history[-1].train_elbo, abs=1e-3)  # the same training
    assert plain["test_elbo"] != resumed.history[-1].test_elbo  # but the average scored
    shutil.copytree(trained_run, tmp_path / "late")  # an average begun on resume, from the weights then
    late = resume_run(tmp_path / "late", num_epochs=3, changes={"ema": 0.9}, progress=False)
    assert late.config.ema == 0.9 and json.loads((tmp_path / "late" / "config.json").read_text())["ema"] == 0.9
    assert "trained_weights" in load_run(tmp_path / "late")[2]


def test_resume_can_extend_a_finished_run(trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "run")
    with pytest.raises(ConfigError, match="already trained for 2 epochs"):
        resume_run(tmp_path / "run", progress=False)
    result = resume_run(tmp_path / "run", num_epochs=3, progress=False)
    assert [m.epoch for m in result.history] == [1, 2, 3]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_takes_the_options_that_may_change_and_refuses_the_others(trained_run, tmp_path):
    """Gradient clipping, skipping, precision and storage given on resume are used and recorded
    (they were once dropped without a word); the model's own options cannot change."""
    shutil.copytree(trained_run, tmp_path / "run")
    with pytest.raises(ConfigError, match="latent_dim, lr cannot change when a run resumes"):
        resume_run(tmp_path / "run", num_epochs=3, changes={"lr": 0.1, "latent_dim": 3}, progress=False)
    result = resume_run(tmp_path / "run", num_epochs=3, changes={"grad_clip": 1e6, "skip_grad_norm": 1e7},
                        progress=False)
    assert result.config.grad_clip == 1e6 and result.history[-1].grad_norm is not None
    assert [m.grad_norm is None for m in result.history] == [True, True, False]  # measured from the resume on
    assert json.loads((tmp_path / "run" / "config.json").read_text())["skip_grad_norm"] == 1e7


def test_checkpoint_from_another_model_is_named(trained_run, tmp_path):
    other = tmp_path / "other"
    train_run(Config(**{**SMALL_OPTIONS, "latent_dim": 6, "num_epochs": 1}), other, progress=False)
    shutil.copy(other / "checkpoint.pt", tmp_path / "checkpoint.pt")
    shutil.copytree(trained_run, tmp_path / "run")
    shutil.copy(other / "checkpoint.pt", tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"is from another model .*\(latent_dim 4 vs 6\)"):
        load_run(tmp_path / "run")
    # Weights that do not fit the configuration they claim.
    state = torch.load(other / "checkpoint.pt", weights_only=True)
    state["config"]["latent_dim"] = 4
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="does not fit the model of its config: size mismatch"):
        load_run(tmp_path / "run")


def test_missing_run_and_devices():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run("/nonexistent/run")
    assert resolve_device("cpu").type == "cpu"
    expected = "no CUDA device is available" if not torch.cuda.is_available() else "does not exist"
    with pytest.raises(ConfigError, match=expected):
        resolve_device("cuda:99" if torch.cuda.is_available() else "cuda")
    with pytest.raises(ConfigError, match="Unknown device"):
        resolve_device("gpu0")


def test_nan_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import pyrovae.run as run_module
    from pyrovae.errors import NumericalError

    built = []
    monkeypatch.setattr(run_module, "build_vae",
                        lambda config, **kw: built.append(build_vae(config, **kw)) or built[-1])

    class PoisonAfterEpoch1(Callback):
        def on_epoch_saved(self, run, metrics, pictures):
            with torch.no_grad():
                next(built[0].decoder.parameters()).fill_(float("nan"))

    run_dir = tmp_path / "run"
    with pytest.raises(NumericalError, match="epoch 2, step 1"):
        train_run(Config(**{**SMALL_OPTIONS, "num_epochs": 3}), run_dir, progress=False,
                  callbacks=[PoisonAfterEpoch1()])
    config, vae, state = load_run(run_dir)
    assert state["epoch"] == 1 and all(torch.isfinite(p).all() for p in vae.parameters())
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert resume_run(run_dir, progress=False).finished  # the good checkpoint trains on


def test_keep_checkpoints_keeps_that_many_distinct_epochs(tmp_path):
    run_dir = tmp_path / "run"
    train_run(Config(**{**SMALL_OPTIONS, "num_epochs": 5, "keep_checkpoints": 3}), run_dir, progress=False)
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["epoch_0003.pt", "epoch_0004.pt", "epoch_0005.pt"]
    assert load_run(run_dir)[2]["epoch"] == 5
    for epoch in (3, 4, 5):
        assert load_run(run_dir, epoch=epoch)[2]["epoch"] == epoch
    with pytest.raises(CheckpointError, match="no checkpoint of epoch 2; the kept ones are of epochs 3, 4, 5"):
        load_run(run_dir, epoch=2)


def test_keep_one_keeps_no_folder_but_its_last_epoch_loads_by_number(trained_run):
    assert not (trained_run / "checkpoints").exists()
    assert load_run(trained_run, epoch=2)[2]["epoch"] == 2
    with pytest.raises(CheckpointError, match="it keeps only its newest"):
        load_run(trained_run, epoch=1)


def test_stale_temporaries_are_removed_and_deleted_folders_remade_on_resume(trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "run")
    (tmp_path / "run" / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    shutil.rmtree(tmp_path / "run" / "samples")
    resume_run(tmp_path / "run", num_epochs=3, progress=False)
    assert not list((tmp_path / "run").rglob(".*.tmp"))
    assert (tmp_path / "run" / "samples" / "epoch_0003.png").is_file()


def test_validation_set_picks_the_best_epoch_which_loads_by_default(tmp_path):
    run_dir = tmp_path / "run"
    result = train_run(Config(**{**SMALL_OPTIONS, "num_epochs": 3, "validation_size": 500}), run_dir, progress=False)
    scores = [m.validation_elbo for m in result.history]
    assert all(np.isfinite(scores))
    best = 1 + int(np.argmax(scores))
    assert result.best_epoch == best and not result.stopped_early
    config, vae, state = load_run(run_dir)  # the default is the best epoch
    assert state["epoch"] == best and load_run(run_dir, epoch="last")[2]["epoch"] == 3
    data = load_dataset("mnist5k").with_validation(500)
    assert len(data.train_images) == 3500 and len(data.validation_images) == 500
    assert config.validation_size == 500
    # The recorded score is the validation set's ELBO under the checkpoint kept as best.
    assert elbo_terms(vae, prepare_test_images(data.validation_images, binary=True)).elbo == max(scores)


def scripted_validation(monkeypatch, scores):
    """Make the validation ELBO of epoch e be scores[e - 1]; the test set is scored as usual."""
    real = Trainer.held_out_terms

    def held_out_terms(self, images=None):
        terms = real(self, images)
        if images is not None:
            terms = dataclasses.replace(terms, elbo=scores[self.epoch])
        return terms

    monkeypatch.setattr(Trainer, "held_out_terms", held_out_terms)


def test_early_stopping_ends_the_run_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [-300, -200, -190, -250, -195, -180, -170, -160])
    config = Config(**{**SMALL_OPTIONS, "num_epochs": 8, "validation_size": 500, "patience": 2, "warmup_epochs": 1})
    result = train_run(config, tmp_path / "run", progress=False)
    assert [m.epoch for m in result.history] == [1, 2, 3, 4, 5]  # epochs 4 and 5 did not beat epoch 3
    assert result.finished and result.stopped_early and result.best_epoch == 3
    assert load_run(tmp_path / "run")[2]["epoch"] == 3
    with pytest.raises(ConfigError, match=r"stopped early at epoch 5: its validation ELBO has not improved since "
                                          r"epoch 3 \(patience 2\)"):
        resume_run(tmp_path / "run", progress=False)


def test_warmup_epochs_do_not_count_against_patience(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [-100, -200, -300, -400, -500, -600])
    config = Config(**{**SMALL_OPTIONS, "num_epochs": 6, "validation_size": 500, "patience": 2, "warmup_epochs": 3})
    result = train_run(config, tmp_path / "run", progress=False)
    assert len(result.history) == 5 and result.best_epoch == 1  # 3 warm-up epochs + 2 of patience


def test_resume_with_validation_and_early_stopping_is_exact(tmp_path):
    config = Config(**{**SMALL_OPTIONS, "num_epochs": 3, "validation_size": 500, "patience": 5})
    straight = train_run(config, tmp_path / "straight", progress=False)
    calls = []
    stopped = train_run(config, tmp_path / "stopped", progress=False,
                        should_stop=lambda: calls.append(1) or len(calls) == 50)
    assert not stopped.finished
    resumed = resume_run(tmp_path / "stopped", progress=False)
    assert [m.validation_elbo for m in resumed.history] == [m.validation_elbo for m in straight.history]
    for name in ("checkpoint.pt", "best.pt"):
        a, b = (torch.load(d / name, weights_only=False)["model"]
                for d in (tmp_path / "straight", tmp_path / "stopped"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def history(scores):
    return [EpochMetrics(e, 0.0, 0.0, 0.0, 0.0, 0.0, s) for e, s in enumerate(scores, 1)]


@given(st.lists(st.one_of(st.floats(-1e3, 0), st.just(float("nan"))), min_size=1, max_size=30),
       st.integers(1, 10), st.integers(0, 10))
def test_stopping_rule(scores, patience, warmup):
    config = Config(validation_size=10, patience=patience, warmup_epochs=warmup)
    best = best_epoch(history(scores))
    finite = [s for s in scores if s == s]
    if not finite:
        assert best is None and not stopped_early(history(scores), config)
        return
    assert scores[best - 1] == max(finite) and all(s < max(finite) for s in scores[: best - 1] if s == s)
    # Stopped exactly when the last `patience` epochs after the warm-up brought no new best.
    assert stopped_early(history(scores), config) == (len(scores) - max(best, warmup) >= patience)
    assert not stopped_early(history(scores), config.replace(patience=None))


@given(st.lists(st.one_of(st.floats(-1e3, 0), st.just(float("nan"))), min_size=1, max_size=40),
       st.integers(1, 6), st.integers(0, 6), st.integers(0, 4), st.sampled_from([0.0, 0.5, 50.0]))
def test_learning_rate_cuts(scores, patience, warmup, drops, min_delta):
    config = Config(validation_size=10, patience=patience, warmup_epochs=warmup, lr_drops=drops, lr=1e-3,
                    lr_drop_factor=0.5, min_delta=min_delta)
    assert last_improvement(history(scores), config.replace(min_delta=0.0)) == best_epoch(history(scores))
    # The epochs a run would train: up to the first that stops it.
    scores = scores[: next((n for n in range(1, len(scores)) if stopped_early(history(scores[:n]), config)),
                           len(scores))]
    cuts, stopped = plateaus(history(scores), config)
    assert len(cuts) <= drops and cuts == sorted(set(cuts)) and (not stopped or len(cuts) == drops)
    for i, cut in enumerate(cuts):
        # Each cut comes exactly `patience` epochs after the last better epoch, the warm-up or the cut before.
        seen = history(scores[:cut])
        assert cut - max(last_improvement(seen, config), warmup, *cuts[:i]) == patience
        assert plateaus(seen, config) == (cuts[: i + 1], False)  # decided from the epochs before it alone
    assert learning_rate(history(scores), config) == 1e-3 * 0.5 ** len(cuts)
    # Cuts only postpone the stop: with one more allowed, the run stops later or not at all.
    if stopped:
        more = plateaus(history(scores), config.replace(lr_drops=drops + 1))
        assert more == (cuts + [len(scores)], False)


def test_learning_rate_drops_at_each_plateau_then_the_run_stops(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [-300, -200, -250, -260, -100, -90, -95, -96, -97, -98])
    config = Config(**{**SMALL_OPTIONS, "num_epochs": 10, "validation_size": 500, "patience": 2, "lr": 1e-3,
                       "lr_drops": 1, "lr_drop_factor": 0.5})
    result = train_run(config, tmp_path / "run", progress=False)
    # Epochs 3 and 4 did not beat epoch 2: the rate halves; 7 and 8 did not beat 6: the run stops.
    assert [m.lr for m in result.history] == [1e-3] * 4 + [5e-4] * 4
    assert result.stopped_early and result.best_epoch == 6
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert {group["lr"] for group in state["optimizer"]["param_groups"]} == {5e-4}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == [1e-3] * 4 + [5e-4] * 4


def test_min_delta_reads_a_slow_creep_as_a_plateau_and_may_be_given_on_resume(tmp_path, monkeypatch):
    # A validation ELBO that creeps up by 0.01 nats an epoch, as a moving average of the weights does.
    scripted_validation(monkeypatch, [-100 + 0.01 * e for e in range(8)])
    config = Config(**{**SMALL_OPTIONS, "num_epochs": 6, "validation_size": 500, "patience": 2, "lr": 1e-3,
                       "lr_drops": 1, "lr_drop_factor": 0.5})
    creeping = train_run(config, tmp_path / "run", progress=False)
    assert [m.lr for m in creeping.history] == [1e-3] * 6 and not creeping.stopped_early  # every epoch a new best
    # Counted by 0.035 nats, epochs 2 and 3 were no better than epoch 1 (a cut after epoch 3) and epoch 5 was
    # (0.04 above epoch 1): the rate halves at once, and epoch 7 stops the run, two epochs after epoch 5.
    resumed = resume_run(tmp_path / "run", progress=False, changes={"min_delta": 0.035, "num_epochs": 8})
    assert [m.lr for m in resumed.history] == [1e-3] * 6 + [5e-4]
    assert resumed.stopped_early and (resumed.best_epoch, last_improvement(resumed.history, resumed.config)) == (7, 5)
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=False)["epoch"] == 7  # still the best epoch
    with pytest.raises(ConfigError, match=r"has not improved by more than 0\.035 nats \(min_delta\) since epoch 5"):
        resume_run(tmp_path / "run", progress=False)


def test_more_lr_drops_on_resume_continue_a_stopped_run_as_if_started_with_them(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [-300, -200, -250, -260, -100, -90, -95, -96, -97, -98])
    config = Config(**{**SMALL_OPTIONS, "num_epochs": 10, "validation_size": 500, "patience": 2})
    stopped = train_run(config, tmp_path / "stopped", progress=False)
    assert stopped.stopped_early and len(stopped.history) == 4
    with pytest.raises(ConfigError, match="resume it with lr_drops 1"):
        resume_run(tmp_path / "stopped", progress=False)
    resumed = resume_run(tmp_path / "stopped", progress=False, lr_drops=1)
    straight = train_run(config.replace(lr_drops=1), tmp_path / "straight", progress=False)
    assert [m.epoch for m in resumed.history] == [m.epoch for m in straight.history] == list(range(1, 9))
    assert resumed.config.lr_drops == 1 and load_run(tmp_path / "stopped", epoch="last")[0].lr_drops == 1
    for name in ("checkpoint.pt", "best.pt"):
        a, b = (torch.load(d / name, weights_only=False)["model"]
                for d in (tmp_path / "straight", tmp_path / "stopped"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_view_of_the_best_epoch_still_plots_the_whole_run(tmp_path, monkeypatch):
    from pyrovae.analysis import RunView

    scripted_validation(monkeypatch, [-300, -200, -250])
    train_run(Config(**{**SMALL_OPTIONS, "num_epochs": 3, "validation_size": 500}), tmp_path / "run", progress=False)
    view = RunView(tmp_path / "run", num_images=50)
    assert [m.epoch for m in view.history] == [1, 2, 3]
    assert load_run(tmp_path / "run")[2]["epoch"] == 2


def test_an_adamnormgrad_run_trains_with_it_and_resumes_exactly(trained_run, tmp_path):
    config = Config(**{**SMALL_OPTIONS, "num_epochs": 1, "optimizer": "adamnormgrad"})
    straight = train_run(config, tmp_path / "straight", progress=False)
    polls = iter(range(10**6))
    train_run(config, tmp_path / "stopped", progress=False, should_stop=lambda: next(polls) == 20)
    resumed = resume_run(tmp_path / "stopped", progress=False)
    assert resumed.finished and resumed.config.optimizer == "adamnormgrad"
    assert [m.train_elbo for m in resumed.history] == [m.train_elbo for m in straight.history]
    assert json.loads((tmp_path / "stopped" / "config.json").read_text())["optimizer"] == "adamnormgrad"
    adam_first = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[0])  # same run with Adam
    assert straight.history[0].train_elbo != adam_first["train_elbo"]


@given(count=st.integers(1, 200_000))
def test_a_schedule_left_to_the_data_takes_enough_steps_and_keeps_large_sets_as_they_were(count):
    """Options left at their defaults fit the data's size: at least 320 steps, batches of at
    most 128 images and at least 16 (or all of them); MNIST-sized sets keep 128 and 10 epochs."""
    from pyrovae.run import MIN_DEFAULT_STEPS, schedule_for_data

    config, note = schedule_for_data(Config(), count, ("batch_size", "num_epochs"))
    steps = -(-count // config.batch_size) * config.num_epochs
    assert steps >= MIN_DEFAULT_STEPS or (config.num_epochs, config.batch_size) == (10, 128)
    assert min(16, count) <= config.batch_size <= 128 and config.num_epochs >= 10
    if count >= 2048:
        assert config.batch_size == 128
    if count >= 4096:  # 32 steps an epoch or more: mnist5k's 4,000 images and MNIST keep their defaults
        assert (config.num_epochs, note) == (10, None)
    kept, _ = schedule_for_data(Config(batch_size=64, num_epochs=3), count, ())
    assert (kept.batch_size, kept.num_epochs) == (64, 3)  # options the user gave are kept
    shared, _ = schedule_for_data(Config(), count, ("batch_size",), processes=3)  # torchrun: equal shares
    assert shared.batch_size % 3 == 0 or (count < 3 and shared.batch_size == 3)


def test_a_few_hundred_images_get_small_batches_and_more_epochs_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from pyrovae.cli import main

    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(folder), "--hidden", "16", "--z-dim", "2", "--epochs",
                                       "1", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert "180 training images are few for the defaults: batches of 16 (12 steps in all)" in result.output
    assert json.loads((run / "config.json").read_text())["batch_size"] == 16
    given_batch = CliRunner().invoke(main, ["train", "--data", str(folder), "--hidden", "16", "--z-dim", "2",
                                            "--epochs", "1", "--batch-size", "128", "--run-dir", str(tmp_path / "b")])
    assert given_batch.exit_code == 0 and "are few" not in given_batch.output
    assert json.loads((tmp_path / "b" / "config.json").read_text())["batch_size"] == 128
