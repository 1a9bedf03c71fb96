"""Run notebooks twice in fresh kernels and compare every text output: the course's "same seed, same
results" check, for all cells (nbval in the tests compares only the cells marked NBVAL_CHECK_OUTPUT).

    python scripts/check_rerun.py                       # every notebook, smoke mode
    python scripts/check_rerun.py --defaults 05_continuous_control 06_reproducing_the_paper

Lines that report wall-clock time or speed ("12 s", "steps/s", progress bars) legitimately differ and are
masked before comparing. Exit status 1 if any other output differs; the differing lines are printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_notebooks import NOTEBOOK_DIR, NOTEBOOKS, execute  # noqa: E402

# Durations and rates: "35 s", "0.4 s", "(12.3 s)", "steps/s 41", "1500 steps in 23 s", "it/s".
TIMING = re.compile(r"\d+(\.\d+)?\s*(s|ms|min)\b|[\d.]+\s*(steps|updates|it)/s|/s\b.*")


def text_outputs(path: Path) -> list[tuple[int, str]]:
    """(code cell index, masked text) of every text output (streams and text/plain results)."""
    out = []
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(cells):
        for o in cell.get("outputs", []):
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {}):
                continue  # progress bars
            text = "".join(o.get("text", "")) or "".join(o.get("data", {}).get("text/plain", ""))
            text = re.sub(r"<Figure size [^>]*>|<IPython[^>]*>|at 0x[0-9a-f]+", "", text)
            out.append((i, TIMING.sub("<time>", text)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", help="names (default: all)")
    p.add_argument("--defaults", action="store_true", help="default parameters instead of smoke mode")
    args = p.parse_args()
    names = [n if n.endswith(".ipynb") else f"{n}.ipynb" for n in args.notebooks] or NOTEBOOKS
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            params = {"figures_dir": str(Path(tmp) / "figures")}
            if not args.defaults:
                params["smoke"] = True
            runs, seconds = [], []
            for k in range(2):
                t0 = time.perf_counter()
                out = Path(tmp) / f"run{k}_{name}"
                execute(NOTEBOOK_DIR / name, out, params, cwd=NOTEBOOK_DIR)
                seconds.append(time.perf_counter() - t0)
                runs.append(text_outputs(out))
            diffs = [(a, b) for a, b in zip(*runs) if a != b] + ([("cell count", "")] if len(runs[0]) != len(runs[1]) else [])
            status = "same" if not diffs else f"{len(diffs)} outputs DIFFER"
            print(f"{name}: {len(runs[0])} text outputs, {status} ({seconds[0]:.0f} s, {seconds[1]:.0f} s)", flush=True)
            for a, b in diffs[:5]:
                print(f"  run 1: {a}\n  run 2: {b}")
            failed |= bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
