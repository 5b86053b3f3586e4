"""What the hand-written estimators share: vectorised particle traces, and the log-densities
grouped into importance weights, decided once from Pyro's trace metadata.

Each estimator here reads the traces Pyro records: the guide run under a plate of L
particles (left of every plate of the model, like Pyro's ``vectorize_particles``) and the
model replayed against it. ``max_plate_nesting`` is the user's (``max_plate_nesting=``) or
guessed as Pyro guesses it, by one run of the model and guide, here without touching the
random state, so the particle plate never collides with the model's plates.

**Units of importance weighting** (:class:`Layout`). The plates every sample site of the
model and guide lies in (the data plate for a VAE; read from each site's
``cond_indep_stack``) are where the joint density factorises: one log-weight per particle
and index of those plates,

    log w_lu = sum over sites s of r_s [log p_s - log q_s] at index u,   shape [L, U]

summing each site's log-density over its other plates (pixels nested in the data plate,
say). Where some site lies outside them (a global latent, a second independent plate),
there is one unit, U = 1: one log-weight per particle for the whole model, as
``RenyiELBO(alpha=0)`` has. Scales: the subsampling factor N/M of the unit plates
(``subsample_size``) multiplies the bound from outside (``Layout.scale``), so a minibatch
sum of per-datapoint bounds estimates the full-data one (eq. 8); every other factor r_s
(``poutine.scale``, a tensor of per-datapoint weights, another plate's subsampling) and
every ``poutine.mask`` act on their site's log-density inside the weight, as in Pyro's
``log_prob``. Single-sample estimators (A, B, STL, the score function, NVIL) give the
same bound in either layout; only the multi-sample ones (IWAE, DReG, VIMCO, ...) differ.

Nothing here knows which prior, likelihood or model is used, so every estimator works
with any Pyro model and guide that Pyro's ``Trace_ELBO`` takes, or refuses with an
:class:`EstimatorError` naming the site: a model latent site the guide does not sample,
enumerated sites (warned, as ``Trace_ELBO`` warns), non-reparameterised sites for the
pathwise estimators.
"""

from __future__ import annotations

import logging
import math
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions import Independent
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import MultiFrameTensor
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_model_guide_match, check_site_shape, warn_if_nan

from ..errors import EstimatorError, refuse

#: The plate nesting of :class:`pyro_vae.VAE` (one data plate); other models' is guessed.
MAX_PLATE_NESTING = 1
#: The name of the particle plate (Pyro's own, for its ``vectorize_particles``).
PARTICLE_PLATE = "num_particles_vectorized"

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
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and (observed is None or site["is_observed"] == observed)
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


def check_plate_nesting(max_plate_nesting: Any) -> int | None:
    """``max_plate_nesting``: None (guess it) or an integer >= 0."""
    if max_plate_nesting is None:
        return None
    if isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, int):
        raise refuse("max_plate_nesting", max_plate_nesting, "an integer >= 0, or None to guess")
    if max_plate_nesting < 0:
        raise refuse("max_plate_nesting", max_plate_nesting, "an integer >= 0, or None to guess")
    return max_plate_nesting


@contextmanager
def same_random_state(like: Any = None) -> Iterator[None]:
    """Run a block without advancing torch's random streams (the CPU's, and CUDA's where
    it is in use), so an extra run of the model leaves every later draw as it was."""
    devices = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = [torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def guess_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """The model's and guide's plate nesting, as Pyro's ``ELBO._guess_max_plate_nesting``
    finds it (one run of the guide and the model replayed on it, ``poutine.block``-ed),
    without advancing the random state: the deepest vectorised plate's ``-dim``."""
    with same_random_state(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    dims = [
        frame.dim
        for trace in (prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace))
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return -min(dims) if dims else 0


def site_plates(site: dict) -> dict[str, Any]:
    """The vectorised plates a site lies in, by name (the particle plate left out)."""
    return {
        f.name: f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE
    }


@dataclass(frozen=True)
class Layout:
    """How the log-densities of a pair of traces group into importance weights.

    ``units`` are the plates every sample site lies in (outermost dimension first), the
    weights' shape is [L, U] with U the product of their sizes (U = 1 when there are
    none: one weight per particle), and ``scale`` is the product of their subsampling
    factors (full size / minibatch size), which multiplies a bound from outside.
    """

    num_particles: int
    nesting: int
    units: tuple[Any, ...]
    scale: float

    @property
    def local(self) -> bool:
        """Whether the weights are per index of the plates (per datapoint), not global."""
        return bool(self.units)

    @property
    def shape(self) -> torch.Size:
        """The weights' shape, [L, U]."""
        return torch.Size([self.num_particles, math.prod(f.size for f in self.units)])

    @property
    def full_shape(self) -> tuple[int, ...]:
        """[L, ...] over the particle dimension and every plate dimension: the unit plates'
        sizes at their dimensions, 1 elsewhere."""
        shape = [1] * (self.nesting + 1)
        shape[0] = self.num_particles
        for f in self.units:
            shape[f.dim] = f.size
        return tuple(shape)

    def reduce(self, value: torch.Tensor, name: str) -> torch.Tensor:
        """A site's per-element term (its log-density over its batch shape) summed within
        each unit: [L, U]."""
        n = self.nesting + 1
        if value.dim() > n:
            raise EstimatorError(
                f"site {name!r} has log-density shape {tuple(value.shape)}, with more "
                f"dimensions than the particle plate and the model's {self.nesting} plates: "
                "a batch dimension outside any pyro.plate (or an enumerated site); declare "
                "it with pyro.plate, or pass max_plate_nesting="
            )
        value = value.reshape((1,) * (n - value.dim()) + tuple(value.shape))
        keep = {-n} | {f.dim for f in self.units}
        summed = [d for d in range(-n, 0) if d not in keep and value.shape[d] != 1]
        if summed:
            value = value.sum(dim=summed, keepdim=True)
        return value.expand(self.full_shape).reshape(self.shape)

    def expand_to_site(self, per_unit: torch.Tensor, site: dict) -> torch.Tensor:
        """A [L, U] tensor laid out over ``site``'s batch dimensions (unit plates at their
        dimensions, size 1 elsewhere) and its event dimensions (size 1): it broadcasts
        against the site's value."""
        return per_unit.reshape(self.full_shape + (1,) * len(site["fn"].event_shape))


def layout_of(model_trace: Trace, guide_trace: Trace, nesting: int, num_particles: int) -> Layout:
    """The :class:`Layout` of these traces: the plates that every sample site lies in."""
    sites = [s for t in (model_trace, guide_trace) for _, s in sample_sites(t)]
    common: dict[str, Any] | None = None
    for site in sites:
        plates = site_plates(site)
        common = plates if common is None else {k: f for k, f in common.items() if k in plates}
    units = tuple(sorted((common or {}).values(), key=lambda f: f.dim))
    scale = 1.0
    for f in units:
        full = f.full_size if f.full_size is not None else f.size
        scale = scale * full / f.size
    return Layout(num_particles, nesting, units, scale)


def _relative_scale(site: dict, layout: Layout) -> Any:
    scale = site["scale"]
    if not layout.local:
        return scale
    if not isinstance(scale, torch.Tensor) and scale == layout.scale:
        return 1.0
    return scale / layout.scale


def site_term(site: dict, name: str, layout: Layout, log_prob: torch.Tensor) -> torch.Tensor:
    """``log_prob`` (a site's unscaled log-density, or a term shaped like it) with the site's
    scale relative to the layout's and its mask, summed within each unit: [L, U]."""
    r = _relative_scale(site, layout)
    if site["mask"] is None and not isinstance(r, torch.Tensor) and r == 1.0:
        if log_prob.shape == layout.shape:
            return log_prob
    else:
        log_prob = scale_and_mask(log_prob, r, site["mask"])
    return layout.reduce(log_prob, name)


def log_density(
    trace: Trace,
    layout: Layout,
    observed: bool | None = None,
    path_only: bool = False,
    fixed: Trace | None = None,
    score: bool = False,
) -> torch.Tensor:
    """Sum of the sites' log-densities per particle and unit ([L, U]), scaled and masked as
    :class:`Layout` says.

    ``path_only``: each term through :func:`path_log_prob` (for q in STL and DReG); with
    ``fixed`` (the guide run at its values held fixed, :meth:`ParticleELBO.fixed_point`) the
    score term is the one of the fixed trace, which is right for guides whose sites depend
    on each other. ``score``: unscaled and unmasked, the log-density the sites were drawn
    from (what a score-function gradient multiplies; Pyro's ``score_parts``).
    """
    total = torch.zeros(())
    for name, site in sample_sites(trace, observed):
        log_prob = site["unscaled_log_prob"]
        if path_only:
            if fixed is None:
                log_prob = path_log_prob(site["fn"], site["value"])
            else:
                at_fixed_z = fixed.nodes[name]["unscaled_log_prob"]
                log_prob = log_prob - at_fixed_z + at_fixed_z.detach()
        if score:
            term = log_prob if log_prob.shape == layout.shape else layout.reduce(log_prob, name)
        else:
            term = site_term(site, name, layout, log_prob)
        total = total.to(term) + term
    if total.dim() == 0:  # no site: a zero weight for every particle and unit
        total = total.expand(layout.shape)
    return total


def log_weights(
    model_trace: Trace,
    guide_trace: Trace,
    layout: Layout,
    path_only: bool = False,
    fixed: Trace | None = None,
) -> torch.Tensor:
    """log p(x, z_l) - log q(z_l | x) per particle and unit, [L, U] (scaled within the unit
    as :class:`Layout` says; ``layout.scale`` is left to the bound)."""
    log_p = log_density(model_trace, layout)
    return log_p - log_density(guide_trace, layout, path_only=path_only, fixed=fixed)


def check_reparameterized(guide_trace: Trace, estimator: str) -> None:
    """Refuse a latent site the estimator cannot differentiate through."""
    for name, site in sample_sites(guide_trace, observed=False):
        if not site["fn"].has_rsample:
            raise EstimatorError(
                f"estimator={estimator} needs reparameterised latent sites, but q at site "
                f"{name!r} ({describe_distribution(site['fn'])}) has no rsample; use "
                "estimator=score_function"
            )


def check_guide_covers_model(model_trace: Trace, guide_trace: Trace, estimator: str) -> None:
    """Refuse a latent site of the model that the guide does not sample (Pyro would draw it
    from the model's prior and score it as data: a wrong bound)."""
    missing = [
        name
        for name, _ in sample_sites(model_trace, observed=False)
        if name not in guide_trace.nodes
    ]
    if missing:
        raise EstimatorError(
            f"estimator={estimator}: the model's latent sites {missing} are not sampled by the "
            "guide; every latent site of the model needs a guide site of the same name (or an "
            "obs= value in the model)"
        )


def warn_if_enumerated(guide_trace: Trace, estimator: str) -> None:
    """Warn, as Pyro's ``Trace_ELBO`` does, of guide sites marked for enumeration: these
    estimators sample them."""
    enumerated = [
        name for name, site in sample_sites(guide_trace) if site["infer"].get("enumerate")
    ]
    if enumerated:
        warnings.warn(
            f"estimator={estimator} samples the guide sites {enumerated} that are configured "
            "for enumeration (infer={'enumerate': ...}); it does not enumerate them. To sum "
            "them out, use Pyro's TraceEnum_ELBO",
            stacklevel=3,
        )


def path_log_prob(fn: Any, value: torch.Tensor) -> torch.Tensor:
    """log q(z) with the gradient of the sampling path only (Roeder et al. 2017).

    Its value is ``fn.log_prob(value)``; its gradient with respect to q's parameters is
    d log q / dz * dz/dphi, the score term d log q / dphi at fixed z being subtracted.
    This works for any distribution, without rebuilding it with detached parameters, where
    ``fn``'s parameters depend on no other sample (one latent site); a guide whose sites
    depend on each other needs the guide run again at fixed values
    (:meth:`ParticleELBO.fixed_point`).
    """
    log_q = fn.log_prob(value)
    at_fixed_z = fn.log_prob(value.detach())
    return log_q - at_fixed_z + at_fixed_z.detach()


class GuessedNesting:
    """Mixin for Pyro's own ELBOs: its guess of ``max_plate_nesting`` (one run of the model
    and guide) made without advancing the random state, so choosing Pyro's estimator does
    not change the draws that follow."""

    def _guess_max_plate_nesting(self, model, guide, args, kwargs) -> None:
        pyro_logger = logging.getLogger("pyro.infer.elbo")  # "Guessed ..." at INFO
        level = pyro_logger.level
        pyro_logger.setLevel(max(level, logging.WARNING))
        try:
            with same_random_state():
                super()._guess_max_plate_nesting(model, guide, args, kwargs)  # type: ignore[misc]
        finally:
            pyro_logger.setLevel(level)


def pyro_plate_nesting(max_plate_nesting: Any) -> float:
    """``max_plate_nesting`` for Pyro's ELBO constructors: the user's, or inf (guess)."""
    nesting = check_plate_nesting(max_plate_nesting)
    return float("inf") if nesting is None else nesting


class ParticleELBO(ELBO):
    """Base class: L particles vectorised in one trace; subclasses give the bound and its
    surrogate.

    ``differentiable_loss`` returns -(bound) in value and -(surrogate) in gradient, so
    ``loss``, ``loss_and_grads`` and autograd of ``differentiable_loss`` agree by
    construction, and ``SVI`` takes any subclass unchanged.

    Args:
        num_particles: L (K for the multi-sample bounds).
        max_plate_nesting: the model's and guide's plate nesting (the particle plate goes
            one dimension left of it); None guesses it at the first call (Pyro's guess,
            without advancing the random state).
    """

    #: The ``estimator=`` name, for messages.
    name = "particle_elbo"
    #: False makes latent sites non-reparameterised (sampled with ``.sample()``); True
    #: refuses a guide site without ``rsample``.
    reparameterized = True
    #: The objective whose gradient this estimates (``elbo``, ``iwae`` for L_K, ``rws``):
    #: what the variance lab measures its bias against (:mod:`~pyro_vae.estimators.enum`).
    target = "elbo"

    def __init__(self, num_particles: int = 1, max_plate_nesting: int | None = None):
        if not (
            isinstance(num_particles, int)
            and not isinstance(num_particles, bool)
            and num_particles >= 1
        ):
            raise refuse("num_particles", num_particles, "an integer >= 1")
        nesting = check_plate_nesting(max_plate_nesting)
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=float("inf") if nesting is None else nesting + 1,
        )
        #: The model's plate nesting (None until guessed), without the particle plate.
        self.plate_nesting = nesting
        self._replay: tuple[Callable, Callable, tuple, dict, Trace] | None = None

    def _get_trace(self, model, guide, args, kwargs) -> tuple[Trace, Trace]:
        if self.plate_nesting is None:
            self.plate_nesting = guess_plate_nesting(model, guide, args, kwargs)
            self.max_plate_nesting = self.plate_nesting + 1
        particles = pyro.plate(PARTICLE_PLATE, self.num_particles, dim=-(self.plate_nesting + 1))
        model, guide = particles(model), particles(guide)
        # Outermost, so they act after every plate has expanded the distributions.
        for handler in self.guide_handlers():
            guide = handler(guide)
        for handler in self.model_handlers():
            model = handler(model)
        # Pyro's get_importance_trace, keeping the guide's unpruned trace for fixed_point.
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        if pyro.infer.util.is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        self._replay = (model, guide, args, kwargs, guide_trace)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        if pyro.infer.util.is_validation_enabled():
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, self.max_plate_nesting)
        return model_trace, guide_trace

    def guide_handlers(self) -> list[pyro.poutine.messenger.Messenger]:
        """Handlers put around the guide, outside the particle plate (so they see the
        distributions as the plates expanded them): :class:`NonReparameterized` where the
        estimator is not pathwise (``reparameterized = False``); the relaxations and REBAR
        swap or draw the discrete sites here."""
        return [] if self.reparameterized else [NonReparameterized()]

    def model_handlers(self) -> list[pyro.poutine.messenger.Messenger]:
        """Handlers put around the model, outside the particle plate (none here)."""
        return []

    def layout(self, model_trace: Trace, guide_trace: Trace) -> Layout:
        """The traces' :class:`Layout` (units of importance weighting, outer scale)."""
        return layout_of(model_trace, guide_trace, self.plate_nesting, self.num_particles)

    def fixed_traces(self, guide_trace: Trace, with_model: bool = False) -> tuple | None:
        """:meth:`fixed_point` where the guide has several latent sites (one may depend on
        another), None for one site (autograd through its value and
        :func:`path_log_prob` then give the same derivatives, one run cheaper)."""
        if len(sample_sites(guide_trace, observed=False)) < 2:
            return None
        return self.fixed_point(guide_trace, with_model)

    def fixed_point(self, guide_trace: Trace, with_model: bool = False) -> tuple[Trace, ...]:
        """The guide (and the model, ``with_model``) run again at the latent values of
        ``guide_trace`` held fixed: leaf tensors that require grad, detached from the
        sampling path. The fixed guide's log q has the score term d log q/dphi at fixed z
        as its only phi-gradient; its gradient with respect to the leaves is the partial
        derivative at the point, which, unlike autograd through the sampled values,
        does not follow one site's value into the next site's distribution. Returns
        (guide trace,) or (guide trace, model trace), log-densities computed."""
        if self._replay is None:
            raise RuntimeError("fixed_point is only available inside differentiable_loss")
        model, guide, args, kwargs, unpruned = self._replay
        fixed = unpruned.copy()
        for name, site in sample_sites(guide_trace, observed=False):
            leaf = site["value"].detach().requires_grad_(with_model)
            fixed.nodes[name] = {**unpruned.nodes[name], "value": leaf}
        guide_fixed = poutine.trace(poutine.replay(guide, trace=fixed)).get_trace(*args, **kwargs)
        traces = [prune_subsample_sites(guide_fixed)]
        traces[0].compute_log_prob()
        if with_model:
            model_fixed = poutine.trace(poutine.replay(model, trace=fixed)).get_trace(
                *args, **kwargs
            )
            traces.append(prune_subsample_sites(model_fixed))
            traces[1].compute_log_prob()
        return tuple(traces)

    @abstractmethod
    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The bound's estimate at full-data scale (eq. 8), and a surrogate whose gradient is
        the estimator (only its gradient is used)."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        try:
            check_guide_covers_model(model_trace, guide_trace, self.name)
            if self.reparameterized:
                check_reparameterized(guide_trace, self.name)
            else:
                warn_if_enumerated(guide_trace, self.name)
            bound, surrogate = self.bound_and_surrogate(model_trace, guide_trace)
        finally:
            self._replay = None
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


def score_signals(model_trace: Trace, guide_trace: Trace) -> list[tuple[str, dict, torch.Tensor]]:
    """Per latent guide site, (name, site, its learning signal): Pyro's ``Trace_ELBO``
    signal for a non-reparameterised site, log r = the sum of every site's scaled and
    masked log p - log q (detached), summed over the plates the site is not in (partial
    Rao-Blackwellisation by plates), shaped to broadcast against the site's batch shape."""
    log_r = MultiFrameTensor()
    for _, site in sample_sites(model_trace):
        log_r.add((site["cond_indep_stack"], site["log_prob"].detach()))
    for _, site in sample_sites(guide_trace):
        log_r.add((site["cond_indep_stack"], -site["log_prob"].detach()))
    out = []
    for name, site in sample_sites(guide_trace, observed=False):
        signal = log_r.sum_to(site["cond_indep_stack"])
        out.append((name, site, torch.as_tensor(signal)))
    return out


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
