"""Priors p(z): objects a VAE takes, built from a specification when chosen by configuration.

A prior is a :class:`Prior` (a ``PyroModule``) whose call returns a Pyro distribution
over R^latent_dim: ``event_shape == (latent_dim,)``, empty batch shape. Learnable
parameters are ``PyroParam`` attributes (constrained where they must be), so SVI trains
them with the model and they live in the model's ``state_dict`` (checkpoints); fixed
parameters are buffers, so they follow ``.to(device)``.

From Python, construct one (``Factorized(20, pyro.distributions.Laplace, scale=1.0)``,
``VampPrior(20, x_dim=784)``) and pass it to :class:`~pyro_vae.model.VAE`. A
specification (what ``prior=...`` configures, and what a run directory records) is a
mapping with ``_target_`` (an import path), an optional ``name`` (a label for tables and
titles) and the parameters; :func:`build_prior` builds it. ``_target_`` is either

- a univariate distribution class with support on the real line, such as
  ``pyro.distributions.Laplace``: the prior is that family independently over the latent
  dimensions, p(z) = prod_j f(z_j; theta_j) (:class:`Factorized`); or
- a :class:`Prior` subclass, here or in the user's own module: built as
  ``cls(latent_dim, **params)``, with ``x_dim`` and ``encoder`` (the VAE's recognition
  network) added when its constructor takes them.

Bad values raise :class:`~pyro_vae.errors.ArgumentError` naming the parameter
(``scale=-1 is not allowed: ...``); the configuration layer names it ``prior.scale``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.nn import PyroModule, PyroParam

from .errors import ArgumentError, refuse
from .targets import accepted_context, check_params, import_target

# Keyword arguments a Prior's constructor may take from the model rather than the config.
CONTEXT_KEYS = ("x_dim", "encoder")


class Prior(PyroModule):
    """Base class: ``prior()`` returns p(z) over R^latent_dim.

    ``name`` is the configuration's label (``cfg.prior.name``) once :func:`build_prior`
    has built it.
    """

    name = "prior"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__  # a label until a configuration gives its own

    def __new__(cls, *args: Any, **kwargs: Any):
        self = super().__new__(cls)
        # The constructor's arguments, so that spec() can record how to build it again.
        object.__setattr__(self, "_init_arguments", (args, kwargs))
        return self

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:
        raise NotImplementedError

    def bind(self, vae: torch.nn.Module) -> None:
        """Called by the VAE that takes this prior; a prior defined through the VAE's own
        networks (:class:`VampPrior`) takes them here."""

    def spec(self) -> dict[str, Any]:
        """A specification :func:`build_prior` builds this prior from again (its learned
        values come from the model's ``state_dict``)."""
        args, kwargs = self._init_arguments
        signature = inspect.signature(type(self))
        params: dict[str, Any] = {}
        for key, value in signature.bind_partial(*args, **kwargs).arguments.items():
            if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                params.update(value)
            elif key not in ("latent_dim", *CONTEXT_KEYS):
                params[key] = value
        params = {k: _plain_value(v) for k, v in params.items()}
        return {"name": self.name, "_target_": _path(type(self)), **params}

    def _hold(self, name: str, value: torch.Tensor, constraint: Any, learnable: bool) -> None:
        """Keep ``value`` as a PyroParam (trained, constrained) or a buffer (fixed)."""
        if learnable:
            setattr(self, name, PyroParam(value, constraint))
        else:
            self.register_buffer(name, value)


class StandardNormal(Prior):
    """The paper's p(z) = N(0, I)."""

    name = "standard_normal"

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class Factorized(Prior):
    """p(z) = prod_j f(z_j; theta_j): a univariate family over R, independent over dimensions.

    Each parameter is a number (shared by all dimensions) or a list of ``latent_dim``
    numbers; with ``learnable=True`` every parameter of the family is learned per dimension
    under the family's own constraint (a positive scale stays positive), which for
    ``pyro.distributions.Normal`` is the empirical-Bayes diagonal Gaussian. The call
    returns ``family(**params).to_event(1)``, so a Normal family gives exactly
    ``Normal(loc, scale).to_event(1)`` (what the closed-form KL of estimator B expects).
    """

    def __init__(
        self,
        latent_dim: int,
        family: type[dist.TorchDistribution],
        learnable: bool = False,
        **params: Any,
    ):
        super().__init__(latent_dim)
        self.family = family
        self.name = family.__name__  # a label until a configuration gives its own
        what = _path(family)
        if not isinstance(learnable, bool):
            raise refuse("learnable", learnable, "true or false")
        names = check_params(family, params, what, skip=("validate_args",), also=("learnable",))
        values = {}
        for key in names:
            default = inspect.signature(family).parameters[key].default
            if key in params or isinstance(default, int | float):
                value = params.get(key, default)
                values[key] = _tensor(key, value, (latent_dim,), f"latent_dim={latent_dim}")
                _check_constraint(key, value, values[key], family, what)
        try:
            base = family(**values, validate_args=True)
        except (ValueError, TypeError) as e:
            raise ArgumentError(f"{what} refused the parameters {params}: {e}") from None
        if base.event_shape != () or type(base.support) is not type(constraints.real):
            raise refuse(
                "_target_",
                what,
                f"a univariate family on the real line (its support is {base.support}): "
                "the encoder's Gaussian q(z|x) puts mass on all of R",
            )
        try:
            base.log_prob(torch.zeros(latent_dim))
        except NotImplementedError:
            raise refuse("_target_", what, "a family with a log-density (log_prob)") from None
        self._param_names = list(values)
        for key, value in values.items():
            self._hold(key, value, base.arg_constraints.get(key, constraints.real), learnable)

    def forward(self) -> dist.TorchDistribution:
        return self.family(**{k: getattr(self, k) for k in self._param_names}).to_event(1)

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        spec["_target_"] = spec.pop("family")  # the family is what build_prior takes
        return spec


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """sum_k pi_k N(z; mu_k, diag sigma_k^2) with a log-density that scales to many z and k.

    ``MixtureSameFamily.log_prob`` forms a [..., K, D] tensor: for importance sampling
    (1000 samples of tens of points) against 500 VampPrior components that is gigabytes.
    Expanding the square, sum_d (z_d - mu_kd)^2 / sigma_kd^2 =
    z^2 . sigma_k^-2 - 2 z . (mu_k sigma_k^-2) + sum_d mu_kd^2 sigma_kd^-2, makes it two
    matrix products into [..., K]. They run in float64 because the three terms nearly
    cancel where z is near a narrow component. An expanded mixture (inside a
    ``pyro.plate``) uses the parent's direct formula.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.batch_shape != ():
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        base = self.component_distribution.base_dist
        loc, scale, z = base.loc.double(), base.scale.double(), value.double()
        precision = scale.pow(-2)
        quad = z.pow(2) @ precision.T - 2 * z @ (loc * precision).T
        quad = quad + (loc.pow(2) * precision).sum(-1)
        log_norm = -scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        log_mix = self.mixture_distribution.logits.double()
        return torch.logsumexp(log_mix + log_norm - 0.5 * quad, dim=-1).to(value.dtype)


class MixtureOfGaussians(Prior):
    """p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2), K = ``num_components``.

    Weights, means and scales are each learnable or fixed (``learn_weights``,
    ``learn_locs``, ``learn_scales``). ``locs`` ([K, latent_dim]) defaults to K draws
    from N(0, loc_std^2 I) (seeded by the run's seed, saved in checkpoints either way);
    ``scale`` is a number or a [K, latent_dim] list; ``weights`` (K positive numbers,
    normalised) defaults to uniform.
    """

    def __init__(
        self,
        latent_dim: int,
        num_components: int = 10,
        locs: Any = None,
        loc_std: float = 1.0,
        scale: Any = 1.0,
        weights: Any = None,
        learn_weights: bool = True,
        learn_locs: bool = True,
        learn_scales: bool = True,
    ):
        super().__init__(latent_dim)
        k = _positive_int("num_components", num_components)
        shape, where = (k, latent_dim), f"num_components={k}, latent_dim={latent_dim}"
        for key, flag in (
            ("weights", learn_weights),
            ("locs", learn_locs),
            ("scales", learn_scales),
        ):
            if not isinstance(flag, bool):
                raise refuse(f"learn_{key}", flag, "true or false")
        if locs is None:
            std = _tensor("loc_std", loc_std, (), "")
            _check_positive("loc_std", loc_std, std)
            locs = std * torch.randn(shape)
        else:
            locs = _tensor("locs", locs, shape, where)
        scales = _tensor("scale", scale, shape, where)
        _check_positive("scale", scale, scales)
        if weights is None:
            logits = torch.zeros(k)
        else:
            w = _tensor("weights", weights, (k,), f"num_components={k}")
            _check_positive("weights", weights, w)
            logits = w.log() - w.sum().log()
        self._hold("logits", logits, constraints.real, learn_weights)
        self._hold("locs", locs, constraints.real, learn_locs)
        self._hold("scales", scales, constraints.positive, learn_scales)

    def forward(self) -> dist.TorchDistribution:
        components = dist.Normal(self.locs, self.scales).to_event(1)
        return DiagonalNormalMixture(dist.Categorical(logits=self.logits), components)


class VampPrior(Prior):
    """p(z) = (1/K) sum_k q_phi(z | u_k): the VampPrior (Tomczak & Welling 2018, eq. 9).

    A uniform mixture of the encoder's posteriors at K learnable pseudo-inputs u_k (each
    x_dim values). The pseudo-inputs are constrained to [0, 1], where the data live, and
    start at ``pseudo_inputs_mean`` + ``pseudo_inputs_std`` * N(0, 1) (the paper's MNIST
    setting: 0.05 and 0.01). The encoder is the VAE's own, held by plain reference: it is
    not a submodule here, so its parameters are not duplicated in the state_dict nor
    renamed in Pyro's param store, and ``.to(device)`` of the VAE moves it. Left out
    (``encoder=None``), it is the encoder of the VAE that takes this prior.

    Its log-density depends on the encoder's weights (phi), so only a method that trains phi
    and theta on one objective (AEVB) can fit it; wake-sleep and MCEM refuse it.
    """

    def __init__(
        self,
        latent_dim: int,
        x_dim: int,
        encoder: torch.nn.Module | None = None,
        num_components: int = 500,
        pseudo_inputs_mean: float = 0.05,
        pseudo_inputs_std: float = 0.01,
    ):
        super().__init__(latent_dim)
        object.__setattr__(self, "_encoder", encoder)
        k = _positive_int("num_components", num_components)
        mean = _tensor("pseudo_inputs_mean", pseudo_inputs_mean, (), "")
        if not 0 < mean.item() < 1:
            raise refuse("pseudo_inputs_mean", pseudo_inputs_mean, "a number in (0, 1)")
        std = _tensor("pseudo_inputs_std", pseudo_inputs_std, (), "")
        if not std.item() >= 0:
            raise refuse("pseudo_inputs_std", pseudo_inputs_std, "a number >= 0")
        # Strictly inside (0, 1), where the sigmoid transform of unit_interval is finite.
        u = (mean + std * torch.randn(k, x_dim)).clamp(1e-3, 1 - 1e-3)
        self.pseudo_inputs = PyroParam(u, constraints.unit_interval)

    def bind(self, vae: torch.nn.Module) -> None:
        if self._encoder is None:
            object.__setattr__(self, "_encoder", vae.encoder)

    def forward(self) -> dist.TorchDistribution:
        if self._encoder is None:
            raise ArgumentError(
                "the VampPrior has no encoder: pass encoder=..., or give it to a VAE first"
            )
        loc, scale = self._encoder(self.pseudo_inputs)
        components = dist.Normal(loc, scale).to_event(1)
        return DiagonalNormalMixture(
            dist.Categorical(logits=loc.new_zeros(loc.shape[0])), components
        )


def build_prior(spec: Mapping[str, Any], latent_dim: int, **context: Any) -> Prior:
    """The prior ``spec`` describes (``_target_``, optional ``name``, and parameters; see the
    module docstring).

    ``context`` carries what some priors need from the model (``x_dim``, ``encoder``). Errors
    name the parameter (``scale=-1 is not allowed: ...``) as an ArgumentError.
    """
    params = dict(spec)
    name = params.pop("name", None)
    if "_target_" not in params:
        raise ArgumentError(
            f"missing value for {{key}}: a prior specification needs the import path of its "
            f"class or distribution family (got keys {sorted(spec)})",
            "_target_",
        )
    cls = _locate(params.pop("_target_"))
    if issubclass(cls, torch.distributions.Distribution):
        prior = Factorized(latent_dim, cls, **params)
    else:
        check_params(cls, params, _path(cls), skip=("self", "latent_dim", *CONTEXT_KEYS))
        prior = cls(latent_dim, **params, **accepted_context(cls, context))
    if name:
        prior.name = name  # the label, for messages and titles
    return prior


def prior_quantiles(prior: dist.TorchDistribution, u: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Quantiles of each coordinate's marginal of ``prior`` at levels ``u`` [n]: [n, D], and how.

    Exact where the marginals have an inverse CDF (Normal, Laplace, Logistic, ...); for a
    mixture of diagonal Gaussians its marginal CDF is inverted by bisection; otherwise
    (Student-t, a user's prior) they are empirical quantiles of 2^16 prior samples.
    """
    d = prior.event_shape[0]
    levels = u[:, None].expand(len(u), d)
    marginal = _marginals(prior)
    if marginal is not None:
        try:
            return marginal.icdf(levels), "prior quantiles"
        except NotImplementedError:
            pass
        try:
            return _invert_cdf(marginal, levels), "prior quantiles, CDF inverted numerically"
        except NotImplementedError:
            pass
    n = 2**16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        samples = prior.sample((n,)).sort(dim=0).values
    idx = (u * n).long().clamp(0, n - 1).to(samples.device)
    return samples[idx], "empirical quantiles of 2^16 prior samples"


def prior_marginals(prior: dist.TorchDistribution) -> dist.TorchDistribution | None:
    """The D univariate marginals of ``prior`` (a factorised family's, a diagonal Gaussian
    mixture's) as one distribution of batch shape [D]; None where they are not known."""
    return _marginals(prior)


def _marginals(prior: dist.TorchDistribution) -> dist.TorchDistribution | None:
    """The D univariate marginals of ``prior`` as one distribution of batch shape [D]."""
    d = prior.event_shape[0]
    if isinstance(prior, dist.Independent) and prior.base_dist.event_shape == ():
        return prior.base_dist.expand([d])
    if isinstance(prior, dist.MixtureSameFamily):
        comp = prior.component_distribution
        if isinstance(comp, dist.Independent) and isinstance(comp.base_dist, dist.Normal):
            loc, scale = comp.base_dist.loc, comp.base_dist.scale  # [K, D]
            logits = prior.mixture_distribution.logits.expand(d, -1)
            return dist.MixtureSameFamily(
                dist.Categorical(logits=logits), dist.Normal(loc.T, scale.T)
            )
    return None


def _invert_cdf(marginal: dist.TorchDistribution, u: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """x with marginal.cdf(x) = u, by bisection of a bracket grown until it holds u."""
    lo, hi = -torch.ones_like(u), torch.ones_like(u)
    for _ in range(64):
        below, above = marginal.cdf(lo) > u, marginal.cdf(hi) < u
        if not (below.any() or above.any()):
            break
        lo, hi = torch.where(below, 2 * lo, lo), torch.where(above, 2 * hi, hi)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        left = marginal.cdf(mid) < u
        lo, hi = torch.where(left, mid, lo), torch.where(left, hi, mid)
    return 0.5 * (lo + hi)


# Config helpers ---------------------------------------------------------------------


def _path(cls: type) -> str:
    if getattr(dist, cls.__name__, None) is cls:
        return f"pyro.distributions.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _locate(target: Any) -> type:
    """The class ``prior._target_`` names: a distribution family or a Prior subclass."""
    allowed = (
        "the import path of a univariate distribution class on the real line "
        "(e.g. pyro.distributions.Laplace) or of a pyro_vae.priors.Prior subclass"
    )
    cls = import_target(
        target, "_target_", allowed, [f"pyro.distributions.{n}" for n in dist.__all__]
    )
    if issubclass(cls, torch.distributions.Distribution):
        # torch's own classes lack Pyro's .to_event; Pyro wraps each under the same name.
        wrapped = getattr(dist, cls.__name__, None)
        if not issubclass(cls, TorchDistributionMixin) and isinstance(wrapped, type):
            cls = wrapped if issubclass(wrapped, cls) else cls
        if issubclass(cls, TorchDistributionMixin):
            return cls
    elif issubclass(cls, Prior):
        return cls
    raise refuse("_target_", target, allowed)


def _tensor(key: str, value: Any, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """``value`` (a number or nested list) as a float tensor broadcast to ``shape``."""
    expected = "a number" + (f" or a list of shape {list(shape)} ({where})" if shape else "")
    try:
        t = torch.as_tensor(value, dtype=torch.float32)
        if value is None or isinstance(value, bool) or not torch.isfinite(t).all():
            raise TypeError
        if t.shape not in (torch.Size([]), torch.Size(shape)):
            raise ValueError
        return t.expand(shape).clone()
    except (TypeError, ValueError, RuntimeError):
        raise refuse(key, value, expected) from None


def _check_constraint(key: str, raw: Any, value: torch.Tensor, family: type, what: str) -> None:
    constraint = getattr(family, "arg_constraints", {})
    constraint = constraint.get(key) if isinstance(constraint, dict) else None
    if constraint is None or constraints.is_dependent(constraint):
        return
    if not constraint.check(value).all():
        raise refuse(key, raw, f"values in {constraint} (the support of {what}'s {key})")


def _check_positive(key: str, raw: Any, value: torch.Tensor) -> None:
    if not (value > 0).all():
        raise refuse(key, raw, "numbers > 0")


def _positive_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise refuse(key, value, "an integer >= 1")
    return value


def _plain_value(value: Any) -> Any:
    """A constructor argument as YAML can hold it: classes by import path, tensors as lists."""
    if isinstance(value, type):
        return _path(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value
