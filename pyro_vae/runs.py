"""A run directory read back: its model at a checkpoint, its data, evaluation and figures.

``load_run(run_dir)`` rebuilds the paper's MLP VAE from the run's ``config.yaml`` (the keys
of :data:`~pyro_vae.model.MODEL_SETTINGS`) and loads a checkpoint into it; a run of a model
of your own is loaded into that model: ``load_run(run_dir, vae=my_vae)``. Evaluation,
plots and the variance lab read runs through here, so the same run always yields the same
objects, whether it was trained from the command line or from Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import RunData, load_dataset, prepare_data
from .errors import RunDirError, refuse
from .evaluate import evaluate
from .likelihoods import get_likelihood
from .model import VAE
from .plots import FIGURES, elbo_title, plot_figures
from .training.loggers import log_evaluation
from .training.rundir import LAST_CHECKPOINT, RunDir, snapshot_epoch

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str | torch.device) -> torch.device:
    """``cpu``, ``cuda``, or ``auto`` (CUDA where available)."""
    if isinstance(name, torch.device):
        return name
    if name not in DEVICES:
        raise refuse("device", name, f"one of {list(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    cfg = run.config()
    dev = resolve_device(device or cfg.get("device", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        dev = torch.device("cpu")
    checkpoint = checkpoint_to_load(run, checkpoint)
    state = run.load_checkpoint(checkpoint, map_location=dev)
    meta = state["meta"]
    if vae is None:
        vae = VAE.from_settings(
            cfg, meta["x_dim"], num_data=meta["num_data"], image_shape=meta.get("image_shape")
        )
    vae = vae.to(dev)
    vae.load_state_dict(state["model"])
    vae.eval()
    return LoadedRun(run=run, cfg=cfg, vae=vae, meta=meta, checkpoint=state, device=dev)


def checkpoint_to_load(run: RunDir, checkpoint: str = LAST_CHECKPOINT) -> str:
    """``checkpoint``; for ``last.pt`` where the run has none, its newest snapshot."""
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
) -> dict[str, Any]:
    """Test ELBO and importance-sampled log p(x) of a run (:func:`~pyro_vae.evaluate.evaluate`
    with K = ``num_samples``, default the run's ``eval_num_samples``); written into its
    summary.json, and logged (``evaluate/<key>``) to the TensorBoard directory and MLflow run
    the run was trained with (``logger=...``), if any. The evaluation of a snapshot from
    before the run's last epoch (``checkpoint="epoch_0004.pt"``) goes under
    ``evaluations[<checkpoint>]`` instead, leaving the run's own numbers as they are.
    ``vae``: the model to load the run into (a model of your own)."""
    loaded = load_run(run_dir, checkpoint=checkpoint, device=device, vae=vae)
    cfg = loaded.cfg
    k = int(num_samples or cfg.get("eval_num_samples", 1000))
    data = loaded.data()
    test = data.test
    result = evaluate(loaded.vae, test, k, cfg.get("eval_batch_size", 1000), seed)
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
    run, summary = loaded.run, loaded.run.summary()
    earlier = _earlier_snapshot_epoch(checkpoint, summary)
    if earlier is None:
        run.update_summary(**result)
        log_evaluation(run, result)
    else:  # beside the run's own numbers, not over them
        run.update_summary(evaluations={**summary.get("evaluations", {}), checkpoint: result})
        steps = {row["epoch"]: row["step"] for row in run.metrics() if "step" in row}
        log_evaluation(run, result, steps.get(earlier, 0))
    return result


def _earlier_snapshot_epoch(checkpoint: str, summary: dict[str, Any]) -> int | None:
    """The epoch of ``checkpoint`` if it is a snapshot (``epoch_NNNN.pt``) from before the
    run's last epoch; None for the run's final model (``last.pt``, or the last epoch's)."""
    epoch = snapshot_epoch(checkpoint)
    final = summary.get("epochs")
    return epoch if epoch is not None and isinstance(final, int) and epoch < final else None


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
    return plot_figures(model, data, run.figure_dir, run.metrics(), figures, title, shape)
