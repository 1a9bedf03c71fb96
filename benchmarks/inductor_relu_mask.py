"""Is ``fast.relu``'s workaround still needed? A compiled ReLU with Inductor's bool mask against one without.

    python benchmarks/inductor_relu_mask.py          # ~1 min: two small compilations, then timings

``qsm_tutorial.algos.fast.relu`` exists for one slow kernel. Traced from ``F.relu``, TorchInductor
saves the ReLU's mask as bools (``out <= 0``) for the backward, and on AVX-512 CPUs its C++ code
that stores a bool mask ran ~25× slower than the ReLU itself (torch 2.13 on a 2-core Xeon: a ReLU
over [2, 256, 512] with its mask 4.3 ms, 0.15 ms without; Inductor's AVX2 code, forced on the same
Xeon, 6.2 ms against 0.28 ms). ``fast.relu`` gives compiled code a ReLU whose backward reads the
output instead, and the mask is gone (+16 % compiled updates/s on that Xeon).

This script measures the same thing on the machine and torch it runs with: the forward (keeping
what the backward needs) and backward of ``relu(x)`` over an [S, 256, 512] stack, compiled once with
``F.relu`` and once with ``fast.relu``, interleaved, medians. If a later torch brings the ratio near 1
on AVX-512 machines, ``fast.relu`` can go back to ``F.relu``. For a report upstream, the mask's
kernel is the one ``TORCH_LOGS=output_code`` prints with a ``bool*`` argument. To see the AVX2 code on
an AVX-512 machine, set ``ATEN_CPU_CAPABILITY=avx2`` *and* a fresh ``TORCHINDUCTOR_CACHE_DIR``: torch
2.13's compile cache does not tell the two apart and fails with "tuple args required" on the other's
kernels (measured: AVX2 code 8.3 ms against 1.1 ms, AVX-512 code 8.3 ms against 1.0 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from qsm_tutorial.algos import fast  # noqa: E402


def forward_backward(relu):
    def step(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        out = relu(x)
        (gx,) = torch.autograd.grad(out, x, grad)
        return gx

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2, help="leading stack axis S (default 2: the twin critics' hidden layer)")
    p.add_argument("--reps", type=int, default=21, help="interleaved repetitions (default 21)")
    args = p.parse_args()
    try:
        fast.check_compilable(torch.device("cpu"))
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(1)
    x = torch.randn(args.seeds, 256, 512, requires_grad=True)
    grad = torch.randn(args.seeds, 256, 512)
    contestants = {"F.relu (bool mask)": F.relu, "fast.relu (no mask)": fast.relu}
    compiled = {}
    for name, relu in contestants.items():
        t0 = time.perf_counter()
        compiled[name] = torch.compile(forward_backward(relu), dynamic=False)
        expected = forward_backward(F.relu)(x, grad)
        assert torch.equal(compiled[name](x, grad), expected), name  # same gradient, bit for bit
        print(f"compiled {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(args.reps):
        for name, step in compiled.items():
            t0 = time.perf_counter()
            for _ in range(10):
                step(x, grad)
            times[name].append((time.perf_counter() - t0) / 10)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}, x {list(x.shape)}, 1 thread")
    for name, ms in medians.items():
        print(f"  {name:<22} {ms:7.3f} ms per forward + backward (median of {args.reps})")
    ratio = medians["F.relu (bool mask)"] / medians["fast.relu (no mask)"]
    print(f"  ratio {ratio:.1f}x: {'the workaround still pays' if ratio > 1.2 else 'no longer needed here'}")


if __name__ == "__main__":
    main()
