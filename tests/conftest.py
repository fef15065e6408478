import gzip
import struct
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyrovae.config import Config
from pyrovae.data import load_dataset


@pytest.fixture(autouse=True, scope="session")
def decoded_cache(tmp_path_factory):
    """Decoded image folders are cached in a folder of the session's own, not the user's."""
    import os

    previous = os.environ.get("PYROVAE_CACHE_DIR")
    os.environ["PYROVAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("decoded"))
    yield
    if previous is None:
        os.environ.pop("PYROVAE_CACHE_DIR", None)
    else:
        os.environ["PYROVAE_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def pyro_state():
    """Every test starts seeded, with validation on and an empty parameter store."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def mnist5k():
    return load_dataset("mnist5k")


def write_idx(path: Path, array: np.ndarray, compress: bool = None) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.fixture
def idx_folder(tmp_path):
    """A folder of small, valid MNIST-format files: 60 train and 20 test images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    for split, n in (("train", 60), ("t10k", 20)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return folder


SMALL_OPTIONS = dict(dataset="mnist5k", hidden_dims=(64,), latent_dim=4, num_epochs=2, batch_size=100)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small run trained once for the whole session; tests must not modify it."""
    from pyrovae.run import train_run

    run_dir = tmp_path_factory.mktemp("runs") / "small"
    train_run(Config(**SMALL_OPTIONS), run_dir, progress=False)
    return run_dir


@pytest.fixture
def tiny_vae():
    from pyrovae.registry import build_vae

    torch.manual_seed(0)
    return build_vae(Config(latent_dim=3, hidden_dims=(32,)))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: every download fails at once, and the download cache is empty."""
    from pyrovae import data as data_module
    from pyrovae.errors import DataError

    def no_network(name, root):
        raise DataError(f"Found no {name} files in {root} and could not download them (no network).")

    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data_module, "_download", no_network)


@pytest.fixture(scope="session")
def trained_run_2d(tmp_path_factory):
    """A run with a 2-D latent space, for the figures that plot it directly."""
    from pyrovae.run import train_run

    run_dir = tmp_path_factory.mktemp("runs") / "two_d"
    train_run(Config(**{**SMALL_OPTIONS, "latent_dim": 2, "num_epochs": 3}), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """80 colour 20x20 PNGs in two class folders: red squares and blue discs on white, at
    random places and sizes, plus one file that is not an image."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("photos") / "shapes"
    for i in range(80):
        kind = ("squares", "discs")[i % 2]
        image = Image.new("RGB", (20, 20), "white")
        x, y, r = rng.integers(3, 10), rng.integers(3, 10), rng.integers(3, 8)
        draw = ImageDraw.Draw(image)
        fill = (200, 30, 30) if kind == "squares" else (30, 30, 200)
        (draw.rectangle if kind == "squares" else draw.ellipse)([x, y, x + r, y + r], fill=fill)
        (folder / kind).mkdir(parents=True, exist_ok=True)
        image.save(folder / kind / f"{i:03d}.png")
    (folder / "README.txt").write_text("shapes for the tests")
    return folder


@pytest.fixture(autouse=True)
def quiet_logs(monkeypatch):
    """No progress lines in a log from tests (they would land in CliRunner's output when a loaded
    machine makes work slow); tests of those lines set their own interval."""
    monkeypatch.setattr("pyrovae.progress.LOG_EVERY", float("inf"))


def cli_ok(*args):
    """``pyrovae ARGS`` through click's runner, asserting exit status 0; the result."""
    from click.testing import CliRunner

    from pyrovae.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def check_family_commands(run: Path, tmp_path: Path, plots=("curves", "samples", "reconstructions", "levels")) -> None:
    """What every command does with a trained run of a model family: ``evaluate`` (log p(x)
    above the ELBO), ``sample`` at a temperature, the ``plots``, ``report``, ``export`` and an
    evaluation of the export, and ``--resume`` to a second epoch."""
    import json

    scores = json.loads(cli_ok("evaluate", run, "-k", 5, "--num-images", 20, "--json").stdout)
    assert scores["log_likelihood"] > scores["elbo"]
    cli_ok("sample", run, "-n", 4, "-t", 0.7, "-o", tmp_path / "s.png")
    for kind in plots:
        cli_ok("plot", run, kind, "-o", tmp_path / f"{kind}.png", "--num-images", 50)
    cli_ok("report", run, "-o", tmp_path / "report.html")
    assert 'id="levels"' in (tmp_path / "report.html").read_text()
    cli_ok("export", run, tmp_path / "export")
    cli_ok("evaluate", tmp_path / "export", "-k", 2, "--num-images", 10)
    cli_ok("train", "--resume", run, "--epochs", 2)
