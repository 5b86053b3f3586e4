"""The paper's marginal-likelihood estimator (appendix D), used for Figure 3 (Nz = 3).

For one datapoint x:

1. draw L samples z_l from the posterior p_theta(z|x) with HMC (``pyro_vae.hmc``, driven by
   grad_z log p(z) + grad_z log p_theta(x|z));
2. fit a density q(z) to them: here a Gaussian with the samples' mean and full covariance;
3. draw L fresh posterior samples and use

       p_theta(x) ~= [ (1/L) sum_l q(z_l) / (p(z_l) p_theta(x|z_l)) ]^-1 .

The bracket is unbiased for 1/p(x), since for any normalised q,
E_{p(z|x)}[q(z) / p(x, z)] = ∫ q(z) dz / p(x) = 1 / p(x). Its log is therefore biased
*upward* (Jensen), opposite to importance sampling with the encoder
(``pyro_vae.evaluate.importance_log_likelihood``), which is biased downward: the two bracket
log p(x). The variance is finite only when q has lighter tails than the posterior, which is
why the paper restricts the estimator to a latent space of fewer than about 5 dimensions.
The number of samples, chains and burn-in are not given in the paper; they are parameters
here (``experiments/fig3.py`` states the values used).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import MultivariateNormal

from .hmc import LogDensity, adapt_step_size, hmc_step, log_joint
from .model import VAE


def fit_gaussian(samples: torch.Tensor, jitter: float = 1e-6) -> MultivariateNormal:
    """N(mean, covariance) of ``samples`` [L, ..., Nz] over the first dimension (batch [...])."""
    mean = samples.mean(0)
    centred = samples - mean
    cov = torch.einsum("l...i,l...j->...ij", centred, centred) / (samples.shape[0] - 1)
    # A chain that rejected every move leaves a singular covariance; the jitter keeps q proper.
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-12)
    eye = torch.eye(samples.shape[-1], dtype=samples.dtype, device=samples.device)
    return MultivariateNormal(mean, cov + jitter * scale[..., None, None] * eye)


def hmc_marginal_log_likelihood(
    log_prob: LogDensity,
    z_init: torch.Tensor,
    num_samples: int = 100,
    burn_in: int = 50,
    num_leapfrog: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.9,
    adapt_rate: float = 0.5,
) -> torch.Tensor:
    """Appendix D's log p(x) per datapoint, from C chains per datapoint started at ``z_init``.

    ``log_prob(z)`` is log p(x, z) for z [C, M, Nz] (result [C, M]); ``z_init`` is [C, M, Nz],
    C >= 2. All chains run ``burn_in`` transitions while each datapoint's step size is tuned
    toward ``target_accept``, then, with the step sizes fixed, enough transitions for L =
    ``num_samples`` samples from each half of the chains: the first half's samples fit q
    (stage 2), the second half's are the fresh samples of stage 3. Independent chains make q
    independent of the samples it is evaluated at; continuing the fitting chains instead
    biases log p(x) downward (their next samples sit where q was fitted). Returns [M].
    """
    chains = z_init.shape[0]
    if chains < 2:
        raise ValueError(f"z_init has {chains} chain per datapoint; the estimator needs >= 2")
    z = z_init.detach()
    # One step size per datapoint, shared by its chains: posteriors differ in width.
    eps = torch.full(z.shape[1:-1], float(step_size), dtype=z.dtype, device=z.device)
    for _ in range(burn_in):
        z, accept_prob, _ = hmc_step(log_prob, z, eps, num_leapfrog)
        eps = adapt_step_size(eps, accept_prob, target_accept, adapt_rate)
    half = chains // 2
    zs, log_ps = [], []
    for _ in range(math.ceil(num_samples / half)):
        z, _, log_p = hmc_step(log_prob, z, eps, num_leapfrog)
        zs.append(z)
        log_ps.append(log_p)
    z_all, log_p_all = torch.stack(zs), torch.stack(log_ps)  # [T, C, M, Nz], [T, C, M]
    q = fit_gaussian(z_all[:, :half].flatten(0, 1))
    z_fresh, log_p = z_all[:, half:].flatten(0, 1), log_p_all[:, half:].flatten(0, 1)
    log_ratio = q.log_prob(z_fresh) - log_p  # log q(z_l) / p(x, z_l)
    return -(torch.logsumexp(log_ratio, dim=0) - math.log(log_ratio.shape[0]))


def appendix_d_log_likelihood(
    vae: VAE,
    x: torch.Tensor,
    num_chains: int = 4,
    batch_size: int = 500,
    **kwargs: float,
) -> torch.Tensor:
    """:func:`hmc_marginal_log_likelihood` for a VAE's p_theta, per datapoint of ``x`` [N, D].

    The chains start at ``num_chains`` draws of the encoder's q(z|x) per datapoint: a start
    near the posterior that shortens the burn-in; the estimate does not otherwise depend on
    the encoder. ``kwargs`` go to :func:`hmc_marginal_log_likelihood`.
    """
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        with torch.no_grad():
            z_init = vae.encode(xb).sample((num_chains,))
        out.append(hmc_marginal_log_likelihood(log_joint(vae, xb), z_init, **kwargs).detach())
    return torch.cat(out)
