"""What every training method shares: its interface, the registry, and the theta/phi split.

A method turns one minibatch into one update of the model (``method.step(x, idx)``) and
returns the minibatch's loss, -ELBO at full-data scale (eq. 8), so ``-loss / N`` is the
per-datapoint lower bound the metrics report. The trainer, checkpoints and metrics are
shared by every method through this interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from ..errors import ArgumentError
from ..model import VAE
from ..optim import OptimizerFactory, build_optimizer, guarded_step
from ..priors import Prior


class TrainingMethod(Protocol):
    """One update per minibatch; returns the minibatch's loss estimate.

    A step whose loss or gradient is NaN/Inf raises :class:`~pyro_vae.errors.NonFiniteError`
    without updating anything. ``optimizers`` are the torch optimisers the method steps
    (the step-size search sets their step size); ``state_dict`` holds everything a resumed
    run needs besides the model.
    """

    vae: VAE
    optimizers: list[torch.optim.Optimizer]
    description: str  # the method in a few words, for messages ("method=aevb, estimator=stl")

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


#: ``method=`` name -> constructor ``(vae, **options)``; each module registers its own.
METHODS: dict[str, Callable[..., TrainingMethod]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make the method selectable as ``method=name``."""

    def add(cls: type) -> type:
        METHODS[name] = cls
        return cls

    return add


def default_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam with step size 1e-3 (fused where torch has the kernel)."""
    return build_optimizer(params)


def split_parameters(
    vae: VAE, method: str
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(theta, phi): the generative model's parameters (decoder, prior, upper layers'
    p(z_l | z_{l+1})) and the recognition model's (encoder, upper layers' q).

    Wake-sleep and MCEM update theta and phi on two different objectives, so a prior
    whose density depends on the encoder's weights (the VampPrior) would have the
    generative model's gradient dropped from phi: refused, naming the prior.
    """
    phi = vae.recognition_parameters()
    if prior_depends_on(vae.prior, phi):
        name = getattr(vae.prior, "name", type(vae.prior).__name__)
        raise ArgumentError(
            f"method={method} with prior={name} is not allowed: the prior's density depends "
            f"on the encoder's weights (phi), which {method} updates on a different objective "
            "from the generative model's (theta), so the prior would never get its gradient "
            "through them; use method=aevb with this prior, or a prior of its own parameters"
        )
    ids = {id(p) for p in phi}
    theta = [p for p in vae.parameters() if id(p) not in ids]
    return theta, phi


def prior_depends_on(prior: Prior, params: list[torch.nn.Parameter]) -> bool:
    """Whether log p(z) has a gradient with respect to any of ``params``."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        return False
    with torch.enable_grad():
        device = trainable[0].device
        log_p = prior().log_prob(torch.zeros(1, prior.latent_dim, device=device)).sum()
        if not log_p.requires_grad:
            return False
        grads = torch.autograd.grad(log_p, trainable, allow_unused=True)
    return any(g is not None for g in grads)


def descend(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    vae: VAE,
    clip_grad_norm: float | None = None,
) -> None:
    """One guarded step of ``optimizer`` on ``loss``; the model's gradients are cleared before
    and after, so a parameter set that ``loss`` reaches but ``optimizer`` does not hold
    stays unchanged."""
    vae.zero_grad(set_to_none=True)
    loss.backward()
    guarded_step(optimizer, clip_grad_norm)
    vae.zero_grad(set_to_none=True)


__all__ = [
    "METHODS",
    "OptimizerFactory",
    "TrainingMethod",
    "default_optimizer",
    "descend",
    "prior_depends_on",
    "register",
    "split_parameters",
]
