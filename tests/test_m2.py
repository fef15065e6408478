import math

import numpy as np
import pyro
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pyrovae.config import Config
from pyrovae.errors import ConfigError
from pyrovae.m2 import CLASSIFIER_SITE, M2_ELBO, balanced_labels
from pyrovae.registry import build_elbo, build_vae
from pyrovae.train import Trainer, direct_call, fit

SMALL_CONFIG = Config(model="m2", latent_dim=4, hidden_dims=(64,))


def _m2():
    torch.manual_seed(0)
    return build_vae(SMALL_CONFIG)


def test_enumeration_sums_over_all_ten_classes(mnist5k):
    """Trace the guide under TraceEnum_ELBO's enumeration: the class site carries all ten
    values at once, q(z|x,y) is built for each, and the model's likelihood is scored for
    every (class, image) pair."""
    from pyro import poutine
    from pyro.infer.enum import config_enumerate

    vae = _m2()
    x = torch.bernoulli(mnist5k.train_images[:7])
    guide = poutine.enum(config_enumerate(vae.guide), first_available_dim=-2)
    guide_trace = poutine.trace(guide).get_trace(x)
    y = guide_trace.nodes["y"]["value"]
    assert guide_trace.nodes["y"]["infer"]["enumerate"] == "parallel"
    assert y.shape == (10, 1)
    assert torch.equal(y.squeeze(1), torch.arange(10))
    assert guide_trace.nodes["z"]["value"].shape == (10, 7, 4)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert model_trace.nodes["x"]["fn"].batch_shape == (10, 7)
    # The enumerated bound equals the sum over classes written out by hand.
    pyro.set_rng_seed(3)
    loss = build_elbo(SMALL_CONFIG).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    qz = vae.guide.distribution(x, vae.all_classes())
    z = qz.rsample()
    qy = torch.softmax(vae.guide.class_logits(x), -1).T
    log_p = vae.prior().log_prob(z) + vae.likelihood(vae.model.decoder_output(z, vae.all_classes())).log_prob(x)
    terms = qy * (log_p - qz.log_prob(z) + math.log(0.1) - qy.log())
    assert loss.item() == pytest.approx(-terms.sum().item(), rel=1e-4)


def test_labelled_and_unlabelled_batches_give_finite_losses(mnist5k):
    vae = _m2()
    x = torch.bernoulli(mnist5k.train_images[:32])
    model, guide = direct_call(vae.model), direct_call(vae.guide)
    unlabelled = build_elbo(SMALL_CONFIG).differentiable_loss(model, guide, x)
    labelled = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x, mnist5k.train_labels[:32])
    assert torch.isfinite(unlabelled) and torch.isfinite(labelled)
    # Both are negative ELBOs per image of binarized digits: positive, and of the same order as a VAE's.
    assert 0 < labelled.item() / 32 < 1000 and 0 < unlabelled.item() / 32 < 1000


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_m2_elbo_adds_the_weighted_classifier_term_to_the_stock_bound(mnist5k):
    """A known label: M2_ELBO = L(x, y) (what Pyro's stock ELBO computes, the auxiliary site
    masked out) minus alpha log q(y|x). Mixed rows: the sum of the two kinds."""
    vae = _m2()
    x, y = torch.bernoulli(mnist5k.train_images[:16]), mnist5k.train_labels[:16]
    model, guide = direct_call(vae.model), direct_call(vae.guide)
    log_q = torch.distributions.Categorical(logits=vae.guide.class_logits(x)).log_prob(y).sum()
    pyro.set_rng_seed(4)
    stock = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x, y)
    pyro.set_rng_seed(4)
    ours = M2_ELBO(classifier_weight=7.0).differentiable_loss(model, guide, x, y)
    assert ours.item() == pytest.approx(stock.item() - 7.0 * log_q.item(), rel=1e-5)
    trace = pyro.poutine.trace(vae.guide).get_trace(x, y)
    assert trace.nodes[CLASSIFIER_SITE]["mask"] is False
    hidden = torch.where(torch.arange(16) % 2 == 0, y, -1)
    pyro.set_rng_seed(5)
    mixed = M2_ELBO(classifier_weight=7.0).differentiable_loss(model, guide, x, hidden)
    pyro.set_rng_seed(5)
    parts = (M2_ELBO(classifier_weight=7.0).differentiable_loss(model, guide, x[1::2])
             + M2_ELBO(classifier_weight=7.0).differentiable_loss(model, guide, x[::2], y[::2]))
    assert mixed.item() == pytest.approx(parts.item(), rel=1e-5)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize("elbo", ["TraceEnum_ELBO", "Trace_ELBO", "TraceGraph_ELBO"])
def test_a_stock_elbo_on_labelled_images_gives_the_classifier_no_gradient(mnist5k, elbo):
    """L(x, y) with y observed does not involve q(y|x): the classifier's only gradient is
    M2_ELBO's weighted term. (A masked observed site in the guide kept its score function,
    a gradient of norm ~1e4 that trained the classifier away from the labels.)"""
    vae = _m2()
    x, y = torch.bernoulli(mnist5k.train_images[:16]), mnist5k.train_labels[:16]
    objective = getattr(pyro.infer, elbo)(max_plate_nesting=1)
    objective.loss_and_grads(vae.model, vae.guide, x, y)  # what SVI calls
    assert all(p.grad is None or not p.grad.any() for p in vae.guide.classifier.parameters())
    assert all(p.grad is not None and p.grad.any() for p in vae.guide.encoder.parameters())


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_stock_svi_on_labelled_batches_keeps_the_classifiers_accuracy(mnist5k):
    vae = _m2()
    fit(vae, mnist5k, num_epochs=1, labels=balanced_labels(mnist5k.train_labels, 100, 10, seed=0), progress=False)
    test_x, test_y = mnist5k.test_images[:500], mnist5k.test_labels[:500]
    before = vae.accuracy(test_x, test_y)
    assert before > 0.5
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                         pyro.infer.TraceEnum_ELBO(max_plate_nesting=1))
    for index in torch.randperm(4000)[:2000].split(100):  # 20 steps
        svi.step(torch.bernoulli(mnist5k.train_images[index]), mnist5k.train_labels[index])
    assert vae.accuracy(test_x, test_y) >= before


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_svi_with_m2_elbo_optimizes_m2_elbo_hidden_labels_included(mnist5k):
    """SVI calls loss_and_grads, not differentiable_loss: both must be M2's objective, with
    -1 rows summed over the classes rather than refused as negative class values."""
    vae = _m2()
    x, y = torch.bernoulli(mnist5k.train_images[:16]), mnist5k.train_labels[:16]
    hidden = torch.where(torch.arange(16) % 2 == 0, y, -1)
    pyro.set_rng_seed(3)
    expected = M2_ELBO(classifier_weight=7.0).differentiable_loss(vae.model, vae.guide, x, hidden)
    expected.backward()
    expected_grads = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()
    pyro.set_rng_seed(3)
    loss = M2_ELBO(classifier_weight=7.0).loss_and_grads(vae.model, vae.guide, x, hidden)
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert all(torch.allclose(p.grad, g) for p, g in zip(vae.parameters(), expected_grads))
    pyro.set_rng_seed(3)
    assert M2_ELBO(classifier_weight=7.0).loss(vae.model, vae.guide, x, hidden) == pytest.approx(loss, rel=1e-6)
    pyro.set_rng_seed(3)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), M2_ELBO(classifier_weight=7.0))
    assert svi.step(x, hidden) == pytest.approx(loss, rel=1e-6)


def test_textbook_svi_loop_trains_m2_with_trace_enum_elbo(mnist5k):
    """Pyro's SVI and pyro.optim with the stock TraceEnum_ELBO on unlabelled images: the
    class is summed out, and the held-out bound improves."""
    from pyrovae.evaluation import elbo_terms
    from pyrovae.data import prepare_test_images

    vae = _m2()
    test = prepare_test_images(mnist5k.test_images[:300], binary=True)
    before = elbo_terms(vae, test).elbo
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                         pyro.infer.TraceEnum_ELBO(max_plate_nesting=1))
    for index in torch.randperm(4000)[:2000].split(100):
        svi.step(torch.bernoulli(mnist5k.train_images[index]))
    assert elbo_terms(vae, test).elbo > before + 100


def test_infer_discrete_returns_the_most_probable_class(mnist5k):
    """pyro.infer.infer_discrete on the model, with z replayed from the guide: a class index
    per image, the argmax over y of log p(y) + log p(x | y, z), computed here by hand."""
    from pyro import poutine
    from pyro.infer import config_enumerate, infer_discrete

    vae = _m2()
    fit(vae, mnist5k, num_epochs=1, labels=balanced_labels(mnist5k.train_labels, 100, 10, seed=0), progress=False)
    x = torch.bernoulli(mnist5k.test_images[::50])
    guide_trace = poutine.trace(poutine.block(vae.guide, hide=["y"])).get_trace(x)
    model = infer_discrete(poutine.replay(config_enumerate(vae.model), trace=guide_trace),
                           first_available_dim=-2, temperature=0)
    y = poutine.trace(model).get_trace(x).nodes["y"]["value"]
    assert y.shape == (20,) and y.dtype == torch.long
    with torch.no_grad():
        z = guide_trace.nodes["z"]["value"]
        scores = vae.likelihood(vae.model.decoder_output(z, vae.all_classes())).log_prob(x)  # (10, 20)
    assert torch.equal(y, scores.argmax(0))
    assert len(set(y.tolist())) > 1


def test_balanced_labels_are_balanced_reproducible_and_checked(mnist5k):
    visible = balanced_labels(mnist5k.train_labels, 100, 10, seed=0)
    shown = visible[visible >= 0]
    assert len(shown) == 100 and torch.equal(torch.bincount(shown, minlength=10), torch.full((10,), 10))
    assert torch.equal(shown, mnist5k.train_labels[visible >= 0])
    assert torch.equal(visible, balanced_labels(mnist5k.train_labels, 100, 10, seed=0))
    assert not torch.equal(visible, balanced_labels(mnist5k.train_labels, 100, 10, seed=1))
    few = balanced_labels(mnist5k.train_labels, 25, 10, 0)
    counts = torch.bincount(few[few >= 0], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert torch.equal(balanced_labels(mnist5k.train_labels, None, 10, 0), mnist5k.train_labels)
    with pytest.raises(ConfigError, match="fewer than one image per class"):
        balanced_labels(mnist5k.train_labels, 5, 10, 0)
    with pytest.raises(ConfigError, match="more than the 4000 training images"):
        balanced_labels(mnist5k.train_labels, 4001, 10, 0)


def test_classifier_beats_chance_by_far_with_100_labels(mnist5k):
    vae = _m2()
    labels = balanced_labels(mnist5k.train_labels, 100, 10, seed=0)
    history = fit(vae, mnist5k, num_epochs=2, labels=labels, progress=False)
    accuracy = vae.accuracy(mnist5k.test_images, mnist5k.test_labels)
    assert accuracy > 0.6  # chance is 0.1
    assert history[1].test_elbo > history[0].test_elbo
    assert history[1].test_elbo == pytest.approx(history[1].test_reconstruction - history[1].test_kl)


def test_log_likelihood_sums_classes_exactly_and_bounds_the_elbo(mnist5k):
    from pyrovae.evaluation import elbo_terms, log_likelihood

    vae = _m2()
    x = torch.bernoulli(mnist5k.test_images[:20])
    elbo = elbo_terms(vae, x).elbo
    ll = log_likelihood(vae, x, num_samples=200)
    assert ll > elbo
    with torch.no_grad():  # k = 1 with all classes: logsumexp_y of one-sample estimates, by hand
        p = vae.prior()
        torch.manual_seed(5)
        got = vae.log_marginal(x, p, 1, 1)
        torch.manual_seed(5)
        y = vae.all_classes()
        qz = vae.guide.distribution(x, y)
        z = qz.sample((1,))
        log_w = p.log_prob(z) + vae.likelihood(vae.model.decoder_output(z, y)).log_prob(x) - qz.log_prob(z)
        assert torch.allclose(got, torch.logsumexp(log_w[0] + math.log(0.1), 0), atol=1e-4)


def test_sample_draws_the_asked_class_and_refuses_others():
    vae = _m2()
    assert vae.sample(6, label=7).shape == (6, 1, 28, 28)
    assert torch.equal(vae.sample(2, label="7", z=torch.zeros(2, 4)), vae.sample(2, label=7, z=torch.zeros(2, 4)))
    for wrong in (10, "ten", -1, True):
        with pytest.raises(ConfigError, match="is not a class of this model; name one of its 10 classes .* 0 to 9"):
            vae.sample(2, label=wrong)
    assert vae.styles(torch.zeros(3, 4)).shape == (30, 1, 28, 28)


@pytest.mark.parametrize("changes, message", [
    (dict(guide="iaf"), "model m2 has its own guide"),
    (dict(model="vae", num_labels=100), "num_labels applies to a model with classes"),
    (dict(logvar_range=(-6.0, 2.0)), "model m2 has its own"),
    (dict(model="m3"), "Unknown model 'm3'"),
])
def test_impossible_m2_configurations(changes, message):
    from pyrovae.registry import validate

    with pytest.raises(ConfigError, match=message):
        validate(SMALL_CONFIG.replace(**changes))


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory):
    from pyrovae.cli import main

    run = tmp_path_factory.mktemp("m2") / "run"
    result = CliRunner().invoke(main, ["train", "--model", "m2", "--labels", "100", "--dataset", "mnist5k",
                                       "--z-dim", "4", "--hidden", "64", "--epochs", "2", "--run-dir", str(run)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run


def test_cli_m2_train_sample_evaluate_and_styles(m2_run, tmp_path):
    from pyrovae.cli import main

    runner = CliRunner()
    out = tmp_path / "sevens.png"
    result = runner.invoke(main, ["sample", str(m2_run), "--digit", "7", "-n", "16", "-o", str(out)])
    assert result.exit_code == 0 and "16 mean images of class 7" in result.output, result.output
    assert np.asarray(Image.open(out).convert("L")).shape == (4 * 28 + 5 * 2,) * 2
    result = runner.invoke(main, ["evaluate", str(m2_run), "-k", "5", "--num-images", "200"])
    assert result.exit_code == 0 and "classifier accuracy" in result.output, result.output
    accuracy = float(result.output.split("classifier accuracy")[1].split("%")[0])
    assert 30 < accuracy <= 100
    styles = tmp_path / "styles.png"
    result = runner.invoke(main, ["plot", str(m2_run), "styles", "-o", str(styles), "--num-images", "50"])
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(styles).convert("L"), float)
    assert image.std() > 20
    result = runner.invoke(main, ["plot", str(m2_run), "manifold", "--num-images", "50", "-o", str(tmp_path / "m.png")])
    assert result.exit_code == 2 and "styles figure" in result.output and "Traceback" not in result.output


def test_cli_digit_errors(m2_run, trained_run, tmp_path):
    from pyrovae.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["sample", str(m2_run), "--digit", "12", "-o", str(tmp_path / "a.png")])
    assert result.exit_code == 2 and "'12' is not a class of this model" in result.output
    result = runner.invoke(main, ["sample", str(trained_run), "--class", "3", "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 2 and "--class needs a model with classes" in result.output
    assert not (tmp_path / "b.png").exists()
    result = runner.invoke(main, ["plot", str(trained_run), "styles", "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 2 and "needs a model with classes" in result.output
    result = runner.invoke(main, ["train", "--model", "m2", "--labels", "few", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "'few' is neither a number of labels nor 'all'" in result.output
    result = runner.invoke(main, ["train", "--model", "m2", "--labels", "5", "--dataset", "mnist5k",
                                  "--run-dir", str(tmp_path / "r5")])
    assert result.exit_code == 2 and "fewer than one image per class" in result.output
    assert not (tmp_path / "r5").exists()


def test_classes_come_from_the_data_a_folder_of_four_classes(tmp_path):
    """M2 on a folder of 4 class subfolders has 4 classes, named by the folders: styles and the
    report draw 4 columns, sample takes a class by name or index, and a fifth is one sentence."""
    from PIL import ImageDraw

    from pyrovae.cli import main

    folder = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    names = ["circle", "cross", "square", "triangle"]
    for name in names:
        (folder / name).mkdir(parents=True)
        for i in range(30):
            image = Image.new("L", (16, 16), 0)
            draw, (x, y) = ImageDraw.Draw(image), rng.integers(1, 6, 2)
            left, top, right, bottom = int(x), int(y), int(x) + 9, int(y) + 9
            if name == "circle":
                draw.ellipse([left, top, right, bottom], fill=255)
            elif name == "square":
                draw.rectangle([left, top, right, bottom], fill=255)
            elif name == "cross":
                draw.line([left, top, right, bottom], fill=255, width=2)
            else:
                draw.polygon([left, bottom, right, bottom, (left + right) // 2, top], fill=255)
            image.save(folder / name / f"{i}.png")
    runner, run = CliRunner(), tmp_path / "run"
    result = runner.invoke(main, ["train", "--model", "m2", "--data", str(folder), "--likelihood", "bernoulli",
                                  "--z-dim", "2", "--hidden", "32", "--epochs", "1", "--batch-size", "24",
                                  "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    import json

    assert json.loads((run / "config.json").read_text())["class_names"] == names
    result = runner.invoke(main, ["plot", str(run), "styles", "-o", str(tmp_path / "styles.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "styles.png").size[0] > 0
    result = runner.invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    for label, shown in (("square", "square"), ("1", "cross")):
        result = runner.invoke(main, ["sample", str(run), "--class", label, "-n", "4", "-o", str(tmp_path / "s.png")])
        assert result.exit_code == 0 and f"of class {shown}" in result.output, result.output
    result = runner.invoke(main, ["sample", str(run), "--digit", "7", "-o", str(tmp_path / "seven.png")])
    assert result.exit_code == 2 and "name one of its 4 classes (circle, cross, square, triangle)" in result.output
    assert not (tmp_path / "seven.png").exists()


def test_figure_kinds_of_an_m2_run():
    from pyrovae.plots import kinds_for

    kinds = kinds_for(SMALL_CONFIG)
    assert "styles" in kinds and "manifold" not in kinds and "interpolate" not in kinds
    assert "styles" not in kinds_for(Config())


def test_a_weight_on_z_kl_trains_and_scores_the_true_elbo(mnist5k):
    """--beta for M2 scales log p(z) and log q(z|x,y) only (the class term is untouched);
    the reported test ELBO stays the unweighted bound."""

    from pyrovae.evaluation import elbo_terms

    vae = _m2()
    data = mnist5k.replace(train_images=mnist5k.train_images[:1000], train_labels=mnist5k.train_labels[:1000])
    trainer = Trainer(vae, data, labels=balanced_labels(data.train_labels, 50, 10, 0), batch_size=100,
                      elbo=build_elbo(SMALL_CONFIG), beta=3.0)
    assert trainer.weighted
    metrics = trainer.run_epoch(progress=False)
    assert math.isfinite(metrics.train_elbo)
    assert metrics.test_elbo == pytest.approx(elbo_terms(vae, trainer.test_images).elbo)


def test_m2_refuses_data_without_classes_or_with_more_than_ten(mnist5k):
    from pyrovae.data import ImageData
    from pyrovae.errors import ConfigError
    from pyrovae.m2 import M2VAE

    config = Config(model="m2")
    flat = ImageData.from_tensor(mnist5k.train_images[:100], mnist5k.test_images[:20])
    with pytest.raises(ConfigError, match="learns from class labels, but the images of tensor have none"):
        M2VAE.training_labels(config, flat)
    many = ImageData.from_tensor(mnist5k.train_images[:100], mnist5k.test_images[:20],
                                 train_labels=torch.arange(100) % 12, test_labels=torch.arange(20) % 12)
    with pytest.raises(ConfigError, match="has 10 classes, but tensor has labels up to 11"):
        M2VAE.training_labels(config, many)
