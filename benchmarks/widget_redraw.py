"""How long an explorer takes to redraw after a slider moves (target: under 150 ms on 2 CPU cores).

    python benchmarks/widget_redraw.py            # trains a short bandit run for snapshots first
    python benchmarks/widget_redraw.py --quick    # untrained snapshots only (no training)

One redraw is what a learner waits for: ``explorer.update(<control>=<value>)`` (new fields, from the
cache after the first visit) plus ``explorer.render_png()`` (the PNG the notebook shows). Each
explorer is moved through a scripted sequence of ≥ 20 slider changes of its fast controls (noise
level, α, training iteration, critic / cell, α); the median, 90th percentile and maximum are
printed, as well as the first visits (cache misses) and the slow controls that rebuild the figure
(layout, bandit, slip), which are timed separately. Torch uses one thread, as in a notebook next to
other work on a 2-core machine. Measured figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def timed(ex, **values) -> float:
    t0 = time.perf_counter()
    ex.update(**values)
    ex.render_png()
    return (time.perf_counter() - t0) * 1000.0


def summarise(name: str, ms: list[float]) -> str:
    a = np.array(ms)
    return f"{name:<44} n={len(a):3d}  median {statistics.median(a):6.1f} ms   p90 {np.percentile(a, 90):6.1f} ms   max {a.max():6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip training: explore an untrained policy")
    parser.add_argument("--repeats", type=int, default=2, help="passes over each scripted sequence (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from qsm_tutorial import widgets

    lines = []
    # -- bandit explorer ------------------------------------------------------------------------
    if args.quick:
        snaps = widgets.BanditSnapshots.untrained("four-gaussians")
    else:
        t0 = time.perf_counter()
        snaps = widgets.train_bandit_snapshots("four-gaussians", total_steps=600, every=50, seed=0)
        print(f"trained bandit/four-gaussians for snapshots {snaps.updates} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    ex = widgets.explore_bandit(snaps)
    ex.render_png()
    build = (time.perf_counter() - t0) * 1000
    n_snap, T = len(snaps), snaps.config.T
    seq = []
    for k in range(12):
        seq += [dict(t=k % T), dict(alpha=float(10 ** (0.5 + 0.15 * k))), dict(iteration=k % n_snap)]
    seq += [dict(grad="critic"), dict(t=1), dict(grad="exact")]
    first, warm = [], []
    for r in range(args.repeats):
        for values in seq:
            (first if r == 0 else warm).append(timed(ex, **values))
    slow = [timed(ex, layout="side-by-side"), timed(ex, layout="overlay"), timed(ex, bandit="ring"), timed(ex, bandit="four-gaussians")]
    lines += [
        f"bandit explorer: build {build:.0f} ms, {ex.figure.get_size_inches()[0] * ex.dpi:.0f} px wide PNG",
        summarise("  fast controls, all updates", first + warm),
        summarise("  fast controls, first pass (cache misses)", first),
        summarise("  fast controls, later passes (cached)", warm) if warm else "",
        summarise("  figure rebuilds (layout, bandit)", slow),
    ]
    # -- gridworld explorer ----------------------------------------------------------------------
    t0 = time.perf_counter()
    g = widgets.explore_gridworld("cliff")
    g.render_png()
    build = (time.perf_counter() - t0) * 1000
    cells = [s for _, s in g.controls["cell"].options]
    seq = []
    for k in range(12):
        seq += [dict(cell=cells[k % len(cells)]), dict(alpha=float(10 ** (0.2 + 0.18 * k)))]
    first, warm = [], []
    for r in range(args.repeats):
        for values in seq:
            (first if r == 0 else warm).append(timed(g, **values))
    slow = [timed(g, slip=s) for s in (0.1, 0.2, 0.0)] + [timed(g, layout="two-routes"), timed(g, layout="cliff")]
    lines += [
        f"gridworld explorer: build {build:.0f} ms, {g.figure.get_size_inches()[0] * g.dpi:.0f} px wide PNG",
        summarise("  fast controls (cell, alpha), all updates", first + warm),
        summarise("  fast controls, first pass (cache misses)", first),
        summarise("  fast controls, later passes (cached)", warm) if warm else "",
        summarise("  slip and layout (map redrawn)", slow),
    ]
    print("\n".join(line for line in lines if line))


if __name__ == "__main__":
    main()
