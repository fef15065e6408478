"""Every guide x prior x likelihood x objective that makes sense trains; each family is correct."""

import itertools
import math

import pyro
import pytest
import torch
from pyro import poutine

from pyrovae.config import Config
from pyrovae.errors import ConfigError
from pyrovae.evaluation import elbo_terms
from pyrovae.guides import IAFGuide
from pyrovae.networks import ACTIVATIONS, ConvDecoder, ConvEncoder, MLPEncoder
from pyrovae.objectives import IWAE_ELBO, LatentScale, kl_weight
from pyrovae.priors import VampPrior
from pyrovae.registry import ACTIVATION_NAMES, ELBOS, GUIDES, LIKELIHOODS, PRIORS, build_elbo, build_vae
from pyrovae.run import load_run, train_run
from pyrovae.train import direct_call, prepare_test_images

def _config(guide="diag_normal", prior="standard_normal", likelihood="bernoulli", elbo="trace", **extra):
    return Config(guide=guide, prior=prior, likelihood=likelihood, elbo=elbo, latent_dim=4, hidden_dims=(24,),
                  num_pseudo_inputs=7, num_particles=3, **extra)


def _valid(*combination) -> bool:
    try:
        _config(*combination).validate()
    except ConfigError:
        return False
    return True


COMBINATIONS = [c for c in itertools.product(GUIDES, PRIORS, LIKELIHOODS, ELBOS) if _valid(*c)]


def _batch(likelihood, n=5):
    x = torch.randint(0, 256, (n, 1, 28, 28)) / 255  # 8-bit grey levels, which every likelihood can score
    return torch.bernoulli(x) if likelihood == "bernoulli" else x


@pytest.mark.parametrize("guide, prior, likelihood, elbo", COMBINATIONS)
def test_one_step_gives_a_finite_loss_and_gradients_for_every_parameter(guide, prior, likelihood, elbo):
    config = _config(guide, prior, likelihood, elbo)
    vae = build_vae(config)
    loss = build_elbo(config).differentiable_loss(direct_call(vae.model), direct_call(vae.guide),
                                                  _batch(likelihood))
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in vae.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("guide, prior", [c for c in itertools.product(GUIDES, PRIORS) if _valid(*c)])
def test_event_shapes(guide, prior):
    vae = build_vae(_config(guide, prior))
    x = _batch("bernoulli", 6)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    for trace in (guide_trace, model_trace):
        z = trace.nodes["z"]["fn"]
        event = (4, 10) if guide == "categorical" else (4,)  # categorical: 4 variables of 10 values
        assert (tuple(z.batch_shape), tuple(z.event_shape)) == ((6,), event)
    assert model_trace.nodes["z"]["log_prob"].shape == (6,)
    assert tuple(model_trace.nodes["x"]["fn"].event_shape) == (1, 28, 28)


def test_vamp_with_iaf_is_refused():
    with pytest.raises(ConfigError, match="prior vamp mixes"):
        build_vae(_config("iaf", "vamp"))


def test_flow_density_matches_the_change_of_variables():
    torch.manual_seed(0)
    guide = IAFGuide(MLPEncoder(hidden_dims=(16,)), latent_dim=3, num_flows=3)
    with torch.no_grad():  # make the flows far from the identity
        for p in guide.flows.parameters():
            p.normal_(0, 0.3)
    x = torch.rand(4, 1, 28, 28)
    q = guide.distribution(x)
    base_x = q.base_dist.sample()
    log_density = q.base_dist.log_prob(base_x)
    y = base_x
    for transform in q.transforms:
        y_next = transform(y)
        log_density = log_density - transform.log_abs_det_jacobian(y, y_next)
        y = y_next
    # Fresh tensor, so Pyro cannot use its cache: it must invert the flows.
    assert torch.allclose(q.log_prob(y.clone()), log_density, atol=1e-3)
    # And by the Jacobian of the whole map, computed by autograd for one image.
    features = guide.encoder(x[:1])
    single = guide.distribution(x[:1])

    def flow(u):
        for transform in single.transforms:
            u = transform(u)
        return u

    u = single.base_dist.sample()
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0)).squeeze(0), u[0])
    expected = single.base_dist.log_prob(u) - torch.linalg.slogdet(jacobian)[1]
    assert torch.allclose(single.log_prob(flow(u).clone()), expected, atol=1e-3)
    assert features.shape == (1, 16)


@pytest.mark.parametrize("seed", range(20))
def test_two_flows_make_every_latent_dimension_depend_on_every_other(seed):
    # Pyro orders each flow by a random permutation unless told; two random orders leave the
    # Jacobian of the flow stack with structural zeros in most builds.
    torch.manual_seed(seed)
    guide = IAFGuide(MLPEncoder(hidden_dims=(16,)), latent_dim=20, num_flows=2)
    with torch.no_grad():  # no weight may happen to be zero where the structure allows one
        for p in guide.flows.parameters():
            p.normal_(0, 0.3)
    q = guide.distribution(torch.rand(1, 1, 28, 28))

    def flow(u):
        for transform in q.transforms:
            u = transform(u)
        return u

    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.unsqueeze(0)).squeeze(0), torch.randn(20))
    assert (jacobian != 0).all()


def test_vamp_prior_density_is_the_mixture_of_the_guide_at_its_pseudo_inputs():
    vae = build_vae(_config("diag_normal", "vamp"))
    prior = vae.prior
    assert isinstance(prior, VampPrior) and prior.num_pseudo_inputs == 7
    z = torch.randn(5, 4)
    components = vae.guide.distribution(torch.sigmoid(prior.pseudo_inputs))  # batch (7,)
    direct = torch.logsumexp(components.log_prob(z.unsqueeze(1)), dim=1) - math.log(7)
    assert torch.allclose(prior().log_prob(z), direct, atol=1e-5)
    # The guide is shared, not copied: one set of weights, registered once.
    names = [name for name, _ in vae.named_parameters()]
    assert sum(name.startswith("guide.") for name in names) == len(list(vae.guide.parameters()))
    assert not any("prior._guide" in name for name in names)


def test_iwae_loss_equals_pyros_renyi_elbo():
    from pyro.infer import RenyiELBO

    vae = build_vae(_config())
    x = _batch("bernoulli", 8)
    pyro.set_rng_seed(3)
    ours = IWAE_ELBO(num_particles=4).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    theirs = RenyiELBO(alpha=0, num_particles=4, vectorize_particles=True, max_plate_nesting=1).loss(
        vae.model, vae.guide, x)
    assert ours.item() == pytest.approx(theirs, rel=1e-5)


def test_iwae_bound_is_above_the_elbo_and_grows_with_k(trained_run, mnist5k):
    _, vae, _ = load_run(trained_run)
    x = prepare_test_images(mnist5k.test_images, binary=True)
    model, guide = direct_call(vae.model), direct_call(vae.guide)
    with torch.no_grad():
        bounds = []
        for k in (1, 5, 50):
            pyro.set_rng_seed(0)
            bounds.append(-IWAE_ELBO(num_particles=k).differentiable_loss(model, guide, x).item() / len(x))
    elbo = elbo_terms(vae, x).elbo
    assert abs(bounds[0] - elbo) < 1.0  # k = 1 is the ELBO
    assert elbo < bounds[1] < bounds[2]


def test_latent_scale_weights_only_the_latent_sites():
    vae = build_vae(_config())
    x = _batch("bernoulli")
    scale = LatentScale(0.25)
    guide_trace = poutine.trace(scale(vae.guide)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(scale(vae.model), trace=guide_trace)).get_trace(x)
    assert guide_trace.nodes["z"]["scale"] == 0.25 and model_trace.nodes["z"]["scale"] == 0.25
    assert model_trace.nodes["x"]["scale"] == 1.0


def test_kl_weight_schedule():
    assert [kl_weight(e, warmup_epochs=4) for e in (0.5, 2, 4, 9)] == [0.125, 0.5, 1.0, 1.0]
    assert kl_weight(1, warmup_epochs=0, beta=4) == 4
    assert kl_weight(1, warmup_epochs=2, beta=4) == 2


def test_beta_changes_training_but_not_what_is_reported(mnist5k):
    from pyrovae.train import fit

    histories = {}
    for beta in (1.0, 8.0):
        torch.manual_seed(0)
        vae = build_vae(_config())
        histories[beta] = fit(vae, mnist5k, num_epochs=2, beta=beta, progress=False)
        assert histories[beta][-1].test_elbo == pytest.approx(
            elbo_terms(vae, prepare_test_images(mnist5k.test_images, True)).elbo)
    assert histories[8.0][-1].test_kl < histories[1.0][-1].test_kl  # a heavier KL weight squeezes the code


def test_conv_networks_keep_leading_dimensions():
    encoder, decoder = ConvEncoder(channels=4, out_features=10), ConvDecoder(3, channels=4, hidden=10)
    assert encoder(torch.rand(2, 5, 1, 28, 28)).shape == (2, 5, 10)
    assert decoder(torch.randn(7, 2, 3)).shape == (7, 2, 1, 28, 28)
    with pytest.raises(ConfigError, match="at least 2 pixels"):
        ConvEncoder(image_shape=(1, 1, 30))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64), (3, 33, 47), (1, 30, 30), (3, 5, 5), (1, 2, 2),
                                   (3, 100, 60)])
def test_conv_networks_fit_any_image_size(shape):
    encoder, decoder = ConvEncoder(shape, channels=4, out_features=8), ConvDecoder(3, shape, channels=4, hidden=8)
    assert encoder(torch.rand(2, *shape)).shape == (2, 8)
    assert decoder(torch.randn(2, 3)).shape == (2, *shape)


def test_conv_depth_follows_the_side_and_28x28_keeps_its_layers():
    from pyrovae.networks import conv_sides

    assert conv_sides(28) == (28, 14, 7) and conv_sides(64) == (64, 32, 16, 8, 4) and conv_sides(5) == (5, 2)
    # The 28x28 network is the one of earlier pyrovae versions, so their checkpoints still load.
    shapes = {k: tuple(v.shape) for k, v in ConvEncoder().state_dict().items()}
    assert shapes == {"net.0.weight": (32, 1, 4, 4), "net.0.bias": (32,), "net.2.weight": (64, 32, 4, 4),
                      "net.2.bias": (64,), "net.5.weight": (256, 3136), "net.5.bias": (256,)}
    shapes = {k: tuple(v.shape) for k, v in ConvDecoder(20).state_dict().items()}
    assert shapes == {"net.0.weight": (256, 20), "net.0.bias": (256,), "net.2.weight": (3136, 256),
                      "net.2.bias": (3136,), "net.5.weight": (64, 32, 4, 4), "net.5.bias": (32,),
                      "net.7.weight": (32, 1, 4, 4), "net.7.bias": (1,)}


def test_activation_names_match_the_networks():
    assert tuple(ACTIVATIONS) == ACTIVATION_NAMES


@pytest.mark.parametrize("extra", [
    dict(guide="iaf", num_flows=2), dict(prior="vamp"), dict(elbo="iwae"), dict(net="conv", conv_channels=4),
    dict(guide="lowrank", warmup_epochs=1.0, beta=2.0), dict(activation="elu", hidden_dims=(24, 12)),
    dict(net="gated", hidden_dims=(24, 12), prior="vamp"),
])
def test_checkpoints_rebuild_every_family(tmp_path, extra):
    config = Config(**{**dict(dataset="mnist5k", latent_dim=4, hidden_dims=(24,), num_epochs=1, batch_size=500,
                              num_pseudo_inputs=7, num_particles=3), **extra})
    result = train_run(config, tmp_path / "run", progress=False)
    loaded, vae, _ = load_run(tmp_path / "run")
    assert loaded == result.config
    images = prepare_test_images(load_run_data(loaded), vae.likelihood.binary_data)
    assert elbo_terms(vae, images).elbo == result.history[-1].test_elbo


def load_run_data(config):
    from pyrovae.data import load_dataset

    return load_dataset(config.dataset).test_images


def test_evaluation_builds_a_mixture_prior_once_and_shrinks_its_chunks(monkeypatch):
    from pyrovae import evaluation

    vae = build_vae(_config("diag_normal", "vamp"))
    assert VampPrior(vae.guide, num_pseudo_inputs=500).row_cost == 1  # 500 x 4 floats per row
    assert VampPrior(build_vae(Config(latent_dim=20, hidden_dims=(8,))).guide, 500).row_cost == 9
    calls = []
    original = type(vae.prior).forward
    monkeypatch.setattr(type(vae.prior), "forward", lambda self: calls.append(1) or original(self))
    monkeypatch.setattr(evaluation, "MAX_ROWS", 20)
    images = torch.bernoulli(torch.rand(6, 1, 28, 28))
    assert math.isfinite(evaluation.log_likelihood(vae, images, num_samples=30))
    assert len(calls) == 1


def test_gated_layers_gate_each_unit_with_its_own_sigmoid():
    from pyrovae.networks import GatedDense, MLPEncoder

    torch.manual_seed(0)
    layer = GatedDense(5, 3)
    x = torch.randn(4, 5)
    assert torch.allclose(layer(x), layer.h(x) * torch.sigmoid(layer.g(x)))
    encoder = MLPEncoder((1, 4, 4), hidden_dims=(8, 6), gated=True)
    assert [type(m) for m in encoder.net] == [GatedDense, GatedDense]  # no activation between gated layers
    assert encoder(torch.rand(2, 1, 4, 4)).shape == (2, 6)
