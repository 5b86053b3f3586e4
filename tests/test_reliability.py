"""Faults a long run must survive: SIGKILL, SIGINT/SIGTERM, NaN/Inf, damaged checkpoints,
a finished run in the way, another process in the same run directory, and bad data files.

"The same numbers" is bit-for-bit: metrics without wall-clock fields, and every tensor and
number of the final checkpoint (model, optimiser, RNG states, position).
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae.methods
from pyro_vae.cli import main
from pyro_vae.config import compose_config, instantiate, run_training
from pyro_vae.data import Minibatches
from pyro_vae.errors import CheckpointError, NonFiniteError, RunDirError, TrainingError
from pyro_vae.optim import guarded_step
from pyro_vae.training import Checkpoints, RunDir, Trainer

from .conftest import bars_dataset, tiny_overrides

# Runs `pyro-vae` with every step slowed down, so that a test can act mid-training (the
# numbers are untouched); with PAUSE_IN_CHECKPOINT=n the n-th write of last.pt stops
# between its two renames (the old file already moved to last.prev.pt, no last.pt) and
# touches $MARKER: the worst moment for a kill.
DRIVER = r"""
import os, sys, time
from pathlib import Path

import pyro_vae.methods

step = pyro_vae.methods.AEVB.step
def slow_step(self, x, idx):
    time.sleep(0.05)
    return step(self, x, idx)
pyro_vae.methods.AEVB.step = slow_step

if os.environ.get("PAUSE_IN_CHECKPOINT"):
    replace, writes = os.replace, []
    def paused_replace(src, dst):
        if Path(dst).name == "last.pt":
            writes.append(dst)
            if len(writes) == int(os.environ["PAUSE_IN_CHECKPOINT"]):
                Path(os.environ["MARKER"]).touch()
                time.sleep(600)
        replace(src, dst)
    os.replace = paused_replace

from pyro_vae.cli import main
sys.exit(main(sys.argv[1:]))
"""

# 180 training points in batches of 20: 9 steps per epoch, 27 in all. Checkpoints every 4
# steps fall mid-epoch (4, 8, 12, ... are no multiples of 9); none at epoch ends but the last.
KILLABLE = ("epochs=3", "checkpoint_every_steps=4", "checkpoint_every=100")


def numbers(rows):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def assert_same(a, b, where="checkpoint"):
    """Equal nested states: tensors bit-for-bit, everything but wall-clock time exactly."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k != "train_seconds":
                assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


def assert_same_run(reference: Path, resumed: Path):
    ref, res = RunDir(reference), RunDir(resumed)
    assert res.is_finished()
    assert numbers(ref.metrics()) == numbers(res.metrics())
    assert_same(ref.load_checkpoint(), res.load_checkpoint())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with (read, never written)."""
    d = tmp_path_factory.mktemp("reference")
    np.save(d / "bars.npy", bars_dataset())
    run_training(compose_config(tiny_overrides(d / "bars.npy", d / "run", "epochs=3")))
    return d / "run"


def start_driver(bars_path, run_dir, **env):
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, "train", *tiny_overrides(bars_path, run_dir, *KILLABLE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before {path} appeared:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def library_log(caplog, monkeypatch):
    """The package's log records. cli.main (run by earlier tests in this process) sends them
    to its own stderr handler and stops their propagation to the root logger, where caplog
    listens: let them through again for this test."""
    monkeypatch.setattr(logging.getLogger("pyro_vae"), "propagate", True)
    caplog.set_level(logging.INFO, logger="pyro_vae")
    return caplog


def resume(run_dir, capsys, *extra):
    assert main(["train", f"run_dir={run_dir}", "resume=true", *extra]) == 0
    return capsys.readouterr().err


# --- checkpoint schedule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "epochs", "steps"),
    [
        ("checkpoint_every_steps=4", 2, [4, 8, 9, 12, 16, 18]),
        ("checkpoint_every_seconds=1e-9", 1, list(range(1, 10))),
        ("checkpoint_every=2", 2, [18]),
    ],
)
def test_checkpoints_within_and_between_epochs(tiny_cfg, monkeypatch, interval, epochs, steps):
    written = []
    save = RunDir.save_checkpoint

    def recording_save(self, state, name="last.pt"):
        if name == "last.pt":
            written.append(state["position"]["step"])
        return save(self, state, name)

    monkeypatch.setattr(RunDir, "save_checkpoint", recording_save)
    run_training(tiny_cfg(f"epochs={epochs}", interval))
    assert written == steps  # 9 steps per epoch; epoch ends are checkpointed after their metrics


# --- SIGKILL, SIGINT, SIGTERM ----------------------------------------------------------------


def test_sigkill_mid_training_then_resume_is_bit_identical(bars_path, tmp_path, reference, capsys):
    run_dir = tmp_path / "killed"
    proc = start_driver(bars_path, run_dir)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    run = RunDir(run_dir)
    assert run.summary()["status"] == "running"  # what a kill leaves: no chance to say more
    assert all(json.loads(line) for line in run.metrics_path.read_text().splitlines())
    position = run.load_checkpoint()["position"]
    assert position["step"] % 4 == 0 and 0 < position["batch"] < 9  # resumes mid-epoch
    err = resume(run_dir, capsys, "progress=false")
    assert f"at step {position['step']} " in err
    assert_same_run(reference, run_dir)


def test_sigkill_inside_a_checkpoint_write_resumes_from_the_previous_one(
    bars_path, tmp_path, reference, capsys
):
    run_dir, marker = tmp_path / "killed", tmp_path / "paused"
    proc = start_driver(bars_path, run_dir, PAUSE_IN_CHECKPOINT="2", MARKER=str(marker))
    wait_for(marker, proc)
    proc.kill()
    proc.wait(timeout=30)
    checkpoints = run_dir / "checkpoints"
    assert not (checkpoints / "last.pt").exists()  # killed between the two renames
    assert (checkpoints / "last.prev.pt").exists() and list(checkpoints.glob(".last.pt.*.tmp"))
    err = resume(run_dir, capsys, "progress=false")
    assert "resuming from" in err and "last.prev.pt" in err and "at step 4 " in err
    assert not list(checkpoints.glob(".*.tmp"))  # the half-renamed write is cleaned up
    assert_same_run(reference, run_dir)


def test_sigint_saves_a_checkpoint_says_how_to_resume_and_exits_130(
    bars_path, tmp_path, reference, capsys
):
    run_dir = tmp_path / "interrupted"
    proc = start_driver(bars_path, run_dir)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"pyro-vae train run_dir={run_dir} resume=true" in err
    run = RunDir(run_dir)
    summary, position = run.summary(), run.load_checkpoint()["position"]
    assert summary["status"] == "interrupted"
    assert (
        summary["step"] == position["step"] and f"SIGINT: stopped at step {position['step']}" in err
    )
    resume(run_dir, capsys, "progress=false")
    assert_same_run(reference, run_dir)


def raise_signal_at_step(monkeypatch, step_number, *signals):
    """Deliver real signals to this process from inside the given step."""
    step, calls = pyro_vae.methods.AEVB.step, []

    def signalling_step(self, x, idx):
        calls.append(1)
        if len(calls) == step_number:
            for s in signals:
                signal.raise_signal(s)
        return step(self, x, idx)

    monkeypatch.setattr(pyro_vae.methods.AEVB, "step", signalling_step)


def test_sigterm_stops_after_the_step_with_exit_code_143(
    bars_path, tmp_path, reference, monkeypatch, capsys
):
    run_dir = tmp_path / "terminated"
    handler = signal.getsignal(signal.SIGTERM)
    raise_signal_at_step(monkeypatch, 5, signal.SIGTERM)
    assert main(["train", *tiny_overrides(bars_path, run_dir, "epochs=3")]) == 143
    assert "SIGTERM: stopped at step 5" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == handler  # put back after training
    assert RunDir(run_dir).load_checkpoint()["position"]["step"] == 5
    monkeypatch.undo()
    resume(run_dir, capsys)
    assert_same_run(reference, run_dir)


def test_a_second_sigint_stops_at_once_and_keeps_the_last_checkpoint(
    bars_path, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "aborted"
    raise_signal_at_step(monkeypatch, 12, signal.SIGINT, signal.SIGINT)
    assert main(["train", *tiny_overrides(bars_path, run_dir, "epochs=3")]) == 130
    assert "stopped at once; resume from its last checkpoint (step 9)" in capsys.readouterr().err
    run = RunDir(run_dir)
    assert run.summary()["status"] == "interrupted"
    assert run.load_checkpoint()["position"]["step"] == 9  # not the half-done step 12


# --- NaN / Inf --------------------------------------------------------------------------------


def poison_batch(monkeypatch, batch_number):
    """Make one minibatch NaN, as corrupted data or an overflow upstream would."""
    epoch, seen = Minibatches.epoch, []

    def poisoned(self, *args, **kwargs):
        for idx, x in epoch(self, *args, **kwargs):
            seen.append(1)
            yield idx, (torch.full_like(x, float("nan")) if len(seen) == batch_number else x)

    monkeypatch.setattr(Minibatches, "epoch", poisoned)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_loss_stops_the_run_before_the_parameters_change(tiny_cfg, tmp_path, monkeypatch):
    poison_batch(monkeypatch, 7)
    experiment = instantiate(tiny_cfg("checkpoint_every_steps=1"))
    with pytest.raises(TrainingError) as raised:
        experiment.train(tmp_path / "run")
    message = str(raised.value)
    assert "non-finite loss nan at step 7 (method=aevb, estimator=trace_elbo)" in message
    assert "last finite loss" in message and "at step 6" in message
    assert "last good checkpoint (step 6)" in message and "skip_nonfinite=true" in message
    saved = RunDir(tmp_path / "run").load_checkpoint()
    assert saved["position"]["step"] == 6
    assert_same(saved["model"], experiment.vae.state_dict(), "model")
    assert_same(saved["method"], experiment.method.state_dict(), "optimiser")


def test_nan_gradient_with_a_finite_loss_is_caught_before_the_optimiser(tiny_cfg, tmp_path):
    experiment = instantiate(tiny_cfg())
    before = {k: v.clone() for k, v in experiment.vae.state_dict().items()}
    weight = next(experiment.vae.decoder.parameters())
    weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(
        TrainingError, match=r"non-finite gradient \(global norm (nan|inf)\) at step 1"
    ):
        experiment.train(tmp_path / "run")
    assert_same(before, experiment.vae.state_dict(), "model")
    assert experiment.method.state_dict()["optimizer"]["state"] == {}  # Adam never stepped


def test_non_finite_parameters_never_replace_the_last_good_checkpoint(tiny_cfg, tmp_path):
    experiment = instantiate(tiny_cfg())
    data, settings = experiment.data, experiment.cfg
    batches = Minibatches(
        data.train, settings["batch_size"], seed=settings["seed"], binarize=data.train_binarize
    )
    trainer = Trainer(experiment.method, batches, data.test)
    checkpoints = Checkpoints(RunDir(tmp_path / "run"))
    checkpoints.save(trainer)
    with torch.no_grad():
        next(experiment.vae.parameters())[0, 0] = float("inf")  # as an overflowing update would
    trainer.position.step = 5
    with pytest.raises(TrainingError, match=r"non-finite parameters after step 5 .*\(step 0\)"):
        checkpoints.save(trainer)
    assert RunDir(tmp_path / "run").load_checkpoint()["position"]["step"] == 0


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_nan_run_is_marked_failed_and_the_cli_says_why(bars_path, tmp_path, monkeypatch, capsys):
    poison_batch(monkeypatch, 12)
    run_dir = tmp_path / "run"
    assert main(["train", *tiny_overrides(bars_path, run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: non-finite loss nan at step 12") and "Traceback" not in err
    run = RunDir(run_dir)
    assert run.summary()["status"] == "failed" and "step 12" in run.summary()["error"]
    assert run.load_checkpoint()["position"]["step"] == 9  # the epoch-1 checkpoint is kept


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_skip_nonfinite_skips_and_counts(tiny_cfg, tmp_path, monkeypatch, library_log):
    poison_batch(monkeypatch, 3)
    summary = run_training(tiny_cfg("skip_nonfinite=true", "epochs=1"))
    warnings = [r.getMessage() for r in library_log.records if r.levelno == logging.WARNING]
    assert warnings == ["skipped step 3 (loss nan); 1 skipped so far"]
    rows = RunDir(tmp_path / "run").metrics()
    assert summary["status"] == "finished" and summary["skipped_steps"] == 1
    assert rows[0]["skipped_steps"] == 1
    assert np.isfinite(rows[0]["train_elbo"])  # the bad step is not averaged
    assert summary["steps"] == 9  # the poisoned batch was consumed, not retried


def test_clip_grad_norm_rescales_the_gradient():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    p.grad = torch.tensor([3.0, 4.0])  # norm 5
    guarded_step(opt, clip_grad_norm=0.5)
    assert torch.allclose(p.detach(), torch.tensor([-0.3, -0.4]))  # norm 0.5
    p.grad = torch.tensor([float("nan"), 1.0])
    with pytest.raises(NonFiniteError, match="gradient"):
        guarded_step(opt, clip_grad_norm=0.5)
    assert torch.allclose(p.detach(), torch.tensor([-0.3, -0.4]))


def test_clip_grad_norm_from_the_config_changes_training(tiny_cfg, tmp_path):
    free = run_training(tiny_cfg("epochs=1", run_dir=tmp_path / "free"))
    clipped = run_training(tiny_cfg("epochs=1", "clip_grad_norm=1e-3", run_dir=tmp_path / "c"))
    assert clipped["test_elbo"] != free["test_elbo"]


# --- damaged checkpoints ----------------------------------------------------------------------


def flip_a_byte_inside_a_tensor(path: Path) -> None:
    """A bit error torch.load does not notice: a changed weight of the decoder."""
    weight = torch.load(path, weights_only=False)["model"]["decoder.logits.weight"]
    data = bytearray(path.read_bytes())
    at = data.find(weight.numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def two_epochs(reference):
    """The reference's first two epochs: last.pt after epoch 2, last.prev.pt after epoch 1."""
    run_dir = reference.parent / "two_epochs"
    cfg = compose_config(tiny_overrides(reference.parent / "bars.npy", run_dir, "epochs=2"))
    run_training(cfg)
    return run_dir


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_last_checkpoint_is_named_and_the_previous_one_resumes(
    two_epochs, tmp_path, reference, damage, capsys
):
    run = RunDir(shutil.copytree(two_epochs, tmp_path / "run"))
    last = run.checkpoint_dir / "last.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        flip_a_byte_inside_a_tensor(last)
    expected = "truncated or corrupted" if damage == "truncate" else "fail the SHA-256"
    with pytest.raises(CheckpointError, match=expected) as raised:
        run.load_checkpoint()
    assert str(last) in str(raised.value) and "checkpoint=last.prev.pt" in str(raised.value)
    assert main(["evaluate", str(run.path)]) == 2
    assert str(last) in capsys.readouterr().err

    err = resume(run.path, capsys, "epochs=3")
    assert f"resuming from {run.checkpoint_dir / 'last.prev.pt'}" in err
    assert_same_run(reference, run.path)  # resumed from epoch 1, ends like the reference
    assert (run.checkpoint_dir / "last.pt.corrupt").is_file()  # kept, not deleted


def test_no_good_checkpoint_is_an_error_naming_the_file(two_epochs, tmp_path, capsys):
    run = RunDir(shutil.copytree(two_epochs, tmp_path / "run"))
    for name in ("last.pt", "last.prev.pt"):
        (run.checkpoint_dir / name).write_bytes(b"not a checkpoint")
    assert main(["train", f"run_dir={run.path}", "resume=true", "epochs=3"]) == 2
    assert f"{run.checkpoint_dir / 'last.prev.pt'} is truncated or corrupted" in (
        capsys.readouterr().err
    )


# --- run directories --------------------------------------------------------------------------


def test_a_sweep_over_finished_runs_changes_none_of_their_files(bars_path, tmp_path, capsys):
    args = tiny_overrides(bars_path, tmp_path / "sweep", "latent_dim=1,2", "epochs=1")
    sweep = ["train", "-m", *args]
    assert main(sweep) == 0
    runs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    RunDir(runs[0]).update_summary(test_log_likelihood=-9.5)  # as `pyro-vae evaluate` adds
    files = {p: p.read_bytes() for p in (tmp_path / "sweep").rglob("*") if p.is_file()}
    files.pop(tmp_path / "sweep" / "multirun.yaml")  # Hydra's record of the sweep itself
    capsys.readouterr()
    assert main(sweep) == 0
    assert main([*sweep, "resume=true"]) == 0  # continuing a sweep leaves finished runs be
    assert capsys.readouterr().err.count("already holds a finished run") == 4
    assert all(p.read_bytes() == data for p, data in files.items())


TAKE_LOCK = "import sys; from filelock import FileLock; FileLock(sys.argv[1], timeout=0).acquire()"


def another_process_takes(lock: Path) -> bool:
    probe = subprocess.run([sys.executable, "-c", TAKE_LOCK, str(lock)], capture_output=True)
    return probe.returncode == 0


def test_a_run_directory_in_use_is_refused(tiny_cfg, tmp_path):
    run = RunDir(tmp_path / "run")
    lock = tmp_path / "run" / ".lock"
    with run.lock():
        with pytest.raises(RunDirError, match="in use by another pyro-vae process"):
            run_training(tiny_cfg())
        assert not another_process_takes(lock)
    run_training(tiny_cfg("epochs=1"))  # free again once released
    # The empty .lock file stays (filelock's design); released, another process takes it.
    assert another_process_takes(lock)


def test_a_run_killed_before_its_first_checkpoint_restarts_with_its_own_config(
    bars_path, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    run_training(compose_config(tiny_overrides(bars_path, run_dir, "epochs=1", "latent_dim=3")))
    run = RunDir(run_dir)
    rows = run.metrics()
    for p in run.checkpoint_dir.iterdir():
        p.unlink()  # as if killed after the metrics line and before the checkpoint
    run.update_summary(status="running")
    err = resume(run_dir, capsys, "progress=false")  # no latent_dim given: the run's own
    assert "has no checkpoint yet: training from the start" in err
    assert run.config()["latent_dim"] == 3
    assert numbers(run.metrics()) == numbers(rows)  # the stale line is not duplicated


# --- bad data files, from the command line -----------------------------------------------------


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("vector.npy", np.zeros(50), "expected [N, D] or [N, H, W] data, got shape (50,)"),
        ("nan.npy", np.where(np.eye(50, 4) > 0, np.nan, 0.5), "4 of 200 values are NaN or Inf"),
        ("big.npy", np.full((50, 4), 2.5), "needs values in [0, 1]"),
        ("empty.npy", b"", "could not be read"),
        ("garbage.npz", b"PK\x03\x04 not really a zip", "could not be read"),
        ("short.npy", None, "could not be read"),
    ],
)
def test_bad_data_files_are_clear_errors(tmp_path, capsys, name, content, message):
    if content is None:  # a .npy cut short, as by an interrupted copy
        full = write(tmp_path / "full.npy", np.random.rand(50, 4)).read_bytes()
        content = full[: len(full) // 2]
    path = write(tmp_path / name, content)
    run_dir = tmp_path / "run"
    assert main(["train", *tiny_overrides(path, run_dir, "batch_size=5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and message in err
    assert "Traceback" not in err
    assert not run_dir.exists()


def test_a_data_file_with_a_wrong_checksum_is_refused(tmp_path, capsys):
    face = tmp_path / "data" / "FreyFace" / "frey_rawface.mat"
    face.parent.mkdir(parents=True)
    face.write_bytes(b"not the real file")
    args = ["dataset=frey_face", f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert str(face) in err and "does not match its known md5" in err
    assert face.read_bytes() == b"not the real file"  # left alone for the user to inspect


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_a_runs_files_get_the_permissions_of_the_users_umask(umask, mode, tiny_cfg, tmp_path):
    # Written atomically through a private temporary file, they still end up as open()
    # would have made them: readable by the group in a shared run directory where the
    # umask allows it.
    previous = os.umask(umask)
    try:
        run_training(tiny_cfg("epochs=1"))
    finally:
        os.umask(previous)
    run = tmp_path / "run"
    files = [run / n for n in ("config.yaml", "summary.json", "metrics.jsonl")]
    files.append(run / "checkpoints" / "last.pt")
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: mode for p in files}
