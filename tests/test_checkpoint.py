import os
import pickle

import pytest
import torch

from pyrovae.checkpoint import FORMAT, atomic_write, load_checkpoint, save_checkpoint
from pyrovae.errors import CheckpointError


def test_round_trip_of_plain_data(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"weights": torch.arange(3.0), "epoch": 4, "names": ["a"], "none": None})
    state = load_checkpoint(path)
    assert state["format"] == FORMAT and state["epoch"] == 4 and torch.equal(state["weights"], torch.arange(3.0))


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})

    def crash(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = None


def test_code_in_a_checkpoint_is_never_run(tmp_path):
    global MARKER
    MARKER = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": Payload()}, path)
    with pytest.raises(CheckpointError, match="could run code when loaded"):
        load_checkpoint(path)
    assert not MARKER.exists()
    # The payload is real: plain pickle would have run it.
    with open(path, "rb") as f:
        torch.load(f, weights_only=False)
    assert MARKER.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_raw_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_checkpoint_is_named(tmp_path, keep):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"weights": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=f"Checkpoint {path} is (truncated or corrupt|corrupt)"):
        load_checkpoint(path)


def test_foreign_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a pyrovae checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_the_skip_streak_and_the_trained_weights_of_a_checkpoint_are_checked():
    """Both are read on resume: a damaged value is named, not a traceback (the streak once was)."""
    from pyrovae.checkpoint import state_problem

    assert state_problem({"skip_streak": "3"}) == "its skip_streak is not a whole number"
    assert state_problem({"trained_weights": {"w": 1.0}}) == "its trained_weights is not a dict of tensors"
    assert state_problem({"skip_streak": 3, "trained_weights": {"w": torch.zeros(2)}}) is None
