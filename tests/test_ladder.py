"""The top-down hierarchical VAE (``--model ladder``): each level a Pyro sample site with a
spatial code, the flat code of evaluation the same densities as the model's and guide's
sites, stock Pyro SVI, the trainer, and the command line."""

import json

import pyro
import pytest
import torch
from conftest import check_family_commands, cli_ok
from pyrovae.config import Config
from pyrovae.data import ImageData, prepare_test_images
from pyrovae.errors import ConfigError
from pyrovae.evaluation import elbo_terms, evaluate
from pyrovae.ladder import Ladder, level_sides, soft_clamp
from pyrovae.registry import MODELS, build_vae, model_family
from pyrovae.train import KLWeight, Trainer, fit

SMALL = Config(model="ladder", latent_dim=2, conv_channels=8, levels=3)


def _ladder(**changes):
    torch.manual_seed(0)
    return build_vae(SMALL.replace(**changes))


def _colour(n=40, side=16):
    torch.manual_seed(1)
    return torch.randint(0, 256, (n, 3, side, side)).float() / 255


def test_levels_spread_from_the_coarsest_resolution():
    assert level_sides((1, 28, 28), 3) == ([(7, 7), (14, 14), (28, 28)], [(7, 7), (7, 7), (14, 14)])
    assert level_sides((3, 64, 64), 2)[1] == [(4, 4), (16, 16)]
    assert level_sides((3, 64, 64), 4)[1] == [(4, 4), (8, 8), (16, 16), (32, 32)]
    assert level_sides((3, 20, 30), 1) == ([(5, 7), (10, 15), (20, 30)], [(5, 7)])
    assert soft_clamp(torch.tensor([-1e6, 0.0, 1e6])).abs().max() <= 5


@pytest.mark.parametrize("shape, likelihood", [((1, 28, 28), "bernoulli"), ((3, 16, 16), "dlogistic")])
def test_the_flat_code_has_the_densities_of_the_model_and_guide_sites(shape, likelihood, mnist5k):
    """log q(code | x) and log p(code) of evaluation are what Pyro's traces give the sites zL ... z1,
    and the sites are spatial codes, the top first."""
    vae = _ladder(image_shape=shape, likelihood=likelihood)
    x = prepare_test_images(mnist5k.test_images[:4], binary=True) if shape[0] == 1 else _colour(4)
    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide)).get_trace(x)
    sites = ("z3", "z2", "z1")
    assert vae.latent_sites == sites
    assert [n for n, s in model.nodes.items() if s["type"] == "sample"] == ["data", *sites, "x"]
    assert all(guide.nodes[s]["value"].dim() == 4 for s in sites)
    code = torch.cat([guide.nodes[s]["value"].flatten(1) for s in sites], dim=-1)
    log_q = sum(guide.nodes[s]["fn"].log_prob(guide.nodes[s]["value"]) for s in sites)
    log_p = sum(model.nodes[s]["fn"].log_prob(model.nodes[s]["value"]) for s in sites)
    assert torch.allclose(vae.guide.distribution(x).log_prob(code), log_q, atol=1e-3)
    assert torch.allclose(vae.prior_once().log_prob(code), log_p, atol=1e-3)
    decoded = vae.decoder(code)
    assert torch.allclose(vae.likelihood(decoded).log_prob(x), model.nodes["x"]["fn"].log_prob(x), atol=1e-3)


def test_the_posterior_starts_as_the_prior_and_the_guide_shares_the_models_path():
    """NVAE's residual posterior: at initialisation q(z_l | x, z_>l) is close to p(z_l | z_>l),
    and the top-down networks are one set of weights (registered once, as the model's)."""
    vae = _ladder()
    x = (torch.rand(6, 1, 28, 28) < 0.3).float()
    assert vae.guide._top_down is vae.model.decoder
    # every parameter reachable under one name only: the guide's path is a reference, not a submodule
    names = [name for name, _ in vae.named_parameters(remove_duplicate=False)]
    assert len(names) == len(set(id(p) for p in vae.parameters()))
    assert elbo_terms(vae, x).kl < 0.05 * vae.code_dim


@pytest.mark.parametrize("elbo", [pyro.infer.Trace_ELBO, pyro.infer.TraceMeanField_ELBO, pyro.infer.TraceGraph_ELBO])
def test_stock_pyro_svi_trains_every_level(mnist5k, elbo):
    pyro.clear_param_store()
    vae = _ladder()
    x = prepare_test_images(mnist5k.train_images[:128], binary=True)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), elbo())
    losses = [svi.step(x) for _ in range(25)]
    assert losses[-1] < losses[0] - 5000
    assert {name for name in pyro.get_param_store().keys() if "start" in name}  # the path's own parameters trained


def test_vectorized_particles_and_predictive(mnist5k):
    vae = _ladder()
    x = prepare_test_images(mnist5k.test_images[:8], binary=True)
    loss = pyro.infer.Trace_ELBO(num_particles=3, vectorize_particles=True).loss(vae.model, vae.guide, x)
    assert torch.isfinite(torch.tensor(loss))
    draws = pyro.infer.Predictive(vae.model, guide=vae.guide, num_samples=2, return_sites=["z1", "x"])(x)
    assert draws["z1"].shape == (2, 8, 2, 14, 14) and draws["x"].shape == (2, 8, 1, 28, 28)


def test_fit_evaluate_and_the_bound_order_on_colour_images():
    images = _colour(240)
    data = ImageData.from_tensor(images[:200], images[200:])
    vae = _ladder(image_shape=(3, 16, 16), likelihood="dlogistic")
    history = fit(vae, data, num_epochs=3, batch_size=20, warmup_epochs=1, progress=False)
    assert history[-1].train_elbo > history[0].train_elbo
    result = evaluate(vae, data.test_images, num_samples=30)
    assert result.log_likelihood > result.elbo and result.bits_per_dim is not None
    # one sample of the sites' log-densities, averaged over draws, is the closed-form KL of elbo_terms
    x = data.test_images[:20]
    terms = elbo_terms(vae, x)
    estimates = [-pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, x) / len(x) for _ in range(20)]
    assert sum(estimates) / len(estimates) == pytest.approx(terms.elbo, abs=0.05 * abs(terms.elbo))
    assert vae.sample(3).shape == (3, 3, 16, 16) and vae.reconstruct(x[:2]).shape == (2, 3, 16, 16)


def test_warm_up_weights_every_level(mnist5k):
    trainer = Trainer(_ladder(), mnist5k, batch_size=100, warmup_epochs=2)
    weight = next(c for c in trainer.callbacks if isinstance(c, KLWeight))
    assert weight.scale.sites == ("z3", "z2", "z1")


def test_temperature_levels_figure_and_kl_per_level():
    vae = _ladder()
    torch.manual_seed(0)
    cold, warm = vae.prior_codes(500, temperature=0.1), vae.prior_codes(500)
    assert cold.shape == (500, vae.code_dim) and cold.std() < 0.3 * warm.std()
    grid = vae.level_grid(2, 3, seed=0)
    assert grid.shape == (6, 1, 28, 28) and torch.equal(grid, vae.level_grid(2, 3, seed=0))
    assert torch.equal(vae.fixed_latents(4, 1), vae.fixed_latents(4, 1))
    x = (torch.rand(30, 1, 28, 28) < 0.3).float()
    torch.manual_seed(2)
    per_dimension = vae.eval().kl_per_dimension(x)
    assert vae.code_levels() == {"z3": 98, "z2": 98, "z1": 392} and per_dimension.shape == (588,)
    assert per_dimension.sum().item() == pytest.approx(elbo_terms(vae, x).kl, rel=0.2, abs=0.5)


@pytest.mark.parametrize("changes, message", [
    (dict(prior="vamp"), "ladder has its own networks"),
    (dict(net="gated"), "ladder has its own networks"),
    (dict(image_shape=(1, 1, 1)), "at least 2 pixels"),
])
def test_impossible_ladder_configurations(changes, message):
    with pytest.raises(ConfigError, match=message):
        build_vae(SMALL.replace(**changes))


def test_the_command_line_refuses_gated_networks_for_the_ladder(tmp_path):
    from click.testing import CliRunner

    from pyrovae.cli import main

    result = CliRunner().invoke(main, ["train", "--model", "ladder", "--net", "gated", "--dataset", "mnist5k",
                                       "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "ladder has its own networks" in result.output
    assert not (tmp_path / "run").exists()


def test_the_family_is_one_registry_line():
    assert MODELS["ladder"] == "pyrovae.ladder:Ladder" and model_family(SMALL) is Ladder


def test_command_line_trains_evaluates_samples_plots_exports_and_resumes(tmp_path):
    run = tmp_path / "run"
    result = cli_ok("train", "--model", "ladder", "--levels", 2, "--dataset", "mnist5k", "--z-dim", 2,
                    "--conv-channels", 8, "--epochs", 1, "--warmup", 1, "--grad-clip", 200, "--skip-grad-norm", 1e-9,
                    "--run-dir", run)
    assert "32 of 32 steps skipped" in result.output and "conv networks" in result.output
    report = json.loads(cli_ok("plot", run, "kl", "-o", tmp_path / "kl.png", "--num-images", 50, "--json").stdout)
    assert set(report["levels"]) == {"z2", "z1"}
    check_family_commands(run, tmp_path, ("curves", "samples", "reconstructions", "levels", "latent", "interpolate"))
    card = (tmp_path / "export" / "README.md").read_text()  # each level named with its size, not "z of 2"
    assert "levels of latents z2 (98 numbers), z1 (392 numbers)" in card and "z of 2 dimensions" not in card


def test_two_processes_train_the_one_process_ladder(tmp_path):
    """Every level is sampled for the global batch and sliced by rank, so torchrun gives the
    1-process model."""
    from test_distributed import _torchrun

    from pyrovae.rundir import load_run
    from pyrovae.run import train_run

    args = ["--model", "ladder", "--levels", "2", "--z-dim", "2", "--conv-channels", "4", "--batch-size", "500",
            "--epochs", "1"]
    result = _torchrun("train", "--dataset", "mnist5k", *args, "--run-dir", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    one = train_run(Config(model="ladder", dataset="mnist5k", levels=2, latent_dim=2, conv_channels=4,
                           batch_size=500, num_epochs=1), tmp_path / "one", progress=False)
    a, b = load_run(one.run_dir)[1].state_dict(), load_run(tmp_path / "two")[1].state_dict()
    assert all(torch.allclose(a[name], b[name], atol=1e-4) for name in a)


def test_a_copy_is_a_ladder_of_its_own_with_one_shared_path(mnist5k):
    """copy.deepcopy and torch.save/load keep the guide and the prior on the copy's own path
    (one set of weights), and SVI on the copy leaves the original as it was; Pyro's autoguides
    and Predictive take ``vae.model``."""
    import copy
    import io

    vae = _ladder()
    twin = copy.deepcopy(vae)
    assert twin.guide._top_down is twin.model.decoder is twin.model.prior._top_down
    assert twin.model.decoder is not vae.model.decoder and twin.name != vae.name
    buffer = io.BytesIO()
    torch.save(vae, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.guide._top_down is loaded.model.decoder
    x = prepare_test_images(mnist5k.test_images[:4], binary=True)
    before = vae.model.decoder.start.detach().clone()
    svi = pyro.infer.SVI(twin.model, twin.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    svi.step(x)
    svi.step(x)
    assert torch.equal(before, vae.model.decoder.start) and not torch.equal(before, twin.model.decoder.start)
    auto = pyro.infer.SVI(vae.model, pyro.infer.autoguide.AutoNormal(vae.model), pyro.optim.Adam({"lr": 1e-2}),
                          pyro.infer.Trace_ELBO())
    assert torch.isfinite(torch.tensor(auto.step(x)))
    drawn = pyro.infer.Predictive(vae.model, num_samples=2, return_sites=["z3", "x"])(num_images=3)
    assert drawn["z3"].shape == (2, 3, 2, 7, 7) and drawn["x"].shape == (2, 3, 1, 28, 28)


def _model_log_p(vae, guide_trace, x):
    """The model's log p(z_L) ... p(z_1) at the guide trace's codes, by Pyro (replay)."""
    model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    return sum(model.nodes[s]["fn"].log_prob(model.nodes[s]["value"]) for s in vae.latent_sites)


def _recomputed_log_p(vae, guide_trace):
    code = torch.cat([guide_trace.nodes[s]["value"].flatten(1) for s in vae.latent_sites], dim=-1)
    return vae.prior_once().log_prob(code)


def test_the_model_takes_over_the_guides_pass_with_the_same_gradients(mnist5k, monkeypatch):
    """Under SVI the model scores the guide's codes with the priors the guide's pass computed
    (each level's prior head runs once a step, not twice), and loss and every gradient are
    those of a model that recomputes its path."""
    from pyrovae.ladder import Level, TopDown

    vae = _ladder(latent_dim=3)
    x = prepare_test_images(mnist5k.test_images[:8], binary=True)

    def step():
        pyro.set_rng_seed(1)
        vae.zero_grad(set_to_none=True)
        loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in vae.parameters()]

    calls = []
    prior_of = Level.prior_of
    monkeypatch.setattr(Level, "prior_of", lambda self, h: calls.append(1) or prior_of(self, h))
    shared, shared_grads = step()
    assert len(calls) == 3  # the guide's three levels; the model read none again
    monkeypatch.setattr(TopDown, "take_over", lambda self: None)
    recomputed, recomputed_grads = step()
    assert len(calls) == 9
    assert torch.allclose(shared, recomputed, rtol=1e-6)
    for a, b in zip(shared_grads, recomputed_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())


def test_the_model_computes_its_own_path_where_the_guides_pass_no_longer_holds(mnist5k):
    """Weights changed after the guide ran (an optimizer step), a code changed in place or
    replaced (poutine.condition), the guide run without gradients: the model's priors are its
    own, never a stale pass's (a silent wrong answer otherwise)."""
    vae = _ladder()
    x = prepare_test_images(mnist5k.test_images[:4], binary=True)

    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    with torch.no_grad():
        for p in vae.model.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))  # in place, as an optimizer steps
    assert torch.allclose(_model_log_p(vae, guide, x), _recomputed_log_p(vae, guide), atol=1e-3)

    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    with torch.no_grad():
        guide.nodes["z2"]["value"].mul_(3.0)  # the middle level's code, changed in place
    assert torch.allclose(_model_log_p(vae, guide, x), _recomputed_log_p(vae, guide), atol=1e-3)

    vae.guide(x)
    other = {s: torch.randn(4, *shape) for s, shape in zip(vae.latent_sites, vae.top_down.shapes())}
    conditioned = pyro.poutine.trace(pyro.poutine.condition(vae.model, data=other)).get_trace(x)
    code = torch.cat([other[s].flatten(1) for s in vae.latent_sites], dim=-1)
    log_p = sum(conditioned.nodes[s]["fn"].log_prob(other[s]) for s in vae.latent_sites)
    assert torch.allclose(log_p, vae.prior_once().log_prob(code), atol=1e-3)

    with torch.inference_mode():  # codes that keep no version counter: scored afresh, no error
        guide = pyro.poutine.trace(vae.guide).get_trace(x)
        assert torch.allclose(_model_log_p(vae, guide, x), _recomputed_log_p(vae, guide), atol=1e-3)

    with torch.no_grad():
        guide = pyro.poutine.trace(vae.guide).get_trace(x)
    log_p = _model_log_p(vae, guide, x)
    assert log_p.requires_grad  # computed afresh, with the graph to the weights
    (start_grad,) = torch.autograd.grad(log_p.sum(), [vae.model.decoder.start])
    assert start_grad.abs().sum() > 0


def test_a_copy_or_pickle_after_the_guide_leaves_its_pass_behind(mnist5k):
    """The guide's kept pass holds one step's graph: deepcopy and torch.save of the VAE right
    after the guide ran (say, keeping the best model mid-training) work, and the copy computes
    its own path."""
    import copy
    import io

    vae = _ladder()
    x = prepare_test_images(mnist5k.test_images[:4], binary=True)
    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    twin = copy.deepcopy(vae)
    torch.save(vae, io.BytesIO())
    assert twin.top_down._handed is None
    assert torch.allclose(_model_log_p(twin, guide, x), _recomputed_log_p(vae, guide), atol=1e-3)


def test_the_emoji_benchmark_weighs_the_ladder_against_one_level_models_of_its_size():
    """benchmarks/hierarchy.py's one-level candidates are the conv VAEs closest to the
    ladder's parameter count, distinct, named apart from the large model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from hierarchy import _candidate, configs, one_level_grid, parameters

    chosen = configs((3, 32, 32), 2, 4, 16, large=True, candidates=3)
    sizes = {name: parameters(build_vae(config)) for name, config in chosen.items()}
    ones = [name for name in chosen if _candidate(name)]
    assert len(ones) == 3 and not _candidate("conv-large") and not _candidate("ladder")
    gaps = sorted(abs(parameters(build_vae(c)) - sizes["ladder"]) for c in one_level_grid((3, 32, 32)))
    assert [abs(sizes[n] - sizes["ladder"]) for n in ones] == gaps[:3]  # the closest of the grid, closest first
    assert sizes["conv-large"] > 10 * sizes["ladder"]
