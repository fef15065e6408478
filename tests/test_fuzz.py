"""Property-based fuzzing of everything pyrovae reads from disk: checkpoints, exported
folders, config files, TOML recipes and arrays, as plain data of the wrong types and shapes.
Whatever they hold, a command ends with status 0 or with one sentence and a documented
status, never a traceback, and never changes a file it only reads."""

import datetime
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrovae.cli import EXIT_STATUSES, main
from pyrovae.config import Config
from pyrovae.run import RunResult

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6))
plain = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                             max_size=3), max_leaves=6)
tensors = st.builds(lambda shape, kind: torch.zeros(shape, dtype=kind),
                    st.lists(st.integers(0, 3), max_size=3), st.sampled_from([torch.float32, torch.int64, torch.bool]))
CONFIG_KEYS = sorted(Config().to_dict())


def _check(result, *unchanged):
    """Exit 0 or a documented status with one sentence; files read are unchanged."""
    assert result.exit_code in EXIT_STATUSES and result.exit_code != 1, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code:
        assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1, result.output
    for path, before in unchanged:
        assert open(path, "rb").read() == before, f"{path} changed"


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported") / "model"
    assert CliRunner().invoke(main, ["export", str(trained_run), str(folder)]).exit_code == 0
    return folder


@FUZZ
@given(key=st.sampled_from(["config", "model", "trained_weights", "optimizer", "epoch", "step", "seconds",
                            "permutation", "skip_streak", "history", "rng", "data",
                            *[f"config.{k}" for k in CONFIG_KEYS]]),
       value=plain | tensors)
def test_checkpoints_of_any_plain_data(trained_run, key, value):
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        shutil.copytree(trained_run, run)
        os.remove(os.path.join(run, "config.json"))  # the checkpoint's own configuration is read
        path = os.path.join(run, "checkpoint.pt")
        state = torch.load(path, weights_only=True)
        if key.startswith("config."):
            state["config"][key.split(".", 1)[1]] = value
        else:
            state[key] = value
        torch.save(state, path)
        before = open(path, "rb").read()
        _check(CliRunner().invoke(main, ["evaluate", run, "-k", "2", "--num-images", "5"]), (path, before))


@FUZZ
@given(key=st.sampled_from(CONFIG_KEYS), value=plain)
def test_exported_configs_of_any_plain_data(exported, key, value):
    import json

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "model")
        shutil.copytree(exported, folder)
        path = os.path.join(folder, "config.json")
        values = json.loads(open(path).read())
        values[key] = value
        with open(path, "w") as f:
            f.write(json.dumps(values))
        unchanged = [(os.path.join(folder, name), open(os.path.join(folder, name), "rb").read())
                     for name in os.listdir(folder)]
        _check(CliRunner().invoke(main, ["evaluate", folder, "-k", "2", "--num-images", "5"]), *unchanged)


def _toml(value) -> str:
    """``value`` written as TOML (the subset these tests draw)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else ("nan" if value != value else
                                                                                  ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return "[" + ", ".join(_toml(v) for v in value) + "]"


toml_values = st.recursive(st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() |
                           st.text(alphabet="abc,0123456789-._ ", max_size=8) |
                           st.datetimes(timezones=st.just(datetime.timezone.utc)),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=4)
OPTIONS = ["z-dim", "hidden", "net", "activation", "likelihood", "guide", "prior", "pseudo-inputs", "particles",
           "batch-size", "lr", "warmup", "beta", "seed", "image-size", "grayscale", "test-fraction", "logvar-range",
           "validation-size", "patience", "data", "dataset", "precision", "data-storage", "strict-images", "labels"]


@FUZZ
@given(option=st.sampled_from(OPTIONS), value=toml_values)
def test_toml_recipes_of_any_value(tmp_path, monkeypatch, option, value):
    """The recipe is read, checked and its data loaded as for real; the training itself is
    left out (it is tested elsewhere) so that a valid value costs no time."""
    monkeypatch.setattr("pyrovae.run._start", lambda config, data, run_dir, *a: RunResult(run_dir, config, [], True))
    with tempfile.TemporaryDirectory() as tmp:
        recipe = os.path.join(tmp, "r.toml")
        with open(recipe, "w") as f:
            f.write(f"dataset = \"mnist5k\"\n{option} = {_toml(value)}\n" if option != "dataset" else
                    f"{option} = {_toml(value)}\n")
        before = open(recipe, "rb").read()
        _check(CliRunner().invoke(main, ["train", "--config", recipe, "--run-dir", os.path.join(tmp, "run")]),
               (recipe, before))


@FUZZ
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
       dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_, np.complex64, np.uint16]),
       fill=st.floats(-2, 300) | st.just(float("nan")), suffix=st.sampled_from([".npy", ".npz"]))
def test_arrays_of_any_shape_and_type(monkeypatch, shape, dtype, fill, suffix):
    monkeypatch.setattr("pyrovae.run._start", lambda config, data, run_dir, *a: RunResult(run_dir, config, [], True))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x" + suffix)
        with np.errstate(invalid="ignore"):
            array = np.full(shape, fill).astype(dtype) if shape else np.array(fill).astype(dtype)
        (np.save if suffix == ".npy" else lambda p, a: np.savez(p, x=a))(path, array)
        before = open(path, "rb").read()
        _check(CliRunner().invoke(main, ["train", "--data", path, "--run-dir", os.path.join(tmp, "run")]),
               (path, before))
