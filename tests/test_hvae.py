"""The two-level hierarchical VAE (``--model hvae``): each level a Pyro sample site, the
evaluation's joint code [z2, z1] the same densities as the model and guide, and the family
working through Pyro's own SVI, the trainer and the command line."""

import json

import pyro
import pytest
import torch
from click.testing import CliRunner
from conftest import check_family_commands, cli_ok

from pyrovae.cli import main
from pyrovae.config import Config
from pyrovae.data import prepare_test_images
from pyrovae.errors import ConfigError, DataError
from pyrovae.evaluation import evaluate
from pyrovae.hvae import HVAE, Hierarchy
from pyrovae.registry import MODELS, build_vae, model_family
from pyrovae.train import KLWeight, Trainer, fit

SMALL = Config(model="hvae", hidden_dims=(32,), latent_dim=3)


def _hvae(**changes):
    torch.manual_seed(0)
    return build_vae(SMALL.replace(**changes))


@pytest.mark.parametrize("prior", ["standard_normal", "vamp"])
def test_the_joint_code_has_the_densities_of_the_model_and_guide_sites(mnist5k, prior):
    """log q([z2, z1] | x) and log p([z2, z1]) used by evaluation are what Pyro's traces of the
    guide and the model give their two sites."""
    vae = _hvae(prior=prior, num_pseudo_inputs=7)
    x = prepare_test_images(mnist5k.test_images[:5], binary=True)
    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide)).get_trace(x)
    z = torch.cat([guide.nodes["z2"]["value"], guide.nodes["z1"]["value"]], dim=-1)
    q_sites = guide.nodes["z2"]["fn"].log_prob(z[:, :3]) + guide.nodes["z1"]["fn"].log_prob(z[:, 3:])
    p_sites = model.nodes["z2"]["fn"].log_prob(z[:, :3]) + model.nodes["z1"]["fn"].log_prob(z[:, 3:])
    assert torch.allclose(vae.guide.distribution(x).log_prob(z), q_sites, atol=1e-5)
    assert torch.allclose(vae.prior_once().log_prob(z), p_sites, atol=1e-5)
    assert [name for name, site in model.nodes.items() if site["type"] == "sample"] == ["data", "z2", "z1", "x"]


def test_hierarchy_samples_the_top_then_the_lower_level():
    top = pyro.distributions.Normal(torch.zeros(2, 1), 1.0).to_event(1)
    joint = Hierarchy(top, lambda z2: pyro.distributions.Normal(100 + z2, 0.01).to_event(1), 1)
    z = joint.sample((1000,))
    assert z.shape == (1000, 2, 2) and joint.event_shape == (2,) and joint.batch_shape == (2,)
    assert torch.allclose(z[..., 1] - z[..., 0], torch.full((1000, 2), 100.0), atol=0.1)
    assert torch.allclose(joint.mean, torch.tensor([[0.0, 100.0], [0.0, 100.0]]))


@pytest.mark.parametrize("elbo", [pyro.infer.Trace_ELBO, pyro.infer.TraceMeanField_ELBO, pyro.infer.TraceGraph_ELBO])
def test_stock_pyro_svi_trains_both_levels(mnist5k, elbo):
    vae = _hvae()
    x = prepare_test_images(mnist5k.train_images[:256], binary=True)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), elbo())
    losses = [svi.step(x) for _ in range(40)]
    assert losses[-1] < losses[0] - 2000


def test_fit_evaluate_and_the_bound_order(mnist5k):
    vae = _hvae()
    data = mnist5k.replace(train_images=mnist5k.train_images[:1000], test_images=mnist5k.test_images[:200])
    history = fit(vae, data, num_epochs=2, batch_size=50, progress=False)
    assert history[-1].test_elbo > history[0].test_elbo and history[-1].test_kl > 0
    result = evaluate(vae, prepare_test_images(data.test_images, binary=True), num_samples=200)
    assert result.log_likelihood > result.elbo  # importance sampling over both levels tightens the bound
    assert result.log_likelihood - result.elbo < 20
    assert vae.sample(4).shape == (4, 1, 28, 28) and vae.posterior_mean(data.test_images[:3]).shape == (3, 6)
    assert torch.equal(vae.fixed_latents(5, 1), vae.fixed_latents(5, 1))


@pytest.mark.parametrize("likelihood, shape", [("bernoulli", (1, 28, 28)), ("dlogistic", (3, 20, 20))])
def test_the_conv_hvae_trains_and_scores_grey_and_colour_images(likelihood, shape):
    """``--net conv``: both encoders and the decoder are convolutional (Tomczak & Welling's
    convHVAE_2level), on any image size and number of channels."""
    from pyrovae.data import ImageData
    from pyrovae.networks import ConvDecoder, ConvEncoder

    torch.manual_seed(0)
    images = (torch.rand(300, *shape) < 0.3).float() if likelihood == "bernoulli" else \
        torch.randint(0, 256, (300, *shape)).float() / 255
    data = ImageData.from_tensor(images[:240], images[240:])
    vae = build_vae(SMALL.replace(net="conv", conv_channels=4, image_shape=shape, likelihood=likelihood))
    assert isinstance(vae.guide.top.encoder, ConvEncoder) and isinstance(vae.guide.lower_encoder, ConvEncoder)
    assert isinstance(vae.decoder.net, ConvDecoder) and vae.decoder.net.latent_dim == 6
    history = fit(vae, data, num_epochs=2, batch_size=40, progress=False)
    assert history[-1].train_elbo > history[0].train_elbo
    result = evaluate(vae, data.test_images, num_samples=20)
    assert result.log_likelihood > result.elbo and vae.sample(2).shape == (2, *shape)


def test_warm_up_weights_both_levels(mnist5k):
    trainer = Trainer(_hvae(), mnist5k, batch_size=100, warmup_epochs=2)
    weight = next(c for c in trainer.callbacks if isinstance(c, KLWeight))
    assert weight.scale.sites == ("z2", "z1")


def test_codes_of_the_wrong_size_are_one_sentence():
    vae = _hvae()
    with pytest.raises(DataError, match=r"Codes have shape \(2, 3\), but this model's decoder takes \(N, 6\)"):
        vae.decode(torch.zeros(2, 3))


@pytest.mark.parametrize("changes, message", [
    (dict(guide="iaf"), "hvae has its own guide"),
    (dict(prior="categorical", guide="categorical"), "hvae has its own guide"),
])
def test_impossible_hvae_configurations(changes, message):
    with pytest.raises(ConfigError, match=message):
        build_vae(SMALL.replace(**changes))


def test_the_family_is_one_registry_line():
    assert MODELS["hvae"] == "pyrovae.hvae:HVAE" and model_family(SMALL) is HVAE


def test_command_line_trains_evaluates_samples_plots_exports_and_resumes(tmp_path):
    run = tmp_path / "run"
    cli_ok("train", "--model", "hvae", "--dataset", "mnist5k", "--z-dim", 2, "--hidden", 32, "--epochs", 1,
           "--prior", "vamp", "--pseudo-inputs", 10, "--warmup", 1, "--run-dir", run)
    # the VampPrior's KL does not split by dimension: plot kl says so
    assert CliRunner().invoke(main, ["plot", str(run), "kl", "-o", str(tmp_path / "kl.png")]).exit_code == 2
    check_family_commands(run, tmp_path, ("curves", "samples", "reconstructions", "latent", "interpolate", "evolution",
                                          "levels"))


def test_two_processes_train_the_one_process_hvae(tmp_path):
    """Both levels are sampled for the global batch and sliced by rank (ShardedSampling), so
    torchrun gives the 1-process model."""
    from test_distributed import ARGS, _torchrun

    from pyrovae.rundir import load_run
    from pyrovae.run import train_run

    result = _torchrun(*ARGS, "--model", "hvae", "--epochs", 1, "--run-dir", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    one = train_run(Config(model="hvae", dataset="mnist5k", latent_dim=4, hidden_dims=(32,), batch_size=300,
                           num_epochs=1), tmp_path / "one", progress=False)
    a, b = load_run(one.run_dir)[1].state_dict(), load_run(tmp_path / "two")[1].state_dict()
    assert all(torch.allclose(a[name], b[name], atol=1e-5) for name in a)


def test_temperature_scales_every_level_and_the_levels_figure_fixes_the_upper_one(tmp_path):
    from pyrovae.plots import PLOTS

    vae = _hvae()
    torch.manual_seed(0)
    cold, warm = vae.prior_codes(4000, temperature=0.25), vae.prior_codes(4000)
    assert cold[:, :3].std().item() == pytest.approx(0.25, rel=0.1) and warm[:, :3].std().item() == pytest.approx(
        1.0, rel=0.1)
    lower_cold = cold[:, 3:] - vae.model.conditional(cold[:, :3]).mean  # z1's own noise, given z2
    lower_warm = warm[:, 3:] - vae.model.conditional(warm[:, :3]).mean
    assert lower_cold.std() < 0.4 * lower_warm.std()
    grid = vae.level_grid(3, 4, seed=0)
    assert grid.shape == (12, 1, 28, 28) and torch.equal(grid, vae.level_grid(3, 4, seed=0))
    assert "levels" in PLOTS and "levels" not in HVAE.skipped_figures
    with pytest.raises(ConfigError, match="temperature must be a positive number"):
        vae.sample(2, temperature=0)


def test_the_command_line_samples_at_a_temperature_and_draws_the_levels(tmp_path, trained_run):
    run, runner = tmp_path / "run", CliRunner()
    result = runner.invoke(main, ["train", "--model", "hvae", "--dataset", "mnist5k", "--z-dim", "2", "--hidden",
                                  "16", "--epochs", "1", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["sample", str(run), "-n", "4", "-t", "0.5", "-o", str(tmp_path / "s.png"),
                                  "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["temperature"] == 0.5, result.output
    assert runner.invoke(main, ["plot", str(run), "levels", "-o", str(tmp_path / "l.png")]).exit_code == 0
    one_level = runner.invoke(main, ["plot", str(trained_run), "levels", "-o", str(tmp_path / "x.png")])
    assert one_level.exit_code == 2 and "one level of latents" in one_level.output


def test_kl_per_dimension_of_each_level_sums_to_the_elbos_kl_term(mnist5k, tmp_path):
    """Per level and dimension, closed-form KLs given a sampled z2: their sum is the KL term
    the ELBO estimates (one sample of both levels), up to Monte Carlo error; the figure draws
    one panel a level and the JSON reports each level's active units."""
    from pyrovae.evaluation import elbo_terms

    vae = _hvae()
    data = mnist5k.replace(train_images=mnist5k.train_images[:1000], test_images=mnist5k.test_images[:500])
    fit(vae, data, num_epochs=2, batch_size=50, progress=False)
    images = prepare_test_images(data.test_images, binary=True)
    torch.manual_seed(1)
    per_dimension = vae.eval().kl_per_dimension(images)
    assert per_dimension.shape == (6,) and vae.code_levels() == {"z2": 3, "z1": 3}
    assert per_dimension.sum().item() == pytest.approx(elbo_terms(vae, images).kl, rel=0.1)
    vamp = _hvae(prior="vamp", num_pseudo_inputs=5)
    with pytest.raises(ConfigError, match="needs a diagonal Normal p\\(z2\\)"):
        vamp.kl_per_dimension(images[:10])


def test_unseeded_prior_samples_draw_every_level(tmp_path):
    """plot_samples(seed=None) draws codes of both levels (it drew p(z2) alone, half a code)."""
    from pyrovae.analysis import RunView
    from pyrovae.plots import plot_samples

    run = tmp_path / "run"
    cli_ok("train", "--model", "hvae", "--dataset", "mnist5k", "--z-dim", 2, "--hidden", 16, "--epochs", 1,
           "--run-dir", run)
    assert plot_samples(RunView(run, num_images=50), count=4, seed=None) is not None


def test_the_kl_figure_has_a_panel_a_level(tmp_path):
    run, runner = tmp_path / "run", CliRunner()
    assert runner.invoke(main, ["train", "--model", "hvae", "--dataset", "mnist5k", "--z-dim", "2", "--hidden",
                                "16", "--epochs", "1", "--run-dir", str(run)]).exit_code == 0
    result = runner.invoke(main, ["plot", str(run), "kl", "-o", str(tmp_path / "kl.png"), "--num-images", "100",
                                  "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["levels"]) == {"z2", "z1"} and report["latent_dim"] == 4
    assert all(level["dimensions"] == 2 for level in report["levels"].values())
