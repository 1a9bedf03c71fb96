"""How far is the compiled QSM update from its compute bound when nothing but kernels runs between its
parts? An A/B of the package's compiled update against the same update traced as one graph.

The package compiles the update's two loss functions; autograd's engine, the optimisers' Python, Polyak
and Dynamo's guards run between them (``qsm.compiled``). Here the whole update (critic gradient, Adam,
Polyak, actor gradient, Adam) is written functionally over the *same* loss functions of ``qsm.py``:
``torch.func.grad_and_value`` instead of ``backward()``, torch's own functional Adam
(``torch.optim.adam.adam``) on the parameters in place, and compiled as one function:

- ``package``: ``QSMAgent(compile="on").update`` (what long runs use);
- ``one-graph``: the functional update with ``foreach`` Adam, which Dynamo traces: a single graph;
- ``one-graph-fused``: the same with fused Adam, which Dynamo will not trace (three graphs).

    python benchmarks/one_graph_update.py            # 5 alternating rounds of the three, one process each
    python benchmarks/one_graph_update.py --rounds 1
    python benchmarks/one_graph_update.py one-graph  # one variant, in this process
    python benchmarks/one_graph_update.py eager      # both updates eager, interleaved in this process
    python benchmarks/one_graph_update.py one-graph --profile   # and where its time goes (torch.profiler)

Each process has an empty Inductor cache, one thread, the cheetah-run sizes and paper widths of
``throughput.py``, and times its update interleaved with the compute bound (``throughput.gemm_runner``,
cache-hot) over 7 repetitions, so every ratio is against a bound measured beside it. A one-graph process
first checks that two eager functional updates match the package's eager update from the same weights
and draws. The figures and their reading are in docs/performance.md; this is a measurement, not a path
the package takes (eager, the functional update is slower than the package's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.optim.adam as functional_adam
from torch.func import grad_and_value

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

VARIANTS = ("package", "one-graph", "one-graph-fused")  # compiled, one process each


def one_graph_update(agent, fused: bool):
    """``agent.update`` as one function over its parameters (detached views: updated in place) and
    Adam moments kept here; returns (update(batch, noise) → [critic loss, Q mean, actor loss, ‖g‖])."""
    from qsm_tutorial.algos.qsm import qsm_actor_loss, qsm_critic_loss
    from qsm_tutorial.algos.seeds import called_with

    cfg = agent.config
    params = {name: {k: v.detach() for k, v in getattr(agent, name).named_parameters()} for name in ("actor", "critic", "critic_target")}
    moments = {name: {"m": [torch.zeros_like(v) for v in params[name].values()], "v": [torch.zeros_like(v) for v in params[name].values()],
                      "step": [torch.zeros(()) for _ in params[name]]} for name in ("actor", "critic")}  # fmt: skip

    def net(name: str, p: dict):
        return called_with(getattr(agent, name), p)

    def adam(name: str, grads: dict) -> None:
        m, h = moments[name], getattr(agent, f"{name}_opt").defaults  # the package's Adam settings
        functional_adam.adam(list(params[name].values()), list(grads.values()), m["m"], m["v"], [], m["step"],
                             fused=fused or None, foreach=None if fused else True, capturable=not fused, amsgrad=False,
                             beta1=h["betas"][0], beta2=h["betas"][1], lr=h["lr"], weight_decay=h["weight_decay"], eps=h["eps"],
                             maximize=False)  # fmt: skip

    def critic_objective(critic, batch, noise):
        return qsm_critic_loss(net("critic", critic), net("critic_target", params["critic_target"]), net("actor", params["actor"]),
                               agent.schedule, cfg, batch, noise)  # fmt: skip

    def actor_objective(actor, batch, noise):
        return qsm_actor_loss(net("actor", actor), net("critic", params["critic"]), agent.schedule, cfg, batch, noise)

    def update(batch, noise):
        grads, (critic_loss, q) = grad_and_value(critic_objective, has_aux=True)(params["critic"], batch, noise)
        adam("critic", grads)
        torch._foreach_lerp_(list(params["critic_target"].values()), list(params["critic"].values()), cfg.tau)
        grads, (actor_loss, g) = grad_and_value(actor_objective, has_aux=True)(params["actor"], batch, noise)
        adam("actor", grads)
        return torch.stack([critic_loss, q.mean(), actor_loss, g.norm(dim=-1).mean()])

    return update


def runner(step, agent, batch):
    """A call of ``step`` (``one_graph_update``'s, compiled or not) on ``batch`` with fresh draws."""
    from qsm_tutorial.algos.qsm import draw_update_noise

    def run():
        noise = draw_update_noise(agent.config, agent.schedule.T, batch)
        with torch.no_grad(), torch._functorch.config.patch(aggressive_recomputation=True):  # as qsm.compiled
            return step(batch, noise).tolist()

    return run


def agreement() -> float:
    """Largest |difference| of any parameter after two eager updates, functional against the package's."""
    from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig, draw_update_noise
    from throughput import ACT, OBS, fixed_batch

    batch, cfg = fixed_batch(torch.device("cpu")), QSMConfig(device="cpu", compile="off", actor_lr_decay_steps=0)
    agents = []
    for _ in range(2):
        torch.manual_seed(0)
        agents.append(QSMAgent(OBS, ACT, cfg))
    step = one_graph_update(agents[1], fused=True)
    for _ in range(2):  # Adam's first step does not depend on its betas; the second does
        noise = draw_update_noise(cfg, agents[0].schedule.T, batch)
        agents[0].update(batch, noise)
        with torch.no_grad():
            step(batch, noise)
    return max((p - q).abs().max().item() for name in ("actor", "critic", "critic_target")
               for p, q in zip(getattr(agents[0], name).parameters(), getattr(agents[1], name).parameters()))  # fmt: skip


def measure_eager(reps: int = 7, n: int = 4) -> dict:
    """ms per update of the package's eager update and the functional one, eager, interleaved."""
    from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig
    from throughput import ACT, OBS, fixed_batch, interleaved

    batch, cfg = fixed_batch(torch.device("cpu")), QSMConfig(device="cpu", compile="off", actor_lr_decay_steps=0)
    torch.manual_seed(0)
    package, functional = QSMAgent(OBS, ACT, cfg), QSMAgent(OBS, ACT, cfg)
    functional_update = runner(one_graph_update(functional, fused=True), functional, batch)
    times = interleaved({"package": (lambda: package.update(batch), n), "functional": (functional_update, n)}, reps, lambda: None)
    return {"variant": "eager", **{f"{k}_ms": round(t["wall"] * 1e3, 2) for k, t in times.items()}}


def profile_ms(update, n: int = 20, top: int = 16) -> dict[str, float]:
    """ms per update of the ``top`` costliest operators and Inductor kernels (self time), over ``n`` updates."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            update()
    rows = sorted(((e.self_cpu_time_total / n / 1e3, e.key) for e in prof.key_averages()), reverse=True)
    return {"all": round(sum(ms for ms, _ in rows), 2), **{key: round(ms, 3) for ms, key in rows[:top]}}


def measure(variant: str, reps: int = 7, n: int = 8, profile: bool = False) -> dict:
    from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig
    from throughput import ACT, OBS, fixed_batch, gemm_runner, interleaved, qsm_update_gemms

    torch._dynamo.config.recompile_limit = 64
    torch._inductor.config.cpp.enable_kernel_profile = profile  # name each Inductor kernel in the profile
    result: dict = {"variant": variant}
    if variant != "package":
        result["max_abs_param_diff_vs_package_eager"] = agreement()
    batch = fixed_batch(torch.device("cpu"))
    torch.manual_seed(0)
    cfg = QSMConfig(device="cpu", compile="on" if variant == "package" else "off", actor_lr_decay_steps=0)
    agent = QSMAgent(OBS, ACT, cfg)
    if variant == "package":
        update = lambda: agent.update(batch)  # noqa: E731
    else:
        step = torch.compile(one_graph_update(agent, fused=variant.endswith("fused")), dynamic=False, options={"cpp_wrapper": True})
        update = runner(step, agent, batch)

    start = time.perf_counter()
    update()
    result["compile_s"] = round(time.perf_counter() - start, 1)
    times = interleaved({"update": (update, n), "bound": (gemm_runner(qsm_update_gemms(), torch.device("cpu"), warm=True), 1)}, reps, lambda: None)
    update_ms, bound_ms = times["update"]["wall"] * 1e3, times["bound"]["wall"] * 1e3
    result.update(update_ms=round(update_ms, 2), bound_ms=round(bound_ms, 2), of_bound=round(bound_ms / update_ms, 3))
    from torch._dynamo.utils import counters

    result["graphs"] = counters["stats"]["unique_graphs"]
    if profile:
        result["profile_ms_per_update"] = profile_ms(update)
    return result


def main() -> None:
    from qsm_tutorial.algos.common import count_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", nargs="?", choices=(*VARIANTS, "eager"), help="measure one variant in this process")
    parser.add_argument("--rounds", type=count_argument, default=5, help="rounds of the three variants, each in a fresh process")
    parser.add_argument("--profile", action="store_true", help="with a variant: also profile 20 of its updates")
    parser.add_argument("--out", type=Path, help="write the rows and medians as JSON here")
    args = parser.parse_args()
    if args.variant:
        torch.set_num_threads(1)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
        print(json.dumps(measure_eager() if args.variant == "eager" else measure(args.variant, profile=args.profile), indent=1 if args.profile else None), flush=True)
        return
    rows = []
    for r in range(args.rounds):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, variant], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode != 0:
                sys.exit(f"{variant}: failed\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds}: {json.dumps(rows[-1])}", flush=True)
    medians = {v: {k: statistics.median(row[k] for row in rows if row["variant"] == v) for k in ("update_ms", "bound_ms", "of_bound", "compile_s")}
               for v in VARIANTS}  # fmt: skip
    for v, m in medians.items():
        print(f"{v:16s} {m['update_ms']:6.2f} ms/update, bound {m['bound_ms']:5.2f} ms: {m['of_bound']:.2f} of the bound; compile {m['compile_s']:.1f} s")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "medians": medians}, indent=1) + "\n")


if __name__ == "__main__":
    main()
