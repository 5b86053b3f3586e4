"""The paper's pictures for a run: ELBO curves (Figure 2), the 2-D manifold (Figure 4),
random samples (Figure 5) and reconstructions.

Figures are drawn with matplotlib's object API (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .experiment import load_run
from .model import VAE
from .rundir import LAST_CHECKPOINT, RunDir

FIGURES = ("elbo", "manifold", "samples", "reconstructions")
_DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def image_grid(images: torch.Tensor, image_shape: Sequence[int], ncol: int) -> np.ndarray:
    """Tile ``images`` [N, H*W] into one array with a 1-pixel gap, ``ncol`` per row."""
    h, w = image_shape
    n = images.shape[0]
    nrow = math.ceil(n / ncol)
    grid = np.ones(((h + 1) * nrow - 1, (w + 1) * ncol - 1), dtype=np.float32)
    imgs = images.detach().float().cpu().reshape(n, h, w).numpy()
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = imgs[i]
    return grid


def _show_grid(grid: np.ndarray, title: str, path: Path, scale: int = 2) -> Path:
    # ``scale`` output pixels per image pixel (at the saved dpi), so digits stay legible.
    height, width = (scale * n / _DPI for n in grid.shape)
    fig = Figure(figsize=(max(width, 4.0), height + 0.5))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return _save(fig, path)


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
    return _save(fig, path)


def latent_grid(vae: VAE, n: int) -> tuple[torch.Tensor, str]:
    """An n x n grid of z for the manifold figure, and a note saying how it was made.

    As in the paper (Figure 4), linearly spaced points of the unit square (cell
    midpoints, avoiding the infinite quantiles at 0 and 1) are mapped through the inverse
    CDF of the prior's marginals; without an ``icdf`` the standard Gaussian's is used.
    Dimensions beyond the first two are held at the prior's per-dimension median where
    it has one, else 0.
    """
    device = next(vae.parameters()).device
    u = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
    prior = vae.prior()
    base = getattr(prior, "base_dist", prior)
    note = "prior quantiles"
    try:
        q = base.icdf(u[:, None].expand(n, vae.latent_dim))
        center = base.icdf(torch.full((vae.latent_dim,), 0.5, device=device))
    except (NotImplementedError, AttributeError, ValueError, RuntimeError):
        normal = torch.distributions.Normal(0.0, 1.0)
        q = normal.icdf(u)[:, None].expand(n, vae.latent_dim)
        center = torch.zeros(vae.latent_dim, device=device)
        note = "standard normal quantiles (the prior has no inverse CDF)"
    zz = center.repeat(n * n, 1)
    # Rows run top to bottom in decreasing z2 so the picture reads like a plot.
    zz[:, 0] = q[:, 0].repeat(n)
    zz[:, 1] = q.flip(0)[:, 1].repeat_interleave(n)
    return zz, note


@torch.no_grad()
def plot_manifold(vae: VAE, image_shape: Sequence[int], path: Path, n: int = 20) -> Path:
    z, note = latent_grid(vae, n)
    grid = image_grid(vae.decode_mean(z), image_shape, n)
    if vae.latent_dim == 2:
        title = f"Learned 2-D manifold ({note})"
    else:
        title = (
            f"2-D slice of the {vae.latent_dim}-D latent space: z1, z2 varied "
            f"({note}), other dims at the prior median"
        )
    return _show_grid(grid, title, path)


@torch.no_grad()
def plot_samples(
    vae: VAE, image_shape: Sequence[int], path: Path, n: int = 100, seed: int = 0
) -> Path:
    """Decoder means at z ~ p(z) (Figure 5)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = vae.prior().sample((n,))
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


def plot_run(
    run_dir: str | Path, checkpoint: str = LAST_CHECKPOINT, figures: Sequence[str] = FIGURES
) -> list[Path]:
    """Write the run's figures into ``<run_dir>/figures``; returns their paths."""
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ValueError(f"figures={unknown} not known; choose from {list(FIGURES)}")
    run = RunDir(run_dir)
    out: list[Path] = []
    name = run.config().dataset.name
    if "elbo" in figures and run.metrics():
        title = f"{name}, Nz={run.config().latent_dim}: lower bound per datapoint"
        out.append(plot_elbo_curves(run.metrics(), run.figure_dir / "elbo.png", title))
    image_figs = [f for f in figures if f != "elbo"]
    if not image_figs:
        return out
    loaded = load_run(run.path, checkpoint)
    shape = loaded.meta.get("image_shape")
    if not shape:
        return out
    vae = loaded.vae
    if "manifold" in figures:
        out.append(plot_manifold(vae, shape, run.figure_dir / "manifold.png"))
    if "samples" in figures:
        out.append(plot_samples(vae, shape, run.figure_dir / "samples.png"))
    if "reconstructions" in figures:
        test = loaded.data().test
        out.append(plot_reconstructions(vae, test, shape, run.figure_dir / "reconstructions.png"))
    return out
