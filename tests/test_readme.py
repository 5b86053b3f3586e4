"""Every code block of the README and of docs/ runs as written.

- Every ```python block runs from an empty directory, in a fresh interpreter.
- Every command of a ```bash block is checked against the project: ``pyro-vae``
  subcommands exist, ``pyro-vae train`` command lines pass the command line's own checks
  (``check_overrides``: unknown keys, refused values, every value of a ``-m`` sweep),
  ``python experiments/X.py`` scripts exist, ``pip install -e ".[extra]"`` extras exist.

A block that cannot run here is preceded by ``<!-- no-test: the reason -->``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", flags=re.S | re.M)
NO_TEST = re.compile(r"<!--\s*no-test:\s*(.*?)\s*-->\s*\Z", flags=re.S)
# Placeholders a reader fills in, and files or modules of a reader's own: such a
# `pyro-vae train` line is checked for its subcommand only.
PLACEHOLDERS = ("<", "...", "mypkg.", "file://my_conf")


def code_blocks(language: str) -> list:
    """``pytest.param(code, id="docs/page.md:LINE")`` for each block of ``language``."""
    params = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) != language:
                continue
            line = text.count("\n", 0, match.start()) + 1
            label = f"{page.relative_to(ROOT)}:{line}"
            skip = NO_TEST.search(text[: match.start()])
            marks = [pytest.mark.skip(reason=f"{label}: {skip.group(1)}")] if skip else []
            params.append(pytest.param(match.group(2), id=label, marks=marks))
    return params


PYTHON_BLOCKS = code_blocks("python")
BASH_BLOCKS = code_blocks("bash")


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at &&."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            if words[:cut]:
                out.append(words[:cut])
            words = words[cut + 1 :]
    return out


def test_the_readme_and_the_docs_have_examples():
    readme = [p for p in PYTHON_BLOCKS if p.id.startswith("README.md")]
    assert len(readme) >= 1 and len(PYTHON_BLOCKS) >= 10
    assert len(BASH_BLOCKS) >= 20


@pytest.mark.parametrize("code", PYTHON_BLOCKS)
def test_python_block_runs_from_an_empty_directory(code, tmp_path):
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"python block:\n{code}\n{done.stderr}"


@pytest.mark.parametrize("block", BASH_BLOCKS)
def test_bash_block_commands_exist_and_pass_the_checks(block):
    from pyro_vae.cli import COMMANDS
    from pyro_vae.config import check_overrides

    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib: Python 3.11+
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = re.findall(r"^([\w-]+) = \[", section, flags=re.M)
    for words in commands(block):
        if words[0] == "pyro-vae":
            assert words[1] in COMMANDS, f"unknown subcommand in {words}"
            if words[1] == "train" and not any(p in w for w in words for p in PLACEHOLDERS):
                check_overrides(words[2:])  # raises ConfigError naming the bad key
        elif words[0] in ("python", "python3") and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), f"no script {words[1]}"
        elif words[:3] == ["pip", "install", "-e"]:
            asked = re.fullmatch(r"\.(?:\[(.*)\])?", words[3])
            assert asked, f"pip install -e {words[3]}"
            for extra in filter(None, (asked.group(1) or "").split(",")):
                assert extra in extras, f"no extra [{extra}] in pyproject.toml"
