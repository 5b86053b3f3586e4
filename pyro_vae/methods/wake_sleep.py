"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), the paper's baseline in Figure 2.

Same model p(z) p_theta(x|z) and encoder q_phi(z|x) as AEVB; only the updates differ:

- wake phase, theta: ascend (N/M) sum_i log p_theta(x_i, z_i) with z_i ~ q_phi(z|x_i)
  treated as data (no gradient reaches phi). Its theta-gradient is AEVB's: log q does not
  depend on theta.
- sleep phase, phi: ascend (N/M) sum_i log q_phi(z_i | x_i) on M "dreams" drawn from the
  model, z_i ~ p(z), x_i ~ p_theta(x|z_i) (Bernoulli pixels for MNIST). This minimises
  KL(p_theta(z|x) || q_phi(z|x)) averaged over the model's own p_theta(x), where AEVB
  minimises KL(q || p(z|x)) on the data: the sleep phase never sees a real datapoint.

Both phases run the same Pyro ``model`` and ``guide`` as AEVB through ``pyro.poutine``:
the wake phase replays the model on the guide's z, the sleep phase runs the model with its
observation removed (``poutine.uncondition``) and replays the guide on the dream. The plate
over the minibatch scales both objectives by N/M, so ``weight_decay=1.0`` is a N(0, I)
prior on either parameter set, as for AEVB.

Pyro's ``ReweightedWakeSleep`` is a different algorithm (importance-weighted wake
updates of theta and phi; no minibatch subsampling), so it is not used here.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine

from ..model import VAE
from ..optim import OptimizerFactory
from .base import default_optimizer, descend, register, split_parameters


@register("wake_sleep")
class WakeSleep:
    """One wake step on theta and one sleep step on phi per minibatch.

    ``step`` returns the minibatch's -ELBO at full-data scale, estimated from the wake
    phase's z ~ q(z|x) before the update, so the metrics compare directly with AEVB's.
    ``optimizer`` builds one optimiser for theta and one for phi. A prior defined through
    the encoder (the VampPrior) is refused: see
    :func:`~pyro_vae.methods.base.split_parameters`.
    """

    def __init__(
        self,
        vae: VAE,
        *,
        optimizer: OptimizerFactory = default_optimizer,
        clip_grad_norm: float | None = None,
    ):
        self.vae = vae
        self.description = "method=wake_sleep"
        theta, phi = split_parameters(vae, "wake_sleep")
        self.theta_optim = optimizer(theta)
        self.phi_optim = optimizer(phi)
        self.optimizers = [self.theta_optim, self.phi_optim]
        self.clip_grad_norm = clip_grad_norm

    def wake_loss(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(-(N/M) sum log p(x, z), the ELBO estimate) with z ~ q(z|x) held fixed."""
        with torch.no_grad():
            guide = poutine.trace(self.vae.guide).get_trace(x, idx)
            log_q = guide.log_prob_sum()
        model = poutine.trace(poutine.replay(self.vae.model, trace=guide)).get_trace(x, idx)
        log_p = model.log_prob_sum()
        return -log_p, (log_p - log_q).detach()

    def sleep_loss(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """-(N/M) sum log q(z|x) on M dreams (z, x) ~ p(z) p(x|z); ``x`` gives only the shape."""
        with torch.no_grad():
            dream = poutine.trace(poutine.uncondition(self.vae.model)).get_trace(x, idx)
        x_dream = dream.nodes["x"]["value"]
        guide = poutine.trace(poutine.replay(self.vae.guide, trace=dream)).get_trace(x_dream, idx)
        return -guide.log_prob_sum()

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float:
        theta_loss, elbo = self.wake_loss(x, idx)
        descend(theta_loss, self.theta_optim, self.vae, self.clip_grad_norm)
        descend(self.sleep_loss(x, idx), self.phi_optim, self.vae, self.clip_grad_norm)
        return -elbo.item()

    def state_dict(self) -> dict[str, Any]:
        return {
            "theta_optimizer": self.theta_optim.state_dict(),
            "phi_optimizer": self.phi_optim.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta_optim.load_state_dict(state["theta_optimizer"])
        self.phi_optim.load_state_dict(state["phi_optimizer"])
