import pyro
import pytest
import torch
from pyro import poutine

from pyrovae.config import Config
from pyrovae.likelihoods import BernoulliLikelihood, GaussianLikelihood, LearnedGaussianLikelihood
from pyrovae.registry import GUIDES, LIKELIHOODS, build_vae


def _batch(vae, n=6):
    x = torch.rand(n, 1, 28, 28)
    return torch.bernoulli(x) if vae.likelihood.binary_data else x


@pytest.mark.parametrize("guide", list(GUIDES))
@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_one_svi_step_is_finite_with_gradients_for_every_parameter(likelihood, guide):
    prior = "categorical" if guide == "categorical" else "standard_normal"  # the only valid pairing
    vae = build_vae(Config(likelihood=likelihood, guide=guide, prior=prior, latent_dim=5, hidden_dims=(32,)))
    loss = pyro.infer.Trace_ELBO()(vae.model, vae.guide)(_batch(vae))
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in vae.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_event_shapes_one_image_per_event(likelihood):
    vae = build_vae(Config(likelihood=likelihood, latent_dim=5, hidden_dims=(32,)))
    x = _batch(vae)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    for trace in (guide_trace, model_trace):
        z = trace.nodes["z"]["fn"]
        assert (z.batch_shape, z.event_shape) == ((6,), (5,))
    obs = model_trace.nodes["x"]
    assert (obs["fn"].batch_shape, obs["fn"].event_shape) == ((6,), (1, 28, 28))
    assert obs["log_prob"].shape == (6,) and obs["is_observed"]
    assert [f.name for f in obs["cond_indep_stack"]] == ["data"]


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_means_and_samples_are_images(likelihood):
    vae = build_vae(Config(likelihood=likelihood, latent_dim=5, hidden_dims=(32,)))
    out = torch.randn(4, 1, 28, 28) * 3
    for images in (vae.likelihood.mean(out), vae.likelihood.sample(out)):
        assert images.shape == (4, 1, 28, 28) and images.min() >= 0 and images.max() <= 1


def test_bernoulli_refuses_grey_pixels():
    with pytest.raises(ValueError):
        BernoulliLikelihood()(torch.zeros(2, 1, 28, 28)).log_prob(torch.full((2, 1, 28, 28), 0.5))


def test_gaussian_fixed_scale_matches_normal_density():
    out = torch.randn(3, 1, 28, 28)
    x = torch.rand(3, 1, 28, 28)
    expected = torch.distributions.Normal(torch.sigmoid(out), 0.5).log_prob(x).sum((1, 2, 3))
    assert torch.allclose(GaussianLikelihood(0.5)(out).log_prob(x), expected)
    assert not list(GaussianLikelihood(0.5).parameters())


def test_learned_scale_is_a_bounded_parameter():
    likelihood = LearnedGaussianLikelihood(min_scale=0.01)
    (raw,) = likelihood.parameters()
    with torch.no_grad():
        raw.fill_(-1e6)  # the unconstrained value, pushed as low as it goes
    assert likelihood.scale.min() >= 0.01
    assert torch.isfinite(likelihood(torch.zeros(1, 1, 28, 28)).log_prob(torch.zeros(1, 1, 28, 28))).all()


def test_invalid_scales_are_refused():
    with pytest.raises(ValueError):
        GaussianLikelihood(0.0)
    with pytest.raises(ValueError):
        LearnedGaussianLikelihood(init_scale=0.001, min_scale=0.01)
