"""The tutorial notebooks: committed without outputs, and run by pytest in smoke mode.

pytest runs the notebooks themselves (nbmake: ``--nbmake`` and ``docs/tutorials`` in
pyproject's ``[tool.pytest.ini_options]``); these tests check what running them does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
# The docs site's navigation names these files (mkdocs.yml).
NAMES = [
    "01_paper_vae.ipynb",
    "02_estimator_variance.ipynb",
    "03_priors.ipynb",
    "04_your_own_model.ipynb",
]
# Folders that hold no committed notebook (environments, run outputs, Jupyter's checkpoints).
SKIP = {"runs", "outputs", "multirun", "data", "site", "build", "dist", "node_modules"}


def committed_notebooks() -> list[Path]:
    found = []
    for path in ROOT.rglob("*.ipynb"):
        parts = path.relative_to(ROOT).parts[:-1]
        if not any(p.startswith(".") or p in SKIP or p.endswith(".egg-info") for p in parts):
            found.append(path)
    return sorted(found)


def test_the_tutorials_are_there():
    assert [p.name for p in sorted(TUTORIALS.glob("*.ipynb"))] == NAMES


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        where = f"{path.relative_to(ROOT)}, cell {index}"
        assert cell.get("outputs") == [], f"{where} has outputs: clear them before committing"
        assert cell.get("execution_count") is None, f"{where} has an execution count"


@pytest.mark.parametrize("name", NAMES)
def test_tutorial_reads_smoke_mode_and_uses_the_default_kernel(name):
    nb = json.loads((TUTORIALS / name).read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert 'smoke_test = "CI" in os.environ' in code  # Pyro's convention
    # nbmake starts the kernel the notebook names: python3 is the environment's own.
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


CHECK_NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "check-ci",
            "metadata": {},
            "outputs": [],
            "source": ["import os\n", "assert os.environ['CI'] == 'true', os.environ.get('CI')"],
        }
    ],
    "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.mark.slow
def test_pytest_runs_the_notebooks_in_smoke_mode_without_leaking_ci(tmp_path):
    """docs/tutorials/conftest.py sets CI for a notebook's kernel when CI is unset, and only
    while the notebook runs: a plain `pytest` on a machine without CI runs them in smoke
    mode, and the other tests see the environment as it was."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # no other config
    shutil.copy(TUTORIALS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "check_ci.ipynb").write_text(json.dumps(CHECK_NOTEBOOK), encoding="utf-8")
    (tmp_path / "test_zz_after.py").write_text(
        "import os\n\n\ndef test_ci_is_not_left_set():\n    assert 'CI' not in os.environ\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbmake", "-v"]
    result = subprocess.run(
        [*command, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check_ci.ipynb PASSED" in result.stdout
    assert "test_ci_is_not_left_set PASSED" in result.stdout
