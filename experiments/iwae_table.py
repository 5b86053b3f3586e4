"""Burda et al. (2015), Table 1, one and two stochastic layers, on dynamically binarised
MNIST: the VAE (estimator A with k samples) and the IWAE at k in {1, 5, 50}, with DReG
(Tucker et al. 2019) and STL (Roeder et al. 2017) beside them at the same k.

    python experiments/iwae_table.py                                         # budget=cpu
    python experiments/iwae_table.py budget=paper device=cuda                # a GPU

Every run is ``pyro-vae train +experiment=iwae`` (784-200-200-50 tanh, Adam beta 0.9/0.999
eps 1e-4, lr 1e-3, Burda et al.'s schedule, all 60000 training images binarised afresh
every minibatch), or for the two-layer rows (``layers=2``; names ``<estimator>_2l_...``)
``+experiment=iwae_2layer`` (784-200-200-100-100-100-50), with ``estimator`` and
``num_particles=k``:

- ``vae``: ``estimator=sgvb_a`` (the ELBO, k samples averaged);
- ``iwae``: ``estimator=iwae`` (the k-sample bound); at k = 1 it is the VAE (not run again);
- ``dreg``: ``estimator=dreg`` (the IWAE bound, doubly reparameterised gradients); at k = 1
  it is STL (not run again);
- ``stl``: ``estimator=iwae_stl`` (the IWAE bound, the encoder's score term dropped: biased
  for k > 1; Tucker et al. 2018's STL beside DReG); at k = 1 ``estimator=stl``, the same.

Budgets:

- ``paper``: batch 20 and the full 3280-epoch schedule for every row (run name
  ``<estimator>_k<k>``); K = 5000 on all 10000 test images. For a GPU.
- ``cpu``: ``+experiment=iwae_cpu`` (batch 100; ``fast=true`` for the VAE rows), every row
  with the schedule squeezed into ``epochs`` epochs (``lr_iwae_epochs=epochs``, default 10;
  run name ``<estimator>_k<k>_e<epochs>``), evaluated on the first ``test_points`` (1000)
  test images; and for each architecture one long VAE k = 1 run: the schedule in
  ``long_epochs`` (3280, the
  paper's, unsqueezed: about 5 h of these 2 cores; fewer squeeze it) and trained for
  ``long_stop`` of them (default all; the last stage, lr * 10^-1,
  starts at a third of the run, so a stop after it is the same schedule with a shorter
  last stage), named ``vae_k1_e<long_stop>`` (``...of<long_epochs>`` when stopped),
  evaluated with K = 5000 on all 10000 test images: the target row.
- ``smoke``: a few minibatches per row, K = 50 on 100 points: checks the script.

Each row reports the test NLL (-log p(x), importance sampling with K = ``importance_samples``,
5000) with its standard error over images, the test ELBO, the active units (Burda et al.'s
Cov_x(E_q[z_u|x]) > 10^-2, over all 10000 test images), the epochs and the training time,
beside the paper's NLL. A finished run is reused, and its evaluation is cached in its
summary.json: rerunning continues where an interrupted run of the script stopped. A run
that is not on this machine but is kept, evaluated, under ``out``/runs (the committed
results) is taken from there instead of being trained again.

Writes into ``out`` (experiments/results/iwae_table[-<budget>] for budgets other than cpu):
``results.csv``, ``results.md`` (the table beside the paper's), ``nll_vs_k.png``, and
``runs/<name>/`` for every row: its config.yaml, metrics.jsonl, summary.json and final model
snapshot (``checkpoints/epoch_NNNN.pt``, about 1.7 MB), so that anyone can re-evaluate it:
``pyro-vae evaluate experiments/results/iwae_table/runs/<name> num_samples=5000``.

Keys (``key=value``): data_dir, budget (cpu), ks (``1,5,50``; cpu: ``1,5``), estimators
(``vae,iwae,dreg,stl``), layers (``1,2``: stochastic layers), epochs, long_epochs,
long_stop, test_points, importance_samples, device (cpu), runs (runs/iwae_table), out,
seed (0).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pyro_vae import RunDir, evaluate, load_run
from pyro_vae.cli import configure_logging, parse_key_values
from pyro_vae.config import compose_config, run_training
from pyro_vae.evaluate import active_units_per_layer
from pyro_vae.training import snapshot_name

#: Burda et al. (2015), Table 1, MNIST, one stochastic layer: test NLL and active units
#: for k = 1, 5, 50.
PAPER = {
    "vae": {1: (86.76, 19), 5: (86.47, 20), 50: (86.35, 20)},
    "iwae": {1: (86.76, 19), 5: (85.54, 22), 50: (84.78, 25)},
}
#: The same table, two stochastic layers (100 and 50 units): test NLL (active units not
#: copied here).
PAPER_2LAYER = {
    "vae": {1: (85.33, math.nan), 5: (85.01, math.nan), 50: (84.78, math.nan)},
    "iwae": {1: (85.33, math.nan), 5: (83.89, math.nan), 50: (82.90, math.nan)},
}
#: The presets of each architecture (stochastic layers -> paper budget, CPU budget) and
#: the infix of its run names.
PRESETS = {1: ("iwae", "iwae_cpu", ""), 2: ("iwae_2layer", "iwae_2layer_cpu", "_2l")}
ESTIMATORS = {"vae": "sgvb_a", "iwae": "iwae", "dreg": "dreg", "stl": "iwae_stl"}
#: Rows that are another row at k = 1: the IWAE bound with one sample is the ELBO, and
#: DReG's gradient with one sample is STL's.
SAME_AT_K1 = {"iwae": "vae", "dreg": "stl"}
BUDGETS = {
    "paper": {"ks": "1,5,50", "epochs": 3280, "test_points": 10000, "importance_samples": 5000},
    "cpu": {"ks": "1,5", "epochs": 10, "test_points": 1000, "importance_samples": 5000},
    "smoke": {"ks": "1,5", "epochs": 1, "test_points": 100, "importance_samples": 50},
}
TEST_IMAGES = 10000


def rows_of(opts: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs the options ask for: name, estimator, k, overrides, test points."""
    budget, epochs = opts["budget"], opts["epochs"]
    rows = []

    def add(name: str, estimator: str, k: int, extra: list[str], points: int, layers: int) -> None:
        paper_preset, cpu_preset, _ = PRESETS[layers]
        preset = f"+experiment={paper_preset if budget == 'paper' else cpu_preset}"
        fast = "true" if estimator == "vae" and budget != "paper" else "false"
        # STL at k = 1 is the ELBO's (estimator=stl); for k > 1 the IWAE bound's (iwae_stl)
        name_of = "stl" if (estimator, k) == ("stl", 1) else ESTIMATORS[estimator]
        overrides = [
            preset,
            f"estimator={name_of}",
            f"num_particles={k}",
            f"fast={fast}",
            f"seed={opts['seed']}",
            f"device={opts['device']}",
            *([f"data_dir={opts['data_dir']}"] if opts["data_dir"] else []),
            f"run_dir={Path(opts['runs']) / name}",
            "progress=false",
            "snapshots=none",
            *extra,
        ]
        rows.append(
            {
                "name": name,
                "estimator": estimator,
                "k": k,
                "layers": layers,
                "overrides": overrides,
                "points": points,
            }
        )

    layer_counts = [int(n) for n in str(opts["layers"]).split(",")]
    for n in layer_counts:
        if n not in PRESETS:
            sys.exit(f"layers: {n!r} is not allowed: expected among {list(PRESETS)}")
    for layers in layer_counts:
        infix = PRESETS[layers][2]
        for k in (int(k) for k in str(opts["ks"]).split(",")):
            for est in opts["estimators"].split(","):
                if est not in ESTIMATORS:
                    sys.exit(
                        f"estimators: {est!r} is not allowed: expected among {list(ESTIMATORS)}"
                    )
                if k == 1 and est in SAME_AT_K1:
                    continue
                if budget == "paper":
                    add(f"{est}{infix}_k{k}", est, k, [], opts["test_points"], layers)
                else:
                    extra = [f"epochs={epochs}", f"lr_iwae_epochs={epochs}"]
                    if budget == "smoke":
                        extra = ["num_samples=300", "lr_iwae_epochs=1", "dataset.train_size=1000"]
                    add(f"{est}{infix}_k{k}_e{epochs}", est, k, extra, opts["test_points"], layers)
        if budget == "cpu" and opts["long_epochs"] > 0:
            long, stop = opts["long_epochs"], opts["long_stop"] or opts["long_epochs"]
            name = f"vae{infix}_k1_e{stop}" + (f"of{long}" if stop != long else "")
            extra = [f"epochs={stop}", f"lr_iwae_epochs={long}"]
            add(name, "vae", 1, extra, TEST_IMAGES, layers)
    return rows


def run_row(row: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) ``row``'s run and evaluate it; the evaluation is cached in its
    summary.json."""
    run_dir = Path(opts["runs"]) / row["name"]
    run = RunDir(run_dir)
    k_eval, points = opts["importance_samples"], row["points"]
    key = f"iwae_table_K{k_eval}_N{points}"
    kept = kept_evaluation(Path(opts["out"]) / "runs" / row["name"], key)
    if kept is not None and not run.has_checkpoint():
        return table_row(row, kept, key)
    unfinished = run.has_checkpoint() and not run.is_finished()
    summary = run_training(compose_config([*row["overrides"], f"resume={str(unfinished).lower()}"]))
    final = summary["epochs"]
    if not (run.checkpoint_dir / snapshot_name(final)).exists():
        state = run.load_checkpoint()  # the model alone: what evaluating needs
        run.save_checkpoint(
            {"model": state["model"], "meta": state["meta"], "epoch": final},
            snapshot_name(final),
        )
    if key not in summary:
        loaded = load_run(run_dir, snapshot_name(final), device=opts["device"])
        test = loaded.data().test
        start = time.perf_counter()
        result = evaluate(loaded.vae, test[:points], k_eval, seed=opts["seed"])
        summary[key] = {
            "nll": -result["test_log_likelihood"],
            "nll_se": result["test_log_likelihood_se"],
            "test_elbo": result["test_elbo"],
            "active_units_per_layer": active_units_per_layer(loaded.vae, test),
            "latent_dim": loaded.vae.latent_dim,
            "eval_seconds": round(time.perf_counter() - start, 1),
        }
        summary[key]["active_units"] = sum(summary[key]["active_units_per_layer"])
        run.update_summary(**{key: summary[key]})
    keep_run(run_dir, Path(opts["out"]) / "runs" / row["name"], final)
    return table_row(row, summary, key)


def kept_evaluation(kept: Path, key: str) -> dict[str, Any] | None:
    """The summary of a run kept in the results (committed), if it holds the evaluation
    ``key``: a fresh checkout reuses it instead of training the run again (hours)."""
    path = kept / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if key in summary and summary.get("status") == "finished" else None


def table_row(row: dict[str, Any], summary: dict[str, Any], key: str) -> dict[str, Any]:
    """One row of the table from a run's summary and its cached evaluation ``key``."""
    evaluation = dict(summary[key])
    per_layer = evaluation.pop("active_units_per_layer", [evaluation["active_units"]])
    out = {
        "name": row["name"],
        "layers": row["layers"],
        "estimator": row["estimator"],
        "k": row["k"],
        "epochs": summary["epochs"],
        "batch_size": compose_config(row["overrides"]).batch_size,
        "test_points": row["points"],
        "importance_samples": int(key.split("_K")[1].split("_")[0]),
        **evaluation,
        "active_units": "+".join(str(n) for n in per_layer),
        "train_hours": round(summary["train_seconds"] / 3600, 2),
    }
    paper = (PAPER if row["layers"] == 1 else PAPER_2LAYER).get(row["estimator"], {})
    out["paper_nll"], out["paper_active_units"] = paper.get(row["k"], (math.nan, math.nan))
    return out


def keep_run(run_dir: Path, dest: Path, final: int) -> None:
    """Copy what re-evaluating a run needs (not the optimiser's state) into ``dest``."""
    (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        shutil.copy2(run_dir / name, dest / name)
    snapshot = snapshot_name(final)
    shutil.copy2(run_dir / "checkpoints" / snapshot, dest / "checkpoints" / snapshot)


COLUMNS = (
    ("name", "run", "{}"),
    ("layers", "layers", "{}"),
    ("k", "k", "{}"),
    ("epochs", "epochs", "{}"),
    ("batch_size", "batch", "{}"),
    ("nll", "test NLL", "{:.2f}"),
    ("paper_nll", "paper's NLL", "{:.2f}"),
    ("test_elbo", "test ELBO", "{:.2f}"),
    ("active_units", "active units", "{}"),
    ("paper_active_units", "paper's", "{}"),
    ("test_points", "test images", "{}"),
    ("train_hours", "training h", "{:.2f}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row[key]
    if isinstance(value, float) and math.isnan(value):
        return "—"
    cell = fmt.format(value)
    if key == "nll":
        cell += f" ± {row['nll_se']:.2f}"
    return cell


def write_results(rows: list[dict[str, Any]], opts: dict[str, Any], command: str) -> None:
    out = Path(opts["out"])
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(t for _, t, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in sorted(rows, key=lambda r: (r["layers"], r["epochs"], r["k"], r["estimator"])):
        lines.append("| " + " | ".join(_cell(row, k, f) for k, _, f in COLUMNS) + " |")
    table = "\n".join(lines)
    text = f"""# Burda et al. (2015) Table 1, one and two stochastic layers, dynamic MNIST

Produced by

    {command}

Budget `{opts["budget"]}`. Test NLL = -log p(x) in nats, importance sampling with
K={opts["importance_samples"]} over the first `test images` of the 10000 (binarised once,
seed 0), ± its standard error over images; test ELBO over the same images; active units
Cov_x(E_q[z_u|x]) > 10^-2 over all 10000 (two layers: first + second, the second's
E_q[z2|x] as the mean of q(z2|z1)'s mean over 200 draws of z1). The paper's numbers:
Burda et al. (2015), Table 1 (k = 1, 5, 50; the IWAE at k = 1 is the VAE). Training time
on this machine.

{table}

`runs/<run>/` holds each run's config.yaml, metrics.jsonl, summary.json and final model:
`pyro-vae evaluate {out}/runs/<run> num_samples=5000` re-evaluates it.
"""
    (out / "results.md").write_text(text)
    plot(rows, out / "nll_vs_k.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for layers in sorted({r["layers"] for r in rows}):
        for est in ESTIMATORS:
            for epochs in sorted({r["epochs"] for r in rows}):
                pts = sorted(
                    (r["k"], r["nll"])
                    for r in rows
                    if (r["layers"], r["estimator"], r["epochs"]) == (layers, est, epochs)
                )
                if pts:
                    label = f"{est}, {layers} layer(s), {epochs} epochs"
                    ax.plot(*zip(*pts, strict=True), "o-", label=label)
    for table, layers in ((PAPER, 1), (PAPER_2LAYER, 2)):
        if not any(r["layers"] == layers for r in rows):
            continue
        for est, marker in (("vae", "s"), ("iwae", "^")):
            ks = sorted(table[est])
            ax.plot(
                ks,
                [table[est][k][0] for k in ks],
                marker + "--",
                color="grey" if layers == 1 else "black",
                label=f"{est}, {layers} layer(s), paper",
            )
    ax.set_xscale("log")
    ax.set_xlabel("k (samples in the bound)")
    ax.set_ylabel("test NLL (nats, lower is better)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main(argv: list[str]) -> int:
    opts: dict[str, Any] = {
        "data_dir": None,
        "budget": "cpu",
        "ks": None,
        "estimators": ",".join(ESTIMATORS),
        "layers": "1,2",
        "epochs": None,
        "long_epochs": 3280,
        "long_stop": 0,
        "test_points": None,
        "importance_samples": None,
        "device": "cpu",
        "runs": "runs/iwae_table",
        "out": None,
        "seed": 0,
    }
    types = {k: type(v) if v is not None else str for k, v in opts.items()}
    types.update(epochs=int, test_points=int, importance_samples=int)
    opts.update(parse_key_values(argv, types, "iwae_table"))
    if opts["budget"] not in BUDGETS:
        sys.exit(f"budget={opts['budget']!r} is not allowed: expected one of {list(BUDGETS)}")
    for key, value in BUDGETS[opts["budget"]].items():
        if opts[key] is None:
            opts[key] = value
    if opts["budget"] != "cpu":
        opts["long_epochs"] = 0
    suffix = "" if opts["budget"] == "cpu" else f"-{opts['budget']}"
    opts["out"] = opts["out"] or f"experiments/results/iwae_table{suffix}"
    configure_logging()
    Path(opts["out"]).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    for row in rows_of(opts):
        results.append(run_row(row, opts))
        print(
            f"{row['name']}: " + ", ".join(f"{k}={v}" for k, v in results[-1].items()), flush=True
        )
    command = " ".join(["python experiments/iwae_table.py", *argv])
    write_results(results, opts, command)
    print(f"wrote {opts['out']}/results.md, results.csv, nll_vs_k.png, runs/")
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
