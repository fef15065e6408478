"""Training objectives beyond Pyro's stock ELBOs: Pyro's ELBOs without their host syncs, the
importance-weighted bound as a differentiable loss, and an explicit weight on the KL term
(warm-up, beta-VAE)."""

import math
from typing import Callable

import torch
import pyro.infer
from pyro.infer import RenyiELBO
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from pyro.poutine.scale_messenger import ScaleMessenger

from pyrovae._pyro import get_traces, trace_elbo_particle, trace_elbo_particle_on_device

__all__ = ["Trace_ELBO", "TraceMeanField_ELBO", "IWAE_ELBO", "LatentScale", "kl_weight", "ThroughDifferentiableLoss"]


class _NoEndSyncs:
    """``differentiable_loss`` of Pyro's ``Trace_ELBO`` family without the two host syncs at
    its end (:class:`Trace_ELBO` also keeps its per-particle loss on the device).

    Pyro's version ends with ``warn_if_nan(surrogate)`` (a device-to-host copy to test for
    NaN, plus a backward hook) and ``loss + (surrogate - surrogate.item())`` (another copy,
    to give the loss's value the surrogate's gradient). On a GPU each copy makes the host
    wait for every queued kernel, twice per step. Here the same value and gradient come
    from ``surrogate.detach()``, which stays on the device; NaN is the trainer's business
    (it checks the device-side losses a few times an epoch).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = surrogate = 0.0
        for model_trace, guide_trace in get_traces(self, model, guide, args, kwargs):
            loss_particle, surrogate_particle = trace_elbo_particle(self, model_trace, guide_trace)
            loss = loss + loss_particle / self.num_particles
            surrogate = surrogate + surrogate_particle / self.num_particles
        if not torch.is_tensor(surrogate):  # no sample sites: nothing to differentiate
            return loss
        return loss + (surrogate - surrogate.detach())


class ThroughDifferentiableLoss:
    """``loss`` and ``loss_and_grads`` (what :class:`pyro.infer.SVI` calls) computed through
    the class's own ``differentiable_loss``, as Pyro's ``JitTraceEnum_ELBO`` does, so that SVI
    optimizes an ELBO subclass's whole objective and not only its base class's bound."""

    differentiable_loss: Callable[..., torch.Tensor]  # the ELBO subclass's own

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()


class Trace_ELBO(_NoEndSyncs, pyro.infer.Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` (a Monte Carlo estimate of both ELBO terms) whose
    ``differentiable_loss`` reads nothing from the device: it skips Pyro's two end-of-loss
    syncs, and keeps each site's log-probability on the device where Pyro reads it
    (:func:`pyrovae._pyro.trace_elbo_particle_on_device`)."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        return trace_elbo_particle_on_device(model_trace, guide_trace)


class TraceMeanField_ELBO(_NoEndSyncs, pyro.infer.TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO` (the KL term in closed form where one is
    known) whose ``differentiable_loss`` skips Pyro's two end-of-loss host syncs."""


class IWAE_ELBO(RenyiELBO):
    """The importance-weighted bound of Burda et al. (2015): ``RenyiELBO(alpha=0)``, whose
    per-image bound is (1/k)-log-mean-exp of k importance weights, with a
    ``differentiable_loss`` so that a torch optimizer can drive it.

    Pyro's ``RenyiELBO`` only offers ``loss_and_grads``, which calls ``backward`` itself
    and only when it sees ``param`` sites. For reparameterized guides the gradient of
    ``-sum_x logmeanexp_k log w_k(x)`` computed here equals its surrogate's gradient.
    """

    def __init__(self, num_particles: int = 5, vectorize_particles: bool = True):
        super().__init__(alpha=0, num_particles=num_particles, max_plate_nesting=1,
                         vectorize_particles=vectorize_particles)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        log_weights = []
        for model_trace, guide_trace in get_traces(self, model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_w = log_w + torch_sum(site["log_prob"], sum_dims)
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    if not is_identically_zero(site["score_parts"].score_function):
                        raise NotImplementedError("IWAE_ELBO needs reparameterized guide sites.")
                    log_w = log_w - torch_sum(site["log_prob"], sum_dims)
            log_weights.append(log_w)
        if self.vectorize_particles and self.num_particles > 1:
            log_weights = log_weights[0]  # (num_particles, batch)
        else:
            log_weights = torch.stack(log_weights)
        bound = torch.logsumexp(log_weights, dim=0) - math.log(self.num_particles)
        return -bound.sum()


class LatentScale(ScaleMessenger):
    """``poutine.scale`` restricted to the latent sites: multiplies log p(z) in the model and
    log q(z|x) in the guide by ``scale``, so that Trace_ELBO's estimate of the KL term is
    weighted and the reconstruction term is not. ``scale`` may be changed between steps."""

    def __init__(self, scale: float, sites=("z",)):
        super().__init__(scale)
        self.sites = tuple(sites)

    def _process_message(self, msg):
        if msg["name"] in self.sites:
            super()._process_message(msg)


def kl_weight(progress_epochs: float, warmup_epochs: float = 0, beta: float = 1.0) -> float:
    """The KL weight after ``progress_epochs`` of training: ``beta`` times a linear ramp from
    0 to 1 over ``warmup_epochs`` (no ramp when it is 0)."""
    ramp = 1.0 if warmup_epochs <= 0 else min(1.0, progress_epochs / warmup_epochs)
    return beta * ramp
