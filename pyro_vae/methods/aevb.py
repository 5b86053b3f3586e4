"""Auto-Encoding Variational Bayes (algorithm 1): one gradient step of an ELBO estimator."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import ELBO

from ..errors import refuse
from ..estimators import build_estimator
from ..fast import FAST_ESTIMATORS, direct_bound
from ..guides import check_estimator
from ..model import VAE
from ..optim import OptimizerFactory, check_finite_loss, guarded_step, set_lr
from .base import default_optimizer, register


@register("aevb")
class AEVB:
    """Algorithm 1 of the paper: per minibatch, the estimator's gradient and one optimiser step.

    The step is Pyro's ELBO interface with a torch optimiser: ``elbo.loss_and_grads(model,
    guide, x, idx)`` (what ``SVI.step`` calls, without its parameter-capturing trace), then
    :func:`~pyro_vae.optim.guarded_step`. ``loss_and_grads`` rather than
    ``differentiable_loss``: Pyro's ``Trace_ELBO`` returns from ``loss_and_grads`` the
    bound accumulated in float64, from ``differentiable_loss`` rounded to float32, and
    the metrics are the former's numbers. The gradients are the same.

    Args:
        vae: the model; its ``model`` and ``guide`` are what the estimator traces.
        estimator: an ELBO object, or a name for :func:`~pyro_vae.estimators.build_estimator`.
        num_particles: L (K for IWAE and DReG), when ``estimator`` is a name.
        optimizer: parameters -> torch optimiser (default Adam, lr 1e-3).
        clip_grad_norm: rescale the gradient to at most this global norm.
        fast: estimators A and B (``trace_elbo``, ``sgvb_a``, ``sgvb_b``) computed without
            Pyro's traces (:func:`~pyro_vae.fast.direct_bound`): the same numbers, faster.
        estimator_params: the estimator's own parameters, when it is a name.
    """

    def __init__(
        self,
        vae: VAE,
        estimator: str | ELBO = "trace_elbo",
        *,
        num_particles: int = 1,
        optimizer: OptimizerFactory = default_optimizer,
        clip_grad_norm: float | None = None,
        fast: bool = False,
        **estimator_params: Any,
    ):
        self.vae = vae
        if isinstance(estimator, str):
            name = estimator
            if fast and estimator not in FAST_ESTIMATORS:
                raise refuse(
                    "fast",
                    True,
                    f"false with estimator={estimator}: the fast path computes "
                    f"{sorted(FAST_ESTIMATORS)}",
                )
            self.fast_estimator = estimator if fast else None
            if fast and FAST_ESTIMATORS[estimator] == "B":
                vae.require_one_layer(f"fast=true with estimator={estimator}")
            estimator = build_estimator(estimator, num_particles, **estimator_params)
        elif fast:
            raise refuse("fast", True, "false with an estimator object (fast needs its name)")
        else:
            self.fast_estimator, name = None, type(estimator).__name__
        fast_kind = FAST_ESTIMATORS[self.fast_estimator] if self.fast_estimator else None
        check_estimator(vae.guide_family, estimator, fast_kind)
        #: The method in a few words, for messages.
        self.description = f"method=aevb, estimator={name}"
        self.elbo, self.num_particles = estimator, num_particles
        self.optimizer = optimizer(list(vae.parameters()))
        self.optimizers = [self.optimizer]
        self.clip_grad_norm = clip_grad_norm
        # The estimator's own parameters (NVIL's baseline network, built at its first call).
        self._make_optimizer = optimizer
        self.estimator_optimizer: torch.optim.Optimizer | None = None

    def _adopt_estimator_parameters(self) -> None:
        """An optimiser over the estimator's own parameters, once it has some."""
        if self.estimator_optimizer is not None or not hasattr(self.elbo, "parameters"):
            return
        params = list(self.elbo.parameters())
        if params:
            # Its step size is the model's when it is built (after a step-size search); it
            # is not in self.optimizers, so a step-size schedule leaves it constant.
            self.estimator_optimizer = self._make_optimizer(params)
            set_lr(self.estimator_optimizer, self.optimizer.param_groups[0]["lr"])

    def loss_and_grads(self, x: torch.Tensor, idx: torch.Tensor) -> float:
        """The minibatch's loss; its gradient is left on the parameters."""
        if self.fast_estimator is None:
            return self.elbo.loss_and_grads(self.vae.model, self.vae.guide, x, idx)
        loss = -direct_bound(self.vae, x, self.fast_estimator, self.num_particles)
        value = loss.item()
        check_finite_loss(value)  # before backward: a NaN loss leaves no gradient behind
        loss.backward()
        return value

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float:
        loss = self.loss_and_grads(x, idx)
        check_finite_loss(loss)
        self._adopt_estimator_parameters()
        guarded_step(self.optimizer, self.clip_grad_norm)
        if self.estimator_optimizer is not None:
            guarded_step(self.estimator_optimizer, self.clip_grad_norm)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict()}
        if hasattr(self.elbo, "state_dict"):
            state["estimator"] = self.elbo.state_dict()
        if self.estimator_optimizer is not None:
            state["estimator_optimizer"] = self.estimator_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if "estimator" in state:
            self.elbo.load_state_dict(state["estimator"])
        self.estimator_optimizer = None  # rebuilt over the restored parameters
        self._adopt_estimator_parameters()
        if "estimator_optimizer" in state:
            self.estimator_optimizer.load_state_dict(state["estimator_optimizer"])
