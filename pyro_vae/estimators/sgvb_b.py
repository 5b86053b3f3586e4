"""The paper's estimator B: the KL term of eq. 3 in closed form, derived by hand."""

from __future__ import annotations

import torch
from pyro.distributions import Independent
from pyro.distributions.torch_distribution import ExpandedDistribution
from pyro.poutine import Trace

from .base import (
    EstimatorError,
    ParticleELBO,
    describe_distribution,
    guide_site,
    log_density,
    register,
    sample_sites,
    site_term,
)


def diagonal_normal(fn) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loc, scale) of a diagonal Gaussian under Pyro's shape wrappers, else None."""
    while isinstance(fn, Independent | ExpandedDistribution):
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc, fn.scale
    return None


def gaussian_kl(
    mu: torch.Tensor, sigma: torch.Tensor, m: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(m, s^2)) per coordinate, from the integrals of appendix B.

    With q = N(mu, sigma^2) and p = N(m, s^2) in one coordinate:

        int q log q = -1/2 log 2 pi - log sigma - 1/2
        int q log p = -1/2 log 2 pi - log s - (sigma^2 + (mu - m)^2) / (2 s^2)

    so KL = int q log q - int q log p = log(s / sigma) + (sigma^2 + (mu - m)^2) / (2 s^2) - 1/2.
    For m = 0, s = 1 this is eq. 10: -KL = 1/2 (1 + log sigma^2 - mu^2 - sigma^2).
    Written with r = (sigma/s)^2, KL = 1/2 (r + ((mu - m)/s)^2 - 1 - log r), which needs
    no log of a difference.
    """
    r = (sigma / s) ** 2
    return 0.5 * (r + ((mu - m) / s) ** 2 - 1.0 - torch.log(r))


def _no_closed_form(fn, role: str, site: str) -> EstimatorError:
    return EstimatorError(
        f"estimator=sgvb_b computes KL(q || p) in closed form (eq. 10), which needs "
        f"diagonal Gaussians; {role} at site {site!r} is {describe_distribution(fn)}. "
        "Use estimator=sgvb_a (eq. 6, any prior) or estimator=meanfield (torch's KL "
        "registry where one is registered, Monte Carlo otherwise)"
    )


def analytic_kl(guide_fn, prior_fn, site: str = "z") -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, summed over the event dimensions: shape
    ``guide_fn.batch_shape``. Any other family raises an :class:`EstimatorError`."""
    q, p = diagonal_normal(guide_fn), diagonal_normal(prior_fn)
    for params, fn, role in ((p, prior_fn, "the prior p(z)"), (q, guide_fn, "the guide q(z|x)")):
        if params is None:
            raise _no_closed_form(fn, role, site)
    kl = gaussian_kl(*q, *p)
    event_dims = len(guide_fn.event_shape)
    kl = kl.expand(guide_fn.batch_shape + guide_fn.event_shape)
    return kl.sum(dim=tuple(range(-event_dims, 0))) if event_dims else kl


@register("sgvb_b")
class SGVB_B(ParticleELBO):
    """SGVB estimator B (eq. 7) of the full-data bound (eq. 8)::

        L^B = (N/M) sum_i [-KL(q(z | x_i) || p(z)) + (1/L) sum_l log p(x_i | z_il)],
        z_il = mu(x_i) + sigma(x_i) * eps_il

    with the KL of q = N(mu, diag sigma^2) from p = N(m, diag s^2) written out from the
    formula (eq. 10 and appendix B, generalised to any loc m and scale s; see
    :func:`gaussian_kl`), not through ``torch.distributions.kl_divergence``. Only the
    reconstruction term is sampled, so the KL adds no noise to the gradient (how much that
    saves against A is what ``pyro-vae variance`` measures).

    Assumes a diagonal Gaussian prior and guide at every latent site (read from the model
    and guide traces, under Pyro's plate broadcasting); any other prior is refused with an
    error that names it and points to ``sgvb_a``. On any Pyro model each site's KL is
    weighted by the guide site's scale and mask, as Pyro's
    :class:`~pyro.infer.TraceMeanField_ELBO` weights it, and the two agree in loss and
    gradients under the same noise. Like it, B assumes a mean-field guide in the model's
    order: a KL at a site whose prior depends on a latent the guide draws *after* it
    (q(z_1|x) q(z_2|z_1) against p(z_2) p(z_1|z_2)) is not the expectation the bound needs,
    so a guide that samples the latent sites in another order than the model is refused.
    """

    name = "sgvb_b"

    @staticmethod
    def check_prior(prior_fn) -> None:
        """Refuse, before training starts, a prior without the closed-form KL of eq. 10."""
        if diagonal_normal(prior_fn) is None:
            raise _no_closed_form(prior_fn, "the prior p(z)", "z")

    @staticmethod
    def check_guide(family) -> None:
        """Refuse, before training starts, a guide family (``pyro_vae.guides``) whose KL
        from the prior eq. 10 does not give: one that says ``closed_form_kl = False``."""
        if not getattr(family, "closed_form_kl", True):
            raise EstimatorError(
                f"estimator=sgvb_b computes KL(q || p) in closed form (eq. 10), which needs a "
                f"diagonal Gaussian q; guide={getattr(family, 'name', family)} has no such "
                "closed form. Use estimator=sgvb_a (eq. 6, any guide), stl or dreg, or "
                "estimator=meanfield (torch's KL registry, Monte Carlo where it has none)"
            )

    def bound_and_surrogate(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout(model_trace, guide_trace)
        check_model_order(model_trace, guide_trace, self.name)
        log_px_z = log_density(model_trace, layout, observed=True)
        kl = 0
        for name, site in sample_sites(model_trace, observed=False):
            q = guide_site(guide_trace, name, self.name)
            kl = kl + site_term(q, name, layout, analytic_kl(q["fn"], site["fn"], name))
        bound = layout.scale * (log_px_z - kl).mean(0).sum()
        return bound, bound


def check_model_order(model_trace: Trace, guide_trace: Trace, estimator: str) -> None:
    """Refuse a guide that samples the model's latent sites in another order (Pyro's
    mean-field requirement for a KL per site)."""
    model_order = [name for name, _ in sample_sites(model_trace, observed=False)]
    guide_order = [name for name, _ in sample_sites(guide_trace, observed=False)]
    guide_order = [name for name in guide_order if name in model_order]
    if model_order != guide_order:
        raise EstimatorError(
            f"estimator={estimator} takes the KL of q from p at each latent site, which needs "
            f"the guide to sample them in the model's order (mean-field, as Pyro's "
            f"TraceMeanField_ELBO assumes); the model samples {model_order}, the guide "
            f"{guide_order} (a hierarchical guide whose sites depend on each other the other "
            "way round). Use estimator=sgvb_a, stl or dreg"
        )
