"""pyrovae.memory: a training step's memory, measured on a few images before a run starts."""

import pytest
import torch

from pyrovae import memory
from pyrovae.config import Config
from pyrovae.distributed import Distributed
from pyrovae.errors import ConfigError
from pyrovae.registry import build_vae
from pyrovae.run import _trainer, config_for_data


def _trainer_for(mnist5k, **options):
    config = config_for_data(Config(hidden_dims=(64,), **options), mnist5k)
    return _trainer(config, build_vae(config, init_images=mnist5k.train_images), mnist5k, Distributed())


def test_saved_bytes_counts_what_autograd_keeps_once_per_storage():
    weight = torch.ones(1000, requires_grad=True)
    x = torch.ones(250)
    # For the weight's gradient mul saves the 250 inputs (float32), nothing else
    assert memory.saved_bytes(lambda: (weight[:250] * x).sum()) == 4 * 250
    # Two views of the weights, both saved: their one storage counts once
    assert memory.saved_bytes(lambda: (weight[:250] * weight[250:500]).sum()) == 4 * 1000


def test_the_estimate_grows_with_the_batch_and_the_particles(mnist5k):
    plain = _trainer_for(mnist5k)
    assert memory.step_memory(plain, 256) > memory.step_memory(plain, 128) > 0
    few, many = _trainer_for(mnist5k, elbo="iwae", num_particles=5), _trainer_for(mnist5k, elbo="iwae",
                                                                                    num_particles=500)
    ratio = memory.step_memory(many) / memory.step_memory(few)
    assert 50 < ratio < 100, ratio  # particles dominate: close to 100x, less the per-image fixed part


def test_the_estimate_leaves_the_random_state_alone(mnist5k):
    trainer = _trainer_for(mnist5k)
    state = torch.get_rng_state()
    memory.step_memory(trainer)
    assert torch.equal(state, torch.get_rng_state())


def test_a_step_that_cannot_fit_is_refused_in_one_sentence(mnist5k, monkeypatch):
    trainer = _trainer_for(mnist5k, elbo="iwae", num_particles=50)
    memory.check_step_memory(trainer)  # fits
    monkeypatch.setattr(memory, "available_memory", lambda device: 1024 ** 2)
    with pytest.raises(ConfigError, match=r"batch_size 128 and num_particles 50 needs about .* MiB of memory, "
                                          r"but only 1.0 MiB is available on cpu; lower num_particles or batch_size"):
        memory.check_step_memory(trainer)


def test_available_memory_is_known_on_this_machine():
    assert memory.available_memory("cpu") > 2 ** 20


def test_the_free_memory_counts_the_process_limits():
    """``ulimit -v`` (and a memory cgroup) bound what the process can allocate, whatever the
    machine has free: the memory check reads them, so a step too large for them is refused
    before the run directory is written instead of dying at step 1."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource
        from pyrovae.memory import available_host_memory, _meminfo_available
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (size + (300 << 20), resource.RLIM_INFINITY))
        print(available_host_memory() >> 20, _meminfo_available() >> 20)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    limited, machine = map(int, done.stdout.split())
    assert limited <= 300 < machine
