"""The throughput benchmark's compute bound rests on its count of an update's matrix multiplies
(``benchmarks/throughput.py``: ``qsm_update_gemms``). Here that count is checked against the
products one (eager) update really runs, recorded below the autograd engine by a dispatch mode: a
layer added to a network, or a change of the update's work, and the count no longer matches."""

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


throughput = load_benchmark("throughput")

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


@pytest.mark.parametrize("batch, hidden, T", [(32, 64, 5), (16, 48, 3)])
def test_gemm_count_is_what_an_update_runs(batch, hidden, T):
    torch.manual_seed(0)
    cfg = QSMConfig(device="cpu", compile="off", T=T, actor_hidden=(hidden, hidden), critic_hidden=(hidden, hidden), batch_size=batch)
    agent = QSMAgent(throughput.OBS, throughput.ACT, cfg)
    minibatch = throughput.fixed_batch(torch.device("cpu"), B=batch)
    agent.update(minibatch)  # the first update builds optimiser state; count a later one
    with RecordGemms() as record:
        agent.update(minibatch)
    model = throughput.qsm_update_gemms(B=batch, actor_hidden=(hidden, hidden), critic_hidden=(hidden, hidden), T=T)
    assert unoriented(record.shapes) == unoriented(model)
    assert throughput.flops(record.shapes.elements()) == throughput.flops(model)


@pytest.mark.parametrize("warm", [True, False])
def test_bound_writes_every_product_into_memory_allocated_once(warm):
    """Fresh outputs on every pass made the bound time page faults, not products (docs/performance.md):
    two passes must return the same output storage, product by product."""
    run = throughput.gemm_runner(throughput.qsm_update_gemms(B=16, actor_hidden=(32, 32), critic_hidden=(32, 32)), torch.device("cpu"), warm)
    first = run()
    second = run()
    assert len(first) == len(second) > 0
    assert [o.data_ptr() for o in first] == [o.data_ptr() for o in second]


def test_one_graph_benchmark_times_the_packages_update():
    """``benchmarks/one_graph_update.py`` compares the package's compiled update with the same update
    written functionally; its figures mean something only if that is the same update: two eager steps
    of each, from the same weights and draws, must leave every parameter equal (measured: 0.0)."""
    assert load_benchmark("one_graph_update").agreement() <= 1e-6


def run_benchmark(*args: str, timeout: int):
    import json
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "throughput.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--json", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout), done.stderr


def assert_measured(result: dict, keys) -> None:
    import math

    for key in keys:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key


EAGER_KEYS = ("gemm_gflops", "compute_bound_update_per_s", "qsm_update_per_s_eager", "sac_update_per_s", "td3_update_per_s",
              "multiseed_speedup", "multiseed_speedup_64_eager", "multiseed_loop_speedup_64")  # fmt: skip
COMPILED_KEYS = ("qsm_update_per_s", "qsm_compile_s", "ratio_default_over_eager", "ratio_default_over_compute_bound", "multiseed_speedup_64")
LOOP_KEYS = ("loop_steps_per_s", "ratio_loop_over_update")


def test_throughput_benchmark_reports_its_eager_figures():
    """``throughput.py --quick --json`` without its slow parts (compiling takes 40-80 s on a busy
    2-core machine): every figure of the parts that ran is measured, the others are there as
    null. No timing is asserted (CI machines are shared), only that each figure was measured."""
    result, table = run_benchmark("--skip", "compile,loop,memory", timeout=600)
    assert set(throughput.HEADLINE) <= set(result)
    assert_measured(result, EAGER_KEYS)
    assert all(result[key] is None for key in COMPILED_KEYS + LOOP_KEYS)
    assert result["skipped"] == ["compile", "loop", "memory"]
    assert "QSM eager (compile=off)" in table and "4 seeds as one update" in table  # the table


def test_throughput_benchmark_leaves_out_the_seeds_loop_where_asked():
    """``--skip multiseed-loop`` (the GPU machine has no dm_control, benchmarks/gpu_check.sh): the
    stacked seeds' updates are still measured, their whole-loop figure is not, and the table says nothing of it."""
    result, table = run_benchmark("--skip", "compile,loop,memory,multiseed-loop", timeout=600)
    assert_measured(result, [key for key in EAGER_KEYS if key != "multiseed_loop_speedup_64"])
    assert result["multiseed_loop_speedup_64"] is None and "whole loop" not in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_check_refuses_a_machine_without_a_gpu_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1 and done.stdout.strip().splitlines() == ["gpu_check: torch sees no CUDA GPU here; run this on the GPU machine"]


@pytest.mark.slow
def test_throughput_benchmark_reports_every_figure():
    """The same with the compiled update, the training loop and the compiled seeds (one to two minutes
    on 2 busy cores, more when they are loaded)."""
    result, table = run_benchmark("--skip", "memory", timeout=1200)
    assert_measured(result, EAGER_KEYS + COMPILED_KEYS + LOOP_KEYS)
    assert "compiled / eager" in table and "loop / update alone" in table


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
