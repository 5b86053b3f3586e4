"""Guide families q(z|x): objects a VAE takes, built from a specification when chosen by
configuration (``guide=...``), as the priors are (:mod:`pyro_vae.priors`).

The VAE's encoder maps x to its output (the paper's MLP: the (loc, scale) of a Gaussian);
a :class:`GuideFamily` turns that output (and x) into the distribution q(z|x) over the
first stochastic layer's R^latent_dim: ``family(encoder_output, x)`` is a Pyro
distribution with ``event_shape == (latent_dim,)`` and the minibatch as its batch shape.
:meth:`pyro_vae.VAE.encode` is ``vae.guide_family(vae.encoder(x), x)``, and the guide
samples the latent site from it.

A family is a ``torch.nn.Module``: learnable parts of its own (a flow's weights) are its
parameters, trained with the model and saved in its ``state_dict``. It says what the
estimators need to know of it (:attr:`GuideFamily.reparameterized`,
:attr:`GuideFamily.closed_form_kl`), and how to build it again (:meth:`GuideFamily.spec`).

From Python, construct one and pass it (``VAE.mlp(784, guide=DiagonalGaussian(20))``), or
pass a specification. A specification (what ``guide=...`` configures, and what a run
directory records) is a mapping with ``_target_`` (the import path of a
:class:`GuideFamily` subclass, here or in the user's own module), an optional ``name`` (a
label) and the class's parameters; :func:`build_guide` builds it as
``cls(latent_dim, **params)``, with ``x_dim`` added when its constructor takes it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms.planar import ConditionedPlanar
from torch import nn

from .errors import ArgumentError, EstimatorError, refuse
from .networks import mlp_trunk
from .targets import accepted_context, check_params, import_target

# Keyword arguments a family's constructor may take from the model rather than the config.
CONTEXT_KEYS = ("x_dim",)


class GuideFamily(nn.Module):
    """Base class: ``family(encoder_output, x)`` returns q(z|x) over R^latent_dim.

    Subclasses implement :meth:`forward` and set the class attributes that describe the
    family to the estimators:

    - ``reparameterized``: its distributions draw with ``rsample`` (pathwise gradients:
      estimators A and B, STL, DReG, IWAE); a family without it takes the score-function
      estimators.
    - ``closed_form_kl``: KL(q || p) against a diagonal Gaussian prior has the closed form
      of the paper's eq. 10, which estimator B (``sgvb_b``) computes.

    ``name`` is the configuration's label (``cfg.guide.name``) once :func:`build_guide`
    has built it.
    """

    name = "guide"
    reparameterized = True
    closed_form_kl = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__  # a label until a configuration gives its own
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _recording(init)

    def __init__(self, latent_dim: int):
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise refuse("latent_dim", latent_dim, "an integer >= 1")
        self.latent_dim = latent_dim

    def forward(self, encoder_output: Any, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) from the encoder's output on ``x`` [M, D]: event shape [latent_dim], batch
        shape [M]."""
        raise NotImplementedError

    def bind(self, vae: nn.Module) -> None:
        """Called by the VAE that takes this family (nothing by default)."""

    #: The constraint of each per-datapoint parameter (:meth:`local_parameters`): what a
    #: local optimisation (the inference gaps, :mod:`pyro_vae.diagnostics`) keeps them in.
    local_constraints: ClassVar[dict[str, Any]] = {}

    def local_parameters(self, encoder_output: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What q(z|x) is made of for each datapoint, [M, ...] each: the encoder's output as
        this family reads it (``loc`` and ``scale``; a flow's ``context`` too). The family's
        own parameters (a flow's weights) are shared by every datapoint and are not among
        them. :meth:`from_local` builds q from them, so that ``from_local(local_parameters(
        out, x), x)`` is ``family(out, x)``; a local optimisation moves them freely, each
        within its :attr:`local_constraints`, to find the best q of the family for a point.
        """
        raise NotImplementedError(
            f"guide={self.name} does not list its per-datapoint parameters (local_parameters)"
        )

    def from_local(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        """q(z|x) from :meth:`local_parameters`' values."""
        raise NotImplementedError(f"guide={self.name} has no from_local")

    def spec(self) -> dict[str, Any]:
        """A specification :func:`build_guide` builds this family from again (its learned
        values come from the model's ``state_dict``)."""
        args, kwargs = self.__dict__.get("_init_arguments", ((self.latent_dim,), {}))
        signature = inspect.signature(type(self))
        params: dict[str, Any] = {}
        for key, value in signature.bind_partial(*args, **kwargs).arguments.items():
            if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                params.update(value)
            elif key not in ("latent_dim", *CONTEXT_KEYS):
                params[key] = value
        cls = type(self)
        return {"name": self.name, "_target_": f"{cls.__module__}.{cls.__qualname__}", **params}


def _recording(init: Any) -> Any:
    """``init`` that first keeps the arguments of the outermost constructor call, so that
    :meth:`GuideFamily.spec` can record how to build the family again."""

    @functools.wraps(init)
    def recording_init(self: GuideFamily, *args: Any, **kwargs: Any) -> None:
        if "_init_arguments" not in self.__dict__:
            object.__setattr__(self, "_init_arguments", (args, kwargs))
        init(self, *args, **kwargs)

    return recording_init


def gaussian_output(encoder_output: Any, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (loc, scale) pair a Gaussian encoder returns, or an ArgumentError naming
    ``family`` and what it got."""
    if not (isinstance(encoder_output, tuple | list) and len(encoder_output) == 2):
        raise ArgumentError(
            f"guide={family} takes an encoder that returns (loc, scale), each [M, latent_dim]; "
            f"this encoder returned {type(encoder_output).__name__}"
        )
    return encoder_output[0], encoder_output[1]


class DiagonalGaussian(GuideFamily):
    """The paper's q(z|x) = N(mu(x), diag sigma^2(x)) (sec. 2.4, appendix C.2): the encoder's
    (loc, scale) as they are. No parameters of its own."""

    name = "diagonal"
    closed_form_kl = True

    local_constraints: ClassVar[dict[str, Any]] = {
        "loc": constraints.real,
        "scale": constraints.positive,
    }

    def forward(self, encoder_output: Any, x: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = gaussian_output(encoder_output, self.name)
        return dist.Normal(loc, scale).to_event(1)

    def local_parameters(self, encoder_output: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, scale = gaussian_output(encoder_output, self.name)
        return {"loc": loc, "scale": scale}

    def from_local(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        return dist.Normal(params["loc"], params["scale"]).to_event(1)


CONTEXTS = ("encoder", "x")


class _Conditioned(GuideFamily):
    """A family whose extra parts (off-diagonal entries, flow parameters) are functions of a
    context: ``"encoder"``, the encoder's output [loc, log scale] (2 latent_dim values, any
    encoder), or ``"x"``, the datapoint itself (x_dim values)."""

    def __init__(self, latent_dim: int, context: str = "encoder", x_dim: int | None = None):
        super().__init__(latent_dim)
        if context not in CONTEXTS:
            raise refuse("context", context, f"one of {list(CONTEXTS)}")
        self.context = context
        self.context_dim = 2 * latent_dim if context == "encoder" else x_dim
        if self.context_dim is None:
            raise ArgumentError("context=x needs the data's width: pass x_dim=", "x_dim")

    def context_of(self, loc: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.context == "encoder":
            return torch.cat([loc, scale.log()], dim=-1)
        return x.reshape(*x.shape[: loc.dim() - 1], -1)


class FullCovariance(_Conditioned):
    """q(z|x) = N(mu(x), L(x) L(x)^T), L lower-triangular: its diagonal the encoder's sigma(x),
    its entries below the diagonal a function of the context (a linear map, or an MLP
    through ``hidden_dims``). The map's last layer starts at zero, so the family starts as
    the diagonal Gaussian. Reparameterised; its KL from a diagonal Gaussian prior has a
    closed form, but not eq. 10's (``sgvb_b`` refuses it; ``meanfield`` and the
    Monte Carlo estimators take it)."""

    name = "full_covariance"
    local_constraints: ClassVar[dict[str, Any]] = {
        "loc": constraints.real,
        "scale_tril": constraints.lower_cholesky,
    }

    def __init__(
        self,
        latent_dim: int,
        context: str = "encoder",
        hidden_dims: Sequence[int] = (),
        activation: str = "tanh",
        x_dim: int | None = None,
    ):
        super().__init__(latent_dim, context, x_dim)
        hidden = _hidden(hidden_dims)
        self.hidden_dims = hidden
        self.trunk = mlp_trunk(self.context_dim, hidden, activation)
        off = latent_dim * (latent_dim - 1) // 2
        width = hidden[-1] if hidden else self.context_dim
        self.off_diagonal = nn.Linear(width, off)
        nn.init.zeros_(self.off_diagonal.weight)
        nn.init.zeros_(self.off_diagonal.bias)
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    def local_parameters(self, encoder_output: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, scale = gaussian_output(encoder_output, self.name)
        off = self.off_diagonal(self.trunk(self.context_of(loc, scale, x)))
        tril = torch.diag_embed(scale)
        tril[..., self._rows, self._cols] = off
        return {"loc": loc, "scale_tril": tril}

    def from_local(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        return dist.MultivariateNormal(params["loc"], scale_tril=params["scale_tril"])

    def forward(self, encoder_output: Any, x: torch.Tensor) -> dist.TorchDistribution:
        return self.from_local(self.local_parameters(encoder_output, x), x)


class _Flow(_Conditioned):
    """A normalising flow on the encoder's Gaussian: z_0 = mu(x) + sigma(x) eps, then
    ``num_flows`` conditional transforms of Pyro's (:mod:`pyro.distributions.transforms`),
    each given the context (:class:`FlowPosterior`)."""

    local_constraints: ClassVar[dict[str, Any]] = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "context": constraints.real,
    }

    def __init__(
        self,
        latent_dim: int,
        num_flows: int,
        hidden_dims: Sequence[int],
        context: str = "encoder",
        x_dim: int | None = None,
    ):
        super().__init__(latent_dim, context, x_dim)
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 1:
            raise refuse("num_flows", num_flows, "an integer >= 1")
        self.num_flows = num_flows
        self.hidden_dims = _hidden(hidden_dims, at_least_one=True)
        self.flows = nn.ModuleList(self.make_flow() for _ in range(num_flows))

    def make_flow(self) -> nn.Module:
        raise NotImplementedError

    def local_parameters(self, encoder_output: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, scale = gaussian_output(encoder_output, self.name)
        return {"loc": loc, "scale": scale, "context": self.context_of(loc, scale, x)}

    def from_local(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        context = params["context"]
        transforms = [flow.condition(context) for flow in self.flows]
        return FlowPosterior(params["loc"], params["scale"], transforms, self.name)

    def forward(self, encoder_output: Any, x: torch.Tensor) -> dist.TorchDistribution:
        return self.from_local(self.local_parameters(encoder_output, x), x)


class IAF(_Flow):
    """Inverse autoregressive flow (Kingma et al. 2016): ``num_flows`` steps of Pyro's
    ``ConditionalAffineAutoregressive`` in its stable form, z_t = sigma_t z_{t-1} + (1 -
    sigma_t) m_t with (m_t, sigma_t) from a MADE over z_{t-1} (``hidden_dims``) given the
    context (the paper's h), the orderings of the steps drawn at random. Its inverse is
    exact (one MADE pass per dimension), so log q is known at any z."""

    name = "iaf"

    def __init__(
        self,
        latent_dim: int,
        num_flows: int = 2,
        hidden_dims: Sequence[int] = (100,),
        context: str = "encoder",
        x_dim: int | None = None,
    ):
        super().__init__(latent_dim, num_flows, hidden_dims, context, x_dim)

    def make_flow(self) -> nn.Module:
        return T.conditional_affine_autoregressive(
            self.latent_dim, self.context_dim, list(self.hidden_dims), stable=True
        )


class Planar(_Flow):
    """Planar flows (Rezende & Mohamed 2015, sec. 4.1), amortised: ``num_flows`` steps of
    Pyro's ``ConditionalPlanar``, z_t = z_{t-1} + u tanh(w^T z_{t-1} + b), with (u, w, b) of
    each step from an MLP on the context (``hidden_dims``). Pyro leaves its inverse
    unimplemented; log q at a point the flow did not draw (the mutual information's
    aggregate posterior, a path estimator's score term) inverts it numerically: the
    scalar w^T z_{t-1} solves a monotone equation (bisection, then one Newton step that
    carries the gradient)."""

    name = "planar"

    def __init__(
        self,
        latent_dim: int,
        num_flows: int = 10,
        hidden_dims: Sequence[int] = (50,),
        context: str = "encoder",
        x_dim: int | None = None,
    ):
        super().__init__(latent_dim, num_flows, hidden_dims, context, x_dim)

    def make_flow(self) -> nn.Module:
        return T.conditional_planar(self.latent_dim, self.context_dim, list(self.hidden_dims))


class FlowPosterior(dist.TorchDistribution):
    """q(z|x) of a flow: z_0 = loc + scale * eps, eps ~ N(0, I), then the (conditioned)
    transforms in order; log q(z) = log N(z_0; loc, scale^2) - sum_t log|det dz_t/dz_{t-1}|.

    Batch shape ``loc.shape[:-1]``, event shape [latent_dim]; reparameterised. The log-density
    of the last draw is kept from the draw itself (its gradient is the total derivative
    through z); at any other value z the transforms are inverted (Pyro's inverse, or the
    numerical one of a planar step), so ``log_prob(z.detach())`` has the score term
    d log q / d phi at fixed z as its gradient, which the path estimators (STL, DReG)
    subtract, and ``log_prob`` of any point is defined (importance sampling, the aggregate
    posterior of the mutual information).
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        transforms: Sequence[Any],
        family: str = "flow",
        validate_args: bool | None = None,
    ):
        self.loc, self.scale, self.transforms, self.family = loc, scale, list(transforms), family
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> FlowPosterior:
        shape = torch.Size(batch_shape) + self.event_shape
        return FlowPosterior(
            self.loc.expand(shape), self.scale.expand(shape), self.transforms, self.family
        )

    def _forward(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = dist.Normal(self.loc, self.scale).log_prob(z0).sum(-1)
        z, log_q = z0, base
        for t in self.transforms:
            y = t(z)
            log_q = log_q - t.log_abs_det_jacobian(z, y)
            z = y
        return z, log_q

    def rsample(self, sample_shape: Any = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        z, log_q = self._forward(self.loc + self.scale * eps)
        self._last = (z, log_q)
        return z

    def sample(self, sample_shape: Any = ()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._last is not None and value is self._last[0]:
            return self._last[1]
        # Each value against each of q's batch entries (Pyro's networks expand the context
        # to the value's shape only where the value has as many batch dimensions).
        z = value.expand(torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape))
        for t in reversed(self.transforms):
            z = _invert(t, z, self.family)
        return self._forward(z)[1]

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError(f"guide={self.family}: q's mean has no closed form")


def _invert(t: Any, y: torch.Tensor, family: str) -> torch.Tensor:
    """x with t(x) = y: Pyro's inverse where it has one, the planar step's numerically."""
    if isinstance(t, ConditionedPlanar):
        return _invert_planar(t, y)
    try:
        return t.inv(y)
    except (NotImplementedError, KeyError):
        raise ArgumentError(
            f"guide={family}: the flow step {type(t).__name__} has no inverse, so log q(z|x) "
            "is known only at the points it drew"
        ) from None


def _invert_planar(t: Any, y: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """The inverse of y = x + u^ tanh(w.x + b): a = w.x solves a + (w.u^) tanh(a + b) = w.y,
    increasing in a (w.u^ > -1, which Pyro's u^ enforces) and within |w.u^| of w.y:
    bisection to float precision, then one Newton step with the gradient attached (the
    implicit derivative at the root), and x = y - u^ tanh(a + b)."""
    bias, u, w = t._params() if callable(t._params) else t._params
    u_hat = t.u_hat(u, w)
    wu = (w * u_hat).sum(-1, keepdim=True)
    wy = (w * y).sum(-1, keepdim=True)
    bias = bias.expand_as(wy) if bias.shape != wy.shape else bias
    with torch.no_grad():
        lo, hi = wy - wu.abs() - 1e-3, wy + wu.abs() + 1e-3
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            above = mid + wu * torch.tanh(mid + bias) > wy
            lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
        a0 = 0.5 * (lo + hi)
    act = torch.tanh(a0 + bias)
    f = a0 + wu * act - wy
    a = a0 - f / (1 + wu * (1 - act.pow(2)))
    return y - u_hat * torch.tanh(a + bias)


def check_estimator(family: GuideFamily, estimator: Any, fast: str | None = None) -> None:
    """Refuse an estimator that does not take this guide family, before training: the
    estimator's own ``check_guide`` (estimator B: only a family with ``closed_form_kl``), a
    pathwise estimator (``reparameterized = True``) with a family that has no rsample, and
    the fast path's estimator B (``fast="B"``) with a family without eq. 10's KL. Every
    other estimator takes any family: the Monte Carlo ones (A, STL, DReG, IWAE, ...) need
    only draws and log q, which every family gives."""
    check = getattr(estimator, "check_guide", None)
    if callable(check):
        check(family)
    if getattr(estimator, "reparameterized", False) is True and not family.reparameterized:
        raise EstimatorError(
            f"estimator={getattr(estimator, 'name', type(estimator).__name__)} needs a "
            f"reparameterised guide, but guide={family.name} has no rsample; use "
            "estimator=score_function, nvil or vimco"
        )
    if fast == "B" and not family.closed_form_kl:
        raise EstimatorError(
            f"fast=true with estimator=sgvb_b computes eq. 10's closed-form KL, which "
            f"guide={family.name} has not; use estimator=sgvb_a or trace_elbo (fast or not)"
        )


def _hidden(hidden_dims: Any, at_least_one: bool = False) -> list[int]:
    allowed = "a list of integers >= 1" + (" (at least one)" if at_least_one else " (or [])")
    if isinstance(hidden_dims, str | bytes) or not isinstance(hidden_dims, Sequence):
        raise refuse("hidden_dims", hidden_dims, allowed)
    hidden = list(hidden_dims)
    if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise refuse("hidden_dims", hidden, allowed)
    if at_least_one and not hidden:
        raise refuse("hidden_dims", hidden, allowed)
    return hidden


#: The families shipped here, by the name ``guide=`` gives them (``conf/guide/<name>.yaml``).
GUIDES: dict[str, type[GuideFamily]] = {
    "diagonal": DiagonalGaussian,
    "full_covariance": FullCovariance,
    "iaf": IAF,
    "planar": Planar,
}

GuideLike = GuideFamily | Mapping[str, Any] | str | None


def build_guide(spec: Mapping[str, Any] | str, latent_dim: int, **context: Any) -> GuideFamily:
    """The guide family ``spec`` describes: a mapping with ``_target_`` (a
    :class:`GuideFamily` subclass's import path), an optional ``name`` and the class's
    parameters; or the name of a shipped family (:data:`GUIDES`), alone or as ``name`` of a
    mapping without ``_target_``.

    ``context`` carries what a family may take from the model (``x_dim``). Errors name the
    parameter as an ArgumentError (the configuration layer names it ``guide.<key>``).
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise refuse("guide", spec, f"one of {sorted(GUIDES)}, a mapping with a _target_")
    params = dict(spec)
    name = params.pop("name", None)
    if "_target_" in params:
        cls = _locate(params.pop("_target_"))
    elif name in GUIDES:
        cls = GUIDES[name]
    else:
        raise refuse(
            "name",
            name,
            f"one of {sorted(GUIDES)}, or a _target_ (the import path of a "
            "pyro_vae.guides.GuideFamily subclass)",
        )
    check_params(cls, params, _path(cls), skip=("self", "latent_dim", *CONTEXT_KEYS))
    family = cls(latent_dim, **params, **accepted_context(cls, context))
    if name:
        family.name = name  # the label, for messages and titles
    return family


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _locate(target: Any) -> type[GuideFamily]:
    allowed = "the import path of a pyro_vae.guides.GuideFamily subclass"
    cls = import_target(
        target, "_target_", allowed, [f"pyro_vae.guides.{c.__name__}" for c in GUIDES.values()]
    )
    if not issubclass(cls, GuideFamily):
        raise refuse("_target_", target, allowed)
    return cls
