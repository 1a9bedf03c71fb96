"""A/B of the critic's ReLU under ``torch.compile``: one seed at 64 and 512 wide against four vmapped
64-wide seeds (``QSMSeeds``), for ``nn.ReLU`` (the package) and two forms of the same function that
change what Inductor keeps for the backward (``nn.ReLU`` kept a bool mask until ``qsm.compiled`` had the
partitioner recompute it).

    python benchmarks/critic_activation.py            # all three, each in a fresh process
    python benchmarks/critic_activation.py halfabs    # one

Each variant runs in its own process with an empty Inductor cache; medians of 7 interleaved
repetitions; one JSON line per variant. The figures and their reading are in docs/performance.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


class HalfAbs(nn.Module):
    """relu(x) = (x + |x|) / 2: its backward needs no bool mask."""

    def forward(self, x):
        return 0.5 * (x + x.abs())


class ClampMin(nn.Module):
    def forward(self, x):
        return x.clamp_min(0.0)


VARIANTS = {"relu": nn.ReLU, "halfabs": HalfAbs, "clamp": ClampMin}


def measure(variant: str) -> dict:
    import qsm_tutorial.nets as nets

    plain_mlp = nets.mlp
    nets.mlp = lambda sizes, activation: plain_mlp(sizes, VARIANTS[variant] if activation is nn.ReLU else activation)
    from qsm_tutorial.algos.qsm import QSMConfig
    from throughput import interleaved, seed_updates

    result = {"variant": variant}
    for width in (64, 512):
        cfg = QSMConfig(actor_hidden=(width, width), critic_hidden=(width, width), compile="on")
        one_seed, four_seeds = seed_updates(cfg, torch.device("cpu"))
        # four seeds only at 64-wide (the target's case); 512-wide is the long runs' one-seed update
        contestants = {"S1": (one_seed, 10), "S4": (four_seeds, 10)} if width == 64 else {"S1": (one_seed, 2)}
        for fn, _ in contestants.values():  # compile outside the timing
            fn()
        times = interleaved(contestants, 7, lambda: None)
        result.update({f"{name}_{width}_ms": round(t["wall"] * 1e3, 2) for name, t in times.items()})
    result["speedup_4_seeds_64"] = round(4 * result["S1_64_ms"] / result["S4_64_ms"], 2)
    return result


def main() -> None:
    if len(sys.argv) > 1:
        torch.set_num_threads(1)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
        print(json.dumps(measure(sys.argv[1])), flush=True)
        return
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, variant], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"{variant}: failed\n{out.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    main()
