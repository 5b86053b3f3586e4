"""Assemble a run from its configuration, or load one back from its run directory.

Training, evaluation, plots and the variance lab all build data and model through here,
so the same configuration always yields the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from .config import resolve_device
from .data import Dataset, binarize, check_data_for_likelihood, load_dataset
from .model import VAE, build_vae
from .rundir import LAST_CHECKPOINT, RunDir, RunDirError


@dataclass
class RunData:
    """The dataset of a run, as the model sees it."""

    dataset: Dataset
    train: torch.Tensor  # on the device; fixed-binarised when dataset.binarize=fixed
    train_binarize: str  # "dynamic" or "none": what Minibatches does per batch
    test: torch.Tensor  # on the device; binarised once when dataset.test_binarize=fixed

    @property
    def x_dim(self) -> int:
        return self.train.shape[1]

    @property
    def num_train(self) -> int:
        return self.train.shape[0]


def load_data(cfg: DictConfig, device: torch.device | str = "cpu") -> RunData:
    """Read the configured dataset and apply the configured binarisation."""
    d = cfg.dataset
    ds = load_dataset(
        d.name,
        cfg.data_dir,
        download=cfg.download,
        train_size=d.get("train_size"),
        path=d.get("path"),
        test_path=d.get("test_path"),
        test_fraction=d.get("test_fraction", 0.1),
        image_shape=d.get("image_shape"),
    )
    for split, x in (("train", ds.train), ("test", ds.test)):
        where = f"dataset={d.name} ({split}: {ds.source})"
        check_data_for_likelihood(x, cfg.likelihood, where=where)
    train, test = ds.train.to(device), ds.test.to(device)
    train_mode = d.binarize
    if train_mode == "fixed":
        train, train_mode = binarize(train, d.binarize_seed), "none"
    if d.test_binarize == "fixed":
        # A different stream from the training set's fixed draw.
        test = binarize(test, d.binarize_seed + 1)
    return RunData(dataset=ds, train=train, train_binarize=train_mode, test=test)


def model_meta(data: RunData) -> dict[str, Any]:
    """What is needed to rebuild the model without reading the data again."""
    shape = data.dataset.image_shape
    return {
        "x_dim": data.x_dim,
        "num_data": data.num_train,
        "image_shape": list(shape) if shape else None,
        "dataset": data.dataset.name,
    }


@dataclass
class LoadedRun:
    run: RunDir
    cfg: DictConfig
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
) -> LoadedRun:
    """The configuration and the model of ``run_dir`` at ``checkpoint`` (last.pt or a snapshot)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"run directory {run.path} does not exist")
    cfg = run.config()
    dev = resolve_device(device or cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        dev = torch.device("cpu")
    state = run.load_checkpoint(checkpoint, map_location=dev)
    meta = state["meta"]
    vae = build_vae(cfg, meta["x_dim"], num_data=meta["num_data"]).to(dev)
    vae.load_state_dict(state["model"])
    vae.eval()
    return LoadedRun(run=run, cfg=cfg, vae=vae, meta=meta, checkpoint=state, device=dev)
