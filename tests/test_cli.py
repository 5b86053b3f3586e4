"""The ``pyro-vae`` command: train through Hydra, evaluate, plot, and refusals."""

import json
import os
import subprocess
import sys

import pytest

from pyro_vae.cli import main
from pyro_vae.training import RunDir

from .conftest import tiny_overrides


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pyro_vae", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_train_evaluate_plot_from_the_command_line(bars_path, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *tiny_overrides(bars_path, run_dir))
    assert proc.returncode == 0, proc.stderr
    assert f"pyro-vae evaluate {run_dir}" in proc.stdout
    assert RunDir(run_dir).is_finished()
    assert not (run_dir / ".hydra").exists()

    assert main(["evaluate", str(run_dir), "num_samples=30"]) == 0
    assert RunDir(run_dir).summary()["importance_samples"] == 30
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "figures" / "manifold.png").is_file()


def test_bad_value_is_refused_before_any_work(bars_path, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *tiny_overrides(bars_path, run_dir, "latent_dim=0"))
    assert proc.returncode == 2
    assert "latent_dim=0" in proc.stderr and "integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_unknown_key_and_unknown_group_choice_are_refused(bars_path, tmp_path):
    proc = run_cli("train", *tiny_overrides(bars_path, tmp_path / "r", "latnet_dim=3"))
    assert proc.returncode != 0 and "latnet_dim" in proc.stderr
    proc = run_cli("train", *tiny_overrides(bars_path, tmp_path / "r", "optim=sgd"))
    assert proc.returncode != 0 and "sgd" in proc.stderr and "adam" in proc.stderr


def test_cfg_job_prints_the_configuration_without_training(tmp_path):
    proc = run_cli("train", "--cfg", "job", "latent_dim=7", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "latent_dim: 7" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_evaluate_and_plot_refuse_bad_arguments(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "K=5"]) == 2
    assert "unknown key 'K'" in capsys.readouterr().err
    assert main(["plot"]) == 2
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "pyro-vae train" in out and "evaluate RUN_DIR" in out


@pytest.mark.parametrize("cmd", ["evaluate", "plot"])
def test_commands_on_a_directory_that_is_not_a_run(tmp_path, capsys, cmd):
    assert main([cmd, str(tmp_path)]) == 2
    assert "config.yaml is missing" in capsys.readouterr().err


def test_summary_is_valid_json_after_cli_train(bars_path, tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli("train", *tiny_overrides(bars_path, run_dir, "epochs=1")).returncode == 0
    json.loads((run_dir / "summary.json").read_text())


def test_a_fractional_epochs_is_refused_before_any_work(bars_path, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *tiny_overrides(bars_path, run_dir, "epochs=1.5")]) == 2
    err = capsys.readouterr().err
    assert err == "error: epochs=1.5 is not allowed: expected an integer >= 0\n"
    assert not run_dir.exists()


def test_a_bug_shows_its_traceback_not_an_error_line(bars_path, tmp_path, monkeypatch, capsys):
    """Only PyroVAEError is a user's error; anything else is a bug, and shows where it is."""

    def bug(*args, **kwargs):
        raise RuntimeError("bug")

    # `pyro-vae train`: Hydra's job runner reports the exception with its traceback.
    monkeypatch.setattr("pyro_vae.config.run_training", bug)
    with pytest.raises(SystemExit) as exited:
        main(["train", *tiny_overrides(bars_path, tmp_path / "run")])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: bug" in err
    assert "error: bug" not in err
    # The other commands let it propagate, for Python to print the traceback.
    monkeypatch.setattr("pyro_vae.runs.evaluate_run", bug)
    with pytest.raises(RuntimeError, match=r"^bug$"):
        main(["evaluate", str(tmp_path / "run")])
    assert "error:" not in capsys.readouterr().err


def test_the_report_of_a_run_shorter_than_one_epoch_counts_its_samples(bars_path, tmp_path, capsys):
    args = tiny_overrides(bars_path, tmp_path / "run", "num_samples=40")
    assert main(["train", *args]) == 0
    report = capsys.readouterr().out.splitlines()[0]
    assert report.endswith("after 40 samples (less than one epoch)")
    assert RunDir(tmp_path / "run").summary()["epochs"] == 0
