import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_idx
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pyrovae.cli import main
from pyrovae.cli.options import HiddenDims, LogVarRange

SMALL_ARGS = ["--dataset", "mnist5k", "--z-dim", "4", "--hidden", "64", "--batch-size", "100"]
PYROVAE = Path(sys.executable).with_name("pyrovae")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_sentence(result, message, code=2):
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.strip().splitlines() if line.startswith("Error")]) == 1


def test_train_evaluate_sample_end_to_end(tmp_path):
    run = tmp_path / "run"
    result = invoke("train", *SMALL_ARGS, "--epochs", 2, "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert "Training on mnist5k (4000 train / 1000 test images" in result.output
    assert "epoch   2  train ELBO" in result.output and f"pyrovae evaluate {run}" in result.output

    result = invoke("evaluate", run, "-k", 20, "--num-images", 100, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["num_images"] == 100 and scores["num_samples"] == 20 and scores["dataset"] == "mnist5k"
    assert scores["log_likelihood"] > scores["elbo"]
    table = invoke("evaluate", run, "-k", 5, "--num-images", 50).output
    assert "ELBO" in table and "log p(x), k=5" in table and "binarized with a fixed seed" in table

    levels = {}
    for flag in ([], ["--sampled"]):
        out = tmp_path / f"grid{len(flag)}.png"
        result = invoke("sample", run, "-n", 9, "-o", out, "--seed", 1, *flag)
        assert result.exit_code == 0 and "Wrote 9" in result.output
        image = np.asarray(Image.open(out).convert("L"), float)
        assert image.shape == (3 * 28 + 4 * 2,) * 2 and image.std() > 20
        levels[bool(flag)] = len(np.unique(image))
    assert levels == {True: 2, False: levels[False]} and levels[False] > 50  # mean images by default


def test_a_moving_average_of_the_weights_is_named_kept_and_exported(tmp_path):
    """--ema: the header says what the epoch lines score; export writes the average, which
    evaluate reads; --resume may begin it; a rate outside (0, 1) is refused in one sentence."""
    run = tmp_path / "run"
    result = invoke("train", *SMALL_ARGS, "--epochs", 1, "--ema", 0.9, "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert "weights' moving average (--ema 0.9)" in result.output
    assert invoke("export", run, tmp_path / "model").exit_code == 0
    from pyrovae.rundir import load_run

    _, averaged, state = load_run(run)
    _, exported, _ = load_run(tmp_path / "model")
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in averaged.state_dict().items())
    assert not all(torch.equal(state["trained_weights"][k], v) for k, v in state["model"].items())
    result = invoke("train", "--resume", run, "--epochs", 2, "--ema", 0.5)
    assert result.exit_code == 0 and "(--ema 0.5)" in result.output, result.output
    assert_one_sentence(invoke("train", *SMALL_ARGS, "--ema", 1, "--run-dir", tmp_path / "bad"),
                        "Invalid value for '--ema': 1.0 is not in the range 0.0<x<1.0.")


def test_evaluate_on_another_data_folder(tmp_path, idx_folder, trained_run):
    result = invoke("evaluate", trained_run, "--dataset", "mnist", "--data-dir", idx_folder, "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["num_images"] == 20


def test_default_train_falls_back_offline_with_one_warning(tmp_path, offline):
    result = CliRunner().invoke(
        main, ["train", "--z-dim", "4", "--hidden", "32", "--epochs", "1", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning")]
    assert len(warnings) == 1 and "mnist5k" in warnings[0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == "mnist5k"
    result = invoke("train", "--no-fallback", "--epochs", "1", "--run-dir", tmp_path / "run2")
    assert_one_sentence(result, "no network")
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--z-dim", "0"], "Invalid value for '--z-dim'"),
        (["--lr", "0"], "Invalid value for '--lr'"),
        (["--lr", "-0.1"], "Invalid value for '--lr'"),
        (["--hidden", "400,x"], "not a comma-separated list"),
        (["--hidden", "0"], "positive integer"),
        (["--likelihood", "poisson"], "'bernoulli', 'gaussian', 'gaussian_learned', 'continuous_bernoulli'"),
        (["--guide", "flow"], "'diag_normal'"),
        (["--dataset", "cifar"], "'mnist', 'fashion-mnist', 'mnist5k'"),
    ],
)
def test_impossible_options_are_usage_errors(tmp_path, args, message):
    result = invoke("train", "--run-dir", tmp_path / "run", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_bad_inputs_get_one_sentence_and_exit_2(tmp_path, idx_folder, trained_run, offline):
    assert_one_sentence(invoke("train", *SMALL_ARGS, "--batch-size", 4001, "--run-dir", tmp_path / "r"),
                        "--batch-size 4001 is larger than the 4000 training images")
    if not __import__("torch").cuda.is_available():
        assert_one_sentence(invoke("train", *SMALL_ARGS, "--cuda", "--run-dir", tmp_path / "r"),
                            "no CUDA device is available")
    assert_one_sentence(invoke("train", "--data-dir", tmp_path / "missing", "--run-dir", tmp_path / "r"),
                        "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_sentence(invoke("train", "--data-dir", tmp_path / "empty", "--run-dir", tmp_path / "r"),
                        "Found no mnist files in")
    (idx_folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    assert_one_sentence(invoke("train", "--data-dir", idx_folder, "--run-dir", tmp_path / "r"),
                        "train-images-idx3-ubyte.gz is a damaged gzip file")
    write_idx(idx_folder / "train-images-idx3-ubyte.gz", np.zeros((60, 28, 28)))
    write_idx(idx_folder / "train-labels-idx1-ubyte.gz", np.zeros(61))
    assert_one_sentence(invoke("train", "--data-dir", idx_folder, "--run-dir", tmp_path / "r"),
                        "60 images but 61 labels")
    assert not (tmp_path / "r").exists()
    # An existing run is refused and left as it was.
    before = (trained_run / "checkpoint.pt").read_bytes()
    assert_one_sentence(invoke("train", *SMALL_ARGS, "--run-dir", trained_run), "already holds a run; pass --resume")
    assert (trained_run / "checkpoint.pt").read_bytes() == before
    assert_one_sentence(invoke("evaluate", tmp_path / "nope"), "Run directory")
    assert_one_sentence(invoke("sample", trained_run, "-o", tmp_path / "x.unknown"), "Cannot tell the image format")
    assert_one_sentence(invoke("sample", trained_run, "-o", tmp_path / "no" / "x.png"), "does not exist")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "checkpoint.pt").write_bytes(before[: len(before) // 2])
    assert_one_sentence(invoke("evaluate", tmp_path / "corrupt"), "is truncated or corrupt")


def test_nan_exits_3_with_the_step(tmp_path):
    result = invoke("train", *SMALL_ARGS, "--lr", "1e30", "--run-dir", tmp_path / "run")
    assert_one_sentence(result, "The loss became nan at epoch 1, step", code=3)
    assert "try a lower learning rate (now 1e+30)" in result.output


def test_resume_refuses_changed_model_options(trained_run):
    result = invoke("train", "--resume", trained_run, "--z-dim", 8, "--lr", 0.1, "--optimizer", "adamnormgrad",
                    "--init", "he", "--logvar-range", "-6,2")
    assert_one_sentence(result, "--z-dim, --init, --logvar-range, --lr, --optimizer cannot be changed when resuming")


@given(widths=st.lists(st.integers(1, 10**6), min_size=1, max_size=6), spaces=st.booleans())
def test_hidden_widths_parse_back(widths, spaces):
    text = (", " if spaces else ",").join(map(str, widths))
    assert HiddenDims().convert(text, None, None) == tuple(widths)


@given(bounds=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2, unique=True).map(sorted))
def test_logvar_ranges_parse_back(bounds):
    assert LogVarRange().convert(",".join(map(repr, bounds)), None, None) == tuple(bounds)


@given(text=st.text(max_size=20))
def test_logvar_range_parser_accepts_only_two_increasing_finite_numbers(text):
    import click

    try:
        lo, hi = LogVarRange().convert(text, None, None)
    except click.BadParameter as e:
        assert "is not two numbers LO,HI with LO < HI" in str(e)
        return
    assert np.isfinite([lo, hi]).all() and lo < hi


@given(text=st.text(max_size=20))
def test_hidden_widths_parser_accepts_only_positive_integers(text):
    import click

    try:
        widths = HiddenDims().convert(text, None, None)
    except click.BadParameter:
        return
    assert widths and all(isinstance(w, int) and w >= 1 for w in widths)


def test_installed_command_and_module_entry_point(tmp_path):
    for command in ([str(PYROVAE)], [sys.executable, "-m", "pyrovae"]):
        result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "train" in result.stdout and "evaluate" in result.stdout
    run = tmp_path / "run"
    result = subprocess.run([str(PYROVAE), "train", *SMALL_ARGS, "--epochs", "1", "--run-dir", str(run)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (run / "checkpoint.pt").is_file() and (run / "samples" / "epoch_0001.png").is_file()
    result = subprocess.run([str(PYROVAE), "train", "--z-dim", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_plot_and_report_commands(trained_run, tmp_path):
    result = invoke("plot", trained_run, "kl", "-o", tmp_path / "kl.png", "--num-images", 200)
    assert result.exit_code == 0, result.output
    assert f"Wrote {tmp_path / 'kl.png'}" in result.output
    assert re.search(r"Active units \(A_u > 0.01\): \d of 4", result.output)
    assert Image.open(tmp_path / "kl.png").format == "PNG"
    result = invoke("report", trained_run, "-o", tmp_path / "r.html", "--num-images", 200)
    assert result.exit_code == 0 and f"Wrote {tmp_path / 'r.html'}" in result.output
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 8
    assert invoke("plot", trained_run, "heatmap").exit_code == 2
    assert_one_sentence(invoke("plot", tmp_path / "nope", "curves"), "does not exist")
    assert_one_sentence(invoke("report", trained_run, "-o", tmp_path / "no" / "r.html"), "does not exist")


def test_own_colour_images_end_to_end(tmp_path, colour_folder, monkeypatch):
    run = tmp_path / "run"
    result = invoke("train", "--data", colour_folder, "--image-size", 16, "--net", "conv", "--z-dim", 4,
                    "--hidden", 32, "--conv-channels", 8, "--batch-size", 24, "--epochs", 3, "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert "Training on shapes (72 train / 8 test images, 16x16 colour" in result.output
    assert "Skipped 1 file(s)" in result.output and "Resized to 16x16" in result.output
    assert "Held out 8 of 80 images (10%, seed 0)" in result.output and "Likelihood dlogistic" in result.output
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == str(colour_folder.resolve()) and config["image_shape"] == [3, 16, 16]
    assert config["likelihood"] == "dlogistic" and config["test_fraction"] == 0.1
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]

    monkeypatch.chdir(tmp_path)  # the run finds its data by absolute path from anywhere
    scores = json.loads(invoke("evaluate", run, "-k", 10, "--json").output)
    assert scores["num_images"] == 8 and 0 < scores["bits_per_dim"] < 9
    assert abs(scores["bits_per_dim"] + scores["log_likelihood"] / (3 * 16 * 16 * np.log(2))) < 1e-9
    assert "bits per dimension" in invoke("evaluate", run, "-k", 2).output

    result = invoke("encode", run, colour_folder / "discs", colour_folder / "squares" / "000.png", "-o",
                    tmp_path / "codes.npz")
    assert result.exit_code == 0, result.output
    codes = np.load(tmp_path / "codes.npz")
    assert codes["loc"].shape == (41, 4) and codes["scale"].shape == (41, 4) and len(codes["files"]) == 41
    assert "resized to the model's 16x16" in result.output

    result = invoke("reconstruct", run, colour_folder / "discs" / "001.png", colour_folder / "squares" / "000.png",
                    "-o", tmp_path / "rec.png")
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(tmp_path / "rec.png"))
    assert image.shape == (16 + 4, 4 * 16 + 5 * 2, 3)
    assert np.abs(image[..., 0].astype(int) - image[..., 2]).max() > 50  # in colour

    assert invoke("sample", run, "-n", 4, "-o", tmp_path / "s.png").exit_code == 0
    assert np.asarray(Image.open(tmp_path / "s.png")).shape == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2, 3)
    for kind in ("evolution", "reconstructions", "samples", "latent", "manifold", "interpolate", "kl"):
        result = invoke("plot", run, kind, "-o", tmp_path / f"{kind}.png")
        assert result.exit_code == 0, (kind, result.output)
        assert np.asarray(Image.open(tmp_path / f"{kind}.png").convert("RGB")).std() > 10
    assert invoke("report", run).exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["--likelihood", "bernoulli"], "--likelihood bernoulli models black-and-white pixels, but shapes holds colour"),
    (["--dataset", "mnist5k"], "--data trains on your own images; leave out --dataset"),
    (["--net", "conv", "--image-size", "1"], "Invalid value for '--image-size'"),
])
def test_own_images_impossible_options_write_nothing(tmp_path, colour_folder, args, message):
    result = invoke("train", "--data", colour_folder, "--image-size", 8, *args, "--run-dir", tmp_path / "run")
    assert_one_sentence(result, message)
    assert not (tmp_path / "run").exists()


def test_continuous_pixels_refuse_the_discretized_logistic(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((30, 6, 6)).astype(np.float32))
    result = invoke("train", "--data", tmp_path / "x.npy", "--likelihood", "dlogistic", "--run-dir", tmp_path / "r")
    assert_one_sentence(result, "models the 256 values of 8-bit pixels, but x holds values between them")
    assert not (tmp_path / "r").exists()
    result = invoke("train", "--data", tmp_path / "x.npy", "--epochs", 1, "--batch-size", 9, "--z-dim", 2,
                    "--hidden", 16, "--run-dir", tmp_path / "r")
    assert result.exit_code == 0 and "Likelihood gaussian" in result.output  # chosen for continuous pixels
    assert "n/a" in invoke("evaluate", tmp_path / "r", "-k", 2).output


def test_bad_image_folders_get_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_sentence(invoke("train", "--data", tmp_path / "empty"), "holds no image files")
    (tmp_path / "bad").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "bad" / "a.png")
    (tmp_path / "bad" / "b.png").write_bytes((tmp_path / "bad" / "a.png").read_bytes()[:40])
    assert_one_sentence(invoke("train", "--data", tmp_path / "bad", "--strict-images"), "b.png cannot be read")
    # without --strict-images the broken file is skipped, and one image is too few to split
    assert_one_sentence(invoke("train", "--data", tmp_path / "bad"), "holds only 1 image")
    Image.new("RGB", (9, 8)).save(tmp_path / "bad" / "b.png")
    assert_one_sentence(invoke("train", "--data", tmp_path / "bad"), "pass --image-size N")
    result = invoke("train", "--data", tmp_path / "missing")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_encode_and_reconstruct_refuse_unknown_output_formats_first(tmp_path, trained_run):
    Image.new("L", (28, 28)).save(tmp_path / "a.png")
    result = invoke("reconstruct", trained_run, tmp_path / "a.png", "-o", tmp_path / "r.unknown")
    assert_one_sentence(result, "Cannot tell the image format of")
    assert "use a name ending in .png or .jpg." in result.output
    result = invoke("encode", trained_run, tmp_path / "a.png", "-o", tmp_path / "codes.csv")
    assert_one_sentence(result, "use a name ending in .npz.")
    assert not (tmp_path / "codes.csv").exists() and not (tmp_path / "r.unknown").exists()


def test_config_file_sets_options_that_the_command_line_overrides(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('# a comment\ndataset = "mnist5k"\nz-dim = 3\nhidden = [32, 16]\nnet = "gated"\n'
                      'batch_size = 200\nepochs = 5\nlog = "tensorboard"\ninit = "he"\nlogvar-range = [-6, 2]\n')
    run = tmp_path / "run"
    result = invoke("train", "--config", recipe, "--epochs", 1, "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert (run / "tensorboard").is_dir()
    config = json.loads((run / "config.json").read_text())
    assert (config["latent_dim"], config["hidden_dims"], config["net"], config["batch_size"], config["num_epochs"],
            config["init"], config["logvar_range"]) == (3, [32, 16], "gated", 200, 1, "he", [-6, 2])

    again = tmp_path / "again"  # a run's own config.json repeats it
    assert invoke("train", "--config", run / "config.json", "--run-dir", again).exit_code == 0
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows.splitlines()]  # noqa: E731
    assert strip((again / "metrics.jsonl").read_text()) == strip((run / "metrics.jsonl").read_text())
    assert json.loads((again / "config.json").read_text()) == config


@pytest.mark.parametrize("text, message", [
    ("zdim = 4\n", "sets zdim, which no option of this command is; valid keys: activation, batch-size"),
    ("z-dim = \n", "cannot read"),
    ("z-dim = 0\n", "Invalid value for '--z-dim'"),
])
def test_a_bad_config_file_is_one_sentence_and_writes_nothing(tmp_path, text, message):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    result = invoke("train", "--config", recipe, "--run-dir", tmp_path / "run")
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_config_and_resume_do_not_mix(trained_run, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("epochs = 3\n")
    result = invoke("train", "--resume", trained_run, "--config", recipe)
    assert result.exit_code == 2 and "leave out --config" in result.output


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_recipe_reads_and_cites_the_number_it_follows(recipe):
    from pyrovae.cli.options import read_options_file
    from pyrovae.cli.train import OPTION_OF_FIELD, train

    values = read_options_file(recipe, train, OPTION_OF_FIELD)
    assert values["dataset"] == "fashion-mnist" and values["net"] in ("gated", "conv")
    assert values["hidden"] == ("300,300" if values["net"] == "gated" else "300")
    assert (values["validation_size"], values["patience"], values["warmup"], values["lr_drops"]) == (10000, 50, 100, 1)
    text = recipe.read_text()
    assert re.search(r"-22\d\.\d\d nats \(k = 5,000\)", text) and "Table 1" in text


def test_validation_early_stopping_and_the_best_checkpoint_from_the_command_line(tmp_path, monkeypatch):
    from pyrovae.train import Trainer

    scores = iter([-300, -200, -250, -260, -100])
    real = Trainer.held_out_terms
    monkeypatch.setattr(Trainer, "held_out_terms", lambda self, images=None: real(self, images) if images is None
                        else dataclasses.replace(real(self, images), elbo=next(scores)))
    run = tmp_path / "run"
    result = invoke("train", *SMALL_ARGS, "--epochs", 5, "--validation-size", 500, "--patience", 2, "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert "Held out 500 of the 4000 training images (seed 1) as the validation set" in result.output
    assert "epoch   4  train ELBO" in result.output and "validation ELBO   -260.00" in result.output
    assert "Stopped early at epoch 4: the validation ELBO has not improved since epoch 2 (--patience 2)." \
        in result.output and "epoch   5" not in result.output
    best = invoke("evaluate", run, "-k", 2, "--num-images", 10)
    assert "after epoch 2 (its best validation ELBO)" in best.output
    last = json.loads(invoke("evaluate", run, "-k", 2, "--num-images", 10, "--json", "--checkpoint", "last").output)
    assert (last["epoch"], last["best_epoch"]) == (4, 2)
    assert_one_sentence(invoke("train", "--resume", run, "--epochs", 9),
                        f"Run {run} stopped early at epoch 4: its validation ELBO has not improved since epoch 2")
    # More learning-rate drops continue it: epoch 5 trains at a tenth of the rate and improves.
    scores = iter([-100, -120, -130])
    again = invoke("train", "--resume", run, "--lr-drops", 1, "--epochs", 9)
    assert again.exit_code == 0, again.output
    assert "Learning rate 0.0001 from epoch 5 on (--lr-drops: the validation ELBO had stopped improving)." \
        in again.output
    assert "Stopped early at epoch 7: the validation ELBO has not improved since epoch 5 (--patience 2, after 1 " \
           "learning-rate drop)." in again.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == [1e-3] * 4 + [1e-4] * 3
    assert_one_sentence(invoke("evaluate", run, "--checkpoint", "worst"), "'worst' is not best, last or an epoch")


def test_early_stopping_by_min_delta_says_so(tmp_path, monkeypatch):
    from pyrovae.train import Trainer

    scores = iter([-100, -99.99, -99.98])
    real = Trainer.held_out_terms
    monkeypatch.setattr(Trainer, "held_out_terms", lambda self, images=None: real(self, images) if images is None
                        else dataclasses.replace(real(self, images), elbo=next(scores)))
    result = invoke("train", *SMALL_ARGS, "--epochs", 5, "--validation-size", 500, "--patience", 2,
                    "--min-delta", 0.05, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "Stopped early at epoch 3: the validation ELBO has not improved by more than 0.05 nats since epoch 1 " \
           "(--patience 2, --min-delta 0.05)." in result.output


@pytest.mark.parametrize("args, message", [
    (["--patience", 3], "--patience stops on the validation ELBO; hold out images for it with --validation-size N."),
    (["--validation-size", 500, "--lr-drops", 1], "--lr-drops cuts the learning rate when --patience epochs pass "
                                                  "without a better validation ELBO; give --patience too."),
    (["--validation-size", 500, "--min-delta", 0.1], "--min-delta says how much better a validation ELBO must be "
                                                     "to reset --patience; give --patience too."),
    (["--validation-size", 500, "--patience", 2, "--min-delta", -1],
     "Invalid value for '--min-delta': -1.0 is not in the range x>=0.0."),
    (["--validation-size", 4000], "--validation-size 4000 leaves none of the 4000 training images of mnist5k"),
])
def test_impossible_validation_options_write_nothing(tmp_path, args, message):
    assert_one_sentence(invoke("train", *SMALL_ARGS, *args, "--run-dir", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()


def test_train_json_prints_one_object_per_epoch_and_a_summary_on_stdout(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", *SMALL_ARGS, "--epochs", "2", "--run-dir", str(run), "--json",
                                       "--log", "tensorboard"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[:2] == metrics
    assert lines[2] == {"run_dir": str(run), "finished": True, "stopped_early": False, "epochs": 2,
                        "best_epoch": None, "resume": None}
    assert "Training on mnist5k" in result.stderr
    assert any(path.name.startswith("events.out.tfevents") for path in (run / "tensorboard").iterdir())


def test_every_command_has_json_output_and_lists_its_exit_statuses(tmp_path, trained_run):
    commands = {
        "sample": ["sample", trained_run, "-n", 4, "-o", tmp_path / "s.png"],
        "encode": ["encode", trained_run, tmp_path / "s.png", "-o", tmp_path / "c.npz"],
        "reconstruct": ["reconstruct", trained_run, tmp_path / "s.png", "-o", tmp_path / "r.png"],
        "plot": ["plot", trained_run, "kl", "-o", tmp_path / "kl.png", "--num-images", 100],
        "report": ["report", trained_run, "-o", tmp_path / "r.html", "--num-images", 100],
        "export": ["export", trained_run, tmp_path / "shared"],
        "evaluate": ["evaluate", trained_run, "-k", 2, "--num-images", 20],
    }
    outputs = {}
    for name, args in commands.items():
        result = CliRunner().invoke(main, [str(a) for a in args] + ["--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[name] = json.loads(result.stdout)
    assert outputs["sample"]["pixels"] == "mean" and outputs["sample"]["num_samples"] == 4
    assert outputs["encode"]["latent_dim"] == 4 and outputs["encode"]["num_images"] == 1
    assert outputs["plot"]["active_units"] <= outputs["plot"]["latent_dim"] == 4
    assert outputs["report"]["output"] == str(tmp_path / "r.html")
    assert outputs["export"]["files"] == ["config.json", "model.safetensors", "README.md"]
    assert outputs["evaluate"]["num_images"] == 20
    for name in [*commands, "train"]:
        help_text = invoke(name, "--help").output
        assert "Exit statuses:" in help_text and "2   a problem you can fix" in help_text, name
    assert "143 train was stopped with SIGTERM" in invoke("train", "--help").output


def test_exported_models_work_with_the_commands_that_take_a_run(tmp_path, trained_run):
    shared = tmp_path / "shared"
    assert invoke("export", trained_run, shared).exit_code == 0
    result = invoke("sample", shared, "-n", 4, "-o", tmp_path / "s.png")
    assert result.exit_code == 0 and Image.open(tmp_path / "s.png").size == (2 * 28 + 3 * 2,) * 2
    scores = json.loads(invoke("evaluate", shared, "-k", 2, "--num-images", 20, "--json").output)
    direct = json.loads(invoke("evaluate", trained_run, "-k", 2, "--num-images", 20, "--json").output)
    assert scores["log_likelihood"] == direct["log_likelihood"] and scores["epoch"] == 2
    assert_one_sentence(invoke("export", trained_run, shared), "already holds")
    assert_one_sentence(invoke("train", "--resume", shared), "cannot be resumed")


def test_large_data_options_train_from_a_memory_mapped_npy(tmp_path):
    """--data x.npy is memory-mapped; --data-storage stream reads each batch in the background;
    --precision bf16 and --threads are accepted and kept (threads only for this process)."""
    import torch

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (200, 8, 8), dtype=np.uint8))
    threads = torch.get_num_threads()
    try:
        result = invoke("train", "--data", tmp_path / "x.npy", "--epochs", 1, "--z-dim", 2, "--hidden", 16,
                        "--batch-size", 50, "--data-storage", "stream", "--precision", "bf16", "--threads", 1,
                        "--run-dir", tmp_path / "run")
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data_storage"] == "stream" and config["precision"] == "bf16"
    # both may change when the run resumes
    result = invoke("train", "--resume", tmp_path / "run", "--epochs", 2, "--data-storage", "memory",
                    "--precision", "fp32")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())  # taken, not silently dropped
    assert config["data_storage"] == "memory" and config["precision"] == "fp32"
    assert_one_sentence(invoke("train", "--data", tmp_path / "x.npy", "--threads", 0), "--threads", code=2)


def test_long_work_reports_progress_in_a_log(trained_run, monkeypatch):
    """Where stderr is not a terminal, evaluate writes a progress line every LOG_EVERY seconds
    with an estimate of the time left."""
    monkeypatch.setattr("pyrovae.progress.LOG_EVERY", 0.0)
    result = CliRunner().invoke(main, ["evaluate", str(trained_run), "-k", "2", "--num-images", "20", "--json"])
    assert result.exit_code == 0, result.output
    assert re.search(r"log p\(x\), k=2: \d+/20 images \(\d+%\), [\d.e+]+ image/s, about \d+ s left", result.stderr)
    assert json.loads(result.stdout)["num_images"] == 20  # stdout stays one JSON object


def test_a_collapsed_run_says_so_at_the_end_with_what_to_try(tmp_path):
    """300-odd images at batch 128 are 3 steps an epoch: a conv VAE's code carries ~2 nats and
    every reconstruction is the same blob. The end of training says so."""
    from pyrovae.analysis import collapse_advice
    from pyrovae.metrics import EpochMetrics

    collapsed = [EpochMetrics(1, -500.0, -480.0, -478.0, 2.0, 1.0)]
    advice = collapse_advice(collapsed, steps_per_epoch=3)
    assert "only 2.0 nats per test image" in advice and "a smaller --batch-size (an epoch is only 3 steps)" in advice
    assert collapse_advice([EpochMetrics(1, -500.0, -480.0, -450.0, 30.0, 1.0)], 3) is None
    # 19 nats for a colour image of 3x64x64 values is too little (the same blob for every image)
    blobs = collapse_advice([EpochMetrics(1, -5e4, -5e4, -5e4, 19.0, 1.0)], 17, (3, 64, 64))
    assert "under 61.44" in blobs and "--model ladder" in blobs
    assert collapse_advice([EpochMetrics(1, -5e4, -5e4, -5e4, 19.0, 1.0)], 17, (1, 28, 28)) is None
    result = invoke("train", "--dataset", "mnist5k", "--hidden", 8, "--z-dim", 2, "--epochs", 1, "--beta", 50,
                    "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "Note: The code carries only" in result.output  # a KL weight of 50 leaves no code
