"""NVIL under method=aevb: its baseline network trains, and a resumed run is bit-exact."""

import pytest
import torch

from pyro_vae.config import run_training
from pyro_vae.training.rundir import RunDir

from .test_train import numbers

pytestmark = pytest.mark.usefixtures("one_thread")


def test_nvil_under_aevb_trains_its_baseline_and_resumes_bit_exactly(tiny_cfg, tmp_path):
    args = ("estimator=nvil", "num_particles=2")
    run_training(tiny_cfg(*args, "epochs=4", run_dir=tmp_path / "whole"))
    run_training(tiny_cfg(*args, "epochs=2", run_dir=tmp_path / "parts"))
    run_training(tiny_cfg(*args, "epochs=4", "resume=true", run_dir=tmp_path / "parts"))
    whole, parts = RunDir(tmp_path / "whole"), RunDir(tmp_path / "parts")
    assert numbers(whole.metrics()) == numbers(parts.metrics())
    a, b = whole.load_checkpoint(), parts.load_checkpoint()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ea, eb = a["method"]["estimator"], b["method"]["estimator"]
    assert (ea["mean"], ea["variance"], ea["updates"]) == (
        eb["mean"],
        eb["variance"],
        eb["updates"],
    )
    assert all(torch.equal(ea["baseline"][k], eb["baseline"][k]) for k in ea["baseline"])
    assert ea["baseline"]["2.weight"].abs().sum() > 0  # the output layer started at zero


def test_nvil_with_the_step_size_search(tiny_cfg, tmp_path):
    summary = run_training(
        tiny_cfg("estimator=nvil", "lr_search=[0.003,0.01]", "lr_search_steps=5")
    )
    assert summary["status"] == "finished"
