"""Stochastic layers above the first: a VAE with a stack of latent variables (Burda et al.
2015, sec. 5, their two-stochastic-layer architecture).

A VAE's first stochastic layer z_1 is the one its encoder and decoder meet (x -> z_1 ->
x). :class:`LatentStack` adds layers z_2, ..., z_L above it, each a conditional Gaussian
in both directions, with the prior p(z_L) at the top::

    generative:   p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1)
    recognition:  q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})

Each conditional is N(mu(z), diag sigma^2(z)) with an MLP (:class:`~pyro_vae.networks.
GaussianEncoder`): upward from z_l's width through the layer's ``hidden_dims`` to z_{l+1};
downward through the same widths reversed, as the decoder mirrors the encoder. Burda et
al.'s 784-200-200-100-100-100-50 model is ``latent_dim=100, hidden_dims=[200, 200]``
with one upper layer ``{"latent_dim": 50, "hidden_dims": [100, 100]}``.

The sites are named ``z1`` (the first layer) up to ``zL`` in the model and the guide;
a VAE without upper layers keeps its one site ``z``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from .errors import ArgumentError, refuse
from .networks import GaussianEncoder

LAYER_KEYS = ("latent_dim", "hidden_dims")
VAMP_ON_STACK = (
    "prior=vamp is not allowed with upper_layers: its components are the encoder's q(z|u) "
    "at the first layer, not at the top layer the prior is on; use another prior, or one "
    "stochastic layer"
)


def layer_specs(layers: Any) -> list[dict[str, Any]]:
    """``layers`` checked: a list of mappings, each with ``latent_dim`` (an integer >= 1)
    and ``hidden_dims`` (a list of integers >= 1), as plain dicts. Errors name the entry,
    e.g. ``upper_layers[0].latent_dim``."""
    if layers is None:
        return []
    if isinstance(layers, str | bytes | Mapping) or not isinstance(layers, Sequence):
        raise refuse(
            "upper_layers", layers, "a list of {latent_dim: ..., hidden_dims: [...]} mappings"
        )
    specs = []
    for i, layer in enumerate(layers):
        where = f"upper_layers[{i}]"
        if not isinstance(layer, Mapping):
            raise refuse(where, layer, "a mapping {latent_dim: ..., hidden_dims: [...]}")
        unknown = sorted(set(layer) - set(LAYER_KEYS))
        if unknown:
            raise refuse(f"{where}.{unknown[0]}", layer[unknown[0]], f"a key among {LAYER_KEYS}")
        if "latent_dim" not in layer:
            raise ArgumentError(f"{where} needs a latent_dim (an integer >= 1)", where)
        dim, hidden = layer["latent_dim"], layer.get("hidden_dims", [])
        if not _is_count(dim):
            raise refuse(f"{where}.latent_dim", dim, "an integer >= 1")
        if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
            raise refuse(f"{where}.hidden_dims", hidden, "a list of integers >= 1 (or [])")
        if not all(_is_count(h) for h in hidden):
            raise refuse(f"{where}.hidden_dims", list(hidden), "a list of integers >= 1 (or [])")
        specs.append({"latent_dim": int(dim), "hidden_dims": [int(h) for h in hidden]})
    return specs


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


class ConditionalGaussian(GaussianEncoder):
    """N(mu(z), diag sigma^2(z)) with an MLP from z (a layer of :class:`LatentStack`)."""

    def distribution(self, z: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self(z)
        return dist.Normal(loc, scale).to_event(1)


class LatentStack(nn.Module):
    """The stochastic layers z_2..z_L above a VAE's first layer z_1 (of ``first_dim``
    units): ``up[l]`` is q(z_{l+2} | z_{l+1}), ``down[l]`` is p(z_{l+1} | z_{l+2}).

    ``layers`` lists the upper layers from z_2 upward, each ``{"latent_dim": ...,
    "hidden_dims": [...]}`` (:func:`layer_specs`); ``activation`` is the MLPs' (the VAE's).
    An empty ``layers`` is a stack of one layer: no parameters, and the VAE's one site ``z``.
    """

    def __init__(
        self,
        first_dim: int,
        layers: Sequence[Mapping[str, Any]],
        activation: str,
        latent: str = "gaussian",
        num_categories: int | None = None,
    ):
        super().__init__()
        self.specs = layer_specs(layers)
        dims = [first_dim] + [s["latent_dim"] for s in self.specs]
        self.dims = tuple(dims)
        #: The layers' family: ``gaussian``, or a discrete one (:mod:`pyro_vae.latents`).
        self.latent = latent
        self.up = nn.ModuleList()
        self.down = nn.ModuleList()
        for lower, upper, spec in zip(dims, dims[1:], self.specs, strict=False):
            hidden = spec["hidden_dims"]
            if latent == "gaussian":
                self.up.append(ConditionalGaussian(lower, upper, hidden, activation))
                self.down.append(ConditionalGaussian(upper, lower, hidden[::-1], activation))
                continue
            from .latents import conditional_layer  # discrete layers: sigmoid or softmax

            extra = {"num_categories": num_categories} if latent == "categorical" else {}
            self.up.append(conditional_layer(latent, lower, upper, hidden, activation, **extra))
            self.down.append(
                conditional_layer(latent, upper, lower, hidden[::-1], activation, **extra)
            )

    def __len__(self) -> int:
        """The number of stochastic layers, z_1 included."""
        return len(self.dims)

    @property
    def site_names(self) -> tuple[str, ...]:
        """The latent sites from the first layer up: ``("z",)`` for one layer, else
        ``("z1", ..., "zL")``."""
        if len(self) == 1:
            return ("z",)
        return tuple(f"z{i + 1}" for i in range(len(self)))

    @property
    def top_dim(self) -> int:
        """The width of the top layer z_L, the prior's space."""
        return self.dims[-1]

    def upward(self) -> Iterator[tuple[str, ConditionalGaussian]]:
        """(site, q(z_{l+1} | z_l)) for l = 1..L-1: the guide's order after z_1."""
        return zip(self.site_names[1:], self.up, strict=True)

    def downward(self) -> Iterator[tuple[str, ConditionalGaussian]]:
        """(site, p(z_l | z_{l+1})) for l = L-1..1: the model's order after z_L."""
        return zip(self.site_names[-2::-1], reversed(self.down), strict=True)

    def sample_up(
        self, z1: torch.Tensor, log_q: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """z_2..z_L drawn (reparameterised) from q above ``z1``, and ``log_q`` plus their
        log-densities: ([z_1, ..., z_L], log q(z_1..z_L | x))."""
        zs = [z1]
        for _, layer in self.upward():
            q = layer.distribution(zs[-1])
            zs.append(q.rsample() if q.has_rsample else q.sample())
            log_q = log_q + q.log_prob(zs[-1])
        return zs, log_q

    def log_prob_down(self, zs: Sequence[torch.Tensor], log_p_top: torch.Tensor) -> torch.Tensor:
        """``log_p_top`` (log p(z_L)) plus sum_l log p(z_l | z_{l+1}), for ``zs`` = [z_1..z_L]."""
        log_p = log_p_top
        for l in range(len(self) - 2, -1, -1):
            log_p = log_p + self.down[l].distribution(zs[l + 1]).log_prob(zs[l])
        return log_p

    @torch.no_grad()
    def descend(self, z_top: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """z_1 from z_L through p(z_l | z_{l+1}): at each layer's mean, or a draw
        (``sample``); ``z_top`` itself for one layer."""
        z = z_top
        for _, layer in self.downward():
            p = layer.distribution(z)
            z = p.sample() if sample else p.mean
        return z

    @torch.no_grad()
    def posterior_means(
        self, z1_loc: torch.Tensor, z1_scale: torch.Tensor, num_samples: int = 200
    ) -> list[torch.Tensor]:
        """E_q[z_l | x] for every layer, [M, dim_l] each: exact for z_1 (its loc); for an
        upper layer, the mean over ``num_samples`` ancestral draws of z_{l-1} of q(z_l |
        z_{l-1})'s own mean (Rao-Blackwellised: only the layer below is sampled, so the
        Monte Carlo noise is Var(mu_l(z_{l-1})) / S, near zero for a collapsed unit)."""
        means = [z1_loc]
        if len(self) == 1:
            return means
        z = dist.Normal(z1_loc, z1_scale).sample((num_samples,))
        for _, layer in self.upward():
            q = layer.distribution(z)
            means.append(q.mean.mean(0))
            z = q.sample()
        return means
