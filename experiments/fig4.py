"""Figure 4: the learned 2-D manifolds of Frey Face and MNIST.

    python experiments/fig4.py [budget=cpu|full]

AEVB with Nz = 2 and the paper's settings (``+experiment=paper``), the same runs as
Figure 2's Frey Face Nz = 2 and Figure 5's MNIST Nz = 2 (a run one of them trained is not
trained again). As in the paper, linearly spaced points of the unit square (cell midpoints)
are mapped through the inverse CDF of the Gaussian prior to z, and the decoder's mean
E[x|z] is drawn at each.

Writes ``fig4.png`` and ``fig4.csv`` (the two runs and their bounds).
"""

from __future__ import annotations

import sys

from common import Options, finish, paper_runs, run_row, save_csv, save_figure, show_images
from matplotlib.figure import Figure

from pyro_vae import load_run
from pyro_vae.plots import latent_grid

GRID = {"frey_face": 20, "mnist": 20}
TITLES = {"frey_face": "(a) Learned Frey Face manifold", "mnist": "(b) Learned MNIST manifold"}


def main(argv: list[str]) -> None:
    opts = Options(argv, "fig4")
    runs = {d: paper_runs(opts, d, [2], ["aevb"])[0] for d in GRID}
    fig = Figure(figsize=(13, 7))
    for ax, (dataset, r) in zip(fig.subplots(1, 2), runs.items(), strict=True):
        loaded = load_run(r.path)
        z, _ = latent_grid(loaded.vae, GRID[dataset])
        images = loaded.vae.decode_mean(z).detach()
        title = f"{TITLES[dataset]}\n(test bound {r.summary['test_elbo']:.1f} nats)"
        show_images(ax, images, loaded.meta["image_shape"], GRID[dataset], title)
    fig.suptitle(f"Figure 4 ({opts.budget} budget): decoder mean over the inverse-CDF grid of z")
    save_figure(opts, fig, "fig4.png")
    save_csv(opts, "fig4.csv", [run_row(r) for r in runs.values()])
    finish(opts)


if __name__ == "__main__":
    main(sys.argv[1:])
