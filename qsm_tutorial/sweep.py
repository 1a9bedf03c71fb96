"""``qsm-sweep``: a grid of runs (algorithms × envs × seeds) as one resumable command, on Ray.

    $ qsm-sweep --algos qsm,sac,td3 --envs dmc/cheetah-run,dmc/walker-walk --seeds 0-4 \\
          --total-steps 1000000 --runs-root /shared/runs --eval-every 10000
    $ qsm-sweep ... --dry-run            # each trial's state; starts nothing
    $ qsm-sweep ... --print-commands     # one qsm-train line per trial, for Slurm arrays or xargs -P

A trial is one ordinary run directory, ``<runs-root>/<env>/<algo>/seed<k>``, written by the package's
own loop through ``qsm-train --resume auto``: the run directory is the only record. Ray schedules
and places the trials (CPUs, fractions of GPUs, memory) and starts a trial again when its worker
died (``--max-failures``); it does not copy checkpoints (a run's checkpoint holds its replay
buffer). Rerunning the same command resumes the sweep: complete runs are skipped from their
``status.json``, interrupted ones continue from their last checkpoint. The driver follows the
trials by reading their run directories, so the runs root must be one file system for every node
(checked before launch). Flags the sweep does not know (``--eval-every 10000``) go to every trial.

Without ``--address`` (or ``$RAY_ADDRESS``) the sweep starts a private Ray on this machine for
itself and stops it at the end; it never joins a running one unasked. Ray is an optional
dependency: ``pip install -e '.[sweep]'``; ``--dry-run`` and ``--print-commands`` need no Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import shlex
import sys
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from .algos import ALGOS
from .cli import parse_cli
from .results import RunResult, load_runs
from .storage import RunDir, RunDirError, TrainError, atomic_write, load_checkpoint

SWEEP_FILE = "sweep.json"  # in the runs root: the grid, the passed-through flags, the package version
LOG_DIR = ".sweep-logs"  # in the runs root: each trial's stdout and stderr, one file per run directory
MEMORY_BASE = 1 << 30  # a trial's memory besides its replay buffer: torch, the env, the networks
# Named variants: label (its run directories' algo folder) -> (algorithm, flags).
VARIANTS = {"qsm-paper": ("qsm", ("--preset", "paper"))}


class SweepError(TrainError):
    """A trial failed (exit status 1)."""


class SweepConflict(SweepError):
    """A trial's run directory cannot take it, found before launch (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Trial:
    root: Path  # the sweep's runs root, absolute
    label: str  # an algorithm or a name in the variants
    algo: str
    env_id: str
    seed: int
    run_dir: Path
    flags: tuple[str, ...]  # the variant's flags, then those passed through

    def argv(self, total_steps: int | None, threads: int) -> list[str]:
        """``qsm-train`` arguments: idempotent (resumes, starts or returns at once)."""
        budget = ["--total-steps", str(total_steps)] if total_steps is not None else []
        return ["--algo", self.algo, "--env", self.env_id, "--seed", str(self.seed), *budget,
                "--run-dir", str(self.run_dir), "--threads", str(threads), "--no-progress", "--resume", "auto", *self.flags]  # fmt: skip

    @property
    def name(self) -> str:
        return f"{self.env_id} {self.label} seed{self.seed}"


def seed_range(text: str) -> list[int]:
    """``"0-4"``, ``"0,2,5"`` or ``"0-2,7"`` → seeds, in order."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            seeds += list(range(int(low), int(high) + 1)) if high else [int(low)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds such as 0-4 or 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def grid(algos_: Sequence[str], envs: Sequence[str], seeds: Iterable[int], runs_root: str | os.PathLike,
         extra: Sequence[str] = (), variants: dict | None = None) -> list[Trial]:  # fmt: skip
    """The trials of a sweep, env by env, label by label, seed by seed; ``runs_root`` made absolute
    (trials run in Ray's working directory, not the driver's)."""
    variants = VARIANTS if variants is None else variants
    root = Path(runs_root).expanduser().absolute()
    trials = []
    for env_id in envs:
        for label in algos_:
            algo, flags = variants.get(label, (label, ()))
            if algo not in ALGOS:
                raise ValueError(f"unknown algorithm {label!r}; choose from {', '.join(sorted(ALGOS) + sorted(variants))}")
            trials += [Trial(root, label, algo, env_id, seed, root / env_id / label / f"seed{seed}", (*flags, *extra)) for seed in seeds]
    return trials


# ------------------------------------------------------------------------------ a trial's state


@dataclasses.dataclass
class TrialState:
    state: str  # "new", "resumes", "complete" or "conflict"
    step: int = 0
    why: str = ""

    def __str__(self) -> str:
        return {"new": "new", "resumes": f"resumes at step {self.step:,}", "complete": f"complete ({self.step:,} steps)",
                "conflict": f"conflict: {self.why}"}[self.state]  # fmt: skip


def trial_state(trial: Trial, total_steps: int | None) -> TrialState:
    """What ``qsm-train --resume auto`` would do with this trial, read from its run directory
    (``config.json``, ``status.json``, the lock), checked by ``qsm-train``'s own argument parser."""
    store = RunDir(trial.run_dir)
    holder = store.writer()
    if holder:
        return TrialState("conflict", why=f"being written by {holder}")
    try:
        saved = store.saved_config()
    except RunDirError as e:
        return TrialState("conflict", why=str(e))
    if saved is not None and (saved["algo"], saved["env_id"], saved["seed"]) != (trial.algo, trial.env_id, trial.seed):
        return TrialState("conflict", why=f"{trial.run_dir} holds {saved['algo']} on {saved['env_id']}, seed {saved['seed']}")
    if saved is None or not store.checkpoint.exists():
        return TrialState("new")
    changed = changed_fields(trial, saved)
    if changed:
        return TrialState("conflict", why=f"the sweep's flags change {', '.join(changed)} of the saved run")
    status = store.read_status()
    step = status["step"] if status else checkpoint_step(store)
    budget = total_steps if total_steps is not None else saved["total_steps"]
    if budget != saved["total_steps"]:
        return TrialState("conflict", step, f"its budget is {saved['total_steps']:,} steps, the sweep asks {budget:,}")
    return TrialState("complete" if step >= budget else "resumes", step)


def checkpoint_step(store: RunDir) -> int:
    """The step of a checkpoint written before status files existed (loads it: slower)."""
    try:
        return int(load_checkpoint(store.checkpoint)["step"])
    except (TrainError, KeyError):
        return 0


def changed_fields(trial: Trial, saved: dict) -> list[str]:
    """Config fields the trial's flags set to a value other than the saved run's."""
    kwargs = trial_kwargs(trial, None)
    asked = {k: v for k, v in kwargs.items() if k in saved["agent"] or k in saved["loop"]}
    as_saved = {**saved["agent"], **saved["loop"]}
    return [k for k, v in asked.items() if json.loads(json.dumps(v)) != as_saved[k]]


# ------------------------------------------------------------------------------ launching on Ray


def trial_kwargs(trial: Trial, total_steps: int | None) -> dict:
    """``train``'s arguments for the trial, parsed by ``qsm-train``'s own parser: bad passed-through
    flags are found before launch."""
    try:
        return parse_cli(trial.argv(total_steps, 1))
    except SystemExit:  # (argparse printed what was wrong)
        raise SweepConflict(f"qsm-train refuses the flags of {trial.name}: {shlex.join(trial.flags)}") from None


@lru_cache(maxsize=None)
def env_dims(env_id: str) -> tuple[int, int]:
    from . import envs

    env = envs.make(env_id)
    try:
        return env.observation_space.shape[0], env.action_space.shape[0]
    finally:
        env.close()


def default_memory(trial: Trial, total_steps: int | None) -> int:
    """Bytes a trial needs: its replay buffer (float32 obs, next obs, action, reward, done) as full
    as its budget can fill it, plus ``MEMORY_BASE``."""
    from .loop import make_config, step_budget

    kwargs = trial_kwargs(trial, total_steps)
    buffer_size = kwargs.get("buffer_size") or make_config(trial.algo, trial.env_id, kwargs.get("preset")).buffer_size
    obs_dim, act_dim = env_dims(trial.env_id)
    return MEMORY_BASE + min(buffer_size, step_budget(total_steps, trial.env_id)) * (2 * obs_dim + act_dim + 2) * 4


def check_resources(ray, cpus: float, gpus: float, memory: int) -> None:
    """Refuse a trial no node of the cluster could ever hold (Ray would wait for it forever)."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus and n.get("memory", 0) >= memory for n in nodes):
        most = max(nodes, key=lambda n: n.get("CPU", 0))
        raise SweepConflict(f"no node can hold a trial of {cpus:g} CPUs, {gpus:g} GPUs and {memory / 2**30:.1f} GiB (the largest has "
                            f"{most.get('CPU', 0):g} CPUs, {most.get('GPU', 0):g} GPUs, {most.get('memory', 0) / 2**30:.1f} GiB); "
                            "lower --cpus-per-trial, --gpus-per-trial or --memory-per-trial")  # fmt: skip


def run_trial(argv: list[str], log_path: str) -> int:
    """One trial, inside a Ray worker: ``qsm-train`` in this process (so a killed worker takes its
    lock with it), its output appended to ``log_path``."""
    import contextlib

    from .cli import main

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} qsm-train {shlex.join(argv)}", flush=True)
        return main(argv)


def start_ray(address: str | None, quiet: bool = True):
    """Connect to the cluster at ``address`` (or ``$RAY_ADDRESS``), else start a private Ray on this
    machine; no usage-stats prompt, no trial output in the driver."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise SweepConflict("qsm-sweep needs Ray: pip install -e '.[sweep]' (or use --print-commands)") from None
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False if address == "local" else None, log_to_driver=not quiet,
                 logging_level="ERROR", configure_logging=True)  # fmt: skip
    except Exception as e:  # (Ray raises ConnectionError when no cluster answers, a bare Exception when its node times out)
        where = "a private Ray on this machine" if address == "local" else f"the Ray cluster at {address}"
        raise SweepConflict(f"could not start or reach {where} ({' '.join(str(e).split())[:200]}); "
                            "retry when the machine is less busy, or run the trials with --print-commands") from None
    return ray


def check_reachable(address: str) -> None:
    """A ``host:port`` that answers no TCP connection is refused at once (Ray would retry for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return  # "local", "auto", "ray://...": Ray's own business
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise SweepConflict(f"no Ray cluster answers at {address} ({e.strerror or e}); check --address or $RAY_ADDRESS") from None


def check_shared_file_system(ray, runs_root: Path) -> None:
    """Refuse a cluster whose nodes do not all see ``runs_root``: each node reads a file the driver wrote."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = runs_root / f".sweep-check-{uuid.uuid4().hex}"
    token.write_text(token.name)

    def sees(path: str, text: str) -> bool:
        return Path(path).is_file() and Path(path).read_text() == text

    try:
        probe = ray.remote(num_cpus=0)(sees)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(token), token.name) for n in nodes])  # fmt: skip
    finally:
        token.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise SweepConflict(f"nodes {', '.join(blind)} do not see {runs_root}: put the runs root on a file system every node mounts")


def launch(trials: list[Trial], total_steps: int | None, *, address: str | None, cpus_per_trial: float,
           gpus_per_trial: float, memory: dict[Trial, int], max_concurrent: int | None, max_failures: int,
           progress: bool) -> list[str]:  # fmt: skip
    """Run the trials on Ray, at most ``max_concurrent`` at once; the names of those that failed.
    ``memory``: bytes each trial reserves."""
    ray = start_ray(address)
    try:
        check_shared_file_system(ray, trials[0].root)
        check_resources(ray, cpus_per_trial, gpus_per_trial, max(memory.values()))
        threads = max(1, int(cpus_per_trial))
        remote = ray.remote(max_calls=1)(run_trial)  # a fresh worker per trial: nothing carried from the last one
        pending, running, failed = list(trials), {}, []
        done = 0
        started = time.perf_counter()
        while pending or running:
            while pending and (max_concurrent is None or len(running) < max_concurrent):
                trial = pending.pop(0)
                options = dict(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, memory=memory[trial], max_retries=max_failures,
                               retry_exceptions=False)  # fmt: skip
                argv = trial.argv(total_steps, threads) + (["--device", "cuda"] if gpus_per_trial and "--device" not in trial.flags else [])
                running[remote.options(**options).remote(argv, str(log_path(trial)))] = trial
            ready, _ = ray.wait(list(running), num_returns=1, timeout=30.0)
            for ref in ready:
                trial = running.pop(ref)
                try:
                    code = ray.get(ref)
                except Exception as e:  # the worker died more than max_failures times, or the task raised
                    code, why = None, " ".join(str(e).split())[:300]
                done += 1
                if code == 0:
                    say(progress, f"[{done}/{len(trials)}] complete: {trial.name}{final_return(trial)}")
                else:
                    failed.append(trial.name)
                    why = f"exit {code}" if code is not None else why
                    say(progress, f"[{done}/{len(trials)}] FAILED: {trial.name} ({why}); its log: {log_path(trial)}")
            if not ready:
                steps = sorted(last_step(t.run_dir) for t in running.values())
                say(progress, f"{time.perf_counter() - started:.0f} s: {done}/{len(trials)} done, {len(running)} running "
                              f"(steps {steps[0]:,} to {steps[-1]:,})")  # fmt: skip
        return failed
    finally:
        ray.shutdown()


def say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


def log_path(trial: Trial) -> Path:
    return trial.root / LOG_DIR / f"{trial.env_id.replace('/', '-')}_{trial.label}_seed{trial.seed}.log"


def last_step(run_dir: Path) -> int:
    """The step of ``metrics.csv``'s last row (its last 4 kB read): a running trial's progress."""
    try:
        with open(run_dir / "metrics.csv", "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
        return int(lines[-1].split(",", 1)[0]) if len(lines) > 1 else 0
    except (OSError, ValueError, IndexError):
        return 0


def final_return(trial: Trial) -> str:
    from .results import load_run

    try:
        _, values = load_run(trial.run_dir).curve("eval_return")
        return f", final eval return {values[-1]:.1f}"
    except Exception:  # a report, not a check: the run directory is the record
        return ""


# ------------------------------------------------------------------------------ the sweep


def write_sweep_file(root: Path, trials: list[Trial], total_steps, extra, labels, envs, seeds) -> None:
    record = {"algos": list(labels), "envs": list(envs), "seeds": list(seeds), "total_steps": total_steps,
              "extra": list(extra), "trials": [str(t.run_dir.relative_to(root)) for t in trials],
              "qsm_tutorial": importlib.metadata.version("qsm_tutorial"), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    atomic_write(root / SWEEP_FILE, lambda f: f.write(json.dumps(record, indent=2).encode()))


def sweep(
    algos: Sequence[str],
    envs: Sequence[str],
    seeds: Iterable[int],
    total_steps: int | None = None,
    runs_root: str | os.PathLike = "runs",
    *,
    extra: Sequence[str] = (),
    variants: dict | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    memory_per_trial: int | None = None,
    max_concurrent: int | None = None,
    max_failures: int = 3,
    progress: bool = True,
) -> list[RunResult]:
    """Run every (env, algo, seed) of the grid to ``total_steps`` on Ray and return the runs
    (``results.load_runs``). Complete trials are skipped, interrupted ones resume; ``extra`` are
    ``qsm-train`` flags for every trial; ``variants`` maps a label to (algorithm, its flags)
    (default ``VARIANTS``). Raises :class:`SweepConflict` before launching anything when a run
    directory cannot take its trial, :class:`SweepError` when a trial failed."""
    seeds = list(seeds)
    trials = grid(algos, envs, seeds, runs_root, extra, variants)
    states = {t: trial_state(t, total_steps) for t in trials}
    conflicts = [f"{t.name}: {s.why}" for t, s in states.items() if s.state == "conflict"]
    if conflicts:
        raise SweepConflict(f"{len(conflicts)} trial(s) cannot run: " + "; ".join(conflicts))
    todo = [t for t in trials if states[t].state != "complete"]
    memory = {t: memory_per_trial or default_memory(t, total_steps) for t in todo}  # (parses every trial's flags)
    root = trials[0].root
    root.mkdir(parents=True, exist_ok=True)
    say(progress, f"sweep of {len(trials)} trials in {root}: {len(trials) - len(todo)} complete, "
                  f"{sum(states[t].state == 'resumes' for t in todo)} to resume, {sum(states[t].state == 'new' for t in todo)} new")  # fmt: skip
    if todo:
        write_sweep_file(root, trials, total_steps, extra, algos, envs, seeds)
        failed = launch(todo, total_steps, address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                        memory=memory, max_concurrent=max_concurrent, max_failures=max_failures, progress=progress)  # fmt: skip
        if failed:
            raise SweepError(f"{len(failed)} of {len(todo)} trial(s) failed: {', '.join(failed)}; rerun the same command to retry them")
    return load_runs([t.run_dir for t in trials])


# ------------------------------------------------------------------------------ the command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qsm-sweep", description=__doc__.split("\n\n")[0],
                                epilog="Other flags (--eval-every 10000, --preset paper, ...) go to every trial's qsm-train.")  # fmt: skip
    p.add_argument("--algos", required=True, help=f"comma-separated: {', '.join(sorted(ALGOS) + sorted(VARIANTS))}")
    p.add_argument("--envs", required=True, help="comma-separated env ids, e.g. dmc/cheetah-run,dmc/walker-walk")
    p.add_argument("--seeds", type=seed_range, default=[0], help="e.g. 0-4 or 0,1,2 (default: 0)")
    p.add_argument("--total-steps", type=int, help="env steps per trial (default: qsm-train's for the env)")
    p.add_argument("--runs-root", default="runs", help="trial k of (env, algo) is <runs-root>/<env>/<algo>/seed<k> (default: runs)")
    p.add_argument("--address", help="a Ray cluster (default: $RAY_ADDRESS if set, else a private Ray on this machine)")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs a trial holds; it runs that many torch threads (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs a trial holds, fractions allowed (0.25: four per GPU); >0 trains on cuda (default: 0)")
    p.add_argument("--memory-per-trial", type=float, help="GiB a trial reserves (default: its replay buffer + 1)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the resources hold)")
    p.add_argument("--max-failures", type=int, default=3, help="restarts of a trial whose worker died (default: 3)")
    p.add_argument("--dry-run", action="store_true", help="print each trial's state (new, resumes at step N, complete, conflict); start nothing")
    p.add_argument("--print-commands", action="store_true", help="print one idempotent qsm-train command per trial; start nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """``qsm-sweep``: 0 when every trial is complete, 1 when a trial failed, 2 when a conflict or
    bad input was found before launch (one line on stderr)."""
    args, extra = build_parser().parse_known_args(argv)
    labels, envs = args.algos.split(","), args.envs.split(",")
    try:
        trials = grid(labels, envs, args.seeds, args.runs_root, extra)
        if args.print_commands:
            for t in trials:
                print(shlex.join(["qsm-train", *t.argv(args.total_steps, max(1, int(args.cpus_per_trial)))]))
            return 0
        if args.dry_run:
            for t in trials:
                print(f"{t.name}: {trial_state(t, args.total_steps)}")
            return 0
        memory = int(args.memory_per_trial * (1 << 30)) if args.memory_per_trial else None
        runs = sweep(labels, envs, args.seeds, args.total_steps, args.runs_root, extra=extra, address=args.address,
                     cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, memory_per_trial=memory,
                     max_concurrent=args.max_concurrent, max_failures=args.max_failures, progress=not args.quiet)  # fmt: skip
    except (TrainError, ValueError) as e:  # a failed trial: 1; a conflict or bad input found before launch: 2
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1 if isinstance(e, SweepError) and not isinstance(e, SweepConflict) else 2
    print(f"{len(runs)} runs complete in {Path(args.runs_root).absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
