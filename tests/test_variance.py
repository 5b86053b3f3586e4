"""The variance lab: its statistics against a direct computation, and the command end to end."""

import csv
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import run_training
from pyro_vae.errors import ArgumentError
from pyro_vae.estimators import build_estimator
from pyro_vae.model import VAE
from pyro_vae.priors import StandardNormal
from pyro_vae.variance import Moments, gradient_statistics, parse_estimators

pytestmark = pytest.mark.usefixtures("one_thread")


def test_moments_match_numpy():
    rng = np.random.RandomState(0)
    draws = rng.randn(50, 7) * np.arange(1, 8) + np.array([3, 0, 0, -1, 0, 0, 5])
    draws[:, 1] = 0.25  # a coordinate without noise is left out of the mean SNR
    m = Moments(7)
    for d in draws:
        m.add(torch.from_numpy(d))
    s = m.summary()
    var = draws.var(0, ddof=1)
    mean = draws.mean(0)
    norm_sq = (mean**2).sum() - var.sum() / 50
    assert s["total_variance"] == pytest.approx(var.sum())
    assert s["mean_grad_norm_sq"] == pytest.approx(norm_sq)
    assert s["relative_variance"] == pytest.approx(var.sum() / norm_sq)
    varies = var > 0
    assert s["mean_snr"] == pytest.approx((np.abs(mean[varies]) / np.sqrt(var[varies])).mean())


def test_gradient_statistics_equal_a_direct_computation():
    torch.manual_seed(0)
    vae = VAE.mlp(6, 2, [4], "bernoulli", StandardNormal(2), num_data=40)
    x, idx = torch.rand(5, 6).bernoulli(), torch.arange(5)
    elbo = build_estimator({"name": "sgvb_a"})
    pyro.set_rng_seed(0)
    stats = gradient_statistics(elbo, vae, x, idx, repeats=20)
    pyro.set_rng_seed(0)
    phi, theta = [], []
    for _ in range(20):
        for p in vae.parameters():
            p.grad = None
        elbo.loss_and_grads(vae.model, vae.guide, x, idx)
        g = {n: p.grad.reshape(-1) / 40 for n, p in vae.named_parameters()}
        phi.append(torch.cat([v for n, v in g.items() if n.startswith("encoder")]).double())
        theta.append(torch.cat([v for n, v in g.items() if n.startswith("decoder")]).double())
    for group, draws in (("phi", phi), ("theta", theta)):
        expected = torch.stack(draws).var(0).sum().item()
        assert stats["groups"][group]["total_variance"] == pytest.approx(expected, rel=1e-6)
    assert stats["seconds_per_estimate"] > 0


def test_estimator_specs_take_the_config_defaults_and_parameters():
    specs = parse_estimators("sgvb_b,score_function,score_function:baseline=none")
    assert [s.label for s in specs] == [
        "sgvb_b",
        "score_function baseline=batch",
        "score_function baseline=none",
    ]
    with pytest.raises(ArgumentError, match=r"'sgvb_c'.*sgvb_a"):
        parse_estimators("sgvb_c")


@pytest.fixture
def trained_run(tiny_cfg):
    cfg = tiny_cfg("epochs=2")
    run_training(cfg)
    return Path(cfg.run_dir)


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_variance_command_over_checkpoints_and_particles(trained_run, capsys):
    args = [
        "variance",
        str(trained_run),
        "estimators=trace_elbo,sgvb_a,sgvb_b,score_function:baseline=none,"
        "score_function:baseline=particles",
        "num_particles=1,2",
        "repeats=10",
        "checkpoints=all",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "skipped score_function baseline=particles at L=1" in captured.err
    out = trained_run / "variance"
    for name in ("variance.md", "variance_by_estimator.png", "variance_vs_epoch.png"):
        assert (out / name).is_file(), name
    assert (out / "variance_vs_particles.png").is_file()
    rows = read_rows(out / "variance.csv")
    # 3 snapshots (epochs 0, 1, 2) x (4 estimators at L=1 + 5 at L=2) x 2 parameter groups
    assert len(rows) == 3 * 9 * 2
    assert {r["epoch"] for r in rows} == {"0", "1", "2"}

    def get(estimator, group, epoch="2", num="1"):
        (row,) = [
            r
            for r in rows
            if (r["estimator"], r["group"], r["epoch"], r["num_particles"])
            == (estimator, group, epoch, num)
        ]
        return float(row["total_variance"])

    for epoch in ("0", "1", "2"):
        # Pyro's Trace_ELBO and the hand-written A draw the same noise from the same seed.
        assert get("trace_elbo", "phi", epoch) == pytest.approx(get("sgvb_a", "phi", epoch))
        # The analytic KL removes the encoder's largest noise term; REINFORCE without a
        # baseline is far noisier than the pathwise gradient (deterministic given the seed).
        assert get("sgvb_b", "phi", epoch) < get("sgvb_a", "phi", epoch)
        assert get("score_function baseline=none", "phi", epoch) > 10 * get("sgvb_a", "phi", epoch)
    assert "| epoch | L | estimator |" in captured.out


def test_variance_on_a_fresh_run_and_refusals(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg("epochs=0", run_dir=tmp_path / "fresh")
    run_training(cfg)  # only the initialisation snapshot epoch_0000.pt
    out = tmp_path / "lab"
    args = ["variance", str(cfg.run_dir), "estimators=stl", "repeats=4", f"out_dir={out}"]
    assert main(args) == 0
    (row, _) = read_rows(out / "variance.csv")
    assert row["checkpoint"] == "epoch_0000.pt" and math.isfinite(float(row["total_variance"]))
    capsys.readouterr()
    assert main(["variance", str(cfg.run_dir), "estimators=nope"]) == 2
    assert "estimators='nope'" in capsys.readouterr().err
    assert main(["variance", str(cfg.run_dir), "repeats=1"]) == 2
    assert "repeats=1" in capsys.readouterr().err
    assert main(["variance", str(cfg.run_dir), "num_particles=a"]) == 2
    assert "num_particles='a'" in capsys.readouterr().err
    assert main(["variance", str(cfg.run_dir), "checkpoints=epoch_0009.pt"]) == 2
    assert "epoch_0009.pt does not exist" in capsys.readouterr().err
