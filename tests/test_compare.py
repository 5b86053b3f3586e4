"""Sweeps (Hydra multirun) and ``pyro-vae compare`` over their run directories."""

import csv

import pytest

from pyro_vae.cli import main
from pyro_vae.compare import compare_runs, find_runs
from pyro_vae.errors import RunDirError
from pyro_vae.training import RunDir

from .conftest import tiny_overrides


@pytest.fixture
def sweep(bars_path, tmp_path):
    """A 2 x 2 grid over latent_dim and method, one Hydra multirun command."""
    root = tmp_path / "sweep"
    args = tiny_overrides(bars_path, root, "latent_dim=1,2", "method=aevb,wake_sleep", "epochs=2")
    assert main(["train", "-m", *args]) == 0
    return root, args


def test_a_sweep_is_one_command_and_finished_runs_are_not_redone(sweep):
    root, args = sweep
    runs = find_runs([str(root)])
    assert len(runs) == 4 and all(RunDir(r).is_finished() for r in runs)
    assert sum("latent_dim=1" in r.name and "method=wake_sleep" in r.name for r in runs) == 1
    before = {r: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs}
    assert main(["train", "-m", *args]) == 0
    assert before == {r: (r / "metrics.jsonl").stat().st_mtime_ns for r in runs}


def test_compare_tables_and_plots_the_runs_that_differ(sweep, tmp_path, capsys):
    root, _ = sweep
    out = tmp_path / "cmp" / "grid.png"
    assert (
        main(["compare", f"{root}/**/*method=aevb*", f"{root}/**/*wake_sleep*", f"out={out}"]) == 0
    )
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    # Only the keys that differ between the runs are shown, then the figures.
    assert header[:3] == ["run", "latent_dim", "method"]
    assert {"train_elbo", "test_elbo", "best_test_elbo", "samples"} <= set(header)
    assert out.is_file()
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["method"] for r in rows} == {"aevb", "wake_sleep"}
    assert all(float(r["test_elbo"]) < 0 for r in rows)
    table, _ = compare_runs([rows[0]["run"]], out)
    assert "latent_dim" not in table.splitlines()[0]  # nothing differs in a single run


def test_compare_refuses_what_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="holds none"):
        find_runs([str(tmp_path / "empty")])
    assert main(["compare", str(tmp_path / "nothing*")]) == 2
    assert "no run directory matches" in capsys.readouterr().err
    assert main(["compare", "out=x.png"]) == 2
