"""Throughput on this machine: the compute bound, the QSM update (fast and reference paths) beside
SAC and TD3, the whole training loop, several seeds in one process, and memory.

    python benchmarks/throughput.py                 # full run, writes benchmarks/results/throughput_<device>[_<simd>].json
    python benchmarks/throughput.py --quick         # CI size (about two minutes on 2 busy cores)
    python benchmarks/throughput.py --json          # the same, one JSON object on stdout

Protocol. One process, ``--threads`` torch threads (default 1: on a 2-core machine shared with
other jobs a second OpenMP thread waits on descheduled peers and makes every op slower). Every
figure is a median over ``--reps`` repeated measurements, and measurements that are compared with
each other are *interleaved* (A, B, C, A, B, C, ...), so a change of machine load hits all of them
alike; the load average is recorded next to each section. Both wall-clock and process CPU time
are kept: wall clock is what a run gets on this machine now, CPU time is closer to what it would
get on an idle one. Update timings use a fixed minibatch of cheetah-run sizes (|S| = 17, |A| = 6).

- gemm: the compute bound. The matrix multiplies of one reference QSM update at the paper's sizes
  (batch 256, 512×512 networks, T = 5), listed from the layer shapes (forward and backward: every
  layer's input- and weight-gradient product that autograd needs), are timed back to back, the
  products of one shape on the same operands (cache-hot: the best this machine does at these
  shapes); their FLOPs over that time is ``gemm_gflops``, and one update per that time is the
  bound. Also given: the same list on distinct, cache-cold operands (slower when other jobs fill
  the shared L3 cache), and square 512² and 1024² products for scale.
- updates/s: QSM (512×512, T = 5) on the fast path, the fast path compiled (``compile=True``; its
  first update, which compiles, is timed separately with an empty Inductor cache: ``qsm_compile_s``)
  and on the reference path (``fast=False``), SAC
  and TD3 at the paper's 256×256, and SAC at 512×512 for a same-width comparison.
- loop: ``qsm_tutorial.train`` on dmc/cheetah-run at the paper's sizes after a short warm-up; env
  steps/s from the loop's own timing windows (evaluation excluded). Runs alternate with
  measurements of the fast update alone; each run is compared with the update-alone rates just
  before and just after it, and the median ratio is reported.
- multiseed: one stacked update of S = 4 seeds against S = 1 (``multiseed.StackedQSM``) at the
  paper's sizes and at 64×64; and the whole lockstep loop (``train_seeds``) for 4 seeds against 1
  at 64×64. ``multiseed_speedup`` = 4 × time(1 seed) / time(4 seeds in one process); ≥ 2 means four
  seeds take at most twice the wall time of one.
- memory: bytes of a 1M-transition cheetah-run replay buffer, and the RSS of a fresh process
  sampled every 0.25 s while ``train`` runs ``--memory-steps`` env steps (32×32 networks, batch 64,
  a buffer of a quarter of the steps, so that it is full, all its pages resident, from the first
  quarter on): from then on nothing should grow.
- GPU: where CUDA is present (``--device auto``), the updates and multiseed sections run again on it
  (``updates_cuda``, ``multiseed_cuda`` in the JSON, a second table below the CPU's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
os.environ.setdefault("MUJOCO_GL", "egl")

from qsm_tutorial.algos import fast  # noqa: E402
from qsm_tutorial.algos.common import count_argument, resolve_device  # noqa: E402
from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig  # noqa: E402
from qsm_tutorial.algos.sac import SACAgent, SACConfig  # noqa: E402
from qsm_tutorial.algos.td3 import TD3Agent, TD3Config  # noqa: E402
from qsm_tutorial.replay import Batch, ReplayBuffer  # noqa: E402

OBS, ACT, BATCH = 17, 6, 256  # dmc/cheetah-run; the paper's batch


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) CPU time of the whole machine so far, from /proc/stat (Linux; None elsewhere).
    Steal is time the hypervisor gave this VM's cores to another guest: on a shared cloud host it,
    more than the load average, says whether a slow figure is this code's or a neighbour's."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_percent(before: tuple[int, int] | None) -> float | None:
    """Share of the machine's CPU time stolen since ``before`` (``cpu_jiffies``), in %."""
    after = cpu_jiffies()
    if before is None or after is None or after[1] == before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 2)


def with_steal(section, *args, **kwargs) -> dict:
    """``section(*args, **kwargs)``'s results, with the share of CPU time stolen while it ran."""
    before = cpu_jiffies()
    out = section(*args, **kwargs)
    out["steal_percent"] = steal_percent(before)
    return out


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------
# FLOPs of one QSM update, from the layer shapes
# ----------------------------------------------------------------------------------------------
def _linear(rows: int, n_in: int, n_out: int, forward=True, input_grad=False, weight_grad=False) -> list[tuple[int, int, int]]:
    """The (M, K, N) products of one linear layer on ``rows`` rows."""
    g = [(rows, n_in, n_out)] if forward else []
    if input_grad:
        g.append((rows, n_out, n_in))
    if weight_grad:
        g.append((n_out, rows, n_in))
    return g


def qsm_update_gemms(B=BATCH, O=OBS, A=ACT, actor_hidden=(512, 512), critic_hidden=(512, 512), T=5,
                     time_hidden=128, n_freq=32, fast_path=False) -> list[tuple[int, int, int]]:  # fmt: skip
    """Every matrix multiply of one QSM update (reference path unless ``fast_path``); the count is
    pinned against the products an update really runs by ``tests/test_benchmarks.py``."""
    time_layers = [(2 * n_freq, time_hidden), (time_hidden, time_hidden)]
    net = list(zip([A + O + time_hidden, *actor_hidden], [*actor_hidden, A]))
    critic = list(zip([O + A, *critic_hidden], [*critic_hidden, 1]))
    # The fast path (algos/fast.py) runs the time MLP on the T step values (padded to 8 rows), which
    # enter the first layer as a per-step bias; a one-output layer's input gradient is elementwise.
    rows = -(-T // 8) * 8
    time_bias = [*time_layers, (time_hidden, actor_hidden[0])]
    g: list[tuple[int, int, int]] = []
    # 1. TD target: a' from T denoiser passes at s' (no grad), then both target critics.
    if fast_path:  # the step biases and the observation's part of layer 1 once, then the action columns
        for i, o in time_bias:
            g += _linear(rows, i, o)
        g += _linear(B, O, actor_hidden[0])
        for _ in range(T):
            g += _linear(B, A, actor_hidden[0])
            for i, o in net[1:]:
                g += _linear(B, i, o)
    else:
        for _ in range(T):
            for i, o in time_layers + net:
                g += _linear(B, i, o)
    for _ in range(2):
        for i, o in critic:
            g += _linear(B, i, o)
    # 2. critic step: both critics forward and backward (no gradient into the input data).
    last = len(critic) - 1 if fast_path else len(critic)
    for _ in range(2):
        for layer, (i, o) in enumerate(critic):
            g += _linear(B, i, o, input_grad=0 < layer < last, weight_grad=True)
    # 3. grad_a Q at the noised actions: forward, and backward to the input only (by hand on the
    #    fast path: the hidden layers forward, then the masked weights multiplied back down).
    for _ in range(2):
        for i, o in critic[:-1] if fast_path else critic:
            g += _linear(B, i, o, input_grad=True)
    # 4. actor step: the denoiser forward and backward (the time features take gradients too).
    if fast_path:  # step biases, one-hot row selection, the [a, s] columns of layer 1, the rest
        for i, o in time_bias:
            g += _linear(rows, i, o, input_grad=True, weight_grad=True)
        g += _linear(B, T, actor_hidden[0], weight_grad=True)  # backward: the step biases' gradient
        g += _linear(B, A + O, actor_hidden[0], weight_grad=True)
        for i, o in net[1:]:
            g += _linear(B, i, o, input_grad=True, weight_grad=True)
    else:
        for i, o in time_layers + net:
            g += _linear(B, i, o, input_grad=True, weight_grad=True)
    return g


def flops(gemms: list[tuple[int, int, int]]) -> int:
    return sum(2 * m * k * n for m, k, n in gemms)


# ----------------------------------------------------------------------------------------------
# Interleaved timing
# ----------------------------------------------------------------------------------------------
def make_sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def interleaved(contestants: dict[str, tuple], reps: int, sync) -> dict[str, dict]:
    """``contestants``: name → (fn, calls per measurement). Each repetition measures every
    contestant once, in turn; returns per-call wall and CPU seconds (medians and all values)."""
    for fn, _ in contestants.values():
        fn()
    sync()
    walls: dict[str, list[float]] = {k: [] for k in contestants}
    cpus: dict[str, list[float]] = {k: [] for k in contestants}
    for _ in range(reps):
        for name, (fn, n) in contestants.items():
            sync()
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            sync()
            walls[name].append((time.perf_counter() - w0) / n)
            cpus[name].append((time.process_time() - c0) / n)
    return {k: {"wall": statistics.median(walls[k]), "cpu": statistics.median(cpus[k]), "walls": walls[k]} for k in contestants}


def fixed_batch(device, B=BATCH, O=OBS, A=ACT) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        torch.randn(B, O, generator=g).to(device), (torch.rand(B, A, generator=g) * 2 - 1).to(device),
        torch.rand(B, generator=g).to(device), torch.randn(B, O, generator=g).to(device), torch.ones(B, device=device),
    )  # fmt: skip


def gemm_runner(gemms, device, warm: bool):
    """All the products of ``gemms``: each on its own operands (``warm=False``: cache-cold, as
    distinct weights and activations are in an update), or the products of one shape one after
    another on the same operands (``warm=True``: cache-hot, the machine's best at these shapes)."""
    if not warm:
        mats = [(torch.randn(m, k, device=device), torch.randn(k, n, device=device)) for m, k, n in gemms]
        return lambda: [torch.mm(a, b) for a, b in mats]
    counts: dict[tuple[int, int, int], int] = {}
    for shape in gemms:
        counts[shape] = counts.get(shape, 0) + 1
    mats = [(torch.randn(m, k, device=device), torch.randn(k, n, device=device), c) for (m, k, n), c in counts.items()]
    return lambda: [torch.mm(a, b) for a, b, c in mats for _ in range(c)]


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
def section_updates(device, reps: int, n: int) -> dict:
    """(a) the compute bound and (b) updates/s, all interleaved."""
    sync = make_sync(device)
    torch.manual_seed(0)
    batch = fixed_batch(device)
    ref_gemms, fast_gemms = qsm_update_gemms(), qsm_update_gemms(fast_path=True)
    agents = {
        "qsm_fast": QSMAgent(OBS, ACT, QSMConfig(device=str(device), fast=True)),
        "qsm_reference": QSMAgent(OBS, ACT, QSMConfig(device=str(device), fast=False)),
        "sac": SACAgent(OBS, ACT, SACConfig(device=str(device))),
        "td3": TD3Agent(OBS, ACT, TD3Config(device=str(device))),
        "sac_512": SACAgent(OBS, ACT, SACConfig(device=str(device), actor_hidden=(512, 512), critic_hidden=(512, 512))),
    }
    # compile=True: the first update compiles; timed with an empty Inductor cache, as on a fresh machine
    agents["qsm_compiled"] = QSMAgent(OBS, ACT, QSMConfig(device=str(device), fast=True, compile=True))
    user_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        start = time.perf_counter()
        agents["qsm_compiled"].update(batch)
        sync()
        compile_s = time.perf_counter() - start
    if user_cache is None:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = user_cache
    sq = {s: (torch.randn(s, s, device=device), torch.randn(s, s, device=device)) for s in (512, 1024)}
    contestants = {
        "gemm_update_shapes": (gemm_runner(ref_gemms, device, warm=True), 1),
        "gemm_update_shapes_cold": (gemm_runner(ref_gemms, device, warm=False), 1),
        "gemm_512": (lambda: torch.mm(*sq[512]), 10),
        "gemm_1024": (lambda: torch.mm(*sq[1024]), 2),
        **{name: ((lambda a=a: a.update(batch)), n if not name.startswith("qsm") else max(1, n // 2)) for name, a in agents.items()},
    }
    before = load()
    t = interleaved(contestants, reps, sync)
    per_s = {k: 1.0 / v["wall"] for k, v in t.items()}
    per_s_cpu = {k: 1.0 / v["cpu"] for k, v in t.items()}
    ref_flop, fast_flop = flops(ref_gemms), flops(fast_gemms)
    gemm_gflops = ref_flop / t["gemm_update_shapes"]["wall"] / 1e9
    out = {
        "load_before": before,
        "load_after": load(),
        "qsm_gflop_per_update": ref_flop / 1e9,
        "qsm_gflop_per_update_fast_path": fast_flop / 1e9,
        "gemm_gflops": gemm_gflops,
        "gemm_gflops_cpu_time": ref_flop / t["gemm_update_shapes"]["cpu"] / 1e9,
        "gemm_gflops_cold_operands": ref_flop / t["gemm_update_shapes_cold"]["wall"] / 1e9,
        "gemm_gflops_cold_operands_cpu_time": ref_flop / t["gemm_update_shapes_cold"]["cpu"] / 1e9,
        "gemm_gflops_512": 2 * 512**3 / t["gemm_512"]["wall"] / 1e9,
        "gemm_gflops_1024": 2 * 1024**3 / t["gemm_1024"]["wall"] / 1e9,
        "compute_bound_update_per_s": per_s["gemm_update_shapes"],
        "compute_bound_update_per_s_cpu_time": per_s_cpu["gemm_update_shapes"],
        "qsm_update_per_s": per_s["qsm_fast"],
        "qsm_update_per_s_reference": per_s["qsm_reference"],
        "qsm_update_per_s_compiled": per_s["qsm_compiled"],
        "qsm_compile_s": compile_s,
        "sac_update_per_s": per_s["sac"],
        "td3_update_per_s": per_s["td3"],
        "sac_512_update_per_s": per_s["sac_512"],
        "cpu_time_update_per_s": {k: per_s_cpu[k] for k in agents},
        "wall_s_all": {k: v["walls"] for k, v in t.items()},
    }
    out["ratio_fast_over_reference"] = out["qsm_update_per_s"] / out["qsm_update_per_s_reference"]
    out["ratio_fast_over_reference_cpu_time"] = per_s_cpu["qsm_fast"] / per_s_cpu["qsm_reference"]
    out["ratio_fast_over_compute_bound"] = out["qsm_update_per_s"] / out["compute_bound_update_per_s"]
    out["ratio_compiled_over_reference"] = per_s["qsm_compiled"] / per_s["qsm_reference"]
    out["ratio_compiled_over_compute_bound"] = per_s["qsm_compiled"] / per_s["gemm_update_shapes"]
    out["ratio_fast_over_compute_bound_cpu_time"] = per_s_cpu["qsm_fast"] / per_s_cpu["gemm_update_shapes"]
    out["ratio_fast_over_cold_operand_bound"] = per_s["qsm_fast"] / per_s["gemm_update_shapes_cold"]
    out["ratio_reference_over_compute_bound"] = per_s["qsm_reference"] / per_s["gemm_update_shapes"]
    out["ratio_qsm_time_over_sac_512_time"] = per_s["sac_512"] / per_s["qsm_fast"]
    out["ratio_qsm_time_over_sac_256_time"] = per_s["sac"] / per_s["qsm_fast"]
    out["ratio_qsm_reference_time_over_sac_512_time"] = per_s["sac_512"] / per_s["qsm_reference"]
    return out


def section_loop(device, rounds: int, warmup: int, log_every: int, windows: int) -> dict:
    """(c) env steps/s of train() on dmc/cheetah-run against the update alone, alternated:
    update alone, a train() run, update alone, a train() run, ... (``rounds`` runs); each run's
    loop rate is compared with the mean of the update-alone rates measured just before and after.
    This VM's speed drifts within seconds (per-round ratios 0.74-1.08 in one run with three rounds,
    each update-alone sample 9 updates), so each sample is 24 updates and full runs take five rounds."""
    import qsm_tutorial

    sync = make_sync(device)
    batch = fixed_batch(device)
    agent = QSMAgent(OBS, ACT, QSMConfig(device=str(device)))
    alone = lambda: 1.0 / interleaved({"update": (lambda: agent.update(batch), 3)}, 8, sync)["update"]["wall"]  # noqa: E731
    before_load = load()
    total = warmup + log_every * (windows + 1)
    update_rates, loop_rates, all_windows, ratios = [alone()], [], [], []
    for r in range(rounds):
        run = qsm_tutorial.train("dmc/cheetah-run", "qsm", total_steps=total, seed=r, progress=False, device=str(device), preset="paper",
                                 warmup_steps=warmup, eval_every=10**9, eval_episodes=1, log_every=log_every)  # fmt: skip
        # whole windows of training steps; the first one after the warm-up is left out (start-up)
        w = [row["steps_per_s"] for row in run.timing if row["step"] > warmup + log_every]
        all_windows += w
        loop_rates.append(statistics.median(w))
        update_rates.append(alone())
        ratios.append(loop_rates[-1] / ((update_rates[-2] + update_rates[-1]) / 2))
    return {
        "load_before": before_load,
        "load_after": load(),
        "env": "dmc/cheetah-run",
        "warmup_steps": warmup,
        "rounds": rounds,
        "measured_steps": log_every * len(all_windows),
        "loop_steps_per_s": statistics.median(all_windows),
        "loop_windows_steps_per_s": all_windows,
        "update_alone_per_s": statistics.median(update_rates),
        "update_alone_per_s_all": update_rates,
        "ratio_loop_over_update_alone": statistics.median(ratios),
        "ratios_per_round": ratios,
    }


def section_multiseed(device, reps: int, loop_steps: int) -> dict:
    """(d) S = 4 seeds stacked against S = 1: one update, and the whole lockstep loop."""
    from qsm_tutorial.multiseed import StackedQSM, train_seeds

    sync = make_sync(device)
    out: dict = {"load_before": load()}
    for label, hidden in (("paper_512", (512, 512)), ("small_64", (64, 64))):
        cfg = QSMConfig(device=str(device), actor_hidden=hidden, critic_hidden=hidden)
        stacks, args = {}, {}
        for S in (1, 4):
            torch.manual_seed(0)
            stacks[S] = StackedQSM([QSMAgent(OBS, ACT, cfg) for _ in range(S)])
            batches = [fixed_batch(device) for _ in range(S)]
            args[S] = (batches, [fast.draw_td_noise(cfg, b, ACT) for b in batches],
                       [fast.draw_actor_noise(cfg, BATCH, ACT, device) for _ in range(S)])  # fmt: skip
        n = 1 if label == "paper_512" else 5
        t = interleaved({f"S{S}": ((lambda S=S: stacks[S].update(*args[S])), n) for S in (1, 4)}, reps, sync)
        out[f"update_{label}_s_per_update"] = {"S1": t["S1"]["wall"], "S4": t["S4"]["wall"]}
        out[f"update_{label}_speedup"] = 4 * t["S1"]["wall"] / t["S4"]["wall"]
        out[f"update_{label}_speedup_cpu_time"] = 4 * t["S1"]["cpu"] / t["S4"]["cpu"]
    # The whole loop (act, env step, store, update) at 64x64: 4 seeds against 1, alternated.
    kw = dict(total_steps=300 + loop_steps, warmup_steps=300, preset="paper", actor_hidden=(64, 64), critic_hidden=(64, 64),
              eval_every=10**9, eval_episodes=1, log_every=max(1, loop_steps // 5), progress=False, device=str(device))  # fmt: skip
    rates: dict[int, list[float]] = {1: [], 4: []}
    for _ in range(2):
        for S in (1, 4):
            runs = train_seeds("dmc/cheetah-run", "qsm", seeds=tuple(range(S)), **kw)
            rates[S] += [r["steps_per_s"] for r in runs[0].timing if r["step"] > 300 + kw["log_every"]]
    r1, r4 = statistics.median(rates[1]), statistics.median(rates[4])
    out.update({
        "loop_small_64_steps_per_s": {"S1": r1, "S4": r4},
        "loop_small_64_speedup": 4 * r4 / r1,
        "load_after": load(),
    })  # fmt: skip
    return out


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def section_memory(steps: int, threads: int = 1) -> dict:
    """(e) replay buffer bytes; RSS over a long training loop with small networks (run it in a
    fresh process, see ``main``, so that the RSS is the training's own)."""
    import qsm_tutorial

    torch.set_num_threads(threads)

    buffer_mb = ReplayBuffer(OBS, ACT, 1_000_000).nbytes / 1e6
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not done.wait(0.25):
            samples.append((time.perf_counter() - t0, _rss_mb()))

    rss_start = _rss_mb()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    w0 = time.perf_counter()
    run = qsm_tutorial.train("dmc/cheetah-run", "qsm", total_steps=steps, seed=0, progress=False, warmup_steps=min(1000, steps // 2),
                             actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=64, buffer_size=steps // 4,
                             eval_every=10**9, eval_episodes=1, log_every=max(1, steps // 20))  # fmt: skip
    wall = time.perf_counter() - w0
    done.set()
    thread.join()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    rss = [r for _, r in samples]
    q = len(rss) // 4
    quarter_mb = [statistics.mean(rss[i * q : (i + 1) * q]) for i in range(4)] if q else rss
    growth = quarter_mb[-1] - quarter_mb[1] if len(quarter_mb) == 4 else float("nan")
    return {
        "replay_1M_cheetah_mb": buffer_mb,
        "replay_bytes_per_transition": ReplayBuffer(OBS, ACT, 1).nbytes,
        "loop_steps": steps,
        "loop_wall_s": wall,
        "rss_mb_before_train": rss_start,
        "rss_mb_quarters": quarter_mb,
        "rss_mb_growth_q2_to_q4": growth,
        "replay_capacity": steps // 4,
        "rss_mb_peak_process": peak,
        "episodes": sum(1 for h in run.history if h.get("event") == "episode"),
    }


# ----------------------------------------------------------------------------------------------
def table(res: dict) -> str:
    u, lp, ms, mem = res["updates"], res.get("loop"), res.get("multiseed"), res.get("memory")
    rows = [
        ("torch threads", f"{res['threads']}", f"{res['cpu']} ({res.get('cpu_capability', '?')} kernels), torch {res['torch']}"),
        ("load average (1/5/15 min)", f"{u['load_before']} → {u['load_after']}", "other jobs share these cores"),
        ("GEMM GFLOP/s, update's shapes", f"{u['gemm_gflops']:.1f}", f"cpu-time {u['gemm_gflops_cpu_time']:.1f}; cold operands {u['gemm_gflops_cold_operands']:.1f} (cpu {u['gemm_gflops_cold_operands_cpu_time']:.1f}); 512² {u['gemm_gflops_512']:.1f}, 1024² {u['gemm_gflops_1024']:.1f}"),
        ("QSM update GFLOP (ref / fast path)", f"{u['qsm_gflop_per_update']:.2f} / {u['qsm_gflop_per_update_fast_path']:.2f}", "from the layer shapes"),
        ("compute bound, updates/s", f"{u['compute_bound_update_per_s']:.1f}", f"cpu-time {u['compute_bound_update_per_s_cpu_time']:.1f}"),
        ("QSM fast, updates/s", f"{u['qsm_update_per_s']:.1f}", f"cpu-time {u['cpu_time_update_per_s']['qsm_fast']:.1f}"),
        ("QSM reference, updates/s", f"{u['qsm_update_per_s_reference']:.1f}", f"cpu-time {u['cpu_time_update_per_s']['qsm_reference']:.1f}"),
        ("SAC 256×256 / TD3 256×256, updates/s", f"{u['sac_update_per_s']:.1f} / {u['td3_update_per_s']:.1f}", ""),
        ("SAC 512×512, updates/s", f"{u['sac_512_update_per_s']:.1f}", ""),
        ("fast / reference", f"{u['ratio_fast_over_reference']:.2f}×", f"cpu-time {u['ratio_fast_over_reference_cpu_time']:.2f}× (target ≥ 1.4)"),
        ("QSM compiled (compile=True), updates/s", f"{u['qsm_update_per_s_compiled']:.1f}",
         f"{u['ratio_compiled_over_reference']:.2f}× reference, {u['ratio_compiled_over_compute_bound']:.2f} of the bound; compiled in {u['qsm_compile_s']:.0f} s (cold cache)"),
        ("fast / compute bound", f"{u['ratio_fast_over_compute_bound']:.2f}", f"cpu-time {u['ratio_fast_over_compute_bound_cpu_time']:.2f}; reference {u['ratio_reference_over_compute_bound']:.2f}; vs cold-operand bound {u['ratio_fast_over_cold_operand_bound']:.2f} (target ≥ 0.8)"),
        ("QSM time / SAC time, 512 wide", f"{u['ratio_qsm_time_over_sac_512_time']:.2f}", f"paper widths (SAC 256): {u['ratio_qsm_time_over_sac_256_time']:.2f} (target ≤ 2.5)"),
    ]
    if lp:
        rows += [
            ("loop env steps/s (cheetah-run)", f"{lp['loop_steps_per_s']:.1f}", f"update alone {lp['update_alone_per_s']:.1f}/s, load {lp['load_before']}"),
            ("loop / update alone", f"{lp['ratio_loop_over_update_alone']:.2f}", f"per round {', '.join(f'{x:.2f}' for x in lp['ratios_per_round'])} (target ≥ 0.85)"),
        ]
    if ms:
        rows += [
            ("4 seeds stacked: update speed-up, 512", f"{ms['update_paper_512_speedup']:.2f}×", f"cpu-time {ms['update_paper_512_speedup_cpu_time']:.2f}× (≥ 2 = four seeds in ≤ 2× one)"),
            ("4 seeds stacked: update speed-up, 64", f"{ms['update_small_64_speedup']:.2f}×", f"cpu-time {ms['update_small_64_speedup_cpu_time']:.2f}×"),
            ("4 seeds: whole loop speed-up, 64", f"{ms['loop_small_64_speedup']:.2f}×", f"1 seed {ms['loop_small_64_steps_per_s']['S1']:.0f}, 4 seeds {ms['loop_small_64_steps_per_s']['S4']:.0f} steps/s"),
        ]
    if mem:
        rows += [
            ("replay 1M cheetah-run", f"{mem['replay_1M_cheetah_mb']:.0f} MB", f"{mem['replay_bytes_per_transition']} B/transition (target < 250 MB)"),
            (f"RSS over {mem['loop_steps']} loop steps", " → ".join(f"{x:.0f}" for x in mem["rss_mb_quarters"]) + " MB",
             f"growth from the 2nd to the 4th quarter {mem['rss_mb_growth_q2_to_q4']:.1f} MB (buffer full after {mem['replay_capacity']} steps: expected 0); peak {mem['rss_mb_peak_process']:.0f} MB"),
        ]  # fmt: skip
    stolen = {name: sec["steal_percent"] for name, sec in (("updates", u), ("loop", lp), ("multiseed", ms), ("memory", mem))
              if sec and sec.get("steal_percent") is not None}  # fmt: skip
    if stolen:
        rows.append(("CPU time stolen by other VMs, worst section", f"{max(stolen.values()):.1f} %",
                     ", ".join(f"{k} {x:.1f} %" for k, x in stolen.items()) + " (another guest ran on these cores: figures lower by about as much)"))
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b:>{v}}  {c}" for a, b, c in rows)


def default_result_name(device: torch.device, threads: int) -> str:
    """throughput_cuda.json, or for a CPU its SIMD level (the kernels torch picks, and so the figures,
    differ between AVX2 and AVX-512 machines): throughput_cpu_avx512.json, …_avx2_2threads.json."""
    if device.type != "cpu":
        return f"throughput_{device.type}.json"
    suffix = "" if threads == 1 else f"_{threads}threads"
    return f"throughput_cpu_{torch.backends.cpu.get_cpu_capability().lower()}{suffix}.json"


SECTIONS = {"loop", "multiseed", "memory"}
"""The sections ``--skip`` can leave out (the update section always runs)."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI size: fewer repetitions and steps")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    p.add_argument("--threads", type=count_argument, default=1, help="torch threads (default 1)")
    p.add_argument("--reps", type=int, help="repetitions per measurement (default 7, quick 5; at least 5)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto (adds CUDA sections, updates and stacked seeds, when a GPU is present), cpu or cuda")
    p.add_argument("--memory-steps", type=int, help="env steps of the RSS measurement (default 20000, quick 2000)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: loop,multiseed,memory")
    p.add_argument("--out", help="write the JSON here (default for full runs: benchmarks/results/throughput_cpu_<simd level>[_<n>threads].json, or throughput_cuda.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    reps = max(5, args.reps or (5 if args.quick else 7))
    skip = set(filter(None, args.skip.split(",")))
    if skip - SECTIONS:
        p.error(f"--skip: unknown section(s) {', '.join(sorted(skip - SECTIONS))}; choose from {', '.join(sorted(SECTIONS))}")
    try:
        resolve_device(args.device)
    except ValueError as err:
        p.error(f"--device: {err}")
    devices = [torch.device("cpu")]
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices = [torch.device("cuda")] if args.device == "cuda" else devices + [torch.device("cuda")]
    res: dict = {
        "protocol": "medians over interleaved repetitions; see the module docstring",
        "quick": args.quick, "reps": reps, "threads": args.threads, "torch": torch.__version__,
        "python": platform.python_version(), "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    dev = devices[0]
    log(f"[throughput] updates on {dev}, load {load()}")
    res["updates"] = with_steal(section_updates, dev, reps, n=2 if args.quick else 4)
    if "loop" not in skip:
        log(f"[throughput] training loop, load {load()}")
        res["loop"] = with_steal(section_loop, dev, rounds=1 if args.quick else 5, warmup=300, log_every=10 if args.quick else 20,
                                   windows=5 if args.quick else 3)  # fmt: skip
    if "multiseed" not in skip:
        log(f"[throughput] multiseed, load {load()}")
        res["multiseed"] = with_steal(section_multiseed, dev, reps, loop_steps=100 if args.quick else 300)
    if "memory" not in skip:
        log(f"[throughput] memory, load {load()}")
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # A fresh process, so that its RSS is the run's own. An executor lets its worker exit by itself; a
        # Pool kills it, and a semaphore the run had made there was then reported as leaked at exit.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            steps = args.memory_steps or (2000 if args.quick else 20000)
            res["memory"] = with_steal(lambda: pool.submit(section_memory, steps, args.threads).result())
    for extra in devices[1:]:  # a GPU beside the CPU: its updates and stacked seeds, where stacking pays most
        log(f"[throughput] updates on {extra}")
        res[f"updates_{extra.type}"] = with_steal(section_updates, extra, reps, n=20)
        if "multiseed" not in skip:
            log(f"[throughput] multiseed on {extra}")
            res[f"multiseed_{extra.type}"] = with_steal(section_multiseed, extra, reps, loop_steps=100 if args.quick else 300)
    u = res["updates"]
    res.update({  # the headline figures at the top level
        "qsm_update_per_s": u["qsm_update_per_s"], "qsm_update_per_s_reference": u["qsm_update_per_s_reference"],
        "sac_update_per_s": u["sac_update_per_s"], "td3_update_per_s": u["td3_update_per_s"],
        "sac_512_update_per_s": u["sac_512_update_per_s"], "gemm_gflops": u["gemm_gflops"],
        "compute_bound_update_per_s": u["compute_bound_update_per_s"],
        "loop_steps_per_s": res.get("loop", {}).get("loop_steps_per_s"),
        "multiseed_speedup": res.get("multiseed", {}).get("update_paper_512_speedup"),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    })  # fmt: skip
    text = table(res)
    for extra in devices[1:]:
        text += f"\n\n{extra.type}:\n" + table({**res, "cpu": torch.cuda.get_device_name(extra), "cpu_capability": "CUDA", "updates": res[f"updates_{extra.type}"],
                                                "loop": None, "multiseed": res.get(f"multiseed_{extra.type}"), "memory": None})  # fmt: skip
    out = args.out or (None if args.quick else str(ROOT / "benchmarks" / "results" / default_result_name(dev, args.threads)))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=2) + "\n")
        log(f"[throughput] wrote {out}")
    if args.json:
        log(text)
        print(json.dumps(res))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
