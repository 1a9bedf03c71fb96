"""What Ray costs a sweep on this machine: start-up, per-trial overhead, the runtime's memory, and the
wall time of a 4-trial sweep against the same four ``qsm-train`` commands launched by hand
(``xargs -P``, as many at once as the sweep runs).

    python benchmarks/sweep_overhead.py [--repeats 3] [--steps 1500]

Prints a table and writes ``benchmarks/results/sweep_overhead_<machine>.json``; medians over
``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from qsm_tutorial import sweep  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
GRID = ["--algos", "qsm,td3", "--envs", "bandit/four-gaussians", "--seeds", "0-1", "--checkpoint-every", "500",
        "--eval-every", "500", "--eval-episodes", "5"]  # fmt: skip


def ray_process_rss_mib() -> float:
    """Resident memory of the private Ray this process started (gcs, raylet, agents, idle workers:
    all descendants of this process), from /proc via ps."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,rss"], capture_output=True, text=True).stdout.splitlines()[1:]
    table = [tuple(int(x) for x in line.split()) for line in out]
    mine, grew = {os.getpid()}, True
    while grew:
        new = {pid for pid, ppid, _ in table if ppid in mine} - mine
        mine |= new
        grew = bool(new)
    return sum(rss for pid, _, rss in table if pid in mine and pid != os.getpid()) / 1024


def start_up_and_trial_overhead() -> tuple[float, float, float]:
    """(ray.init seconds, seconds per trial of nothing in a fresh worker that imports the CLI, MiB)."""
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    start = time.perf_counter() - t0
    time.sleep(2.0)  # let the prestarted workers settle before measuring memory
    memory = ray_process_rss_mib()

    @ray.remote(num_cpus=1, max_calls=1)
    def empty_trial() -> None:
        import qsm_tutorial.cli  # noqa: F401  (what every trial imports before it trains)

    per_trial = []
    for _ in range(3):
        t0 = time.perf_counter()
        ray.get(empty_trial.remote())
        per_trial.append(time.perf_counter() - t0)
    ray.shutdown()
    return start, statistics.median(per_trial), memory


def timed(command: list[str] | str, shell: bool = False) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, shell=shell, env=ENV, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    jobs = os.cpu_count() or 1
    rows: dict[str, list[float]] = {"ray_start_s": [], "trial_overhead_s": [], "ray_memory_mib": [], "by_hand_s": [], "sweep_s": []}
    for r in range(args.repeats):
        start, overhead, memory = start_up_and_trial_overhead()
        rows["ray_start_s"].append(start)
        rows["trial_overhead_s"].append(overhead)
        rows["ray_memory_mib"].append(memory)
        with tempfile.TemporaryDirectory() as tmp:
            grid = [*GRID, "--total-steps", str(args.steps)]
            commands = subprocess.run([sys.executable, "-m", "qsm_tutorial.sweep", *grid, "--runs-root", f"{tmp}/hand", "--print-commands"],
                                      env=ENV, check=True, capture_output=True, text=True).stdout  # fmt: skip
            rows["by_hand_s"].append(timed(f"printf '%s\\n' {shlex.quote(commands)} | xargs -P {jobs} -I{{}} sh -c '{{}}'", shell=True))
            rows["sweep_s"].append(timed([sys.executable, "-m", "qsm_tutorial.sweep", *grid, "--runs-root", f"{tmp}/swept", "--quiet"]))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items()), flush=True)
    medians = {k: statistics.median(v) for k, v in rows.items()}
    medians["sweep_over_by_hand"] = medians["sweep_s"] / medians["by_hand_s"]
    result = {"machine": platform.processor() or platform.machine(), "cpus": jobs, "repeats": args.repeats,
              "trials": "qsm,td3 x seeds 0,1 on bandit/four-gaussians", "steps": args.steps, "runs": rows, "median": medians}  # fmt: skip
    out = Path(args.out) / f"sweep_overhead_{platform.machine()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nmedians over {args.repeats} repeats ({jobs} CPUs, 4 trials of {args.steps} steps, {jobs} at a time):")
    for k, v in medians.items():
        print(f"  {k:22s} {v:8.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
