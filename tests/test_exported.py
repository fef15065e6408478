"""pyrovae.load and pyrovae export: a trained model used and shared without its training state."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import pyrovae
from pyrovae.errors import CheckpointError, ConfigError, DataError
from pyrovae.exported import MODEL_FILE
from pyrovae.run import load_run


@pytest.fixture
def exported(trained_run, tmp_path):
    return pyrovae.export(trained_run, tmp_path / "shared")


def test_load_gives_an_eval_mode_model_with_its_config(trained_run):
    vae = pyrovae.load(trained_run)
    assert not vae.training and vae.device == torch.device("cpu")
    assert vae.config.latent_dim == 4 and vae.image_shape == (1, 28, 28)
    assert vae.posterior_mean(torch.rand(3, 1, 28, 28)).shape == (3, 4)


def test_export_writes_the_hub_layout_and_loads_back_identically(trained_run, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((exported / "config.json").read_text()) == json.loads((trained_run / "config.json").read_text())
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: pyrovae\n") and "after epoch 2" in card
    assert 'pyrovae.load("shared")' in card

    original, shared = pyrovae.load(trained_run), pyrovae.load(exported)
    x = torch.rand(6, 1, 28, 28)
    assert torch.equal(original.encode(x).mean, shared.encode(x).mean)
    assert torch.equal(original.encode(x).stddev, shared.encode(x).stddev)
    assert torch.equal(original.reconstruct(x), shared.reconstruct(x))
    z = torch.randn(5, 4)
    assert torch.equal(original.decode(z).mean, shared.decode(z).mean)
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, shared.state_dict()[name]), name
    assert shared.config == original.config


def test_the_exported_file_holds_the_weights_and_the_epoch_only(trained_run, exported):
    from safetensors import safe_open

    with safe_open(exported / MODEL_FILE, framework="pt") as f:
        metadata, names = f.metadata(), set(f.keys())
    assert names == set(pyrovae.load(trained_run).state_dict())  # no optimizer state, no RNG states
    assert set(metadata) == {"format", "pyrovae_version", "epoch", "step", "history", "config_sha256"}
    assert metadata["format"] == "pyrovae-model-v1" and metadata["epoch"] == "2" and metadata["step"] == "0"


def test_commands_read_an_exported_folder_as_a_run(exported):
    config, vae, state = load_run(exported)
    assert state["epoch"] == 2 and len(state["history"]) == 2 and not vae.training
    with pytest.raises(CheckpointError, match="exported model of epoch 2 only"):
        load_run(exported, epoch=1)
    with pytest.raises(ConfigError, match="cannot be resumed"):
        pyrovae.resume_run(exported)


def test_export_refuses_to_overwrite_or_to_write_into_a_run(trained_run, exported):
    before = (exported / MODEL_FILE).read_bytes()
    with pytest.raises(ConfigError, match="already holds config.json, model.safetensors, README.md; pass --overwrite"):
        pyrovae.export(trained_run, exported)
    assert (exported / MODEL_FILE).read_bytes() == before
    pyrovae.export(trained_run, exported, overwrite=True)
    with pytest.raises(ConfigError, match="is a run directory"):
        pyrovae.export(trained_run, trained_run, overwrite=True)


def test_damaged_or_foreign_weights_are_one_sentence(exported, tmp_path):
    model = exported / MODEL_FILE
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        pyrovae.load(exported)
    save_file({"weight": torch.zeros(2)}, model)
    with pytest.raises(CheckpointError, match="not a model exported by pyrovae"):
        pyrovae.load(exported)
    model.write_bytes(good)
    config = json.loads((exported / "config.json").read_text())
    (exported / "config.json").write_text(json.dumps({**config, "latent_dim": 5}))
    with pytest.raises(CheckpointError, match="the weights of one export and the config.json of another"):
        pyrovae.load(exported)
    with safe_open(model, framework="pt") as f:  # an export from before the hash was recorded
        metadata = {k: v for k, v in f.metadata().items() if k != "config_sha256"}
    save_file(load_file(model), model, metadata)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        pyrovae.load(exported)
    (exported / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        pyrovae.load(exported)


@pytest.mark.parametrize("images, message", [
    (torch.rand(1, 28, 28), r"shape \(1, 28, 28\), but this model takes a batch \(N, 1, 28, 28\); for one image"),
    (torch.rand(2, 28, 28, 1), "channels last: pass x.permute"),
    (torch.rand(2, 1, 32, 32), r"takes a batch \(N, 1, 28, 28\)\.$"),
    (torch.rand(2, 1, 28, 28) * 255, "values from .* to .*; this model takes pixels in \\[0, 1\\] \\(divide 8-bit"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "tensor of torch.uint8; .*divide 8-bit pixels by 255"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.rand(2, 1, 28, 28).numpy(), "must be a torch tensor .* not ndarray"),
])
def test_images_of_the_wrong_shape_or_range_are_one_sentence(trained_run, images, message):
    vae = pyrovae.load(trained_run)
    for use in (vae.encode, vae.reconstruct, vae.posterior_mean):
        with pytest.raises(DataError, match=message):
            use(images)


def test_codes_of_the_wrong_size_are_one_sentence_and_inputs_move_to_the_model(trained_run):
    vae = pyrovae.load(trained_run)
    with pytest.raises(DataError, match=r"Codes have shape \(3, 5\), but this model's decoder takes \(N, 4\)"):
        vae.decode(torch.zeros(3, 5))
    with pytest.raises(DataError, match="float tensor"):
        vae.sample(2, z=torch.zeros(2, 4, dtype=torch.long))
    doubles = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    assert vae.reconstruct(doubles).dtype == torch.float32


def test_sample_shows_mean_images_unless_asked_for_pixels(trained_run):
    vae = pyrovae.load(trained_run)
    means, pixels = vae.sample(8), vae.sample(8, mean=False)
    assert ((means > 0) & (means < 1)).float().mean() > 0.5  # probabilities, not black and white
    assert set(pixels.unique().tolist()) <= {0.0, 1.0}
