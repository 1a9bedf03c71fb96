"""Learning curves of QSM, SAC and TD3, side by side: evaluation return over env steps, over seeds.

    python benchmarks/learning.py --env InvertedPendulum-v5 --algos sac,td3 --seeds 0,1 --total-steps 30000

``--algos`` takes algorithm names (each trains with its default preset: "control" on these tasks) and
named variants: ``qsm-paper`` is QSM with ``--preset paper`` (the paper's settings) at the baselines'
256-wide networks (the paper's 512 costs several times the CPU time and changes none of the
diagnosis; docs/performance.md).

The runs are one ``qsm-sweep`` (``qsm_tutorial.sweep``, on a private local Ray): each (algo, seed)
trains through ``qsm-train --resume auto`` with one torch thread, at most ``--jobs`` at once, into
``<runs-root>/<env>/<algo>/seed<k>``; an interrupted benchmark picks up where it stopped, and a
finished one is only re-read. Options this script does not know (``--warmup-steps 5000``) go to
every run.

Writes:
- ``benchmarks/results/learning_<env>.csv``: one row per (algo, seed, evaluation step);
- ``benchmarks/results/learning_<env>_summary.csv``: per run the final and best evaluation
  return, the first step reaching ``--threshold``, the median training throughput, the last update
  metrics (``actor_loss``, ``grad_q_norm``: mean of the last 5 train rows) and the final policy's share
  of samples at ±1 at the first state (from the run's checkpoint);
- ``figures/learning_<env>.png``: mean over seeds with a min-max band, one colour per algorithm.

Protocol (the CLI's): evaluation at step 0, every ``--eval-every`` steps and at the end, over
``--eval-episodes`` episodes of a separate env instance, deterministic actions; the return is
the undiscounted episode return, averaged over the episodes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from qsm_tutorial import envs, sweep, viz  # noqa: E402
from qsm_tutorial.algos.common import count_argument  # noqa: E402
from qsm_tutorial.results import RunResult, curves_from_runs, load_agent, load_run  # noqa: E402


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="InvertedPendulum-v5")
    p.add_argument("--algos", default="sac,td3", help="comma-separated: qsm, sac, td3")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--total-steps", type=int, default=30_000)
    p.add_argument("--eval-every", type=int, default=1_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--threshold", type=float, default=900.0, help="report the first eval step reaching this return")
    p.add_argument("--jobs", type=count_argument, default=2, help="runs at once (one torch thread each)")
    p.add_argument("--runs-root", default=str(ROOT / "runs" / "benchmarks"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--figures", default=str(ROOT / "figures"))
    p.add_argument("--name", default="", help="a suffix for the output files: learning_<env>_<name>.csv")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the CSVs and figure from the run dirs that exist (unfinished runs included, as far as they got)")
    return p.parse_known_args()


def slug(env_id: str) -> str:
    """An env id as a file-name part: dmc/cartpole-swingup -> dmc-cartpole-swingup."""
    return env_id.replace("/", "-")


# Named variants: label -> (algorithm, extra CLI flags). The last three are the control preset with
# one of its changes taken back to the paper's setting (the ablation of notebook 05).
VARIANTS = {
    "qsm-paper": ("qsm", ["--preset", "paper", "--actor-hidden", "256,256", "--critic-hidden", "256,256"]),
    "qsm-no-prior": ("qsm", ["--prior-std", "0"]),
    "qsm-raw-grad": ("qsm", ["--no-normalize-q-grad", "--alpha", "50"]),
    "qsm-one-sample": ("qsm", ["--action-candidates", "1"]),
}


def output_stem(args: argparse.Namespace) -> str:
    return f"learning_{slug(args.env)}" + (f"_{args.name}" if args.name else "")


def run_dir_of(args: argparse.Namespace, algo: str, seed: int) -> Path:
    return Path(args.runs_root) / args.env / algo / f"seed{seed}"


def first_step_reaching(run: RunResult, threshold: float) -> int | None:
    steps, values = run.curve("eval_return")
    hit = np.nonzero(values >= threshold)[0]
    return int(steps[hit[0]]) if len(hit) else None


def last_train_mean(run: RunResult, key: str, rows: int = 5) -> str:
    """Mean of ``key`` over the run's last ``rows`` train rows ("" when the algorithm logs no such metric)."""
    values = run.events("train").get(key)
    return f"{np.nanmean(values[-rows:]):.4g}" if values is not None and len(values) else ""


def saturation_at_start(run: RunResult, n: int = 1000) -> str:
    """Share of ``n`` policy samples at the env's first state (reset seed = the run's) with |a| >= 0.99
    in some coordinate: how bang-bang the final policy is ("" if the run has no checkpoint)."""
    try:
        agent = load_agent(run.run_dir)
    except Exception:  # (an unfinished or foreign run: the report goes on without this column)
        return ""
    with envs.make(run.env_id) as env:
        obs, _ = env.reset(seed=run.seed)
    torch.manual_seed(run.seed)
    a = agent.sample_actions(obs, n).cpu().numpy().reshape(n, -1)
    return f"{np.mean(np.abs(a).max(axis=1) >= 0.99):.2f}"


def write_csvs(runs: dict[str, list[RunResult]], args: argparse.Namespace) -> tuple[Path, Path]:
    """``runs``: {label: its runs over seeds}; the label is the ``algo`` column."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = output_stem(args)
    curves, summary = out / f"{stem}.csv", out / f"{stem}_summary.csv"
    with open(curves, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env", "algo", "seed", "step", "eval_return", "eval_return_std", "eval_return_min", "eval_return_max"])
        for label, r in labelled(runs):
            e = r.events("eval")
            for i in range(len(e["step"])):
                w.writerow([r.env_id, label, r.seed, int(e["step"][i]),
                            *(f"{e[k][i]:.2f}" for k in ("eval_return", "eval_return_std", "eval_return_min", "eval_return_max"))])
    with open(summary, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env", "algo", "seed", "total_steps", "final_eval_return", "best_eval_return",
                    f"first_step_at_{args.threshold:g}", "eval_episodes", "median_steps_per_s", "final_actor_loss",
                    "final_grad_q_norm", "saturation_at_start"])  # fmt: skip
        for label, r in labelled(runs):
            steps, values = r.curve("eval_return")
            sps = r.timing.get("steps_per_s", np.array([np.nan]))
            w.writerow([r.env_id, label, r.seed, int(steps[-1]), f"{values[-1]:.2f}", f"{values.max():.2f}",
                        first_step_reaching(r, args.threshold) or "", r.config["loop"]["eval_episodes"],
                        f"{np.median(sps):.1f}", last_train_mean(r, "actor_loss"), last_train_mean(r, "grad_q_norm"),
                        saturation_at_start(r)])  # fmt: skip
    return curves, summary


def labelled(runs: dict[str, list[RunResult]]):
    return [(label, r) for label, group in runs.items() for r in group]


def plot(runs: dict[str, list[RunResult]], args: argparse.Namespace) -> Path:
    """``viz.plot_learning_curves`` (a variant keeps its algorithm's colour, dashed) with the warm-up
    and the threshold marked."""
    names = {"qsm": "QSM, control preset", "qsm-paper": "QSM, paper preset", "qsm-no-prior": "QSM, control minus prior",
             "qsm-raw-grad": "QSM, control minus normalised ∇Q (α 50)", "qsm-one-sample": "QSM, control minus best-of-16"}
    curves = {names.get(label, label.upper()): next(iter(curves_from_runs(group).values())) for label, group in runs.items() if group}
    ylabel = f"evaluation return ({args.eval_episodes} episodes, deterministic)"
    fig = viz.plot_learning_curves(curves, band="minmax", ylabel=ylabel, title=args.env)
    ax = fig.axes[0]
    warmup = next(iter(runs.values()))[0].config["agent"]["warmup_steps"]
    ax.axvspan(0, warmup, color="grey", alpha=0.1, lw=0, label=f"uniform-random warm-up ({warmup} steps)")
    ax.axhline(args.threshold, color="grey", ls=":", lw=1, label=f"return {args.threshold:g}")
    ax.legend(title="mean, min-max over seeds", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
              fontsize=8, title_fontsize=8, frameon=False)  # below the axes: the curves cross every corner
    fig.set_size_inches(6.4, 5.2)
    return viz.save_figure(fig, output_stem(args), args.figures, dpi=150)


def main() -> None:
    args, extra = parse_args()
    algos = args.algos.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.report_only:
        flags = ["--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes), *extra]
        sweep.sweep(algos, [args.env], seeds, args.total_steps, args.runs_root, extra=flags, variants=VARIANTS, max_concurrent=args.jobs)
    runs = {a: [load_run(run_dir_of(args, a, s)) for s in seeds if run_dir_of(args, a, s).exists()] for a in algos}
    runs = {a: group for a, group in runs.items() if group}
    curves, summary = write_csvs(runs, args)
    figure = plot(runs, args)
    print(f"wrote {curves}, {summary}, {figure}")
    print(Path(summary).read_text())


if __name__ == "__main__":
    main()
