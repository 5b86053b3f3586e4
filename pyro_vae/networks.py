"""The paper's MLPs (appendix C): a Gaussian encoder and Bernoulli or Gaussian decoders.

All are plain ``torch.nn.Module`` objects; :class:`pyro_vae.model.VAE` registers them
with ``pyro.module`` in its model and guide, so Pyro sees their parameters. The encoder
returns the Gaussian's (loc, scale), as in Pyro's VAE example; a decoder returns what its
likelihood (:mod:`pyro_vae.likelihoods`) takes: logits for the Bernoulli, (mean, log
variance) for the Gaussian. A user's own networks follow the same conventions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ArgumentError, refuse
from .targets import accepted_context, check_params, import_target, path_of

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


@dataclass(frozen=True)
class Head:
    """One output of a decoder, as a likelihood asks for it (:attr:`Likelihood.heads
    <pyro_vae.likelihoods.Likelihood.heads>`).

    ``name`` is the decoder's attribute holding it (so a state dict names it); ``per_dim``
    values are given for each of the D data values (256 logits per pixel for a categorical
    over grey levels); a ``shared`` head is one learned vector of D values, not a function of
    z (a variance learned per dimension).
    """

    name: str
    per_dim: int = 1
    shared: bool = False


def heads_output(
    heads: Sequence[Head], outputs: Sequence[torch.Tensor]
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A decoder's return value: one tensor for one head, else a tuple in the heads' order."""
    return outputs[0] if len(heads) == 1 else tuple(outputs)


class HeadedDecoder(nn.Module):
    """Base of the decoders: the trunk's features go through one last layer per head of the
    likelihood, each an attribute named after its head (so the paper's decoders keep the
    parameter names and order they always had: ``logits`` for the Bernoulli, ``loc`` then
    ``log_var`` for the Gaussian). A shared head is a learned ``nn.Parameter`` of D values.

    A subclass calls :meth:`add_heads` with a factory of its last layer (a linear map for
    the MLP, a transposed convolution for the conv network) and :meth:`apply_heads` on the
    trunk's features, with a function that flattens a layer's output to ``[..., D * per_dim]``
    in the data's order.
    """

    heads: tuple[Head, ...]

    def add_heads(
        self, heads: Sequence[Head], x_dim: int, make_layer: Callable[[int], nn.Module]
    ) -> None:
        if not heads or not all(isinstance(h, Head) for h in heads):
            raise refuse("heads", heads, "a non-empty sequence of pyro_vae.networks.Head")
        self.heads, self.x_dim = tuple(heads), x_dim
        for head in self.heads:
            if head.shared:
                layer: nn.Module | nn.Parameter = nn.Parameter(torch.zeros(x_dim * head.per_dim))
            else:
                layer = make_layer(head.per_dim)
            setattr(self, head.name, layer)

    def apply_heads(
        self,
        features: torch.Tensor,
        batch_shape: Sequence[int],
        flatten: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Each head on ``features`` (whose leading dims flatten ``batch_shape``): tensors of
        shape ``[*batch_shape, D]``, or ``[*batch_shape, D, per_dim]``."""
        outputs = []
        for head in self.heads:
            layer = getattr(self, head.name)
            if head.shared:
                out = layer.expand(*batch_shape, -1)
            else:
                out = flatten(layer(features)).reshape(*batch_shape, -1)
            if head.per_dim > 1:
                out = out.reshape(*out.shape[:-1], self.x_dim, head.per_dim)
            outputs.append(out)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class MLPDecoder(HeadedDecoder):
    """The paper's decoder MLP (appendix C): ``h = tanh(W1 z + b1)`` (one layer per width of
    ``hidden_dims``), then one linear map per head of the likelihood: the logits ``W2 h + b2``
    of the Bernoulli (C.1), the mean ``W4 h + b4`` and log variance ``W5 h + b5`` of the
    Gaussian (C.2; :class:`~pyro_vae.likelihoods.Gaussian` applies the sigmoid and the
    variance floor). ``heads`` default to the Bernoulli's ``(Head("logits"),)``.
    """

    def __init__(
        self,
        latent_dim: int,
        x_dim: int,
        hidden_dims: Sequence[int],
        activation: str,
        heads: Sequence[Head] = (Head("logits"),),
    ):
        super().__init__()
        self.trunk = mlp_trunk(latent_dim, hidden_dims, activation)
        width = _out_dim(latent_dim, hidden_dims)
        self.add_heads(heads, x_dim, lambda per_dim: nn.Linear(width, x_dim * per_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.apply_heads(self.trunk(z), z.shape[:-1])


def build_user_network(spec: Mapping[str, Any], key: str, context: Mapping[str, Any]) -> nn.Module:
    """A user's network class named by ``spec["_target_"]`` (an import path), called with the
    rest of ``spec`` and the entries of ``context`` (``x_dim``, ``latent_dim``,
    ``image_shape``, ``heads``) that its signature takes. Errors name ``key``."""
    params = dict(spec)
    cls = import_target(params.pop("_target_", None), f"{key}._target_", "an nn.Module class")
    if not issubclass(cls, nn.Module):
        raise refuse(f"{key}._target_", spec["_target_"], "an nn.Module class")
    try:
        check_params(cls, params, path_of(cls), skip=("self", *context))
    except ArgumentError as e:
        raise ArgumentError(e.detail, f"{key}.{e.key}" if e.key else None) from None
    return cls(**params, **accepted_context(cls, context))


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
