"""Sphinx configuration of the course site (``make site``; sources staged by ``site/build.py``).

Plain Sphinx + MyST-NB + sphinx-book-theme: every asset is inside the pip packages, so the build
reaches no network (``make site`` runs it in a network namespace of its own where it can). The
notebooks are rendered with the outputs they were committed with; nothing is executed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

project = "QSM tutorial"
author = "the qsm_tutorial authors"
copyright = "the qsm_tutorial authors (MIT licence)"

extensions = ["myst_nb", "sphinx.ext.githubpages"]  # githubpages: the .nojekyll file Pages needs for _static/

root_doc = "index"
exclude_patterns = ["**/.ipynb_checkpoints", "_build"]
suppress_warnings = ["misc.highlighting_failure"]

# --- MyST (markdown) and MyST-NB (notebooks) ------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "html_image"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the committed outputs are the course: never re-executed here
nb_merge_streams = True
# An explorer (ipywidgets) cell was saved with a PNG of its figure: show that picture, which needs no
# kernel and no script. Widgets without a picture (tqdm's progress bars) keep their saved state, drawn
# by the ipywidgets embed script when the page is online.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", 55)]

# --- Math: MathJax 3 served with the site ----------------------------------------------------------
# django-static-mathjax (a pip package of MathJax's files; Django is not needed) puts MathJax in the
# site's _static/, so formulas render without a CDN: offline, in a classroom, in the site check.
# Without it, Sphinx's default (MathJax from a CDN when a page is viewed).
MATHJAX_PARTS = ("tex-mml-chtml.js", "input/tex", "output/chtml", "ui", "a11y")  # 2.5 of its 24 MB


def bundled_mathjax() -> Path | None:
    try:
        import mathjax  # django-static-mathjax
    except ImportError:
        return None
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    return es5 if (es5 / "tex-mml-chtml.js").is_file() else None


MATHJAX_ES5 = bundled_mathjax()
if MATHJAX_ES5 is not None:
    mathjax_path = "mathjax/tex-mml-chtml.js"  # relative: under _static/


def copy_mathjax(app, exception):
    if exception is not None or MATHJAX_ES5 is None or app.builder.format != "html":
        return
    dest = Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        src = MATHJAX_ES5 / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)


# --- HTML ----------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "QSM tutorial"
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_last_updated_fmt = None
html_show_sourcelink = False  # the download button offers the .ipynb instead
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": True,  # the .ipynb of each notebook page, as committed
    "navigation_with_keys": False,
    "navbar_persistent": [],  # search sits in the sidebar; no second search bar in a header above
}

SOLUTIONS = "notebooks/solutions/"
NOTICE = (
    '<div class="admonition warning qsm-solutions-notice"><p class="admonition-title">Solutions</p>'
    "<p>Try the exercises{of} first. Each solution on this page is folded: open it when you have an "
    "answer of your own to compare.</p></div>"
)


def fold_solutions(app, doctree, docname):
    """On a solutions page, fold each solution into a closed ``<details>``: hidden until clicked.

    The solution notebooks give each exercise a section (``## Exercise N``: the question, a hint)
    with a ``### Solution`` section in it: each section titled "Solution..." is folded under its
    heading. A page without such sections has each of its second-level sections folded below its
    heading and its question (a leading quote); a page without those, everything below its title.
    The browser opens a fold by itself for find-in-page and for a link to an anchor inside it.
    """
    if not docname.startswith(SOLUTIONS) or app.builder.format != "html":
        return
    from docutils import nodes

    top = next(iter(doctree.findall(nodes.section)), None)
    if top is None:
        return

    def title_index(sec):
        return next((i for i, c in enumerate(sec.children) if isinstance(c, nodes.title)), -1)

    def fold(sec, label, keep_quote=False):
        at = title_index(sec) + 1
        if keep_quote and at < len(sec.children) and isinstance(sec.children[at], nodes.block_quote):
            at += 1
        sec.insert(at, nodes.raw("", f'<details class="qsm-solution"><summary>{label}</summary>', format="html"))
        sec.append(nodes.raw("", "</details>", format="html"))

    solutions = [
        sec for sec in top.findall(nodes.section)
        if sec is not top and title_index(sec) >= 0 and sec.children[title_index(sec)].astext().strip().lower().startswith("solution")
    ]  # fmt: skip
    if solutions:
        for sec in solutions:
            fold(sec, "Show the solution")
    else:
        subsections = [c for c in top.children if isinstance(c, nodes.section)]
        for sec in subsections:
            fold(sec, "Show the solution", keep_quote=True)
        if not subsections:
            fold(top, "Show the solutions")
    nn = re.match(r"(\d+)", Path(docname).name)
    notice = NOTICE.format(of=f" of notebook {nn.group(1)}" if nn else "")
    top.insert(title_index(top) + 1, nodes.raw("", notice, format="html"))


def setup(app):
    app.connect("doctree-resolved", fold_solutions)
    app.connect("build-finished", copy_mathjax)
