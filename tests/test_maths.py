"""The identities derived in docs/elbo.md, docs/evaluation.md and docs/likelihoods.md,
checked with numbers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from pyrovae.evaluation import analytic_kl, elbo_terms, log_likelihood
from pyrovae.guides import DiagonalNormalGuide
from pyrovae.likelihoods import IMAGE_EVENT_DIM, Likelihood
from pyrovae.priors import StandardNormalPrior
from pyrovae.vae import VAE

finite = dict(allow_nan=False, allow_infinity=False)


def closed_form_kl(mu, sigma):
    """docs/elbo.md, section 5: 1/2 sum (mu^2 + sigma^2 - 1 - log sigma^2)."""
    return 0.5 * (mu**2 + sigma**2 - 1 - torch.log(sigma**2)).sum(-1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 3, **finite), st.floats(0.05, 4, **finite)), min_size=1, max_size=6))
def test_closed_form_kl_matches_torch_and_monte_carlo(pairs):
    mu = torch.tensor([m for m, _ in pairs], dtype=torch.float64)
    sigma = torch.tensor([s for _, s in pairs], dtype=torch.float64)
    q, p = Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    formula = closed_form_kl(mu, sigma)
    assert formula >= 0
    # The boxed formula against pyrovae's analytic_kl, which evaluation uses for the test ELBO.
    ours = analytic_kl(Independent(q, 1), Independent(p, 1))
    assert formula.item() == pytest.approx(ours.item(), rel=1e-9, abs=1e-12)
    torch.manual_seed(0)
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).sum(-1)
    assert abs(monte_carlo.mean() - formula) < 5 * monte_carlo.std() / math.sqrt(len(z)) + 1e-9


def test_general_multivariate_kl_formula():
    torch.manual_seed(1)
    d = 4
    a, b = torch.randn(d, d, dtype=torch.float64), torch.randn(d, d, dtype=torch.float64)
    s0, s1 = a @ a.T + 0.5 * torch.eye(d), b @ b.T + 0.5 * torch.eye(d)
    m0, m1 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    inv = torch.linalg.inv(s1)
    formula = 0.5 * (torch.trace(inv @ s0) + (m1 - m0) @ inv @ (m1 - m0) - d
                     + torch.logdet(s1) - torch.logdet(s0))
    exact = kl_divergence(MultivariateNormal(m0, s0), MultivariateNormal(m1, s1))
    assert formula.item() == pytest.approx(exact.item(), rel=1e-10)
    # With mu1 = 0, Sigma1 = I and a diagonal Sigma0 it is the boxed formula.
    sigma = torch.rand(d, dtype=torch.float64) + 0.2
    diagonal = kl_divergence(MultivariateNormal(m0, torch.diag(sigma**2)),
                             MultivariateNormal(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)))
    assert diagonal.item() == pytest.approx(closed_form_kl(m0, sigma).item(), rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3), st.integers(0, 10_000))
def test_lowrank_guide_kl_is_the_general_formula_and_monte_carlo_agrees(d, rank, seed):
    """docs/elbo.md: the lowrank guide's KL to a diagonal Normal prior in closed form
    (pyrovae.vae.analytic_kl; torch registers no such KL)."""
    from torch.distributions import LowRankMultivariateNormal

    import pyro.distributions as dist
    from pyrovae.vae import analytic_kl

    generator = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    q = LowRankMultivariateNormal(draw(3, d), draw(3, d, rank), draw(3, d).exp())
    p = dist.Normal(draw(d), draw(d).exp()).to_event(1)
    with pytest.raises(NotImplementedError):
        kl_divergence(q, p)  # so the code must compute it itself
    formula = analytic_kl(q, p)
    exact = kl_divergence(MultivariateNormal(q.loc, q.covariance_matrix),
                          MultivariateNormal(p.base_dist.loc, torch.diag(p.base_dist.scale ** 2)))
    assert formula.shape == (3,) and torch.allclose(formula, exact, rtol=1e-9, atol=1e-9)
    z = q.sample((100_000,))
    monte_carlo = q.log_prob(z) - p.log_prob(z)
    assert (monte_carlo.mean(0) - formula).abs().max() < 6 * monte_carlo.std(0).max() / math.sqrt(len(z)) + 1e-9


class LinearGaussian:
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I): p(x) and p(z|x) are Gaussian and exact."""

    def __init__(self, d=2, n=4, s=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(n, d, generator=g, dtype=torch.float64)
        self.b = torch.randn(n, generator=g, dtype=torch.float64)
        self.s, self.d, self.n = s, d, n

    def log_evidence(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.n, dtype=torch.float64)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x):
        precision = torch.eye(self.d, dtype=torch.float64) + self.W.T @ self.W / self.s**2
        cov = torch.linalg.inv(precision)
        return MultivariateNormal(cov @ self.W.T @ (x - self.b) / self.s**2, cov)

    def elbo(self, x, m, v):
        """Closed-form ELBO for q = N(m, diag v): E_q log p(x|z) + E_q log p(z) + H(q)."""
        mean = self.W @ m + self.b
        expected_log_lik = (Normal(mean, self.s).log_prob(x).sum() - (self.W**2 @ v).sum() / (2 * self.s**2))
        expected_log_prior = -0.5 * (self.d * math.log(2 * math.pi) + (m**2 + v).sum())
        entropy = 0.5 * (self.d * (1 + math.log(2 * math.pi)) + torch.log(v).sum())
        return expected_log_lik + expected_log_prior + entropy


def test_a_subsampled_plate_scales_the_minibatch_loss_by_n_over_m():
    """docs/elbo.md, section 4: pyro.plate("data", size=N, subsample=idx) makes the loss of a
    minibatch of M images N / M times the batch's own, an unbiased estimate of the data set's."""
    import pyro
    from pyrovae.config import Config
    from pyrovae.registry import build_vae

    vae = build_vae(Config(latent_dim=3, hidden_dims=(16,)))
    x = torch.bernoulli(torch.full((6, 1, 28, 28), 0.3))
    elbo = pyro.infer.Trace_ELBO()
    pyro.set_rng_seed(0)
    batch = elbo.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    scaled = elbo.loss(vae.model, vae.guide, x, size=600, subsample=torch.arange(6))
    assert scaled == pytest.approx(100 * batch, rel=1e-6)


def test_reparameterized_and_score_function_gradients_agree_and_score_is_noisier():
    """docs/elbo.md, section 6: both estimators of d/dmu E[f(z)], z ~ N(mu, sigma^2), are unbiased
    (here f(z) = z^2, whose exact gradient is 2 mu), and the score function's variance is far higher."""
    mu, sigma, n = 1.5, 0.5, 200_000
    torch.manual_seed(0)
    loc = torch.full((n,), mu, requires_grad=True)  # one copy per sample: per-sample gradients
    z = Normal(loc, sigma).rsample()  # mu + sigma * eps
    (path,) = torch.autograd.grad((z**2).sum(), loc)
    z = z.detach()
    loc = torch.full((n,), mu, requires_grad=True)
    (log_q_grad,) = torch.autograd.grad(Normal(loc, sigma).log_prob(z).sum(), loc)
    score = z**2 * log_q_grad  # f(z) d/dmu log q(z)
    for estimate in (path, score):
        assert abs(estimate.mean() - 2 * mu) < 5 * estimate.std() / math.sqrt(n)
    assert score.var() > 20 * path.var()  # about 55 times here


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-2, 2, **finite), min_size=2, max_size=2),
       st.lists(st.floats(0.05, 3, **finite), min_size=2, max_size=2),
       st.lists(st.floats(-3, 3, **finite), min_size=4, max_size=4))
def test_elbo_plus_kl_to_the_posterior_is_the_log_evidence(m, v, x):
    """docs/elbo.md, section 3: log p(x) = ELBO + KL(q || p(z|x)), for any q, exactly."""
    model = LinearGaussian()
    m, v, x = (torch.tensor(t, dtype=torch.float64) for t in (m, v, x))
    q = MultivariateNormal(m, torch.diag(v))
    gap = kl_divergence(q, model.posterior(x))
    assert (model.elbo(x, m, v) + gap).item() == pytest.approx(model.log_evidence(x).item(), rel=1e-9, abs=1e-9)
    assert model.elbo(x, m, v) <= model.log_evidence(x) + 1e-12


def test_importance_weighted_bound_rises_with_k_from_the_elbo_to_the_log_evidence():
    """docs/evaluation.md: ELBO = L_1 <= L_k <= L_(k+1) <= log p(x), and L_k -> log p(x)."""
    model = LinearGaussian()
    x = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
    m, v = torch.tensor([0.2, -0.4], dtype=torch.float64), torch.tensor([0.5, 0.8], dtype=torch.float64)
    q = Normal(m, v.sqrt())
    torch.manual_seed(0)
    bounds, errors = {}, {}
    for k, repeats in ((1, 200_000), (2, 100_000), (8, 25_000), (64, 4000), (1024, 400)):
        z = q.sample((repeats, k))  # independent estimates of L_k
        log_w = (Normal(z @ model.W.T + model.b, model.s).log_prob(x).sum(-1)
                 + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1))
        estimates = torch.logsumexp(log_w, dim=1) - math.log(k)
        bounds[k], errors[k] = estimates.mean().item(), (estimates.std() / math.sqrt(repeats)).item()
    exact, elbo = model.log_evidence(x).item(), model.elbo(x, m, v).item()
    assert abs(bounds[1] - elbo) < 4 * errors[1]
    values = list(bounds.values())
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] < exact and exact - values[-1] < 0.05 < exact - elbo  # L_1024 within 0.05 nats


class LinearGaussianLikelihood(Likelihood):
    """x ~ N(decoder output, s^2 I): no squashing, so the model stays linear-Gaussian."""

    data_range = None  # real values, not pixels

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, out):
        import pyro.distributions as dist

        return dist.Normal(out, self.scale).to_event(IMAGE_EVENT_DIM)


def test_pyrovae_evaluation_on_a_model_whose_evidence_is_known():
    """pyrovae's own elbo_terms and log_likelihood on the linear-Gaussian model written as a
    VAE (linear decoder, fixed Gaussian likelihood on 1x2x2 'images', diagonal guide)."""
    torch.manual_seed(0)
    model = LinearGaussian()
    shape = (1, 2, 2)
    decoder = nn.Sequential(nn.Linear(2, 4), nn.Unflatten(-1, shape))
    with torch.no_grad():
        decoder[0].weight.copy_(model.W.float())
        decoder[0].bias.copy_(model.b.float())
    guide = DiagonalNormalGuide(nn.Flatten(-3), latent_dim=2, feature_dim=4)
    vae = VAE(StandardNormalPrior(2), decoder, LinearGaussianLikelihood(model.s), guide)
    x = torch.tensor([0.3, -1.0, 2.0, 0.5]).view(1, *shape)
    images = x.expand(2000, *shape)
    with torch.no_grad():
        q = vae.encode(x)
        m, v = q.base_dist.loc[0].double(), q.base_dist.scale[0].double() ** 2
    exact = model.log_evidence(x.flatten().double()).item()
    elbo = elbo_terms(vae, images).elbo
    assert elbo == pytest.approx(model.elbo(x.flatten().double(), m, v).item(), abs=0.15)  # MC over 2000 draws
    ll = log_likelihood(vae, images[:50], num_samples=4000)
    assert elbo < ll < exact + 0.02 and exact - ll < 0.05


def test_bernoulli_on_grey_pixels_is_not_a_density_and_continuous_bernoulli_is():
    """docs/likelihoods.md: the integral over [0, 1] of lambda^x (1 - lambda)^(1 - x)."""
    x = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    for lam in (0.1, 0.3, 0.5, 0.9, 0.99):
        lam = torch.tensor(lam, dtype=torch.float64)
        unnormalised = torch.trapezoid(lam**x * (1 - lam) ** (1 - x), x)
        if lam == 0.5:  # the closed form is 0/0 here; the integral is the constant 1/2
            assert unnormalised.item() == pytest.approx(0.5, rel=1e-12)
        else:
            closed = (lam - (1 - lam)) / (torch.log(lam) - torch.log(1 - lam))
            assert unnormalised.item() == pytest.approx(closed.item(), rel=1e-8)
        assert unnormalised.item() <= 0.5 + 1e-12  # never 1: at most 1/2 for every lambda
        density = torch.distributions.ContinuousBernoulli(probs=lam).log_prob(x).exp()
        assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=1e-6)
