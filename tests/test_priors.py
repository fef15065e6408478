import pyro.distributions as dist
import pytest
import torch

from pyrovae.config import Config
from pyrovae.priors import DiagonalNormalMixture
from pyrovae.registry import build_vae


def mixtures(num_components=50, latent_dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    loc = torch.randn(num_components, latent_dim, generator=generator).requires_grad_()
    # Scales from very narrow to wide: the expanded quadratic form's terms reach 1e6 here.
    scale = (torch.rand(num_components, latent_dim, generator=generator) * 2 + 1e-3).requires_grad_()
    logits = torch.randn(num_components, generator=generator).requires_grad_()
    fast = DiagonalNormalMixture(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
    # The stock computation in float64: the reference the float32 result is held to.
    stock = dist.MixtureSameFamily(dist.Categorical(logits=logits.double()),
                                   dist.Normal(loc.double(), scale.double()).to_event(1))
    return fast, stock, (loc, scale, logits)


@pytest.mark.parametrize("sample_shape, batch_shape", [((), ()), ((7,), ()), ((3,), (5,)), ((2, 3), (4,))])
def test_mixture_log_prob_and_gradients_match_the_stock_computation(sample_shape, batch_shape):
    fast, stock, params = mixtures()
    fast, stock = fast.expand(batch_shape), stock.expand(batch_shape)
    z = 2 * torch.randn(*sample_shape, *batch_shape, 6, generator=torch.Generator().manual_seed(1))
    ours, reference = fast.log_prob(z), stock.log_prob(z.double())
    assert ours.dtype == torch.float32 and ours.shape == reference.shape == (*sample_shape, *batch_shape)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-6, atol=1e-4)
    for g, h in zip(torch.autograd.grad(ours.sum(), params), torch.autograd.grad(reference.sum(), params)):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-4)


def test_mixture_keeps_the_stock_sampler_and_shapes():
    fast, stock, _ = mixtures()
    assert type(fast.expand([4])) is DiagonalNormalMixture
    assert fast.sample((3,)).shape == (3, 6) and fast.expand([4]).sample().shape == (4, 6)
    assert fast.event_shape == stock.event_shape and fast.batch_shape == stock.batch_shape


def test_components_that_differ_across_the_batch_use_the_stock_computation():
    loc, scale = torch.randn(4, 10, 3), torch.rand(4, 10, 3) + 0.1
    logits = torch.zeros(4, 10)
    fast = DiagonalNormalMixture(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
    stock = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
    z = torch.randn(2, 4, 3)
    torch.testing.assert_close(fast.log_prob(z), stock.log_prob(z))


@pytest.mark.parametrize("guide, kind", [("diag_normal", DiagonalNormalMixture), ("lowrank", dist.MixtureSameFamily)])
def test_vampprior_uses_the_fast_mixture_for_diagonal_guides(guide, kind):
    vae = build_vae(Config(latent_dim=4, hidden_dims=(16,), prior="vamp", num_pseudo_inputs=8, guide=guide))
    assert type(vae.prior()) is kind
