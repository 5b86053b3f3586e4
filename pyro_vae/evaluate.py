"""Test-set figures: the ELBO, the importance-sampled marginal log-likelihood and the
active units.

``importance_log_likelihood`` is the estimator of Burda et al. (2015) with the encoder as
proposal: log p(x) ~= logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log K, z_k ~ q(z|x).
It is a stochastic lower bound on log p(x) that tightens as K grows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import refuse
from .likelihoods import Bernoulli
from .model import VAE
from .networks import MLPDecoder

# Elements of the largest [K, M, D] tensor evaluated at once: 8 MB in float32. Chunks this
# small stay in the CPU's caches, and their temporaries stay under glibc's mmap threshold
# (32 MB), so memory is reused instead of mapped and faulted in afresh for every chunk
# (128 MB chunks ran 1.6x slower here: 20 test points, K = 1000, 2 threads).
_MAX_ELEMENTS = 2**21


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def mean_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Average per-datapoint ELBO (one reparameterised sample per point, estimator A)."""
    total = 0.0
    for s in _chunks(x.shape[0], batch_size):
        total += vae.log_weights(x[s], 1).sum().item()
    return total / x.shape[0]


@torch.no_grad()
def importance_log_likelihood(
    vae: VAE, x: torch.Tensor, num_samples: int = 1000, max_elements: int = _MAX_ELEMENTS
) -> torch.Tensor:
    """Per-datapoint importance-sampled log p(x) with K = ``num_samples``, shape [N].

    Points are processed in chunks so that the [K, M, D] decoder output stays under
    ``max_elements``; all K samples of a point are drawn in one vectorised pass.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise refuse("num_samples", num_samples, "an integer >= 1")
    width = _widest_layer(vae, x.shape[1])
    points = max(1, max_elements // (num_samples * width))
    out = []
    fused = _fused_bernoulli(vae)
    for s in _chunks(x.shape[0], points):
        log_w = fused(x[s], num_samples) if fused else vae.log_weights(x[s], num_samples)
        out.append(torch.logsumexp(log_w, dim=0) - math.log(num_samples))
    return torch.cat(out)


#: Burda et al. (2015, sec. 5.2)'s threshold on Cov_x(E_q[z_u|x]) for an active unit.
ACTIVE_THRESHOLD = 1e-2


@torch.no_grad()
def active_units(
    vae: VAE, x: torch.Tensor, threshold: float = ACTIVE_THRESHOLD, batch_size: int = 1000
) -> int:
    """#{u : Cov_x(E_q[z_u|x]) > threshold} (Burda et al. 2015, sec. 5.2): the latent units
    whose posterior mean varies with x, i.e. that the data use; a unit the KL term has
    collapsed onto the prior has the same mean for every x. With upper layers, the sum
    over the layers (:func:`active_units_per_layer`)."""
    return sum(active_units_per_layer(vae, x, threshold, batch_size))


@torch.no_grad()
def active_units_per_layer(
    vae: VAE, x: torch.Tensor, threshold: float = ACTIVE_THRESHOLD, batch_size: int = 1000
) -> list[int]:
    """:func:`active_units` of each stochastic layer, the first (next to x) first. E_q[z_1|x]
    is the encoder's mean; an upper layer's is a Monte Carlo mean over 100 draws of q
    (:meth:`~pyro_vae.model.VAE.posterior_means`), from a fixed seed of its own, so the
    count is the same every time and the caller's random stream is left alone."""
    if getattr(vae, "stack", None) is None:
        loc = torch.cat([vae.encoder(x[s])[0] for s in _chunks(x.shape[0], batch_size)])
        return [int((loc.var(dim=0) > threshold).sum().item())]
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(0)
        chunks = [vae.posterior_means(x[s]) for s in _chunks(x.shape[0], batch_size)]
    means = [torch.cat(layer) for layer in zip(*chunks, strict=True)]
    return [int((m.var(dim=0) > threshold).sum().item()) for m in means]


def _fused_bernoulli(vae: VAE) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """:meth:`VAE.log_weights` with its last step fused, for the paper's MLP decoder under a
    Bernoulli likelihood (None for any other model): the same draws, and

        log p(x|z) = sum_d [x_d l_d - softplus(l_d)],  l = W h + b,  so  x.l = h.(W^T x) + b.x,

    one [K, M, H] product instead of a pass over the [K, M, D] logits, and softplus in place
    of binary cross-entropy's three passes (about 10% of an evaluation at K = 5000 on the
    784-200-200-50 model, which then runs as fast as the plain-PyTorch loop or faster:
    ``python experiments/benchmark.py --k5000``). Equal to log_weights up to float32
    rounding (tests check it), not bit for bit."""
    dec = getattr(vae, "decoder", None)
    if type(getattr(vae, "likelihood", None)) is not Bernoulli or type(dec) is not MLPDecoder:
        return None
    head = getattr(dec, "logits", None)
    if not isinstance(head, nn.Linear):
        return None

    def log_weights(x: torch.Tensor, num_samples: int) -> torch.Tensor:
        q = vae.encode(x)
        z = q.rsample((num_samples,))
        h = dec.trunk(z)  # [K, M, H]
        x_dot_l = (h * (x @ head.weight)).sum(-1)
        if head.bias is not None:
            x_dot_l = x_dot_l + x @ head.bias
        log_px_z = x_dot_l - F.softplus(F.linear(h, head.weight, head.bias)).sum(-1)
        stack = getattr(vae, "stack", None)
        if stack is None:
            return log_px_z + vae.prior().log_prob(z) - q.log_prob(z)
        zs, log_q = stack.sample_up(z, q.log_prob(z))
        return log_px_z + stack.log_prob_down(zs, vae.prior().log_prob(zs[-1])) - log_q

    return log_weights


def _widest_layer(vae: VAE, x_dim: int) -> int:
    """The widest activation per sample the decoder makes: its widest linear layer, its
    largest output tensor (a convolutional decoder's categorical logits, D x 256, come from
    no linear layer), or D."""
    widths = [m.out_features for m in vae.decoder.modules() if isinstance(m, nn.Linear)]
    latent_dim = getattr(vae, "latent_dim", None)
    if latent_dim is not None:
        widths += _output_sizes(vae.decoder, latent_dim)
    return max([x_dim, *widths])


def _output_sizes(decoder: nn.Module, latent_dim: int) -> list[int]:
    """Elements per sample of each tensor the decoder outputs, from one pass on z = 0 in
    eval mode (no batch-norm statistics updated, no dropout draws: the random stream and
    the model are as they were)."""
    param = next(decoder.parameters(), None)
    z = torch.zeros(1, latent_dim, device=param.device if param is not None else None)
    modes = {m: m.training for m in decoder.modules()}
    decoder.eval()
    try:
        out = decoder(z)
    finally:
        for m, training in modes.items():
            m.training = training
    stack, sizes = [out], []
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            sizes.append(item.numel())
        elif isinstance(item, tuple | list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return sizes


def evaluate(
    vae: VAE, x: torch.Tensor, num_samples: int = 1000, batch_size: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Mean ELBO, importance-sampled log p(x) (K = ``num_samples``, with its standard
    error) and active units (:func:`active_units`) of ``vae`` on ``x`` [N, D], from the
    random state ``seed``."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    elbo = mean_elbo(vae, x, batch_size)
    ll = importance_log_likelihood(vae, x, num_samples)
    per_layer = active_units_per_layer(vae, x, batch_size=batch_size)  # after the draws
    active = sum(per_layer)
    seconds = time.perf_counter() - start
    return {
        "test_elbo": elbo,
        "test_log_likelihood": ll.mean().item(),
        "test_log_likelihood_se": (ll.std() / math.sqrt(ll.numel())).item(),
        "importance_samples": num_samples,
        "active_units": active,
        **({"active_units_per_layer": per_layer} if len(per_layer) > 1 else {}),
        "latent_dim": vae.latent_dim,
        "evaluation_seconds": round(seconds, 2),
    }
