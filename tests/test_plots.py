import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pyro.distributions import Normal

from pyrovae.analysis import Latents, RunView, active_units, describe_activity, kl_per_dimension, principal_axes, slerp
from pyrovae.config import Config
from pyrovae.plots import DPI, PLOTS, kinds_for, save_figure


@pytest.fixture(scope="module")
def views(trained_run, trained_run_2d):
    return {"4d": RunView(trained_run, num_images=300), "2d": RunView(trained_run_2d, num_images=300)}


@pytest.mark.parametrize("latent", ["2d", "4d"])
@pytest.mark.parametrize("kind", kinds_for(Config()))
def test_every_kind_writes_a_png_of_the_expected_size_that_is_not_blank(views, tmp_path, kind, latent):
    figure = PLOTS[kind](views[latent])
    width, height = (round(v * DPI) for v in figure.get_size_inches())
    path = tmp_path / f"{kind}.png"
    save_figure(figure, path)
    image = Image.open(path)
    image.load()
    assert image.format == "PNG" and image.size == (width, height)
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 20, "the figure looks blank"
    for ax in figure.axes:
        assert ax.get_title(), f"every panel of {kind} has a title"


def test_axes_say_what_they_show(views):
    assert PLOTS["latent"](views["2d"]).axes[0].get_xlabel() == "z[0]"
    assert "principal component 1" in PLOTS["latent"](views["4d"]).axes[0].get_xlabel()
    assert "principal direction" in PLOTS["manifold"](views["4d"]).axes[0].get_xlabel()
    assert "quantiles" in PLOTS["manifold"](views["2d"]).axes[0].get_xlabel()
    legend = PLOTS["latent"](views["4d"]).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [str(d) for d in range(10)]
    curves = PLOTS["curves"](views["4d"])
    assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() == "nats per image" for ax in curves.axes)


def test_active_unit_count_matches_a_direct_computation(views):
    view = views["4d"]
    with torch.no_grad():
        means = torch.cat([view.vae.encode(x).mean for x in view.images.split(100)])
    direct = int((means.var(dim=0) > 0.01).sum())
    activity, active = active_units(view.latents.loc)
    assert int(active.sum()) == direct
    assert torch.allclose(activity, means.var(dim=0), atol=1e-6)
    title = PLOTS["kl"](view).axes[0].get_title()
    assert f"{direct} of 4 units active" in title


def test_units_that_pass_burdas_test_on_a_collapsed_code_are_not_reported_as_a_used_code():
    # What a collapsed run shows: posterior means that move a little (variance 0.0225 > 0.01),
    # at the prior's scale, so each of the 20 units carries about 0.011 nats.
    torch.manual_seed(0)
    loc, scale = torch.randn(5000, 20) * 0.15, torch.ones(5000, 20)
    _, active = active_units(loc)
    kl = kl_per_dimension(Latents(loc, scale, torch.zeros(5000)), Normal(torch.zeros(20), torch.ones(20)).to_event(1))
    assert int(active.sum()) == 20 and 0.15 < kl.sum() < 0.3
    words = describe_activity(active, float(kl.sum()))
    assert words.startswith("20 of 20 units active") and "carries 0.2 nats per image (collapsed" in words
    assert "collapsed" not in describe_activity(active, 25.0)


def test_kl_per_dimension_sums_to_the_total_kl(views):
    view = views["4d"]
    per_dim = kl_per_dimension(view.latents, view.vae.prior())
    with torch.no_grad():
        total = torch.distributions.kl_divergence(view.vae.encode(view.images), view.vae.prior()).mean()
    assert per_dim.shape == (4,) and (per_dim >= 0).all()
    assert per_dim.sum() == pytest.approx(total.item(), rel=1e-4)


def test_principal_axes_find_the_direction_of_largest_variance():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(2000, 3, generator=g) * torch.tensor([5.0, 1.0, 0.2]) + torch.tensor([1.0, 2.0, 3.0])
    mean, directions, sd, ratio = principal_axes(points)
    assert torch.allclose(mean, torch.tensor([1.0, 2.0, 3.0]), atol=0.3)
    assert abs(directions[0, 0]) > 0.99 and abs(directions[1, 1]) > 0.99
    assert sd[0] == pytest.approx(5.0, rel=0.1) and ratio[0] > 0.9


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), dim=st.integers(2, 6))
def test_slerp_stays_on_the_sphere_and_hits_both_ends(seed, dim):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(3, dim, generator=g, dtype=torch.float64), torch.randn(3, dim, generator=g, dtype=torch.float64)
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    path = slerp(a, b, torch.linspace(0, 1, 7, dtype=torch.float64))
    assert torch.allclose(path[:, 0], a, atol=1e-6) and torch.allclose(path[:, -1], b, atol=1e-6)
    assert torch.allclose(path.norm(dim=-1), torch.ones(3, 7, dtype=torch.float64), atol=1e-6)
    assert math.isfinite(path.sum().item())


def test_the_cli_lists_every_kind():
    from pyrovae.cli.plot import KINDS
    from pyrovae.report import CAPTIONS

    assert KINDS == tuple(PLOTS) == tuple(CAPTIONS)
