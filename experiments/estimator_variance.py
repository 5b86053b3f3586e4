"""The estimator study on MNIST (Nz=20, the paper's 500-unit MLPs): gradient variance of every
ELBO estimator over training and against L, and the 10-epoch test ELBO of training with each.

    python experiments/estimator_variance.py              # the variance study (~2 min + training)
    python experiments/estimator_variance.py --training   # train with every estimator (~20 min)

Both write into experiments/results/estimator_variance/ (tables, figures, the command and the
machine). Runs go to runs/estimator_variance/ and are reused when they are finished; the
variance study uses the trace_elbo training run (the defaults: 10 epochs, Adam 1e-3, batch
100, seed 0) and its snapshots at epochs 0, 1, 2, 4, 8 and 10. On a shared machine run it as
``flock /work/heavy.lock python experiments/estimator_variance.py``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from pyro_vae import (
    ESTIMATORS,
    Minibatches,
    RunDir,
    importance_log_likelihood,
    load_run,
    variance_lab,
    write_report,
)
from pyro_vae.atomic import atomic_write
from pyro_vae.cli import configure_logging
from pyro_vae.config import compose_config, run_training
from pyro_vae.variance import markdown_table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "estimator_variance"
# Every registered estimator, and the score function without a baseline beside its default.
STUDY = ",".join([*ESTIMATORS, "score_function:baseline=none"])
# Extra runs: the K-sample bounds (with K=1 they are estimator A and STL), and REINFORCE with
# the per-datapoint leave-one-out baseline, which needs several particles.
EXTRA_RUNS = {
    "iwae_k5": ["estimator=iwae", "num_particles=5"],
    "dreg_k5": ["estimator=dreg", "num_particles=5"],
    "score_function_l4": [
        "estimator=score_function",
        "estimator.baseline=particles",
        "num_particles=4",
    ],
}


def train(name: str, overrides: list[str], args: argparse.Namespace) -> Path:
    run_dir = Path(args.runs_dir) / f"train_{name}"
    cfg = compose_config(
        [
            *([f"data_dir={args.data_dir}"] if args.data_dir else []),
            f"run_dir={run_dir}",
            "progress=false",
            *overrides,
            *args.set,
        ]
    )
    run_training(cfg, run_dir)
    return run_dir


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def repeat_strategies(run_dir: Path, repeats: int) -> dict[str, float]:
    """Milliseconds per gradient estimate of estimator A at L=1 without Pyro, on the lab's
    minibatch: a loop of single estimates (what the lab does, minus Pyro's tracing) against
    all repeats in one pass with per-repeat gradients from one batched backward
    (``is_grads_batched``, i.e. vmap over the backward graph)."""
    loaded = load_run(run_dir)
    data, vae = loaded.data(), loaded.vae
    _, x = next(Minibatches(data.train, 100, seed=0, binarize=data.train_binarize).epoch(0))
    params = list(vae.parameters())
    start = time.perf_counter()
    for _ in range(repeats):
        torch.autograd.grad(-vae.log_weights(x, 1).sum(), params)
    loop = (time.perf_counter() - start) / repeats
    for r in (2, repeats):  # the first call, untimed, warms up vmap
        start = time.perf_counter()
        per_repeat = -vae.log_weights(x, r).sum(1)
        torch.autograd.grad(per_repeat, params, grad_outputs=torch.eye(r), is_grads_batched=True)
        batched = (time.perf_counter() - start) / r
    return {"torch_loop_ms": 1000 * loop, "torch_batched_ms": 1000 * batched}


def variance_study(args: argparse.Namespace) -> None:
    run_dir = train("trace_elbo", [], args)
    last = RunDir(run_dir).snapshots()[-1][1].name
    start = time.perf_counter()
    common = {"estimators": STUDY, "repeats": args.repeats, "seed": 0}
    rows = variance_lab(run_dir, checkpoints="all", num_particles=[1], **common)
    seconds_over_training = time.perf_counter() - start
    common["estimators"] += ",score_function:baseline=particles"
    rows += variance_lab(run_dir, checkpoints=last, num_particles=[3, 10], **common)
    seconds = time.perf_counter() - start
    speed = repeat_strategies(run_dir, args.repeats)
    lab_ms = next(
        1000 * r["seconds_per_estimate"]
        for r in rows
        if r["estimator"] == "sgvb_a" and r["num_particles"] == 1 and r["checkpoint"] == last
    )
    header = (
        "# Gradient variance of the ELBO estimators, MNIST, Nz=20, 784-500-20 MLPs\n\n"
        f"Command: `python experiments/estimator_variance.py --repeats {args.repeats}` "
        f"(run `{os.path.relpath(run_dir, ROOT)}`). "
        f"One minibatch of 100 training images (seed 0), {args.repeats} independent gradient "
        "estimates per estimator; gradients of the per-datapoint bound; phi = encoder, "
        "theta = decoder. Lab time: "
        f"{seconds_over_training:.0f} s for the checkpoints at L=1, {seconds:.0f} s in all. "
        f"Repeats in a loop, as here: sgvb_a {lab_ms:.1f} ms per estimate (L=1); the same "
        f"arithmetic without Pyro {speed['torch_loop_ms']:.1f} ms in a loop, "
        f"{speed['torch_batched_ms']:.1f} ms with all repeats in one batched backward pass."
    )
    print(markdown_table(rows))
    paths = write_report(rows, args.out, header)
    atomic_write(
        Path(args.out) / "machine.json",
        json.dumps({**machine(), "lab_seconds": round(seconds, 1), **speed}, indent=2) + "\n",
    )
    print("\n".join(map(str, paths)))


def training_study(args: argparse.Namespace) -> None:
    rows = []
    runs = {name: [f"estimator={name}"] for name in ESTIMATORS} | EXTRA_RUNS
    for name, overrides in runs.items():
        run_dir = train(name, overrides, args)
        summary = RunDir(run_dir).summary()
        loaded = load_run(run_dir)
        torch.manual_seed(0)
        start = time.perf_counter()
        ll = importance_log_likelihood(loaded.vae, loaded.data().test, args.k)
        rows.append(
            {
                "run": name,
                "overrides": " ".join(overrides),
                "test_elbo": round(summary["test_elbo"], 2),
                f"test_log_px_k{args.k}": round(ll.mean().item(), 2),
                "train_seconds": summary["train_seconds"],
                "eval_seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    out = Path(args.out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "training.csv", buf.getvalue())
    head = f"| overrides | test ELBO | test log p(x), K={args.k} | training time (s) |"
    lines = [head, "|---|---|---|---|"] + [
        f"| `{r['overrides']}` | {r['test_elbo']:.2f} | {r[f'test_log_px_k{args.k}']:.2f} "
        f"| {r['train_seconds']:.0f} |"
        for r in rows
    ]
    text = (
        "# 10-epoch MNIST training with each estimator\n\n"
        "Command: `python experiments/estimator_variance.py --training`; each row is "
        "`pyro-vae train <overrides>` (defaults otherwise: Nz=20, "
        "500 hidden units, Adam 1e-3, batch 100, 10 epochs, seed 0). Test ELBO: one "
        "reparameterised sample per test image (estimator A's bound, whatever the training "
        f"estimator); log p(x): importance sampling with K={args.k} encoder samples.\n\n"
    )
    atomic_write(out / "training.md", text + "\n".join(lines) + "\n")
    atomic_write(out / "training_machine.json", json.dumps(machine(), indent=2) + "\n")
    print(text + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # default: pyro-vae's own lookup (./data, then MNIST from experiments/data)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "estimator_variance"))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--training", action="store_true", help="train with every estimator")
    parser.add_argument("--k", type=int, default=100, help="importance samples for log p(x)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra train override"
    )
    args = parser.parse_args(argv)
    configure_logging()  # the package's messages on stderr, as pyro-vae train shows them
    (training_study if args.training else variance_study)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
