import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_idx
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pyrovae.cli import main
from pyrovae.cli.options import HiddenDims

SMALL = ["--dataset", "mnist5k", "--z-dim", "4", "--hidden", "64", "--batch-size", "100"]
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
    result = invoke("train", *SMALL, "--epochs", 2, "--run-dir", run)
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

    for flag in ([], ["--mean"]):
        out = tmp_path / f"grid{len(flag)}.png"
        result = invoke("sample", run, "-n", 9, "-o", out, "--seed", 1, *flag)
        assert result.exit_code == 0 and "Wrote 9" in result.output
        image = np.asarray(Image.open(out).convert("L"), float)
        assert image.shape == (3 * 28 + 4 * 2,) * 2 and image.std() > 20


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
    assert_one_sentence(invoke("train", *SMALL, "--batch-size", 4001, "--run-dir", tmp_path / "r"),
                        "--batch-size 4001 is larger than the 4000 training images")
    if not __import__("torch").cuda.is_available():
        assert_one_sentence(invoke("train", *SMALL, "--cuda", "--run-dir", tmp_path / "r"),
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
    assert_one_sentence(invoke("train", *SMALL, "--run-dir", trained_run), "already holds a run; pass --resume")
    assert (trained_run / "checkpoint.pt").read_bytes() == before
    assert_one_sentence(invoke("evaluate", tmp_path / "nope"), "Run directory")
    assert_one_sentence(invoke("sample", trained_run, "-o", tmp_path / "x.unknown"), "Cannot tell the image format")
    assert_one_sentence(invoke("sample", trained_run, "-o", tmp_path / "no" / "x.png"), "does not exist")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "checkpoint.pt").write_bytes(before[: len(before) // 2])
    assert_one_sentence(invoke("evaluate", tmp_path / "corrupt"), "is truncated or corrupt")


def test_nan_exits_3_with_the_step(tmp_path):
    result = invoke("train", *SMALL, "--lr", "1e30", "--run-dir", tmp_path / "run")
    assert_one_sentence(result, "The loss became nan at epoch 1, step", code=3)
    assert "try a lower learning rate (now 1e+30)" in result.output


def test_resume_refuses_changed_model_options(trained_run):
    result = invoke("train", "--resume", trained_run, "--z-dim", 8, "--lr", 0.1)
    assert_one_sentence(result, "--z-dim, --lr cannot be changed when resuming")


@given(widths=st.lists(st.integers(1, 10**6), min_size=1, max_size=6), spaces=st.booleans())
def test_hidden_widths_parse_back(widths, spaces):
    text = (", " if spaces else ",").join(map(str, widths))
    assert HiddenDims().convert(text, None, None) == tuple(widths)


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
    result = subprocess.run([str(PYROVAE), "train", *SMALL, "--epochs", "1", "--run-dir", str(run)],
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
