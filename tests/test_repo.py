"""The repository's promises to a new user: the README's commands are the ones CI runs,
the README stays a front page, and the documentation covers the public API."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


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
    # The documentation site is built, with every warning an error, after the tests.
    assert readme_cmd.endswith(" && pytest && mkdocs build --strict")
    assert '".[test,docs]"' in readme_cmd


def test_the_docs_quote_the_readme_test_command_as_it_is():
    readme_cmd = readme_block_after("<!-- test-command -->").splitlines()[-1]
    quoted = [
        line
        for page in DOCS.rglob("*.md")
        for line in page.read_text().splitlines()
        if line.startswith('pip install torch==2.13.0 && pip install -e ".[test')
    ]
    assert quoted and all(line == readme_cmd for line in quoted)


def test_readme_quick_start_installs_torch_first_and_trains():
    cmd = readme_block_after("<!-- main-command -->")
    assert "pip install torch==2.13.0" in cmd and cmd.rstrip().endswith("pyro-vae train")


def test_the_readme_is_a_front_page_of_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_readme_links_to_docs_pages_that_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).exists(), link


def test_every_public_name_is_in_the_api_reference():
    import pyro_vae

    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: (pyro_vae(?:\.\w+)+)\s*$", page.read_text(), re.M))
    lazy = pyro_vae._LAZY
    missing = [
        name
        for name in pyro_vae.__all__
        if f"pyro_vae.{name}" not in documented
        and f"pyro_vae.{lazy.get(name, '?')}.{name}" not in documented
    ]
    assert not missing, f"add '::: pyro_vae.NAME' to a page of docs/api/ for: {missing}"


def test_every_api_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert page.relative_to(DOCS).as_posix() in nav, f"{page} is not in mkdocs.yml's nav"
