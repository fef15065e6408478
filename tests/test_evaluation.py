import math
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, Normal, kl_divergence

from pyrovae import evaluation as evaluate_module
from pyrovae.evaluation import analytic_kl, elbo_terms, evaluate, log_likelihood
from pyrovae.run import load_run
from pyrovae.data import prepare_test_images


def closed_form_kl(loc, scale):
    """KL(N(loc, diag(scale^2)) || N(0, I)) = 1/2 sum(scale^2 + loc^2 - 1 - log scale^2) (docs/elbo.md)."""
    return 0.5 * (scale.pow(2) + loc.pow(2) - 1 - 2 * scale.log()).sum(-1)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), dim=st.integers(1, 8))
def test_closed_form_kl_matches_torch(seed, dim):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(dim, generator=g, dtype=torch.float64) * 2
    scale = torch.rand(dim, generator=g, dtype=torch.float64) * 3 + 0.05
    q = Independent(Normal(loc, scale), 1)
    p = Independent(Normal(torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)), 1)
    # pyrovae's analytic_kl (what evaluation uses) against the formula derived in the docs.
    assert torch.allclose(analytic_kl(q, p), closed_form_kl(loc, scale))
    assert analytic_kl(q, p) >= 0


def test_closed_form_kl_matches_monte_carlo():
    loc, scale = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 1.5, 0.8])
    q = Independent(Normal(loc, scale), 1)
    p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    z = q.sample((400_000,))
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean()
    assert abs(monte_carlo - analytic_kl(q, p)) < 0.02


def test_analytic_kl_of_the_guide_is_the_closed_form_per_image(tiny_vae):
    q = tiny_vae.encode(torch.rand(3, 1, 28, 28))
    expected = closed_form_kl(q.base_dist.loc, q.base_dist.scale)
    assert torch.allclose(analytic_kl(q, tiny_vae.prior()), expected)


def test_analytic_kl_of_a_low_rank_normal_is_the_dense_one():
    from torch.distributions import LowRankMultivariateNormal, MultivariateNormal

    g = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 5, generator=g, dtype=torch.float64)
    factor = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    diag = torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.1
    q = LowRankMultivariateNormal(loc, factor, diag)
    p_loc = torch.randn(5, generator=g, dtype=torch.float64)
    p_scale = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    dense = kl_divergence(MultivariateNormal(loc, q.covariance_matrix),
                          MultivariateNormal(p_loc, torch.diag(p_scale**2)))
    assert torch.allclose(analytic_kl(q, Independent(Normal(p_loc, p_scale), 1)), dense)


def test_importance_sampled_bound_is_above_the_elbo(trained_run, mnist5k):
    _, vae, _ = load_run(trained_run)
    images = prepare_test_images(mnist5k.test_images[:200], binary=True)
    result = evaluate(vae, images, num_samples=100)
    assert result.log_likelihood > result.elbo
    assert result.elbo == pytest.approx(result.reconstruction - result.kl)
    assert result.kl > 0 and result.reconstruction < 0
    # k = 1 is an unbiased estimate of the ELBO itself: the two agree within noise.
    assert abs(log_likelihood(vae, images, num_samples=1) - result.elbo) < 3


def test_log_likelihood_grows_with_k_on_a_trained_model(trained_run, mnist5k):
    _, vae, _ = load_run(trained_run)
    images = prepare_test_images(mnist5k.test_images[:100], binary=True)
    estimates = [log_likelihood(vae, images, k) for k in (1, 10, 100)]
    assert estimates[0] < estimates[1] < estimates[2]


def test_chunking_does_not_change_the_estimate(monkeypatch, trained_run, mnist5k):
    _, vae, _ = load_run(trained_run)
    images = prepare_test_images(mnist5k.test_images[:40], binary=True)
    whole = log_likelihood(vae, images, num_samples=300)
    monkeypatch.setattr(evaluate_module, "MAX_ROWS", 64)  # 1 image x 64 samples at a time
    chunked = log_likelihood(vae, images, num_samples=300)
    # Different chunks draw different noise (seeds spread by about 0.7 nats on this small
    # model); a wrong log(k) (5.7 nats here) or a dropped or doubled chunk is far beyond that.
    assert abs(whole - chunked) < 2


def test_evaluation_is_seeded_and_leaves_the_global_rng_alone(tiny_vae):
    images = torch.bernoulli(torch.rand(20, 1, 28, 28))
    state = torch.get_rng_state()
    first = elbo_terms(tiny_vae, images)
    assert torch.equal(state, torch.get_rng_state())
    assert first == elbo_terms(tiny_vae, images)
    assert first != elbo_terms(tiny_vae, images, seed=1)


@pytest.mark.parametrize("likelihood, images, hint", [
    ("bernoulli", lambda: torch.rand(6, 1, 28, 28), "binarize the images first (pyrovae.binarize)"),
    ("dlogistic", lambda: torch.rand(6, 1, 28, 28), "pass 8-bit images divided by 255"),
    ("continuous_bernoulli", lambda: torch.rand(6, 1, 28, 28) * 2, "scale the images to [0, 1]"),
    ("gaussian", lambda: torch.full((6, 1, 28, 28), float("nan")), "NaN or infinite"),
])
def test_images_outside_the_likelihoods_support_get_one_sentence(likelihood, images, hint):
    from pyrovae.config import Config
    from pyrovae.errors import DataError
    from pyrovae.registry import build_vae

    vae = build_vae(Config(latent_dim=3, hidden_dims=(16,), likelihood=likelihood))
    for score in (lambda x: evaluate(vae, x, num_samples=2), lambda x: elbo_terms(vae, x),
                  lambda x: log_likelihood(vae, x, 2)):
        with pytest.raises(DataError, match=hint.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as error:
            score(images())
        assert "\n" not in str(error.value) and len(str(error.value)) < 300  # a sentence, not a tensor dump


def test_binarized_and_8_bit_images_are_scored():
    from pyrovae.config import Config
    from pyrovae.data import binarize
    from pyrovae.registry import build_vae

    x = torch.randint(0, 256, (4, 1, 28, 28)) / 255
    assert math.isfinite(evaluate(build_vae(Config(latent_dim=3, hidden_dims=(16,), likelihood="dlogistic")), x,
                                  num_samples=2).log_likelihood)
    assert math.isfinite(evaluate(build_vae(Config(latent_dim=3, hidden_dims=(16,))), binarize(x, seed=0),
                                  num_samples=2).log_likelihood)
