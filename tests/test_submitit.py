"""Sweeps through Hydra's Submitit launcher (the ``[slurm]`` extra; docs/cluster.md).

``hydra/launcher=submitit_local`` runs every run of a sweep as submitit runs a job on a
cluster: a pickled call, in a fresh ``python -m submitit.core._submit`` process (started
here by a local controller process, there by ``srun``), under submitit's signal handlers,
which requeue a job on ``SIGUSR2``. These tests run real jobs; ``submitit_slurm`` is
followed up to its batch script (``sbatch`` and ``srun`` are stand-ins that only record it).
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyro_vae.cli import main
from pyro_vae.compare import find_runs
from pyro_vae.config import run_training
from pyro_vae.training import RunDir

from . import test_reliability
from .conftest import tiny_overrides
from .test_reliability import KILLABLE, assert_same_run

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [slurm] extra")

#: The uninterrupted run (module-scoped) that interrupted jobs must end up equal to.
reference = test_reliability.reference
submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")  # submitit's, which pickles the jobs

LOCAL = "hydra/launcher=submitit_local"


def signalling_run_training(cfg, run_dir, overrides):
    """run_training as a job runs it here: every step 0.05 s slower and, at step
    $SIGNAL_AT, $SIGNAL sent once ($MARKER records it) to the job's controller (as a
    scheduler signals a job) or to the job's own process (as SLURM's --signal does)."""
    import pyro_vae.methods

    step, calls, marker = pyro_vae.methods.AEVB.step, [], Path(os.environ["MARKER"])

    def signalling_step(self, x, idx):
        calls.append(1)
        time.sleep(0.05)
        if len(calls) == int(os.environ["SIGNAL_AT"]) and not marker.exists():
            marker.touch()
            if os.environ["SIGNAL_TO"] == "controller":  # which forwards it to this process
                os.kill(os.getppid(), getattr(signal, os.environ["SIGNAL"]))
                time.sleep(1.0)
            else:
                os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))
        return step(self, x, idx)

    pyro_vae.methods.AEVB.step = signalling_step
    return run_training(cfg, run_dir, overrides)


@pytest.fixture
def signalling_jobs(monkeypatch, tmp_path):
    """Arms the jobs of `pyro-vae train` (run in this process) to send a signal at step 6:
    this module's functions travel to the jobs by value (cloudpickle); the numbers are those
    of run_training."""

    def arm(signal_name: str, to: str) -> Path:
        marker = tmp_path / "signalled"
        for key, value in ("SIGNAL", signal_name), ("SIGNAL_TO", to), ("SIGNAL_AT", "6"):
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("MARKER", str(marker))
        monkeypatch.setattr("pyro_vae.config.run_training", signalling_run_training)
        # A job killed before it wrote its result leaves the command waiting 15 s for it
        # (for a slow shared filesystem); 1 s here.
        monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)
        return marker

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield arm
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def sweep_overrides(data_path, run_dir, *extra: str) -> list[str]:
    """tiny_overrides without its latent_dim, which the sweeps here choose."""
    return [o for o in tiny_overrides(data_path, run_dir, *extra) if o != "latent_dim=2"]


def job_logs(sweep: Path, suffix: str) -> str:
    """What the sweep's submitit jobs wrote (stdout: .out, stderr: .err)."""
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").glob(f"*/*_log.{suffix}")))


def test_a_submitit_local_sweep_runs_each_run_as_a_job_and_compare_reads_them(
    bars_path, tmp_path, capsys
):
    # ${now:...} in run_dir is resolved once, by the command: the jobs start later, but
    # write into the same sweep directory.
    args = sweep_overrides(bars_path, tmp_path / "sweep" / "${now:%H-%M-%S-%f}", "epochs=1")
    assert main(["train", "-m", LOCAL, *args, "latent_dim=2,3"]) == 0
    (root,) = (tmp_path / "sweep").iterdir()
    runs = find_runs([str(root)])
    assert len(runs) == 2 and all(RunDir(r).is_finished() for r in runs)
    configs = [RunDir(r).config() for r in runs]
    assert sorted(c["latent_dim"] for c in configs) == [2, 3]
    assert {c["epochs"] for c in configs} == {1}
    # The names a basic or joblib sweep gives: the launcher is not part of them.
    for run, config in zip(runs, configs, strict=True):
        assert run.name.endswith(f"latent_dim={config['latent_dim']},lr=0.01,plots=False")
    # One submitit folder per job, in the sweep directory (hydra.launcher.submitit_folder),
    # with the job's result and its own output: the run's report line.
    assert len(list((root / ".submitit").glob("*/*_result.pkl"))) == 2
    out = job_logs(root, "out")
    assert all(f"{r}: finished, test ELBO" in out for r in runs)
    assert "Job completed successfully" in out
    capsys.readouterr()
    assert main(["compare", str(root), f"out={tmp_path / 'compare.png'}"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["run", "latent_dim"] and len(table) == 1 + 2 + 1


def test_sigterm_to_a_job_checkpoints_and_the_command_with_resume_true_continues_it(
    bars_path, tmp_path, reference, signalling_jobs, monkeypatch, capsys
):
    args = [LOCAL, *tiny_overrides(bars_path, tmp_path / "sweep", *KILLABLE)]
    marker = signalling_jobs("SIGTERM", to="controller")
    # The job stops between two steps and exits without a result for the command, which
    # says so (Hydra's report of a failed job; exit code 1).
    with pytest.raises(SystemExit) as exited:
        main(["train", "-m", *args])
    assert marker.exists() and exited.value.code == 1
    assert "has not produced any output" in capsys.readouterr().err
    (run,) = find_runs([str(tmp_path / "sweep")])
    summary, position = RunDir(run).summary(), RunDir(run).load_checkpoint()["position"]
    assert summary["status"] == "interrupted" and summary["step"] == position["step"] < 27
    err = job_logs(tmp_path / "sweep", "err")
    assert f"SIGTERM: stopped at step {position['step']}; checkpoint saved" in err
    assert f"pyro-vae train run_dir={run} resume=true" in err
    # The same command with resume=true: new jobs, and this run continues where it stopped.
    monkeypatch.undo()
    assert main(["train", "-m", *args, "resume=true"]) == 0
    assert_same_run(reference, run)


def test_submitit_requeues_a_signalled_job_and_resume_true_continues_the_run(
    bars_path, tmp_path, reference, signalling_jobs
):
    # SIGUSR2 is submitit's requeue signal (SLURM sends it before the time limit with
    # --signal=USR2@signal_delay_s): its handler resubmits the job with the same arguments
    # and exits the process at once, mid-step. With resume=true the new job continues from
    # the last checkpoint (step 4), and the sweep ends as if nothing happened.
    args = [LOCAL, *tiny_overrides(bars_path, tmp_path / "sweep", *KILLABLE), "resume=true"]
    marker = signalling_jobs("SIGUSR2", to="job")
    assert main(["train", "-m", *args]) == 0 and marker.exists()
    log = job_logs(tmp_path / "sweep", "out")
    assert "this job is preempted" in job_logs(tmp_path / "sweep", "err")
    assert "Requeued job" in log and log.count("Starting with JobEnvironment") == 2
    (run,) = find_runs([str(tmp_path / "sweep")])
    assert_same_run(reference, run)


FAKE_SBATCH = """#!/bin/sh
cp "$1" "$SBATCH_SCRIPT"
echo "Submitted batch job 4242"
"""


def test_submitit_slurm_submits_one_array_job_with_the_documented_settings(bars_path, tmp_path):
    """docs/cluster.md's settings, as far as SLURM's batch script and the pickled jobs."""
    bin_dir, script, root = tmp_path / "bin", tmp_path / "sbatch.sh", tmp_path / "sweep"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    launcher = [
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=1",
        "hydra.launcher.cpus_per_task=4",
        "hydra.launcher.mem_gb=16",
        "hydra.launcher.timeout_min=240",
        "hydra.launcher.array_parallelism=2",
        "hydra.launcher.max_num_timeout=3",
    ]
    # device=cuda is the jobs' to check: this login node may have no GPU.
    args = [*launcher, *sweep_overrides(bars_path, root, "device=cuda", "resume=true")]
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SBATCH_SCRIPT": str(script),
    }
    driver = subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "train", "-m", *args, "latent_dim=2,3,4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    pickles = [root / ".submitit" / f"4242_{i}" / f"4242_{i}_submitted.pkl" for i in range(3)]
    try:
        deadline = time.monotonic() + 120
        while not all(p.exists() for p in pickles):
            assert driver.poll() is None, driver.stderr.read()
            assert time.monotonic() < deadline, "no job was submitted within 120 s"
            time.sleep(0.05)
    finally:  # it would wait for the jobs (asking a sacct that is not there)
        driver.kill()
        driver.communicate()
    lines = script.read_text().splitlines()
    for line in (
        "--array=0-2%2",
        "--partition=gpu",
        "--gpus-per-node=1",
        "--cpus-per-task=4",
        "--mem=16GB",
        "--time=240",
        "--signal=USR2@120",
        "--job-name=pyro-vae",  # hydra.job.name, the launcher's default
        f"--output={root}/.submitit/%A_%a/%A_%a_0_log.out",
    ):
        assert f"#SBATCH {line}" in lines
    # The jobs run this interpreter (a cluster's nodes must see the same path), in the
    # directory sbatch is called from (no --chdir): relative paths mean the same there.
    srun = next(line for line in lines if line.startswith("srun "))
    job = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {root}/.submitit/%j"
    assert srun.endswith(job) and "--chdir" not in script.read_text()
    # Each job: one run's overrides, 240 minutes, and 3 requeues on a time-out.
    delayed = [submitit.helpers.DelayedSubmission.load(p) for p in pickles]
    assert [re.findall(r"latent_dim=\d", " ".join(d.args[0])) for d in delayed] == [
        ["latent_dim=2"],
        ["latent_dim=3"],
        ["latent_dim=4"],
    ]
    assert {(d._timeout_min, d._timeout_countdown) for d in delayed} == {(240, 3)}
