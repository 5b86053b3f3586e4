"""The paper's MLPs (appendix C): a Gaussian encoder and Bernoulli or Gaussian decoders.

All are plain ``torch.nn.Module`` objects; :class:`pyro_vae.model.VAE` registers them
with ``pyro.module`` in its model and guide, so Pyro sees their parameters. The encoder
returns the Gaussian's (loc, scale), as in Pyro's VAE example; a decoder returns what its
likelihood (:mod:`pyro_vae.likelihoods`) takes: logits for the Bernoulli, (mean, log
variance) for the Gaussian. A user's own networks follow the same conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import refuse

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
}


def mlp_trunk(in_dim: int, hidden_dims: Sequence[int], activation: str) -> nn.Sequential:
    """Hidden layers ``h = act(W x + b)``; an empty ``hidden_dims`` gives the identity."""
    if activation not in ACTIVATIONS:
        raise refuse("activation", activation, f"one of {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), act()]
        in_dim = width
    return nn.Sequential(*layers)


def _out_dim(in_dim: int, hidden_dims: Sequence[int]) -> int:
    return hidden_dims[-1] if hidden_dims else in_dim


class GaussianEncoder(nn.Module):
    """q_phi(z|x) = N(mu, diag sigma^2) (appendix C.2).

    h = tanh(W3 x + b3), mu = W4 h + b4, log sigma^2 = W5 h + b5.
    """

    def __init__(self, x_dim: int, latent_dim: int, hidden_dims: Sequence[int], activation: str):
        super().__init__()
        self.trunk = mlp_trunk(x_dim, hidden_dims, activation)
        self.loc = nn.Linear(_out_dim(x_dim, hidden_dims), latent_dim)
        self.log_var = nn.Linear(_out_dim(x_dim, hidden_dims), latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mu, sigma), each [..., latent_dim]."""
        h = self.trunk(x)
        return self.loc(h), torch.exp(0.5 * self.log_var(h))


class BernoulliDecoder(nn.Module):
    """The logits W2 tanh(W1 z + b1) + b2 of p_theta(x|z) = Bernoulli(sigmoid(logits))
    (appendix C.1; :class:`~pyro_vae.likelihoods.Bernoulli` turns them into p(x|z))."""

    def __init__(self, latent_dim: int, x_dim: int, hidden_dims: Sequence[int], activation: str):
        super().__init__()
        self.trunk = mlp_trunk(latent_dim, hidden_dims, activation)
        self.logits = nn.Linear(_out_dim(latent_dim, hidden_dims), x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(self.trunk(z))


class GaussianDecoder(nn.Module):
    """(mu, log sigma^2) of p_theta(x|z) = N(mu, diag sigma^2): mu = sigmoid(W4 h + b4),
    log sigma^2 = W5 h + b5 (appendix C.2; :class:`~pyro_vae.likelihoods.Gaussian` makes
    the distribution).

    The sigmoid keeps the mean in (0, 1) as for the paper's Frey Face decoder. The
    variance is softly floored at ``min_var``: ``log sigma^2 = m + softplus(raw - m)``
    with ``m = log(min_var)``. Without a floor the likelihood of pixels the decoder fits
    exactly grows without bound and training diverges; the softplus keeps a gradient
    everywhere, unlike a hard clamp, and is within ``softplus(-4) < 0.02`` of the raw
    value once ``raw`` is 4 nats above the floor.
    """

    def __init__(
        self,
        latent_dim: int,
        x_dim: int,
        hidden_dims: Sequence[int],
        activation: str,
        min_var: float = 1e-4,
    ):
        super().__init__()
        if not min_var > 0:
            raise refuse("decoder_min_var", min_var, "a number > 0")
        self.trunk = mlp_trunk(latent_dim, hidden_dims, activation)
        self.loc = nn.Linear(_out_dim(latent_dim, hidden_dims), x_dim)
        self.log_var = nn.Linear(_out_dim(latent_dim, hidden_dims), x_dim)
        self.min_log_var = math.log(min_var)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mean, log variance), each [..., x_dim]."""
        h = self.trunk(z)
        raw = self.log_var(h)
        log_var = self.min_log_var + F.softplus(raw - self.min_log_var)
        return torch.sigmoid(self.loc(h)), log_var


def build_decoder(
    likelihood: str,
    latent_dim: int,
    x_dim: int,
    hidden_dims: Sequence[int],
    activation: str,
    min_var: float = 1e-4,
) -> BernoulliDecoder | GaussianDecoder:
    if likelihood == "bernoulli":
        return BernoulliDecoder(latent_dim, x_dim, hidden_dims, activation)
    if likelihood == "gaussian":
        return GaussianDecoder(latent_dim, x_dim, hidden_dims, activation, min_var)
    raise refuse(
        "likelihood", likelihood, "one of ['bernoulli', 'gaussian'] (the paper's decoders)"
    )


INITS = ("paper", "torch")


def init_parameters(module: nn.Module, scheme: str, std: float = 0.01) -> None:
    """Initialise ``module``'s parameters.

    ``paper``: every weight and bias ~ N(0, std^2) (sec. 5, std 0.01); ``torch``: keep
    PyTorch's default (uniform, scaled by fan-in).
    """
    if scheme == "torch":
        return
    if scheme != "paper":
        raise refuse("init", scheme, f"one of {list(INITS)}")
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
