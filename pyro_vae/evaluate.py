"""Test-set figures: the ELBO, the importance-sampled marginal log-likelihood and the
active units.

``importance_log_likelihood`` is the estimator of Burda et al. (2015) with the encoder as
proposal: log p(x) ~= logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log K, z_k ~ q(z|x).
It is a stochastic lower bound on log p(x) that tightens as K grows.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checks import SEED, Allowed, check_arguments, integer
from .data import check_data_for_likelihood
from .diagnostics import (
    COLLAPSED_KL,
    DIAGNOSTIC_CHECKS,
    inference_gaps,
    kl_per_dimension,
    mutual_information,
)
from .errors import DataError, refuse
from .guides import DiagonalGaussian
from .likelihoods import Bernoulli
from .model import VAE
from .networks import MLPDecoder

#: What the arguments of :func:`evaluate` allow (``pyro-vae evaluate`` and the
#: configuration's ``eval_num_samples`` are checked with the same objects).
EVALUATE_CHECKS: dict[str, Allowed] = {
    "num_samples": integer(1),
    "batch_size": integer(1),
    "seed": SEED,
}

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
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    max_elements: int = _MAX_ELEMENTS,
    progress: bool = False,
) -> torch.Tensor:
    """Per-datapoint importance-sampled log p(x) with K = ``num_samples``, shape [N].

    Points are processed in chunks so that the [K, M, D] decoder output stays under
    ``max_elements``; all K samples of a point are drawn in one vectorised pass.
    ``progress``: tqdm's bar over the points, with the time left (shown once it has run
    for two seconds).
    """
    EVALUATE_CHECKS["num_samples"].check("num_samples", num_samples)
    width = _widest_layer(vae, x.shape[1])
    points = max(1, max_elements // (num_samples * width))
    out = []
    fused = _fused_bernoulli(vae)
    with _progress_bar(progress, x.shape[0], f"log p(x), K={num_samples}") as bar:
        for s in _chunks(x.shape[0], points):
            log_w = fused(x[s], num_samples) if fused else vae.log_weights(x[s], num_samples)
            out.append(torch.logsumexp(log_w, dim=0) - math.log(num_samples))
            bar.update(s.stop - s.start)
    return torch.cat(out)


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, description: str) -> Iterator[tqdm]:
    """The training bar's style (:class:`~pyro_vae.training.hooks.ProgressBar`) over points;
    shown only once the work has taken two seconds, so quick evaluations print nothing."""
    bar = tqdm(
        total=total,
        disable=not enabled,
        unit="point",
        desc=description,
        dynamic_ncols=True,
        file=sys.stderr,
        delay=2.0,
    )
    try:
        yield bar
    finally:
        bar.close()


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
    is the encoder's mean; an upper layer's is a Monte Carlo mean over 200 draws of q
    (:meth:`~pyro_vae.model.VAE.posterior_means`), from a fixed seed of its own, so the
    count is the same every time and the caller's random stream is left alone."""
    family = getattr(vae, "guide_family", None)
    diagonal = family is None or isinstance(family, DiagonalGaussian)
    if getattr(vae, "stack", None) is None and diagonal:
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
        z = q.rsample((num_samples,)) if q.has_rsample else q.sample((num_samples,))
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


def check_model_data(vae: VAE, x: Any, name: str = "x") -> torch.Tensor:
    """``x`` as ``vae`` takes it, or a :class:`~pyro_vae.errors.DataError` naming ``name``.

    A tensor ``[N, D]`` (or images ``[N, H, W]``, flattened as :func:`pyro_vae.train`
    flattens them) with N >= 1 finite values per row; integers and booleans become float32
    as in training; moved to the model's device. Checked against the model: inside its
    likelihood's support (the check training makes), and with the number of values per
    point its networks take (one point through the model, in eval mode and without
    touching the random stream, so a wrong width is named here rather than as torch's
    ``mat1 and mat2 shapes cannot be multiplied``)."""
    if not isinstance(x, torch.Tensor):
        raise DataError(
            f"{name}={_short(x)} is not allowed: expected a tensor [N, D] (torch.as_tensor "
            "converts an array)"
        )
    if x.dtype.is_complex:
        raise DataError(f"{name} holds complex numbers ({x.dtype}): expected real numbers")
    if x.ndim == 3:
        x = x.reshape(x.shape[0], -1)
    if x.ndim != 2:
        hint = "; x.unsqueeze(1) makes one value per point" if x.ndim == 1 else ""
        raise DataError(
            f"{name} has shape {list(x.shape)}: expected [N, D] data (or [N, H, W] images){hint}"
        )
    if not x.is_floating_point():
        x = x.to(torch.float32)
    check_data_for_likelihood(x, None, where=name)
    check = getattr(getattr(vae, "likelihood", None), "check", None)
    if callable(check):
        check(x, name)
    x = x.to(_device_of(vae))
    check_model_width(vae, x, name)
    return x


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_model_width(vae: VAE, x: torch.Tensor, name: str = "x") -> None:
    """A DataError naming ``name`` unless one point of ``x`` [N, D] goes through
    ``vae.log_weights`` to one log-weight: in eval mode (no batch-norm statistics updated,
    no dropout drawn), without gradients, the random state restored after it."""
    device = _device_of(vae)
    modes = {m: m.training for m in vae.modules()}
    devices = [device] if device.type == "cuda" else []
    try:
        vae.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            out = vae.log_weights(x[:1], 1)
    except (RuntimeError, ValueError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{name} has {x.shape[1]} values per point, which this model does not take "
            f"({first}); the model was built for data of another width"
        ) from None
    finally:
        for m, training in modes.items():
            m.training = training
    if tuple(out.shape) != (1, 1):
        raise DataError(
            f"{name} has {x.shape[1]} values per point: the model's log-weights for one "
            f"point have shape {list(out.shape)}, not [1, 1]; the model was built for data "
            "of another width"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"<{type(value).__name__}>"


def evaluate(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    batch_size: int = 1000,
    seed: int = 0,
    progress: bool = True,
    *,
    mi_points: int = 1000,
    gap_points: int = 0,
    gap_steps: int = 500,
    gap_lr: float = 1e-2,
    gap_samples: int = 10,
    gap_elbo_samples: int = 1000,
    log_likelihood: Any = "auto",
) -> dict[str, Any]:
    """Mean ELBO, importance-sampled log p(x) (K = ``num_samples``, with its standard
    error) and active units (:func:`active_units`) of ``vae`` on ``x`` [N, D], from the
    random state ``seed``; and the posterior-collapse dashboard of
    :mod:`pyro_vae.diagnostics`: the KL per latent dimension (``kl_per_dimension``, where
    the guide's and the prior's marginals are known) and the mutual information I(x; z)
    under q on the first ``mi_points`` points (0: not computed).

    ``gap_points`` > 0 adds the inference gaps of :func:`~pyro_vae.diagnostics.
    inference_gaps` (approximation and amortisation, Cremer et al. 2018) on the first
    ``gap_points`` points, with the local optimisation's budget ``gap_steps``, ``gap_lr``
    and ``gap_samples`` draws per step, and ``gap_elbo_samples`` draws for the final
    estimates; the gaps are measured from log p_theta(x), exact for a linear-Gaussian VAE
    (``log_likelihood="auto"``), else importance-sampled (or ``log_likelihood``, a function
    of x). The diagnostics run after
    the numbers above, so those do not depend on them.

    ``x`` is checked first (:func:`check_model_data`: a tensor of finite values, in the
    likelihood's support, of the model's width) and so are ``num_samples``, ``batch_size``
    (integers >= 1) and ``seed`` (0..2^32-1): a :class:`~pyro_vae.errors.DataError` or
    :class:`~pyro_vae.errors.ArgumentError` naming the argument. ``progress``: a bar with
    the time left over the importance sampling, shown once it has taken two seconds
    (K = 1000 on 10000 images takes minutes).
    """
    check_arguments(
        {"num_samples": num_samples, "batch_size": batch_size, "seed": seed}, EVALUATE_CHECKS
    )
    check_arguments(
        {
            "mi_points": mi_points,
            "gap_points": gap_points,
            "gap_steps": gap_steps,
            "gap_lr": gap_lr,
            "gap_samples": gap_samples,
            "gap_elbo_samples": gap_elbo_samples,
        },
        DIAGNOSTIC_CHECKS,
    )
    if gap_points:
        vae.require_one_layer("the inference gaps (gap_points=)")
    if not isinstance(progress, bool):
        raise refuse("progress", progress, "true or false")
    x = check_model_data(vae, x)
    torch.manual_seed(seed)
    start = time.perf_counter()
    elbo = mean_elbo(vae, x, batch_size)
    ll = importance_log_likelihood(vae, x, num_samples, progress=progress)
    per_layer = active_units_per_layer(vae, x, batch_size=batch_size)  # after the draws
    active = sum(per_layer)
    diagnostics = collapse_diagnostics(vae, x, mi_points, batch_size)
    if gap_points:
        gaps = inference_gaps(
            vae,
            x,
            gap_points,
            gap_steps,
            gap_lr,
            gap_samples,
            gap_elbo_samples,
            seed,
            log_likelihood,
        )
        diagnostics.update(gaps)
    seconds = time.perf_counter() - start
    return {
        "test_elbo": elbo,
        "test_log_likelihood": ll.mean().item(),
        "test_log_likelihood_se": (ll.std() / math.sqrt(ll.numel())).item(),
        "importance_samples": num_samples,
        "active_units": active,
        **({"active_units_per_layer": per_layer} if len(per_layer) > 1 else {}),
        "latent_dim": vae.latent_dim,
        **({"latent_dims": list(vae.stack.dims)} if len(per_layer) > 1 else {}),
        **diagnostics,
        "evaluation_seconds": round(seconds, 2),
    }


def collapse_diagnostics(
    vae: VAE, x: torch.Tensor, mi_points: int = 1000, batch_size: int = 1000
) -> dict[str, Any]:
    """The posterior-collapse dashboard beside the active units: ``kl_per_dimension`` (a
    list, nats; absent where the marginals are not known: a flow guide, upper layers) with
    its sum ``kl_sum`` and the number of dimensions under 0.01 nats, ``collapsed_dims``; and
    the mutual information I(x; z) under q on the first ``mi_points`` points."""
    out: dict[str, Any] = {}
    kl = kl_per_dimension(vae, x, batch_size=batch_size)
    if kl is not None:
        out["kl_per_dimension"] = [round(v, 6) for v in kl.tolist()]
        out["kl_sum"] = kl.sum().item()
        out["collapsed_dims"] = int((kl < COLLAPSED_KL).sum().item())
    if mi_points and x.shape[0] >= 2:
        out.update(mutual_information(vae, x, mi_points))
    return out
