"""Diagnostics of the approximate posterior: why a bound is loose, and whether the latent code
is used.

- :func:`inference_gaps`: the inference gap log p(x) - ELBO(q) split as Cremer, Li &
  Duvenaud (2018) split it, into the **approximation gap** log p(x) - ELBO(q*), where q* is
  the best member of the guide's family for each point (found by local optimisation of the
  family's per-datapoint parameters, started at the encoder's), and the **amortisation gap**
  ELBO(q*) - ELBO(q), what the encoder loses against it.
- :func:`mutual_information`: I(x; z) under q(x, z) = p_data(x) q(z|x) (Hoffman & Johnson
  2016), by He et al. (2019)'s estimator: E_x E_q[log q(z|x)] - E_q(z)[log q(z)], the
  aggregate posterior q(z) = (1/N) sum_j q(z|x_j) over the N points given.
- :func:`kl_per_dimension`: E_x KL(q(z_j|x) || p(z_j)) for each latent dimension j (a
  collapsed dimension has none), beside the active units of :mod:`pyro_vae.evaluate`.
- :func:`plot_diagnostics`: a figure of the KL per dimension and of the gaps.

Each is a function of a model and data first; :func:`pyro_vae.evaluate` reports them
(``pyro-vae evaluate``: the summary and the experiment trackers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import torch
from torch.distributions import transform_to

from .checks import SEED, Allowed, check_arguments, integer, positive
from .errors import ArgumentError, refuse
from .model import VAE
from .priors import prior_marginals

#: KL (nats) below which a latent dimension counts as collapsed onto the prior.
COLLAPSED_KL = 0.01

#: What the settings of the diagnostics allow (``pyro-vae evaluate``'s keys of these names).
DIAGNOSTIC_CHECKS: dict[str, Allowed] = {
    "gap_points": integer(0),
    "gap_steps": integer(1),
    "gap_lr": positive(),
    "gap_samples": integer(1),
    "gap_elbo_samples": integer(1),
    "mi_points": integer(0),
    "seed": SEED,
}


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    n = values.numel()
    se = (values.std() / math.sqrt(n)).item() if n > 1 else float("nan")
    return values.mean().item(), se


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# KL per dimension ---------------------------------------------------------------------


def guide_marginals(q: Any) -> Any:
    """q(z_j|x) for each dimension j as one univariate distribution of batch shape [M, Nz]:
    the diagonal Gaussian's factors, a full-covariance Gaussian's marginals N(mu_j,
    Sigma_jj); None for a flow, whose marginals have no closed-form density."""
    if isinstance(q, dist.Independent) and q.base_dist.event_shape == ():
        return q.base_dist
    if isinstance(q, dist.MultivariateNormal | torch.distributions.MultivariateNormal):
        return dist.Normal(q.loc, q.variance.sqrt())
    return None


@torch.no_grad()
def kl_per_dimension(
    vae: VAE, x: torch.Tensor, num_samples: int = 100, batch_size: int = 1000
) -> torch.Tensor | None:
    """E_x KL(q(z_j|x) || p(z_j)) for each latent dimension j, [Nz] (nats), over the points
    ``x``: in closed form where both marginals are Gaussian, else by ``num_samples`` draws
    of each q(z_j|x). For a diagonal guide and a factorised prior these sum to the KL of
    eq. 3; for a full-covariance guide each is its marginal's KL (their sum is not the joint
    KL). None where a marginal has no density: a flow guide, a prior whose marginals are
    not known, or a VAE with upper layers (z_1's prior is the conditional p(z_1|z_2))."""
    if getattr(vae, "stack", None) is not None:
        return None
    prior = prior_marginals(vae.prior())
    if prior is None:
        return None
    total = None
    for s in _chunks(x.shape[0], batch_size):
        q = guide_marginals(vae.encode(x[s]))
        if q is None:
            return None
        if isinstance(q, torch.distributions.Normal) and isinstance(
            prior, torch.distributions.Normal
        ):
            r = (q.scale / prior.scale) ** 2
            kl = 0.5 * (r + ((q.loc - prior.loc) / prior.scale) ** 2 - 1.0 - torch.log(r))
        else:
            z = q.sample((num_samples,))
            kl = (q.log_prob(z) - prior.log_prob(z)).mean(0)
        part = kl.double().sum(0)
        total = part if total is None else total + part
    return (total / x.shape[0]).float()


# Mutual information -------------------------------------------------------------------


@torch.no_grad()
def mutual_information(
    vae: VAE, x: torch.Tensor, num_points: int = 1000, chunk: int = 50
) -> dict[str, float]:
    """I(x; z) under q (nats), He et al. (2019)'s estimator on the first ``num_points`` points
    of ``x`` (all if fewer): one draw z_i ~ q(z|x_i) per point and

        I = (1/N) sum_i [log q(z_i|x_i) - log q(z_i)],  q(z_i) = (1/N) sum_j q(z_i|x_j),

    the aggregate posterior over the same N points. With a VAE of several stochastic
    layers, I(x; z_1). ``mutual_information_se`` is the standard error over the points; the
    estimator is biased for small N (the aggregate posterior of N points includes the point
    itself, which bounds I by log N), so N of a few thousand is the usual size. A flow's
    q(z_i|x_j) at another point's draw inverts the flow (:class:`~pyro_vae.guides.FlowPosterior`).
    """
    x = x[:num_points]
    n = x.shape[0]
    if n < 2:
        raise ArgumentError(f"mutual_information needs at least 2 points; got {n}", "mi_points")
    q = vae.encode(x)
    z = q.sample()
    own = q.log_prob(z)
    aggregate = []
    for s in _chunks(n, chunk):
        cross = q.log_prob(z[s].unsqueeze(1))  # [c, N]: log q(z_i | x_j)
        aggregate.append(torch.logsumexp(cross.double(), dim=1) - math.log(n))
    terms = own.double() - torch.cat(aggregate)
    value, se = _mean_se(terms)
    return {"mutual_information": value, "mutual_information_se": se, "mi_points": n}


# The inference gaps (Cremer et al. 2018) ------------------------------------------------


def _elbo_terms(vae: VAE, q: Any, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log p(x, z) - log q(z|x) at ``num_samples`` draws of q, [S, M]."""
    z = q.rsample((num_samples,))
    return vae.decode(z).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)


def _mean_over_draws(
    vae: VAE, make_q: Callable[[], Any], x: torch.Tensor, num_samples: int, chunk: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean ELBO term, logmeanexp of the terms) per point over ``num_samples`` draws."""
    terms = []
    for s in _chunks(num_samples, chunk):
        terms.append(_elbo_terms(vae, make_q(), x, s.stop - s.start).double())
    w = torch.cat(terms)
    return w.mean(0), torch.logsumexp(w, dim=0) - math.log(w.shape[0])


def inference_gaps(
    vae: VAE,
    x: torch.Tensor,
    num_points: int = 100,
    steps: int = 500,
    lr: float = 1e-2,
    train_samples: int = 10,
    elbo_samples: int = 1000,
    seed: int = 0,
    log_likelihood: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | str | None = "auto",
    per_point: bool = False,
) -> dict[str, Any]:
    """The inference gap of ``vae`` on the first ``num_points`` points of ``x``, split into
    the approximation and amortisation gaps (Cremer, Li & Duvenaud 2018), nats per point.

    For each point the guide family's per-datapoint parameters
    (:meth:`~pyro_vae.guides.GuideFamily.local_parameters`: a Gaussian's loc and scale, a
    full covariance's Cholesky factor, a flow's loc, scale and context) are started at the
    encoder's and optimised, each point its own, by Adam (``lr``) for ``steps`` steps on the
    ELBO estimated with ``train_samples`` reparameterised draws; the networks (decoder,
    prior, a flow's own weights) are fixed. The result q* is the best q of the family found
    within this budget (a larger budget can only lower the approximation gap it reports).
    Then, from fresh draws (``elbo_samples`` per point, after seeding ``seed``):

    - ``elbo_amortised``: ELBO(q), the encoder's;  ``elbo_optimised``: ELBO(q*);
    - ``log_likelihood``: log p_theta(x), the model's: given (a tensor or a function of x),
      exact where the VAE is linear-Gaussian (``"auto"``, :func:`linear_gaussian_marginal`),
      else (or with None) estimated by importance sampling with q* as the proposal and
      ``elbo_samples`` draws (Burda et al.'s estimator, a stochastic lower bound);
      ``gap_log_likelihood`` says which;
    - ``approximation_gap`` = log p(x) - ELBO(q*), ``amortisation_gap`` = ELBO(q*) - ELBO(q),
      ``inference_gap`` = log p(x) - ELBO(q), their sum;

    each a mean over the points with its standard error (``*_se``, over points; it holds
    the points' spread, not only the Monte Carlo error); ``per_point=True`` adds each
    point's values under ``per_point``. ``gap_history`` is the optimisation's ELBO
    estimate (per point) at 20 of its steps: flat at the end when the budget sufficed. Runs
    without touching the caller's random state. A VAE with upper layers is refused (q*
    would be of z_1 alone, the upper layers' q held at the encoder's).
    """
    check_arguments(
        {
            "gap_points": num_points,
            "gap_steps": steps,
            "gap_lr": lr,
            "gap_samples": train_samples,
            "gap_elbo_samples": elbo_samples,
            "seed": seed,
        },
        DIAGNOSTIC_CHECKS,
    )
    if num_points < 1:
        raise refuse("gap_points", num_points, "an integer >= 1")
    vae.require_one_layer("the inference gaps (Cremer et al. 2018)")
    family = vae.guide_family
    x = x[:num_points]
    devices = [x.device] if x.device.type == "cuda" else []
    modes = {m: m.training for m in vae.modules()}
    vae.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = _gaps(vae, family, x, steps, lr, train_samples, elbo_samples, log_likelihood)
    finally:
        for m, training in modes.items():
            m.training = training
    if not per_point:
        out.pop("per_point")
    return out


def linear_gaussian_marginal(vae: VAE) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The exact log p_theta(x) of a linear-Gaussian VAE, where ``vae`` is one: one latent
    layer, a Gaussian prior with diagonal covariance, the paper's decoder without hidden
    layers (``hidden_dims=[]``) and a Gaussian likelihood with an identity mean and a
    variance that does not depend on z (``variance=learned`` or ``fixed``): then
    x = W z + b + noise and p_theta(x) = N(x; W m + b, W S W^T + diag(var)). None otherwise.
    This is the model's own marginal, which the inference gaps are measured against (the
    data's generating log p(x) of ``dataset=linear_gaussian`` is another model's)."""
    from .likelihoods import Gaussian
    from .networks import MLPDecoder

    dec, lik = vae.decoder, vae.likelihood
    if (
        getattr(vae, "stack", None) is not None
        or type(dec) is not MLPDecoder
        or len(dec.trunk) != 0
        or type(lik) is not Gaussian
        or lik.mean_link != "identity"
        or lik.variance not in ("learned", "fixed")
    ):
        return None
    prior = prior_marginals(vae.prior())
    if not isinstance(prior, torch.distributions.Normal) or prior.batch_shape != (vae.latent_dim,):
        return None

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            w, b = dec.loc.weight.double(), dec.loc.bias.double()
            noise = lik(dec(torch.zeros(1, vae.latent_dim, device=x.device))).base_dist.scale
            m, s = prior.loc.double(), prior.scale.double()
            cov = (w * s.pow(2)) @ w.T + torch.diag(noise.reshape(-1).double().pow(2))
            mvn = torch.distributions.MultivariateNormal(w @ m + b, covariance_matrix=cov)
            return mvn.log_prob(x.double()).to(x.dtype)

    return log_prob


def _gaps(vae, family, x, steps, lr, train_samples, elbo_samples, log_likelihood):
    with torch.no_grad():
        start = family.local_parameters(vae.encoder(x), x)
    to_param = {k: transform_to(family.local_constraints[k]) for k in start}
    free = {k: to_param[k].inv(v).detach().clone().requires_grad_() for k, v in start.items()}
    optimiser = torch.optim.Adam(list(free.values()), lr=lr)
    # Annealed to zero: the noise of the draws then stops moving q* at the end.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)

    def local_q() -> Any:
        return family.from_local({k: to_param[k](u) for k, u in free.items()}, x)

    history = []
    for step in range(steps):
        elbo = _elbo_terms(vae, local_q(), x, train_samples).mean(0).sum()
        grads = torch.autograd.grad(-elbo, list(free.values()))
        for u, g in zip(free.values(), grads, strict=True):
            u.grad = g
        optimiser.step()
        schedule.step()
        if step % max(1, steps // 20) == 0 or step == steps - 1:
            history.append((step + 1, elbo.item() / x.shape[0]))
    with torch.no_grad():
        amortised, _ = _mean_over_draws(vae, lambda: vae.encode(x), x, elbo_samples)
        optimised, is_estimate = _mean_over_draws(vae, local_q, x, elbo_samples)
        if log_likelihood == "auto":
            exact = linear_gaussian_marginal(vae)
            log_likelihood = exact
            source = "exact (the linear-Gaussian VAE's marginal)"
        else:
            source = "given"
        if log_likelihood is None:
            log_px, source = is_estimate, f"importance sampling, K={elbo_samples} draws of q*"
        else:
            given = log_likelihood(x) if callable(log_likelihood) else log_likelihood
            log_px = torch.as_tensor(given).to(amortised).reshape(-1)[: x.shape[0]]
    out: dict[str, Any] = {"per_point": {}}
    for name, values in (
        ("log_likelihood", log_px),
        ("elbo_optimised", optimised),
        ("elbo_amortised", amortised),
        ("approximation_gap", log_px - optimised),
        ("amortisation_gap", optimised - amortised),
        ("inference_gap", log_px - amortised),
    ):
        out[name], out[f"{name}_se"] = _mean_se(values)
        out["per_point"][name] = values.tolist()
    out.update(
        gap_points=x.shape[0],
        gap_steps=steps,
        gap_lr=lr,
        gap_samples=train_samples,
        gap_elbo_samples=elbo_samples,
        gap_log_likelihood=source,
        gap_history=history,
        guide=family.name,
    )
    return out


# Figure ----------------------------------------------------------------------------------


def plot_diagnostics(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """A figure of ``result`` (what :func:`pyro_vae.evaluate` returns): the KL per latent
    dimension, sorted, with the active units marked, and, where the gaps were computed, the
    inference gap stacked as approximation and amortisation gaps. Written to ``path``."""
    from matplotlib.figure import Figure

    kl = result.get("kl_per_dimension")
    gaps = "approximation_gap" in result
    panels = (kl is not None) + gaps
    if panels == 0:
        raise ArgumentError(
            "nothing to plot: the result has neither kl_per_dimension nor the gaps "
            "(evaluate(..., gap_points=100) computes the gaps)"
        )
    fig = Figure(figsize=(5 * panels, 3.6))
    i = 1
    if kl is not None:
        ax = fig.add_subplot(1, panels, i)
        values = sorted(kl, reverse=True)
        ax.bar(range(1, len(values) + 1), values, color="tab:blue")
        ax.set_xlabel("latent dimension (sorted)")
        ax.set_ylabel("E_x KL(q(z_j|x) || p(z_j)), nats")
        mi = result.get("mutual_information")
        note = f"I(x;z) = {mi:.2f} nats, " if mi is not None else ""
        ax.set_title(f"{note}active units {result.get('active_units', '?')}", fontsize=10)
        i += 1
    if gaps:
        ax = fig.add_subplot(1, panels, i)
        approx, amort = result["approximation_gap"], result["amortisation_gap"]
        ax.bar([0], [approx], color="tab:orange", label="approximation")
        ax.bar([0], [amort], bottom=[approx], color="tab:green", label="amortisation")
        ax.errorbar([0], [approx + amort], yerr=[result.get("inference_gap_se", 0.0)], color="k")
        ax.set_xticks([0], [result.get("guide", "guide")])
        ax.set_ylabel("nats per point")
        ax.set_title(
            f"inference gap {result['inference_gap']:.2f} on {result['gap_points']} points",
            fontsize=10,
        )
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


__all__ = [
    "COLLAPSED_KL",
    "DIAGNOSTIC_CHECKS",
    "guide_marginals",
    "inference_gaps",
    "kl_per_dimension",
    "linear_gaussian_marginal",
    "mutual_information",
    "plot_diagnostics",
]
