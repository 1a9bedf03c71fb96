"""Throughput on this machine: the compute bound, the QSM update (compiled and eager) beside SAC and
TD3, the whole training loop, several seeds as one batched model, and memory.

    python benchmarks/throughput.py                 # full run, writes benchmarks/results/throughput_<device>[_<simd>].json
    python benchmarks/throughput.py --quick         # CI size
    python benchmarks/throughput.py --json          # the same, one JSON object on stdout

Protocol. One process, ``--threads`` torch threads (default 1: on a 2-core machine shared with other
jobs a second OpenMP thread waits on descheduled peers). Every figure is a median over ``--reps``
repetitions, and figures that are compared are measured *interleaved* (A, B, C, A, B, C, ...), so
a change of machine load hits all of them alike. Wall clock and process CPU time are both kept;
the load average and the share of CPU time stolen by other VMs are recorded per section. Updates
use a fixed minibatch of cheetah-run sizes (|S| = 17, |A| = 6, batch 256).

- updates: the compute bound is the matrix multiplies of one QSM update at the paper's sizes
  (512×512, T = 5), listed from the layer shapes (``qsm_update_gemms``: forward and every product
  autograd needs) and timed back to back, the products of one shape on the same operands
  (cache-hot) and into the same output: ``gemm_gflops``, and one update per that time is ``compute_bound_update_per_s``
  (on CUDA the products are replayed from a CUDA graph, as the compiled update is: their GPU time, not their launches).
  QSM runs compiled (``compile="on"``, the default path of long runs: ``qsm_update_per_s``; its
  first update, which compiles, is timed with an empty Inductor cache: ``qsm_compile_s``) and eager
  (``compile="off"``: ``qsm_update_per_s_eager``); SAC and TD3 at the paper's 256×256, and SAC at
  512×512 for a same-width comparison.
- loop: ``qsm_tutorial.train`` on dmc/cheetah-run (paper preset, the same compile setting) after
  a warm-up; env steps/s from the loop's own timing windows, the first after the warm-up (which
  compiles) left out. Runs alternate with measurements of the update alone; each run is compared
  with the update-alone rates just before and after it, and the median ratio is reported.
- multiseed: ``QSMSeeds`` of 4 agents (one vmapped update) against one ``QSMAgent``, eager, at
  512×512 and 64×64: speed-up = 4 × time(one agent's update) / time(4 seeds' update); ≥ 2 means
  four seeds take at most twice the time of one. And both compiled at 64×64, the long runs' path
  (``multiseed_speedup_64``; the eager one is ``multiseed_speedup_64_eager``).
  And the whole loop, eager, at 64×64: ``loop.train_seeds`` of 4 seeds against 1 (env steps/s;
  ``--skip multiseed-loop`` leaves it out where dm_control is missing, as on the GPU machine).
- memory: bytes of a 1M-transition cheetah-run replay buffer, and the RSS of a fresh process
  sampled every 0.25 s while ``train`` runs ``--memory-steps`` env steps (32×32 networks, a buffer
  of a quarter of the steps, full from the first quarter on): from then on nothing should grow.
- ``--device auto`` on a machine with CUDA runs the updates and multiseed sections there too
  (``updates_cuda``, ``multiseed_cuda``: a second table).
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

from qsm_tutorial.algos.common import count_argument, resolve_device  # noqa: E402
from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig, draw_update_noise, missing_compiler  # noqa: E402
from qsm_tutorial.algos.sac import SACAgent, SACConfig  # noqa: E402
from qsm_tutorial.algos.seeds import QSMSeeds  # noqa: E402
from qsm_tutorial.algos.td3 import TD3Agent, TD3Config  # noqa: E402
from qsm_tutorial.replay import Batch, ReplayBuffer  # noqa: E402

OBS, ACT, BATCH = 17, 6, 256  # dmc/cheetah-run; the paper's batch
torch._dynamo.config.recompile_limit = 64  # every agent is compiled afresh; never fall back to eager silently


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


def with_steal(section, *args, **kwargs) -> dict:
    """``section(*args, **kwargs)``'s results, with the share (%) of CPU time stolen while it ran."""
    before = cpu_jiffies()
    out = section(*args, **kwargs)
    after = cpu_jiffies()
    ok = before is not None and after is not None and after[1] > before[1]
    out["steal_percent"] = round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 2) if ok else None
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
def _linear(rows: int, n_in: int, n_out: int, input_grad=False, weight_grad=False) -> list[tuple[int, int, int]]:
    """The (M, K, N) products of one linear layer on ``rows`` rows: forward, and its gradients."""
    return [(rows, n_in, n_out)] + [(rows, n_out, n_in)] * input_grad + [(n_out, rows, n_in)] * weight_grad


def qsm_update_gemms(B=BATCH, O=OBS, A=ACT, actor_hidden=(512, 512), critic_hidden=(512, 512), T=5,
                     time_hidden=128, n_freq=32) -> list[tuple[int, int, int]]:  # fmt: skip
    """Every matrix multiply of one QSM update; ``tests/test_benchmarks.py`` pins the count against
    the products an update really runs."""
    # The denoiser embeds each of the T levels once: time MLP and the first layer's time columns on T rows
    # (the Fourier W is learnt, so they take input gradients), then its layers on the B rows [a_t, s].
    per_level = [(2 * n_freq, time_hidden), (time_hidden, time_hidden), (time_hidden, actor_hidden[0])]
    per_row = list(zip([A + O, *actor_hidden], [*actor_hidden, A]))
    critic = list(zip([O + A, *critic_hidden], [*critic_hidden, 1]))
    g: list[tuple[int, int, int]] = []
    for _ in range(T):  # 1. TD target: a' from T denoiser passes at s' (no grad) ...
        g += [m for i, o in per_level for m in _linear(T, i, o)] + [m for i, o in per_row for m in _linear(B, i, o)]
    for _ in range(2):  # ... both target critics; 2. both critics forward and backward (inputs are data) ...
        g += [m for i, o in critic for m in _linear(B, i, o)]
        g += [m for n, (i, o) in enumerate(critic) for m in _linear(B, i, o, input_grad=n > 0, weight_grad=True)]
        g += [m for i, o in critic for m in _linear(B, i, o, input_grad=True)]  # 3. grad_a Q at a_t: to the input only
    for i, o in per_level:  # 4. actor step: the denoiser forward and backward
        g += _linear(T, i, o, input_grad=True, weight_grad=True)
    for n, (i, o) in enumerate(per_row):
        g += _linear(B, i, o, input_grad=n > 0, weight_grad=True)
    return g


def flops(gemms) -> int:
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


def fixed_batch(device, B=BATCH, O=OBS, A=ACT, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(B, O, generator=g).to(device), (torch.rand(B, A, generator=g) * 2 - 1).to(device),
        torch.rand(B, generator=g).to(device), torch.randn(B, O, generator=g).to(device), torch.ones(B, device=device),
    )  # fmt: skip


def gemm_runner(gemms, device, warm: bool):
    """All the products of ``gemms``: each on its own operands (``warm=False``: cache-cold, as
    distinct weights and activations are in an update), or the products of one shape one after
    another on the same operands (``warm=True``: cache-hot, the machine's best at these shapes).
    Each product writes into an output allocated here once: an output kept from every call would be
    17 MB of fresh memory per pass, and its ~4,300 page faults, not the products, would set the bound."""
    if not warm:
        mats = [(torch.randn(m, k, device=device), torch.randn(k, n, device=device), torch.empty(m, n, device=device))
                for m, k, n in gemms]  # fmt: skip
        return lambda: [torch.mm(a, b, out=o) for a, b, o in mats]
    counts: dict[tuple[int, int, int], int] = {}
    for shape in gemms:
        counts[shape] = counts.get(shape, 0) + 1
    mats = [(torch.randn(m, k, device=device), torch.randn(k, n, device=device), torch.empty(m, n, device=device), c)
            for (m, k, n), c in counts.items()]  # fmt: skip
    return lambda: [torch.mm(a, b, out=o) for a, b, o, c in mats for _ in range(c)]


def graph_replayed(fn, device: torch.device):
    """On CUDA, ``fn`` captured once in a CUDA graph and replayed: the products' own GPU time, not
    hundreds of kernel launches, so that the bound is priced as the CUDA-graph compiled update runs
    (torch's capture recipe: warm-up on a side stream, then capture). Elsewhere ``fn`` itself."""
    if device.type != "cuda":
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def first_update_s(update, sync) -> float:
    """Seconds of ``update()`` (a compiled agent's first: it compiles) with an empty Inductor cache."""
    user_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        start = time.perf_counter()
        update()
        sync()
        seconds = time.perf_counter() - start
    if user_cache is None:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = user_cache
    return seconds


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
def section_updates(device, reps: int, n: int, compiled: bool) -> dict:
    """The compute bound and updates/s, interleaved."""
    sync = make_sync(device)
    torch.manual_seed(0)
    batch, gemms, dev = fixed_batch(device), qsm_update_gemms(), str(device)
    agents = {
        "qsm_eager": QSMAgent(OBS, ACT, QSMConfig(device=dev, compile="off")),
        "sac": SACAgent(OBS, ACT, SACConfig(device=dev)),
        "td3": TD3Agent(OBS, ACT, TD3Config(device=dev)),
        "sac_512": SACAgent(OBS, ACT, SACConfig(device=dev, actor_hidden=(512, 512), critic_hidden=(512, 512))),
    }
    out: dict = {"load_before": load(), "qsm_compile_s": None}
    if compiled:
        agents["qsm_compiled"] = QSMAgent(OBS, ACT, QSMConfig(device=dev, compile="on"))
        out["qsm_compile_s"] = first_update_s(lambda: agents["qsm_compiled"].update(batch), sync)
    contestants = {
        "gemm_update_shapes": (graph_replayed(gemm_runner(gemms, device, warm=True), device), 1),
        "gemm_update_shapes_cold": (graph_replayed(gemm_runner(gemms, device, warm=False), device), 1),
        **{name: ((lambda a=a: a.update(batch)), max(1, n // 2) if name.startswith("qsm") else n) for name, a in agents.items()},
    }
    t = interleaved(contestants, reps, sync)
    per_s = {k: 1.0 / v["wall"] for k, v in t.items()}
    per_s_cpu = {k: 1.0 / v["cpu"] for k, v in t.items()}
    default = "qsm_compiled" if compiled else None
    out.update({
        "load_after": load(),
        "qsm_gflop_per_update": flops(gemms) / 1e9,
        "gemm_gflops": flops(gemms) / t["gemm_update_shapes"]["wall"] / 1e9,
        "gemm_gflops_cpu_time": flops(gemms) / t["gemm_update_shapes"]["cpu"] / 1e9,
        "gemm_gflops_cold_operands": flops(gemms) / t["gemm_update_shapes_cold"]["wall"] / 1e9,
        "compute_bound_update_per_s": per_s["gemm_update_shapes"],
        "compute_bound_update_per_s_cpu_time": per_s_cpu["gemm_update_shapes"],
        "qsm_update_per_s": per_s.get(default),
        "qsm_update_per_s_eager": per_s["qsm_eager"],
        "sac_update_per_s": per_s["sac"],
        "td3_update_per_s": per_s["td3"],
        "sac_512_update_per_s": per_s["sac_512"],
        "cpu_time_update_per_s": {k: per_s_cpu[k] for k in agents},
        "wall_s_all": {k: v["walls"] for k, v in t.items()},
        "ratio_eager_over_compute_bound": per_s["qsm_eager"] / per_s["gemm_update_shapes"],
        "ratio_qsm_eager_time_over_sac_512_time": per_s["sac_512"] / per_s["qsm_eager"],
    })  # fmt: skip
    if compiled:
        out.update({
            "ratio_default_over_eager": per_s[default] / per_s["qsm_eager"],
            "ratio_default_over_eager_cpu_time": per_s_cpu[default] / per_s_cpu["qsm_eager"],
            "ratio_default_over_compute_bound": per_s[default] / per_s["gemm_update_shapes"],
            "ratio_default_over_compute_bound_cpu_time": per_s_cpu[default] / per_s_cpu["gemm_update_shapes"],
            "ratio_default_over_cold_operand_bound": per_s[default] / per_s["gemm_update_shapes_cold"],
            "ratio_qsm_time_over_sac_512_time": per_s["sac_512"] / per_s[default],
        })  # fmt: skip
    return out


def section_loop(device, rounds: int, warmup: int, log_every: int, windows: int, compiled: bool) -> dict:
    """Env steps/s of ``qsm_tutorial.train`` on dmc/cheetah-run against the update alone, alternated:
    update alone, a run, update alone, a run, ... (``rounds`` runs); each run's loop rate is compared
    with the mean of the update-alone rates just before and after. This VM's speed drifts within
    seconds, so each update-alone sample is 24 updates and full runs take five rounds."""
    import qsm_tutorial

    sync, batch, setting = make_sync(device), fixed_batch(device), "on" if compiled else "off"
    agent = QSMAgent(OBS, ACT, QSMConfig(device=str(device), compile=setting))
    alone = lambda: 1.0 / interleaved({"update": (lambda: agent.update(batch), 3)}, 8, sync)["update"]["wall"]  # noqa: E731
    before_load = load()
    update_rates, all_windows, ratios = [alone()], [], []
    for r in range(rounds):
        run = qsm_tutorial.train("dmc/cheetah-run", "qsm", total_steps=warmup + log_every * (windows + 1), seed=r, progress=False,
                                 device=str(device), preset="paper", compile=setting, warmup_steps=warmup, eval_every=10**9,
                                 eval_episodes=1, log_every=log_every, threads=torch.get_num_threads())  # fmt: skip
        # whole windows of training steps; the first one after the warm-up (start-up, compilation) is left out
        w = [row["steps_per_s"] for row in run.timing if row["step"] > warmup + log_every]
        all_windows += w
        update_rates.append(alone())
        ratios.append(statistics.median(w) / ((update_rates[-2] + update_rates[-1]) / 2))
    return {
        "load_before": before_load,
        "load_after": load(),
        "env": "dmc/cheetah-run",
        "compile": setting,
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


def seed_updates(cfg: QSMConfig, device) -> tuple:
    """Two contestants: one ``QSMAgent``'s update, and one update of four seeds as a ``QSMSeeds``,
    each on fixed minibatches (seed k's is ``fixed_batch(seed=k)``) and fixed draws."""
    torch.manual_seed(0)
    one, seeds = QSMAgent(OBS, ACT, cfg), QSMSeeds([QSMAgent(OBS, ACT, cfg) for _ in range(4)])
    batches = [fixed_batch(device, seed=k) for k in range(4)]
    noises = [draw_update_noise(cfg, cfg.T, b) for b in batches]
    return (lambda: one.update(batches[0], noises[0])), (lambda: seeds.update(batches, noises))


def section_multiseed(device, reps: int, compiled_64: bool, loop_steps: int) -> dict:
    """4 seeds as one ``QSMSeeds`` update against one ``QSMAgent`` update, interleaved; the whole loop
    of 4 seeds (``train_seeds``) against 1."""
    sync = make_sync(device)
    out: dict = {"load_before": load(), "path": "eager"}
    cases = [("paper_512", (512, 512), "off"), ("small_64", (64, 64), "off")] + [("small_64_compiled", (64, 64), "on")] * compiled_64
    for label, hidden, setting in cases:
        cfg = QSMConfig(device=str(device), actor_hidden=hidden, critic_hidden=hidden, compile=setting)
        one_seed, four_seeds = seed_updates(cfg, device)
        if setting == "on":  # compile both outside the timing (interleaved's warm-up call would, too)
            out[f"{label}_compile_s"] = {"S1": first_update_s(one_seed, sync), "S4": first_update_s(four_seeds, sync)}
        n = 1 if label == "paper_512" else 5
        t = interleaved({"S1": (one_seed, n), "S4": (four_seeds, n)}, reps, sync)
        out[f"update_{label}_s_per_update"] = {"S1": t["S1"]["wall"], "S4": t["S4"]["wall"]}
        out[f"update_{label}_speedup"] = 4 * t["S1"]["wall"] / t["S4"]["wall"]
        out[f"update_{label}_speedup_cpu_time"] = 4 * t["S1"]["cpu"] / t["S4"]["cpu"]
    if not loop_steps:  # --skip multiseed-loop (a machine without dm_control, say)
        return {**out, "load_after": load()}
    # The whole loop (act, env step, store, update) at 64x64, eager: train_seeds of 4 seeds against 1, alternated.
    from qsm_tutorial.loop import train_seeds

    kw = dict(total_steps=300 + loop_steps, warmup_steps=300, preset="paper", actor_hidden=(64, 64), critic_hidden=(64, 64), compile="off",
              eval_every=10**9, eval_episodes=1, log_every=max(1, loop_steps // 5), progress=False, device=str(device),
              threads=torch.get_num_threads())  # fmt: skip
    rates: dict[int, list[float]] = {1: [], 4: []}
    for _ in range(2):
        for S in (1, 4):
            runs = train_seeds("dmc/cheetah-run", "qsm", seeds=tuple(range(S)), **kw)
            rates[S] += [r["steps_per_s"] for r in runs[0].timing if r["step"] > 300 + kw["log_every"]]
    r1, r4 = statistics.median(rates[1]), statistics.median(rates[4])
    out.update({"loop_small_64_steps_per_s": {"S1": r1, "S4": r4}, "loop_small_64_speedup": 4 * r4 / r1, "load_after": load()})
    return out


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def section_memory(steps: int, threads: int = 1) -> dict:
    """Replay buffer bytes; RSS over a long training loop with small networks (run it in a fresh
    process, see ``main``, so that the RSS is the training's own)."""
    import qsm_tutorial

    torch.set_num_threads(threads)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            samples.append(_rss_mb())

    rss_start = _rss_mb()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    w0 = time.perf_counter()
    run = qsm_tutorial.train("dmc/cheetah-run", "qsm", total_steps=steps, seed=0, progress=False, warmup_steps=min(1000, steps // 2),
                             actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=64, buffer_size=steps // 4,
                             eval_every=10**9, eval_episodes=1, log_every=max(1, steps // 20), threads=torch.get_num_threads())  # fmt: skip
    wall = time.perf_counter() - w0
    done.set()
    thread.join()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    q = len(samples) // 4
    quarter_mb = [statistics.mean(samples[i * q : (i + 1) * q]) for i in range(4)] if q else samples
    return {
        "replay_1M_cheetah_mb": ReplayBuffer(OBS, ACT, 1_000_000).nbytes / 1e6,
        "replay_bytes_per_transition": ReplayBuffer(OBS, ACT, 1).nbytes,
        "loop_steps": steps,
        "loop_wall_s": wall,
        "rss_mb_before_train": rss_start,
        "rss_mb_quarters": quarter_mb,
        "rss_mb_growth_q2_to_q4": quarter_mb[-1] - quarter_mb[1] if len(quarter_mb) == 4 else float("nan"),
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
        ("GEMM GFLOP/s, update's shapes", f"{u['gemm_gflops']:.1f}", f"cpu-time {u['gemm_gflops_cpu_time']:.1f}; cold operands {u['gemm_gflops_cold_operands']:.1f}"),
        ("compute bound, updates/s", f"{u['compute_bound_update_per_s']:.1f}", f"{u['qsm_gflop_per_update']:.2f} GFLOP per update; cpu-time {u['compute_bound_update_per_s_cpu_time']:.1f}"),
        ("QSM eager (compile=off), updates/s", f"{u['qsm_update_per_s_eager']:.1f}", f"{u['ratio_eager_over_compute_bound']:.2f} of the bound"),
    ]
    if u["qsm_update_per_s"] is not None:
        rows += [
            ("QSM compiled (compile=on), updates/s", f"{u['qsm_update_per_s']:.1f}", f"the default path of long runs; compiled in {u['qsm_compile_s']:.0f} s (empty cache)"),
            ("compiled / eager", f"{u['ratio_default_over_eager']:.2f}×", f"cpu-time {u['ratio_default_over_eager_cpu_time']:.2f}× (target ≥ 1.4)"),
            ("compiled / compute bound", f"{u['ratio_default_over_compute_bound']:.2f}",
             f"cpu-time {u['ratio_default_over_compute_bound_cpu_time']:.2f}; vs cold-operand bound {u['ratio_default_over_cold_operand_bound']:.2f} (target ≥ 0.85)"),
        ]  # fmt: skip
    qsm_vs_sac = u.get("ratio_qsm_time_over_sac_512_time", u["ratio_qsm_eager_time_over_sac_512_time"])
    rows += [
        ("SAC 256×256 / TD3 256×256, updates/s", f"{u['sac_update_per_s']:.1f} / {u['td3_update_per_s']:.1f}", f"SAC 512×512 {u['sac_512_update_per_s']:.1f}"),
        ("QSM time / SAC time, 512 wide", f"{qsm_vs_sac:.2f}", "default path" if u["qsm_update_per_s"] else "eager"),
    ]
    if lp:
        rows += [
            ("loop env steps/s (cheetah-run)", f"{lp['loop_steps_per_s']:.1f}", f"compile={lp['compile']}; update alone {lp['update_alone_per_s']:.1f}/s"),
            ("loop / update alone", f"{lp['ratio_loop_over_update_alone']:.2f}", f"per round {', '.join(f'{x:.2f}' for x in lp['ratios_per_round'])} (target ≥ 0.85)"),
        ]
    if ms:
        rows += [
            ("4 seeds as one update: speed-up, 512", f"{ms['update_paper_512_speedup']:.2f}×", f"eager; cpu-time {ms['update_paper_512_speedup_cpu_time']:.2f}× (≥ 2 = four seeds in ≤ 2× one)"),
            ("4 seeds as one update: speed-up, 64", f"{ms['update_small_64_speedup']:.2f}×", f"eager; cpu-time {ms['update_small_64_speedup_cpu_time']:.2f}×"),
        ]
        if "update_small_64_compiled_speedup" in ms:
            c = ms["small_64_compiled_compile_s"]
            rows.append(("4 seeds, compiled: speed-up, 64", f"{ms['update_small_64_compiled_speedup']:.2f}×",
                         f"compiled in {c['S1']:.0f} s (one) and {c['S4']:.0f} s (four) (target ≥ 2)"))
        if "loop_small_64_speedup" in ms:
            rows.append(("4 seeds: whole loop speed-up, 64", f"{ms['loop_small_64_speedup']:.2f}×",
                         f"eager; 1 seed {ms['loop_small_64_steps_per_s']['S1']:.0f}, 4 seeds {ms['loop_small_64_steps_per_s']['S4']:.0f} steps/s"))
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


SECTIONS = {"compile", "loop", "multiseed", "multiseed-loop", "memory"}
"""What ``--skip`` can leave out (the updates section always runs; "compile" leaves out every compiled
timing, and the loop then runs eagerly; "multiseed-loop" only the stacked seeds' whole-loop timing)."""

HEADLINE = ("gemm_gflops", "compute_bound_update_per_s", "qsm_update_per_s", "qsm_update_per_s_eager", "qsm_compile_s",
            "sac_update_per_s", "td3_update_per_s", "loop_steps_per_s", "multiseed_speedup", "multiseed_speedup_64", "multiseed_speedup_64_eager",
            "ratio_default_over_eager", "ratio_default_over_compute_bound", "ratio_loop_over_update")  # fmt: skip
"""The figures at the JSON's top level (None where a skipped section would have measured them)."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI size: fewer repetitions and steps")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    p.add_argument("--threads", type=count_argument, default=1, help="torch threads (default 1)")
    p.add_argument("--reps", type=int, help="repetitions per measurement (default 7, quick 5; at least 5)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto (adds CUDA sections, updates and multiseed, when a GPU is present), cpu or cuda")
    p.add_argument("--memory-steps", type=int, help="env steps of the RSS measurement (default 20000, quick 2000)")
    p.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(sorted(SECTIONS))}")
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
    dev = devices[0]
    no_compiler = missing_compiler(dev)
    if no_compiler and "compile" not in skip:
        log(f"[throughput] no compiled timings: torch.compile {no_compiler}")
        skip.add("compile")
    compiled = "compile" not in skip
    res: dict = {
        "protocol": "medians over interleaved repetitions; see the module docstring",
        "quick": args.quick, "reps": reps, "threads": args.threads, "skipped": sorted(skip), "torch": torch.__version__,
        "python": platform.python_version(), "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    for d in devices:  # a GPU beside the CPU: its updates and stacked seeds (a second table)
        key = "" if d == dev else f"_{d.type}"
        log(f"[throughput] updates on {d}, load {load()}")
        res[f"updates{key}"] = with_steal(section_updates, d, reps, n=4 if d.type == "cpu" else 20, compiled=compiled)
        if "loop" not in skip and d == dev:
            log(f"[throughput] training loop, load {load()}")
            res["loop"] = with_steal(section_loop, dev, rounds=1 if args.quick else 5, warmup=300, log_every=10 if args.quick else 20,
                                     windows=5 if args.quick else 3, compiled=compiled)  # fmt: skip
        if "multiseed" not in skip:
            log(f"[throughput] multiseed on {d}, load {load()}")
            res[f"multiseed{key}"] = with_steal(section_multiseed, d, reps, compiled_64=compiled,
                                                loop_steps=0 if "multiseed-loop" in skip else 100 if args.quick else 300)
    if "memory" not in skip:
        log(f"[throughput] memory, load {load()}")
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # A fresh process, so that its RSS is the run's own. An executor lets its worker exit by itself; a
        # Pool kills it, and a semaphore the run had made there was then reported as leaked at exit.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            steps = args.memory_steps or (2000 if args.quick else 20000)
            res["memory"] = with_steal(lambda: pool.submit(section_memory, steps, args.threads).result())
    u, lp, ms = res["updates"], res.get("loop", {}), res.get("multiseed", {})
    res.update({k: u.get(k) for k in HEADLINE})  # the headline figures at the top level
    res.update({
        "loop_steps_per_s": lp.get("loop_steps_per_s"),
        "ratio_loop_over_update": lp.get("ratio_loop_over_update_alone"),
        "multiseed_speedup": ms.get("update_paper_512_speedup"),
        "multiseed_speedup_64": ms.get("update_small_64_compiled_speedup"),
        "multiseed_speedup_64_eager": ms.get("update_small_64_speedup"),
        "multiseed_loop_speedup_64": ms.get("loop_small_64_speedup"),
        "multiseed_path": "QSMSeeds of 4 against one QSMAgent, update only; multiseed_speedup_64 compiled, the others eager" if ms else None,
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
