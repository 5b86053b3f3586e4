"""A sweep's failed run fails the command, whichever Hydra launcher ran it: in the
command's own process (``basic``), in joblib's worker processes (the ``[sweep]`` extra) or
as submitit jobs (the ``[slurm]`` extra). The other runs still run; the exit code is the
first failed run's (1: the run failed, 2: it refused a value), and its ``error:`` line
names the run directory."""

import importlib.util

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.compare import find_runs
from pyro_vae.config import check_overrides
from pyro_vae.errors import ConfigError
from pyro_vae.training import RunDir

from .conftest import tiny_overrides

LAUNCHERS = {
    "basic": None,
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
}
#: (the swept key, the value whose run fails, the value whose run finishes, exit code).
#: lr=1e+30 gives a non-finite loss at step 2 (a TrainingError); a missing data file is
#: refused when the run loads it, after the command's checks (a user error).
FAILURES = {
    "training_error": ("lr", "1e+30", "0.01", 1),
    "user_error": ("dataset.path", "missing.npy", "bars.npy", 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_failed_run_fails_the_sweep_and_the_other_runs_still_run(
    launcher, failure, bars_path, tmp_path, monkeypatch, capsys
):
    plugin = LAUNCHERS[launcher]
    if plugin is not None and importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{plugin} is not installed")
    key, bad, good, code = FAILURES[failure]
    monkeypatch.chdir(bars_path.parent)  # dataset.path=bars.npy: relative to the command
    sweep = tmp_path / "sweep"
    args = [o for o in tiny_overrides("bars.npy", sweep, "epochs=1") if not o.startswith(key)]
    launch = [f"hydra/launcher={launcher}"] + (["hydra.launcher.n_jobs=2"] * (launcher == "joblib"))
    assert main(["train", "-m", *launch, *args, f"{key}={bad},{good}"]) == code
    err = capsys.readouterr().err
    assert f"error: {sweep}/" in err and f"{key}={bad}" in err.split("error: ", 1)[1]
    runs = {r.name: RunDir(r) for r in find_runs([str(sweep)])}
    (good_name,) = (name for name in runs if f"{key}={good}" in name)
    assert runs[good_name].is_finished()
    failed = good_name.replace(f"{key}={good}", f"{key}={bad}")
    if code == 1:  # the failed run's directory stays, saying so
        assert set(runs) == {good_name, failed}
        assert runs[failed].summary()["status"] == "failed"
    else:  # a refused run leaves no directory behind
        assert set(runs) == {good_name} and not (sweep / failed).exists()


def test_device_cuda_is_left_to_the_jobs_of_a_launcher_that_runs_them_elsewhere(
    bars_path, tmp_path
):
    """A login node often has no GPU: a SLURM sweep's device=cuda is checked by the jobs."""
    args = [*tiny_overrides(bars_path, tmp_path / "sweep"), "device=cuda"]
    check_overrides(["-m", "hydra/launcher=submitit_slurm", *args])
    check_overrides(["-m", "hydra/launcher=my_cluster", *args])  # any non-local launcher
    for local in ([], ["hydra/launcher=basic"], ["hydra/launcher=submitit_local"]):
        if torch.cuda.is_available():
            check_overrides(["-m", *local, *args])
        else:
            with pytest.raises(ConfigError, match="device='cuda' is not allowed"):
                check_overrides(["-m", *local, *args])
