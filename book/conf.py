"""Sphinx configuration of the companion book (assembled and built by book/build.py)."""

project = "Gibbs Sampling from Human Feedback: an executable companion"
author = "The GSHF companion contributors"
copyright = "2026, The GSHF companion contributors (MIT licence)"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinxcontrib.bibtex",
]
exclude_patterns = ["readme.md", "_build"]
templates_path = ["_templates"]

# The runner executes the notebooks; the book only renders their executed copies.
nb_execution_mode = "off"
nb_output_stderr = "remove"
# No widget scripts: the notebooks use none, and their defaults load from a CDN.
nb_ipywidgets_js = {}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# MathJax 3 from npm (package-lock.json), copied beside the pages: math is typeset offline.
mathjax_path = "mathjax/tex-chtml.js"
html_static_path = ["_static"]
html_css_files = ["book.css"]

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
# Docstrings write ``code`` as reST literals; a lone `x` is code too.
default_role = "code"


bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"

html_theme = "sphinx_book_theme"
html_title = "GSHF: an executable companion"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
}
html_last_updated_fmt = None
# The theme's light mode from the start (an empty default mode logs a console error).
html_context = {"default_mode": "light"}


def _literal_bars(app, what, name, obj, options, lines):
    """The package's docstrings use no reST substitutions: a bar outside a ``literal`` (as in
    |p(a) - q(a)|) is the absolute value, not a substitution reference."""
    for index, line in enumerate(lines):
        parts = line.split("``")
        parts[::2] = [part.replace("|", "\\|") for part in parts[::2]]
        lines[index] = "``".join(parts)


def setup(app):
    app.connect("autodoc-process-docstring", _literal_bars)
