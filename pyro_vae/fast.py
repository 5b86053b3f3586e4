"""The fast path (``fast=true``): estimators A and B evaluated directly in torch.

``SVI`` records a trace of the guide and a replayed trace of the model at every step and
reads the log-densities from them; the fast path computes the same quantities from the
same objects (``vae.encoder``, ``vae.decoder``, ``vae.prior``) without the traces::

    A (eq. 6):  (N/M) sum_i (1/L) sum_l [log p(x_i | z_il) + log p(z_il) - log q(z_il | x_i)]
    B (eq. 7):  (N/M) sum_i [(1/L) sum_l log p(x_i | z_il) - KL(q(z | x_i) || p(z))]

with z_il = mu(x_i) + sigma(x_i) * eps_il (sec. 2.4) and the KL of B in closed form
(:func:`~pyro_vae.estimators.sgvb_b.analytic_kl`, eq. 10). The noise is drawn by the
guide's own distribution in the order Pyro draws it, so under the same random state the
bound and its gradients equal those of the traced estimators (``trace_elbo`` and
``sgvb_a`` for A, ``sgvb_b`` for B) to floating-point rounding
(``tests/test_fast_path.py``). Assumes the model of :class:`~pyro_vae.model.VAE`: one
latent site ``z`` and one observed site ``x`` in the data plate.
"""

from __future__ import annotations

import torch

from .estimators.sgvb_b import analytic_kl
from .model import VAE

#: ``estimator=`` names the fast path computes, and which of the paper's estimators each is.
FAST_ESTIMATORS = {"trace_elbo": "A", "sgvb_a": "A", "sgvb_b": "B"}


def direct_bound(vae: VAE, x: torch.Tensor, estimator: str, num_particles: int = 1) -> torch.Tensor:
    """The ``estimator``'s estimate of the full-data bound (eq. 8) on the minibatch ``x``."""
    kind = FAST_ESTIMATORS[estimator]
    if kind == "B":
        vae.require_one_layer("fast=true with estimator=sgvb_b (the KL of q(z|x) from p(z))")
    if kind == "A":
        per_point = vae.log_weights(x, num_particles).mean(0)
    else:
        q = vae.encode(x)
        z = q.rsample((num_particles,))
        log_px_z = vae.decode(z).log_prob(x).mean(0)
        per_point = log_px_z - analytic_kl(q, vae.prior())
    return vae.data_scale(x.shape[0]) * per_point.sum()
