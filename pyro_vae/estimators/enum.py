"""Exact enumeration: Pyro's TraceEnum_ELBO over the guide's discrete sites, and the exact
objectives (ELBO, the IWAE bound L_K, reweighted wake-sleep's targets) that the variance
lab measures every other estimator's bias against."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites

from ..errors import refuse
from .base import (
    EstimatorError,
    GuessedNesting,
    _relative_scale,
    guess_plate_nesting,
    layout_of,
    pyro_plate_nesting,
    register,
    same_random_state,
    sample_sites,
)

#: The exact objectives: the ELBO, the K-sample IWAE bound, and reweighted wake-sleep's
#: pair (L_K for the model, the inclusive KL for the guide). Each estimator names the one
#: its gradient estimates (its ``target`` attribute; the ELBO where it has none).
TARGETS = ("elbo", "iwae", "rws")
#: The most K-tuples of configurations the exact IWAE bound sums over, per datapoint.
MAX_TUPLES = 2**20


@register("enum")
class Enum_ELBO(GuessedNesting, TraceEnum_ELBO):
    """The ELBO summed exactly over the guide's discrete latent sites (Pyro's
    :class:`~pyro.infer.TraceEnum_ELBO`, every guide site that has ``enumerate_support``
    marked ``infer={"enumerate": "parallel"}`` by :func:`~pyro.infer.config_enumerate`)::

        L = (N/M) sum_i sum_z q(z | x_i) [log p(x_i, z) - log q(z | x_i)]

    and its gradient, the exact gradient of the ELBO (both the model's and the guide's
    parameters: Pyro's Dice weights the q-probabilities of the enumerated values). Sites
    without an enumerable support (a Gaussian) are sampled, so with them the value is a
    Monte Carlo estimate over those only. The cost grows with the support: a site of d
    Bernoulli units is 2^d points (:class:`~pyro_vae.discrete.BernoulliVector` lists at
    most 2^16; larger ones are refused naming the site's size), so this is the reference
    on small models, not a training estimator for a 200-unit SBN. ``num_particles``
    vectorised particles average the sampled (non-enumerated) sites.
    """

    name = "enum"

    def __init__(self, num_particles: int = 1, max_plate_nesting: int | None = None):
        super().__init__(
            num_particles=num_particles,
            vectorize_particles=True,
            max_plate_nesting=pyro_plate_nesting(max_plate_nesting),
            strict_enumeration_warning=False,  # a model without discrete sites: sampled
        )

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, config_enumerate(guide, "parallel"), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return super().differentiable_loss(
            model, config_enumerate(guide, "parallel"), *args, **kwargs
        )

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return super().loss_and_grads(model, config_enumerate(guide, "parallel"), *args, **kwargs)


# -- the exact objectives, by enumeration -------------------------------------------------


def _enumerated_traces(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, nesting: int
) -> tuple[Trace, Trace, list[int]]:
    """The guide run with every latent site enumerated (each in a dimension of its own, left
    of the plates) and the model replayed on it; the enumeration dims' sizes, outermost
    first."""
    enum_guide = poutine.enum(
        config_enumerate(guide, "parallel"), first_available_dim=-(nesting + 1)
    )
    guide_trace = poutine.trace(enum_guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    guide_trace, model_trace = (
        prune_subsample_sites(guide_trace),
        prune_subsample_sites(model_trace),
    )
    sizes: dict[int, int] = {}
    for name, site in sample_sites(guide_trace, observed=False):
        dim = site["infer"].get("_enumerate_dim")
        if dim is None:
            raise EstimatorError(
                f"exact enumeration needs every latent site of the guide to be discrete with "
                f"an enumerable support, but site {name!r} ({type(site['fn']).__name__}) has "
                "none; the exact gradient exists only for discrete latents"
            )
        sizes[dim] = site["value"].shape[site["value"].dim() - site["fn"].event_dim + dim]
    for name, _ in sample_sites(model_trace, observed=False):
        if name not in guide_trace.nodes:
            raise EstimatorError(
                f"exact enumeration: the model's latent site {name!r} is not sampled by the guide"
            )
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    dims = sorted(sizes)  # outermost (most negative) first
    return model_trace, guide_trace, [sizes[d] for d in dims]


def _per_unit(
    value: torch.Tensor, site: dict, layout: Any, enum_sizes: list[int], scaled: bool
) -> torch.Tensor:
    """A site's log-density over the enumeration dims and the plates, summed within each
    unit of ``layout``: [n, U], n the number of joint configurations."""
    nesting = layout.nesting
    if scaled:
        value = scale_and_mask(value, _relative_scale(site, layout), site["mask"])
    total = len(enum_sizes) + nesting
    value = value.reshape((1,) * (total - value.dim()) + tuple(value.shape))
    keep = {f.dim for f in layout.units}
    summed = [d for d in range(-nesting, 0) if d not in keep and value.shape[d] != 1]
    if summed:
        value = value.sum(dim=summed, keepdim=True)
    shape = list(enum_sizes) + [1] * nesting
    for f in layout.units:
        shape[f.dim] = f.size
    n = math.prod(enum_sizes)
    return value.expand(shape).reshape(n, layout.shape[1])


def enumerated_weights(
    model: Callable,
    guide: Callable,
    *args: Any,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Every joint configuration z_n of the guide's discrete latent sites, per unit u (one
    datapoint, or the whole model where a latent is global; the estimators'
    :class:`~pyro_vae.estimators.base.Layout`): ``log_w [n, U]`` = log p(x_u, z_n) - log
    q(z_n | x_u) (scaled and masked as the estimators weigh them), ``log_q [n, U]`` = log
    q(z_n | x_u), and the bound's outer scale (N/M). Differentiable in the parameters."""
    nesting = max_plate_nesting
    if nesting is None:
        nesting = guess_plate_nesting(model, guide, args, kwargs)
    with same_random_state():
        model_trace, guide_trace, sizes = _enumerated_traces(model, guide, args, kwargs, nesting)
    layout = layout_of(model_trace, guide_trace, nesting, 1)
    log_w = log_q = torch.zeros(())
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for _, site in sample_sites(trace):
            term = _per_unit(site["unscaled_log_prob"], site, layout, sizes, scaled=True)
            log_w = log_w + sign * term
    for _, site in sample_sites(guide_trace, observed=False):
        log_q = log_q + _per_unit(site["unscaled_log_prob"], site, layout, sizes, scaled=False)
    return log_w, log_q, layout.scale


def exact_objective(
    model: Callable,
    guide: Callable,
    *args: Any,
    target: str = "elbo",
    num_particles: int = 1,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The exact value of ``target`` at full-data scale (as an estimator's ``-loss``), by
    enumeration of the guide's discrete latent space, as a tensor whose gradient is the
    exact gradient of that target (in every parameter the model and guide use):

    - ``elbo``: (N/M) sum_u sum_n q(z_n | x_u) log w_nu;
    - ``iwae``: L_K = (N/M) sum_u E_{z_1..z_K ~ q} [log (1/K) sum_k w_uk], K =
      ``num_particles``, summed over every K-tuple of configurations (n^K of them; at most
      :data:`MAX_TUPLES`);
    - ``rws``: reweighted wake-sleep's pair, in one tensor: its gradient in the model's
      parameters is that of L_K (wake-theta), in the guide's that of
      sum_u sum_n p(z_n | x_u) log q(z_n | x_u), minus the inclusive KL(p(z|x) || q)
      up to a constant (wake-phi). Its value is L_K. Assumes the guide's distributions do
      not depend on the model's parameters.
    """
    if target not in TARGETS:
        raise refuse("target", target, f"one of {list(TARGETS)}")
    log_w, log_q, scale = enumerated_weights(
        model, guide, *args, max_plate_nesting=max_plate_nesting, **kwargs
    )
    q = log_q.exp()
    if target == "elbo" or (target == "iwae" and num_particles == 1):
        return scale * (q * log_w).sum()
    if target == "iwae":
        return scale * _iwae(log_w, log_q, num_particles).sum()
    # rws: L_K with q held fixed (its theta-gradient), plus the wake-phi target
    log_p_joint = (log_w + log_q).detach()
    posterior = torch.softmax(log_p_joint, dim=0)
    theta_part = _iwae(log_w + log_q - log_q.detach(), log_q.detach(), num_particles)
    value = _iwae(log_w, log_q, num_particles).detach()
    phi_part = (posterior * log_q).sum(0)
    surrogate = theta_part + phi_part
    return scale * (value + surrogate - surrogate.detach()).sum()


def _iwae(log_w: torch.Tensor, log_q: torch.Tensor, k: int) -> torch.Tensor:
    """Per unit, E over K iid configurations ~ q of log (1/K) sum_k w_k: [U]."""
    n = log_w.shape[0]
    if float(n) ** k > MAX_TUPLES:
        raise EstimatorError(
            f"the exact IWAE bound with K={k} sums over {n}^{k} = {float(n) ** k:.3g} tuples of "
            f"the {n} latent configurations, more than {MAX_TUPLES}; use a smaller K or "
            "latent space"
        )
    index = torch.cartesian_prod(*[torch.arange(n, device=log_w.device)] * k)
    index = index.reshape(-1, k)  # [n^K, K]
    weights = log_q[index].sum(1).exp()  # [n^K, U]
    bound = torch.logsumexp(log_w[index], dim=1) - math.log(k)  # [n^K, U]
    return (weights * bound).sum(0)
