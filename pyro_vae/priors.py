"""Priors p(z), chosen by configuration (``prior=...``).

A prior is a ``PyroModule`` whose call returns a Pyro distribution with
``event_shape == (latent_dim,)`` and empty batch shape; learnable priors hold
``PyroParam`` attributes, so SVI trains them with the model and they live in the
model's ``state_dict`` (checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule


class Prior(PyroModule):
    """Base class: ``prior()`` returns p(z) over R^latent_dim."""

    name = "prior"

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:
        raise NotImplementedError


class StandardNormal(Prior):
    """The paper's p(z) = N(0, I)."""

    name = "standard_normal"

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


PRIORS: dict[str, Callable[..., Prior]] = {"standard_normal": StandardNormal}


def build_prior(cfg: Mapping[str, Any], latent_dim: int, **context: Any) -> Prior:
    """Build the prior named by ``cfg["name"]``.

    ``context`` carries what some priors need (``x_dim``, ``encoder``).
    """
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in PRIORS:
        raise ValueError(f"prior={name!r} is not one of {sorted(PRIORS)}")
    if cfg:
        raise ValueError(f"prior={name!r} takes no parameters, got {sorted(cfg)}")
    return PRIORS[name](latent_dim)
