"""Sphinx configuration for dask-em's documentation.

Build with ``python -m sphinx -W -b html docs docs/_build/html`` (the README's command).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's dask_em, also when it is not installed

import dask_em  # noqa: E402

project = "dask-em"
author = "dask-em developers"
copyright = "dask-em developers"
release = dask_em.__version__
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_click",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "Thumbs.db", ".DS_Store", "gallery/**/*.ipynb", "gallery/**/*.py",
                    "gallery/**/*.zip", "gallery/**/*.json", "gallery/**/*.md5"]
# The README and the changelog live at the repository root; pages include them.
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# numpydoc renders the docstrings; autosummary writes one page per public name.
autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False  # the autosummary templates list the members
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Checked on every build (warnings are errors with -W): every public docstring has a
# summary and documents its parameters (the tests check the sections themselves).
numpydoc_validation_checks = {"GL08", "SS01", "PR01"}
numpydoc_validation_exclude = {r"\.__init__$", r"\._", r"sklearn\.", r"\.set_\w+_request$", r"Family\.\w+$", r"\.(make_family|expected_shapes)$"}

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
}
# The build machine may have no network: intersphinx then only warns once per
# inventory; keep the mapping empty unless DASK_EM_DOCS_INTERSPHINX is set.
if not os.environ.get("DASK_EM_DOCS_INTERSPHINX"):
    intersphinx_mapping = {}

# sphinx-gallery: every examples/gallery/plot_*.py runs during the build.
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples" / "gallery"),
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
}

html_theme = "pydata_sphinx_theme"
html_title = f"dask-em {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
}
html_static_path = []
