"""Compare any set of runs: a table of their figures and their ELBO curves overlaid.

``pyro-vae compare RUN_DIR... [out=compare.png]`` takes run directories, globs, or a
directory holding runs (a sweep: every run directory below it). Only the configuration
keys whose values differ between the runs are shown, and they label the curves.
"""

from __future__ import annotations

import csv
import glob
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .atomic import atomic_write
from .errors import RunDirError
from .plots import save_figure
from .training.rundir import CONFIG_FILE, RunDir

# Keys that say where or how a run was executed, not what was trained.
_NOT_EXPERIMENT = frozenset(
    {"run_dir", "data_dir", "device", "progress", "plots", "resume", "overwrite", "download"}
)
COLUMNS = (
    "samples",
    "train_elbo",
    "test_elbo",
    "best_test_elbo",
    "test_log_likelihood",
    "train_seconds",
)


@dataclass
class RunRecord:
    """What ``compare`` reads from one run directory."""

    path: Path
    config: dict[str, Any]  # flattened: "dataset.name", "latent_dim", ...
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]


def find_runs(patterns: Sequence[str]) -> list[Path]:
    """Run directories named by ``patterns`` (paths, globs or sweep directories), in order."""
    found: list[Path] = []
    for pattern in patterns:
        # An existing path is taken as is: sweep directories have names like hidden_dims=[100].
        if Path(pattern).exists() or not glob.has_magic(pattern):
            matches = [pattern]
        else:
            matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise RunDirError(f"no run directory matches {pattern!r}")
        for match in map(Path, matches):
            if (match / CONFIG_FILE).is_file():
                found.append(match)
            elif match.is_dir() and (runs := sorted(p.parent for p in match.rglob(CONFIG_FILE))):
                found.extend(runs)
            else:
                raise RunDirError(
                    f"{match} is not a run directory ({CONFIG_FILE} missing) and holds none"
                )
    return list(dict.fromkeys(found))


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def load_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    records = []
    for path in paths:
        run = RunDir(path)
        config = _flatten(run.config())
        records.append(RunRecord(run.path, config, run.summary(), run.metrics()))
    return records


def differing_keys(records: Sequence[RunRecord]) -> list[str]:
    """Configuration keys whose values are not the same in every run."""
    keys = sorted({k for r in records for k in r.config} - _NOT_EXPERIMENT)
    return [k for k in keys if len({repr(r.config.get(k)) for r in records}) > 1]


def run_label(record: RunRecord, keys: Sequence[str]) -> str:
    if not keys:
        return record.path.name
    return ", ".join(f"{k}={record.config.get(k)}" for k in keys)


def comparison_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per run: its path, the keys that differ, its status and :data:`COLUMNS`."""
    keys = differing_keys(records)
    rows = []
    for r in records:
        row: dict[str, Any] = {"run": str(r.path)}
        row.update({k: r.config.get(k) for k in keys})
        row["status"] = r.summary.get("status", "?")
        last = r.metrics[-1] if r.metrics else {}
        for col in COLUMNS:
            row[col] = r.summary.get(col, last.get(col))
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if math.isfinite(value) and abs(value) < 1e6 else f"{value:.3g}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as an aligned text table (columns from the first row)."""
    header = list(rows[0])
    cells = [header] + [[_cell(row.get(h)) for h in header] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells)
    return "\n".join(line.rstrip() for line in lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """``rows`` as a CSV file (columns: every key, in order of first appearance), atomically."""
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\r\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, out.getvalue())


def plot_curves(
    ax: Axes,
    records: Sequence[RunRecord],
    labels: Sequence[str],
    colors: Sequence[Any] | None = None,
) -> None:
    """Test (solid) and train (dashed) bound per datapoint against samples, log x-axis."""
    for i, (r, label) in enumerate(zip(records, labels, strict=True)):
        color = colors[i] if colors is not None else f"C{i % 10}"
        samples = [m["samples"] for m in r.metrics]
        ax.plot(samples, [m["test_elbo"] for m in r.metrics], "-", color=color, label=label)
        ax.plot(samples, [m["train_elbo"] for m in r.metrics], "--", color=color, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("training samples evaluated")
    ax.set_ylabel("lower bound per datapoint (nats)")
    ax.grid(True, which="both", alpha=0.3)


def compare_runs(patterns: Sequence[str], out: str | Path = "compare.png") -> tuple[str, Path]:
    """Print-ready table of the runs; writes the curves to ``out`` and the table beside it
    (same name, ``.csv``). Returns (table, figure path)."""
    records = load_runs(find_runs(patterns))
    rows = comparison_rows(records)
    out = Path(out)
    write_csv(rows, out.with_suffix(".csv"))
    keys = differing_keys(records)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    plot_curves(ax, records, [run_label(r, keys) for r in records])
    ax.set_title("test (solid) and train (dashed) lower bound", fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, out)
    return format_table(rows), out
