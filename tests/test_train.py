import math

import pyro
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pyrovae.config import Config
from pyrovae.errors import ConfigError, NumericalError
from pyrovae.evaluation import elbo_terms
from pyrovae.registry import LIKELIHOODS, build_elbo, build_vae
from pyrovae.data import prepare_test_images
from pyrovae.distributed import Distributed
from pyrovae.train import AdamNormGrad, Callback, Trainer, adam, fit


def test_elbo_improves_over_a_few_hundred_steps_on_real_digits(mnist5k):
    torch.manual_seed(0)
    vae = build_vae(Config())

    class Seen(Callback):  # the run hooks, in their order
        events: list = []

        def on_run_start(self, run):
            self.events.append(("start", run.first_epoch))

        def on_epoch_saved(self, run, metrics, pictures):
            self.events.append(metrics)

        def on_run_end(self, run):
            self.events.append("end")

        def close(self):
            self.events.append("close")

    history = fit(vae, mnist5k, num_epochs=8, progress=False, callbacks=[Seen()])  # 8 x 32 steps
    assert Seen.events == [("start", 1), *history, "end", "close"] and [m.epoch for m in history] == list(range(1, 9))
    assert history[-1].test_elbo > history[0].test_elbo + 40
    assert history[-1].train_elbo > history[0].train_elbo + 60
    assert all(m.test_kl > 0 and m.test_reconstruction < 0 for m in history)
    assert history[-1].test_elbo == pytest.approx(history[-1].test_reconstruction - history[-1].test_kl)


def test_meanfield_elbo_trains(mnist5k):
    vae = build_vae(Config(elbo="meanfield", hidden_dims=(64,)))
    history = fit(vae, mnist5k, num_epochs=2, elbo=build_elbo(Config(elbo="meanfield")), progress=False)
    assert history[1].test_elbo > history[0].test_elbo


def test_nan_loss_stops_with_the_step_and_a_hint(mnist5k):
    vae = build_vae(Config(hidden_dims=(32,)))
    with torch.no_grad():
        vae.decoder.out.bias[0] = float("nan")
    expected = r"became nan at epoch 1, step 1; try a lower learning rate \(now 0.001\)\.$"
    with pytest.raises(NumericalError, match=expected):
        fit(vae, mnist5k, num_epochs=1, progress=False)


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_bounded_scales_keep_extreme_settings_finite(mnist5k, likelihood):
    """A learning rate of 1 (1,000 times the default) and a fixed pixel scale of 1e-4 give
    terrible models but no NaN: every scale in pyrovae is bounded away from zero."""

    config = Config(likelihood=likelihood, likelihood_scale=1e-4 if likelihood == "gaussian" else 0.5,
                    hidden_dims=(64,))
    data = mnist5k.replace(train_images=mnist5k.train_images[:2000])
    history = fit(build_vae(config), data, num_epochs=2, lr=1.0, progress=False)
    assert all(math.isfinite(m.train_elbo) and math.isfinite(m.test_elbo) for m in history)


def test_batch_larger_than_the_data_is_refused(mnist5k):
    with pytest.raises(ConfigError, match="larger than the 4000 training images"):
        Trainer(build_vae(Config(hidden_dims=(32,))), mnist5k, batch_size=4001)


def _trainer(data, seed=0):
    torch.manual_seed(seed)
    return Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=3)), data, batch_size=256)


def test_stop_and_resume_mid_epoch_is_bit_identical(mnist5k):
    straight = _trainer(mnist5k)
    for _ in range(2):
        straight.run_epoch(progress=False)

    stopped = _trainer(mnist5k)
    polls = iter(range(100))
    assert stopped.run_epoch(should_stop=lambda: next(polls) == 7, progress=False) is None
    assert stopped.step == 7
    state = stopped.state_dict()
    torch.manual_seed(123)  # anything the process does in between must not matter

    resumed = _trainer(mnist5k, seed=99)
    resumed.vae.load_state_dict(state["model"])
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.run_epoch(progress=False)
    assert [m.test_elbo for m in resumed.history] == [m.test_elbo for m in straight.history]
    assert [m.train_elbo for m in resumed.history] == [m.train_elbo for m in straight.history]
    for a, b in zip(straight.vae.parameters(), resumed.vae.parameters()):
        assert torch.equal(a, b)


def test_grey_images_outside_the_unit_interval_are_refused(mnist5k):

    from pyrovae.errors import DataError

    bad = mnist5k.replace(train_images=mnist5k.train_images * 255)
    with pytest.raises(DataError, match=r"not scaled to \[0, 1\]"):
        Trainer(build_vae(Config(hidden_dims=(32,))), bad)


@pytest.mark.parametrize("elbo", ["trace", "meanfield"])
def test_trainer_step_matches_plain_pyro_svi_loss_and_gradients(mnist5k, elbo):
    """The fast path (model and guide called without PyroModule's call context, pyrovae's
    ELBO without its end-of-loss syncs) must compute exactly what Pyro's standard path computes on the same batch
    and noise: Pyro's own ELBO class through PyroModule.__call__."""
    import pyro

    from pyrovae.train import direct_call

    config = Config(likelihood="gaussian_learned", hidden_dims=(32,), elbo=elbo)
    torch.manual_seed(0)
    vae = build_vae(config)
    fast = build_elbo(config)
    slow = {"trace": pyro.infer.Trace_ELBO, "meanfield": pyro.infer.TraceMeanField_ELBO}[elbo]()
    assert type(fast) is not type(slow) and isinstance(fast, type(slow))
    x = mnist5k.train_images[:64]
    results = []
    for loss_fn, model, guide in ((slow, vae.model, vae.guide), (fast, direct_call(vae.model), direct_call(vae.guide))):
        vae.zero_grad()
        pyro.set_rng_seed(1)
        loss = loss_fn.differentiable_loss(model, guide, x)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in vae.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert len(grads_a) == len(list(vae.parameters())) == 11
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_fast_path_reaches_the_test_elbo_of_the_plain_pyro_loop(mnist5k):
    """Three epochs with the same seed: the Trainer (fused Adam, ELBO without its end-of-loss syncs, direct calls,
    device-side loss sums) and the textbook loop (Pyro's Trace_ELBO through PyroModule calls,
    torch's default Adam, a float loss per step) end at the same test ELBO within noise."""
    import pyro

    from pyrovae.evaluation import elbo_terms
    from pyrovae.data import prepare_test_images

    config = Config(hidden_dims=(64,))
    torch.manual_seed(0)
    fast = Trainer(build_vae(config), mnist5k, batch_size=128)
    assert fast.optimizer.defaults["fused"]
    for _ in range(3):
        fast.run_epoch(progress=False)

    torch.manual_seed(0)
    vae = build_vae(config)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    elbo = pyro.infer.Trace_ELBO()
    first = None
    for _ in range(3):
        for index in torch.randperm(len(mnist5k.train_images)).split(128):
            optimizer.zero_grad()
            loss = elbo.differentiable_loss(vae.model, vae.guide, torch.bernoulli(mnist5k.train_images[index]))
            (loss / len(index)).backward()
            optimizer.step()
            first = first if first is not None else loss.item() / len(index)
    slow_elbo = elbo_terms(vae, prepare_test_images(mnist5k.test_images, binary=True)).elbo
    assert -first < slow_elbo - 100  # both really trained
    assert fast.history[-1].test_elbo == pytest.approx(slow_elbo, abs=0.5)  # equal on CPU in practice


@pytest.mark.parametrize("module_local", [False, True])
def test_pyro_elbo_module_with_a_torch_optimizer_trains_every_parameter(mnist5k, module_local):
    """Pyro's examples/svi_torch.py pattern: the ELBO as an nn.Module whose parameters() are
    the model's and guide's, and a torch optimizer; with Pyro's default settings, and with
    module-local parameters as svi_torch.py sets them (then the global store stays empty)."""
    import pyro
    from pyro.infer import Trace_ELBO

    with pyro.settings.context(module_local_params=module_local):
        vae = build_vae(Config(hidden_dims=(32,)))
        loss_fn = Trace_ELBO()(vae.model, vae.guide)
        assert {id(p) for p in loss_fn.parameters()} == {id(p) for p in vae.parameters()}
        before = [p.clone() for p in vae.parameters()]
        optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
        x = torch.bernoulli(mnist5k.train_images[:64])
        losses = []
        for _ in range(30):
            optimizer.zero_grad()
            loss = loss_fn(x)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert sum(losses[-5:]) < sum(losses[:5])
    names = list(pyro.get_param_store().keys())
    assert names == [] if module_local else all(name.startswith(vae.name + ".") for name in names) and names


def test_fit_takes_a_torchvision_data_set_object():
    from torchvision.datasets import FakeData

    vae = build_vae(Config(likelihood="dlogistic", net="conv", image_shape=(3, 8, 8), latent_dim=2,
                           hidden_dims=(16,), conv_channels=4))
    history = fit(vae, FakeData(size=40, image_size=(3, 8, 8)), num_epochs=2, batch_size=12, progress=False)
    assert len(history) == 2 and all(math.isfinite(m.test_elbo) for m in history)


def test_fit_draws_no_progress_bar_when_nobody_watches(mnist5k, capsys):
    vae = build_vae(Config(latent_dim=2, hidden_dims=(16,)))
    small = mnist5k.from_tensor(mnist5k.train_images[:200], mnist5k.test_images[:50])
    fit(vae, small, num_epochs=1)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""  # pytest's stderr is not a terminal


def test_a_discrete_likelihood_refuses_pixels_off_the_8_bit_grid_before_training(mnist5k):
    from pyrovae.errors import DataError

    vae = build_vae(Config(latent_dim=2, hidden_dims=(16,), likelihood="dlogistic"))
    blurred = mnist5k.from_tensor(mnist5k.train_images[:200] * 0.999, mnist5k.test_images[:50])
    with pytest.raises(DataError, match="The training images of .* hold pixel values outside what "
                                        "DiscretizedLogisticLikelihood models"):
        Trainer(vae, blurred)


def _adam_step(kind, loss_scale, closure=False, steps=3):
    """The weights of a small linear layer after Adam steps on ``loss_scale`` times a fixed loss."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(7, 5)
    optimizer = kind(layer.parameters())

    def loss():
        optimizer.zero_grad()
        value = loss_scale * layer(x).pow(2).sum()
        value.backward()
        return value

    for _ in range(steps):
        if closure:
            assert optimizer.step(loss) is not None
        else:
            loss()
            optimizer.step()
    return [p.detach().clone() for p in layer.parameters()]


@given(scale=st.floats(1e-3, 1e3))
def test_adamnormgrad_is_adam_on_unit_norm_gradients_so_the_loss_scale_does_not_matter(scale):
    class NormalizedByHand(torch.optim.Adam):
        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad = p.grad / (p.grad.norm() + 1e-7)
            super().step()

    by_hand = _adam_step(lambda params: NormalizedByHand(params, lr=0.01), 1.0)
    ours = _adam_step(lambda params: adam(params, 0.01, normalize_gradients=True), 1.0)
    assert isinstance(adam(torch.nn.Linear(1, 1).parameters(), 0.1, normalize_gradients=True), AdamNormGrad)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(by_hand, ours))
    scaled = _adam_step(lambda params: AdamNormGrad(params, lr=0.01), scale, closure=True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, scaled))
    # Plain Adam steps differently: it sees the gradient's norm change from step to step.
    plain = _adam_step(lambda params: adam(params, 0.01), 1.0)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, ours))


def test_fit_takes_a_textbook_guide_of_the_images_alone(mnist5k):
    """A guide written as Pyro's tutorials write it, ``guide(x)`` with pyro.module, takes no
    subsampling keywords: fit scores each batch on its own and trains its encoder."""

    import pyro.distributions as dist

    encoder = torch.nn.Linear(784, 8)

    def guide(x):
        pyro.module("textbook_encoder", encoder)
        h = encoder(x.flatten(1))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(h[:, :4], torch.nn.functional.softplus(h[:, 4:]) + 1e-3).to_event(1))

    vae = build_vae(Config(latent_dim=4, hidden_dims=(16,)))
    vae.guide = guide
    before = encoder.weight.clone()
    data = mnist5k.replace(train_images=mnist5k.train_images[:512])
    history = fit(vae, data, num_epochs=2, batch_size=64, progress=False)
    assert not torch.equal(before, encoder.weight)
    assert history[1].train_elbo > history[0].train_elbo and -800 < history[1].train_elbo < 0


def test_a_float64_model_trains_and_evaluates_on_float32_data(mnist5k):

    from pyrovae.evaluation import evaluate

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        vae = build_vae(Config(latent_dim=4, hidden_dims=(16,)))
        data = mnist5k.replace(train_images=mnist5k.train_images[:512], test_images=mnist5k.test_images[:64])
        history = fit(vae, data, num_epochs=1, batch_size=64, progress=False)
        result = evaluate(vae, prepare_test_images(data.test_images, binary=True), num_samples=5)
    finally:
        torch.set_default_dtype(default)
    assert vae.dtype == torch.float64 and data.train_images.dtype == torch.float32
    assert math.isfinite(history[0].test_elbo) and result.log_likelihood >= result.elbo - 1


def _count_syncs(trainer):
    """One epoch under a TorchDispatchMode counting the calls that hand a tensor's value to
    Python (each a full sync on a GPU): those of each step, and all of them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Syncs(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func.overloadpacket) in {"aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero",
                                             "aten.equal"}:
                Syncs.count += 1
            return func(*args, **(kwargs or {}))

    real, per_step = trainer._train_step, []

    def counted_step(*args):
        before = Syncs.count
        loss = real(*args)
        per_step.append(Syncs.count - before)
        return loss

    trainer._train_step = counted_step
    with Syncs():
        trainer.run_epoch(progress=False)
    return per_step, Syncs.count


@pytest.mark.parametrize("storage, guards", [
    ("memory", {}), ("stream", {}),
    ("memory", dict(grad_clip=50.0, skip_grad_norm=1e4)),  # clipping and skipping decided on the device
    ("memory", dict(ema=0.999)),  # the moving average of the weights, updated on the device
])
def test_the_training_step_reads_nothing_from_the_device(mnist5k, storage, guards):
    """None inside a step (:func:`_count_syncs`), and one epoch of 32 steps with its test
    scoring makes at most 20 (8 progress refreshes, the epoch's ELBO, the scoring, the
    skipped steps' count). Pyro's Trace_ELBO alone read 3 per step (torch_item per sample
    site); refreshes read 1 per step."""
    torch.manual_seed(0)
    trainer = Trainer(build_vae(Config()), mnist5k, storage=storage, **guards)
    assert trainer.streamed == (storage == "stream")
    per_step, total = _count_syncs(trainer)
    assert trainer.num_batches == 32 and per_step == [0] * 32
    assert total <= 20


def test_a_top_down_hierarchy_steps_without_reading_the_device(mnist5k):
    """Every level of ``--model ladder`` (bounded scales, clipping and skipping included)."""
    data = mnist5k.replace(train_images=mnist5k.train_images[:320], test_images=mnist5k.test_images[:50])
    torch.manual_seed(0)
    trainer = Trainer(build_vae(Config(model="ladder", latent_dim=2, conv_channels=8, levels=3)), data,
                      batch_size=64, grad_clip=50.0, skip_grad_norm=1e4)
    per_step, total = _count_syncs(trainer)
    assert per_step == [0] * 5 and total <= 20


def _epoch_metrics(data, **trainer_options):
    torch.manual_seed(0)
    trainer = Trainer(build_vae(Config(hidden_dims=(64,), latent_dim=4)), data, batch_size=100, **trainer_options)
    history = [trainer.run_epoch(progress=False) for _ in range(2)]
    return [(m.train_elbo, m.test_elbo, m.test_reconstruction, m.test_kl) for m in history], trainer


def test_bytes_floats_and_streaming_give_the_same_numbers(mnist5k):
    """Images stored as uint8 (on the device) or float32, or streamed from the host by the
    background loader, train to bit-identical metrics with the same seed."""
    data = mnist5k.replace(train_images=mnist5k.train_images[:1000], test_images=mnist5k.test_images[:200])
    as_bytes, trainer = _epoch_metrics(data, storage="memory")
    assert trainer.train_images.dtype == torch.uint8 and trainer.test_images.dtype == torch.uint8
    as_floats = data.replace()
    as_floats.train_pixels, as_floats.test_pixels = data.train_images, data.test_images  # float32, as before
    floats, trainer = _epoch_metrics(as_floats, storage="memory")
    assert trainer.train_images.dtype == torch.float32
    streamed, trainer = _epoch_metrics(data, storage="stream")
    assert trainer.streamed and trainer._loader._thread is None  # stopped at the epoch's end
    assert as_bytes == floats == streamed


def test_a_memory_mapped_set_streams_when_it_would_not_fit(tmp_path, monkeypatch):
    import numpy as np

    from pyrovae.data import load_images

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (300, 8, 8), dtype=np.uint8))
    data = load_images(tmp_path / "x.npy")
    vae = build_vae(Config(hidden_dims=(16,), latent_dim=2, likelihood="dlogistic", image_shape=(1, 8, 8)))
    assert not Trainer(vae, data, batch_size=50).streamed  # fits: loaded onto the device
    monkeypatch.setattr("pyrovae.train.available_memory", lambda device: data.train_pixels.nbytes * 3)
    trainer = Trainer(vae, data, batch_size=50)
    assert trainer.streamed and trainer.train_images is data.train_pixels
    assert math.isfinite(trainer.run_epoch(progress=False).test_elbo)


def test_a_stopped_epoch_stops_the_loader_and_resumes_to_the_same_numbers(mnist5k):
    data = mnist5k.replace(train_images=mnist5k.train_images[:1000], test_images=mnist5k.test_images[:200])
    straight, _ = _epoch_metrics(data, storage="stream")
    torch.manual_seed(0)
    trainer = Trainer(build_vae(Config(hidden_dims=(64,), latent_dim=4)), data, batch_size=100, storage="stream")
    assert trainer.run_epoch(progress=False, should_stop=lambda: trainer.step == 4) is None
    assert trainer._loader._thread is None and trainer.step == 4
    state = trainer.state_dict()
    torch.manual_seed(123)  # resuming restores every random state
    resumed = Trainer(build_vae(Config(hidden_dims=(64,), latent_dim=4)), data, batch_size=100, storage="stream")
    resumed.vae.load_state_dict(state["model"])
    resumed.load_state_dict(state)
    assert [resumed.run_epoch(progress=False) for _ in range(2)][-1].test_elbo == straight[-1][1]


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_bf16_runs_the_networks_in_bfloat16_and_the_elbo_in_float32(mnist5k, net):
    from pyrovae.networks import compute_dtype

    vae = build_vae(Config(net=net, hidden_dims=(64,), latent_dim=4))
    seen = {}

    def note(name):
        def hook(module, inputs, out):
            seen.setdefault(name, out.dtype)
        return hook

    vae.decoder.register_forward_hook(note("decoder"))
    next(m for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(note("layer"))
    x = mnist5k.test_images[:8].bernoulli()
    with compute_dtype(vae, "bf16"):
        loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert seen == {"layer": torch.bfloat16, "decoder": torch.float32} and loss.dtype == torch.float32
    seen.clear()
    vae.sample(2)  # outside the block: full precision
    assert seen == {"layer": torch.float32, "decoder": torch.float32}
    data = mnist5k.replace(train_images=mnist5k.train_images[:500], test_images=mnist5k.test_images[:100])
    trainer = Trainer(vae, data, batch_size=100, precision="bf16")
    seen.clear()
    assert math.isfinite(trainer.run_epoch(progress=False).test_elbo)
    assert seen == {"layer": torch.bfloat16, "decoder": torch.float32}  # the training steps ran in bf16
    seen.clear()
    trainer.held_out_terms()
    assert seen == {"layer": torch.float32, "decoder": torch.float32}  # scoring after the epoch in fp32


def test_unknown_storage_and_precision_are_one_sentence(mnist5k):
    vae = build_vae(Config(hidden_dims=(16,)))
    with pytest.raises(ConfigError, match="data_storage.* must be one of auto, memory, stream"):
        Trainer(vae, mnist5k, storage="disk")
    with pytest.raises(ConfigError, match="precision.* must be one of fp32, bf16"):
        Trainer(vae, mnist5k, precision="fp16")


def test_the_loader_stops_at_once_whatever_it_was_doing(mnist5k):
    """Stopped before, during or after the epoch's reads, with its queue full, the loader's
    thread ends; an error while reading reaches the training loop."""
    import threading
    import time

    from pyrovae.loader import DEPTH, BatchLoader

    pixels = mnist5k.train_pixels[:1000]
    order = torch.randperm(1000)
    for steps in (2, DEPTH, 20):  # fewer steps than the queue holds, as many, more
        loader = BatchLoader(pixels, "cpu", 50)
        loader.start(order, 0, steps)
        time.sleep(0.2)  # the thread has filled the queue (and, for 2 steps, finished)
        loader.stop()
        assert loader._thread is None and threading.active_count() < 50
    loader = BatchLoader(pixels, "cpu", 50)
    loader.start(order, 0, 20)
    assert torch.equal(loader.get(0), pixels[order[:50]]) and torch.equal(loader.get(1), pixels[order[50:100]])
    loader.stop()

    class Broken:
        def __getitem__(self, index):
            raise OSError("the disk went away")

    loader = BatchLoader(Broken(), "cpu", 50)
    loader.start(order, 0, 5)
    with pytest.raises(OSError, match="the disk went away"):
        loader.get(0)
    loader.stop()


def test_a_skipped_step_leaves_parameters_and_optimizer_as_they_were(mnist5k):
    """--skip-grad-norm: a step whose gradient norm reaches the threshold changes nothing (the
    fused kernel's found_inf, as VDVAE skips), and the epoch counts it; resuming mid-epoch keeps
    the count."""
    data = mnist5k.replace(train_images=mnist5k.train_images[:1000], test_images=mnist5k.test_images[:200])
    torch.manual_seed(0)
    vae = build_vae(Config(hidden_dims=(32,), latent_dim=4))
    trainer = Trainer(vae, data, batch_size=100, skip_grad_norm=1e-9)  # every gradient is larger: all skipped
    before = {name: value.clone() for name, value in vae.state_dict().items()}
    trainer.run_epoch(progress=False, should_stop=lambda: trainer.step == 4)
    state = trainer.state_dict()
    assert state["step_skips"].sum() == 4
    resumed = Trainer(vae, data, batch_size=100, skip_grad_norm=1e-9)
    resumed.load_state_dict(state)
    metrics = resumed.run_epoch(progress=False)
    assert metrics.skipped_steps == 10
    assert all(torch.equal(before[name], value) for name, value in vae.state_dict().items())
    assert all(int(s["step"]) == 0 for s in resumed.optimizer.state_dict()["state"].values())
    torch.manual_seed(0)
    free = Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=4)), data, batch_size=100, skip_grad_norm=1e9)
    assert free.run_epoch(progress=False).skipped_steps == 0


def test_clipping_bounds_the_gradient_norm(mnist5k, monkeypatch):
    data = mnist5k.replace(train_images=mnist5k.train_images[:500], test_images=mnist5k.test_images[:100])
    torch.manual_seed(0)
    trainer = Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=4)), data, batch_size=100, grad_clip=0.5)
    norms = []
    real = trainer.optimizer.step

    def step(*args, **kwargs):
        norms.append(float(torch.nn.utils.get_total_norm(
            [p.grad for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None])))
        return real(*args, **kwargs)

    trainer.optimizer.step = step
    before = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: before.append(clip(*a, **k)) or before[-1])
    metrics = trainer.run_epoch(progress=False)
    assert len(norms) == 5 and max(norms) <= 0.5 + 1e-4
    # the epoch's median gradient norm from before clipping: what a threshold is chosen by
    assert metrics.grad_norm == pytest.approx(float(torch.stack(before).median())) and metrics.grad_norm > 0.5


def test_steps_skipped_in_a_row_across_epochs_end_training_with_the_norms_named(mnist5k, monkeypatch):
    """The skipped steps at the end of each epoch add up while whole epochs are skipped and
    start again after an update; at STALLED_STEPS in a row the epoch ends in NumericalError
    naming the epoch's median norm (or NaN gradients) and a threshold above it."""
    import pyrovae.train as train

    monkeypatch.setattr(train, "STALLED_STEPS", 10)
    data = mnist5k.replace(train_images=mnist5k.train_images[:500], test_images=mnist5k.test_images[:100])
    trainer = Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=4)), data, batch_size=100, skip_grad_norm=400.0)

    def summary(skips, norms=(450.0, 460.0, 470.0, 480.0, 490.0)):
        trainer.step_skips, trainer.step_norms = torch.tensor(skips), torch.tensor(norms)
        return trainer._guard_summary()

    assert summary([1.0, 0.0, 1.0, 1.0, 1.0]) == (4, 470.0) and trainer.skip_streak == 3
    assert summary([1.0] * 5) == (5, 470.0) and trainer.skip_streak == 8
    assert summary([1.0, 1.0, 1.0, 1.0, 0.0])[0] == 4 and trainer.skip_streak == 0
    summary([1.0] * 5)
    with pytest.raises(NumericalError, match=r"last 10 steps were all skipped .*median 470.* skip_grad_norm 400; "
                                             r"raise it above them \(to 1000, say\)"):
        summary([1.0] * 5)
    with pytest.raises(NumericalError, match="gradients are NaN or infinite; try a lower learning rate"):
        summary([1.0] * 5, [math.nan] * 5)
    trainer.skip_grad_norm = 1e6
    trainer.run_epoch(progress=False)  # an epoch for real: each step's norm measured, none skipped here
    assert trainer.history[-1].skipped_steps == 0 and 0 < trainer.history[-1].grad_norm < 1e6
    assert trainer.skip_streak == 0


def test_an_empty_last_batch_under_torchrun_does_not_break_a_run_of_skipped_steps(mnist5k):
    """With 2 ranks and 501 images in batches of 100 the sixth batch is empty (one image for two
    ranks): no step is taken, so it neither ends the run of skipped steps nor counts as one."""
    data = mnist5k.replace(train_images=mnist5k.train_images[:501], test_images=mnist5k.test_images[:100])
    trainer = Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=4)), data, batch_size=100, skip_grad_norm=400.0,
                      distributed=Distributed(rank=0, world_size=2))
    assert trainer.num_batches == 6 and trainer.images_per_epoch == 500
    trainer.step_skips, trainer.step_norms = torch.tensor([1.0] * 5 + [0.0]), torch.tensor([450.0] * 5 + [math.nan])
    assert trainer._guard_summary() == (5, 450.0) and trainer.skip_streak == 5
    trainer.step_skips = torch.tensor([1.0] * 5 + [0.0])
    trainer._guard_summary()
    assert trainer.skip_streak == 10


def test_the_count_of_steps_skipped_in_a_row_survives_a_resume(mnist5k, monkeypatch):
    """A run stopped and resumed in the middle of a stall still stops STALLED_STEPS steps after
    the stall began, not that many after the resume (the count was not checkpointed)."""
    import pyrovae.train as train

    monkeypatch.setattr(train, "STALLED_STEPS", 10)
    data = mnist5k.replace(train_images=mnist5k.train_images[:500], test_images=mnist5k.test_images[:100])

    def trainer():
        return Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=4)), data, batch_size=100, skip_grad_norm=1e-9)

    first = trainer()
    first.run_epoch(progress=False)  # every step skipped: 5 in a row
    assert first.skip_streak == 5
    state = first.state_dict()
    resumed = trainer()
    resumed.vae.load_state_dict(state["model"])
    resumed.load_state_dict(state)
    assert resumed.skip_streak == 5
    with pytest.raises(NumericalError, match=r"last 10 steps were all skipped \(epoch 2\)"):
        resumed.run_epoch(progress=False)
    legacy = trainer()
    legacy.load_state_dict({k: v for k, v in state.items() if k != "skip_streak"})
    assert legacy.skip_streak == 0  # a checkpoint of before the count was kept: counted afresh


def test_the_moving_average_of_the_weights_is_what_is_scored_and_saved(mnist5k):
    """With ``ema`` r, after each step w_avg = r w_avg + (1 - r) w, starting from the initial
    weights; the held-out ELBOs score the average, the checkpoint's model is the average and
    its "trained_weights" the trained ones. A checkpoint loads into a trainer with or without ema."""
    data = mnist5k.replace(train_images=mnist5k.train_images[:200], test_images=mnist5k.test_images[:100])
    torch.manual_seed(0)
    vae = build_vae(Config(hidden_dims=(32,), latent_dim=4))
    initial = {k: v.clone() for k, v in vae.state_dict().items()}
    trainer = Trainer(vae, data, batch_size=200, ema=0.9)  # one step an epoch
    metrics = trainer.run_epoch(progress=False)
    trained, averaged = vae.state_dict(), trainer.averaged.state_dict()
    for name, w in vae.named_parameters():
        assert not torch.equal(w, initial[name])
        assert torch.allclose(averaged[name], 0.9 * initial[name] + 0.1 * w, atol=1e-7)
    for name, b in vae.named_buffers():
        assert torch.equal(averaged[name], b)
    assert metrics.test_elbo == elbo_terms(trainer.averaged, trainer.test_images).elbo
    assert metrics.test_elbo != elbo_terms(vae, trainer.test_images).elbo
    state = trainer.state_dict()
    assert all(torch.equal(state["model"][k], averaged[k]) and torch.equal(state["trained_weights"][k], trained[k])
               for k in trained)
    plain = Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=4)), data, batch_size=200)
    plain.load_state_dict(state)  # the average given up: the trained weights train on
    assert all(torch.equal(plain.vae.state_dict()[k], w) for k, w in trained.items())
    begun = Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=4)), data, batch_size=200, ema=0.5)
    begun.load_state_dict(plain.state_dict())  # an average begun on resume starts from the trained weights
    assert all(torch.equal(begun.vae.state_dict()[k], w) and torch.equal(begun.averaged.state_dict()[k], w)
               for k, w in trained.items())
    with pytest.raises(ConfigError, match="ema.* must be between 0 and 1"):
        Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=4)), data, ema=1.0)


def test_stop_and_resume_with_a_moving_average_is_bit_identical(mnist5k):
    """A checkpoint keeps both the average and the trained weights: resumed mid-epoch, the
    run goes on to the same metrics and the same two sets of weights."""
    data = mnist5k.replace(train_images=mnist5k.train_images[:600], test_images=mnist5k.test_images[:100])

    def trainer():
        torch.manual_seed(0)
        return Trainer(build_vae(Config(hidden_dims=(32,), latent_dim=4)), data, batch_size=100, ema=0.99)

    straight = trainer()
    for _ in range(2):
        straight.run_epoch(progress=False)
    first = trainer()
    first.run_epoch(progress=False)
    polls = iter(range(10**6))
    assert first.run_epoch(progress=False, should_stop=lambda: next(polls) == 3) is None
    state = first.state_dict()
    resumed = trainer()
    resumed.vae.load_state_dict(state["model"])  # as load_run does: the checkpoint's model
    resumed.load_state_dict(state)
    resumed.run_epoch(progress=False)
    assert [m.to_dict() | {"seconds": 0} for m in resumed.history] == \
           [m.to_dict() | {"seconds": 0} for m in straight.history]
    for a, b in ((resumed.vae, straight.vae), (resumed.averaged, straight.averaged)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_skipping_needs_the_fused_optimizer(mnist5k):
    vae = build_vae(Config(hidden_dims=(32,), latent_dim=4))
    with pytest.raises(ConfigError, match="fused kernel"):
        Trainer(vae, mnist5k, optimizer=torch.optim.SGD(vae.parameters(), lr=0.1), skip_grad_norm=10)
    with pytest.raises(ConfigError, match="grad_clip.* must be a positive number"):
        Trainer(vae, mnist5k, grad_clip=-1)
