"""Monte Carlo EM with a Hybrid Monte Carlo posterior sampler: the paper's baseline in Figure 3.

MCEM has no encoder in its updates (appendix E). For each minibatch:

- E-step: advance a persistent HMC chain per datapoint, targeting
  p_theta(z|x_i) ∝ p(z) p_theta(x_i|z), with ``mcem.leapfrog_steps`` leapfrog steps (the
  paper: 10) and one step size for all chains, tuned after every transition toward a mean
  acceptance rate of ``mcem.target_accept`` (the paper: 90%). Chains live as long as the
  run (they are part of the checkpoint); a datapoint's chain moves only when its minibatch
  is drawn, so on a large training set each chain mixes slowly: the per-datapoint sampling
  loop that AEVB's encoder does away with.
- M-step: ``mcem.m_steps`` (the paper: 5) optimiser steps on theta ascending
  (N/M) sum_i log p_theta(x_i, z_i) at the sampled z_i. By Fisher's identity,
  E_{p(z|x)}[grad_theta log p(x, z)] = grad_theta log p(x), so this is stochastic ascent on
  the marginal likelihood, as exact as the chains are mixed.

The encoder is trained beside it for monitoring only: one AEVB step on phi per minibatch
with theta held fixed. theta never sees the encoder; the encoder only lets the trainer
report the same ELBO (a lower bound on this model's log p(x)) for MCEM as for AEVB and
wake-sleep, and gives importance sampling a proposal.

The chains start from draws of the prior; the step size from ``step_size``. A prior
defined through the encoder (the VampPrior) is refused: see
:func:`~pyro_vae.methods.base.split_parameters`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ArgumentError, refuse
from ..hmc import adapt_step_size, hmc_step, log_joint
from ..model import VAE
from ..optim import OptimizerFactory
from .base import default_optimizer, descend, register, split_parameters


@register("mcem")
class MCEM:
    """E-step by batched HMC on persistent per-datapoint chains, then M-steps on theta.

    Args:
        vae: the model; ``vae.num_data`` (one chain per training point) must be set.
        optimizer: builds one optimiser for theta and one for the monitoring encoder.
        leapfrog_steps: per HMC transition (the paper: 10).
        hmc_steps: HMC transitions of a datapoint's chain per visit (E-step).
        m_steps: optimiser steps on theta per E-step (the paper: 5).
        step_size: initial HMC step size (one for all chains), then tuned.
        target_accept: the mean acceptance rate the step size is tuned to (the paper: 90%).
        adapt_rate: log step size += adapt_rate * (mean acceptance - target).
    """

    def __init__(
        self,
        vae: VAE,
        *,
        optimizer: OptimizerFactory = default_optimizer,
        clip_grad_norm: float | None = None,
        leapfrog_steps: int = 10,
        hmc_steps: int = 1,
        m_steps: int = 5,
        step_size: float = 0.05,
        target_accept: float = 0.9,
        adapt_rate: float = 0.5,
    ):
        for key, value in (
            ("leapfrog_steps", leapfrog_steps),
            ("hmc_steps", hmc_steps),
            ("m_steps", m_steps),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise refuse(key, value, "an integer >= 1")
        if not 0 < target_accept < 1:
            raise refuse("target_accept", target_accept, "a number in (0, 1)")
        if vae.num_data is None:
            raise ArgumentError("MCEM keeps one chain per training point: set vae.num_data")
        vae.require_one_layer("method=mcem (HMC over z)")
        self.vae = vae
        self.description = "method=mcem"
        self.leapfrog_steps, self.hmc_steps, self.m_steps = leapfrog_steps, hmc_steps, m_steps
        self.target_accept, self.adapt_rate = target_accept, adapt_rate
        theta, phi = split_parameters(vae, "mcem")
        self.theta_optim = optimizer(theta)
        self.phi_optim = optimizer(phi)
        self.optimizers = [self.theta_optim, self.phi_optim]
        self.clip_grad_norm = clip_grad_norm
        device = next(vae.parameters()).device
        with torch.no_grad():
            self.z = vae.prior().sample((vae.num_data,))
        # One step size for all chains, as the paper's "automatically tuned stepsize".
        self.step_size = torch.tensor(float(step_size), device=device)

    def e_step(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Advance the chains of datapoints ``idx`` by ``hmc_steps`` HMC transitions."""
        log_prob = log_joint(self.vae, x)
        z = self.z[idx]
        for _ in range(self.hmc_steps):
            z, accept_prob, _ = hmc_step(log_prob, z, self.step_size, self.leapfrog_steps)
            self.step_size = adapt_step_size(
                self.step_size, accept_prob, self.target_accept, self.adapt_rate
            )
        self.z[idx] = z
        return z

    def m_step_loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-(N/M) sum_i log p_theta(x_i, z_i): the complete-data loss at the sampled z."""
        return -self.vae.data_scale(x.shape[0]) * log_joint(self.vae, x)(z).sum()

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float:
        z = self.e_step(x, idx)
        for _ in range(self.m_steps):
            descend(self.m_step_loss(x, z), self.theta_optim, self.vae, self.clip_grad_norm)
        # Monitoring encoder: AEVB's phi-update with theta fixed (descend clears theta's grads).
        elbo = self.vae.data_scale(x.shape[0]) * self.vae.log_weights(x, 1).sum()
        descend(-elbo, self.phi_optim, self.vae, self.clip_grad_norm)
        return -elbo.item()

    def state_dict(self) -> dict[str, Any]:
        return {
            "theta_optimizer": self.theta_optim.state_dict(),
            "phi_optimizer": self.phi_optim.state_dict(),
            "z": self.z,
            "step_size": self.step_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta_optim.load_state_dict(state["theta_optimizer"])
        self.phi_optim.load_state_dict(state["phi_optimizer"])
        self.z = state["z"].to(self.z.device)
        self.step_size = state["step_size"].to(self.step_size.device)
