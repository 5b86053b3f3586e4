"""The paper's pictures of a model: ELBO curves (Figure 2), the 2-D manifold (Figure 4),
random samples (Figure 5), reconstructions and the aggregate posterior.

:func:`plot_figures` draws them all for a model and its data; a run directory's figures
are :func:`pyro_vae.runs.plot_run`.

Figures are drawn with matplotlib's object API (no pyplot state, no display needed).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .atomic import atomic_write
from .data import RunData
from .data.vision import optional_torchvision
from .errors import ArgumentError, refuse
from .model import VAE
from .priors import prior_quantiles

FIGURES = ("elbo", "manifold", "samples", "reconstructions", "aggregate_posterior")
_DPI = 100


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (format from the suffix), atomically."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=_DPI, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return atomic_write(path, buf.getvalue())


def image_grid(images: torch.Tensor, image_shape: Sequence[int], ncol: int) -> np.ndarray:
    """Tile ``images`` [N, D] into one array with a 1-pixel gap, ``ncol`` per row.

    ``image_shape`` is (H, W) for grey images (a 2-D grid) or (C, H, W) for images stored
    channel-first (CIFAR-10's): an [.., .., C] grid, RGB for C = 3. Where torchvision is
    installed, ``torchvision.utils.make_grid`` tiles them (padding 1, white, its outer
    border cut off): the same array, bit for bit, so the same figures."""
    *channels, h, w = image_shape
    n = images.shape[0]
    nrow = math.ceil(n / ncol)
    torchvision = optional_torchvision()
    # make_grid narrows a grid of fewer than ncol images, and returns a single one unpadded
    if torchvision is not None and n >= ncol and n > 1:
        tiles = images.detach().float().cpu().reshape(n, channels[0] if channels else 1, h, w)
        grid = torchvision.utils.make_grid(tiles, nrow=ncol, padding=1, pad_value=1.0)
        # make_grid repeats a single channel three times; keep the image's own channels
        grid = grid[: tiles.shape[1], 1:-1, 1:-1].numpy()
        return np.ascontiguousarray(grid.transpose(1, 2, 0) if channels else grid[0])
    imgs = images.detach().float().cpu().reshape(n, *channels, h, w).numpy()
    extra: tuple[int, ...] = ()
    if channels:
        imgs, extra = imgs.transpose(0, 2, 3, 1), (channels[0],)
    grid = np.ones(((h + 1) * nrow - 1, (w + 1) * ncol - 1, *extra), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = imgs[i]
    return grid


def _show_grid(grid: np.ndarray, title: str, path: Path, scale: int = 2) -> Path:
    # ``scale`` output pixels per image pixel (at the saved dpi), so digits stay legible.
    height, width = (scale * n / _DPI for n in grid.shape[:2])
    fig = Figure(figsize=(max(width, 4.0), height + 0.5))
    ax = fig.add_subplot()
    if grid.ndim == 3 and grid.shape[2] == 1:
        grid = grid[:, :, 0]
    ax.imshow(np.clip(grid, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return save_figure(fig, path)


def elbo_title(config: dict[str, Any]) -> str:
    """The ELBO figure's title from a run's settings."""
    name = config.get("dataset", {}).get("name", "data")
    return f"{name}, Nz={config.get('latent_dim', '?')}: lower bound per datapoint"


def plot_elbo_curves(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Lower bound per datapoint (train and test) against training samples, log x-axis."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    samples = [r["samples"] for r in rows]
    ax.plot(samples, [r["train_elbo"] for r in rows], "o-", ms=3, label="train")
    ax.plot(samples, [r["test_elbo"] for r in rows], "s--", ms=3, label="test")
    ax.set_xscale("log")
    ax.set_xlabel("training samples evaluated")
    ax.set_ylabel("ELBO per datapoint (nats)")
    ax.set_title(title or "Lower bound", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def latent_grid(vae: VAE, n: int) -> tuple[torch.Tensor, str]:
    """An n x n grid of z for the manifold figure, and a note saying how it was made.

    As in the paper (Figure 4), linearly spaced points of the unit square (cell
    midpoints, avoiding the infinite quantiles at 0 and 1) are mapped through the
    quantile function of the prior's marginals (:func:`~pyro_vae.priors.prior_quantiles`:
    exact, numerically inverted or empirical; the note says which). Dimensions beyond the
    first two are held at the prior's per-dimension median.
    """
    device = next(vae.parameters()).device
    levels = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
    q, note = prior_quantiles(vae.prior(), torch.cat([levels, levels.new_tensor([0.5])]))
    q, center = q[:n], q[n]
    zz = center.repeat(n * n, 1)
    # Rows run top to bottom in decreasing z2 so the picture reads like a plot.
    zz[:, 0] = q[:, 0].repeat(n)
    zz[:, 1] = q.flip(0)[:, 1].repeat_interleave(n)
    return zz, note


@torch.no_grad()
def plot_manifold(vae: VAE, image_shape: Sequence[int], path: Path, n: int = 20) -> Path:
    z, note = latent_grid(vae, n)
    grid = image_grid(vae.decode_mean(vae.descend(z)), image_shape, n)
    if vae.prior.latent_dim == 2:
        title = f"Learned 2-D manifold ({note})"
    else:
        title = (
            f"2-D slice of the {vae.prior.latent_dim}-D latent space: z1, z2 varied "
            f"({note}), other dims at the prior median"
        )
    return _show_grid(grid, title, path)


@torch.no_grad()
def plot_samples(
    vae: VAE, image_shape: Sequence[int], path: Path, n: int = 100, seed: int = 0
) -> Path:
    """Decoder means at z ~ p(z) (Figure 5); with upper layers, z_1 drawn ancestrally from
    p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = vae.descend(vae.prior().sample((n,)), sample=True)
    ncol = math.ceil(math.sqrt(n))
    grid = image_grid(vae.decode_mean(z), image_shape, ncol)
    return _show_grid(grid, f"Random samples: decoder mean at z ~ p(z), Nz={vae.latent_dim}", path)


@torch.no_grad()
def plot_reconstructions(
    vae: VAE, x: torch.Tensor, image_shape: Sequence[int], path: Path, n: int = 16
) -> Path:
    """Test inputs (odd columns) beside the decoder mean at the encoder mean (even columns)."""
    x = x[:n]
    recon = vae.decode_mean(vae.encoder(x)[0])
    pairs = torch.stack([x, recon], dim=1).reshape(2 * x.shape[0], -1)
    grid = image_grid(pairs, image_shape, 8)
    return _show_grid(grid, "Reconstructions: input | decoder mean at encoder mean", path)


@torch.no_grad()
def plot_aggregate_posterior(
    vae: VAE, x: torch.Tensor, path: Path, labels: torch.Tensor | None = None, seed: int = 0
) -> Path:
    """For 2-D latents: one z ~ q(z|x) per point of ``x`` over the contours of p(z).

    The points are a draw from the aggregate posterior q(z) = (1/N) sum_n q(z|x_n); where
    they leave regions of high prior density, or crowd where it is low, the prior and the
    encoder disagree (the KL term of the ELBO pays for it). Coloured by ``labels`` if given.
    """
    vae.require_one_layer("the aggregate-posterior plot")
    if vae.latent_dim != 2:
        raise refuse("latent_dim", vae.latent_dim, "2 for the aggregate-posterior plot")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = vae.encode(x).sample()
    prior = vae.prior()
    ends, _ = prior_quantiles(prior, z.new_tensor([0.005, 0.995]))
    lo = torch.minimum(ends[0], z.quantile(0.005, dim=0))
    hi = torch.maximum(ends[1], z.quantile(0.995, dim=0))
    lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)
    n = 200
    axes = [torch.linspace(lo[j].item(), hi[j].item(), n, device=z.device) for j in range(2)]
    g1, g2 = torch.meshgrid(*axes, indexing="xy")
    density = prior.log_prob(torch.stack([g1, g2], -1).reshape(-1, 2)).exp().reshape(n, n)
    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    ax.contourf(g1.cpu(), g2.cpu(), density.cpu(), levels=12, cmap="Blues")
    z = z.cpu().numpy()
    size = min(12.0, max(2.0, 4000 / len(z)))  # visible for a few points, not a blot for many
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=size, c="tab:red", alpha=0.6, linewidths=0)
    else:
        dots = ax.scatter(
            z[:, 0], z[:, 1], s=size, c=labels.cpu(), cmap="tab10", alpha=0.6, linewidths=0
        )
        ax.legend(*dots.legend_elements(), fontsize=6, loc="upper right", markerscale=0.8)
    ax.set_xlim(lo[0].item(), hi[0].item())
    ax.set_ylim(lo[1].item(), hi[1].item())
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(
        f"Aggregate posterior: one z ~ q(z|x) per test point ({len(z)}),\n"
        "over the density of the prior p(z) (shaded)",
        fontsize=10,
    )
    return save_figure(fig, path)


def plot_figures(
    vae: VAE,
    data: RunData | None,
    out_dir: str | Path,
    metrics: Sequence[dict[str, Any]] = (),
    figures: Sequence[str] = FIGURES,
    title: str = "",
    image_shape: Sequence[int] | None = None,
) -> list[Path]:
    """The paper's figures of ``vae`` in ``out_dir``; returns their paths.

    ``elbo`` (from ``metrics``, the rows of metrics.jsonl), and where the data are images
    (``image_shape``, default the dataset's): ``manifold``, ``samples``, ``reconstructions``
    (of ``data.test``), and for a 2-D latent space ``aggregate_posterior``.
    """
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ArgumentError.refuse("figures", unknown, f"names among {list(FIGURES)}")
    out_dir, out = Path(out_dir), []
    if "elbo" in figures and metrics:
        out.append(plot_elbo_curves(metrics, out_dir / "elbo.png", title))
    if image_shape is None and data is not None:
        image_shape = data.dataset.image_shape
    images = [f for f in figures if f not in ("elbo", "aggregate_posterior")] if image_shape else []
    if "manifold" in images:
        out.append(plot_manifold(vae, image_shape, out_dir / "manifold.png"))
    if "samples" in images:
        out.append(plot_samples(vae, image_shape, out_dir / "samples.png"))
    if "reconstructions" in images and data is not None:
        out.append(
            plot_reconstructions(vae, data.test, image_shape, out_dir / "reconstructions.png")
        )
    one_layer = getattr(vae, "stack", None) is None
    if "aggregate_posterior" in figures and one_layer and vae.latent_dim == 2 and data is not None:
        path = out_dir / "aggregate_posterior.png"
        out.append(plot_aggregate_posterior(vae, data.test, path, data.dataset.test_labels))
    return out
