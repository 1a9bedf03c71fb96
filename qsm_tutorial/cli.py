"""``qsm-train``: train from a shell; every config field is a flag whose help is the field's doc.

    $ qsm-train --algo sac --env InvertedPendulum-v5 --total-steps 30000 --seed 0
    $ qsm-train --algo sac --env InvertedPendulum-v5 --seed 0 --resume     # after Ctrl-C, a kill, ...
    $ qsm-train --algo qsm --env dmc/cheetah-run --help    # the values this run would use

``--help`` shows, per field, the value the run will take: the env family's preset (or ``--preset``),
or with ``--resume`` the run directory's saved config. argparse, not tyro: those shown defaults
depend on other flags (a two-pass parse), which a 20-line generator over the dataclasses does directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import typing
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym

from . import algos, envs
from .algos.common import cli_flag, count_argument
from .loop import DEFAULT_THREADS, DEFAULT_TOTAL_STEPS, LOOP_FIELDS, PRESETS, LoopConfig, Run, make_config, preset_for, resume_fields, train, train_seeds
from .storage import RunDir, RunDirError, TrainError, file_system_error


def _cli_type(hint) -> tuple[Callable[[str], Any] | None, dict]:
    """argparse ``type`` and extra kwargs for a dataclass field's type hint."""
    if hint is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return (lambda text: tuple(item(x) for x in text.replace(" ", "").split(",") if x)), {"metavar": "N,N"}
    return hint, {}


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, config, title: str) -> None:
    """One flag per field of the dataclass instance ``config``: ``--field-name``, help = the field's
    doc and the value ``config`` holds (what this run will use). Flags left out override nothing."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        parse, extra = _cli_type(hints[f.name])
        if parse is not None:
            extra["type"] = parse
        help_text = f"{f.metadata.get('help', '')} (default: {_shown(getattr(config, f.name))})".replace("%", "%%")
        group.add_argument(cli_flag(f.name), dest=f.name, default=argparse.SUPPRESS, help=help_text, **extra)


def build_parser(algo: str, env_id: str | None = None, preset: str | None = None, saved: dict | None = None) -> argparse.ArgumentParser:
    """The full ``qsm-train`` parser, with the config flags of ``algo``, their shown defaults those
    of the run it would start: ``saved`` (a resumed run's config.json), else ``preset``, else
    ``env_id``'s preset, else (no env yet) the dataclass's, i.e. the paper's."""
    algo_config = algos.get(algo)[1]
    if saved is not None:
        fields = resume_fields(saved, algo)  # as train() resumes: the saved fields over the preset
        loop = LoopConfig(**{k: fields.pop(k) for k in LOOP_FIELDS & fields.keys()})
        config = make_config(algo, saved["env_id"], preset, **fields)
        source, budget = "the run's saved config.json", saved.get("total_steps")
    else:
        loop = LoopConfig()
        preset = preset or (preset_for(env_id) if env_id else None)
        config = make_config(algo, env_id or "", preset) if preset else algo_config()
        source = f"preset '{preset}'" + (f" for {env_id}" if env_id else "") if preset else "the paper's; pass --env for its preset's"
        budget = DEFAULT_TOTAL_STEPS[preset_for(env_id)] if env_id else None
    budget_text = budget if budget is not None else f"{DEFAULT_TOTAL_STEPS['bandit']} for bandits, {DEFAULT_TOTAL_STEPS['control']} otherwise"
    parser = argparse.ArgumentParser(
        prog="qsm-train",
        description=(
            "Train QSM, SAC or TD3 on an env, writing config, metrics and checkpoints to a run directory. "
            "Bandit envs use each algorithm's 'bandit' preset, other envs its 'control' preset; "
            "--preset paper gives the paper's settings. "
            "`--algo sac --env ... --help` lists SAC's fields with the values that run would use."
        ),
    )
    run = parser.add_argument_group("run")
    run.add_argument("--algo", choices=sorted(algos.ALGOS), help=f"algorithm (default: {algo})")
    run.add_argument("--env", help="env id: dmc/cartpole-swingup, InvertedPendulum-v5, bandit/four-gaussians, ..."
                     + (f" (default: {saved['env_id']})" if saved else ""))  # fmt: skip
    run.add_argument("--total-steps", type=int, help=f"env steps (default: {budget_text})")
    run.add_argument("--seed", type=int, help=f"the run's one seed (default: {saved['seed'] if saved else 0})")
    run.add_argument("--seeds", type=_seed_list, help="several seeds side by side in one process, e.g. 0,1,2,3 "
                     "(seed k is written to <run-dir>/seed<k>, resumable alone as a --seed k run)")  # fmt: skip
    run.add_argument("--run-dir", help="where the run is written (default: runs/<env>/<algo>/seed<seed>)")
    run.add_argument("--resume", nargs="?", const=True, default=False, type=_resume_mode, metavar="auto",
                     help="continue from the run dir's last checkpoint, with its saved config; --resume auto: "
                     "continue if there is a checkpoint, start if not, exit 0 at once if the run is complete")  # fmt: skip
    run.add_argument("--force", action="store_true", help="start over in a run dir that holds a run; with --resume, accept a changed config")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--preset", choices=PRESETS, help="named config: paper (the paper's), bandit or control "
                     "(this package's deviations, documented with each algorithm's PRESETS; default: bandit for bandit/ envs, control otherwise)")  # fmt: skip
    run.add_argument("--threads", type=count_argument, help=f"torch CPU threads, recorded in config.json and kept on --resume (default: {DEFAULT_THREADS}; small networks gain little from more, and lose much when the machine is busy)")
    add_config_arguments(parser, loop, "loop" + (f" (values shown: {source})" if saved else ""))
    add_config_arguments(parser, config, f"{algo} config (values shown: {source})")
    return parser


def _resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"--resume takes no value or 'auto', got {text!r}")
    return text


def _seed_list(text: str) -> tuple[int, ...]:
    """``"0,1,2,3"`` → (0, 1, 2, 3), for ``--seeds`` (``train_seeds`` checks they are distinct and >= 0)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2,3, got {text!r}") from None


def default_run_dir(env_id: str, algo: str, seed: int) -> Path:
    return Path("runs") / env_id / algo / f"seed{seed}"


def _saved_config(run_dir: Path) -> dict | None:
    """A run dir's config.json for resume defaults, or None (``train`` reports what is wrong)."""
    try:
        return RunDir(run_dir).saved_config()
    except RunDirError:
        return None


def parse_cli(argv: list[str] | None = None) -> dict:
    """``train`` keyword arguments from the command line. With ``--resume``, algo, env, seed and
    budget left out come from the run's saved ``config.json`` (``train`` does the same for the
    config fields), so ``--run-dir X --resume`` suffices."""
    # First pass: what locates the run and picks the values its flags show.
    pre = argparse.ArgumentParser(add_help=False)
    for name in ("--algo", "--env", "--run-dir", "--seed", "--preset"):
        pre.add_argument(name)
    pre.add_argument("--resume", nargs="?", const=True, default=False)
    known, _ = pre.parse_known_args(argv)
    saved = None
    if known.resume and (known.run_dir or known.env):
        seed = known.seed if (known.seed or "").isdigit() else "0"
        saved = _saved_config(Path(known.run_dir or default_run_dir(known.env, known.algo or "qsm", int(seed))))
    algo = known.algo or (saved or {}).get("algo", "qsm")
    shown_algo = algo if algo in algos.ALGOS else "qsm"
    shown_saved = saved if saved and saved["algo"] == shown_algo else None
    try:
        parser = build_parser(shown_algo, known.env, known.preset if known.preset in PRESETS else None, shown_saved)
    except (TypeError, ValueError):  # a saved config this package cannot read back: plain defaults
        parser = build_parser(shown_algo)
    args = vars(parser.parse_args(argv))
    args["algo"] = algo
    if saved:
        for arg, key in (("env", "env_id"), ("total_steps", "total_steps"), ("seed", "seed")):
            if args[arg] is None:
                args[arg] = saved[key]
    if args["env"] is None:
        if known.resume and args.get("seeds") is not None:  # a --seeds root holds seed<k> runs, each resumed alone
            raise RunDirError(f"--seeds cannot resume; continue each seed alone: --run-dir {known.run_dir or '<run-dir>'}/seed<k> --resume")
        if known.resume and known.run_dir:  # (saved is None: say why, not what to type)
            RunDir(Path(known.run_dir)).saved_config()  # a config.json that is not a run's: its own error
            raise RunDirError(f"nothing to resume in {known.run_dir}: it has no config.json; "
                              "pass --env (and --algo) to start a new run there")  # fmt: skip
        raise RunDirError("--env is required (or --run-dir with --resume)")
    args["threads"] = args["threads"] or (saved or {}).get("threads")  # a resumed run keeps its thread count
    seeds = args.pop("seeds")
    if seeds is not None:
        if args["resume"] or args["seed"] is not None:
            raise RunDirError("--seeds starts new runs side by side; to continue one of them use "
                              "--run-dir <run-dir>/seed<k> --resume (and --seed for a single run)")  # fmt: skip
        run_root = args.pop("run_dir") or default_run_dir(args["env"], args["algo"], 0).parent
        return dict(
            env_id=args.pop("env"),
            algo=args.pop("algo"),
            seeds=seeds,
            total_steps=args.pop("total_steps"),
            run_root=run_root,
            force=args.pop("force"),
            progress=not args.pop("no_progress"),
            **{k: v for k, v in args.items() if k not in ("resume", "seed")},
        )
    if args["seed"] is None:
        args["seed"] = 0
    run_dir = args.pop("run_dir") or default_run_dir(args["env"], args["algo"], args["seed"])
    return dict(
        env_or_id=args.pop("env"),
        algo=args.pop("algo"),
        total_steps=args.pop("total_steps"),
        seed=args.pop("seed"),
        run_dir=run_dir,
        resume=args.pop("resume"),
        force=args.pop("force"),
        progress=not args.pop("no_progress"),
        **args,
    )


def main(argv: list[str] | None = None) -> int:
    """``qsm-train``: 0 when the budget is reached, 2 on an error (one line on stderr), 128 + the
    signal number when SIGINT/SIGTERM stopped the run (after a checkpoint)."""
    kwargs: dict = {}
    try:
        kwargs = parse_cli(argv)
        if kwargs.get("resume") == "auto" and RunDir(kwargs["run_dir"]).holds_complete(
                kwargs["algo"], kwargs["env_or_id"], kwargs["seed"], kwargs["total_steps"]):
            print(f"{kwargs['algo']} on {kwargs['env_or_id']}, seed {kwargs['seed']}: complete; run dir {kwargs['run_dir']}")
            return 0
        if "seeds" in kwargs:
            runs = train_seeds(**kwargs)
        else:
            runs = [train(**kwargs)]
    except KeyboardInterrupt:  # before the loop took over SIGINT (it stops with a checkpoint)
        print(f"interrupted before training began; {_what_to_resume(kwargs)}", file=sys.stderr)
        return 130
    except (TrainError, envs.UnknownEnvError, ValueError, gym.error.Error) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # one the run's files did not name (storage turns its own into TrainErrors)
        print(f"error: {' '.join(str(file_system_error(e, what='access')).split())}", file=sys.stderr)
        return 2
    return _report(runs, printed=kwargs["progress"])


def _what_to_resume(kwargs: dict) -> str:
    """After an interruption before training: whether a checkpoint on disk can be resumed."""
    folder = Path(kwargs.get("run_dir") or kwargs.get("run_root") or ".")
    if any(folder.glob("checkpoint.pt")) or any(folder.glob("seed*/checkpoint.pt")):
        return f"the checkpoint in {folder} is unchanged and --resume continues from it"
    return "no checkpoint was written: run the same command again to start"


def _report(runs: list[Run], printed: bool) -> int:
    """The CLI's summary, one line per run (unless ``train`` ``printed`` it), and its exit status:
    128 + the signal number when a signal stopped the run(s) (after a checkpoint), else 0."""
    for run in runs:
        if not printed and not run.stop_reason:  # (a stopped run's line, with what to do, goes to stderr)
            print(run.summary())
        if run.stop_reason:
            where = ", ".join(str(r.run_dir) for r in runs) if len(runs) > 1 else run.run_dir
            how = "continue each with --run-dir <that dir> --resume" if len(runs) > 1 else "continue with --resume"
            print(f"stopped by {run.stop_reason} at step {run.step}; checkpoint saved in {where}; {how}", file=sys.stderr)
            if run.stop_reason in signal.Signals.__members__:
                return 128 + signal.Signals[run.stop_reason].value
    return 0
