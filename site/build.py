"""Build the course site: static HTML of the committed, executed notebooks (nothing is re-executed).

    python site/build.py                  # or: make site   ->  _build/site/html/index.html
    python site/build.py --out DIR        # another output folder

Sphinx reads a staged source folder, ``<out>/src``, made here on every build:

- ``index.md``: ``site/index.md`` with the README's opening paragraph and its gallery (the section
  whose heading starts with ``## Gallery``) put in place of the ``<!-- README: ... -->`` markers, and
  a toctree for the notation page and one for the solutions when they exist;
- ``notebooks`` and ``figures``: copies of the repository's folders (the gallery's ``figures/...``
  paths resolve as they do on GitHub; the notebooks' links to each other as they do in JupyterLab);
- ``solutions.md`` (when ``notebooks/solutions/*.ipynb`` exist): the solutions' section, whose pages
  ``site/conf.py`` folds (every solution closed until clicked).

Sphinx + MyST-NB + sphinx-book-theme carry every asset in their pip packages: the build needs no
network, and ``make site`` runs it without one (a network namespace of its own, where the machine
allows it). The site serves its own MathJax (``site/conf.py``); only the ipywidgets embed script,
which draws the saved progress bars, comes from a CDN when a page is viewed online. Figures, videos,
formulas and text need nothing but the files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

SITE = Path(__file__).resolve().parent
ROOT = SITE.parent


def readme_parts(readme: str) -> tuple[str, str]:
    """The README's first paragraph under its title, and its gallery section (heading included)."""
    lines = readme.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("# "))
    intro: list[str] = []
    for line in lines[title + 1 :]:
        if line.startswith("#") or (not line.strip() and intro):
            break
        if line.strip():
            intro.append(line)
    start = next((i for i, line in enumerate(lines) if line.startswith("## Gallery")), None)
    if start is None:
        raise SystemExit("README.md has no '## Gallery' section: the site's front page shows it")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = "\n".join(lines[start + 1 : end]).strip()
    gallery = f"{lines[start]}\n\n:::{{container}} qsm-gallery\n{body}\n:::\n"
    return "\n".join(intro), gallery


def front_page(root: Path, solutions: list[Path]) -> str:
    intro, gallery = readme_parts((root / "README.md").read_text(encoding="utf-8"))
    text = (SITE / "index.md").read_text(encoding="utf-8")
    for marker, value in (("<!-- README: intro -->", intro), ("<!-- README: gallery -->", gallery)):
        if marker not in text:
            raise SystemExit(f"site/index.md lost its marker {marker}")
        text = text.replace(marker, value)
    if (root / "notebooks" / "notation.md").exists():
        text += "\n```{toctree}\n:caption: Reference\n:maxdepth: 1\n\nnotebooks/notation\n```\n"
    if solutions:
        text += (
            "\n## Solutions\n\nWorked solutions to every notebook's exercises are in a section of their own, "
            "[Solutions](solutions.md), each one folded until you open it. Try the exercises first.\n"
            "\n```{toctree}\n:caption: Solutions (try the exercises first)\n:maxdepth: 1\n\nsolutions\n```\n"
        )
    return text


def write_if_changed(path: Path, text: str) -> None:
    """Leave an unchanged file alone (its time too)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def mirror(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of the folder ``src``, copying only files that changed (times kept).

    A copy, not a link: MyST resolves a linked folder to its real path, and the notebooks' links to
    each other would then point outside the source folder.
    """
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    wanted = set()
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if ".ipynb_checkpoints" in rel.parts or "__pycache__" in rel.parts or not path.is_file():
            continue
        wanted.add(rel)
        target = dst / rel
        st = path.stat()
        if target.exists() and (t := target.stat()).st_size == st.st_size and t.st_mtime == st.st_mtime:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for path in sorted(dst.rglob("*"), reverse=True) if dst.exists() else []:
        rel = path.relative_to(dst)
        if path.is_file() and rel not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def stage(root: Path, src: Path) -> list[Path]:
    """Lay out the Sphinx source folder; returns the solution notebooks found."""
    src.mkdir(parents=True, exist_ok=True)
    for name in ("notebooks", "figures"):
        mirror(root / name, src / name)
    solutions = sorted((root / "notebooks" / "solutions").glob("*.ipynb"))
    write_if_changed(src / "index.md", front_page(root, solutions))
    if solutions:
        write_if_changed(src / "solutions.md", (SITE / "solutions.md").read_text(encoding="utf-8"))
    elif (src / "solutions.md").exists():
        (src / "solutions.md").unlink()
    return solutions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "_build" / "site", help="output folder (default _build/site): html/, src/, doctrees/")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # another checkout's notebooks (tests)
    args = p.parse_args(argv)
    out, root = args.out.resolve(), args.root.resolve()
    t0 = time.perf_counter()
    solutions = stage(root, out / "src")
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
    print(f"site: {len(notebooks)} notebooks, {len(solutions)} solution notebooks, notation page: "
          f"{'yes' if (root / 'notebooks' / 'notation.md').exists() else 'no'}", flush=True)

    from sphinx.cmd.build import build_main

    warnings = out / "warnings.txt"
    shutil.rmtree(out / "html", ignore_errors=True)  # no page left over from an earlier build
    # -E -a: every page afresh (ten seconds; a page's sidebar lists pages added since the last build)
    rc = build_main(["-b", "html", "-E", "-a", "-q", "-c", str(SITE), "-d", str(out / "doctrees"), "-w", str(warnings),
                     str(out / "src"), str(out / "html")])  # fmt: skip
    n_warn = sum(1 for line in warnings.read_text().splitlines() if "WARNING" in line) if warnings.exists() else 0
    took = time.perf_counter() - t0
    if rc:
        print(f"site: sphinx-build failed (exit {rc}) after {took:.0f} s", file=sys.stderr)
        return rc
    print(f"site: built in {took:.0f} s: {out / 'html' / 'index.html'}"
          + (f" ({n_warn} warnings, listed in {warnings})" if n_warn else " (no warnings)"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
