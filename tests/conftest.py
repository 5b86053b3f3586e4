"""Shared fixtures: a tiny structured binary dataset and a fast configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_vae.config import compose_config


def bars_dataset(n: int = 200, side: int = 4, seed: int = 0) -> np.ndarray:
    """Binary side x side images, each one horizontal or one vertical bar, with 5% pixel noise."""
    rng = np.random.RandomState(seed)
    imgs = np.zeros((n, side, side), dtype=np.float32)
    for i in range(n):
        k = rng.randint(side)
        if rng.rand() < 0.5:
            imgs[i, k, :] = 1.0
        else:
            imgs[i, :, k] = 1.0
    flip = rng.rand(*imgs.shape) < 0.05
    imgs[flip] = 1.0 - imgs[flip]
    return imgs.reshape(n, side * side)


@pytest.fixture
def bars_path(tmp_path):
    path = tmp_path / "bars.npy"
    np.save(path, bars_dataset())
    return path


def tiny_overrides(data_path, run_dir, *extra: str) -> list[str]:
    """A configuration that trains in about a second."""
    return [
        "dataset=array",
        f"dataset.path={data_path}",
        f"run_dir={run_dir}",
        "latent_dim=2",
        "hidden_dims=[16]",
        "batch_size=20",
        "epochs=3",
        "lr=0.01",
        "progress=false",
        "plots=false",
        "eval_num_samples=20",
        *extra,
    ]


@pytest.fixture
def tiny_cfg(bars_path, tmp_path):
    def make(*extra: str, run_dir=None):
        run_dir = run_dir or tmp_path / "run"
        return compose_config(tiny_overrides(bars_path, run_dir, *extra))

    return make


@pytest.fixture
def one_thread():
    """For tests of tiny tensors: one thread avoids paying for thread hand-offs on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
