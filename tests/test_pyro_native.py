"""``vae.model`` and ``vae.guide`` as a Pyro user writes with them: the textbook SVI loop with
every stock ELBO and family, autoguides and ``pyro.param`` guides, ``Predictive``, the
parameter store, and a process whose other Pyro code pyrovae leaves untouched."""

import json
import math
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive
from pyro.infer.autoguide import AutoNormal

from pyrovae.config import Config
from pyrovae.evaluation import elbo_terms
from pyrovae.registry import build_vae
from pyrovae.data import prepare_test_images
from pyrovae.train import fit

SMALL_CONFIG = Config(latent_dim=4, hidden_dims=(32,))


@pytest.fixture(scope="module")
def batches(mnist5k):
    """20 batches of 100 training images and 200 test images."""
    return mnist5k.train_images[:2000].split(100), mnist5k.test_images[::5]


def _train_with_svi(vae, config, batches, elbo, optimizer=None, steps=40):
    """The textbook loop; returns the held-out ELBO before and after."""
    train, test = batches
    binary = vae.likelihood.binary_data
    test = prepare_test_images(test, binary)
    before = elbo_terms(vae, test).elbo
    svi = SVI(vae.model, vae.guide, optimizer or pyro.optim.Adam({"lr": 1e-2}), elbo)
    for step in range(steps):
        x = train[step % len(train)]
        loss = svi.step(torch.bernoulli(x) if binary else x)
    return before, elbo_terms(vae, test).elbo, loss


ELBOS = {
    "Trace_ELBO": lambda: pyro.infer.Trace_ELBO(),
    "TraceMeanField_ELBO": lambda: pyro.infer.TraceMeanField_ELBO(),
    "TraceGraph_ELBO": lambda: pyro.infer.TraceGraph_ELBO(),
    "JitTrace_ELBO": lambda: pyro.infer.JitTrace_ELBO(),
    "RenyiELBO": lambda: pyro.infer.RenyiELBO(alpha=0.5, num_particles=2),
    "TraceTailAdaptive_ELBO": lambda: pyro.infer.TraceTailAdaptive_ELBO(num_particles=3, vectorize_particles=True),
    "vectorized particles": lambda: pyro.infer.Trace_ELBO(num_particles=3, vectorize_particles=True),
}


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", list(ELBOS))
def test_textbook_svi_loop_with_every_stock_elbo_improves_the_held_out_elbo(batches, name):
    torch.manual_seed(0)
    vae = build_vae(SMALL_CONFIG)
    before, after, loss = _train_with_svi(vae, SMALL_CONFIG, batches, ELBOS[name]())
    assert after > before + 50, (before, after)


FAMILIES = {
    "lowrank guide": dict(guide="lowrank"),
    "iaf guide": dict(guide="iaf"),
    "vamp prior": dict(prior="vamp", num_pseudo_inputs=20),
    "categorical code": dict(guide="categorical", prior="categorical", num_categories=3),
    "gaussian": dict(likelihood="gaussian"),
    "gaussian_learned": dict(likelihood="gaussian_learned"),
    "continuous_bernoulli": dict(likelihood="continuous_bernoulli"),
    "conv nets": dict(net="conv", conv_channels=8),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_textbook_svi_loop_trains_every_family_with_clipped_adam(batches, name):
    config = SMALL_CONFIG.replace(**FAMILIES[name])
    torch.manual_seed(0)
    vae = build_vae(config)
    before, after, _ = _train_with_svi(vae, config, batches, pyro.infer.Trace_ELBO(),
                                       pyro.optim.ClippedAdam({"lr": 1e-2, "clip_norm": 10.0}))
    assert after > before + 20, (before, after)
    # Every parameter of the VAE reached Pyro's optimizer through the parameter store, under its name.
    store = pyro.get_param_store()
    assert {id(store[name].unconstrained()) for name in store.keys()} >= {id(p) for p in vae.parameters()}


def test_two_vaes_trained_by_svi_side_by_side_keep_their_own_weights(batches):
    first, second = build_vae(SMALL_CONFIG), build_vae(SMALL_CONFIG)
    assert first.name != second.name
    elbo = pyro.infer.Trace_ELBO()
    svi_first = SVI(first.model, first.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    svi_second = SVI(second.model, second.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    x = torch.bernoulli(batches[0][0])
    svi_first.step(x)
    frozen = [p.detach().clone() for p in first.parameters()]
    svi_second.step(x)  # must not touch the first VAE's weights
    assert all(torch.equal(a, b) for a, b in zip(frozen, first.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    names = list(pyro.get_param_store().keys())
    assert {n.split(".")[0] for n in names} == {first.name, second.name}
    assert len(names) == 2 * len(list(first.parameters()))


def test_a_name_taken_by_a_live_vae_is_refused():
    vae = build_vae(SMALL_CONFIG)
    with pytest.raises(ValueError, match=f"already named '{vae.name}'"):
        type(vae)(vae.prior, vae.decoder, vae.likelihood, vae.guide, name=vae.name)
    named = type(vae)(vae.prior, vae.decoder, vae.likelihood, vae.guide, name="my_vae")
    assert named.name == "my_vae"


def test_state_dict_restores_a_model_trained_with_svi_and_the_param_store_holds_its_values(batches, tmp_path):
    """The documented way to save a model is its state_dict (or a pyrovae run). Pyro's store
    refers to the very tensors the VAE trains, so its save() holds the trained values; its
    load() does not write into an existing VAE's torch parameters (PyroModule keeps its own)."""
    torch.manual_seed(0)
    vae = build_vae(SMALL_CONFIG)
    _train_with_svi(vae, SMALL_CONFIG, batches, pyro.infer.Trace_ELBO(), steps=10)
    torch.save(vae.state_dict(), tmp_path / "vae.pt")
    pyro.get_param_store().save(tmp_path / "params.pt")
    again = build_vae(SMALL_CONFIG)
    again.load_state_dict(torch.load(tmp_path / "vae.pt", weights_only=True))
    x = prepare_test_images(batches[1], binary=True)
    assert elbo_terms(again, x).elbo == elbo_terms(vae, x).elbo
    saved = torch.load(tmp_path / "params.pt", weights_only=False)["params"]
    decoder_bias = f"{vae.name}.model.decoder$$$out.bias"
    assert torch.equal(saved[decoder_bias], vae.decoder.out.bias)


def test_autoguide_and_param_guide_train_through_svi_and_fit(mnist5k):
    """A non-amortized guide, Pyro's AutoNormal on the model, follows the model's subsampled
    plate (create_plates) and trains both with SVI and with pyrovae's fit(); fit() reports the
    training ELBO and no test figures (such a guide cannot encode new images)."""
    data = mnist5k.replace(train_images=mnist5k.train_images[:600])
    torch.manual_seed(0)
    vae = build_vae(SMALL_CONFIG)
    vae.guide = AutoNormal(vae.model, create_plates=vae.create_plates)
    history = fit(vae, data, num_epochs=3, batch_size=100, lr=1e-2, progress=False)
    assert history[-1].train_elbo > history[0].train_elbo + 50
    assert all(math.isnan(m.test_elbo) for m in history)
    locs = dict(vae.guide.named_parameters())["locs.z_unconstrained"]
    assert locs.shape == (600, 4)  # one code per training image
    with pytest.raises(TypeError, match="gives no q\\(z\\|x\\) for new images"):
        vae.encode(data.test_images[:3])

    torch.manual_seed(0)
    other = build_vae(SMALL_CONFIG)
    other.guide = AutoNormal(other.model, create_plates=other.create_plates)
    svi = SVI(other.model, other.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    images = torch.bernoulli(data.train_images)
    losses = [svi.step(images[index], size=600, subsample=index) for _ in range(5)
              for index in torch.randperm(600).split(100)]
    assert sum(losses[-6:]) < sum(losses[:6])


def test_fit_takes_the_pyro_param_guide_of_the_example(mnist5k):
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "param_guide.py"))
    data = mnist5k.replace(train_images=mnist5k.train_images[:500])
    torch.manual_seed(0)
    vae = build_vae(SMALL_CONFIG.replace(latent_dim=example["LATENT_DIM"]))
    vae.guide = example["guide"]
    history = fit(vae, data, num_epochs=3, batch_size=100, lr=1e-2, progress=False)
    assert history[-1].train_elbo > history[0].train_elbo + 50
    assert pyro.get_param_store()["per_image.loc"].shape == (500, example["LATENT_DIM"])


def test_predictive_draws_fresh_prior_and_posterior_predictive_images(batches):
    torch.manual_seed(0)
    vae = build_vae(SMALL_CONFIG)
    _train_with_svi(vae, SMALL_CONFIG, batches, pyro.infer.Trace_ELBO(), steps=20)
    prior = Predictive(vae.model, num_samples=3)(num_images=5)
    assert prior["z"].shape == (3, 5, 4) and prior["x"].shape == (3, 5, 1, 28, 28)
    assert set(prior["x"].unique().tolist()) <= {0.0, 1.0} and not torch.equal(prior["x"][0], prior["x"][1])
    x = torch.bernoulli(batches[1][:5])
    # Pyro's way to predict an observed site: uncondition it, and let the guide give z.
    posterior = Predictive(poutine.uncondition(vae.model), guide=vae.guide, num_samples=3)(x)
    assert posterior["x"].shape == (3, 5, 1, 28, 28)
    assert not torch.equal(posterior["x"][0], x) and not torch.equal(posterior["x"][0], posterior["x"][1])
    # Fresh draws, yet given each image's own code: closer to that image than prior draws are.
    assert (posterior["x"] != x).float().mean() < (prior["x"] != x).float().mean()
    assert torch.equal(Predictive(vae.model, guide=vae.guide, num_samples=2)(x)["x"][0], x)  # observed stays observed
    with pytest.raises(ValueError, match="num_images to generate"):
        vae.model()


def test_the_plate_checks_its_arguments():
    vae = build_vae(SMALL_CONFIG)
    x = torch.zeros(3, 1, 28, 28)
    with pytest.raises(ValueError, match="together with subsample"):
        vae.model(x, size=10)
    with pytest.raises(ValueError, match="does not match the 3 images"):
        vae.model(x, num_images=4)
    with pytest.raises(ValueError, match="needs the images x"):
        vae.guide(None, num_images=3)
    trace = poutine.trace(vae.model).get_trace(x, size=30, subsample=torch.tensor([0, 5, 7]))
    trace.compute_log_prob()
    assert trace.nodes["x"]["scale"] == 10.0  # the data set's ELBO, estimated from 3 of its 30 images


# A stock Pyro program: a Bayesian linear regression with six autoguides, and a PyroModule that
# calls pyro.param, one of them built before pyrovae is imported. It prints its losses and
# Pyro's settings; run alone and after pyrovae trained, evaluated and sampled in-process, the
# output must be the same.
STOCK_PROGRAM = textwrap.dedent("""
    import json, sys, tempfile
    import pyro, pyro.distributions as dist, torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer import autoguide
    from pyro.nn import PyroModule

    class Regression(PyroModule):
        def forward(self, x, y=None):
            w = pyro.param("regression.w", torch.zeros(3))
            with pyro.plate("n", len(x)):
                return pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)

    built_before = Regression()
    if sys.argv[1] == "after-pyrovae":
        from click.testing import CliRunner
        from pyrovae.cli import main
        run = tempfile.mkdtemp() + "/run"
        for args in (["train", "--dataset", "mnist5k", "--epochs", "1", "--z-dim", "2", "--hidden", "16",
                      "--run-dir", run], ["evaluate", run, "-k", "2", "--num-images", "20"],
                     ["sample", run, "-n", "4", "-o", run + "/s.png"]):
            result = CliRunner().invoke(main, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
        from pyrovae import fit, load_dataset, build_vae, Config
        fit(build_vae(Config(latent_dim=2, hidden_dims=(16,))), load_dataset("mnist5k"), num_epochs=1, progress=False)

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("n", len(x)):
            return pyro.sample("y", dist.Normal(x @ w, sigma), obs=y)

    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
    losses = {}
    for name in ("AutoDelta", "AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal",
                 "AutoLowRankMultivariateNormal", "AutoLaplaceApproximation"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = SVI(model, getattr(autoguide, name)(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        losses[name] = [svi.step(x, y) for _ in range(30)]
    for label, module in (("built before", built_before), ("built after", Regression())):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = SVI(module, lambda x, y=None: None, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        losses[label] = [svi.step(x, y) for _ in range(30)]
    print(json.dumps({"losses": losses, "settings": pyro.settings.get()}))
""")


def test_pyrovae_leaves_other_pyro_code_in_the_process_as_it_was(tmp_path):
    script = tmp_path / "stock.py"
    script.write_text(STOCK_PROGRAM)
    outputs = {}
    for mode in ("alone", "after-pyrovae"):
        done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    alone, after = outputs["alone"], outputs["after-pyrovae"]
    assert alone["settings"] == after["settings"] and alone["settings"]["module_local_params"] is False
    assert set(alone["losses"]) == set(after["losses"]) and len(alone["losses"]) == 8
    for name, losses in alone["losses"].items():
        assert losses == after["losses"][name], name
        assert losses[-1] < losses[0], name  # the program itself really trains


def test_importing_pyrovae_keeps_a_users_own_pyro_settings():
    code = ("import pyro; pyro.settings.set(module_local_params=True); "
            "import pyrovae.vae, pyrovae.m2, pyrovae.train, pyrovae.run; "
            "print(pyro.settings.get('module_local_params'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "True", done.stderr
