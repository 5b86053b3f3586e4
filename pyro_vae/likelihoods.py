"""Likelihoods p_theta(x|z): how the decoder's output becomes a distribution over x.

A likelihood says which outputs it needs from the decoder (:attr:`Likelihood.heads`, e.g.
the logits of a Bernoulli, or the mean and log variance of a Gaussian), maps them to a
distribution with event shape ``[D]`` (``likelihood(output)``), gives the decoder mean
E[x|z] that the figures draw (``mean(output)``), and checks that data lie in its support
(``check(x, where)``). Keeping it apart from the network lets any decoder (the paper's MLP,
the conv network, a user's own ``nn.Module``) be paired with any likelihood; a plain
callable that returns a Pyro distribution works as a likelihood too.

Shipped (``likelihood=<name>``, :data:`LIKELIHOODS`):

==========================  ===================================  ===================
name                        p(x|z) per value                     data
==========================  ===================================  ===================
``bernoulli``               Bernoulli(sigmoid(y)), via logits    [0, 1] (binary)
``continuous_bernoulli``    ContinuousBernoulli(sigmoid(y))      [0, 1]
``gaussian``                Normal(mu, sigma^2)                  [0, 1] or real
``laplace``                 Laplace(mu, b)                       [0, 1] or real
``beta``                    Beta(a, b)                           [0, 1], squeezed
``poisson``                 Poisson(exp(y))                      counts 0, 1, ...
``negative_binomial``       NegativeBinomial(r, sigmoid(y))      counts 0, 1, ...
``categorical``             Categorical over 256 grey levels     k / 255
==========================  ===================================  ===================

and :class:`Family` for any ``pyro.distributions`` family, its parameters mapped from the
decoder's outputs through link functions (``likelihood._target_=pyro.distributions.Gamma``).

Which log-likelihoods compare: the discrete ones (``bernoulli`` on binary data, ``poisson``,
``negative_binomial``, ``categorical``) give probabilities, log p <= 0; the continuous ones
give densities, whose values change with the units of x. Only numbers of the same kind on
the same data compare (:attr:`Likelihood.discrete`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

from .errors import ArgumentError, DataError, refuse
from .networks import Head
from .targets import check_params, import_target, path_of

_NO_SHAPE = torch.Size()
Output = Any  # a tensor, or a tuple of tensors in the order of the likelihood's heads

#: Link functions from a decoder's raw output to a distribution's parameter.
LINKS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "sigmoid": torch.sigmoid,
    "exp": torch.exp,
    "softplus": F.softplus,
}


def _floored_log(raw: torch.Tensor, log_floor: float) -> torch.Tensor:
    """``m + softplus(raw - m)`` with ``m = log_floor``: a smooth floor on a log-parameter.

    Without a floor the likelihood of values the decoder fits exactly grows without bound
    and training diverges; the softplus keeps a gradient everywhere, unlike a hard clamp,
    and is within ``softplus(-4) < 0.02`` of the raw value once ``raw`` is 4 nats above it.
    """
    return log_floor + F.softplus(raw - log_floor)


class Likelihood:
    """Base class: ``self(output)`` is p(x|z) for the decoder's ``output``.

    A subclass sets :attr:`name`, :attr:`heads`, :attr:`discrete` and :attr:`support`, and
    implements ``__call__``; ``mean`` defaults to the distribution's mean.
    """

    #: The name ``likelihood=`` selects it by.
    name = "likelihood"
    #: The decoder outputs it takes, in order (:class:`~pyro_vae.networks.Head`).
    heads: tuple[Head, ...] = (Head("logits"),)
    #: Whether log p(x|z) is a log-probability (discrete data) rather than a log-density.
    discrete = False
    #: What data it takes, in words, for error messages.
    support = "real values"

    def __call__(self, output: Output) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, output: Output) -> torch.Tensor:
        """E[x|z], what the figures draw."""
        return self(output).mean

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        """A boolean tensor: which values of ``x`` this likelihood can evaluate."""
        return torch.isfinite(x)

    def check(self, x: torch.Tensor, where: str) -> None:
        """Raise :class:`~pyro_vae.errors.DataError` naming the likelihood, the first value
        outside its support and ``where`` (the file) if any value of ``x`` is outside."""
        bad = ~self.in_support(x)
        if bool(bad.any()):
            value = x[bad][0].item()
            raise DataError(
                f"{where}: likelihood={self.name} needs {self.support}; found {value!r} "
                f"({int(bad.sum())} of {x.numel()} values outside)"
            )

    def spec(self) -> dict[str, Any]:
        """The configuration that builds it again (:func:`build_likelihood`)."""
        return {"name": self.name, "_target_": f"{type(self).__module__}.{type(self).__name__}"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k not in SPEC_META)
        return f"{type(self).__name__}({args})"


SPEC_META = ("name", "_target_")


def _in_unit_interval(x: torch.Tensor) -> torch.Tensor:
    return (x >= 0) & (x <= 1)


def _counts(x: torch.Tensor) -> torch.Tensor:
    return (x >= 0) & (x == torch.round(x))


class Bernoulli(Likelihood):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(y_d)) with ``output`` the logits y (appendix C.1).

    The log-density is evaluated from the logits (binary cross-entropy with logits), which
    stays finite where sigmoid(y) rounds to 0 or 1. ``validate_args=False``: grey-level
    targets (``dataset.binarize=none``) are a common relaxation of the Bernoulli likelihood
    (unnormalised for them: :class:`ContinuousBernoulli` is the normalised one) and must not
    be refused by the support check.
    """

    name = "bernoulli"
    discrete = True
    support = "values in [0, 1] (0/1 data; grey levels are taken as a relaxation)"

    def __call__(self, output: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=output, validate_args=False).to_event(1)

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        return _in_unit_interval(x)


class ContinuousBernoulli(Likelihood):
    """p(x|z) = prod_d CB(x_d; sigmoid(y_d)) (Loaiza-Ganem & Cunningham 2019): the Bernoulli's
    density normalised over [0, 1], C(lambda) lambda^x (1 - lambda)^(1 - x), so grey levels
    get a proper likelihood. ``output`` is the logits y; the figures draw the distribution's
    mean, which is not lambda."""

    name = "continuous_bernoulli"
    support = "values in [0, 1]"

    def __call__(self, output: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=output, validate_args=False).to_event(1)

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        return _in_unit_interval(x)


MEAN_LINKS = ("sigmoid", "identity")
VARIANCES = ("output", "learned", "fixed")


class _LocationScale(Likelihood):
    """Shared by :class:`Gaussian` and :class:`Laplace`: a location through ``mean`` (sigmoid
    into (0, 1), the paper's Frey Face decoder, or identity for unbounded data) and a scale
    given per datapoint by the decoder (``variance="output"``), learned once per dimension
    (``"learned"``), or fixed (``"fixed"``, ``scale=``), softly floored in log space."""

    family: type[dist.TorchDistribution]
    scale_head = "log_scale"

    def __init__(
        self,
        mean: str = "sigmoid",
        variance: str | None = None,
        scale: float | None = None,
        floor: float = 1e-4,
    ):
        if mean not in MEAN_LINKS:
            raise refuse("mean", mean, f"one of {list(MEAN_LINKS)}")
        if variance is None:
            variance = "output" if scale is None else "fixed"
        if variance not in VARIANCES:
            raise refuse("variance", variance, f"one of {list(VARIANCES)} or null")
        if variance == "fixed":
            if scale is None or not (isinstance(scale, int | float) and scale > 0):
                raise refuse("scale", scale, "a number > 0 (variance=fixed)")
        elif scale is not None:
            raise refuse("scale", scale, f"null with variance={variance} (a scale fixes it)")
        if not (isinstance(floor, int | float) and floor > 0):
            raise refuse(self._floor_key, floor, "a number > 0")
        self.mean_link, self.variance, self.scale, self.floor = mean, variance, scale, floor
        self._log_floor = math.log(floor)
        loc = (Head("loc"),)
        if variance == "fixed":
            self.heads = loc
        else:
            self.heads = (*loc, Head(self.scale_head, shared=variance == "learned"))

    _floor_key = "min_scale"

    @property
    def support(self) -> str:  # type: ignore[override]
        return "values in [0, 1] (mean=sigmoid)" if self.mean_link == "sigmoid" else "real values"

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean_link == "sigmoid":
            return _in_unit_interval(x)
        return torch.isfinite(x)

    def _loc_and_raw(self, output: Output) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.variance == "fixed":
            loc, raw = output, None
        else:
            loc, raw = output
        return (torch.sigmoid(loc) if self.mean_link == "sigmoid" else loc), raw

    def mean(self, output: Output) -> torch.Tensor:
        return self._loc_and_raw(output)[0]

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "mean": self.mean_link,
            "variance": self.variance,
            "scale": self.scale,
            self._floor_key: self.floor,
        }


class Gaussian(_LocationScale):
    """p(x|z) = N(x; mu, diag sigma^2) (appendix C.2).

    The decoder gives the mean's pre-activation and, with ``variance="output"`` (the
    paper's), log sigma^2 per datapoint and dimension; ``mean="sigmoid"`` (the paper's Frey
    Face decoder) bounds mu to (0, 1), ``mean="identity"`` leaves it unbounded for real-valued
    data. ``variance="learned"``: one log sigma^2 per dimension, a parameter of the decoder;
    ``scale=s`` (``variance="fixed"``): sigma = s. The variance is floored softly at
    ``min_var``: ``log sigma^2 = m + softplus(raw - m)`` with ``m = log(min_var)``; without
    it the density of pixels the decoder fits exactly grows without bound and training
    diverges.
    """

    name = "gaussian"
    family = dist.Normal
    scale_head = "log_var"
    _floor_key = "min_var"

    def __init__(
        self,
        mean: str = "sigmoid",
        variance: str | None = None,
        scale: float | None = None,
        min_var: float = 1e-4,
    ):
        super().__init__(mean, variance, scale, min_var)

    def __call__(self, output: Output) -> dist.TorchDistribution:
        loc, raw = self._loc_and_raw(output)
        if raw is None:
            return dist.Normal(loc, torch.full_like(loc, self.scale)).to_event(1)
        log_var = _floored_log(raw, self._log_floor)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)


class Laplace(_LocationScale):
    """p(x|z) = prod_d Laplace(x_d; mu_d, b_d) = exp(-|x - mu| / b) / 2b: the Gaussian's
    options (``mean``, ``variance``, ``scale``), with log b floored softly at
    ``log(min_scale)``. Its log-density is an L1 reconstruction error."""

    name = "laplace"
    family = dist.Laplace

    def __init__(
        self,
        mean: str = "sigmoid",
        variance: str | None = None,
        scale: float | None = None,
        min_scale: float = 1e-2,
    ):
        super().__init__(mean, variance, scale, min_scale)

    def __call__(self, output: Output) -> dist.TorchDistribution:
        loc, raw = self._loc_and_raw(output)
        if raw is None:
            return dist.Laplace(loc, torch.full_like(loc, self.scale)).to_event(1)
        return dist.Laplace(loc, torch.exp(_floored_log(raw, self._log_floor))).to_event(1)


class Beta(Likelihood):
    """p(x|z) = prod_d Beta(x'_d; a_d, b_d), a = softplus(y_a) + c, b = softplus(y_b) + c with
    ``c = min_concentration``. The Beta's support is the open interval (0, 1): data in
    [0, 1] are squeezed to ``x' = eps + (1 - 2 eps) x`` so that 0 and 1 (MNIST's background)
    have a finite density. The figures draw a / (a + b), mapped back by the same squeeze."""

    name = "beta"
    heads = (Head("concentration1"), Head("concentration0"))
    support = "values in [0, 1]"

    def __init__(self, eps: float = 1e-3, min_concentration: float = 1e-2):
        if not (isinstance(eps, int | float) and 0 < eps < 0.5):
            raise refuse("eps", eps, "a number in (0, 0.5)")
        if not (isinstance(min_concentration, int | float) and min_concentration > 0):
            raise refuse("min_concentration", min_concentration, "a number > 0")
        self.eps, self.min_concentration = eps, min_concentration

    def _beta(self, output: Output) -> dist.Beta:
        a, b = (F.softplus(t) + self.min_concentration for t in output)
        return dist.Beta(a, b, validate_args=False)

    def __call__(self, output: Output) -> dist.TorchDistribution:
        return _Squeezed(self._beta(output), self.eps).to_event(1)

    def mean(self, output: Output) -> torch.Tensor:
        return (self._beta(output).mean - self.eps) / (1 - 2 * self.eps)

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        return _in_unit_interval(x)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "eps": self.eps, "min_concentration": self.min_concentration}


class _Squeezed(dist.TorchDistribution):
    """``base`` evaluated at ``eps + (1 - 2 eps) x``: a distribution on [0, 1] from one on
    (0, 1). The density is the base's at the squeezed point (the squeeze's constant
    Jacobian, log(1 - 2 eps) per value, is left out, as is usual: the ELBO shifts by a
    constant)."""

    arg_constraints: ClassVar[dict] = {}
    support = constraints.unit_interval

    def __init__(self, base: dist.TorchDistribution, eps: float):
        self.base, self.eps = base, eps
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(self.eps + (1 - 2 * self.eps) * value)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        return ((self.base.sample(sample_shape) - self.eps) / (1 - 2 * self.eps)).clamp(0, 1)

    @property
    def mean(self) -> torch.Tensor:
        return (self.base.mean - self.eps) / (1 - 2 * self.eps)


class Poisson(Likelihood):
    """p(x|z) = prod_d Poisson(x_d; exp(y_d)), for counts; ``output`` is the log rate."""

    name = "poisson"
    discrete = True
    support = "counts (integers >= 0)"

    def __call__(self, output: torch.Tensor) -> dist.TorchDistribution:
        return dist.Poisson(torch.exp(output), validate_args=False).to_event(1)

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        return _counts(x)


class NegativeBinomial(Likelihood):
    """p(x|z) = prod_d NB(x_d; r_d, sigmoid(y_d)), for overdispersed counts: ``output`` is
    (logits y, raw total count), ``r = softplus(raw) + min_total_count``; the mean is
    r exp(y), the variance mean (1 + exp(y))."""

    name = "negative_binomial"
    heads = (Head("logits"), Head("total_count"))
    discrete = True
    support = "counts (integers >= 0)"

    def __init__(self, min_total_count: float = 1e-2):
        if not (isinstance(min_total_count, int | float) and min_total_count > 0):
            raise refuse("min_total_count", min_total_count, "a number > 0")
        self.min_total_count = min_total_count

    def __call__(self, output: Output) -> dist.TorchDistribution:
        logits, raw = output
        total = F.softplus(raw) + self.min_total_count
        return dist.NegativeBinomial(total, logits=logits, validate_args=False).to_event(1)

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        return _counts(x)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "min_total_count": self.min_total_count}


class Categorical(Likelihood):
    """p(x|z) = prod_d Categorical(k_d; softmax(y_d)) over ``levels`` grey levels, with
    ``k = round(x (levels - 1))`` for data stored as k / (levels - 1) (MNIST's grey levels
    / 255): a discrete likelihood of 8-bit pixels. ``output`` is [..., D, levels] logits;
    the figures draw the mean grey level."""

    name = "categorical"
    discrete = True

    def __init__(self, levels: int = 256):
        if not (isinstance(levels, int) and not isinstance(levels, bool) and levels >= 2):
            raise refuse("levels", levels, "an integer >= 2")
        self.levels = levels
        self.heads = (Head("logits", per_dim=levels),)

    @property
    def support(self) -> str:  # type: ignore[override]
        return f"grey levels k / {self.levels - 1}, k = 0..{self.levels - 1}"

    def __call__(self, output: torch.Tensor) -> dist.TorchDistribution:
        return _GreyLevels(output, self.levels).to_event(1)

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        k = x * (self.levels - 1)
        return _in_unit_interval(x) & ((k - torch.round(k)).abs() < 1e-3)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "levels": self.levels}


class _GreyLevels(dist.TorchDistribution):
    """A categorical over ``levels`` values k / (levels - 1), evaluated at x in [0, 1]."""

    arg_constraints: ClassVar[dict] = {}
    support = constraints.unit_interval

    def __init__(self, logits: torch.Tensor, levels: int):
        self.categorical = dist.Categorical(logits=logits, validate_args=False)
        self.levels = levels
        super().__init__(self.categorical.batch_shape, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        k = torch.round(value * (self.levels - 1)).long()
        return self.categorical.log_prob(k)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        return self.categorical.sample(sample_shape).to(self.categorical.logits) / (self.levels - 1)

    @property
    def mean(self) -> torch.Tensor:
        probs = self.categorical.probs
        grid = torch.linspace(0, 1, self.levels, device=probs.device, dtype=probs.dtype)
        return (probs * grid).sum(-1)


class Family(Likelihood):
    """Any ``pyro.distributions`` family as a likelihood: ``params`` maps each of its
    parameters that the decoder gives to a link (:data:`LINKS`: ``identity``, ``sigmoid``,
    ``exp``, ``softplus``), one decoder head per parameter in that order; ``fixed`` gives
    the others as constants. The data check is the family's ``support`` constraint.

    Example: ``Family("pyro.distributions.Gamma", {"concentration": "softplus", "rate":
    "softplus"})``, or in a configuration::

        likelihood:
          _target_: pyro.distributions.Gamma
          params: {concentration: softplus, rate: softplus}
    """

    def __init__(
        self,
        family: type[torch.distributions.Distribution] | str,
        params: Mapping[str, str],
        fixed: Mapping[str, float] | None = None,
        name: str | None = None,
    ):
        if isinstance(family, str):
            family = import_target(family, "family", _FAMILY)
        if not (isinstance(family, type) and issubclass(family, torch.distributions.Distribution)):
            raise refuse("family", family, "a torch/pyro distribution class or its import path")
        if not isinstance(params, Mapping) or not params:
            raise refuse("params", params, "a non-empty map {parameter: link}")
        for param, link in params.items():
            if link not in LINKS:
                raise refuse(f"params.{param}", link, f"one of {list(LINKS)}")
        self.family, self.params, self.fixed = family, dict(params), dict(fixed or {})
        self.name = name or family.__name__.lower()
        self.heads = tuple(Head(p) for p in self.params)
        self.discrete = bool(getattr(family.support, "is_discrete", False))
        self.support = f"the support of {family.__name__} ({family.support})"

    def __call__(self, output: Output) -> dist.TorchDistribution:
        outputs = output if len(self.heads) > 1 else (output,)
        kwargs = {
            p: LINKS[link](t) for (p, link), t in zip(self.params.items(), outputs, strict=True)
        }
        kwargs.update(
            {p: torch.as_tensor(v, dtype=outputs[0].dtype) for p, v in self.fixed.items()}
        )
        d = self.family(**kwargs, validate_args=False)
        if isinstance(d, dist.TorchDistribution):
            return d.to_event(1)
        return dist.Independent(d, 1)  # a plain torch.distributions class

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        support = self.family.support
        if isinstance(support, constraints._Dependent):
            return torch.isfinite(x)
        return support.check(x) & torch.isfinite(x)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "_target_": f"{self.family.__module__}.{self.family.__name__}",
            "params": self.params,
            "fixed": self.fixed,
        }


_FAMILY = "a torch/pyro distribution class or its import path"
_TARGET = "the import path of a pyro_vae Likelihood subclass or of a distribution family"

LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (
        Bernoulli,
        ContinuousBernoulli,
        Gaussian,
        Laplace,
        Beta,
        Poisson,
        NegativeBinomial,
        Categorical,
    )
}

LikelihoodLike = Likelihood | str | Mapping[str, Any] | Callable[[Any], dist.TorchDistribution]


def build_likelihood(spec: Mapping[str, Any]) -> Likelihood:
    """A likelihood from a specification: ``{"name": <shipped name>, **options}``, or
    ``{"_target_": <import path>, **options}`` naming a :class:`Likelihood` subclass (built
    with the options) or a distribution family (a :class:`Family`: ``params``, ``fixed``).
    ``name`` alone picks a shipped likelihood; with a ``_target_`` it is a label."""
    options = dict(spec)
    name = options.pop("name", None)
    target = options.pop("_target_", None)
    if target is None:
        if name not in LIKELIHOODS:
            raise refuse("name", name, f"one of {list(LIKELIHOODS)}, or a _target_")
        cls: Any = LIKELIHOODS[name]
    else:
        cls = import_target(target, "_target_", _TARGET)
    if isinstance(cls, type) and issubclass(cls, Likelihood):
        check_params(cls, options, path_of(cls), skip=("self",))
        likelihood = cls(**options)
        if name and target is not None:
            likelihood.name = name  # the label, for messages and records
        return likelihood
    if isinstance(cls, type) and issubclass(cls, torch.distributions.Distribution):
        unknown = set(options) - {"params", "fixed"}
        if unknown:
            raise refuse(sorted(unknown)[0], options[sorted(unknown)[0]], "params, fixed")
        if "params" not in options:
            raise ArgumentError(
                f"missing value for {{key}}: a likelihood with _target_={target} needs a map "
                "from the family's parameters to links, e.g. {loc: identity, scale: softplus}",
                "params",
            )
        return Family(cls, options["params"], options.get("fixed"), name=name)
    raise refuse("_target_", target, "a pyro_vae Likelihood subclass or a distribution class")


def get_likelihood(likelihood: LikelihoodLike) -> Likelihood | Callable[[Any], Any]:
    """A likelihood by name (``"bernoulli"``, ``"gaussian"``, ...), from a specification
    (:func:`build_likelihood`), or the object/callable given."""
    if isinstance(likelihood, str):
        if likelihood not in LIKELIHOODS:
            raise refuse("likelihood", likelihood, f"one of {list(LIKELIHOODS)}")
        return LIKELIHOODS[likelihood]()
    if isinstance(likelihood, Mapping):
        return build_likelihood(likelihood)
    if not callable(likelihood):
        raise refuse(
            "likelihood", likelihood, "a name, a Likelihood, or a callable returning a distribution"
        )
    return likelihood


def likelihood_heads(likelihood: Any) -> tuple[Head, ...]:
    """The decoder outputs ``likelihood`` takes (a plain callable: one, ``logits``)."""
    return tuple(getattr(likelihood, "heads", (Head("logits"),)))


def upgrade_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A model's settings as pyro-vae writes them now, from those of any version: before
    likelihoods were a config group, ``likelihood`` was a name and the Gaussian's variance
    floor the top-level ``decoder_min_var``."""
    out = dict(settings)
    if isinstance(out.get("likelihood"), str):
        name = out["likelihood"]
        spec = get_likelihood(name).spec() if name in LIKELIHOODS else {"name": name}
        if name == "gaussian" and "decoder_min_var" in out:
            spec["min_var"] = out["decoder_min_var"]
        out["likelihood"] = spec
    out.pop("decoder_min_var", None)
    return out
