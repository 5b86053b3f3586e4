"""A run directory read back: its model at a checkpoint, its data, evaluation and figures.

``load_run(run_dir)`` rebuilds the paper's MLP VAE from the run's ``config.yaml`` (the keys
of :data:`~pyro_vae.model.MODEL_SETTINGS`) and loads a checkpoint into it; a run of a model
of your own is loaded into that model: ``load_run(run_dir, vae=my_vae)``. Evaluation,
plots and the variance lab read runs through here, so the same run always yields the same
objects, whether it was trained from the command line or from Python.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checks import DEVICES, resolve_device
from .data import RunData, load_dataset, prepare_data
from .diagnostics import plot_diagnostics
from .errors import ArgumentError, RunDirError, refuse
from .evaluate import EVALUATE_CHECKS, evaluate
from .likelihoods import get_likelihood
from .model import VAE
from .plots import FIGURES, elbo_title, plot_figures
from .training.loggers import log_evaluation
from .training.rundir import (
    LAST_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    RunDir,
    load_model_state,
    snapshot_epoch,
)

__all__ = [
    "DEVICES",
    "LoadedRun",
    "checkpoint_to_load",
    "evaluate_run",
    "load_data",
    "load_run",
    "plot_run",
    "resolve_device",
]

logger = logging.getLogger(__name__)


_PREPARE_KEYS = frozenset({"name", "binarize", "test_binarize", "binarize_seed"})


def load_data(settings: Mapping[str, Any], device: torch.device | str = "cpu") -> RunData:
    """The dataset a run's settings name (``dataset``, ``data_dir``, ``download``,
    ``likelihood``), read, checked and binarised as the run trained on it."""
    d = settings["dataset"]
    if d.get("name") == "tensor":
        raise RunDirError(
            "this run was trained on tensors given in Python; its data are not in the run "
            "directory: pass them (evaluate(vae, x), plots on the model)"
        )
    # the dataset node's keys that are load_dataset's arguments (its name, files, sizes,
    # a synthetic set's parameters); binarisation is prepare_data's
    options = {k: v for k, v in d.items() if k not in _PREPARE_KEYS}
    dataset = load_dataset(
        d["name"], settings.get("data_dir"), download=settings.get("download", True), **options
    )
    return prepare_data(
        dataset,
        binarize_train=d.get("binarize", "none"),
        binarize_test=d.get("test_binarize", "none"),
        binarize_seed=d.get("binarize_seed", 0),
        likelihood=_likelihood(settings.get("likelihood")),
        device=device,
    )


def _likelihood(spec: Any) -> Any:
    """The likelihood a run recorded (a specification; in older runs, a name), whose
    support its data are checked against; None where none was recorded."""
    return get_likelihood(spec) if spec else None


@dataclass
class LoadedRun:
    """A run's directory, settings, model (at ``checkpoint``, in eval mode) and device."""

    run: RunDir
    cfg: dict[str, Any]
    vae: VAE
    meta: dict[str, Any]
    checkpoint: dict[str, Any]
    device: torch.device

    def data(self) -> RunData:
        return load_data(self.cfg, self.device)


def load_run(
    run_dir: str | Path,
    checkpoint: str = LAST_CHECKPOINT,
    device: str | None = None,
    vae: VAE | None = None,
) -> LoadedRun:
    """The settings and the model of ``run_dir`` at ``checkpoint`` (``last.pt`` or a
    snapshot such as ``epoch_0004.pt``). A run directory kept without its training
    checkpoint (``last.pt``: the model with the optimiser's state, for resuming), as the
    committed runs of ``experiments/iwae_table.py`` are, loads its newest snapshot instead.

    ``vae``: the model to load the checkpoint into (a model of your own); by default the
    paper's MLP VAE is rebuilt from the run's settings. ``device``: where to load it
    (default: the run's own, or the CPU where it has no CUDA).
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"run directory {run.path} does not exist")
    if vae is not None and not isinstance(vae, VAE):
        raise refuse("vae", vae, "a pyro_vae.VAE to load the run into, or None")
    dev = run_device(device, run.config())
    cfg = run.config()
    checkpoint = checkpoint_to_load(run, checkpoint)
    state = run.load_checkpoint(checkpoint, map_location=dev)
    meta = state["meta"]
    if vae is None:
        vae = VAE.from_settings(
            cfg, meta["x_dim"], num_data=meta["num_data"], image_shape=meta.get("image_shape")
        )
    source = str(run.checkpoint_dir / checkpoint)
    load_model_state(vae, state["model"], source)  # refused before the model is moved
    vae = vae.to(dev)
    vae.eval()
    return LoadedRun(run=run, cfg=cfg, vae=vae, meta=meta, checkpoint=state, device=dev)


def run_device(device: str | torch.device | None, cfg: Mapping[str, Any]) -> torch.device:
    """Where to load a run: ``device`` if given (a CUDA device where there is none is an
    ArgumentError); else the run's own, or the CPU where the run's was CUDA and this
    machine has none (a run trained on a GPU is read back on a laptop, said so)."""
    if device is not None:
        return resolve_device(device)
    recorded = cfg.get("device", "cpu")
    if str(recorded).startswith("cuda") and not torch.cuda.is_available():
        logger.info(
            "the run was trained on %s; no CUDA device here: loading it on the CPU", recorded
        )
        return torch.device("cpu")
    try:
        return resolve_device(recorded)
    except ArgumentError:
        return torch.device("cpu")


def checkpoint_to_load(run: RunDir, checkpoint: str = LAST_CHECKPOINT) -> str:
    """``checkpoint``, a file name in ``<run_dir>/checkpoints`` (ArgumentError for a path
    elsewhere: another run's checkpoint is evaluated in its own run directory); for
    ``last.pt`` where the run has none, its newest snapshot."""
    available = (
        sorted(p.name for p in run.checkpoint_dir.glob("*.pt"))
        if run.checkpoint_dir.is_dir()
        else []
    )
    if (
        not isinstance(checkpoint, str)
        or not checkpoint
        or os.path.basename(checkpoint) != checkpoint
        or checkpoint in (".", "..")
    ):
        raise refuse(
            "checkpoint",
            checkpoint,
            f"the name of a file in {run.checkpoint_dir} (one of {available}); a checkpoint of "
            "another run is evaluated in its own run directory",
        )
    if checkpoint == LAST_CHECKPOINT and not (run.checkpoint_dir / checkpoint).exists():
        snapshots = run.snapshots()
        if snapshots:
            return snapshots[-1][1].name
    return checkpoint


def evaluate_run(
    run_dir: str | Path,
    num_samples: int | None = None,
    checkpoint: str = LAST_CHECKPOINT,
    device: str | None = None,
    seed: int = 0,
    vae: VAE | None = None,
    progress: bool = True,
    **diagnostics: Any,
) -> dict[str, Any]:
    """Test ELBO and importance-sampled log p(x) of a run (:func:`~pyro_vae.evaluate.evaluate`
    with K = ``num_samples``, default the run's ``eval_num_samples``); written into its
    summary.json, and logged (``evaluate/<key>``) to the TensorBoard directory and MLflow run
    the run was trained with (``logger=...``), if any.

    Only the run's final model (``last.pt`` of a finished run, or the snapshot of its last
    epoch) is evaluated into the run's own numbers (``test_elbo``, ``test_log_likelihood``,
    ...); any other checkpoint (an earlier snapshot ``epoch_0004.pt``, ``last.prev.pt``, the
    last checkpoint of an unfinished run) goes under ``evaluations[<checkpoint>]``, leaving
    them as they are. ``checkpoint`` is a file name in the run's ``checkpoints/``.

    The run directory is locked while it is evaluated, as training locks it: an evaluation
    of a run that is training (or being evaluated) is refused with a
    :class:`~pyro_vae.errors.RunDirError`, and training cannot start in it meanwhile.
    ``vae``: the model to load the run into (a model of your own). ``progress``: a bar with
    the time left (:func:`~pyro_vae.evaluate.evaluate`).

    ``diagnostics``: :func:`~pyro_vae.evaluate.evaluate`'s settings of the posterior
    diagnostics (``mi_points``, ``gap_points``, ``gap_steps``, ``gap_lr``, ``gap_samples``,
    ``gap_elbo_samples``). Their figure (:func:`~pyro_vae.diagnostics.plot_diagnostics`: KL per
    dimension, the gaps) is written to ``figures/diagnostics.png`` (beside a checkpoint
    other than the final model: ``figures/diagnostics_<checkpoint>.png``)."""
    unknown = sorted(set(diagnostics) - set(DIAGNOSTIC_KEYS))
    if unknown:
        raise refuse(unknown[0], diagnostics[unknown[0]], f"a key among {list(DIAGNOSTIC_KEYS)}")
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"run directory {run.path} does not exist")
    if num_samples is not None:
        EVALUATE_CHECKS["num_samples"].check("num_samples", num_samples)
    EVALUATE_CHECKS["seed"].check("seed", seed)
    run.config()  # a directory that is not a run is named before it is locked
    with run.lock():
        loaded = load_run(run_dir, checkpoint=checkpoint, device=device, vae=vae)
        cfg = loaded.cfg
        k = num_samples if num_samples is not None else int(cfg.get("eval_num_samples", 1000))
        data = loaded.data()
        test = data.test
        batch_size = cfg.get("eval_batch_size", 1000)
        result = evaluate(loaded.vae, test, k, batch_size, seed, progress=progress, **diagnostics)
        seconds = result.pop("evaluation_seconds")
        exact = exact_log_likelihood(data.dataset, test)
        if exact:
            ll = exact["test_exact_log_likelihood"]
            exact.update(
                elbo_gap=ll - result["test_elbo"],
                importance_gap=ll - result["test_log_likelihood"],
            )
        result.update(exact)
        checkpoint = checkpoint_to_load(loaded.run, checkpoint)
        result.update(evaluated_checkpoint=checkpoint, evaluation_seconds=seconds)
        summary = run.summary()
        final = is_final_model(run, checkpoint, loaded.checkpoint, summary)
        _diagnostics_figure(run, result, None if final else checkpoint)
        tracked = {**result, **_per_dimension(result)}
        if final:
            run.update_summary(**result)
            log_evaluation(run, tracked)
        else:  # beside the run's own numbers, not over them
            run.update_summary(evaluations={**summary.get("evaluations", {}), checkpoint: result})
            log_evaluation(run, tracked, _checkpoint_step(run, checkpoint, loaded.checkpoint))
    return result


#: The settings of the posterior diagnostics :func:`evaluate_run` passes to evaluate().
DIAGNOSTIC_KEYS = (
    "mi_points",
    "gap_points",
    "gap_steps",
    "gap_lr",
    "gap_samples",
    "gap_elbo_samples",
)


def _per_dimension(result: Mapping[str, Any]) -> dict[str, float]:
    """The KL per dimension as numbers an experiment tracker plots (``kl_dim/<j>``)."""
    return {f"kl_dim/{j}": v for j, v in enumerate(result.get("kl_per_dimension") or [])}


def _diagnostics_figure(run: RunDir, result: dict[str, Any], checkpoint: str | None) -> None:
    """figures/diagnostics.png of an evaluation, where it has something to draw; a figure
    that cannot be written is a warning, never an error of the evaluation."""
    if "kl_per_dimension" not in result and "approximation_gap" not in result:
        return
    name = "diagnostics.png" if checkpoint is None else f"diagnostics_{Path(checkpoint).stem}.png"
    try:
        path = plot_diagnostics(result, run.figure_dir / name, title=str(run.path))
        result["diagnostics_figure"] = str(path.relative_to(run.path))
    except OSError as e:
        logger.warning("the diagnostics figure was not written: %s", e)


def is_final_model(
    run: RunDir, checkpoint: str, state: Mapping[str, Any], summary: Mapping[str, Any]
) -> bool:
    """Whether ``checkpoint`` (its ``state``) holds the final model of a finished run: its
    ``last.pt`` at the step the run finished, or the snapshot of the epoch it finished at
    (a run that ends mid-epoch, ``num_samples=``, has no final snapshot). ``last.prev.pt``,
    earlier snapshots and the checkpoints of an unfinished run are not."""
    if summary.get("status") != "finished" or checkpoint == PREVIOUS_CHECKPOINT:
        return False
    if checkpoint == LAST_CHECKPOINT:
        step = state.get("position", {}).get("step")
        return summary.get("steps") is None or step == summary.get("steps")
    epoch, final = snapshot_epoch(checkpoint), summary.get("epochs")
    if epoch is None or not isinstance(final, int) or epoch != final:
        return False
    rows = run.metrics()
    return not rows or rows[-1].get("epoch") == final  # ended at that epoch's end


def _checkpoint_step(run: RunDir, checkpoint: str, state: Mapping[str, Any]) -> int:
    """The training step a checkpoint's model is from (the x-axis of experiment trackers)."""
    step = state.get("position", {}).get("step")
    if isinstance(step, int):
        return step
    steps = {row["epoch"]: row["step"] for row in run.metrics() if "step" in row}
    return steps.get(snapshot_epoch(checkpoint), 0)


def exact_log_likelihood(dataset: Any, test: torch.Tensor) -> dict[str, float]:
    """Where the dataset's log p(x) is known in closed form (``dataset=linear_gaussian``),
    the exact mean test log-likelihood, and the gaps of the ELBO and of the importance-
    sampled estimate below it are reported beside them by ``pyro-vae evaluate``."""
    exact = getattr(dataset, "exact_log_likelihood", None)
    if exact is None:
        return {}
    return {"test_exact_log_likelihood": exact(test.cpu()).double().mean().item()}


def plot_run(
    run_dir: str | Path,
    checkpoint: str = LAST_CHECKPOINT,
    figures: Sequence[str] = FIGURES,
    vae: VAE | None = None,
    data: RunData | None = None,
) -> list[Path]:
    """Write the run's figures (:func:`~pyro_vae.plots.plot_figures`) into
    ``<run_dir>/figures``; returns their paths.

    ``vae``: the model to load the run into (a model of your own). ``data``: the run's
    data, where the run directory cannot name them (tensors given in Python).
    """
    run = RunDir(run_dir)
    cfg = run.config()
    title = elbo_title(cfg)
    needs_model = any(f != "elbo" for f in figures)
    loaded = load_run(run.path, checkpoint, vae=vae) if needs_model else None
    shape = loaded.meta.get("image_shape") if loaded else None
    wants_data = {"reconstructions", "aggregate_posterior"} & set(figures)
    posterior = loaded is not None and loaded.vae.latent_dim == 2
    if data is None and wants_data and (shape or (posterior and "aggregate_posterior" in figures)):
        data = loaded.data()
    model = loaded.vae if loaded else None
    try:
        return plot_figures(model, data, run.figure_dir, run.metrics(), figures, title, shape)
    except OSError as e:  # a read-only run directory, a full disk
        raise RunDirError(
            f"cannot write the figures into {run.figure_dir}: {e.strerror or e}"
        ) from e
