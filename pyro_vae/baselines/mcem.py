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

The chains start from draws of the prior; the step size from ``mcem.step_size``.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ..hmc import adapt_step_size, hmc_step, log_joint
from ..model import VAE
from ..optim import build_optimizer
from . import descend, split_parameters


class MCEM:
    """E-step by batched HMC on persistent per-datapoint chains, then M-steps on theta."""

    def __init__(self, cfg: DictConfig, vae: VAE):
        self.vae = vae
        self.settings = cfg.mcem
        theta, phi = split_parameters(vae)
        self.theta_optim = build_optimizer(cfg, theta)
        self.phi_optim = build_optimizer(cfg, phi)
        device = next(vae.parameters()).device
        with torch.no_grad():
            self.z = vae.prior().sample((vae.num_data,))
        # One step size for all chains, as the paper's "automatically tuned stepsize".
        self.step_size = torch.tensor(float(cfg.mcem.step_size), device=device)

    def e_step(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Advance the chains of datapoints ``idx`` by ``mcem.hmc_steps`` HMC transitions."""
        s = self.settings
        log_prob = log_joint(self.vae, x)
        z = self.z[idx]
        for _ in range(s.hmc_steps):
            z, accept_prob, _ = hmc_step(log_prob, z, self.step_size, s.leapfrog_steps)
            self.step_size = adapt_step_size(
                self.step_size, accept_prob, s.target_accept, s.adapt_rate
            )
        self.z[idx] = z
        return z

    def m_step_loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-(N/M) sum_i log p_theta(x_i, z_i): the complete-data loss at the sampled z."""
        return -self.vae.data_scale(x.shape[0]) * log_joint(self.vae, x)(z).sum()

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> float:
        z = self.e_step(x, idx)
        for _ in range(self.settings.m_steps):
            descend(self.m_step_loss(x, z), self.theta_optim, self.vae)
        # Monitoring encoder: AEVB's phi-update with theta fixed (descend clears theta's grads).
        elbo = self.vae.data_scale(x.shape[0]) * self.vae.log_weights(x, 1).sum()
        descend(-elbo, self.phi_optim, self.vae)
        return -elbo.item()

    def state_dict(self) -> dict[str, Any]:
        return {
            "theta_optimizer": self.theta_optim.get_state(),
            "phi_optimizer": self.phi_optim.get_state(),
            "z": self.z,
            "step_size": self.step_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta_optim.set_state(state["theta_optimizer"])
        self.phi_optim.set_state(state["phi_optimizer"])
        self.z = state["z"].to(self.z.device)
        self.step_size = state["step_size"].to(self.step_size.device)
