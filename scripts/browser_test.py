"""A browser test of the course's two explorers: JupyterLab + headless Chromium (Selenium).

    python scripts/browser_test.py --out _build/browser        # or: make browser-test (git ignores _build/)
    python scripts/browser_test.py --out figures/browser       # refresh the screenshots committed for the README
    python scripts/browser_test.py --explorers bandit          # one of them

The explorers (``--explorers``, default both, in this order):

- ``bandit``: notebook 02b's field explorer, its **updates** slider; screenshots ``browser_explorer_*``;
- ``gridworld``: notebook 04's gridworld explorer, its **slip** slider; screenshots ``browser_gridworld_*``.

What it does, one printed line per stage (with the seconds since the start):

1. copies each notebook into a temporary directory, without its outputs and saved widget state,
   with ``smoke = True`` (papermill's injected-parameters cell: tiny budgets) and ``figures_dir``
   inside the temporary directory;
2. starts ``jupyter lab`` on 127.0.0.1 (a free port, a random token, its own settings,
   workspaces and runtime directories; notebook windowing off, so every cell is in the page);
3. starts headless Chromium (Debian's ``chromium`` and ``chromedriver``; Selenium Manager is never
   asked to download anything); then for each explorer, in a workspace of its own (only that
   notebook open), opens the notebook and waits for the kernel;
4. clicks *Run > Run All Cells* in the menu bar and waits until every code cell has an execution
   count; fails if any cell shows an error (a traceback);
5. finds the explorer (the widget box with the slider above the figure output), saves
   ``<prefix>_before.png`` (the page) and ``<prefix>_plot_before.png`` (the widget), drags the
   slider to its far end (the end away from the handle; the keyboard if the drag did not move it),
   waits for a new image in the figure output, saves ``<prefix>_after.png`` and
   ``<prefix>_plot_after.png``, checks that the slider's readout and the figure changed, and shuts
   that notebook's kernel down;
6. shuts the server and the browser down (also on failure; on failure it saves
   ``browser_failure.png`` and prints the tail of the server's log).

Exit status 0 when every check passed, 1 otherwise. Needs ``chromium``, ``chromium-driver`` and
the ``selenium`` package: ``scripts/install_browser.sh`` installs them.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()


@dataclass(frozen=True)
class ExplorerCase:
    """A notebook whose explorer is tested: the slider to move, and the screenshots' name prefix."""

    notebook: Path
    slider: str
    prefix: str


EXPLORERS = {
    "bandit": ExplorerCase(ROOT / "notebooks" / "02b_training_qsm_on_bandits.ipynb", "updates", "browser_explorer"),
    "gridworld": ExplorerCase(ROOT / "notebooks" / "04_gridworld_and_theory.ipynb", "slip", "browser_gridworld"),
}


class BrowserTestFailure(Exception):
    """A check failed (the message says which)."""


def stage(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", flush=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5, progress=None, every: float = 15.0):
    """Poll ``predicate`` until it returns something truthy (returned); raise after ``timeout`` s."""
    end = time.monotonic() + timeout
    next_report = time.monotonic() + every
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if now > end:
            raise BrowserTestFailure(f"timed out after {timeout:.0f} s waiting for {what}")
        if progress is not None and now >= next_report:
            stage(f"  ... {progress()}")
            next_report = now + every
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------
# 1. The notebook, in smoke mode, in a temporary directory
# ----------------------------------------------------------------------------------------------
def prepare_notebook(src: Path, workdir: Path, figures: Path) -> Path:
    import nbformat
    from papermill.parameterize import parameterize_notebook

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:  # only what this run produces may appear in the page
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    figures.mkdir(exist_ok=True)
    nb.metadata["papermill"] = {}  # parameterize_notebook records the parameters there
    nb = parameterize_notebook(nb, {"smoke": True, "figures_dir": str(figures)}, kernel_name="python3", language="python")
    nb.metadata.pop("papermill", None)
    dst = workdir / src.name
    nbformat.write(nb, dst)
    return dst


# ----------------------------------------------------------------------------------------------
# 2. JupyterLab
# ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_settings(settings_dir: Path) -> None:
    """User settings of this throw-away server: every cell in the DOM, no network look-ups."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {"enabled": False},
    }
    for rel, value in settings.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


class Lab:
    def __init__(self, workdir: Path, state: Path):
        self.workdir, self.state, self.log_path = workdir, state, state / "jupyterlab.log"
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        state = self.state
        lab_settings(state / "lab-settings")
        bin_dir = str(Path(sys.executable).parent)
        env = dict(os.environ)
        env.update(
            PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]),
            JUPYTER_CONFIG_DIR=str(state / "config"),
            JUPYTER_DATA_DIR=str(state / "data"),  # (the notebook-signing key); kernels: the environment's own
            JUPYTER_RUNTIME_DIR=str(state / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(state / "lab-settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"),
            PYDEVD_DISABLE_FILE_VALIDATION="1",
        )
        env.setdefault("MUJOCO_GL", "egl")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.workdir}",
            "--LabApp.extension_manager=readonly",  # no look-ups on PyPI
        ]  # fmt: skip
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # containers and CI runners often run as root
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def answers():
            if self.proc.poll() is not None:
                raise BrowserTestFailure(f"jupyter lab exited with status {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with self.api("GET", "/api/status") as r:
                    return r.status == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        wait_for(answers, 120, "JupyterLab to answer")

    def api(self, method: str, path: str):
        req = urllib.request.Request(f"{self.base}{path}", method=method, headers={"Authorization": f"token {self.token}"})
        return urllib.request.urlopen(req, timeout=10)

    def url(self, notebook: str) -> str:
        """The notebook in a workspace of its own: only it is open (no tab of an earlier notebook)."""
        workspace = Path(notebook).stem.replace("_", "-")
        return f"{self.base}/lab/workspaces/{workspace}/tree/{notebook}?token={self.token}"

    def shutdown_kernels(self) -> None:
        with self.api("GET", "/api/kernels") as r:
            kernels = json.load(r)
        for k in kernels:
            self.api("DELETE", f"/api/kernels/{k['id']}").close()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:  # kernels run in their own sessions: ask the server to shut them down first
            self.shutdown_kernels()
        except Exception as e:  # noqa: BLE001 (best effort; the server's own shutdown also stops them)
            print(f"  (could not shut the kernels down through the API: {e})")
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


# ----------------------------------------------------------------------------------------------
# 3. Chromium
# ----------------------------------------------------------------------------------------------
def start_browser(chromium: str, chromedriver: str, profile: Path, log_path: Path):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in (chromium, chromedriver):
        if not Path(exe).exists():
            raise BrowserTestFailure(f"{exe} not found: run scripts/install_browser.sh (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1250",
        "--force-device-scale-factor=1", "--hide-scrollbars",
    ]:  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver, log_output=str(log_path)), options=opts)
    driver.set_page_load_timeout(60)
    return driver


# ----------------------------------------------------------------------------------------------
# 4.-5. Driving the notebook
# ----------------------------------------------------------------------------------------------
JS_PROMPTS = """
return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))
            .map(e => e.textContent.trim());
"""

# The notebook toolbar's kernel indicator (the circle at its right end): idle, busy, starting, ...
JS_KERNEL_STATUS = """
const e = document.querySelector('.jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status]')
          || document.querySelector('.jp-Notebook-ExecutionIndicator[data-status]');
return e ? e.getAttribute('data-status') : null;
"""

JS_ERRORS = """
return Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
            .map(e => e.textContent);
"""

# The explorer: the widget box that holds the slider labelled arguments[0] and a figure output with an image.
JS_EXPLORER = """
const label = arguments[0];
const boxes = Array.from(document.querySelectorAll('.jp-Notebook .widget-vbox'));
for (const box of boxes) {
  const sliders = Array.from(box.querySelectorAll('.widget-slider'));
  const slider = sliders.find(s => (s.querySelector('label') || {}).textContent === label);
  const img = box.querySelector('.widget-output img');
  if (slider && img) {
    return {box: box, slider: slider, track: slider.querySelector('.noUi-target, .slider'),
            handle: slider.querySelector('.noUi-handle'), img: img,
            readout: slider.querySelector('.widget-readout')};
  }
}
return null;
"""


def explorer(driver, slider: str) -> dict | None:
    return driver.execute_script(JS_EXPLORER, slider)


# Read in the page in one step: the widget replaces its elements when it redraws, so an element
# found in one call may be gone ("stale") by the next.
JS_PLOT_STATE = "const ex = (() => {" + JS_EXPLORER + """})();
return ex ? [ex.img.getAttribute('src') || '', ex.readout.textContent.trim()] : null;
"""


def plot_state(driver, slider: str) -> tuple[str, str] | None:
    """The explorer's figure (its image source) and slider readout; None while it is absent."""
    state = driver.execute_script(JS_PLOT_STATE, slider)
    return tuple(state) if state else None


def current_plot_state(driver, slider: str) -> tuple[str, str]:
    return wait_for(lambda: plot_state(driver, slider), 30, "the explorer's figure and readout", interval=0.2)


def decode_png(src: str):
    import numpy as np
    from PIL import Image

    if not src.startswith("data:image/png;base64,"):
        raise BrowserTestFailure(f"the figure output's image is not an inline PNG: {src[:60]!r}")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def run_notebook(driver, lab: Lab, notebook: Path, timeout: float) -> None:
    from selenium.webdriver.common.by import By

    n_code = sum(c["cell_type"] == "code" for c in json.loads(notebook.read_text())["cells"])
    driver.get(lab.url(notebook.name))
    wait_for(lambda: len(driver.execute_script(JS_PROMPTS)) == n_code, 120, f"the notebook to open (all {n_code} code cells in the page)")
    wait_for(lambda: driver.execute_script(JS_KERNEL_STATUS) == "idle", 120, "the kernel to start (status 'idle')")
    stage(f"notebook open, kernel idle ({n_code} code cells)")

    # Run > Run All Cells, through the menu bar as a user would.
    run_menu = wait_for(
        lambda: next((e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text.strip() == "Run"), None),
        30, "the 'Run' menu",
    )  # fmt: skip
    run_menu.click()
    item = wait_for(
        lambda: next((e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-content > .lm-Menu-item") if e.text.split("\n")[0].strip() == "Run All Cells"), None),
        10, "'Run All Cells' in the Run menu",
    )  # fmt: skip
    item.click()
    stage("clicked Run > Run All Cells")

    def done():
        prompts = driver.execute_script(JS_PROMPTS)
        if any("Traceback" in t for t in driver.execute_script(JS_ERRORS)):
            return True  # an error stops Run All: report it below rather than time out
        finished = all(p.startswith("[") and p[1:-2].isdigit() for p in prompts)
        return finished and driver.execute_script(JS_KERNEL_STATUS) == "idle"

    def progress():
        prompts = driver.execute_script(JS_PROMPTS)
        n_done = sum(p[1:-2].isdigit() for p in prompts)
        return f"{n_done}/{len(prompts)} code cells executed, kernel {driver.execute_script(JS_KERNEL_STATUS)}"

    wait_for(done, timeout, "every cell to run", interval=1.0, progress=progress)
    errors = [t for t in driver.execute_script(JS_ERRORS) if "Traceback" in t or "Error" in t]
    if errors:
        raise BrowserTestFailure("a cell shows an error:\n" + errors[0][-3000:])
    stage(f"all cells ran without errors ({progress()})")


def move_slider(driver, case: ExplorerCase, out: Path, screenshot, slider_input: str = "drag") -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    label, prefix = case.slider, case.prefix
    ex = wait_for(lambda: explorer(driver, label), 60, f"the explorer (a {label!r} slider above a figure)")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", ex["box"])
    time.sleep(1.0)
    src0, readout0 = current_plot_state(driver, label)
    before = decode_png(src0)
    screenshot(f"{prefix}_before.png")
    ex["box"].screenshot(str(out / f"{prefix}_plot_before.png"))
    stage(f"explorer found: {label!r} slider at {readout0!r}, figure {before.shape[1]}x{before.shape[0]} px")

    # As a user would: drag the handle to the far end of its track (the end away from it;
    # continuous_update=False: the value is sent on release), or focus the handle and press Home or
    # End (noUiSlider's keyboard support).
    track = ex["track"]
    handle_x = ex["handle"].location["x"] + ex["handle"].size["width"] / 2
    toward_right = handle_x < track.location["x"] + track.size["width"] / 2
    how = "dragged"
    if slider_input == "drag":
        offset = track.size["width"] * (1 if toward_right else -1)
        ActionChains(driver).click_and_hold(ex["handle"]).pause(0.2).move_by_offset(offset, 0).pause(0.2).release().perform()
        try:
            wait_for(lambda: (plot_state(driver, label) or ("", readout0))[1] != readout0, 5, "the readout to change", interval=0.2)
        except BrowserTestFailure:
            slider_input = "keys"  # the drag did not move it: the keyboard, as a user could too
    if slider_input == "keys":
        ex = explorer(driver, label)
        ex["handle"].click()
        ex["handle"].send_keys(Keys.END if toward_right else Keys.HOME)
        how = f"moved ({'End' if toward_right else 'Home'} key)"
    stage(f"{how} the {label!r} slider to the {'right' if toward_right else 'left'}")

    def new_image():
        state = plot_state(driver, label)
        return state if state and state[0] != src0 else None

    src1, readout1 = wait_for(new_image, 60, "the figure to change after the slider moved", interval=0.2)
    time.sleep(1.0)  # let any further redraw land before the screenshot
    src1, readout1 = current_plot_state(driver, label)
    after = decode_png(src1)
    ex = explorer(driver, label)
    screenshot(f"{prefix}_after.png")
    ex["box"].screenshot(str(out / f"{prefix}_plot_after.png"))
    if readout1 == readout0:
        raise BrowserTestFailure(f"the slider's readout did not change ({readout0!r})")
    if after.shape != before.shape:
        changed = 1.0
    else:
        changed = float((abs(after.astype(int) - before.astype(int)).sum(axis=-1) > 30).mean())
    if changed < 0.002:
        raise BrowserTestFailure(f"the figure barely changed: {changed:.2%} of its pixels")
    stage(f"slider {readout0!r} -> {readout1!r}: the figure changed ({changed:.1%} of its pixels differ)")


def parse_explorers(text: str) -> list[ExplorerCase]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPLORERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown explorer {unknown or text!r}: use a comma-separated list of {', '.join(EXPLORERS)}")
    return [EXPLORERS[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "_build" / "browser", help="folder of the screenshots (default _build/browser, which git ignores)")
    p.add_argument("--explorers", type=parse_explorers, default=list(EXPLORERS.values()), help=f"which explorers, comma-separated (default: all, {','.join(EXPLORERS)})")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed for running every cell of a notebook (default 600)")
    p.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    p.add_argument("--chromedriver", default=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    p.add_argument("--slider-input", choices=["drag", "keys"], default="drag", help="drag the handle with the mouse (default; the keyboard if that fails) or press Home/End on it")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (notebook, server and driver logs)")
    args = p.parse_args(argv)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="qsm-browser-"))
    workdir, state = tmp / "notebooks", tmp / "state"  # the server's root, and everything else
    workdir.mkdir()
    state.mkdir()
    lab = driver = None
    ok = False

    def screenshot(name: str) -> None:
        driver.save_screenshot(str(out / name))

    try:
        notebooks = [prepare_notebook(case.notebook, workdir, state / "figures") for case in args.explorers]
        stage(f"prepared {', '.join(nb.name for nb in notebooks)} (smoke=True) in {workdir}")
        lab = Lab(workdir, state)
        lab.start()
        stage(f"JupyterLab answers on 127.0.0.1:{lab.port}")
        driver = start_browser(args.chromium, args.chromedriver, state / "chromium-profile", state / "chromedriver.log")
        stage(f"headless Chromium {driver.capabilities.get('browserVersion', '?')} started")
        for case, notebook in zip(args.explorers, notebooks):
            run_notebook(driver, lab, notebook, args.timeout)
            move_slider(driver, case, out, screenshot, args.slider_input)
            lab.shutdown_kernels()  # the next notebook runs alone on the CPU
        ok = True
    except Exception as e:  # noqa: BLE001 (every failure: report, clean up, exit 1)
        stage(f"FAILED: {type(e).__name__}: {e}")
        if not isinstance(e, BrowserTestFailure):
            traceback.print_exc()
        if driver is not None:
            try:
                screenshot("browser_failure.png")
                print(f"  screenshot of the page: {out / 'browser_failure.png'}")
            except Exception:  # noqa: BLE001
                pass
        if lab is not None:
            print("  tail of the JupyterLab log:\n" + lab.log_tail())
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception as e:  # noqa: BLE001
                print(f"  (closing the browser: {e})")
        if lab is not None:
            lab.stop()
        if args.keep_tmp:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        stage("browser, kernel and server shut down")
    if ok:
        shots = sorted(p.name for case in args.explorers for p in out.glob(f"{case.prefix}_*.png"))
        stage(f"PASSED; screenshots in {out}: {', '.join(shots)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
