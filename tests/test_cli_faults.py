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


def test_a_run_whose_every_step_is_skipped_stops_in_one_sentence_and_resumes_with_a_higher_threshold(tmp_path):
    """--skip-grad-norm below every gradient norm (openai/vdvae#25: the norms settled above
    it and the model never changed again): after 100 skipped steps in a row training stops,
    exit 3, naming the norms and a threshold above them; the saved epochs are kept, and a
    resume with a higher threshold trains on."""
    run = tmp_path / "run"
    result = invoke("train", *SMALL_ARGS, "--epochs", 5, "--skip-grad-norm", 1e-9, "--run-dir", run)
    assert_one_sentence(result, "The last 120 steps were all skipped (epoch 3), so the weights no longer change",
                        code=3)
    assert "--skip-grad-norm 1e-09; raise it above them (to " in result.output
    assert "40 of 40 steps skipped" in result.output and "gradient norm" in result.output
    assert load_run(run)[2]["epoch"] == 2
    resumed = invoke("train", "--resume", run, "--skip-grad-norm", 1e9, "--epochs", 3)
    assert resumed.exit_code == 0, resumed.output
    assert "steps skipped" not in resumed.output and load_run(run)[2]["epoch"] == 3


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


# Round three (issue 35): lost or wrong results.
def _export_after_full_disk(trained_run, tmp_path, monkeypatch):
    """Export once, then export another model over it with the disk filling up after the weights."""
    from pyrovae import checkpoint as checkpoint_module

    folder = tmp_path / "export"
    assert invoke("export", trained_run, folder).exit_code == 0
    other = tmp_path / "other"
    train_run(Config(**{**SMALL_OPTIONS, "num_epochs": 1, "seed": 3}), other, progress=False)
    real = checkpoint_module.atomic_write

    def full_after_weights(path, write):
        if str(path).endswith("config.json"):
            raise checkpoint_module.StorageError(f"Cannot write {path}: no space left on the device.")
        real(path, write)

    monkeypatch.setattr("pyrovae.exported.atomic_write", full_after_weights)
    result = invoke("export", other, folder, "--overwrite")
    assert result.exit_code == 4, result.output
    monkeypatch.setattr("pyrovae.exported.atomic_write", real)
    return folder


def test_an_export_cut_by_a_full_disk_is_refused_never_scored(trained_run, tmp_path, monkeypatch):
    folder = _export_after_full_disk(trained_run, tmp_path, monkeypatch)
    assert_one_sentence(invoke("evaluate", folder, "-k", 2, "--num-images", 10),
                        "holds the weights of one export and the config.json of another")
    assert invoke("export", trained_run, folder, "--overwrite").exit_code == 0  # exported again: whole
    assert invoke("evaluate", folder, "-k", 2, "--num-images", 10).exit_code == 0


def test_export_refuses_a_folder_of_other_files(trained_run, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    assert_one_sentence(invoke("export", trained_run, folder, "--overwrite"), "already holds other files (thesis.tex)")
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    (folder / "thesis.tex").unlink()
    (folder / ".git").mkdir()  # a Hugging Face repository: its own files are fine
    assert invoke("export", trained_run, folder).exit_code == 0


def test_a_lost_checkpoint_continues_from_best_pt_and_keeps_it(tmp_path):
    run = tmp_path / "run"
    train_run(Config(**{**SMALL_OPTIONS, "num_epochs": 3, "validation_size": 500}), run, progress=False)
    best = (run / "best.pt").read_bytes()
    best_epoch = torch.load(run / "best.pt", weights_only=True)["epoch"]
    (run / "checkpoint.pt").unlink()
    result = invoke("train", "--resume", run, "--epochs", 4)
    assert result.exit_code == 0, result.output
    assert f"continuing from best.pt, its best epoch ({best_epoch})" in result.output
    assert load_run(run, epoch="last")[2]["epoch"] == 4
    kept_best = torch.load(run / "best.pt", weights_only=True)["epoch"]  # never deleted, never an older epoch
    assert kept_best >= best_epoch and (kept_best != best_epoch or (run / "best.pt").read_bytes() == best)


@pytest.mark.parametrize("change", ["removed", "added", "redrawn"])
def test_resuming_on_changed_images_is_refused(tmp_path, change):
    import numpy as np

    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    run = tmp_path / "run"
    process, out, err = interrupt_after_first_epoch(["--data", folder, "--hidden", 8, "--z-dim", 2, "--epochs", 3,
                                                     "--batch-size", 4, "--run-dir", run])
    assert process.returncode == 130, err
    if change == "removed":
        for path in sorted(folder.iterdir())[:10]:
            path.unlink()
    elif change == "added":
        for i in range(40, 50):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    else:
        for path in sorted(folder.iterdir()):
            Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    before = (run / "checkpoint.pt").read_bytes()
    assert_one_sentence(invoke("train", "--resume", run), "changed since it was trained")
    assert (run / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("poison", [float("inf"), float("nan")])
def test_a_checkpoint_with_non_finite_weights_is_refused(trained_run, tmp_path, poison):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], poison)
    torch.save(state, run / "checkpoint.pt")
    for args in (["evaluate", run, "-k", 2, "--json"], ["sample", run, "-o", tmp_path / "s.png"]):
        assert_one_sentence(invoke(*args), "holds NaN or infinite weights")


def test_non_finite_scores_are_valid_json_and_a_non_zero_exit(trained_run, monkeypatch):
    from pyrovae.evaluation import EvalResult

    def broken(*args, **kwargs):
        return EvalResult(float("nan"), float("-inf"), 1.0, float("nan"), 2, 10, "mnist5k", None, None, "x", {})

    monkeypatch.setattr("pyrovae.evaluation.evaluate", broken)
    result = CliRunner().invoke(main, ["evaluate", str(trained_run), "-k", "2", "--json"])
    assert result.exit_code == 3, result.output
    scores = json.loads(result.stdout)  # strict JSON: null, never NaN
    assert scores["elbo"] is None and scores["reconstruction"] is None and scores["kl"] == 1.0


# Round three: tracebacks where a sentence was promised.
@pytest.mark.parametrize("key, value", [("latent_dim", "abc"), ("history", "not a list"), ("optimizer", [1, 2]),
                                        ("epoch", -1), ("history", [{"epoch": "x"}]), ("model", {"w": 3})])
def test_crafted_plain_data_checkpoints_are_one_sentence(trained_run, tmp_path, key, value):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.json").unlink()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    if key == "latent_dim":
        state["config"]["latent_dim"] = value
    else:
        state[key] = value
    torch.save(state, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    for args in (["evaluate", run, "-k", 2], ["train", "--resume", run, "--epochs", 3]):
        result = invoke(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (run / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("file, text", [
    ("config.json", '{"latent_dim": "four"}'),
    ("config.json", "[" * 100_000 + "]" * 100_000),
])
def test_exported_folders_with_wrong_typed_files_are_one_sentence(trained_run, tmp_path, file, text):
    folder = tmp_path / "export"
    assert invoke("export", trained_run, folder).exit_code == 0
    (folder / file).write_text(text)
    assert invoke("evaluate", folder, "-k", 2).exit_code == 2


def test_exported_metadata_of_the_wrong_type_is_one_sentence(trained_run, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    folder = tmp_path / "export"
    assert invoke("export", trained_run, folder).exit_code == 0
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(folder / "model.safetensors"), folder / "model.safetensors",
              {**metadata, "history": '{"not": "a list"}'})
    assert_one_sentence(invoke("evaluate", folder, "-k", 2), "metadata of")


@pytest.mark.parametrize("line, message", [
    ("z-dim = 2.5", "z-dim = 2.5, which is not a whole number"),
    ("z-dim = true", "which is not a whole number"),
    ("grayscale = 1", "grayscale = 1, which is not true or false"),
    ("data = 5", "data = 5, which is not a string"),
    ("seed = 1979-05-27T07:32:00Z", "which is not a whole number"),
    ("a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
])
def test_toml_values_of_the_wrong_type_are_refused_not_converted(tmp_path, line, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(line + "\n")
    assert_one_sentence(invoke("train", "--config", recipe, "--run-dir", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "--seed"),
    (["--logvar-range=-1e308,1e308"], "must lie within [-40, 40]"),
    (["--data", "{px1}", "--net", "conv"], "needs image sides of at least 2 pixels"),
])
def test_impossible_numbers_are_one_sentence(tmp_path, args, message):
    import numpy as np

    np.save(tmp_path / "px1.npy", np.zeros((20, 1, 1), np.uint8))
    args = [a.format(px1=tmp_path / "px1.npy") for a in args]
    assert_one_sentence(invoke("train", *args, "--epochs", 1, "--run-dir", tmp_path / "run"), message)


def test_one_training_image_with_batch_size_one_trains(tmp_path):
    import numpy as np

    np.save(tmp_path / "two.npy", np.random.default_rng(0).integers(0, 256, (2, 6, 6), dtype=np.uint8))
    result = invoke("train", "--data", tmp_path / "two.npy", "--batch-size", 1, "--epochs", 1, "--hidden", 4,
                    "--z-dim", 2, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("make, message", [
    (lambda p: __import__("numpy").savez(p / "a.npz", x=__import__("numpy").array([object()] * 3)), "plain arrays"),
    (lambda p: (p / "a.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00" + b"{'descr': '|u1', 'fortran_order': False, "
                                         b"'shape': (1000000, 8000, 8000), }".ljust(117) + b"\n"), "is truncated"),
])
def test_crafted_arrays_are_one_sentence(tmp_path, make, message):
    make(tmp_path)
    (path,) = [p for p in tmp_path.iterdir() if p.suffix in (".npy", ".npz")]
    assert_one_sentence(invoke("train", "--data", path, "--run-dir", tmp_path / "run"), message)


def test_an_idx_header_whose_sizes_overflow_is_named(tmp_path):
    import struct

    from conftest import write_idx

    for split in ("train", "t10k"):
        header = bytes([0, 0, 8, 3]) + struct.pack(">3I", *[2**32 - 1] * 3)
        (tmp_path / f"{split}-images-idx3-ubyte").write_bytes(header)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", [1])
    assert_one_sentence(invoke("train", "--data", tmp_path, "--run-dir", tmp_path / "run"),
                        "promises 79228162458924105385300197375")


@pytest.mark.parametrize("command, output", [("sample", "s.xbm"), ("plot", "c.pgf")])
def test_formats_that_cannot_be_written_here_are_refused_before_the_work(trained_run, tmp_path, command, output,
                                                                         monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no LaTeX here, whatever the machine has
    args = [command, trained_run] + (["latent"] if command == "plot" else []) + ["-o", tmp_path / output]
    assert_one_sentence(invoke(*args), "this format cannot be written here")
    assert not (tmp_path / output).exists()


def test_a_crafted_per_epoch_sample_file_is_one_sentence(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    torch.save({"not": "pixels"}, run / "samples" / "epoch_0001.pt")
    assert_one_sentence(invoke("plot", run, "evolution", "-o", tmp_path / "e.png"), "does not hold this run's")


# Round three: smaller things.
def test_encode_never_replaces_an_earlier_result_unasked(trained_run, tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "codes.npz").write_bytes(b"earlier")
    assert_one_sentence(invoke("encode", trained_run, tmp_path / "x.npy"), "codes.npz already exists")
    assert (tmp_path / "codes.npz").read_bytes() == b"earlier"
    assert invoke("encode", trained_run, tmp_path / "x.npy", "-o", "codes.npz").exit_code == 0


def test_report_and_plot_of_an_export_write_beside_it_not_into_it(trained_run, tmp_path, monkeypatch):
    folder = tmp_path / "export"
    assert invoke("export", trained_run, folder).exit_code == 0
    monkeypatch.chdir(tmp_path)
    assert invoke("report", folder).exit_code == 0
    assert invoke("plot", folder, "samples").exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (tmp_path / "export-report.html").is_file() and (tmp_path / "export-samples.png").is_file()


def test_a_missing_data_dir_given_now_is_not_called_moved(tmp_path):
    result = invoke("train", "--dataset", "mnist", "--data-dir", tmp_path / "nowhere", "--run-dir", tmp_path / "r")
    assert_one_sentence(result, "does not exist")
    assert "moved" not in result.output


def test_a_kept_checkpoint_a_full_disk_left_out_is_written_on_resume(tmp_path, monkeypatch):
    from pyrovae import run as run_module
    from pyrovae.errors import StorageError

    run = tmp_path / "run"
    real = run_module._keep_epoch_checkpoints

    def full(run_dir, epoch, keep):
        if epoch == 2:
            raise StorageError("Cannot keep the checkpoint of epoch 2: no space left on the device.")
        real(run_dir, epoch, keep)

    monkeypatch.setattr(run_module, "_keep_epoch_checkpoints", full)
    with pytest.raises(StorageError):
        train_run(Config(**{**SMALL_OPTIONS, "keep_checkpoints": 3}), run, progress=False)
    monkeypatch.setattr(run_module, "_keep_epoch_checkpoints", real)
    assert not (run / "checkpoints" / "epoch_0002.pt").exists()
    result = invoke("train", "--resume", run, "--epochs", 3)
    assert result.exit_code == 0, result.output
    assert "Wrote the kept checkpoint of epoch 2, which an earlier write had left out" in result.output
    assert (run / "checkpoints" / "epoch_0002.pt").is_file()


def test_a_second_ctrl_c_after_the_checkpoint_is_noted_not_fatal():
    """Before the run is saved a second Ctrl-C aborts; once it is saved (the closing lines are
    being printed) more signals are only noted, so the resume line is always printed."""
    from pyrovae.cli.train import _stop_on_interrupt

    with _stop_on_interrupt(quiet=True) as requested:
        os.kill(os.getpid(), signal.SIGINT)
        assert requested == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        requested.saved = True
        os.kill(os.getpid(), signal.SIGINT)  # would have killed the process before the resume line
        assert requested == [signal.SIGINT, signal.SIGINT]
