"""Check the built course site in headless Chromium: its figures render.

    python scripts/site_check.py                      # after `make site`; or: make site (runs both)
    python scripts/site_check.py --site _build/site/html --out _build/site/check

Serves the built site on 127.0.0.1 (a free port, a thread of this process), opens two pages in
headless Chromium (Debian's ``chromium`` and ``chromedriver``, as ``scripts/browser_test.py`` drives
them; ``scripts/install_browser.sh`` installs them and selenium):

- the front page, which must show the README's gallery: as many images as the README's gallery has;
- a notebook page with figures (default notebook 01): as many images as the notebook has figure
  outputs (PNG, JPEG or SVG; counted in the copy the site was built from), and at least one;

scrolls every image into view, waits until each has loaded and asserts ``naturalWidth > 0`` (a
broken or missing file has 0), and saves screenshots of each page (its top, and its first figure
scrolled into view) in ``--out`` (default ``_build/site/check/``, which git ignores). Where the site
has solution pages, it also opens the first one and checks that its solutions are folded (closed
``<details>``) and that a click opens one (screenshots ``site_solutions_*.png``). One printed
line per stage; exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from browser_test import BrowserTestFailure, stage, start_browser, wait_for  # noqa: E402

JS_IMAGES = """
const root = document.querySelector(arguments[0]) || document;
return Array.from(root.querySelectorAll('img')).map(img => ({
  src: img.getAttribute('src'), complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
  shown: img.getBoundingClientRect().width}));
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no line per request
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def gallery_size(readme: Path) -> int:
    """How many images the README's gallery section shows."""
    text = readme.read_text(encoding="utf-8")
    m = re.search(r"^## Gallery.*?$(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    if not m:
        raise BrowserTestFailure("README.md has no '## Gallery' section")
    return len(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", m.group(1)))


def figure_outputs(site: Path, page: str) -> int:
    """How many figure outputs the notebook behind ``page`` has (the staged copy the site was built from)."""
    import json

    rel = Path(page).with_suffix(".ipynb")
    for src in (site.parent / "src" / rel, ROOT / rel):
        if src.is_file():
            nb = json.loads(src.read_text(encoding="utf-8"))
            return sum(
                any(m in out.get("data", {}) for m in ("image/png", "image/jpeg", "image/svg+xml"))
                for cell in nb["cells"] if cell["cell_type"] == "code" for out in cell.get("outputs", [])
            )  # fmt: skip
    raise BrowserTestFailure(f"no notebook {rel} behind the page {page}")


def check_page(driver, url: str, scope: str, at_least: int, what: str, out: Path, name: str) -> int:
    """Open ``url``; every image under ``scope`` loads with naturalWidth > 0, and there are ``at_least``."""
    driver.get(url)
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", 60, f"{url} to load")
    if not driver.execute_script("return !!document.querySelector(arguments[0])", scope):
        raise BrowserTestFailure(f"{url}: no element {scope!r} (is this the built site?)")
    driver.save_screenshot(str(out / f"{name}_top.png"))
    # Scroll each image into view: a lazily loaded image loads only then.
    n = driver.execute_script("return document.querySelectorAll(arguments[0] + ' img').length", scope)
    for i in range(n):
        driver.execute_script("document.querySelectorAll(arguments[0] + ' img')[arguments[1]].scrollIntoView({block: 'center'})", scope, i)
    wait_for(lambda: all(im["complete"] for im in driver.execute_script(JS_IMAGES, scope)), 60, f"the images of {url} to load")
    images = driver.execute_script(JS_IMAGES, scope)
    broken = [im["src"] for im in images if im["w"] <= 0 or im["h"] <= 0]
    if broken:
        raise BrowserTestFailure(f"{url}: {len(broken)} of {len(images)} images did not render: {', '.join(broken[:5])}")
    if len(images) < at_least:
        raise BrowserTestFailure(f"{url}: {len(images)} images, expected at least {at_least} ({what})")
    hidden = [im["src"] for im in images if im["shown"] <= 0]
    if hidden:
        raise BrowserTestFailure(f"{url}: {len(hidden)} images take no space on the page: {', '.join(hidden[:5])}")
    # The first figure in view, for a person to look at.
    driver.execute_script("document.querySelector(arguments[0] + ' img').scrollIntoView({block: 'start'}); window.scrollBy(0, -80)", scope)
    time.sleep(0.3)
    driver.save_screenshot(str(out / f"{name}_figure.png"))
    sizes = ", ".join(f"{im['w']}x{im['h']}" for im in images[:4])
    stage(f"{url.split('/', 3)[-1]}: {len(images)} images rendered ({what}; first: {sizes}); screenshots {name}_top.png, {name}_figure.png")
    return len(images)


def check_solutions(driver, base: str, site: Path, out: Path) -> None:
    """The first solutions page: every solution folded; a click on the first one opens it."""
    from selenium.webdriver.common.by import By

    pages = sorted((site / "notebooks" / "solutions").glob("*.html"))
    if not pages:
        stage("no solution pages in the site: nothing folded to check")
        return
    url = f"{base}/{pages[0].relative_to(site).as_posix()}"
    driver.get(url)
    # Poll: one CI run found the page's static <details> missing right after get() returned (the
    # previous page still current), and found them on every rerun.
    folds = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "details.qsm-solution"), 30,
                     f"a folded solution (details.qsm-solution) on {url}")  # fmt: skip
    opened = [f for f in folds if f.get_attribute("open") is not None]
    if opened:
        raise BrowserTestFailure(f"{url}: {len(opened)} of {len(folds)} solutions are open on arrival")
    summary = folds[0].find_element(By.TAG_NAME, "summary")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", summary)
    driver.save_screenshot(str(out / "site_solutions_folded.png"))
    summary.click()
    wait_for(lambda: folds[0].get_attribute("open") is not None, 10, "the first solution to open on a click")
    driver.save_screenshot(str(out / "site_solutions_open.png"))
    stage(f"{url.split('/', 3)[-1]}: {len(folds)} solutions folded on arrival, the first opens on a click; "
          "screenshots site_solutions_folded.png, site_solutions_open.png")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", type=Path, default=ROOT / "_build" / "site" / "html", help="the built site (default _build/site/html)")
    p.add_argument("--out", type=Path, default=ROOT / "_build" / "site" / "check", help="folder of the screenshots (default _build/site/check)")
    p.add_argument("--notebook", default="notebooks/01_scores_and_diffusion.html", help="the notebook page checked (default notebook 01)")
    p.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    p.add_argument("--chromedriver", default=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    args = p.parse_args(argv)

    site, out = args.site.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()
    server = driver = None
    ok = False
    tmp = Path(tempfile.mkdtemp(prefix="qsm-site-check-"))  # Chromium's profile and the driver's log
    try:
        for page in ("index.html", args.notebook):
            if not (site / page).is_file():
                raise BrowserTestFailure(f"{site / page} not found: build the site first (make site)")
        server, base = serve(site)
        stage(f"serving {site} on {base}")
        driver = start_browser(args.chromium, args.chromedriver, tmp / "profile", tmp / "chromedriver.log")
        stage(f"headless Chromium {driver.capabilities.get('browserVersion', '?')} started")
        check_page(driver, f"{base}/index.html", ".qsm-gallery", gallery_size(ROOT / "README.md"), "the README's gallery", out, "site_front")
        n_fig = figure_outputs(site, args.notebook)
        if n_fig < 1:
            raise BrowserTestFailure(f"{args.notebook}: its notebook has no figure output; check one that has (--notebook)")
        check_page(driver, f"{base}/{args.notebook}", "article", n_fig, f"its notebook has {n_fig} figure outputs", out, "site_notebook")
        check_solutions(driver, base, site, out)
        ok = True
    except Exception as e:  # noqa: BLE001 (every failure: report, clean up, exit 1)
        stage(f"FAILED: {type(e).__name__}: {e}")
        if not isinstance(e, BrowserTestFailure):
            traceback.print_exc()
        if driver is not None:
            try:
                driver.save_screenshot(str(out / "site_failure.png"))
                print(f"  screenshot of the page: {out / 'site_failure.png'}")
            except Exception:  # noqa: BLE001
                pass
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception as e:  # noqa: BLE001
                print(f"  (closing the browser: {e})")
        if server is not None:
            server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    if ok:
        stage(f"PASSED; screenshots in {out}: {', '.join(sorted(p.name for p in out.glob('*.png')))}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
