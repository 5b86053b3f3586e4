"""Does ``fast=true`` train the same model as the traced path? The ELBO curves of both on MNIST.

For estimator A (``trace_elbo``) and estimator B (``sgvb_b``), trains the paper's MNIST
model (784-500-20, Adam 1e-3, batch 100) for a few epochs with the default, traced step
(``AEVB.step``: the estimator's ``loss_and_grads`` on Pyro's traces of the model and guide;
labelled "svi" as in earlier results, when the step was ``pyro.infer.SVI.step``) and with
``fast=true`` from the same seed, which gives both paths the same initialisation,
minibatches and noise; and, as the yardstick of "within noise", the traced path again with
another seed. Writes per-epoch train and test ELBOs, and the largest |difference| of each
pair, to ``experiments/results/benchmark/fast_path_curves.{json,md}``.

    python experiments/fast_path_curves.py [epochs=3] [data_dir=DIR]
        [runs=experiments/runs/fast_path_curves] [out=experiments/results/benchmark]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pyro_vae import RunDir
from pyro_vae.cli import configure_logging
from pyro_vae.config import compose_config, run_training

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "benchmark"
RUNS = ROOT / "experiments" / "runs" / "fast_path_curves"

# label -> overrides; pairs compared below
RUNS_OF = {
    "A svi": ["estimator=trace_elbo"],
    "A fast": ["estimator=trace_elbo", "fast=true"],
    "A svi seed 1": ["estimator=trace_elbo", "seed=1"],
    "B svi": ["estimator=sgvb_b"],
    "B fast": ["estimator=sgvb_b", "fast=true"],
    "B svi seed 1": ["estimator=sgvb_b", "seed=1"],
}
PAIRS = [
    ("A fast", "A svi"),
    ("A svi seed 1", "A svi"),
    ("B fast", "B svi"),
    ("B svi seed 1", "B svi"),
]


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    unknown = sorted(set(args) - {"epochs", "data_dir", "runs", "out"})
    if unknown:
        sys.exit(f"unknown keys {unknown}; the keys are epochs, data_dir, runs and out")
    epochs = int(args.get("epochs", 3))
    data_dir = args.get("data_dir")  # None: pyro-vae's lookup (MNIST from experiments/data)
    runs, out = Path(args.get("runs", RUNS)), Path(args.get("out", OUT))
    configure_logging()  # the package's messages on stderr, as pyro-vae train shows them
    curves, seconds = {}, {}
    for label, overrides in RUNS_OF.items():
        run_dir = runs / label.replace(" ", "_")
        cfg = compose_config(
            [
                *overrides,
                f"epochs={epochs}",
                *([f"data_dir={data_dir}"] if data_dir else []),
                f"run_dir={run_dir}",
                "progress=false",
                "plots=false",
                "snapshots=none",
                "overwrite=true",
            ]
        )
        start = time.perf_counter()
        run_training(cfg, run_dir)
        seconds[label] = round(time.perf_counter() - start, 1)
        rows = RunDir(run_dir).metrics()
        curves[label] = {k: [r[k] for r in rows] for k in ("train_elbo", "test_elbo", "seconds")}
        print(label, "test ELBO by epoch:", [round(v, 3) for v in curves[label]["test_elbo"]])
    diffs = {
        f"{a} - {b}": {
            k: max(abs(x - y) for x, y in zip(curves[a][k], curves[b][k], strict=True))
            for k in ("train_elbo", "test_elbo")
        }
        for a, b in PAIRS
    }
    result = {
        "command": "python experiments/fast_path_curves.py" + (f" epochs={epochs}" * (epochs != 3)),
        "epochs": epochs,
        "curves": curves,
        "max_abs_difference": diffs,
        "wall_seconds": seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "fast_path_curves.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# fast=true against SVI: ELBO curves on MNIST",
        "",
        f"Command: `{result['command']}`. Per-datapoint ELBO (nats) after each epoch.",
        "",
        "| run | " + " | ".join(f"test ELBO epoch {e + 1}" for e in range(epochs)) + " | seconds |",
        "|---|" + "---|" * (epochs + 1),
    ]
    for label, c in curves.items():
        cells = " | ".join(f"{v:.3f}" for v in c["test_elbo"])
        lines.append(f"| {label} | {cells} | {c['seconds'][-1]:.1f} |")
    lines += ["", "| pair | max abs diff, train ELBO | max abs diff, test ELBO |", "|---|---|---|"]
    for pair, d in diffs.items():
        lines.append(f"| {pair} | {d['train_elbo']:.3f} | {d['test_elbo']:.3f} |")
    (out / "fast_path_curves.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
