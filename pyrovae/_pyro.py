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
from typing import Callable, Iterator, Tuple, Union

import torch
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.traceenum_elbo import _compute_dice_elbo
from pyro.infer.util import is_identically_zero
from pyro.poutine.trace_struct import Trace

__all__ = ["direct_call", "get_traces", "trace_elbo_particle", "trace_elbo_particle_on_device", "dice_elbo"]


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


def _detached(value):
    """``value`` without its gradient, on the device; a plain number as it is (as ``torch_item`` takes both)."""
    return value.detach() if torch.is_tensor(value) else value


def trace_elbo_particle_on_device(model_trace: Trace, guide_trace: Trace):
    """``Trace_ELBO._differentiable_loss_particle`` with each site's log-probability kept on
    the device (``detach()``) where Pyro reads it to the host (``torch_item``, a sync per
    sample site): the same value, to float32 rounding, and the same surrogate, hence gradient.
    The loop is Pyro 1.9's, line for line otherwise (it uses Pyro's private ``_compute_log_r``)."""
    elbo_particle: Union[float, torch.Tensor] = 0.0
    surrogate_elbo_particle: Union[float, torch.Tensor] = 0.0
    log_r = None
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            elbo_particle = elbo_particle + _detached(site["log_prob_sum"])
            surrogate_elbo_particle = surrogate_elbo_particle + site["log_prob_sum"]
    for site in guide_trace.nodes.values():
        if site["type"] == "sample":
            _, score_function_term, entropy_term = site["score_parts"]
            elbo_particle = elbo_particle - _detached(site["log_prob_sum"])
            if not is_identically_zero(entropy_term):
                surrogate_elbo_particle = surrogate_elbo_particle - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                weight = log_r.sum_to(site["cond_indep_stack"])
                surrogate_elbo_particle = surrogate_elbo_particle + (weight * score_function_term).sum()
    return -elbo_particle, -surrogate_elbo_particle


def dice_elbo(model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
    """The ELBO of one particle with enumerated sites summed out: ``traceenum_elbo._compute_dice_elbo``."""
    return _compute_dice_elbo(model_trace, guide_trace)
