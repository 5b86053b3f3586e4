"""Gradient signal-to-noise ratio against the number of particles K (Rainforth et al. 2018,
"Tighter variational bounds are not necessarily better"), at initialisation and trained.

    python experiments/snr_vs_k.py                   # budget=cpu: M=10, R=100, K <= 300 (4 min)
    python experiments/snr_vs_k.py ks=1,3,10,30,100,300,1000    # the committed run (10 min)
    python experiments/snr_vs_k.py budget=smoke      # seconds: checks the pipeline
    python experiments/snr_vs_k.py budget=full device=cuda   # M=100, R=200, K up to 1000

(times on 2 busy CPU cores with ``OMP_NUM_THREADS=1``). For each K in ``ks`` (the budget's:
see :data:`BUDGETS`; the full list is 1, 3, 10, 30, 100, 300, 1000) and each estimator (``iwae``,
``dreg``, ``stl``, ``vimco`` and ``iwae_stl``, defined below), the variance lab
(:func:`pyro_vae.variance.estimator_variance`) draws R = ``repeats`` independent gradient
estimates of minus the per-datapoint bound on one fixed minibatch of ``batch_size``
training images (the first minibatch a run with ``seed`` would see, binarised once) and
reports, for the encoder (phi) and the decoder (theta) separately, the mean over
parameters of |E g| / sd g (its ``mean_snr``). It does this twice: for the run's model at
initialisation (its ``epoch_0000.pt`` snapshot, or the model rebuilt from the run's
configuration and seed, which is the same initialisation) and at its last checkpoint.

The trained model is ``run=RUN_DIR`` if given; otherwise ``runs/iwae_table/vae_k1_e3280``
(Burda et al.'s 784-200-200-50 tanh VAE, ``+experiment=iwae_cpu``, the k = 1 run of
``experiments/iwae_table.py``) if that run has finished; otherwise a short run of the same
architecture is trained (or reused, once finished) into ``fallback_run``: ``pyro-vae train
+experiment=iwae_cpu epochs=E lr_iwae_epochs=E`` with E = ``train_epochs``.

What to expect (Rainforth et al. 2018; Tucker et al. 2018): IWAE's encoder SNR falls like
1/sqrt(K) and its decoder SNR rises like sqrt(K); DReG's encoder SNR does not fall; VIMCO
(a score-function estimator) has a low encoder SNR. The project's ``stl`` is the L-sample
*ELBO* with the path-derivative encoder gradient (Roeder et al. 2017), so its L particles
are averaged independently and both its SNRs rise like sqrt(K); the STL of Tucker et al.,
the IWAE gradient without the score term (biased for the IWAE bound when K > 1), is
``iwae_stl`` (:class:`pyro_vae.estimators.stl.IWAE_STL_ELBO`). The lab's mean SNR cannot
fall below about sqrt(2 / (pi R)) (|mean| of R draws of pure noise), drawn as a floor in the
figure.

Writes into ``out`` (default experiments/results/snr_vs_k; the smoke and full budgets into
its subfolders smoke/ and full/): ``snr_vs_k.csv`` (one row per checkpoint, estimator, K
and group), ``snr_vs_k.md`` (the settings, the fitted log-log slopes and the SNR tables),
``snr_vs_k.png`` (encoder and decoder panels, log SNR against log K, solid trained, dashed
initialisation) and ``run_info.json`` (the command, the wall time, the checkpoints).

Keys (``key=value``): budget (smoke|cpu|full), run, fallback_run
(runs/snr_vs_k/trained), train_epochs (5), data_dir (pyro-vae's lookup), ks, repeats,
batch_size (the last three default to the budget's), estimators (comma-separated),
seed (0), device (cpu), out.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure

from pyro_vae import VAE, Minibatches, RunDir, load_run
from pyro_vae.atomic import atomic_write
from pyro_vae.cli import configure_logging, parse_key_values
from pyro_vae.config import compose_config, run_training
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.plots import save_figure
from pyro_vae.training import snapshot_name
from pyro_vae.variance import estimator_variance, int_list

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN = ROOT / "runs" / "iwae_table" / "vae_k1_e3280"
ESTIMATOR_NAMES = ("iwae", "dreg", "stl", "vimco", "iwae_stl")
GROUP_NAMES = {"phi": "encoder", "theta": "decoder"}
#: budget -> (ks, repeats R, minibatch size M)
BUDGETS: dict[str, tuple[list[int], int, int]] = {
    "smoke": ([1, 3, 10], 10, 10),
    # An estimate costs about M * K * 0.04 ms here (the 784-200-200-50 net, one busy core),
    # hence M=10: a gradient is a sum over the M points, so M scales every SNR by about
    # sqrt(M) and moves the curves rather than their slopes. K=1000 would nearly triple this
    # budget's 4 min (ks=...,1000 runs it: 10 min); the full budget has it.
    "cpu": ([1, 3, 10, 30, 100, 300], 100, 10),
    "full": ([1, 3, 10, 30, 100, 300, 1000], 200, 100),
}
TAIL = 3  # the "large-K" slope is fitted to the last TAIL values of K


def min_particles(name: str) -> int:
    """VIMCO's leave-one-out baseline needs K >= 2."""
    return 2 if name == "vimco" else 1


def snr_floor(repeats: int) -> float:
    """E |mean of R standard normals| / 1: the mean SNR of a gradient without signal."""
    return math.sqrt(2 / (math.pi * repeats))


def loglog_slope(ks: list[int], values: list[float]) -> float:
    """Least-squares slope of log value against log K (nan with fewer than 2 points)."""
    pts = [(k, v) for k, v in zip(ks, values, strict=True) if v > 0]
    if len(pts) < 2:
        return math.nan
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


@torch.no_grad()
def effective_sample_size(vae: VAE, x: torch.Tensor, k: int, seed: int) -> float:
    """Mean over the minibatch of 1 / sum_k w_k^2, the normalised importance weights of K
    draws z ~ q(z|x): how many of the K particles count. IWAE's asymptotic regime (encoder
    SNR ~ 1/sqrt(K)) needs it to grow with K; where it stays near 1, one particle dominates
    and the estimators behave much as at K = 1."""
    pyro.set_rng_seed(seed)
    w = torch.softmax(vae.log_weights(x, k), dim=0)
    return (1 / w.square().sum(0)).mean().item()


def snr_rows(
    vae: VAE,
    x: torch.Tensor,
    idx: torch.Tensor,
    ks: list[int],
    estimators: list[str],
    repeats: int,
    seed: int,
    at: dict[str, Any],
    log: Any = print,
) -> list[dict[str, Any]]:
    """One row per (K, estimator, group) of the lab on (x, idx), with ``at`` in front."""
    rows = []
    for k in ks:
        names = [e for e in estimators if k >= min_particles(e)]
        start = time.perf_counter()
        ess = effective_sample_size(vae, x, k, seed)
        found = estimator_variance(vae, x, idx, names, [k], repeats=repeats, seed=seed)
        for r in found:
            rel = r["relative_variance"]
            rows.append(
                {
                    **at,
                    "estimator": r["estimator"],
                    "K": k,
                    "group": GROUP_NAMES.get(r["group"], r["group"]),
                    "mean_snr": r["mean_snr"],
                    # ||E g|| / sqrt(tr Cov g), from the lab's unbiased ||E g||^2: no floor
                    "norm_snr": 1 / math.sqrt(rel) if math.isfinite(rel) and rel > 0 else 0.0,
                    "total_variance": r["total_variance"],
                    "relative_variance": rel,
                    "bound": r["bound"],
                    "ess": ess,
                    "repeats": repeats,
                    "batch_size": x.shape[0],
                    "seconds_per_estimate": r["seconds_per_estimate"],
                }
            )
        log(f"  {at['checkpoint']}: K={k} ({', '.join(names)}) {time.perf_counter() - start:.0f} s")
    return rows


def slope_rows(rows: list[dict[str, Any]], measure: str = "mean_snr") -> list[dict[str, Any]]:
    """Fitted log-log slopes of ``measure`` against K per (checkpoint, estimator, group): over
    every K measured and over the last :data:`TAIL` of them."""
    out = []
    keys = dict.fromkeys((r["checkpoint"], r["estimator"], r["group"]) for r in rows)
    for checkpoint, estimator, group in keys:
        pts = sorted(
            (r["K"], r[measure])
            for r in rows
            if (r["checkpoint"], r["estimator"], r["group"]) == (checkpoint, estimator, group)
        )
        ks, values = [p[0] for p in pts], [p[1] for p in pts]
        out.append(
            {
                "checkpoint": checkpoint,
                "estimator": estimator,
                "group": group,
                "measure": measure,
                "K_range": f"{ks[0]}-{ks[-1]}",
                "slope": loglog_slope(ks, values),
                "slope_large_K": loglog_slope(ks[-TAIL:], values[-TAIL:]),
            }
        )
    return out


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _f(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in rows))
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    ks = sorted({r["K"] for r in rows})
    lines = [header, ""]
    for measure, title in (
        ("mean_snr", "mean SNR (mean over parameters of |E g| / sd g)"),
        ("norm_snr", "norm SNR (||E g|| / sqrt(tr Cov g), bias-corrected, no floor)"),
    ):
        slopes = {
            (s["checkpoint"], s["estimator"], s["group"]): s for s in slope_rows(rows, measure)
        }
        lines += [
            f"## Slopes of log {title} against log K",
            "",
            "All K / the last three K. Reference: IWAE encoder -0.5, IWAE decoder +0.5.",
            "",
            "| checkpoint | estimator | encoder: all K | encoder: large K "
            "| decoder: all K | decoder: large K |",
            "|---|---|---|---|---|---|",
        ]
        for c in checkpoints:
            for e in estimators:
                enc, dec = slopes.get((c, e, "encoder")), slopes.get((c, e, "decoder"))
                cells = [c, e]
                for s in (enc, dec):
                    cells += (
                        [f"{s['slope']:+.2f}", f"{s['slope_large_K']:+.2f}"] if s else ["-"] * 2
                    )
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    value = {(r["checkpoint"], r["estimator"], r["group"], r["K"]): r for r in rows}
    for c in checkpoints:
        at = {r["K"]: r for r in rows if r["checkpoint"] == c}
        bound = {
            r["K"]: r["bound"] for r in rows if r["checkpoint"] == c and r["estimator"] == "iwae"
        }
        for group in ("encoder", "decoder"):
            lines += [
                f"## Mean SNR, {group}, {c}",
                "",
                "| K | " + " | ".join(estimators) + " | IWAE bound | ESS |",
                "|---|" + "---|" * (len(estimators) + 2),
            ]
            for k in ks:
                cells = [str(k)]
                for e in estimators:
                    r = value.get((c, e, group, k))
                    cells.append(_f(r["mean_snr"]) if r else "-")
                cells.append(f"{bound[k]:.2f}" if k in bound else "-")
                cells.append(f"{at[k]['ess']:.2f}")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    seconds = {}
    for r in rows:
        if r["group"] == "encoder":
            seconds.setdefault(r["estimator"], {})[r["K"]] = r["seconds_per_estimate"]
    lines += [
        "## Seconds per gradient estimate (trained checkpoint)",
        "",
        "| estimator | " + " | ".join(f"K={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    last = checkpoints[-1]
    for e in estimators:
        cells = [e]
        for k in ks:
            r = value.get((last, e, "encoder", k))
            cells.append(f"{r['seconds_per_estimate']:.3f}" if r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Two panels (encoder, decoder): mean SNR against K, log-log; one colour per estimator,
    solid at the trained checkpoint, dashed at initialisation; the noise floor dotted."""
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    colours = {e: f"C{i}" for i, e in enumerate(estimators)}
    markers = dict(zip(estimators, "os^vDx", strict=False))
    styles = {"trained": "-", "init": "--"}
    ks = sorted({r["K"] for r in rows})
    repeats = rows[0]["repeats"]
    for ax, group in zip(axes, ("encoder", "decoder"), strict=True):
        for e in estimators:
            for c, ls in styles.items():
                pts = sorted(
                    (r["K"], r["mean_snr"])
                    for r in rows
                    if r["estimator"] == e and r["group"] == group and r["checkpoint"] == c
                )
                if not pts:
                    continue
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    ls=ls,
                    color=colours[e],
                    marker=markers.get(e, "o"),
                    ms=4,
                    label=f"{e} ({c})",
                )
        floor = snr_floor(repeats)
        ax.axhline(floor, color="grey", ls=":", lw=1, label=f"noise floor (R={repeats})")
        for sign in (-0.5, 0.5):  # guides through the trained IWAE's K=1 value
            start = next(
                (
                    r["mean_snr"]
                    for r in rows
                    if (r["estimator"], r["group"], r["checkpoint"], r["K"])
                    == ("iwae", group, "trained", ks[0])
                ),
                None,
            )
            if start:
                kk = np.array([ks[0], ks[-1]], dtype=float)
                guide = start * (kk / ks[0]) ** sign
                ax.plot(kk, guide, color="black", lw=0.6, ls=(0, (1, 3)), alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K (particles)")
        ax.set_ylabel("mean SNR |E g| / sd g")
        ax.set_title(f"{group} ({'phi' if group == 'encoder' else 'theta'})")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2, title="decoder: all but stl coincide", title_fontsize=7)
    fig.suptitle(title + "  (thin dotted: K^(-1/2) and K^(+1/2))", fontsize=9)
    return save_figure(fig, path)


def resolve_run(opts: dict[str, Any], log: Any = print) -> tuple[Path, str]:
    """The trained run to study and how it was chosen (see the module doc)."""
    if opts["run"]:
        run = RunDir(opts["run"])
        if not run.has_checkpoint():
            sys.exit(f"run={opts['run']}: no checkpoint in {run.checkpoint_dir}")
        state = "finished" if run.is_finished() else "unfinished (its last checkpoint)"
        return run.path, f"given as run=, {state}"
    if RunDir(DEFAULT_RUN).is_finished():
        return DEFAULT_RUN, "the finished default run"
    epochs = opts["train_epochs"]
    run_dir = Path(opts["fallback_run"]).resolve()
    overrides = [
        "+experiment=iwae_cpu",
        f"epochs={epochs}",
        f"lr_iwae_epochs={epochs}",
        *([f"data_dir={opts['data_dir']}"] if opts["data_dir"] else []),
        f"run_dir={run_dir}",
        f"device={opts['device']}",
        "progress=false",
        "plots=false",
        "eval_num_samples=100",
    ]
    if RunDir(run_dir).is_finished():
        done = RunDir(run_dir).config().get("epochs")
        if done != epochs:
            sys.exit(
                f"{run_dir} holds a finished run of {done} epochs, not train_epochs={epochs}: "
                "pass fallback_run=another directory"
            )
    shown_overrides = [o.replace(str(run_dir), _rel(run_dir)) for o in overrides]
    if opts["data_dir"]:
        shown_overrides = [
            o.replace(opts["data_dir"], _rel(opts["data_dir"])) for o in shown_overrides
        ]
    shown = shlex.join(shown_overrides)
    log(f"{_rel(DEFAULT_RUN)} has not finished: training (or reusing) {_rel(run_dir)}")
    log(f"$ pyro-vae train {shown}")
    run_training(compose_config(overrides))
    return (
        run_dir,
        f"{_rel(DEFAULT_RUN)} had not finished; short fallback run: pyro-vae train {shown}",
    )


def _rel(path: str | Path) -> str:
    """``path`` relative to the repository where it lies inside it (or beside it)."""
    path = Path(path).resolve()
    if path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    if path.is_relative_to(ROOT.parent):
        return str(Path("..") / path.relative_to(ROOT.parent))
    return str(path)


def initial_model(loaded: Any) -> tuple[VAE, str]:
    """The run's model at initialisation: its epoch-0 snapshot where it has one, else rebuilt
    from its configuration after ``pyro.set_rng_seed(seed)``, as training builds it."""
    cfg, meta = loaded.cfg, loaded.meta
    pyro.set_rng_seed(cfg["seed"])
    vae = VAE.from_settings(
        cfg, meta["x_dim"], num_data=meta["num_data"], image_shape=meta.get("image_shape")
    ).to(loaded.device)
    snapshot = loaded.run.checkpoint_dir / snapshot_name(0)
    if snapshot.is_file():
        state = loaded.run.load_checkpoint(snapshot.name, map_location=loaded.device)
        vae.load_state_dict(state["model"])
        source = f"snapshot {snapshot_name(0)}"
    else:
        source = f"rebuilt from the run's configuration with seed {cfg['seed']}"
    vae.eval()
    return vae, source


def main(argv: list[str]) -> int:
    opts: dict[str, Any] = {
        "budget": "cpu",
        "run": "",
        "fallback_run": str(ROOT / "runs" / "snr_vs_k" / "trained"),
        "train_epochs": 5,
        "data_dir": None,
        "ks": None,
        "repeats": None,
        "batch_size": None,
        "estimators": ",".join(ESTIMATOR_NAMES),
        "seed": 0,
        "device": "cpu",
        "out": None,
    }
    types = {k: type(v) if v is not None else str for k, v in opts.items()}
    types.update(ks=int_list, repeats=int, batch_size=int)
    try:
        opts.update(parse_key_values(argv, types, "snr_vs_k"))
    except ConfigError as e:
        sys.exit(str(e))
    if opts["budget"] not in BUDGETS:
        sys.exit(f"budget={opts['budget']!r} is not one of {list(BUDGETS)}")
    ks, repeats, batch_size = BUDGETS[opts["budget"]]
    ks = sorted(opts["ks"] or ks)
    repeats = opts["repeats"] or repeats
    batch_size = opts["batch_size"] or batch_size
    estimators = [e.strip() for e in opts["estimators"].split(",") if e.strip()]
    for e in estimators:
        if e not in ESTIMATORS:
            known = sorted(ESTIMATORS)
            sys.exit(f"estimators: {e!r} is not one of {known}")
    # Results of other budgets never overwrite the committed CPU-budget ones.
    results = ROOT / "experiments" / "results" / "snr_vs_k"
    default_out = results if opts["budget"] == "cpu" else results / opts["budget"]
    out = Path(opts["out"] or default_out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if opts["data_dir"]:
        opts["data_dir"] = str(Path(opts["data_dir"]).expanduser().resolve())
    configure_logging()
    started = time.perf_counter()

    run_dir, how = resolve_run(opts)
    loaded = load_run(run_dir, device=opts["device"])
    data = loaded.data()
    batches = Minibatches(
        data.train,
        batch_size,
        seed=opts["seed"],
        binarize=data.train_binarize,
        device=loaded.device,
    )
    idx, x = next(batches.epoch(0))
    init_vae, init_source = initial_model(loaded)
    epoch = loaded.checkpoint.get("epoch", loaded.checkpoint.get("position", {}).get("epoch"))
    print(f"run {_rel(run_dir)} ({how}); M={batch_size}, R={repeats}, K in {ks}", flush=True)

    rows: list[dict[str, Any]] = []
    with pyro.validation_enabled(bool(loaded.cfg.get("validate", False))):
        for label, vae, at_epoch in (("init", init_vae, 0), ("trained", loaded.vae, epoch)):
            at = {"checkpoint": label, "epoch": at_epoch}
            rows += snr_rows(vae, x, idx, ks, estimators, repeats, opts["seed"], at)
            atomic_write(out / "snr_vs_k.csv", csv_text(rows))  # partial results as they come
    seconds = time.perf_counter() - started

    command = shlex.join(["python", "experiments/snr_vs_k.py", *argv])
    setting = f"M={batch_size} training images (seed {opts['seed']}), R={repeats} estimates"
    header = (
        "# Gradient SNR against K: IWAE, DReG, STL, VIMCO (Rainforth et al. 2018)\n\n"
        f"Command: `{command}` ({seconds / 60:.1f} min, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {opts['device']}).\n\n"
        f"Trained model: `{_rel(run_dir)}` at epoch {epoch} ({how}); initialisation: "
        f"{init_source}. {setting} per (checkpoint, estimator, K); gradients of minus the "
        "per-datapoint bound; encoder = phi, decoder = theta (and the prior's parameters, if "
        f"any). Mean-SNR noise floor sqrt(2/(pi R)) = {snr_floor(repeats):.3f}. `stl` is the "
        "project's (ELBO, L particles averaged); `iwae_stl` is IWAE without the score term "
        "(defined in the script). VIMCO needs K >= 2. iwae, dreg, iwae_stl and vimco have "
        "the same decoder gradient, and with the same seed the same draws: their decoder "
        "columns agree. ESS: the mean over the minibatch of 1 / sum_k w_k^2 (normalised "
        "importance weights of K draws)."
    )
    atomic_write(out / "snr_vs_k.csv", csv_text(rows))
    atomic_write(out / "snr_vs_k.md", markdown(rows, header))
    plot(
        rows,
        out / "snr_vs_k.png",
        f"Mean gradient SNR against K, {_rel(run_dir)}; {setting}; solid trained (epoch "
        f"{epoch}), dashed init",
    )
    info = {
        "command": command,
        "budget": opts["budget"],
        "wall_seconds": round(seconds, 1),
        "run": _rel(run_dir),
        "run_choice": how,
        "trained_epoch": epoch,
        "init": init_source,
        "ks": ks,
        "repeats": repeats,
        "batch_size": batch_size,
        "seed": opts["seed"],
        "estimators": estimators,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "slopes": slope_rows(rows),
    }
    atomic_write(out / "run_info.json", json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}/snr_vs_k.csv, snr_vs_k.md, snr_vs_k.png, run_info.json")
    print(f"{seconds:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
