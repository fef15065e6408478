"""Will a training step fit in memory? Asked before a run writes anything, so that
``--particles 100000`` or a batch far too large gets one sentence instead of an out-of-memory
traceback (or, on Linux, the kernel killing the process).

The estimate is measured, not guessed: one step's loss is computed on a few images with one
and two particles, counting the bytes of every tensor autograd saves for the backward pass
(:func:`torch.autograd.graph.saved_tensors_hooks`). Those grow as ``fixed + images *
(per_image + particles * per_particle)``; the full step is extrapolated from the three
probes and doubled for the gradients the backward pass allocates.
"""

import copy
import os
from typing import Optional

import pyro
import torch

from pyrovae._pyro import direct_call
from pyrovae.errors import ConfigError

__all__ = ["available_memory", "available_host_memory", "saved_bytes", "step_memory", "check_step_memory",
           "format_bytes"]

BACKWARD_FACTOR = 2  # the backward pass allocates about as much again as the saved activations


def available_memory(device) -> Optional[int]:
    """Bytes this process can still allocate on ``device``: free GPU memory plus what torch's
    caching allocator holds, or the system's available RAM; None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return available_host_memory()


def available_host_memory() -> Optional[int]:
    """Bytes this process can still allocate in RAM: the least of the system's available
    memory, what its memory cgroup (v1 or v2) leaves, and its address-space limit
    (``ulimit -v``); None where none can be told."""
    limits = [_meminfo_available(), _cgroup_available(), _rlimit_available()]
    known = [limit for limit in limits if limit is not None]
    return max(0, min(known)) if known else None


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _read_number(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(stat_path: str, key: str) -> int:
    """Page cache the kernel can drop (counted in a cgroup's usage, but not in its way)."""
    try:
        with open(stat_path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available() -> Optional[int]:
    """The memory cgroup's limit minus its working set (usage less inactive page cache)."""
    try:
        with open("/proc/self/cgroup") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):  # cgroup v1
            base = f"/sys/fs/cgroup/memory{path}"
            limit = _read_number(f"{base}/memory.limit_in_bytes")
            usage = _read_number(f"{base}/memory.usage_in_bytes")
            if limit is None or usage is None or limit >= 1 << 60:
                return None
            return limit - usage + _inactive_file(f"{base}/memory.stat", "total_inactive_file")
    for _, controllers, path in entries:
        if controllers == "":  # cgroup v2
            base = f"/sys/fs/cgroup{path}"
            limit = _read_number(f"{base}/memory.max")  # "max" when unlimited: not a number
            usage = _read_number(f"{base}/memory.current")
            if limit is None or usage is None:
                return None
            return limit - usage + _inactive_file(f"{base}/memory.stat", "inactive_file")
    return None


def _rlimit_available() -> Optional[int]:
    """What ``ulimit -v`` leaves of the address space."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return soft - int(line.split()[1]) * 1024
    except (ImportError, OSError, ValueError):
        pass
    return None


def saved_bytes(function) -> int:
    """Bytes of the distinct tensor storages autograd saves while ``function()`` runs."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function()
    return sum(storages.values())


def step_memory(trainer, batch_size: Optional[int] = None) -> Optional[int]:
    """Estimated peak bytes of one training step of ``trainer`` (an amortized VAE), or None
    where it cannot be measured (a guide that is not amortized)."""
    if not trainer.amortized:
        return None
    batch_size = batch_size or trainer.batch_size
    elbo = trainer.elbo
    particles = getattr(elbo, "num_particles", 1)
    device = trainer.device
    model, guide = direct_call(trainer.vae.model), direct_call(trainer.vae.guide)

    def probe(num_images, num_particles):
        probe_elbo = copy.copy(elbo)
        if hasattr(probe_elbo, "num_particles"):
            probe_elbo.num_particles = num_particles
        args = trainer.batch(torch.arange(num_images, device=device) % len(trainer.train_images))
        return saved_bytes(lambda: probe_elbo.differentiable_loss(model, guide, *args))

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), pyro.validation_enabled(False):
        one = probe(1, 1)
        two_images = probe(2, 1)
        two_particles = probe(1, 2) if particles > 1 else one
    per_particle = max(0, two_particles - one)
    per_image = max(0, two_images - one - per_particle)
    fixed = max(0, one - per_image - per_particle)
    return BACKWARD_FACTOR * (fixed + batch_size * (per_image + particles * per_particle))


def check_step_memory(trainer, batch_size: Optional[int] = None) -> None:
    """:raises ConfigError: when one step is estimated to need more memory than is available."""
    needed, available = step_memory(trainer, batch_size), available_memory(trainer.device)
    if needed is None or available is None or needed <= available:
        return
    particles = getattr(trainer.elbo, "num_particles", 1)
    options = f"{{batch_size}} {batch_size or trainer.batch_size}"
    options += f" and {{num_particles}} {particles}" if particles > 1 else ""
    lower = "{num_particles} or {batch_size}" if particles > 1 else "{batch_size} (or the network's size)"
    raise ConfigError(f"One training step with {options} needs about {format_bytes(needed)} of memory, but only "
                      f"{format_bytes(available)} is available on {trainer.device}; lower {lower}.")


def format_bytes(count: float) -> str:
    if count < 1024:
        return f"{count:.0f} bytes"
    for unit in ("KiB", "MiB"):
        count /= 1024
        if count < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} GiB"
