import json

import pytest

from pyrovae.config import Config
from pyrovae.errors import ConfigError
from pyrovae.registry import LIKELIHOODS, build_vae, lookup


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"latent_dim": 0}, "--z-dim must be at least 1"),
        ({"lr": 0.0}, "--lr must be a positive number"),
        ({"lr": -1e-3}, "--lr must be a positive number"),
        ({"lr": float("nan")}, "--lr must be a positive number"),
        ({"batch_size": 0}, "--batch-size"),
        ({"num_epochs": 0}, "--epochs"),
        ({"hidden_dims": (400, 0)}, "--hidden"),
        ({"likelihood_scale": 0.0}, "--likelihood-scale"),
        ({"optimizer": "sgd"}, "Unknown optimizer 'sgd'; choose one of: adam, adamnormgrad"),
    ],
)
def test_impossible_values_get_one_sentence(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes).validate()


def test_json_round_trip_keeps_tuples():
    config = Config(hidden_dims=(512, 256), latent_dim=2)
    again = Config.from_dict(json.loads(config.to_json()))
    assert again == config and again.hidden_dims == (512, 256)


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="Unknown configuration keys frobnicate"):
        Config.from_dict({**Config().to_dict(), "frobnicate": 1})


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="choose one of: bernoulli, gaussian, gaussian_learned, continuous_bernoulli"):
        lookup(LIKELIHOODS, "likelihood", "poisson")
    with pytest.raises(ConfigError, match="Unknown guide 'flow'"):
        build_vae(Config(guide="flow"))
