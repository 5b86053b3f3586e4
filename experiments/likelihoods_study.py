"""Likelihood and network study: MNIST's grey levels under four likelihoods, and the conv
network against the paper's MLP on binarised MNIST.

    python experiments/likelihoods_study.py

Runs (Nz=20, Adam 1e-3, batch 100, seed 0, ``epochs`` epochs each, into ``<runs>/<run>``;
a finished run is reused, so an interrupted study continues where it stopped):

- grey levels (``dataset.binarize=none``, test set not binarised either), one network for
  all four so that only the likelihood differs (``grey_network``, default ``conv``: the
  categorical's 256 logits per pixel make the MLP's last layer 500 x 200704 weights):
  ``bernoulli`` (the common, unnormalised relaxation), ``continuous_bernoulli``, ``beta``,
  ``categorical`` (256 grey levels);
- binarised MNIST (dynamic binarisation, the test set binarised once), Bernoulli
  likelihood: ``mlp`` (the paper's, 500 tanh units) against ``conv``.

On the test images (the first ``eval_points``) it measures the ELBO and its two terms
(``elbo_samples`` draws z ~ q(z|x) per image), the importance-sampled log p(x) with K =
``importance_samples`` where it means something (not for the Bernoulli on grey levels,
which is not a normalised likelihood of them), the active units (Burda et al. 2015) and
the median training epoch's seconds, and draws decoder-mean samples (z ~ p(z)). It writes
``results.csv``, ``results.md`` and ``samples*.png`` into ``out``.

Keys (``key=value``): data_dir, epochs (5), categorical_epochs (1: its 256 logits per pixel
make an epoch about ten times the others' on 2 CPU cores), importance_samples (100),
eval_points (2000), elbo_samples (10), runs (runs/likelihoods_study), out
(experiments/results/likelihoods), grey_network (conv), only (comma-separated run names;
default all), seed (0).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from priors_study import elbo_terms, mean_se, sample_overview, train_timed

from pyro_vae import active_units, importance_log_likelihood, load_run
from pyro_vae.cli import configure_logging, parse_key_values
from pyro_vae.plots import plot_samples

GREY = ["dataset.binarize=none", "dataset.test_binarize=none"]

#: name -> (what it compares, likelihood, network or None for the grey-level network,
#: extra overrides, how its log-likelihood compares)
RUNS: dict[str, tuple[str, str, str | None, list[str], str]] = {
    "bernoulli_grey": ("grey", "bernoulli", None, GREY, "none (not normalised on grey levels)"),
    "continuous_bernoulli": ("grey", "continuous_bernoulli", None, GREY, "density on [0,1]^D"),
    "beta": ("grey", "beta", None, GREY, "density on [0,1]^D (squeezed, eps=1e-3)"),
    "categorical": ("grey", "categorical", None, GREY, "probability of the 8-bit image"),
    "mlp_binary": ("binary", "bernoulli", "mlp", [], "probability of the binary image"),
    "conv_binary": ("binary", "bernoulli", "conv", [], "probability of the binary image"),
}
COLUMNS = (
    ("run", "run", "{}"),
    ("network", "network", "{}"),
    ("epochs", "epochs", "{}"),
    ("test_elbo", "test ELBO", "{:.2f}"),
    ("test_log_likelihood", "log p(x), IS", "{:.2f}"),
    ("reconstruction", r"E_q log p(x\|z)", "{:.2f}"),  # a bare pipe would end the Markdown cell
    ("kl", "KL(q‖p)", "{:.2f}"),
    ("active_units", "active units", "{}"),
    ("epoch_seconds", "s/epoch", "{:.1f}"),
    ("comparable", "log p(x) is a", "{}"),
)


def run_one(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) run ``name`` and measure it; the measurements are cached in its
    summary.json."""
    kind, likelihood, network, extra, comparable = RUNS[name]
    network = network or opts["grey_network"]
    run_dir = Path(opts["runs"]) / name
    epochs = opts["categorical_epochs"] if likelihood == "categorical" else opts["epochs"]
    overrides = [
        f"likelihood={likelihood}",
        f"network={network}",
        "latent_dim=20",
        f"epochs={epochs}",
        f"seed={opts['seed']}",
        *([f"data_dir={opts['data_dir']}"] if opts["data_dir"] else []),
        f"run_dir={run_dir}",
        "progress=false",
        *extra,
    ]
    summary, timing = train_timed(overrides, run_dir)
    key = f"likelihood_study_K{opts['importance_samples']}_S{opts['elbo_samples']}"
    key += f"_N{opts['eval_points']}"
    if key in summary:
        return {**summary[key], "epochs": epochs, **timing}
    loaded = load_run(run_dir)
    vae, test = loaded.vae, loaded.data().test[: opts["eval_points"]]
    torch.manual_seed(opts["seed"])
    start = time.perf_counter()
    row: dict[str, Any] = {"run": name, "kind": kind, "likelihood": likelihood}
    row.update(network=network, epochs=epochs, comparable=comparable)
    row.update(elbo_terms(vae, test, opts["elbo_samples"], batch_size=100))
    if likelihood == "bernoulli" and kind == "grey":
        row["test_log_likelihood"] = row["test_log_likelihood_se"] = float("nan")
    else:
        ll = importance_log_likelihood(vae, test, opts["importance_samples"])
        row["test_log_likelihood"], row["test_log_likelihood_se"] = mean_se(ll)
    row["active_units"] = active_units(vae, test)
    row["eval_seconds"] = time.perf_counter() - start
    row["samples_image"] = f"samples_{name}.png"
    plot_samples(vae, loaded.meta["image_shape"], Path(opts["out"]) / row["samples_image"])
    loaded.run.update_summary(**{key: row})
    return {**row, **timing}


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row[key]
    if isinstance(value, float) and math.isnan(value):
        return "—"
    cell = fmt.format(value)
    se = row.get(f"{key}_se")
    return cell + (f" ± {se:.2f}" if se is not None and not math.isnan(se) else "")


def write_tables(rows: list[dict[str, Any]], opts: dict[str, Any], command: str) -> None:
    out = Path(opts["out"])
    with open(out / "results.csv", "w", newline="") as f:
        fields = [k for k in rows[0] if k != "samples_image"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    tables = {}
    for kind in ("grey", "binary"):
        lines = [header, "|" + "---|" * len(COLUMNS)]
        for row in rows:
            if row["kind"] == kind:
                cells = [_cell(row, key, fmt) for key, _, fmt in COLUMNS]
                lines.append("| " + " | ".join(cells) + " |")
        tables[kind] = "\n".join(lines)
    text = f"""# Likelihoods and networks on MNIST (Nz=20)

Produced by

    {command}

Adam 1e-3, batch 100, seed {opts["seed"]}. Nats per image over the first
{opts["eval_points"]} test images; ± is the standard error over images (not run-to-run
variation). ELBO terms: {opts["elbo_samples"]} draws z ~ q(z|x) per image. log p(x), IS:
importance sampling with K={opts["importance_samples"]}. Active units: Cov_x(E_q[z_u]) > 0.01.
s/epoch: the median training epoch on this machine's 2 shared CPU cores.

## MNIST grey levels (not binarised), network={opts["grey_network"]}

{tables["grey"]}

## Binarised MNIST, Bernoulli likelihood: the paper's MLP against the conv network

{tables["binary"]}

Samples (decoder means at z ~ p(z)): {", ".join(f"`{r['samples_image']}`" for r in rows)};
side by side: `samples.png`.
"""
    (out / "results.md").write_text(text)


def main(argv: list[str]) -> int:
    opts: dict[str, Any] = {
        "data_dir": None,
        "epochs": 5,
        "categorical_epochs": 1,
        "importance_samples": 100,
        "eval_points": 2000,
        "elbo_samples": 10,
        "runs": "runs/likelihoods_study",
        "out": "experiments/results/likelihoods",
        "grey_network": "conv",
        "only": ",".join(RUNS),
        "seed": 0,
    }
    types = {k: type(v) if v is not None else str for k, v in opts.items()}
    opts.update(parse_key_values(argv, types, "likelihoods_study"))
    configure_logging()
    Path(opts["out"]).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for name in opts["only"].split(","):
        if name not in RUNS:
            sys.exit(f"only={name!r}: expected names among {list(RUNS)}")
        rows.append(run_one(name, opts))
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    command = " ".join(["python experiments/likelihoods_study.py", *argv])
    write_tables(rows, opts, command)
    sample_overview([row["run"] for row in rows], opts)
    print(f"wrote {opts['out']}/results.md, results.csv, samples*.png")
    print(f"study wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
