"""Step-size schedules (``lr_schedule=``): each one's formula, the lr recorded per epoch, the
step-size search before them, exact resume mid-schedule, refusals, and ``none`` changing
nothing."""

import functools
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import ConfigError, compose_config, instantiate, run_training
from pyro_vae.errors import ArgumentError
from pyro_vae.optim import IWAE_EPOCHS, LR_SCHEDULES, LRSchedule, iwae_factor
from pyro_vae.training import RunDir

from .conftest import bars_dataset, tiny_overrides
from .test_reliability import assert_same, assert_same_run, numbers, wait_for

LR = 0.01


def lrs_of(schedule: LRSchedule | None, epochs: int, run_epochs: int = 10, optimizers=1):
    """The step size of each of ``epochs`` epochs, and the optimisers it was built over."""
    opts = [
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=LR) for _ in range(optimizers)
    ]
    if schedule is not None:
        schedule.start(opts, run_epochs)
    out = []
    for _ in range(epochs):
        out.append(opts[0].param_groups[0]["lr"])
        for opt in opts:  # the epoch's steps (a scheduler expects one before it steps)
            opt.step()
        if schedule is not None:
            schedule.step()
    return out, opts


# --- the formulas ------------------------------------------------------------------------------


def test_none_is_no_schedule():
    assert LRSchedule.named("none") is None
    assert lrs_of(LRSchedule.named("none"), 5)[0] == [LR] * 5


def test_exponential_is_lr_times_gamma_to_the_epoch():
    lrs, _ = lrs_of(LRSchedule.named("exponential", gamma=0.7), 30)
    assert lrs == pytest.approx([LR * 0.7**e for e in range(30)], rel=1e-12)


def test_step_multiplies_by_gamma_every_step_epochs():
    lrs, _ = lrs_of(LRSchedule.named("step", gamma=0.5, step_epochs=3), 12)
    assert lrs == pytest.approx([LR * 0.5 ** (e // 3) for e in range(12)], rel=1e-12)
    assert lrs[:3] == [LR] * 3  # exact until the first step


def test_cosine_anneals_to_lr_min_over_the_run_and_stays_there():
    lr_min, run = 1e-4, 10
    lrs, _ = lrs_of(LRSchedule.named("cosine", lr_min=lr_min), 15, run_epochs=run)
    want = [lr_min + (LR - lr_min) * (1 + math.cos(math.pi * e / run)) / 2 for e in range(run)]
    assert lrs[:run] == pytest.approx(want, rel=1e-12)
    assert lrs[run:] == [lr_min] * 5  # a run resumed with more epochs stays at lr_min


def test_iwae_stages_are_3_to_the_i_epochs_at_lr_times_10_to_the_minus_i_over_7():
    starts = [sum(3**j for j in range(i)) for i in range(8)]  # cumulative 3^0 + ... + 3^(i-1)
    assert starts == [0, 1, 4, 13, 40, 121, 364, 1093] and IWAE_EPOCHS == 3280
    stage_of = np.searchsorted(starts, np.arange(IWAE_EPOCHS + 50), side="right") - 1
    lrs, _ = lrs_of(LRSchedule.named("iwae"), IWAE_EPOCHS + 50)
    assert lrs == [LR * 10 ** (-int(i) / 7) for i in stage_of]  # LambdaLR: base * factor, exact
    for i, start in enumerate(starts):
        assert iwae_factor(start) == 10 ** (-i / 7)
        if i:
            assert iwae_factor(start - 1) == 10 ** (-(i - 1) / 7)  # the boundary is exact
    assert lrs[-1] == lrs[IWAE_EPOCHS - 1] == LR * 10**-1  # after the last stage: the last value


def test_iwae_squeezed_into_n_epochs_scales_every_stage_and_ends_at_a_tenth():
    # lr_iwae_epochs=N: stage i ends at epoch (3^(i+1) - 1) / 2 * N / 3280 (exact integers)
    for total in (1, 7, 100, 1000, IWAE_EPOCHS, 2 * IWAE_EPOCHS):
        ends = [(3 ** (i + 1) - 1) / 2 * total / IWAE_EPOCHS for i in range(7)]
        for epoch in range(total + 3):
            stage = sum(epoch >= end for end in ends)
            assert iwae_factor(epoch, total) == 10 ** (-stage / 7), (total, epoch)
        assert iwae_factor(total - 1, total) == 10**-1 or total < 3  # the last stage is reached
    lrs, _ = lrs_of(LRSchedule.named("iwae", iwae_epochs=1000), 1000)
    assert lrs[-1] == LR * 10**-1 and lrs[0] == LR
    assert sorted(lrs, reverse=True) == lrs  # never rises
    # the default is Burda et al.'s own schedule, value for value
    assert [iwae_factor(e, IWAE_EPOCHS) for e in range(3300)] == [
        iwae_factor(e) for e in range(3300)
    ]


def test_every_optimiser_of_the_method_is_scheduled():
    _, opts = lrs_of(LRSchedule.named("step", gamma=0.5, step_epochs=1), 3, optimizers=2)
    assert [o.param_groups[0]["lr"] for o in opts] == [LR * 0.5**3] * 2


# --- runs --------------------------------------------------------------------------------------


def test_the_lr_of_each_epoch_is_in_the_metrics(tiny_cfg, tmp_path):
    run_training(tiny_cfg("lr_schedule=exponential", "lr_gamma=0.5", "method=wake_sleep"))
    rows = RunDir(tmp_path / "run").metrics()
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.005, 0.0025], rel=1e-12)
    state = RunDir(tmp_path / "run").load_checkpoint()
    groups = [g for o in state["method"].values() for g in o["param_groups"]]
    assert [g["lr"] for g in groups] == pytest.approx([0.00125] * 2)  # theta's and phi's
    run_training(tiny_cfg("epochs=2", run_dir=tmp_path / "plain"))
    assert [r["lr"] for r in RunDir(tmp_path / "plain").metrics()] == [0.01, 0.01]


def test_a_run_ending_mid_epoch_keeps_its_epochs_lr(tiny_cfg, tmp_path):
    # 400 samples: epochs 1 and 2 (180 each), then 2 steps of the third: cosine spans 3 epochs.
    run_training(tiny_cfg("num_samples=400", "lr_schedule=cosine"))
    lrs = [r["lr"] for r in RunDir(tmp_path / "run").metrics()]
    assert lrs == pytest.approx([0.01 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)])


def test_the_step_size_search_picks_the_base_lr_that_the_schedule_scales(tiny_cfg, tmp_path):
    run_training(
        tiny_cfg(
            "lr_search=[0.003,0.01]",
            "lr_search_steps=3",
            "lr_schedule=step",
            "lr_step_epochs=1",
            "lr_gamma=0.5",
            "epochs=2",
        )
    )
    run = RunDir(tmp_path / "run")
    chosen = run.summary()["lr"]
    assert chosen in (0.003, 0.01)
    assert [r["lr"] for r in run.metrics()] == [chosen, chosen * 0.5]


def test_a_resumed_run_continues_its_schedule(tiny_cfg, tmp_path):
    sched = ("lr_schedule=step", "lr_step_epochs=1", "lr_gamma=0.5")
    run_training(tiny_cfg("epochs=4", *sched, run_dir=tmp_path / "whole"))
    run_training(tiny_cfg("epochs=2", *sched, run_dir=tmp_path / "parts"))
    run_training(tiny_cfg("epochs=4", "resume=true", *sched, run_dir=tmp_path / "parts"))
    assert_same_run(tmp_path / "whole", tmp_path / "parts")
    assert [r["lr"] for r in RunDir(tmp_path / "parts").metrics()] == [
        0.01 * 0.5**e for e in range(4)
    ]


# Stops the run for good (SIGKILL) right after its n-th checkpoint: at step 4 * n.
KILL_AFTER_CHECKPOINT = r"""
import os, sys, time
from pathlib import Path
from pyro_vae.training import RunDir

save, writes = RunDir.save_checkpoint, []
def save_then_wait(self, state, name="last.pt"):
    path = save(self, state, name)
    if name == "last.pt":
        writes.append(path)
        if len(writes) == int(os.environ["KILL_AFTER"]):
            Path(os.environ["MARKER"]).touch()
            time.sleep(600)
    return path
RunDir.save_checkpoint = save_then_wait

from pyro_vae.cli import main
sys.exit(main(sys.argv[1:]))
"""
STEP_SCHEDULE = ("lr_schedule=step", "lr_step_epochs=1", "lr_gamma=0.5")


def test_sigkill_mid_schedule_then_resume_is_bit_identical(bars_path, tmp_path, capsys):
    reference = tmp_path / "reference"
    run_training(compose_config(tiny_overrides(bars_path, reference, *STEP_SCHEDULE)))
    run_dir, marker = tmp_path / "killed", tmp_path / "checkpointed"
    killable = ("checkpoint_every_steps=4", "checkpoint_every=100", *STEP_SCHEDULE)
    overrides = tiny_overrides(bars_path, run_dir, *killable)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_AFTER_CHECKPOINT, "train", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KILL_AFTER": "3", "MARKER": str(marker)},
    )
    wait_for(marker, proc)
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    state = RunDir(run_dir).load_checkpoint()
    # Step 12 of 9 per epoch: mid-epoch 2, after the schedule's first step.
    assert state["position"]["step"] == 12 and state["position"]["batch"] == 3
    assert state["schedule"]["schedulers"][0]["last_epoch"] == 1
    assert state["method"]["optimizer"]["param_groups"][0]["lr"] == 0.005
    assert main(["train", f"run_dir={run_dir}", "resume=true", "progress=false"]) == 0
    assert "at step 12 " in capsys.readouterr().err
    assert_same_run(reference, run_dir)
    assert [r["lr"] for r in RunDir(run_dir).metrics()] == [0.01, 0.005, 0.0025]


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr_schedule=warmup", "lr_schedule='warmup' is not allowed: expected one of"),
        (
            "lr_schedule=cosin",
            "lr_schedule='cosin' is not allowed: expected one of "
            "['none', 'exponential', 'step', 'cosine', 'iwae'] (did you mean 'cosine'?)",
        ),
        ("lr_gamma=0", "lr_gamma=0.0 is not allowed: expected a number in (0, 1]"),
        ("lr_gamma=1.5", "lr_gamma=1.5 is not allowed: expected a number in (0, 1]"),
        ("lr_step_epochs=0", "lr_step_epochs=0 is not allowed: expected an integer >= 1"),
        ("lr_min=-1", "lr_min=-1.0 is not allowed: expected a finite number >= 0"),
        ("lr_iwae_epochs=0", "lr_iwae_epochs=0 is not allowed: expected an integer >= 1"),
    ],
)
def test_bad_schedule_values_are_refused_by_name(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        instantiate(tiny_cfg(override))


def test_cosine_refuses_an_lr_min_not_below_the_step_size(tiny_cfg):
    with pytest.raises(ConfigError, match=r"lr_min=0.01 is not allowed: .*below lr \(0.01\)"):
        instantiate(tiny_cfg("lr_schedule=cosine", "lr_min=0.01"))
    with pytest.raises(ConfigError, match=r"lr_min=0.005 .*smallest lr_search value \(0.001\)"):
        instantiate(tiny_cfg("lr_schedule=cosine", "lr_min=0.005", "lr_search=[0.001,0.1]"))


def test_the_schedule_keys_are_not_resumable(tiny_cfg):
    for key in ("lr_schedule", "lr_gamma", "lr_step_epochs", "lr_min", "lr_iwae_epochs"):
        assert key not in pyro_vae.config.RESUMABLE_KEYS


@pytest.mark.parametrize(
    "change",
    [
        "lr_schedule=exponential",
        "lr_gamma=0.2",
        "lr_step_epochs=2",
        "lr_min=0.001",
        "lr_iwae_epochs=2",
    ],
)
def test_resume_refuses_a_changed_schedule(tiny_cfg, tmp_path, change):
    run_training(tiny_cfg("epochs=1", "lr_schedule=step"))
    key = change.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}: run has"):
        run_training(tiny_cfg("resume=true", "lr_schedule=step", change), overrides=[change])


# --- the Python API ----------------------------------------------------------------------------


@pytest.fixture
def bars():
    x = torch.tensor(bars_dataset())
    return x[:180], x[180:]


def api_run(bars, run_dir, **kwargs):
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.mlp(x_dim=16, latent_dim=2, hidden_dims=[16])
    train, test = bars
    settings = dict(test=test, epochs=3, batch_size=20, lr=LR, progress=False, plots=False)
    return pyro_vae.train(vae, train, run_dir, **{**settings, **kwargs})


@pytest.mark.parametrize(
    "schedule",
    [
        lambda epoch: 0.5**epoch,
        functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        LRSchedule.from_scheduler(lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)),
        "exponential",
    ],
    ids=["factor", "scheduler-class", "scheduler-factory", "name"],
)
def test_the_python_api_takes_a_name_a_factor_or_a_torch_scheduler(bars, tmp_path, schedule):
    api_run(bars, tmp_path / "run", lr_schedule=schedule, lr_gamma=0.5)
    lrs = [r["lr"] for r in RunDir(tmp_path / "run").metrics()]
    assert lrs == pytest.approx([LR, LR / 2, LR / 4], rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr_schedule": "linear"}, "lr_schedule='linear' is not allowed"),
        ({"lr_schedule": 3}, "lr_schedule=3 is not allowed"),
        ({"lr_schedule": "step", "lr_gamma": 2.0}, "lr_gamma=2.0 is not allowed"),
        ({"lr_schedule": "step", "lr_step_epochs": 0}, "lr_step_epochs=0 is not allowed"),
        ({"lr_schedule": "iwae", "lr_iwae_epochs": 0}, "lr_iwae_epochs=0 is not allowed"),
        ({"lr_schedule": "cosine", "lr_min": 0.1}, "lr_min=0.1 is not allowed"),
    ],
)
def test_the_python_api_refuses_bad_values_by_name(bars, tmp_path, kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        api_run(bars, tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_a_resumed_python_run_refuses_another_schedule(bars, tmp_path):
    api_run(bars, tmp_path / "run", epochs=1, lr_schedule="step")
    with pytest.raises(
        ArgumentError, match="lr_schedule='exponential' is not allowed: expected 'step'"
    ):
        api_run(bars, tmp_path / "run", epochs=2, lr_schedule="exponential", resume=True)
    with pytest.raises(ArgumentError, match="lr_schedule='none' is not allowed: expected 'step'"):
        api_run(bars, tmp_path / "run", epochs=2, resume=True)


def test_lr_schedule_none_changes_no_number(bars, tmp_path):
    api_run(bars, tmp_path / "absent")
    api_run(bars, tmp_path / "none", lr_schedule="none", lr_gamma=0.5, lr_min=1e-3)
    absent, none = RunDir(tmp_path / "absent"), RunDir(tmp_path / "none")
    assert numbers(absent.metrics()) == numbers(none.metrics())
    assert_same(absent.load_checkpoint(), none.load_checkpoint())
    state = none.load_checkpoint()
    assert "schedule" not in state  # the checkpoint of a run without a schedule is as before
    assert "initial_lr" not in state["method"]["optimizer"]["param_groups"][0]


def test_adam_betas_and_eps_from_the_config_reach_torch(tiny_cfg):
    method = instantiate(tiny_cfg("optim.betas=[0.5,0.9]", "optim.eps=1e-6")).method
    group = method.optimizer.param_groups[0]
    assert isinstance(method.optimizer, torch.optim.Adam)
    assert group["betas"] == (0.5, 0.9) and group["eps"] == 1e-6
    default = instantiate(tiny_cfg()).method.optimizer.param_groups[0]
    assert default["betas"] == (0.9, 0.999) and default["eps"] == 1e-8


def test_every_schedule_name_is_documented():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # the README is the front page; the keys are documented on the docs site's pages
    readme = "\n".join(p.read_text() for p in [root / "README.md", *root.glob("docs/*.md")])
    help_text = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--help"], capture_output=True, text=True
    ).stdout
    for name in LR_SCHEDULES:
        assert name in help_text and f"`{name}`" in readme
    for key in ("lr_schedule", "lr_gamma", "lr_step_epochs", "lr_min"):
        assert key in help_text and f"`{key}`" in readme


# --- the iwae presets --------------------------------------------------------------------------


def test_the_iwae_preset_is_burda_et_al_section_5():
    cfg = compose_config(["+experiment=iwae"])
    assert (cfg.hidden_dims, cfg.latent_dim, cfg.activation) == ([200, 200], 50, "tanh")
    assert cfg.optim.name == "adam" and list(cfg.optim.betas) == [0.9, 0.999]
    assert (cfg.optim.eps, cfg.lr, cfg.batch_size) == (1e-4, 1e-3, 20)
    assert (cfg.lr_schedule, cfg.epochs, cfg.lr_iwae_epochs) == ("iwae", IWAE_EPOCHS, 3280)
    assert (cfg.dataset.name, cfg.dataset.binarize, cfg.dataset.train_size) == (
        "mnist",
        "dynamic",
        None,
    )
    assert cfg.eval_num_samples == 5000
    cpu = compose_config(["+experiment=iwae_cpu"])
    assert (cpu.batch_size, cpu.fast) == (100, True)
    assert {k: v for k, v in cpu.items() if k not in ("batch_size", "fast")} == {
        k: v for k, v in cfg.items() if k not in ("batch_size", "fast")
    }
    squeezed = compose_config(["+experiment=iwae_cpu", "epochs=100", "lr_iwae_epochs=100"])
    assert (squeezed.epochs, squeezed.lr_iwae_epochs) == (100, 100)


def test_evaluating_an_earlier_snapshot_leaves_the_runs_own_numbers(tiny_cfg, tmp_path):
    run_training(tiny_cfg("epochs=3", "snapshots=all"))
    run = RunDir(tmp_path / "run")
    final = pyro_vae.evaluate_run(run.path, num_samples=3)
    early = pyro_vae.evaluate_run(run.path, num_samples=3, checkpoint="epoch_0001.pt")
    after = run.summary()
    assert after["test_elbo"] == final["test_elbo"] != early["test_elbo"]
    assert after["evaluated_checkpoint"] == "last.pt"
    assert after["test_log_likelihood"] == final["test_log_likelihood"]
    assert after["evaluations"] == {"epoch_0001.pt": early}
    # the run's report, when its command is given again, is still its final model's
    assert run_training(tiny_cfg("epochs=3", "snapshots=all"))["test_elbo"] == final["test_elbo"]


def test_a_run_kept_with_its_last_snapshot_only_still_evaluates(tiny_cfg, tmp_path):
    run_training(tiny_cfg("epochs=2"))
    run = RunDir(tmp_path / "run")
    before = pyro_vae.evaluate_run(run.path, num_samples=3)
    for name in ("last.pt", "last.prev.pt", "epoch_0000.pt", "epoch_0001.pt"):
        (run.checkpoint_dir / name).unlink(missing_ok=True)
    assert [e for e, _ in run.snapshots()] == [2]
    after = pyro_vae.evaluate_run(run.path, num_samples=3)
    assert after["evaluated_checkpoint"] == "epoch_0002.pt"
    assert after["test_log_likelihood"] == before["test_log_likelihood"]
