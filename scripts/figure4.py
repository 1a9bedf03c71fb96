"""The paper's Figure 4, honestly: where the trained policies put 1,000 actions at the first state of
dmc/cartpole-swingup, at several points of training, and whether their modes are real choices.

    python scripts/figure4.py --runs-root /work/runs --steps 10000,25000,50000,100000

For each run (``<runs-root>/dmc/cartpole-swingup/<label>/seed0``) and each saved snapshot step
(``snapshots/stepNNNNNN.pt``, the networks of each checkpoint; the final checkpoint otherwise):
1,000 policy samples at ``reset(seed=0)``; the shares pushing left, right and at ±1; then returns of
episodes (reset seeds 0-4) whose first actions are forced to −1 or to +1 before the policy
takes over (``--holds``: 1 and 50 steps, 0.01 s and 0.5 s of the 10 s episode). Writes ``benchmarks/results/figure4_cartpole_swingup.csv`` and
``figures/figure4_cartpole_swingup.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qsm_tutorial import envs, results, viz  # noqa: E402
from qsm_tutorial.analysis import action_shares, forced_first_action_returns  # noqa: E402
from qsm_tutorial.storage import load_checkpoint  # noqa: E402

ENV = "dmc/cartpole-swingup"
LABELS = {"qsm": "QSM (control preset)", "qsm-paper": "QSM (paper preset)", "sac": "SAC"}


def agent_at(run_dir: Path, step: int | None):
    """The run's agent with the networks of snapshot ``step`` (None: the latest checkpoint)."""
    agent = results.agent_from_record(json.loads((run_dir / "config.json").read_text()), device="cpu")
    if step is None:
        state = load_checkpoint(run_dir / "checkpoint.pt")
        agent.load_state_dict(state["agent"])
        return agent, state["step"]
    state = torch.load(run_dir / "snapshots" / f"step{step:06d}.pt", weights_only=True)["agent"]
    for module in ("actor", "critic"):
        getattr(agent, module).load_state_dict(state[module])
    return agent, step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-root", default=str(ROOT / "runs"))
    p.add_argument("--steps", default="10000,25000,50000,100000", help="snapshot steps (those that exist are used)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--holds", default="1,50", help="how many first actions are forced before the policy acts (one column pair each)")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--plot-only", action="store_true", help="redraw the figure from fresh samples (seconds); leave the CSV as it is")
    args = p.parse_args()
    torch.set_num_threads(1)
    env = envs.make(ENV)
    obs0, _ = env.reset(seed=0)
    rows, hists = [], {}
    for label in LABELS:
        run_dir = Path(args.runs_root) / ENV / label / "seed0"
        if not (run_dir / "config.json").exists():
            continue
        steps = [int(s) for s in args.steps.split(",") if (run_dir / "snapshots" / f"step{int(s):06d}.pt").exists()]
        for step in steps or [None]:
            agent, step = agent_at(run_dir, step)
            torch.manual_seed(0)
            actions = agent.sample_actions(obs0, args.samples).numpy().reshape(-1)
            shares = action_shares(actions)
            row = {"policy": label, "step": step, **shares, "mean_action": float(actions.mean())}
            for hold in [] if args.plot_only else [int(h) for h in args.holds.split(",")]:  # forced rollouts: the slow part
                forced = forced_first_action_returns(agent, env, [-1.0, 1.0], range(args.episodes), hold=hold)
                row[f"return_left_first_{hold}"] = float(np.mean(forced[-1.0]))
                row[f"return_right_first_{hold}"] = float(np.mean(forced[1.0]))
            print(row, flush=True)
            rows.append(row)
            hists[(label, step)] = actions
    if not rows:
        sys.exit(f"figure4: no run of {', '.join(LABELS)} under {Path(args.runs_root) / ENV} (<algo>/seed0/config.json); "
                 "pass --runs-root, the folder the showcase runs were written to")
    if not args.plot_only:
        out = ROOT / "benchmarks" / "results" / "figure4_cartpole_swingup.csv"
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
        print("wrote", out)
    samples = {LABELS[label]: {step: a for (lab, step), a in hists.items() if lab == label} for label in LABELS if any(k[0] == label for k in hists)}
    fig = viz.plot_action_histograms(samples, xlabel="action at the first state (cart force)",
                                     title=f"dmc/cartpole-swingup: {args.samples} policy samples at reset(seed=0)")
    viz.save_figure(fig, "figure4_cartpole_swingup", ROOT / "figures")
    print("wrote figures/figure4_cartpole_swingup.png")


if __name__ == "__main__":
    main()
