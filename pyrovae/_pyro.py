"""The private functions of Pyro that pyrovae calls (names with a leading underscore).

Each is used for speed or for an objective Pyro has no public hook for, and each was
tested with the pyro-ppl versions that ``pyproject.toml`` allows (1.9.x);
tests/test_pyro_native.py checks each against Pyro's public results. Other modules lean on
Pyro internals that are not functions, and need a look too when Pyro changes:
``PyroModule._pyro_name`` (``vae.py``), the fields of trace nodes (``"unscaled_log_prob"``,
``"score_parts"``) and ``Trace.remove_node`` (``m2.py``, ``objectives.py``), and the helpers
of ``pyro.infer.util`` and ``ScaleMessenger`` (``objectives.py``).
"""

import functools
from typing import Callable, Iterator, Tuple

import torch
from pyro.infer.traceenum_elbo import _compute_dice_elbo
from pyro.poutine.trace_struct import Trace

__all__ = ["direct_call", "get_traces", "trace_elbo_particle", "dice_elbo"]


def direct_call(module: torch.nn.Module) -> Callable:
    """``module.forward`` without :class:`~pyro.nn.PyroModule`'s call context.

    Inside that context every access to a plain ``nn.Module`` attribute emits one Pyro
    ``param`` message per parameter, so that Pyro's own optimizers can find them: ten
    messages per step for a VAE, 0.7 of the 1.6 ms that a step cost beyond plain PyTorch
    on 2 CPU cores (docs/benchmarks.md). pyrovae's trainer holds every parameter in its
    torch optimizer already, so it skips them; the loss and gradients are the same
    (tests/test_train.py). Relies on ``PyroModule.__call__`` being the only place that
    enters the context.
    """
    return functools.partial(type(module).forward, module)


def get_traces(elbo, model, guide, args, kwargs) -> Iterator[Tuple[Trace, Trace]]:
    """The (model trace, guide trace) pairs of one estimate: ``ELBO._get_traces``."""
    return elbo._get_traces(model, guide, args, kwargs)


def trace_elbo_particle(elbo, model_trace: Trace, guide_trace: Trace):
    """(loss, surrogate loss) of one particle: ``Trace_ELBO._differentiable_loss_particle``."""
    return elbo._differentiable_loss_particle(model_trace, guide_trace)


def dice_elbo(model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
    """The ELBO of one particle with enumerated sites summed out: ``traceenum_elbo._compute_dice_elbo``."""
    return _compute_dice_elbo(model_trace, guide_trace)
