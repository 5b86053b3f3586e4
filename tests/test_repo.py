"""The repository's promises to a new user: the README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split(marker, 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip()


def test_ci_runs_exactly_the_readme_test_command():
    readme_cmd = readme_block_after("<!-- test-command -->").splitlines()[-1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_cmd in ci
    # torch==2.13.0 (the CPU build here) must be installed before anything pulls torch.
    assert readme_cmd.startswith("pip install torch==2.13.0 && ")


def test_readme_quick_start_installs_torch_first_and_trains():
    cmd = readme_block_after("<!-- main-command -->")
    assert "pip install torch==2.13.0" in cmd and cmd.rstrip().endswith("pyro-vae train")
