"""Hybrid Monte Carlo for the posterior p_theta(z|x), one chain per datapoint, all in one batch.

Used by Monte Carlo EM (``pyro_vae.methods.mcem``) and by the paper's marginal-likelihood
estimator (``pyro_vae.marginal``, appendix D). Both need samples of z from
p_theta(z|x) ∝ p(z) p_theta(x|z) for every datapoint of a minibatch, driven by the gradient
grad_z log p_theta(z|x) = grad_z log p(z) + grad_z log p_theta(x|z) (appendix D, step 1).

Pyro's ``pyro.infer.mcmc.HMC`` runs one chain on one potential: given the minibatch's summed
log-density it would make one joint accept/reject over all M x Nz coordinates with one step
size, so its acceptance rate collapses as M grows and no step size suits every datapoint.
Here the chains are independent: the trajectory is Pyro's own leapfrog integrator
(``pyro.ops.integrator.velocity_verlet``) on the summed potential, whose gradient with
respect to z_i involves datapoint i only, followed by a Metropolis accept/reject and a step
size per chain. Chains may carry any batch shape to the left of the latent dimension
(several chains per datapoint: ``[C, M, Nz]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.ops.integrator import velocity_verlet

from .model import VAE

LogDensity = Callable[[torch.Tensor], torch.Tensor]


def log_joint(vae: VAE, x: torch.Tensor) -> LogDensity:
    """z -> log p(z) + log p_theta(x|z) per datapoint: the unnormalised log p_theta(z|x).

    ``x`` is [M, D]; z is [..., M, Nz] and the result [..., M] (unscaled: one datapoint each).
    One stochastic layer only (a VAE with upper layers is refused).
    """
    vae.require_one_layer("HMC over z (method=mcem, appendix D's estimator)")

    def fn(z: torch.Tensor) -> torch.Tensor:
        return vae.prior().log_prob(z) + vae.decode(z).log_prob(x)

    return fn


def hmc_step(
    log_prob: LogDensity,
    z: torch.Tensor,
    step_size: torch.Tensor,
    num_leapfrog: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One HMC transition of every chain: (new z, acceptance probability, log_prob(new z)).

    ``z`` is [..., Nz]; ``log_prob(z)`` returns one log-density per chain, shape [...];
    ``step_size`` broadcasts against [...] (e.g. one per datapoint, shared by its chains,
    or one for all). The momentum is standard normal (unit mass).
    A trajectory that ends in a non-finite energy is rejected.
    """
    z = z.detach()
    momentum = torch.randn_like(z)
    energies: list[torch.Tensor] = []

    def potential(site: dict[str, torch.Tensor]) -> torch.Tensor:
        per_chain = -log_prob(site["z"])
        # Recorded so the accept/reject below needs no extra evaluation: the integrator's
        # first call is at the start of the trajectory and its last at the end.
        energies.append(per_chain.detach())
        return per_chain.sum()

    with torch.enable_grad():
        new, new_momentum, _, _ = velocity_verlet(
            {"z": z},
            {"z": momentum},
            potential,
            lambda r: r,  # grad of the kinetic energy r^2 / 2
            step_size.unsqueeze(-1),
            num_leapfrog,
        )
    start_h = energies[0] + 0.5 * momentum.pow(2).sum(-1)
    end_h = energies[-1] + 0.5 * new_momentum["z"].pow(2).sum(-1)
    log_accept = torch.nan_to_num(start_h - end_h, nan=-torch.inf).clamp(max=0.0)
    accept_prob = log_accept.exp()
    accept = torch.rand_like(accept_prob) < accept_prob
    z = torch.where(accept.unsqueeze(-1), new["z"], z)
    return z, accept_prob, -torch.where(accept, energies[-1], energies[0])


def adapt_step_size(
    step_size: torch.Tensor, accept_prob: torch.Tensor, target: float, rate: float
) -> torch.Tensor:
    """Move log step sizes toward the mean acceptance probability ``target``.

    log eps <- log eps + rate * (mean acceptance probability - target), where the mean is
    over the leading dimensions of ``accept_prob`` that ``step_size`` lacks (chains that
    share a step size). A Robbins-Monro step with constant gain, whose fixed point is the
    target: the paper's MCEM tunes its step size "such that the acceptance rate was 90%"
    (appendix E). Averaging over chains keeps the update's noise small enough for a large
    ``rate``, so a step size far off corrects itself within tens of transitions.
    """
    extra = accept_prob.dim() - step_size.dim()
    mean = accept_prob.mean(dim=tuple(range(extra))) if extra else accept_prob
    return step_size * torch.exp(rate * (mean - target))
