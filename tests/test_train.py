"""End-to-end training on tiny synthetic data: run directory, reproducibility, resume."""

import json
import math

import pytest
import torch

from pyro_vae.config import ConfigError, compose_config, run_training
from pyro_vae.errors import RunDirError
from pyro_vae.runs import evaluate_run, load_run, plot_run
from pyro_vae.training import RunDir, snapshot_epochs


def numbers(rows):
    """Metrics without the wall-clock fields, which legitimately differ between runs."""
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def test_training_writes_a_complete_run_directory(tiny_cfg, tmp_path):
    cfg = tiny_cfg("epochs=4")
    summary = run_training(cfg)
    run = RunDir(tmp_path / "run")
    assert summary["status"] == "finished" and run.is_finished()
    assert run.config()["latent_dim"] == 2 and run.config()["dataset"]["name"] == "array"
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # 200 points, 10% test -> 180 training points, 9 batches of 20 per epoch.
    assert [r["samples"] for r in rows] == [180, 360, 540, 720]
    assert set(rows[0]) >= {"epoch", "samples", "train_elbo", "test_elbo", "seconds"}
    assert rows[-1]["test_elbo"] > rows[0]["test_elbo"]  # it learns
    assert summary["test_elbo"] == rows[-1]["test_elbo"]
    assert [e for e, _ in run.snapshots()] == [0, 1, 2, 4]  # the log schedule
    assert (run.checkpoint_dir / "last.pt").is_file()


def test_same_seed_same_numbers_different_seed_different(tiny_cfg, tmp_path):
    a = run_training(tiny_cfg(run_dir=tmp_path / "a"))
    b = run_training(tiny_cfg(run_dir=tmp_path / "b"))
    c = run_training(tiny_cfg("seed=1", run_dir=tmp_path / "c"))
    rows = {k: numbers(RunDir(tmp_path / k).metrics()) for k in "abc"}
    assert rows["a"] == rows["b"]
    assert rows["a"] != rows["c"]
    assert a["test_elbo"] == b["test_elbo"] != c["test_elbo"]


def test_training_length_in_samples(tiny_cfg, tmp_path):
    run_training(tiny_cfg("num_samples=500"))
    rows = RunDir(tmp_path / "run").metrics()
    # 500 samples = 25 steps of 20: two full epochs (18 steps) and 7 of the third.
    assert [r["samples"] for r in rows] == [180, 360, 500]
    assert rows[-1]["epoch"] == pytest.approx(2 + 7 / 9)


def test_a_finished_run_is_not_retrained(tiny_cfg, tmp_path):
    run_training(tiny_cfg())
    run = RunDir(tmp_path / "run")
    before = (run.metrics_path.read_text(), (run.checkpoint_dir / "last.pt").stat().st_mtime_ns)
    run_training(tiny_cfg())
    after = (run.metrics_path.read_text(), (run.checkpoint_dir / "last.pt").stat().st_mtime_ns)
    assert before == after
    run_training(tiny_cfg("overwrite=true"))
    assert len(run.metrics()) == 3


def test_resume_continues_to_the_same_numbers_as_one_run(tiny_cfg, tmp_path):
    run_training(tiny_cfg("epochs=4", run_dir=tmp_path / "whole"))
    run_training(tiny_cfg("epochs=2", run_dir=tmp_path / "parts"))
    run_training(tiny_cfg("epochs=4", "resume=true", run_dir=tmp_path / "parts"))
    whole, parts = RunDir(tmp_path / "whole"), RunDir(tmp_path / "parts")
    assert numbers(whole.metrics()) == numbers(parts.metrics())
    a, b = whole.load_checkpoint()["model"], parts.load_checkpoint()["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changes_to_the_experiment(tiny_cfg, tmp_path):
    run_training(tiny_cfg("epochs=1"))
    with pytest.raises(ConfigError, match="latent_dim: run has 2, command line asks 3"):
        run_training(tiny_cfg("resume=true", "latent_dim=3"), overrides=["latent_dim=3"])


def test_an_unfinished_run_needs_resume(tiny_cfg, tmp_path):
    run_training(tiny_cfg("epochs=1"))
    RunDir(tmp_path / "run").update_summary(status="interrupted")
    with pytest.raises(RunDirError, match="resume=true"):
        run_training(tiny_cfg())


def test_evaluate_and_plot_a_run(tiny_cfg, tmp_path):
    run_training(tiny_cfg())
    result = evaluate_run(tmp_path / "run", num_samples=50)
    summary = RunDir(tmp_path / "run").summary()
    assert summary["test_log_likelihood"] == result["test_log_likelihood"]
    assert summary["importance_samples"] == 50
    # Importance sampling tightens the bound: above the single-sample ELBO (by ~KL(q||p(z|x))).
    assert result["test_log_likelihood"] > result["test_elbo"]
    paths = plot_run(tmp_path / "run")
    names = sorted(p.name for p in paths)
    expected = ["aggregate_posterior.png", "elbo.png", "manifold.png", "reconstructions.png"]
    assert names == [*expected, "samples.png"]  # latent_dim=2: the aggregate posterior too
    assert all(p.stat().st_size > 1000 for p in paths)


def test_load_run_restores_the_trained_model(tiny_cfg, tmp_path):
    run_training(tiny_cfg())
    loaded = load_run(tmp_path / "run")
    state = RunDir(tmp_path / "run").load_checkpoint()["model"]
    assert all(torch.equal(loaded.vae.state_dict()[k], v) for k, v in state.items())
    first = load_run(tmp_path / "run", checkpoint="epoch_0000.pt").vae
    assert not torch.equal(first.encoder.loc.weight, loaded.vae.encoder.loc.weight)


def test_batch_larger_than_the_dataset_is_refused(tiny_cfg):
    with pytest.raises(ConfigError, match=r"batch_size=500 .* 180 training points"):
        run_training(tiny_cfg("batch_size=500"))


def test_bernoulli_likelihood_refuses_data_outside_unit_interval(tiny_cfg, tmp_path):
    import numpy as np

    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((50, 4), 2.5, dtype=np.float32))
    with pytest.raises(ValueError, match="outside"):
        run_training(tiny_cfg(f"dataset.path={bad}", "batch_size=5"))


def test_snapshot_schedule():
    assert [e for e in range(10) if snapshot_epochs("log", e)] == [0, 1, 2, 4, 8]
    assert [e for e in range(3) if snapshot_epochs("all", e)] == [0, 1, 2]
    assert not any(snapshot_epochs("none", e) for e in range(3))


def test_metrics_lines_are_json(tiny_cfg, tmp_path):
    run_training(tiny_cfg("epochs=1"))
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        assert isinstance(json.loads(line), dict)


def test_paper_preset_sets_the_papers_training_settings():
    cfg = compose_config(["+experiment=paper", "dataset=frey_face"])
    assert cfg.optim.name == "adagrad" and list(cfg.lr_search) == [0.01, 0.02, 0.1]
    assert (cfg.batch_size, cfg.num_particles, cfg.weight_decay) == (100, 1, 1.0)
    assert (cfg.init, cfg.init_std) == ("paper", 0.01)
    assert cfg.hidden_dims == [200]  # the dataset's own settings stay


def test_paper_step_size_search_keeps_the_best_and_trains_as_if_it_were_given(tiny_cfg, tmp_path):
    searched = run_training(
        tiny_cfg("lr_search=[0.0001,0.01]", "lr_search_steps=12", run_dir=tmp_path / "s")
    )
    scores = searched["lr_search"]  # mean training bound of each trial
    assert set(scores) == {"0.0001", "0.01"} and scores["0.01"] > scores["0.0001"]
    assert searched["lr"] == 0.01
    assert RunDir(tmp_path / "s").config()["lr"] == 0.01
    run_training(tiny_cfg("lr=0.01", run_dir=tmp_path / "given"))
    assert numbers(RunDir(tmp_path / "s").metrics()) == numbers(
        RunDir(tmp_path / "given").metrics()
    )


def test_step_size_search_scores_a_trial_that_breaks_down_as_minus_infinity(tiny_cfg):
    # With lr=1000 wake-sleep's decoder turns NaN within two steps and its dreams (Bernoulli
    # draws) raise: the search must go on.
    summary = run_training(
        tiny_cfg("method=wake_sleep", "lr_search=[0.01,1000]", "lr_search_steps=5", "epochs=1")
    )
    assert summary["lr"] == 0.01 and summary["lr_search"]["1000.0"] == -math.inf


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr_search=[]", "lr_search=[]"),
        ("lr_search=[0.1,-1]", "lr_search="),
        ("mcem.target_accept=1.5", "mcem.target_accept=1.5"),
        ("mcem.leapfrog_steps=0", "mcem.leapfrog_steps=0"),
    ],
)
def test_paper_settings_refuse_bad_values(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        run_training(tiny_cfg("method=mcem", override))
