"""The README's fault table, driven through the real command line: for each mistake a user
makes or each way a machine fails, one sentence, a documented exit status, and nothing that
was already written lost."""

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile

import click
import pytest
import torch
from click.testing import CliRunner
from conftest import SMALL_OPTIONS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyrovae.cli import EXIT_STATUSES, main
from pyrovae.config import Config
from pyrovae.run import load_run, train_run

from test_cli import PYROVAE, SMALL_ARGS, assert_one_sentence, invoke


def test_every_exit_status_the_code_uses_is_documented():
    from pyrovae import errors

    codes = {cls.exit_code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, Exception)}
    assert codes | {0, 1, 129, 130, 143} == set(EXIT_STATUSES)


def interrupt_after_first_epoch(args, sig=signal.SIGINT, before=lambda process: None):
    """Start ``pyrovae train ARGS``, call ``before(process)`` once epoch 1 is reported, send
    ``sig``; returns the process, ended, with its remaining stdout and stderr. SIGHUP starts at
    its default, as in a terminal, even when the tests themselves run under ``nohup`` (which
    pyrovae respects: an ignored SIGHUP stays ignored)."""
    process = subprocess.Popen([PYROVAE, "train", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        for line in process.stdout:
            if line.startswith("epoch   1"):
                break
        before(process)
        process.send_signal(sig)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return process, out, err


# 1. Two writers, one run.
def test_a_second_train_on_a_run_being_written_is_refused_and_the_first_finishes(tmp_path):
    run = tmp_path / "run"

    def second_writers(first):
        for args in (["--dataset", "mnist5k", "--overwrite", "--run-dir", run, "--z-dim", 20],
                     ["--resume", run, "--epochs", 20000]):
            assert_one_sentence(invoke("train", *args), f"is being written by process {first.pid} on", code=5)

    first, _, _ = interrupt_after_first_epoch([*SMALL_ARGS, "--epochs", 10000, "--run-dir", run], before=second_writers)
    assert first.returncode == 130
    config, _, state = load_run(run)
    assert config.latent_dim == 4 and state["epoch"] >= 1  # the first run's model, whole


# 2. A run that dies before its first checkpoint.
def _run_that_died_before_its_first_checkpoint(run):
    from pyrovae.train import Callback

    class Die(Callback):
        def on_run_start(self, run):
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_run(Config(**{**SMALL_OPTIONS, "seed": 5}), run, progress=False, callbacks=[Die()])
    assert (run / "config.json").is_file() and not (run / "checkpoint.pt").exists()


def test_a_run_that_died_before_its_first_checkpoint_resumes_from_the_start(tmp_path):
    run = tmp_path / "run"
    _run_that_died_before_its_first_checkpoint(run)
    assert_one_sentence(invoke("train", "--run-dir", run, "--dataset", "mnist5k"), f"pass --resume {run}")
    assert_one_sentence(invoke("evaluate", run), f"pyrovae train --resume {run} starts it again")
    result = invoke("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert "stopped before its first checkpoint; starting it again" in result.output
    straight = tmp_path / "straight"
    train_run(Config(**{**SMALL_OPTIONS, "seed": 5}), straight, progress=False)
    a, b = load_run(run)[1].state_dict(), load_run(straight)[1].state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a), "the same seed gives the same run"


def test_a_run_whose_checkpoint_was_deleted_continues_from_a_kept_one(tmp_path):
    run = tmp_path / "run"
    train_run(Config(**{**SMALL_OPTIONS, "keep_checkpoints": 2}), run, progress=False)
    (run / "checkpoint.pt").unlink()
    result = invoke("train", "--resume", run, "--epochs", 3)
    assert result.exit_code == 0, result.output
    assert "continuing from the checkpoint kept at the end of epoch 2" in result.output
    assert load_run(run)[2]["epoch"] == 3


# 3. Full disk, read-only output.
def _fail_writes(monkeypatch, code, after=0):
    """Every atomic write after the first ``after`` fails with ``code`` when it syncs its data."""
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) > after:
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_mid_training_stops_in_one_sentence_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    run = tmp_path / "run"
    invoke("train", *SMALL_ARGS, "--epochs", 1, "--run-dir", run)
    before = (run / "checkpoint.pt").read_bytes()
    _fail_writes(monkeypatch, errno.ENOSPC, after=0)
    result = invoke("train", "--resume", run, "--epochs", 2)
    assert_one_sentence(result, "no space left on the device.", code=4)
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not list(run.rglob(".*.tmp"))
    monkeypatch.undo()
    assert invoke("train", "--resume", run, "--epochs", 2).exit_code == 0  # room again: it carries on


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "the file system is read-only"),
                                         (errno.EACCES, "permission denied"),
                                         (errno.ENOSPC, "no space left on the device")])
@pytest.mark.parametrize("command", [["plot", "{run}", "curves"], ["plot", "{run}", "samples", "-o", "{tmp}/s.pdf"],
                                     ["report", "{run}"], ["sample", "{run}", "-o", "{tmp}/s.png"],
                                     ["train", *SMALL_ARGS, "--epochs", "1", "--run-dir", "{tmp}/new"]])
def test_every_command_names_the_path_and_the_cause_when_it_cannot_write(trained_run, tmp_path, monkeypatch,
                                                                         command, code, cause):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    real = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(OSError(code, os.strerror(code))))
    result = invoke(*[part.format(run=run, tmp=tmp_path) for part in command])
    assert_one_sentence(result, f": {cause}.", code=4)
    assert "Cannot write" in result.output
    monkeypatch.setattr(tempfile, "mkstemp", real)
    assert all(p.read_bytes() == data for p, data in before.items())


def test_a_read_only_output_folder_is_refused_before_any_work(trained_run, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    assert_one_sentence(invoke("plot", trained_run, "curves", "-o", folder / "c.png"), "not writable", code=4)


# 4. Options impossible only with this data, or on this machine.
@pytest.mark.parametrize("args, message", [
    (["--prior", "vamp", "--pseudo-inputs", 5000], "--pseudo-inputs 5000 is more than the 4000 training images"),
    (["--elbo", "iwae", "--particles", 1_000_000], "GiB of memory, but only"),
    (["--batch-size", 5000], "--batch-size 5000 is larger than the 4000 training images"),
    (["--model", "m2", "--data", "{folder}"], "learns from class labels, but the images of"),
])
def test_options_impossible_with_the_data_or_the_machine_are_refused_before_writing(tmp_path, args, message):
    folder = tmp_path / "flat"
    folder.mkdir()
    from PIL import Image

    for i in range(20):
        Image.new("L", (28, 28), i * 10).save(folder / f"{i}.png")
    args = [str(a).format(folder=folder) for a in args]
    base = [] if "--data" in args else ["--dataset", "mnist5k"]
    result = invoke("train", *base, *args, "--run-dir", tmp_path / "run")
    assert_one_sentence(result, message)
    assert not (tmp_path / "run").exists()


# 5. Relative and moved data paths.
def test_relative_data_dirs_are_stored_absolute_and_every_reader_takes_data_dir(idx_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(idx_folder.parent)
    result = invoke("train", "--dataset", "mnist", "--data-dir", "idx", "--hidden", 16, "--z-dim", 2,
                    "--batch-size", 20, "--epochs", 1, "--run-dir", "run")
    assert result.exit_code == 0, result.output
    assert json.loads((idx_folder.parent / "run" / "config.json").read_text())["data_dir"] == str(idx_folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = idx_folder.parent / "run"
    assert invoke("plot", run, "latent").exit_code == 0
    moved = tmp_path / "moved"
    idx_folder.rename(moved)
    assert_one_sentence(invoke("plot", run, "latent"), "(moved?); pass --data-dir with its new place")
    for command in (["plot", run, "latent", "-o", "l.png"], ["report", run, "-o", "r.html"],
                    ["evaluate", run, "-k", 2]):
        result = invoke(*command, "--data-dir", moved)
        assert result.exit_code == 0, result.output


# 6. Figures in the format their name says.
@pytest.mark.parametrize("suffix, magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".jpg", b"\xff\xd8"),
                                           (".png", b"\x89PNG")])
def test_plot_writes_the_format_its_suffix_names(trained_run, tmp_path, suffix, magic):
    output = tmp_path / f"curves{suffix}"
    assert invoke("plot", trained_run, "curves", "-o", output).exit_code == 0
    assert output.read_bytes().startswith(magic)


def test_plot_refuses_a_suffix_it_cannot_write_before_any_work(trained_run, tmp_path):
    assert_one_sentence(invoke("plot", trained_run, "curves", "-o", tmp_path / "c.docx"),
                        "Cannot tell the format of")
    assert_one_sentence(invoke("report", trained_run, "-o", tmp_path / "r.pdf"), "use a name ending in .htm or .html")


# 8. Scripts: exit statuses and a resume command that survives the shell.
def test_ctrl_c_exits_130_and_prints_a_resume_command_the_shell_can_run(tmp_path):
    run = tmp_path / "my run"
    process, out, err = interrupt_after_first_epoch([*SMALL_ARGS, "--epochs", 500, "--run-dir", run])
    assert process.returncode == 130, err
    command = out.split("Resume with: ")[1].strip()
    assert command == f"pyrovae train --resume {shlex.quote(str(run))}"
    epoch = load_run(run)[2]["epoch"]
    resumed = subprocess.run(f"{shlex.quote(str(PYROVAE))}{command[len('pyrovae'):]} --epochs {epoch + 1}",
                             shell=True, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert load_run(run)[2]["epoch"] == epoch + 1


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_save_a_checkpoint_and_exit_like_a_shell_says(tmp_path, sig, status):
    run = tmp_path / "run"
    process, out, err = interrupt_after_first_epoch([*SMALL_ARGS, "--epochs", 500, "--run-dir", run], sig)
    assert process.returncode == status, err
    assert "Interrupted; checkpoint saved" in out and load_run(run)[2]["epoch"] >= 1


# 9. Kept checkpoints, from the command line.
def test_kept_checkpoints_are_evaluated_sampled_and_plotted_by_epoch(tmp_path):
    run = tmp_path / "run"
    assert invoke("train", *SMALL_ARGS, "--epochs", 4, "--keep-checkpoints", 3, "--run-dir", run).exit_code == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0002.pt", "epoch_0003.pt",
                                                                      "epoch_0004.pt"]
    scores = {}
    for epoch in (2, 3, 4):
        result = invoke("evaluate", run, "--checkpoint", epoch, "-k", 2, "--num-images", 50, "--json")
        assert result.exit_code == 0, result.output
        scores[epoch] = json.loads(result.output)
        assert scores[epoch]["epoch"] == epoch
    assert len({s["elbo"] for s in scores.values()}) == 3, "three different models"
    assert invoke("sample", run, "--checkpoint", 2, "-o", tmp_path / "s.png").exit_code == 0
    assert invoke("plot", run, "curves", "--checkpoint", 3, "-o", tmp_path / "c.png").exit_code == 0
    assert_one_sentence(invoke("evaluate", run, "--checkpoint", 1), "the kept ones are of epochs 2, 3, 4")


# 10. Smaller things.
def test_a_mistyped_pyrovae_data_dir_is_refused_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA_DIR", str(tmp_path / "typo" / "data"))
    assert_one_sentence(invoke("train", "--no-fallback", "--run-dir", tmp_path / "run"),
                        "PYROVAE_DATA_DIR names")
    assert not (tmp_path / "typo").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("spelling", ["continuous-bernoulli", "continuous_bernoulli"])
def test_choices_take_hyphens_and_underscores(tmp_path, spelling):
    result = invoke("train", *SMALL_ARGS, "--likelihood", spelling, "--epochs", 1, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["likelihood"] == "continuous_bernoulli"
    result = invoke("train", "--dataset", "fashion_mnist", "--likelihood", "poisson")
    assert "'poisson' is not one of 'bernoulli'" in result.output and "fashion" not in result.output


def test_every_option_of_every_command_has_help():
    missing = []
    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.help and param.name not in ("help", "version"):
                missing.append(f"{name} {param.opts[0]}")
    assert not missing


# Tampering: whatever happens to config.json and metrics.jsonl, no traceback and nothing lost.
def _tamper(data: bytes, how) -> bytes:
    kind, position, value = how
    if kind == "truncate":
        return data[: position % (len(data) + 1)]
    if kind == "byte":
        i = position % max(1, len(data))
        return data[:i] + bytes([value % 256]) + data[i + 1:]
    if kind == "garbage":
        return data + bytes(range(value % 256, 256))[:40]
    return json.dumps(value).encode()  # valid JSON of the wrong kind


def _edit_config(data: bytes, how) -> bytes:
    """A valid JSON object with one key removed, or its value swapped for another kind."""
    _, position, value = how
    config = json.loads(data)
    key = sorted(config)[position % len(config)]
    if value is None:
        del config[key]
    else:
        config[key] = value
    return json.dumps(config).encode()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                                children, max_size=3),
                           max_leaves=5)
tampering = st.one_of(
    st.tuples(st.sampled_from(["truncate", "byte", "garbage"]), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("json"), st.just(0), json_values),
    st.tuples(st.just("edit"), st.integers(0, 100), json_values),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file=st.sampled_from(["config.json", "metrics.jsonl"]), how=tampering)
def test_tampered_config_and_metrics_never_give_a_traceback_or_lose_the_checkpoint(trained_run, file, how):
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        shutil.copytree(trained_run, run)
        path = os.path.join(run, file)
        with open(path, "rb") as f:
            data = f.read()
        if how[0] == "edit":
            assume(file == "config.json")
            tampered = _edit_config(data, how)
        else:
            tampered = _tamper(data, how)
        with open(path, "wb") as f:
            f.write(tampered)
        checkpoint = open(os.path.join(run, "checkpoint.pt"), "rb").read()
        results = [CliRunner().invoke(main, args) for args in (
            ["evaluate", run, "-k", "2", "--num-images", "10"],
            ["plot", run, "curves", "-o", os.path.join(tmp, "c.png")],
        )]
        for result in results:
            assert result.exit_code in (0, 2), (result.output, result.exception)
            assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
            assert "Traceback" not in result.output
        assert open(os.path.join(run, "checkpoint.pt"), "rb").read() == checkpoint
        resumed = CliRunner().invoke(main, ["train", "--resume", run, "--epochs", "3"])
        assert resumed.exit_code in (0, 2) and "Traceback" not in resumed.output, resumed.output
        if resumed.exit_code == 0:  # resuming writes both files again from the checkpoint
            config = Config.from_dict(json.loads(open(os.path.join(run, "config.json")).read()))
            assert config == load_run(run)[0]
            lines = open(os.path.join(run, "metrics.jsonl")).read().splitlines()
            assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
        else:  # refused (a config.json of another model): the run is untouched
            assert "from another model" in resumed.output
            assert open(os.path.join(run, "checkpoint.pt"), "rb").read() == checkpoint
