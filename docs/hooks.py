"""MkDocs hooks (``hooks:`` in mkdocs.yml) for the tutorial notebooks.

**Smoke mode.** mkdocs-jupyter executes the notebooks (``execute:`` in mkdocs.yml) so that
the site shows their outputs. Each notebook reads ``smoke_test = "CI" in os.environ``
(Pyro's convention) and then uses tiny budgets; the build sets ``CI`` when it is unset, so
that it takes about two minutes wherever it runs (the kernels inherit the environment of
this process). The site's outputs are therefore those of the smoke budgets, as the
notebooks say where they print them.

**Links.** mkdocs-jupyter renders a notebook to HTML itself, so MkDocs neither rewrites
nor checks the links in its Markdown cells. A link such as ``[3. Priors](03_priors.ipynb)``
works in Jupyter and on GitHub but not on the site, where that notebook is the page
``tutorials/03_priors/``. Every relative link to a ``.ipynb`` or ``.md`` file of the docs
becomes the URL of its page, keeping the ``#anchor``; a link to a file the docs do not
have is a warning (an error under ``mkdocs build --strict``).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re

log = logging.getLogger("mkdocs.hooks.notebook_links")

HREF = re.compile(r'href="(?![a-z][a-z0-9+.-]*:|/|#)([^"#]+\.(?:ipynb|md))(#[^"]*)?"')


def on_config(config):
    os.environ.setdefault("CI", "true")
    return config


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    here = posixpath.dirname(page.file.src_uri)

    def page_url(match: re.Match) -> str:
        target = posixpath.normpath(posixpath.join(here, match.group(1)))
        found = files.get_file_from_path(target)
        if found is None or not found.is_documentation_page():
            log.warning(f"{page.file.src_uri} links to '{match.group(1)}', not a page of the docs")
            return match.group(0)
        return f'href="{found.url_relative_to(page.file)}{match.group(2) or ""}"'

    return HREF.sub(page_url, html)
