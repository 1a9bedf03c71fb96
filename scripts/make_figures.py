"""Write the course's figures (the paper's, reproduced) into figures/.

    python scripts/make_figures.py                  # everything, ~3-4 min on 2 CPU cores
    python scripts/make_figures.py --only figure1 theorem
    python scripts/make_figures.py --fast           # shorter runs (a smoke test of the script)

Figures (name: what it shows):

- figure1_score_field:       the paper's Figure 1. A randomly initialised diffusion policy's score
                             field (orange) on bandit/single-peak, then after 1, 30 and 300 QSM actor
                             steps, with the exact ∇ₐQ overlaid (blue).
- alignment_maps:            cos∠(score, ∇ₐQ) over the action box, at initialisation and after QSM
                             training on bandit/four-gaussians (learned critic, qsm_tutorial.train).
- multimodal_vs_gaussian:    1000 actions of the trained QSM policy and of SAC's tanh-Gaussian on
                             bandit/four-gaussians (the paper's claim: QSM keeps several modes),
                             SAC at its default temperature and started cold (0.01).
- learning_curves:           reward per episode while training on bandit/four-gaussians, QSM vs SAC,
                             mean ± std over seeds.
- policy_improvement:        the theorem, numerically: V^π(start) on gridworld/cliff with exact
                             policy evaluation, per QSM iteration, slip 0 and 0.2.
- gridworld_particles:       the policies those runs end with: each cell's pushes and ∇ₐQ^π.
- explorer_bandit, explorer_gridworld:  what the two widgets draw (static frames).

Every number is measured by this script on this machine; it prints them as it goes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import qsm_tutorial  # noqa: E402
from qsm_tutorial import fields, theory, viz, widgets  # noqa: E402
from qsm_tutorial.diffusion import Denoiser, NoiseSchedule  # noqa: E402
from qsm_tutorial.envs.bandits import action_grid  # noqa: E402
from qsm_tutorial.envs.gridworld import action_grid as push_grid  # noqa: E402

ALL = ["figure1", "alignment", "multimodal", "curves", "theorem", "explorers"]
OBS = np.zeros(1, np.float32)


def log(msg: str) -> None:
    print(msg, flush=True)


def save(fig, name: str) -> None:
    path = viz.save_figure(fig, name)
    log(f"  wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def mode_shares(samples: torch.Tensor, modes: torch.Tensor, radius: float = 0.25) -> list[float]:
    """Fraction of samples within ``radius`` of each mode."""
    d = torch.cdist(samples.float(), modes.float())
    near = d.min(dim=1).values < radius
    return [float(((d.argmin(dim=1) == k) & near).float().mean()) for k in range(len(modes))]


# ----------------------------------------------------------------------------------------------
def figure1(args) -> None:
    """Random score field → after QSM actor steps, against the exact ∇ₐQ of bandit/single-peak."""
    env = widgets.make_bandit("single-peak")
    grid, fine = action_grid(11), action_grid(81)
    grad_q = fields.q_gradient_field(env, grid)
    schedule = NoiseSchedule.vp(5)
    torch.manual_seed(0)
    den = Denoiser(1, 2, (128, 128))
    opt = torch.optim.Adam(den.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    scores, titles, done = [], [], 0
    for n in [0, 1, 30, 300]:
        theory.exact_qsm_actor_steps(den, schedule, env.reward_grad, 20.0, n - done, opt, generator=gen)
        done = n
        d = fields.policy_score_field(den, schedule, None, grid, 0).direction
        cos = fields.alignment(d, grad_q).mean
        scores.append(d)
        label = "random initialisation" if n == 0 else f"after {n} QSM step{'s' if n > 1 else ''}"
        titles.append(f"{label}\nmean cos(score, ∇Q) = {cos:.2f}")
        log(f"  single-peak, {n:3d} actor steps: mean cos = {cos:.3f}")
    fig = viz.plot_field_sequence(grid, scores, grad_q, titles, background=(fine, env.reward(fine)), ncols=2)
    save(fig, "figure1_score_field")


def trained_runs(args, cache: dict) -> dict:
    """QSM and SAC on bandit/four-gaussians (seeds 0 … n−1), by the public qsm_tutorial.train."""
    if "runs" in cache:
        return cache["runs"]
    steps = 300 if args.fast else None  # None: the bandit default (1500 env steps)
    runs: dict[str, list] = {}
    for algo in ("qsm", "sac"):
        if algo not in qsm_tutorial.algos.ALGOS:
            log(f"  {algo} is not available in qsm_tutorial.algos.ALGOS: skipped")
            continue
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            run = qsm_tutorial.train("bandit/four-gaussians", algo=algo, total_steps=steps, seed=seed, progress=False)
            runs.setdefault(algo, []).append(run)
            log(f"  trained {algo} on bandit/four-gaussians, seed {seed}: {time.perf_counter() - t0:.1f} s")
    cache["runs"] = runs
    return runs


def alignment_maps(args, cache: dict) -> None:
    env = widgets.make_bandit("four-gaussians")
    grid = action_grid(21)
    grad_q = fields.q_gradient_field(env, grid)
    runs = trained_runs(args, cache)
    torch.manual_seed(0)
    fresh = qsm_tutorial.algos.QSMAgent(1, 2, qsm_tutorial.algos.QSMConfig.preset("bandit", device="cpu"))
    trained = runs["qsm"][0].agent
    maps, means, titles = [], [], []
    for name, agent in (("random initialisation", fresh), ("after QSM training", trained)):
        d = fields.policy_score_field(agent, None, None, grid, 0).direction
        al = fields.alignment(d, grad_q)
        maps.append(al.cosine)
        means.append(al.mean)
        titles.append(name)
        log(f"  four-gaussians, {name}: mean cos(score, exact ∇r) = {al.mean:.3f}")
    critic = fields.alignment(fields.q_gradient_field(trained, grid), grad_q).mean
    log(f"  four-gaussians, learned critic's ∇Q vs exact ∇r: mean cos = {critic:.3f}")
    fig = viz.plot_alignment(grid, maps, titles, means=means, title="bandit/four-gaussians: where the score points up the reward")
    save(fig, "alignment_maps")


def multimodal(args, cache: dict) -> None:
    env = widgets.make_bandit("four-gaussians")
    fine = action_grid(101)
    runs = dict(trained_runs(args, cache))
    if "sac" in runs:
        # SAC's default temperature (1.0, the paper's) against rewards of height 1 keeps it near
        # uniform at this budget; a cold start (0.01) shows what the Gaussian itself converges to.
        t0 = time.perf_counter()
        steps = 300 if args.fast else None
        cold = qsm_tutorial.train("bandit/four-gaussians", algo="sac", total_steps=steps, seed=0, progress=False, init_temperature=0.01)
        runs["sac-cold"] = [cold]
        log(f"  trained sac (init_temperature 0.01) on bandit/four-gaussians, seed 0: {time.perf_counter() - t0:.1f} s")
    labels = {"qsm": "QSM (diffusion)", "sac": "SAC (tanh-Gaussian)", "sac-cold": "SAC, initial temperature 0.01"}
    sets, points = {}, {}
    for algo, label in labels.items():
        if algo not in runs:
            continue
        agent = runs[algo][0].agent
        torch.manual_seed(1)
        samples = agent.sample_actions(OBS, 1000)
        shares = mode_shares(samples, env.modes)
        reward = float(env.reward(samples).mean())
        name = f"{label}\nmean reward {reward:.2f}, {100 * sum(shares):.0f} % at a bump"
        sets[name] = samples
        if algo != "qsm":
            points[name] = agent.act(OBS, deterministic=True)
        log(f"  {algo}: mean reward {reward:.3f}; share within 0.25 of each mode {[round(s, 3) for s in shares]}")
    # each panel's name starts with its algorithm's, so it gets that algorithm's colour (viz.ALGO_COLORS)
    fig = viz.plot_action_samples(sets, background=(fine, env.reward(fine)), modes=env.modes, points=points, points_label="its mean (deterministic) action",
                                  title="bandit/four-gaussians: four equally good actions, 1500 env steps")  # fmt: skip
    save(fig, "multimodal_vs_gaussian")


def curves(args, cache: dict) -> None:
    runs = trained_runs(args, cache)
    width = 50 if args.fast else 150  # env steps per bin: bandit episodes are one step each
    out = {}
    for algo, rs in runs.items():
        rows = []
        for run in rs:
            steps, ret = run.metric("episode_return")
            edges = np.arange(0, steps.max() + width, width)
            idx = np.digitize(steps, edges) - 1
            rows.append([ret[idx == k].mean() if np.any(idx == k) else np.nan for k in range(len(edges) - 1)])
        n = min(len(r) for r in rows)
        out[{"qsm": "QSM", "sac": "SAC"}.get(algo, algo)] = (edges[1 : n + 1], np.array([r[:n] for r in rows]))
    fig = viz.plot_learning_curves(out, ylabel=f"reward per episode (mean of {width}-step bins)", title="bandit/four-gaussians (warm-up: uniform random actions)")
    save(fig, "learning_curves")


def theorem(args) -> None:
    results = {}
    for slip in (0.0, 0.2):
        r = theory.qsm_policy_improvement("cliff", slip=slip, n_iterations=15 if args.fast else 40, seed=0)
        results[f"slip {slip:g}"] = r
        d = np.diff(r.start_values)
        log(
            f"  cliff, slip {slip:g}: V(start) {r.start_values[0]:.3f} → {r.start_values[-1]:.3f} (V* {r.optimal_start_value:.3f}), "
            f"smallest step change {d.min():+.2e}, final mean cos {r.alignment[-1]:.3f}, {r.seconds:.1f} s"
        )
    fig = viz.plot_policy_improvement(results, title="gridworld/cliff: QSM steps with exact $Q^\\pi$ (particle policy, 16 pushes per cell)")
    save(fig, "policy_improvement")
    # the final policies, with ∇ₐQ^π of each
    fig = viz._figure((10.0, 3.9))
    axes = viz._subplots(fig, 1, 2).ravel()
    grid = push_grid(3)
    for ax, (label, r) in zip(axes, results.items()):
        env = r.env
        sol = env.evaluate_policy(r.particles)
        S = env.n_states
        grads = env.action_gradient(torch.arange(S).view(S, 1, 1), grid.expand(S, *grid.shape), sol.V)
        viz.plot_gridworld_fields(env, grads, grid, samples=r.particles, ax=ax,
                                  field_label=r"$\nabla_a Q^\pi$", sample_label="the policy's 16 pushes")  # fmt: skip
        ax.set_title(f"{label}: $V^\\pi$(start) = {r.start_values[-1]:.2f}, $V^*$ = {r.optimal_start_value:.2f}")
    save(fig, "gridworld_particles")


def explorers(args) -> None:
    t0 = time.perf_counter()
    snaps = widgets.train_bandit_snapshots("four-gaussians", total_steps=300 if args.fast else 1500, every=100, seed=0)
    log(f"  snapshots of a QSM run on bandit/four-gaussians: updates {snaps.updates} ({time.perf_counter() - t0:.1f} s)")
    ex = widgets.explore_bandit(snaps, t=0)
    (viz.figures_dir() / "explorer_bandit.png").write_bytes(ex.render_png())
    log(f"  wrote figures/explorer_bandit.png ({ex!r})")
    g = widgets.explore_gridworld("two-routes", slip=0.0, alpha=30.0)
    (viz.figures_dir() / "explorer_gridworld.png").write_bytes(g.render_png())
    log(f"  wrote figures/explorer_gridworld.png ({g!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=ALL, default=ALL, help="which figures (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the QSM and SAC bandit runs (default 3)")
    parser.add_argument("--fast", action="store_true", help="shorter runs, for checking the script")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small networks: one thread is fastest, and a shared 2-core machine stays usable
    viz.figures_dir().mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    steps = {
        "figure1": lambda: figure1(args),
        "alignment": lambda: alignment_maps(args, cache),
        "multimodal": lambda: multimodal(args, cache),
        "curves": lambda: curves(args, cache),
        "theorem": lambda: theorem(args),
        "explorers": lambda: explorers(args),
    }
    for name in ALL:
        if name in args.only:
            t0 = time.perf_counter()
            log(f"[{name}]")
            steps[name]()
            log(f"  ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
