"""What the hand-written estimators share: vectorised particle traces, per-datapoint densities.

Each estimator here reads the traces Pyro records: the guide run under a plate of L
particles (dim -2, left of the data plate) and the model replayed against it. From them it
takes, per particle l and datapoint i, the unscaled log-densities

    log p(x_i, z_li) = sum over the model's sample sites
    log q(z_li | x_i) = sum over the guide's sample sites

both of shape [L, M], and the data plate's scale N/M, which turns a minibatch sum into the
full-data bound of eq. 8. Nothing here knows which prior or likelihood the model uses, so
every estimator works with any of them.

Assumption: every sample site lies in the data plate (true of ``VAE.model``/``VAE.guide``);
a site outside it has no per-datapoint density and is refused with an :class:`EstimatorError`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.distributions import Independent
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan

from ..errors import EstimatorError, refuse

# The model has one plate (the minibatch); vectorised particles go to its left.
MAX_PLATE_NESTING = 1
PARTICLE_DIM = -(MAX_PLATE_NESTING + 1)

#: ``estimator=`` name -> a callable ``(num_particles=..., **params) -> ELBO``. Each
#: estimator's module registers itself with :func:`register`.
ESTIMATORS: dict[str, Callable[..., ELBO]] = {}


def register(name: str) -> Callable[[Callable[..., ELBO]], Callable[..., ELBO]]:
    """Class (or factory) decorator: make the estimator selectable as ``estimator=name``."""

    def add(factory: Callable[..., ELBO]) -> Callable[..., ELBO]:
        ESTIMATORS[name] = factory
        return factory

    return add


def describe_distribution(fn: Any) -> str:
    """The family of ``fn`` without Pyro's shape wrappers, e.g. ``Laplace`` or
    ``MixtureSameFamily(Normal)``: what an error message should name."""
    while isinstance(fn, Independent | ExpandedDistribution | MaskedDistribution):
        fn = fn.base_dist
    name = type(fn).__name__
    component = getattr(fn, "component_distribution", None)
    if component is not None:
        name += f"({describe_distribution(component)})"
    return name


def sample_sites(trace: Trace, observed: bool | None = None) -> list[tuple[str, dict]]:
    """The trace's sample sites (all, only observed, or only latent), in execution order."""
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and (observed is None or site["is_observed"] == observed)
    ]


def guide_site(guide_trace: Trace, name: str, estimator: str) -> dict:
    """The guide's site ``name``, which an estimator with a closed-form KL pairs with the
    model's latent site of that name; refused when the guide does not sample it."""
    site = guide_trace.nodes.get(name)
    if site is None or site["type"] != "sample":
        raise EstimatorError(
            f"estimator={estimator} computes KL(q || p) at each latent site of the model, "
            f"but the guide has no sample site {name!r} (it samples "
            f"{[n for n, _ in sample_sites(guide_trace, observed=False)]}); give the guide "
            "that site, or use estimator=sgvb_a"
        )
    return site


def plate_scale(*traces: Trace) -> float:
    """The scale N/M that every sample site shares (eq. 8)."""
    sites = [(name, site) for t in traces for name, site in sample_sites(t)]
    masked = [name for name, site in sites if site["mask"] is not None]
    scales = {float(site["scale"]) for _, site in sites}
    if masked or len(scales) != 1:
        raise EstimatorError(
            f"sample sites with masks {masked} or different scales {sorted(scales)}: these "
            "estimators assume every site lies in the one data plate, unmasked"
        )
    return scales.pop()


def particle_shape(guide_trace: Trace) -> torch.Size:
    """[L, M]: the batch shape of the guide's first latent site."""
    return sample_sites(guide_trace, observed=False)[0][1]["fn"].batch_shape


def log_density(
    trace: Trace, shape: torch.Size, observed: bool | None = None, path_only: bool = False
) -> torch.Tensor:
    """Sum of the sites' unscaled log-densities, one per particle and datapoint ([L, M]).

    ``path_only``: each term through :func:`path_log_prob` (for q in STL and DReG).
    """
    total = torch.zeros(())
    for name, site in sample_sites(trace, observed):
        log_prob = site["unscaled_log_prob"]
        if path_only:
            log_prob = path_log_prob(site["fn"], site["value"])
        if log_prob.shape != shape:
            raise EstimatorError(
                f"site {name!r} has log-density shape {tuple(log_prob.shape)}, expected "
                f"{tuple(shape)} (particles, datapoints): these estimators assume every sample "
                "site lies in the data plate"
            )
        total = total.to(log_prob) + log_prob
    return total


def log_weights(model_trace: Trace, guide_trace: Trace, path_only: bool = False) -> torch.Tensor:
    """log p(x, z_l) - log q(z_l | x) per particle and datapoint, [L, M] (unscaled)."""
    shape = particle_shape(guide_trace)
    return log_density(model_trace, shape) - log_density(guide_trace, shape, path_only=path_only)


def check_reparameterized(guide_trace: Trace, estimator: str) -> None:
    """Refuse a latent site the estimator cannot differentiate through."""
    for name, site in sample_sites(guide_trace, observed=False):
        if not site["fn"].has_rsample:
            raise EstimatorError(
                f"estimator={estimator} needs reparameterised latent sites, but q at site "
                f"{name!r} ({describe_distribution(site['fn'])}) has no rsample; use "
                "estimator=score_function"
            )


def path_log_prob(fn: Any, value: torch.Tensor) -> torch.Tensor:
    """log q(z) with the gradient of the sampling path only (Roeder et al. 2017).

    Its value is ``fn.log_prob(value)``; its gradient with respect to q's parameters is
    d log q / dz * dz/dphi, the score term d log q / dphi at fixed z being subtracted.
    This works for any distribution, without rebuilding it with detached parameters.
    """
    log_q = fn.log_prob(value)
    at_fixed_z = fn.log_prob(value.detach())
    return log_q - at_fixed_z + at_fixed_z.detach()


class ParticleELBO(ELBO):
    """Base class: L particles vectorised in one trace; subclasses give the bound and its
    surrogate.

    ``differentiable_loss`` returns -(bound) in value and -(surrogate) in gradient, so
    ``loss``, ``loss_and_grads`` and autograd of ``differentiable_loss`` agree by
    construction, and ``SVI`` takes any subclass unchanged.
    """

    #: The ``estimator=`` name, for messages.
    name = "particle_elbo"
    #: False makes latent sites non-reparameterised (sampled with ``.sample()``); True
    #: refuses a guide site without ``rsample``.
    reparameterized = True

    def __init__(self, num_particles: int = 1):
        if not (isinstance(num_particles, int) and num_particles >= 1):
            raise refuse("num_particles", num_particles, "an integer >= 1")
        super().__init__(num_particles=num_particles, max_plate_nesting=MAX_PLATE_NESTING + 1)

    def _get_trace(self, model, guide, args, kwargs) -> tuple[Trace, Trace]:
        particles = pyro.plate("num_particles_vectorized", self.num_particles, dim=PARTICLE_DIM)
        model, guide = particles(model), particles(guide)
        if not self.reparameterized:
            # Outermost, so it acts after every plate has expanded the distribution.
            guide = NonReparameterized()(guide)
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    @abstractmethod
    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The bound's estimate at full-data scale (eq. 8), and a surrogate whose gradient is
        the estimator (only its gradient is used)."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        if self.reparameterized:
            check_reparameterized(guide_trace, self.name)
        bound, surrogate = self.bound_and_surrogate(model_trace, guide_trace)
        loss = -(bound.detach() + (surrogate - surrogate.detach()))
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()


class NonReparameterized(pyro.poutine.messenger.Messenger):
    """Latent sites sampled without a pathwise gradient, and scored as such by Pyro.

    ``has_rsample`` is set on the innermost distribution: wrappers (``Independent``,
    ``ExpandedDistribution``) read it from their base and have no setter of their own.
    """

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        fn = msg["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        fn.has_rsample_(False)
