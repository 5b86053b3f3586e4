"""Prior study: the paper's MNIST model trained for one budget under six priors p(z).

    python experiments/priors_study.py

Each prior trains the same network (Nz=20, 500 tanh hidden units, Bernoulli decoder, Adam
1e-3, batch 100, seed 0) for ``epochs`` epochs into ``<runs>/<prior>``; a finished run is
reused, so an interrupted study continues where it stopped. On the 10000 test images
(binarised once) it then measures

- the ELBO and its two terms, E_q[log p(x|z)] and KL(q(z|x) || p(z)), averaged over
  ``elbo_samples`` draws z ~ q(z|x) per image (Monte Carlo for every prior alike: most of
  them have no closed-form KL);
- the importance-sampled log p(x) with K = ``importance_samples`` (Burda et al. 2015);
- the active units A = #{u : Cov_x(E_q[z_u]) > 0.01} (Burda et al. 2015, sec. 5.2),

and writes ``results.csv``, ``results.md`` and decoder-mean sample grids (z ~ p(z)) into
``out``. Keys (``key=value``): data_dir, epochs (10), importance_samples (1000),
elbo_samples (10), priors (comma-separated, default the six below), runs
(runs/priors_study), out (experiments/results/priors), seed (0).
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from pyro_vae import VAE, RunDir, importance_log_likelihood, load_run
from pyro_vae.cli import configure_logging, parse_key_values
from pyro_vae.config import compose_config, run_training
from pyro_vae.evaluate import ACTIVE_THRESHOLD, active_units
from pyro_vae.plots import image_grid, plot_samples

PRIORS = (
    "standard_normal",
    "laplace",
    "student_t",
    "mixture_of_gaussians",
    "learnable_normal",
    "vamp",
)
COLUMNS = (
    ("prior", "prior", "{}"),
    ("test_elbo", "test ELBO", "{:.2f}"),
    ("test_log_likelihood", "log p(x), IS", "{:.2f}"),
    ("reconstruction", r"E_q log p(x\|z)", "{:.2f}"),  # a bare pipe would end the Markdown cell
    ("kl", "KL(q‖p)", "{:.2f}"),
    ("active_units", "active units", "{}"),
    ("epoch_seconds", "s/epoch", "{:.1f}"),
    ("eval_seconds", "eval s", "{:.0f}"),
)


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), (values.std() / math.sqrt(values.numel())).item()


@torch.no_grad()
def elbo_terms(
    vae: VAE, x: torch.Tensor, num_samples: int = 10, batch_size: int = 500
) -> dict[str, float]:
    """E_q[log p(x|z)], KL(q(z|x)||p(z)) and their difference, the ELBO (eq. 3), per datapoint.

    Each is the mean over ``num_samples`` draws z ~ q(z|x) per point, then over points;
    ``*_se`` is the standard error over points.
    """
    recon, kl = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        q = vae.encode(xb)
        z = q.sample((num_samples,))
        recon.append(vae.decode(z).log_prob(xb).mean(0))
        kl.append((q.log_prob(z) - vae.prior().log_prob(z)).mean(0))
    recon, kl = torch.cat(recon), torch.cat(kl)
    out: dict[str, float] = {}
    for name, values in (("reconstruction", recon), ("kl", kl), ("test_elbo", recon - kl)):
        out[name], out[f"{name}_se"] = mean_se(values)
    return out


def train_timed(overrides: list[str], run_dir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """Train (or reuse) the run ``overrides`` describe in ``run_dir``: its summary, and its
    training time and median epoch."""
    summary = run_training(compose_config(overrides))
    # The median epoch: other users' jobs on the shared cores inflate a few epochs a lot.
    seconds = [0.0] + [r["seconds"] for r in RunDir(run_dir).metrics()]
    timing = {
        "train_seconds": summary["train_seconds"],
        "epoch_seconds": statistics.median(b - a for a, b in itertools.pairwise(seconds)),
    }
    return summary, timing


def run_prior(prior: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) the run for ``prior`` and measure it; cached in its summary.json."""
    run_dir = Path(opts["runs"]) / prior
    overrides = [
        f"prior={prior}",
        "latent_dim=20",
        f"epochs={opts['epochs']}",
        f"seed={opts['seed']}",
        *([f"data_dir={opts['data_dir']}"] if opts["data_dir"] else []),
        f"run_dir={run_dir}",
        "progress=false",
    ]
    summary, timing = train_timed(overrides, run_dir)
    key = f"prior_study_K{opts['importance_samples']}_S{opts['elbo_samples']}"
    if key in summary:
        return {**summary[key], **timing}
    loaded = load_run(run_dir)
    vae, test = loaded.vae, loaded.data().test
    torch.manual_seed(opts["seed"])
    start = time.perf_counter()
    row: dict[str, Any] = {"prior": prior, **elbo_terms(vae, test, opts["elbo_samples"])}
    ll = importance_log_likelihood(vae, test, opts["importance_samples"])
    row["test_log_likelihood"], row["test_log_likelihood_se"] = mean_se(ll)
    row["active_units"] = active_units(vae, test)
    row["eval_seconds"] = time.perf_counter() - start
    row["samples_image"] = f"samples_{prior}.png"
    plot_samples(vae, loaded.meta["image_shape"], Path(opts["out"]) / row["samples_image"])
    loaded.run.update_summary(**{key: row})
    return {**row, **timing}


def write_tables(rows: list[dict[str, Any]], opts: dict[str, Any], command: str) -> None:
    out = Path(opts["out"])
    with open(out / "results.csv", "w", newline="") as f:
        fields = [k for k in rows[0] if k != "samples_image"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            cell = fmt.format(row[key])
            if f"{key}_se" in row:
                cell += f" ± {row[f'{key}_se']:.2f}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    text = f"""# Priors on MNIST (Nz=20, {opts["epochs"]} epochs of training each)

Produced by

    {command}

The paper's model (500 tanh hidden units, Bernoulli decoder, Adam 1e-3, batch 100, seed
{opts["seed"]}), trained for {opts["epochs"]} epochs under each prior with Pyro's Trace_ELBO.
Test set: the 10000 MNIST test images, binarised once. Nats per image; ± is the standard
error over test images (it does not include run-to-run variation between seeds). ELBO,
E_q log p(x|z) and KL(q‖p): {opts["elbo_samples"]} draws z ~ q(z|x) per image, Monte Carlo
for every prior. log p(x), IS: importance sampling with K={opts["importance_samples"]}.
Active units: Cov_x(E_q[z_u]) > {ACTIVE_THRESHOLD} (Burda et al. 2015). Times on this
machine's 2 CPU cores, shared with other users' jobs: s/epoch is the median training epoch
(robust to the epochs those jobs slowed down), eval s the wall time of this table's
measurements (once, so not robust).

{chr(10).join(lines)}

Samples (decoder means at z ~ p(z)): {", ".join(f"`{r['samples_image']}`" for r in rows)};
all priors side by side: `samples.png`.
"""
    (out / "results.md").write_text(text)


def sample_overview(names: list[str], opts: dict[str, Any]) -> None:
    """The sample grids of the runs ``<runs>/<name>`` side by side (64 samples each, same
    seed), into ``<out>/samples.png``."""
    fig = Figure(figsize=(4 * len(names), 4.4))
    for i, name in enumerate(names):
        vae = load_run(Path(opts["runs"]) / name).vae
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            images = vae.decode_mean(vae.prior().sample((64,)))
        ax = fig.add_subplot(1, len(names), i + 1)
        ax.imshow(image_grid(images, (28, 28), 8), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=12)
        ax.set_axis_off()
    fig.savefig(Path(opts["out"]) / "samples.png", dpi=80, bbox_inches="tight")


def main(argv: list[str]) -> int:
    opts = {
        "data_dir": None,
        "epochs": 10,
        "importance_samples": 1000,
        "elbo_samples": 10,
        "priors": ",".join(PRIORS),
        "runs": "runs/priors_study",
        "out": "experiments/results/priors",
        "seed": 0,
    }
    types = {k: type(v) if v is not None else str for k, v in opts.items()}
    opts.update(parse_key_values(argv, types, "priors_study"))
    configure_logging()  # the package's messages on stderr, as pyro-vae train shows them
    Path(opts["out"]).mkdir(parents=True, exist_ok=True)
    rows = []
    for prior in opts["priors"].split(","):
        rows.append(run_prior(prior, opts))
        print(f"{prior}: " + ", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    command = " ".join(["python experiments/priors_study.py", *argv])
    write_tables(rows, opts, command)
    sample_overview([row["prior"] for row in rows], opts)
    print(f"wrote {opts['out']}/results.md, results.csv, samples*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
