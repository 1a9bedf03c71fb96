"""The throughput benchmark's compute bound rests on its count of an update's matrix multiplies
(``benchmarks/throughput.py``: ``qsm_update_gemms``). Here that count is checked against the
products one update really runs, recorded below the autograd engine by a dispatch mode, for the
reference and the fast path: a layer added to a network, or an optimisation that changes the work,
and the count no longer matches."""

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig

_spec = importlib.util.spec_from_file_location("throughput", Path(__file__).parents[1] / "benchmarks" / "throughput.py")
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)

aten = torch.ops.aten


class RecordGemms(TorchDispatchMode):
    """Every (M, K, N) matrix product run inside the block (batched ones once per batch entry)."""

    def __init__(self):
        super().__init__()
        self.shapes: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default):
            a, b = args[:2] if func in (aten.mm.default, aten.bmm.default) else args[1:3]
            self.shapes[(a.shape[-2], a.shape[-1], b.shape[-1])] += a.numel() // (a.shape[-2] * a.shape[-1])
        return func(*args, **(kwargs or {}))


def unoriented(shapes) -> Counter:
    """(M, K, N) and its transpose (N, K, M) are the same work."""
    return Counter((k, *sorted((m, n))) for m, k, n in Counter(shapes).elements())


@pytest.mark.parametrize("fast_path", [False, True], ids=["reference", "fast"])
@pytest.mark.parametrize("batch, hidden, T", [(32, 64, 5), (16, 48, 3)])
def test_gemm_count_is_what_an_update_runs(fast_path, batch, hidden, T):
    torch.manual_seed(0)
    cfg = QSMConfig(device="cpu", fast=fast_path, T=T, actor_hidden=(hidden, hidden), critic_hidden=(hidden, hidden), batch_size=batch)
    agent = QSMAgent(throughput.OBS, throughput.ACT, cfg)
    minibatch = throughput.fixed_batch(torch.device("cpu"), B=batch)
    agent.update(minibatch)  # the first update builds optimiser state; count a later one
    with RecordGemms() as record:
        agent.update(minibatch)
    model = throughput.qsm_update_gemms(B=batch, actor_hidden=(hidden, hidden), critic_hidden=(hidden, hidden), T=T, fast_path=fast_path)
    assert unoriented(record.shapes) == unoriented(model)
    assert throughput.flops(record.shapes.elements()) == throughput.flops(model)


@pytest.mark.slow
def test_throughput_benchmark_runs_and_reports_its_figures():
    """``benchmarks/throughput.py --quick --json`` end to end (about 1.5 min on 2 cores): every
    section but memory runs and the JSON carries the figures the speed targets are read from. No
    timing is asserted (CI machines are shared), only that each figure was measured."""
    import json
    import math
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "throughput.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--json", "--skip", "memory"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for key in ("qsm_update_per_s", "qsm_update_per_s_reference", "sac_update_per_s", "td3_update_per_s",
                "gemm_gflops", "loop_steps_per_s", "multiseed_speedup", "compute_bound_update_per_s"):  # fmt: skip
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert "fast / reference" in done.stderr and "loop / update alone" in done.stderr  # the table


@pytest.mark.parametrize(("args", "message"), [
    (["--skip", "lop"], "unknown section(s) lop"),
    (["--device", "gpu"], "invalid choice: 'gpu'"),
    (["--threads", "0"], "argument --threads: expected an integer >= 1"),
] + ([(["--device", "cuda"], "sees no CUDA GPU")] if not torch.cuda.is_available() else []))  # fmt: skip
def test_throughput_benchmark_refuses_bad_arguments_at_once(args, message):
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "throughput.py"
    done = subprocess.run([sys.executable, str(script), "--quick", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_inductor_relu_mask_benchmark_compares_two_compiled_relus_with_the_same_gradient():
    """``benchmarks/inductor_relu_mask.py`` (the check of whether ``fast.relu``'s workaround is still
    needed) runs: both compiled ReLUs give F.relu's gradient bit for bit (the script asserts it) and
    their timings and ratio are printed. No timing is asserted."""
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "inductor_relu_mask.py"
    done = subprocess.run([sys.executable, str(script), "--reps", "3"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "F.relu (bool mask)" in done.stdout and "fast.relu (no mask)" in done.stdout and "ratio" in done.stdout
