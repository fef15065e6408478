import math

import pytest
import torch

from pyrovae.config import Config
from pyrovae.discrete import temperature_at
from pyrovae.errors import ConfigError
from pyrovae.evaluation import elbo_terms, log_likelihood
from pyrovae.registry import build_elbo, build_vae
from pyrovae.train import Trainer

CATEGORICAL = Config(guide="categorical", prior="categorical", latent_dim=6, num_categories=4, hidden_dims=(64,))


def test_relaxed_in_training_exact_in_evaluation(mnist5k):
    torch.manual_seed(0)
    vae = build_vae(CATEGORICAL)
    x = torch.bernoulli(mnist5k.test_images[:5])
    relaxed = vae.encode(x).rsample()
    assert relaxed.shape == (5, 6, 4) and relaxed.requires_grad
    assert torch.allclose(relaxed.exp().sum(-1), torch.ones(5, 6))  # log of points on the simplex
    vae.eval()
    q, p = vae.encode(x), vae.prior()
    hard = q.sample()
    assert set(hard.unique().tolist()) == {0.0, 1.0} and torch.equal(hard.sum(-1), torch.ones(5, 6))
    # The exact KL to the uniform prior, by hand: sum over variables of sum_k q log(q K).
    probs = q.base_dist.probs
    by_hand = (probs * (probs * 4).log()).sum((-1, -2))
    assert torch.allclose(torch.distributions.kl_divergence(q, p), by_hand, atol=1e-5)
    assert (by_hand >= 0).all() and (by_hand <= 6 * math.log(4) + 1e-5).all()


def test_trains_and_evaluation_scores_the_discrete_model(mnist5k):
    torch.manual_seed(0)
    vae = build_vae(CATEGORICAL)
    trainer = Trainer(vae, mnist5k, elbo=build_elbo(CATEGORICAL))
    history = [trainer.run_epoch(progress=False) for _ in range(3)]
    assert history[-1].test_elbo > history[0].test_elbo + 20
    assert vae.training  # evaluation switched to eval mode and back
    assert vae.guide.temperature.item() == pytest.approx(temperature_at(2, 1.0, 0.5))
    x = trainer.test_images[:50]
    terms = elbo_terms(vae, x)
    assert 0 <= terms.kl <= 6 * math.log(4) + 1e-4  # an exact categorical KL is bounded by log K per variable
    assert log_likelihood(vae, x, num_samples=100) > terms.elbo


def test_temperature_schedule():
    assert temperature_at(0, 1.0, 0.5) == 1.0
    assert temperature_at(1, 1.0, 0.5) == pytest.approx(math.exp(-0.2))
    assert temperature_at(50, 1.0, 0.5) == 0.5


@pytest.mark.parametrize("changes, message", [
    (dict(prior="standard_normal"), "needs both guide categorical and prior categorical"),
    (dict(elbo="meanfield"), "use elbo trace"),
    (dict(num_categories=1), "num_categories must be at least 2"),
    (dict(min_temperature=2.0), "0 < min_temperature <= temperature"),
])
def test_impossible_categorical_configurations(changes, message):
    with pytest.raises(ConfigError, match=message):
        CATEGORICAL.replace(**changes).validate()


def test_cli_train_and_figures(tmp_path):
    from click.testing import CliRunner

    from pyrovae.cli import main

    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--guide", "categorical", "--prior", "categorical", "--z-dim", "6",
                                  "--categories", "4", "--hidden", "64", "--dataset", "mnist5k", "--epochs", "1",
                                  "--run-dir", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (run / "samples" / "epoch_0001.png").is_file()
    result = runner.invoke(main, ["plot", str(run), "samples", "-o", str(tmp_path / "s.png"), "--num-images", "20"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["plot", str(run), "manifold", "-o", str(tmp_path / "m.png"), "--num-images", "20"])
    assert result.exit_code == 2 and "categorical code" in result.output


def test_the_categorical_vae_is_a_family_and_its_older_spelling_means_it(tmp_path):
    """--guide categorical --prior categorical (old runs' configs too) is --model categorical,
    whose family says how the decoder reads its code; the figures ask the family."""
    from pyrovae.discrete import CategoricalVAE
    from pyrovae.plots import kinds_for
    from pyrovae.registry import validate

    assert CATEGORICAL.model == "categorical"
    assert Config.from_dict({**CATEGORICAL.to_dict(), "model": "vae"}) == CATEGORICAL  # an old run's config.json
    vae = build_vae(CATEGORICAL)
    assert isinstance(vae, CategoricalVAE) and not vae.continuous_code
    assert vae.decoder.decoder.latent_dim == CATEGORICAL.latent_dim * CATEGORICAL.num_categories
    assert {"latent", "manifold", "interpolate", "kl"}.isdisjoint(kinds_for(CATEGORICAL))
    assert build_vae(CATEGORICAL.replace(model="categorical")).state_dict().keys() == vae.state_dict().keys()
    with pytest.raises(ConfigError, match="model categorical takes guide categorical and prior categorical"):
        validate(Config(model="categorical"))
