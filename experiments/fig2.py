"""Figure 2: AEVB against wake-sleep, lower bound per datapoint against training samples.

    python experiments/fig2.py [budget=cpu|full] [jobs=N]

MNIST with Nz in {3, 5, 10, 20, 200} (500 hidden units) and Frey Face with Nz in
{2, 5, 10, 20} (200 hidden units), each trained with AEVB (Pyro's Trace_ELBO, estimator A)
and with wake-sleep, same encoder and decoder, the paper's settings (``+experiment=paper``:
Adagrad with its step size chosen from {0.01, 0.02, 0.1} on the first 100 minibatches,
minibatch 100, L = 1, weight decay 1 = a N(0, I) prior on the parameters, N(0, 0.01)
initialisation). Budget per run (training samples): ``cpu`` 10^6, so the curves stop two
decades before the paper's 10^8; ``full`` 10^8 (for a GPU).

Writes ``fig2.png``, ``fig2_curves.csv`` (every evaluation of every run),
``fig2_final.csv`` (one line per run) and ``fig2_claims.json`` (the paper's two claims,
checked on these runs).
"""

from __future__ import annotations

import json
import sys

from common import Options, finish, paper_runs, run_row, save_csv, save_figure
from matplotlib.figure import Figure

LATENT_DIMS = {"mnist": (3, 5, 10, 20, 200), "frey_face": (2, 5, 10, 20)}
METHODS = ("aevb", "wake_sleep")
COLORS = {"aevb": "C3", "wake_sleep": "C2"}
TITLES = {"mnist": "MNIST", "frey_face": "Frey Face"}


def claims(runs: dict) -> dict:
    """AEVB ahead of wake-sleep (test bound, at the end and at every evaluation); the
    train-test gap and the drop from the best test bound (overfitting) per Nz."""
    out = {}
    for (dataset, nz), pair in runs.items():
        a, w = pair["aevb"], pair["wake_sleep"]
        ahead = [x["test_elbo"] > y["test_elbo"] for x, y in zip(a.metrics, w.metrics, strict=True)]
        out[f"{dataset} Nz={nz}"] = {
            "aevb_test": round(a.summary["test_elbo"], 2),
            "wake_sleep_test": round(w.summary["test_elbo"], 2),
            "aevb_ahead_at_end": a.summary["test_elbo"] > w.summary["test_elbo"],
            "aevb_ahead_at_evaluations": f"{sum(ahead)}/{len(ahead)}",
            "aevb_train_minus_test": round(a.summary["train_elbo"] - a.summary["test_elbo"], 2),
            "aevb_best_minus_final_test": round(
                a.summary["best_test_elbo"] - a.summary["test_elbo"], 2
            ),
        }
    return out


def main(argv: list[str]) -> None:
    opts = Options(argv, "fig2")
    runs = {}
    for dataset, dims in LATENT_DIMS.items():
        records = paper_runs(opts, dataset, dims, METHODS)
        for r in records:
            runs.setdefault((dataset, r.config["latent_dim"]), {})[r.config["method"]] = r

    fig = Figure(figsize=(18, 7))
    axes = fig.subplots(2, 5)
    axes[1, 4].set_axis_off()
    for row, (dataset, dims) in enumerate(LATENT_DIMS.items()):
        for col, nz in enumerate(dims):
            ax = axes[row, col]
            for method, r in runs[(dataset, nz)].items():
                samples = [m["samples"] for m in r.metrics]
                ax.plot(samples, [m["test_elbo"] for m in r.metrics], "-", color=COLORS[method])
                ax.plot(samples, [m["train_elbo"] for m in r.metrics], "--", color=COLORS[method])
            ax.set_xscale("log")
            ax.set_title(f"{TITLES[dataset]}, $N_z$ = {nz}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if col == 0:
                ax.set_ylabel("lower bound per datapoint (nats)")
            if row == 1 or (dataset == "mnist" and nz == 200):
                ax.set_xlabel("training samples evaluated")
    handles = [
        axes[0, 0].plot([], [], "-", color=COLORS["aevb"], label="AEVB (test)")[0],
        axes[0, 0].plot([], [], "--", color=COLORS["aevb"], label="AEVB (train)")[0],
        axes[0, 0].plot([], [], "-", color=COLORS["wake_sleep"], label="wake-sleep (test)")[0],
        axes[0, 0].plot([], [], "--", color=COLORS["wake_sleep"], label="wake-sleep (train)")[0],
    ]
    axes[1, 4].legend(handles=handles, loc="center")
    fig.suptitle(f"Figure 2 ({opts.budget} budget): AEVB vs wake-sleep")
    save_figure(opts, fig, "fig2.png", dpi=80)

    curves = [
        {
            "dataset": dataset,
            "latent_dim": nz,
            "method": method,
            **{k: m[k] for k in ("epoch", "samples", "train_elbo", "test_elbo")},
        }
        for (dataset, nz), pair in runs.items()
        for method, r in pair.items()
        for m in r.metrics
    ]
    all_runs = [r for pair in runs.values() for r in pair.values()]
    save_csv(opts, "fig2_curves.csv", curves)
    save_csv(opts, "fig2_final.csv", [run_row(r) for r in all_runs])
    checked = claims(runs)
    (opts.out / "fig2_claims.json").write_text(json.dumps(checked, indent=2) + "\n")
    print(json.dumps(checked, indent=2))
    finish(opts, train_seconds=round(sum(r.summary["train_seconds"] for r in all_runs)))


if __name__ == "__main__":
    main(sys.argv[1:])
