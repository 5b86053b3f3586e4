"""Figure 5: random samples from MNIST models with Nz in {2, 5, 10, 20}.

    python experiments/fig5.py [budget=cpu|full]

AEVB with the paper's settings (``+experiment=paper``); Nz = 5, 10, 20 are Figure 2's runs
and Nz = 2 is Figure 4's (a run already trained is not trained again). Each panel shows the
decoder mean E[x|z] at 100 draws z ~ p(z) (the same seed for every model).

Writes ``fig5.png`` and ``fig5.csv`` (the four runs and their bounds).
"""

from __future__ import annotations

import sys

import torch
from common import Options, finish, paper_runs, run_row, save_csv, save_figure, show_images
from matplotlib.figure import Figure

from pyro_vae import load_run

LATENT_DIMS = (2, 5, 10, 20)


def main(argv: list[str]) -> None:
    opts = Options(argv, "fig5")
    runs = paper_runs(opts, "mnist", LATENT_DIMS, ["aevb"])
    fig = Figure(figsize=(16, 4.6))
    for i, (ax, r) in enumerate(zip(fig.subplots(1, len(runs)), runs, strict=True)):
        loaded = load_run(r.path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            z = loaded.vae.prior().sample((100,))
        images = loaded.vae.decode_mean(z).detach()
        title = f"({'abcd'[i]}) {r.config['latent_dim']}-D latent space"
        show_images(ax, images, loaded.meta["image_shape"], 10, title)
    fig.suptitle(f"Figure 5 ({opts.budget} budget): decoder mean at z ~ p(z)")
    save_figure(opts, fig, "fig5.png")
    save_csv(opts, "fig5.csv", [run_row(r) for r in runs])
    finish(opts)


if __name__ == "__main__":
    main(sys.argv[1:])
