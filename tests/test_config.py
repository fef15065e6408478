import json

import pytest

from pyrovae.config import Config
from pyrovae.errors import ConfigError
from pyrovae.registry import LIKELIHOODS, build_vae, lookup, validate


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"latent_dim": 0}, "latent_dim must be at least 1"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": -1e-3}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"grad_clip": 0.0}, "grad_clip must be a positive number"),
        ({"skip_grad_norm": float("inf")}, "skip_grad_norm must be a positive number"),
        ({"levels": 0}, "levels must be at least 1"),
        ({"validation_size": 10, "patience": 2, "min_delta": -0.1}, "min_delta must be zero or a positive number"),
        ({"validation_size": 10, "patience": 2, "min_delta": float("nan")}, "min_delta must be zero or a positive"),
        ({"validation_size": 10, "min_delta": 0.1}, "min_delta says how much better a validation ELBO must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"hidden_dims": (400, 0)}, "hidden_dims"),
        ({"likelihood_scale": 0.0}, "likelihood_scale"),
        ({"optimizer": "sgd"}, "Unknown optimizer 'sgd'; choose one of: adam, adamnormgrad"),
        ({"init": "xavier"}, "Unknown init 'xavier'; choose one of: torch, he"),
        ({"logvar_range": (2, -6)}, "logvar_range needs two finite numbers LO,HI with LO < HI"),
        ({"logvar_range": (-6, float("inf"))}, "logvar_range needs two finite numbers"),
        ({"logvar_range": (-6, 2), "guide": "categorical", "prior": "categorical"},
         "logvar_range clips a Normal guide's log-variance"),
        ({"logvar_range": (-6, 2), "model": "m2"}, "logvar_range clips the plain VAE's guide; model m2 has"),
        ({"model": "m3"}, "Unknown model 'm3'; choose one of: vae, categorical, m2, cvae"),
    ],
)
def test_impossible_values_get_one_sentence(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(Config(**changes))  # the config's rules and its model family's


def test_json_round_trip_keeps_tuples():
    config = Config(hidden_dims=(512, 256), latent_dim=2, logvar_range=(-6, 2))
    again = Config.from_dict(json.loads(config.to_json()))
    assert again == config and again.hidden_dims == (512, 256) and again.logvar_range == (-6.0, 2.0)


def test_he_init_draws_every_weight_with_spread_sqrt_2_over_fan_in_and_keeps_the_biases():
    import torch
    from torch import nn

    config = Config(net="gated", hidden_dims=(300, 300), latent_dim=40, prior="vamp", num_pseudo_inputs=10)
    torch.manual_seed(0)
    default = build_vae(config)
    torch.manual_seed(0)
    he = build_vae(config.replace(init="he"))
    layers = [(name, m) for name, m in he.named_modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 2 * 2 * 2 + 2 + 1  # gated layers' two halves each way, the guide's heads, the output
    for name, layer in layers:
        fan_in = layer.weight.shape[1]
        assert abs(layer.weight.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.05, name
        assert abs(layer.weight.mean().item()) < 0.1 * (2 / fan_in) ** 0.5, name
        # PyTorch's default is uniform with a spread sqrt(6) times smaller.
        assert default.get_submodule(name).weight.std() < 0.5 * layer.weight.std(), name
        assert layer.bias.abs().max() <= 1 / fan_in ** 0.5, name
    assert torch.equal(he.prior.pseudo_inputs, default.prior.pseudo_inputs)  # not a layer: untouched


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="Unknown configuration keys frobnicate"):
        Config.from_dict({**Config().to_dict(), "frobnicate": 1})


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="choose one of: bernoulli, gaussian, gaussian_learned, continuous_bernoulli"):
        lookup(LIKELIHOODS, "likelihood", "poisson")
    with pytest.raises(ConfigError, match="Unknown guide 'flow'"):
        build_vae(Config(guide="flow"))


def test_python_and_the_command_line_share_one_likelihood_default(colour_folder, mnist5k):
    """likelihood=None follows the data in both: the library used to default to bernoulli and
    refuse colour images that the command line gives dlogistic."""
    from pyrovae.data import load_images
    from pyrovae.run import config_for_data

    assert Config().likelihood is None
    colour = load_images(colour_folder)
    assert config_for_data(Config(data=str(colour_folder)), colour).likelihood == "dlogistic"
    assert config_for_data(Config(dataset="mnist5k"), mnist5k).likelihood == "bernoulli"
    assert type(build_vae(Config(latent_dim=2, hidden_dims=(8,))).likelihood).__name__ == "BernoulliLikelihood"
    assert type(build_vae(Config(dataset="emoji", image_shape=(3, 8, 8), latent_dim=2, hidden_dims=(8,)))
                .likelihood).__name__ == "DiscretizedLogisticLikelihood"
    with pytest.raises(ConfigError, match="follows its pixels: pass likelihood, or the config through"):
        build_vae(Config(data=str(colour_folder)))


def test_every_option_of_train_is_a_config_field_with_the_librarys_default():
    """The click options are generated from the fields' metadata: parsing an empty command
    line gives back Config() itself, and what cannot change on resume is what the fields say."""
    import dataclasses

    from pyrovae.cli.train import FIXED_ON_RESUME, train
    from pyrovae.config import flags, option_name

    context = train.make_context("train", [])
    values = {name: context.params[option_name(name)] for name in flags()}
    values["num_epochs"] = values["num_epochs"] or Config.num_epochs  # --epochs means the new total on resume
    assert Config(**values) == Config()
    options = {p.name for p in train.params}
    for f in dataclasses.fields(Config):
        if "flag" in f.metadata:
            assert option_name(f.name) in options and f.metadata["flag"] in next(
                p for p in train.params if p.name == option_name(f.name)).opts
            assert (option_name(f.name) in FIXED_ON_RESUME) == f.metadata["fixed"]
        else:
            assert f.name in {"image_shape", "class_names"}  # decided by the data


def test_a_config_error_names_the_python_field_and_the_command_line_shows_the_flag():
    from click.testing import CliRunner

    from pyrovae.cli import main

    with pytest.raises(ConfigError) as caught:
        validate(Config(latent_dim=0))
    assert str(caught.value) == "latent_dim must be at least 1, got 0."
    assert caught.value.command_line_message() == "--z-dim must be at least 1, got 0."
    assert str(ConfigError("{not_a_field} stays {as} written")) == "{not_a_field} stays {as} written"
    result = CliRunner().invoke(main, ["train", "--model", "m2", "--guide", "iaf", "--dataset", "mnist5k"])
    assert result.exit_code == 2 and "--model m2 has its own guide" in result.output
    assert "leave --guide, --prior, --net and --elbo at their defaults" in result.output
