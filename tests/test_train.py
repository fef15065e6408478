import pytest
import torch

from pyrovae.config import Config
from pyrovae.errors import ConfigError, NumericalError
from pyrovae.registry import build_elbo, build_vae
from pyrovae.train import Trainer, fit


def test_elbo_improves_over_a_few_hundred_steps_on_real_digits(mnist5k):
    torch.manual_seed(0)
    vae = build_vae(Config())
    seen = []
    history = fit(vae, mnist5k, num_epochs=8, progress=False, on_epoch_end=seen.append)  # 8 x 32 steps
    assert seen == history and [m.epoch for m in history] == list(range(1, 9))
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
    with pytest.raises(NumericalError, match=r"became nan at epoch 1, step 1; try a lower learning rate"):
        fit(vae, mnist5k, num_epochs=1, progress=False)


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
    from dataclasses import replace

    from pyrovae.errors import DataError

    bad = replace(mnist5k, train_images=mnist5k.train_images * 255)
    with pytest.raises(DataError, match=r"not scaled to \[0, 1\]"):
        Trainer(build_vae(Config(hidden_dims=(32,))), bad)
