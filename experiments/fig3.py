"""Figure 3: estimated marginal log-likelihood over training, AEVB vs wake-sleep vs MCEM.

    python experiments/fig3.py [budget=cpu|full] [jobs=N]

MNIST, Nz = 3, 100 hidden units, training sets of the first 1000 and the first 50000
images; the paper's settings (``+experiment=paper``) for all three methods; MCEM with its
defaults (10 leapfrog steps, step size tuned to 90% acceptance, 5 weight updates per
E-step; ``pyro_vae/methods/mcem.py``). Every model snapshot (epochs 1, 2, 4, 8, ... and
the last) is evaluated with the paper's estimator (appendix D, ``pyro_vae/marginal.py``)
and with importance sampling (encoder proposal, K = 1000) on the same fixed points: the
first ``points`` training images (binarised once) and the first ``points`` test images.

Budgets: ``cpu`` 5 x 10^5 training samples per run, 100 + 100 evaluation points, 8 chains per
point, L = 100, 30 burn-in transitions; ``full`` 10^8 samples, 1000 + 1000 points,
16 chains, L = 1000, 100 burn-in (our choice: the paper states neither).

Writes ``fig3.png`` (against training samples, as in the paper, and against training
seconds: the methods' steps cost different times), ``fig3.csv`` (every snapshot's estimates
and training time) and ``fig3_final.csv`` (the last snapshot of each run).
"""

from __future__ import annotations

import math
import sys
import time

import torch
from common import Options, finish, save_csv, save_figure, sweep
from matplotlib.figure import Figure

from pyro_vae import (
    RunDir,
    appendix_d_log_likelihood,
    importance_log_likelihood,
    load_data,
    load_run,
)
from pyro_vae.data import binarize

TRAIN_SIZES = (1000, 50000)
METHODS = ("aevb", "wake_sleep", "mcem")
COLORS = {"aevb": "C3", "wake_sleep": "C2", "mcem": "C0"}
BUDGET = {
    "smoke": dict(samples=20_000, points=10, num_chains=4, num_samples=20, burn_in=5),
    "cpu": dict(samples=500_000, points=100, num_chains=8, num_samples=100, burn_in=30),
    "full": dict(samples=100_000_000, points=1000, num_chains=16, num_samples=1000, burn_in=100),
}


def evaluate_snapshots(record, points: dict[str, torch.Tensor], budget: dict) -> list[dict]:
    """Appendix D and importance-sampled log p(x) of every snapshot after epoch 0."""
    rows = []
    size = record.config["dataset.train_size"]
    run = RunDir(record.path)
    # Snapshots after whole epochs (epoch 0 has no place on a log axis), and the end of
    # training when it falls inside an epoch.
    checkpoints = {e * size: p.name for e, p in run.snapshots() if e > 0}
    checkpoints.setdefault(record.summary["samples"], "last.pt")
    # Training time at each snapshot, to compare the methods per second as well as per sample.
    seconds = {m["samples"]: m["seconds"] for m in record.metrics}
    seconds.setdefault(record.summary["samples"], record.summary["train_seconds"])
    for samples, name in sorted(checkpoints.items()):
        loaded = load_run(record.path, checkpoint=name)
        torch.manual_seed(samples)
        start = time.perf_counter()
        row = {
            "train_size": size,
            "method": record.config["method"],
            "samples": samples,
            "train_seconds": seconds[samples],
            "checkpoint": name,
        }
        for split, x in points.items():
            d = appendix_d_log_likelihood(
                loaded.vae,
                x,
                num_chains=budget["num_chains"],
                num_samples=budget["num_samples"],
                burn_in=budget["burn_in"],
            )
            is_ll = importance_log_likelihood(loaded.vae, x, num_samples=1000)
            row[f"{split}_appendix_d"] = d.mean().item()
            row[f"{split}_appendix_d_se"] = (d.std() / math.sqrt(d.numel())).item()
            row[f"{split}_importance"] = is_ll.mean().item()
        row["eval_seconds"] = round(time.perf_counter() - start, 1)
        print(row, flush=True)
        rows.append(row)
    return rows


def main(argv: list[str]) -> None:
    opts = Options(argv, "fig3")
    budget = BUDGET[opts.budget]
    records = sweep(
        opts,
        "fig3",
        [
            "+experiment=paper",
            "dataset=mnist",
            "latent_dim=3",
            "hidden_dims=[100]",
            f"dataset.train_size={','.join(map(str, TRAIN_SIZES))}",
            f"method={','.join(METHODS)}",
            f"num_samples={budget['samples']}",
        ],
    )
    records = [r for r in records if r.config["num_samples"] == budget["samples"]]
    # The first 1000 of the 50000 training images are the 1000-image set: one set of points.
    data = load_data(RunDir(records[0].path).config())
    n = budget["points"]
    points = {"train": binarize(data.train[:n], seed=0), "test": data.test[:n]}
    per_run = [evaluate_snapshots(r, points, budget) for r in records]  # by samples
    rows = [row for run_rows in per_run for row in run_rows]
    save_csv(opts, "fig3.csv", rows)
    save_csv(opts, "fig3_final.csv", [run_rows[-1] for run_rows in per_run])

    # Top row against training samples (the paper's axis), bottom row against training time.
    fig = Figure(figsize=(12, 9), layout="constrained")
    x_axes = [("samples", "training samples evaluated"), ("train_seconds", "training seconds")]
    for axes_row, (xkey, xlabel) in zip(fig.subplots(2, 2), x_axes, strict=True):
        for ax, size in zip(axes_row, TRAIN_SIZES, strict=True):
            for m in METHODS:
                sel = [x for x in rows if x["train_size"] == size and x["method"] == m]
                xs = [x[xkey] for x in sel]
                ax.plot(
                    xs,
                    [x["test_appendix_d"] for x in sel],
                    "-o",
                    ms=3,
                    color=COLORS[m],
                    label=f"{m} (test)",
                )
                ax.plot(
                    xs,
                    [x["train_appendix_d"] for x in sel],
                    "--",
                    color=COLORS[m],
                    label=f"{m} (train)",
                )
            ax.set_xscale("log")
            ax.set_title(f"$N_{{train}}$ = {size}", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("marginal log-likelihood (appendix D), nats")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"Figure 3 ({opts.budget} budget): MNIST, $N_z$ = 3, 100 hidden units")
    save_figure(opts, fig, "fig3.png", dpi=90)
    finish(opts, **{k: v for k, v in budget.items()})


if __name__ == "__main__":
    main(sys.argv[1:])
