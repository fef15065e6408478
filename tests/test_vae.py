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


def _svi_steps(vae, x, steps=3):
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    for _ in range(steps):
        svi.step(x)


@pytest.mark.parametrize("part", ["prior", "decoder", "likelihood", "guide"])
def test_an_assigned_part_is_the_one_the_model_guide_svi_and_state_dict_use(part):
    vae = _vae()
    new = {"prior": StandardNormalPrior(4), "decoder": MLPDecoder(4, hidden_dims=(50,)),
           "likelihood": GaussianLikelihood(scale=0.1),
           "guide": DiagonalNormalGuide(MLPEncoder(hidden_dims=(24,)), latent_dim=4)}[part]
    setattr(vae, part, new)
    assert getattr(vae, part) is new
    x = torch.rand(5, 1, 28, 28)
    trace = pyro.poutine.trace(vae.model).get_trace(x)
    if part == "likelihood":
        assert trace.nodes["x"]["fn"].base_dist.scale.max().item() == pytest.approx(0.1)
    prefix = "guide." if part == "guide" else f"model.{part}."
    held = {k[len(prefix):]: v for k, v in vae.state_dict().items() if k.startswith(prefix)}
    assert held.keys() == new.state_dict().keys()
    assert all(torch.equal(held[k], v) for k, v in new.state_dict().items())
    assert not any(k.startswith(part + ".") for k in vae.state_dict()) or part == "guide"
    if part in ("decoder", "guide"):  # SVI trains the new part's weights
        before = [p.clone() for p in new.parameters()]
        _svi_steps(vae, x)
        assert all(not torch.equal(a, b) for a, b in zip(before, new.parameters()))


def test_assigning_a_part_of_another_code_size_is_one_sentence():
    from pyrovae.errors import ConfigError

    vae = _vae()
    with pytest.raises(ConfigError, match="decoder takes codes of 8 numbers but the prior draws 4"):
        vae.decoder = MLPDecoder(8, hidden_dims=(16,))
    assert vae.decoder.latent_dim == 4


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_a_copied_vae_has_a_name_of_its_own_and_svi_trains_the_copy(how, recwarn):
    import copy
    import io
    import pickle

    original = _vae()
    if how == "deepcopy":
        twin = copy.deepcopy(original)
    elif how == "pickle":
        twin = pickle.loads(pickle.dumps(original))
    else:
        buffer = io.BytesIO()
        torch.save(original, buffer)
        buffer.seek(0)
        twin = torch.load(buffer, weights_only=False)
    assert not recwarn.list
    assert twin.name != original.name and twin.model.likelihood._pyro_name.startswith(twin.name + ".")
    frozen, before = [p.clone() for p in original.parameters()], [p.clone() for p in twin.parameters()]
    _svi_steps(twin, torch.rand(5, 1, 28, 28))
    assert all(torch.equal(a, b) for a, b in zip(frozen, original.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, twin.parameters()))


def test_a_plain_module_guide_becomes_a_pyro_module_that_svi_trains():
    import pyro.distributions as dist

    class TutorialGuide(torch.nn.Module):  # Pyro's VAE tutorial: no pyro.module call
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(784, 8)

        def forward(self, x):
            h = self.fc(x.flatten(1))
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(h[:, :4], torch.nn.functional.softplus(h[:, 4:]) + 1e-3).to_event(1))

    vae, guide = _vae(), TutorialGuide()
    vae.guide = guide
    assert isinstance(guide, pyro.nn.PyroModule) and vae.guide is guide
    before = guide.fc.weight.clone()
    _svi_steps(vae, torch.rand(5, 1, 28, 28))
    assert not torch.equal(before, guide.fc.weight)


def test_inside_a_users_own_data_plate_the_model_says_how_in_one_sentence():
    vae = _vae()
    with pytest.raises(ValueError, match="open their own plate 'data' .* call them outside it"):
        with pyro.plate("data", 5):
            vae.model(torch.rand(5, 1, 28, 28))


def test_encode_and_decode_give_gradients_when_they_can_be_wanted():
    vae, x = _vae(), torch.rand(3, 1, 28, 28)
    assert vae.training and vae.encode(x).mean.requires_grad and vae.decode(torch.zeros(3, 4)).mean.requires_grad
    vae.eval()  # a trained model, as pyrovae.load gives it: tensors that plot as they are
    assert not vae.encode(x).mean.requires_grad and not vae.decode(torch.zeros(3, 4)).mean.requires_grad
    code = torch.zeros(3, 4, requires_grad=True)  # a code optimized through the trained decoder
    vae.decode(code).log_prob(x).sum().backward()
    assert code.grad is not None and code.grad.any()
    with torch.no_grad():
        vae.train()
        assert not vae.encode(x).mean.requires_grad


def test_impossible_python_calls_raise_pyrovaes_own_errors(tiny_vae, mnist5k):
    """What a script can get wrong is one sentence of pyrovae's, never a raw torch error."""
    import numpy as np

    from pyrovae import fit, load
    from pyrovae.data import ImageData
    from pyrovae.errors import CheckpointError, ConfigError, DataError
    from pyrovae.evaluation import evaluate

    with pytest.raises(DataError, match="NaN or infinite"):
        tiny_vae.decode(torch.full((2, 3), float("nan")))
    with pytest.raises(ConfigError, match="num_samples must be a whole number"):
        tiny_vae.sample(-1)
    with pytest.raises(ConfigError, match="batch_size must be a whole number"):
        fit(tiny_vae, mnist5k, num_epochs=1, batch_size=0, progress=False)
    with pytest.raises(DataError, match="no images to score"):
        evaluate(tiny_vae, torch.zeros(0, 1, 28, 28), num_samples=2)
    with pytest.raises(DataError, match="holds object values"):
        ImageData.from_tensor(np.array([[[object()]]] * 4))
    with pytest.raises(CheckpointError, match="not by a NoneType"):
        load(None)


def test_temperature_scales_the_prior_of_every_normal_family_and_refuses_a_categorical_one(tiny_vae):
    from pyrovae.config import Config
    from pyrovae.errors import ConfigError
    from pyrovae.registry import build_vae

    torch.manual_seed(0)
    assert tiny_vae.prior_codes(5000, temperature=0.5).std().item() == pytest.approx(0.5, rel=0.05)
    torch.manual_seed(0)
    plain = tiny_vae.sample(3)
    torch.manual_seed(0)
    assert torch.equal(plain, tiny_vae.sample(3, temperature=1.0))  # T = 1 draws exactly as before
    vamp = build_vae(Config(latent_dim=3, hidden_dims=(16,), prior="vamp", num_pseudo_inputs=5))
    assert vamp.sample(2, temperature=0.3).shape == (2, 1, 28, 28)
    categorical = build_vae(Config(model="categorical", guide="categorical", prior="categorical", latent_dim=3,
                                   hidden_dims=(16,)))
    with pytest.raises(ConfigError, match="has none"):
        categorical.sample(2, temperature=0.5)
