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
from collections.abc import Mapping
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from .errors import ArgumentError, refuse
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

    def forward(self, encoder_output: Any, x: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = gaussian_output(encoder_output, self.name)
        return dist.Normal(loc, scale).to_event(1)


#: The families shipped here, by the name ``guide=`` gives them (``conf/guide/<name>.yaml``).
GUIDES: dict[str, type[GuideFamily]] = {"diagonal": DiagonalGaussian}

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
