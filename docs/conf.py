"""Sphinx configuration of the sb3_pgext documentation (``pip install -e ".[docs]"``, then ``sphinx-build -W docs docs/_build``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from sb3_pgext import __version__  # noqa: E402

project = "sb3_pgext"
author = "sb3_pgext contributors"
copyright = "2026, sb3_pgext contributors"  # noqa: A001
version = release = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
# Equations as $$ ... $$ blocks, rendered by MathJax (Sphinx's default for HTML), as SB3's docs render theirs
myst_enable_extensions = ["dollarmath", "amsmath"]
# The included benchmark reports are generated Markdown pages of their own, with their own heading levels
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

html_theme = "furo"
html_title = f"sb3_pgext {version}"
