import math

import pyro
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyrovae import (
    VAE,
    BernoulliLikelihood,
    DiagonalNormalGuide,
    GaussianLikelihood,
    IAFGuide,
    LowRankNormalGuide,
    MLPDecoder,
    MLPEncoder,
    StandardNormalPrior,
)
from pyrovae.guides import head_scale


def _vae(latent_dim=4):
    return VAE(
        prior=StandardNormalPrior(latent_dim),
        decoder=MLPDecoder(latent_dim, hidden_dims=(16,)),
        likelihood=GaussianLikelihood(scale=0.5),
        guide=DiagonalNormalGuide(MLPEncoder(hidden_dims=(16,)), latent_dim=latent_dim),
    )


def test_two_vaes_keep_their_own_parameters():
    first, second = _vae(), _vae()
    before = [p.clone() for p in second.parameters()]
    x = torch.rand(5, 1, 28, 28)
    optimizer = torch.optim.Adam(first.parameters(), lr=0.1)
    loss = pyro.infer.Trace_ELBO()(first.model, first.guide)(x)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, second.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert first.name != second.name
    assert all(name.startswith(first.name + ".") for name in pyro.get_param_store().keys())


def test_prior_lives_in_buffers_and_moves_with_the_model():
    vae = _vae()
    buffers = dict(vae.named_buffers())
    assert "model.prior.loc" in buffers and "model.prior.scale" in buffers
    vae.to(torch.float64)
    assert vae.prior().mean.dtype == torch.float64
    assert "model.prior.loc" in vae.state_dict()


def test_encode_decode_reconstruct_sample_shapes():
    vae = _vae()
    x = torch.rand(7, 1, 28, 28)
    q = vae.encode(x)
    assert q.batch_shape == (7,) and q.event_shape == (4,)
    assert vae.decode(q.sample()).event_shape == (1, 28, 28)
    assert vae.reconstruct(x).shape == (7, 1, 28, 28)
    images = vae.sample(9)
    assert images.shape == (9, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    z = torch.zeros(2, 4)
    assert torch.equal(vae.sample(2, mean=True, z=z), vae.sample(2, mean=True, z=z))


def test_guide_scale_stays_positive_for_extreme_inputs_and_is_not_clipped_by_default():
    guide = DiagonalNormalGuide(MLPEncoder(hidden_dims=(16,)), latent_dim=3)
    with torch.no_grad():
        guide.scale.bias.fill_(-1e4)
    assert guide.distribution(torch.rand(2, 1, 28, 28)).base_dist.scale.min() >= guide.min_scale
    with torch.no_grad():
        guide.scale.bias.fill_(1e4)
    assert torch.allclose(guide.distribution(torch.rand(2, 1, 28, 28)).base_dist.scale, torch.full((2, 3), 1e4),
                          rtol=1e-3)


@given(head=st.floats(-1e3, 1e3), lo=st.floats(-20, 5), width=st.floats(0.01, 20))
def test_a_clipped_log_variance_head_gives_scales_in_its_range_and_no_gradient_outside(head, lo, width):
    hi = lo + width
    h = torch.tensor([head], dtype=torch.float64, requires_grad=True)
    scale = head_scale(h, 1e-3, (lo, hi))
    assert torch.allclose(scale.log() * 2, torch.tensor([min(max(head, lo), hi)], dtype=torch.float64))
    scale.sum().backward()
    assert (h.grad.item() == 0) == (not lo < head < hi)  # torch: no gradient on the bounds either


@pytest.mark.parametrize("guide_class, head, scale", [
    (DiagonalNormalGuide, lambda g: g.scale, lambda q: q.base_dist.scale),
    (LowRankNormalGuide, lambda g: g.diag, lambda q: q.cov_diag.sqrt()),
    (IAFGuide, lambda g: g.base.scale, lambda q: q.base_dist.base_dist.scale),
], ids=["diag_normal", "lowrank", "iaf"])
@pytest.mark.parametrize("bias, expected", [(-1e4, math.exp(-3)), (1e4, math.exp(1))])
def test_normal_guides_clip_their_log_variance_when_asked(guide_class, head, scale, bias, expected):
    guide = guide_class(MLPEncoder(hidden_dims=(16,)), 3, logvar_range=(-6, 2))
    with torch.no_grad():
        head(guide).bias.fill_(bias)
    sigma = scale(guide.distribution(torch.rand(5, 1, 28, 28)))
    assert torch.allclose(sigma, torch.full_like(sigma, expected))


def test_every_public_name_imports_from_the_package():
    import pyrovae

    for name in pyrovae.__all__:
        assert getattr(pyrovae, name) is not None, name


def test_parts_of_different_latent_sizes_are_refused_when_the_vae_is_built():
    import pytest

    from pyrovae.errors import ConfigError

    with pytest.raises(ConfigError, match="prior draws codes of 10 dimensions but the guide gives 20"):
        VAE(StandardNormalPrior(10), MLPDecoder(10), BernoulliLikelihood(),
            DiagonalNormalGuide(MLPEncoder(), latent_dim=20))
    with pytest.raises(ConfigError, match="decoder takes codes of 8 numbers but the prior draws 20"):
        VAE(StandardNormalPrior(20), MLPDecoder(8), BernoulliLikelihood(),
            DiagonalNormalGuide(MLPEncoder(), latent_dim=20))
