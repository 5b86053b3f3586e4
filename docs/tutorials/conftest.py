"""pytest runs these notebooks (``--nbmake`` in pyproject's addopts) in smoke mode.

Each notebook reads ``smoke_test = "CI" in os.environ`` (Pyro's convention) and then uses
tiny budgets. CI machines usually set ``CI``, but not all do (``.ci/run`` does not), so it
is set here while each notebook runs: nbmake starts the notebook's kernel inside the test,
and the kernel inherits this process's environment. Only the notebooks see it, and the
variable is restored afterwards, so the rest of the session (Hypothesis's profile, for
one) is unaffected. A value already set is kept. ``tests/test_notebooks.py`` checks this.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    smoke = item.path.suffix == ".ipynb" and "CI" not in os.environ
    if smoke:
        os.environ["CI"] = "true"
    try:
        yield
    finally:
        if smoke:
            os.environ.pop("CI", None)
