import math

import pyro
import pytest
import torch
from pyro import poutine

from pyrovae.config import Config
from hypothesis import given, settings, strategies as st

from pyrovae.likelihoods import (BernoulliLikelihood, DiscretizedLogistic, DiscretizedLogisticLikelihood,
                                 DiscretizedLogisticMixtureLikelihood, GaussianLikelihood, LearnedGaussianLikelihood)
from pyrovae.registry import GUIDES, LIKELIHOODS, build_vae


def _batch(vae, n=6):
    x = torch.rand(n, 1, 28, 28).mul(255).round().div(255)  # 8-bit grey levels
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
    out = torch.randn(4, *vae.likelihood.decoder_shape((1, 28, 28))) * 3
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


LEVELS = torch.arange(256, dtype=torch.float64) / 255


@settings(max_examples=80, deadline=None)
@given(loc=st.floats(-3, 4), log_scale=st.floats(-9, 3))
def test_discretized_logistic_is_a_distribution_over_the_256_levels(loc, log_scale):
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64).exp())
    probabilities = d.log_prob(LEVELS).exp()
    assert torch.isfinite(d.log_prob(LEVELS)).all()
    assert abs(probabilities.sum().item() - 1) < 1e-9
    # The clamped logistic's mean is within half a grey level of the discrete mean.
    assert abs((probabilities * LEVELS).sum().item() - d.mean.item()) <= 0.5 / 255 + 1e-9


@settings(max_examples=60, deadline=None)
@given(level=st.integers(1, 254), log_scale=st.floats(-1e4, -7.0 - math.log(2)), mixtures=st.sampled_from([0, 1, 3]))
def test_the_narrowest_logistic_can_put_almost_all_its_mass_on_one_value(level, log_scale, mixtures):
    # A decoder as sure as it can be of an interior value: the scale floor alone decides how
    # much mass the value gets. PixelCNN++'s floor, taken relative to a bin, gives 0.973.
    value = torch.tensor(level / 255).view(1, 1, 1, 1)
    if mixtures:
        likelihood = DiscretizedLogisticMixtureLikelihood(mixtures)
        logits = torch.zeros(mixtures)
        params = [logits, torch.full((mixtures,), value.item() - 0.5), torch.full((mixtures,), log_scale)]
        out = torch.cat(params).view(1, 3 * mixtures, 1, 1)
    else:
        likelihood = DiscretizedLogisticLikelihood()
        out = torch.tensor([value.item() - 0.5, log_scale]).view(1, 2, 1, 1)
    assert likelihood(out).log_prob(value).exp().item() >= 0.97


def test_discretized_logistic_agrees_with_the_pixelcnn_formula_and_is_stable_in_float32():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from reference import discretized_logistic_log_prob

    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 8, 8)).float() / 255
    loc, scale = torch.rand(4, 3, 8, 8) * 1.4 - 0.2, torch.rand(4, 3, 8, 8) * 0.3 + 0.01
    ours = DiscretizedLogistic(loc, scale).to_event(3).log_prob(x)
    assert torch.allclose(ours, discretized_logistic_log_prob(x, loc, scale), rtol=1e-4)
    # Far in the tail PixelCNN++ falls back to the density; the stable difference stays finite and close.
    tail = DiscretizedLogistic(torch.tensor(0.9), torch.tensor(1e-3)).log_prob(torch.tensor(26 / 255))
    assert torch.isfinite(tail) and tail < -700


def test_discretized_logistic_samples_are_8_bit_and_follow_the_probabilities():
    torch.manual_seed(0)
    d = DiscretizedLogistic(torch.tensor(0.3), torch.tensor(0.02))
    samples = d.sample((20000,))
    assert torch.equal(samples * 255, (samples * 255).round())
    expected = d.log_prob(torch.tensor(77 / 255)).exp().item()
    assert abs((samples == torch.tensor(77 / 255)).float().mean().item() - expected) < 0.01


def test_mixture_of_one_is_the_single_logistic_and_every_mixture_sums_to_one():
    torch.manual_seed(0)
    single, mixture = DiscretizedLogisticLikelihood(), DiscretizedLogisticMixtureLikelihood(1)
    out = torch.randn(2, 3, 1, 1)
    loc_scale = torch.cat([out[:, 1:2], out[:, 2:3]], dim=1)  # the mixture reads (logits, loc, log-scale)
    x = torch.tensor([[[[40 / 255]]], [[[1.0]]]])
    assert torch.allclose(single(loc_scale).log_prob(x), mixture(out).log_prob(x), atol=1e-5)
    five = DiscretizedLogisticMixtureLikelihood(5)
    q = five(torch.randn(1, 15, 1, 1) * 2)
    total = sum(q.log_prob(v.float().view(1, 1, 1, 1)).exp() for v in LEVELS)
    assert abs(total.item() - 1) < 1e-4
    # Broadcasting by Pyro's plates expands a distribution (Pyro's ExpandedDistribution).
    one = DiscretizedLogistic(torch.tensor(0.3), torch.tensor(0.1))
    expanded = one.expand((4,))
    assert expanded.log_prob(LEVELS[:4].float()).shape == (4,)
    assert torch.allclose(expanded.mean, one.mean.expand(4))


def test_decoder_shape_asks_for_parameters_per_pixel_value():
    assert DiscretizedLogisticLikelihood().decoder_shape((3, 64, 64)) == (6, 64, 64)
    assert DiscretizedLogisticMixtureLikelihood(10).decoder_shape((3, 64, 64)) == (90, 64, 64)
    assert GaussianLikelihood().decoder_shape((1, 28, 28)) == (1, 28, 28)
    assert DiscretizedLogisticLikelihood.discrete and BernoulliLikelihood.discrete
    assert not GaussianLikelihood.discrete


def test_the_learned_scale_is_exp_of_its_parameter_plus_the_floor():
    """docs/likelihoods.md: s = exp(rho) + 0.01, rho unconstrained."""
    likelihood = LearnedGaussianLikelihood((1, 2, 2), init_scale=0.5)
    rho = likelihood.scale_unconstrained
    assert torch.allclose(rho, torch.full((1, 2, 2), math.log(0.49)))
    with torch.no_grad():
        rho.copy_(torch.tensor([-20.0, 0.0, 1.0, 3.0]).view(1, 2, 2))
    assert torch.allclose(likelihood.scale, rho.detach().exp() + 0.01)
