"""What the figure scripts share: their ``key=value`` arguments, sweeps through
``pyro-vae train -m`` (Hydra multirun), finding runs again, and writing results.

Every script trains through the same command a user types, so a figure's runs are
ordinary run directories (``pyro-vae compare``, ``evaluate`` and ``plot`` work on them)
and a run that already finished is not trained again: rerunning a script after an
interruption continues where it stopped.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pyro_vae.compare import RunRecord, find_runs, load_runs, write_csv
from pyro_vae.plots import image_grid

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = ("smoke", "cpu", "full")

USAGE = """keys (all optional):
  budget=cpu|full|smoke  cpu: the budget measured here (2 CPU cores); full: the paper's
                      (a GPU); smoke: a few minibatches per run, to check the pipeline
  data_dir=PATH       datasets (default: pyro-vae's lookup, ./data, then the repository's
                      copy of MNIST in experiments/data; Frey Face is downloaded)
  device=cpu|cuda|auto
  jobs=N              train N runs at once in local processes (Hydra's joblib launcher,
                      pip install -e ".[sweep]"); 1 runs them one after the other
  runs=PATH           where run directories go (default experiments/runs)
  out=PATH            where figures and CSVs go (default experiments/results/<figure>,
                      <figure>-full or <figure>-smoke)
"""


class Options:
    """Parsed ``key=value`` arguments of a figure script."""

    def __init__(self, argv: Sequence[str], figure: str):
        values = {
            "budget": "cpu",
            "data_dir": None,
            "device": "cpu",
            "jobs": "1",
            "runs": str(ROOT / "experiments" / "runs"),
            "out": None,
        }
        for arg in argv:
            key, sep, value = arg.partition("=")
            if arg in ("-h", "--help") or not sep or key not in values:
                sys.exit(f"usage: python {sys.argv[0]} [key=value ...]\n{USAGE}")
            values[key] = value
        if values["budget"] not in BUDGETS:
            sys.exit(f"budget={values['budget']!r} is not one of {list(BUDGETS)}")
        self.budget = values["budget"]
        given = values["data_dir"]
        self.data_dir = str(Path(given).expanduser().resolve()) if given else None
        self.device = values["device"]
        self.jobs = int(values["jobs"])
        self.runs = Path(values["runs"]).resolve()
        # Results of other budgets never overwrite the committed CPU-budget ones.
        name = figure if self.budget == "cpu" else f"{figure}-{self.budget}"
        self.out = Path(values["out"] or ROOT / "experiments" / "results" / name).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.figure = figure
        self.started = time.perf_counter()


def sweep(opts: Options, name: str, overrides: Sequence[str]) -> list[RunRecord]:
    """Train the grid ``overrides`` describes (comma-separated values sweep) under
    ``<runs>/<name>`` with ``pyro-vae train -m``; returns every run found there."""
    cmd = [
        sys.executable,
        "-m",
        "pyro_vae",
        "train",
        "-m",
        f"run_dir={opts.runs / name}",
        *data_dir_overrides(opts.data_dir),
        f"device={opts.device}",
        "progress=false",
        *overrides,
    ]
    if opts.jobs > 1:
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={opts.jobs}"]
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return load_runs(find_runs([str(opts.runs / name)]))


def data_dir_overrides(data_dir: str | None) -> list[str]:
    """``data_dir=...`` for ``pyro-vae train``, or nothing: its own lookup (``./data``, then
    the repository's copy of MNIST in experiments/data)."""
    return [f"data_dir={data_dir}"] if data_dir else []


def select(records: Sequence[RunRecord], config: dict[str, Any]) -> list[RunRecord]:
    """The runs whose flattened configuration ("dataset.name", ...) has these values."""
    return [r for r in records if all(r.config.get(k) == v for k, v in config.items())]


def one(records: Sequence[RunRecord], config: dict[str, Any]) -> RunRecord:
    found = select(records, config)
    if len(found) != 1:
        raise RuntimeError(f"expected one run with {config}, found {len(found)}")
    return found[0]


def run_row(r: RunRecord) -> dict[str, Any]:
    """One CSV line for a finished run: what it was and where it ended."""
    s = r.summary
    return {
        "dataset": r.config["dataset.name"],
        "latent_dim": r.config["latent_dim"],
        "method": r.config["method"],
        "lr": r.config["lr"],
        "lr_search": json.dumps(s.get("lr_search")),
        "samples": s["samples"],
        "train_elbo": s["train_elbo"],
        "test_elbo": s["test_elbo"],
        "best_test_elbo": s["best_test_elbo"],
        "train_seconds": s["train_seconds"],
        "run": str(r.path.relative_to(ROOT)) if r.path.is_relative_to(ROOT) else str(r.path),
    }


def show_images(
    ax: Axes, images: torch.Tensor, shape: Sequence[int], ncol: int, title: str
) -> None:
    """Grey-level images [N, H*W] in [0, 1], tiled ``ncol`` per row, on ``ax``."""
    grid = image_grid(images.detach(), shape, ncol)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def save_figure(opts: Options, fig: Figure, name: str, dpi: int = 100) -> Path:
    path = opts.out / name
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    print(f"wrote {path}")
    return path


def save_csv(opts: Options, name: str, rows: Sequence[dict[str, Any]]) -> Path:
    path = write_csv(rows, opts.out / name)
    print(f"wrote {path}")
    return path


def finish(opts: Options, **facts: Any) -> None:
    """Record the command, the budget and the wall time next to the figure."""
    seconds = round(time.perf_counter() - opts.started, 1)
    record = {
        "command": shlex.join(["python", f"experiments/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "budget": opts.budget,
        "wall_seconds": seconds,
        **facts,
    }
    path = opts.out / "run_info.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}; {seconds:.0f} s in all")


# Figures 2, 4 and 5 share their runs: the same overrides give the same run directory
# (Hydra names it after them), so a run another figure already trained is not redone.
PAPER_SAMPLES = {
    "smoke": {"mnist": 20_000, "frey_face": 20_000},
    "cpu": {"mnist": 1_000_000, "frey_face": 1_000_000},
    "full": {"mnist": 100_000_000, "frey_face": 100_000_000},  # Figure 2's axis ends at 10^8
}


def paper_runs(
    opts: Options, dataset: str, latent_dims: Sequence[int], methods: Sequence[str]
) -> list[RunRecord]:
    """Runs with the paper's settings (``+experiment=paper``) at this budget."""
    samples = PAPER_SAMPLES[opts.budget][dataset]
    records = sweep(
        opts,
        "paper",
        [
            "+experiment=paper",
            f"dataset={dataset}",
            f"latent_dim={','.join(map(str, latent_dims))}",
            f"method={','.join(methods)}",
            f"num_samples={samples}",
        ],
    )
    base = {"dataset.name": dataset, "num_samples": samples}
    return [
        one(records, {**base, "latent_dim": nz, "method": m}) for nz in latent_dims for m in methods
    ]
