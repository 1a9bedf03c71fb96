"""The training loop (act, store, update, evaluate, log, checkpoint) and the ``qsm-train`` CLI.

    run = qsm_tutorial.train("InvertedPendulum-v5", algo="sac", total_steps=30_000, seed=0,
                             run_dir="runs/InvertedPendulum-v5/sac/seed0")
    run.agent.act(obs, deterministic=True)

    $ qsm-train --algo sac --env InvertedPendulum-v5 --total-steps 30000 --seed 0
    $ qsm-train --algo sac --env InvertedPendulum-v5 --seed 0 --resume     # after Ctrl-C, a kill, ...

Protocol (also written into each run's ``config.json``). Env steps 1 … ``warmup_steps`` take
uniform random actions; after that the agent acts with its exploration noise and makes
``updates_per_step`` updates per env step on minibatches drawn uniformly from the replay buffer,
once the buffer holds a batch. A transition's mask is 1 − terminated: time limits bootstrap.
At step 0, every ``eval_every`` steps and at the end, the agent is evaluated over
``eval_episodes`` episodes of a separate env instance with deterministic actions
(``agent.act(obs, deterministic=True)``); episode j of every evaluation starts from
``reset(seed=derived_seed(seed, EVAL_STREAM, j))``, so all evaluations see the same initial
states. ``eval_return`` is the mean undiscounted return of those episodes.

Runs on disk (``run_dir``; the files are described in :mod:`qsm_tutorial.results`). Every file is
replaced atomically (a hidden temp file, then ``os.replace``) or grows by one whole CSV row at a
time, so a kill at any moment leaves readable files. A checkpoint is written every
``checkpoint_every`` steps, at the end, and on SIGINT/SIGTERM (the current step finishes first; a
second signal stops at once). Resuming restores networks, optimisers, replay buffer and RNG states,
drops the metric rows logged after the checkpoint, and starts a fresh training episode from a
reset seeded by the step: the episode the interruption cut stays in the buffer as if a time limit
had ended it. A resumed run is therefore reproducible, but not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import random
import secrets
import signal
import sys
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from . import algos, envs
from .algos.common import cli_flag, count_argument, doc, is_count
from .envs.bandits import Bandit2D
from .replay import ReplayBuffer
from .results import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, TIMING_FILE, read_csv

CHECKPOINT_FORMAT = "qsm_tutorial checkpoint v1"
TEMP_SUFFIX = ".tmp"  # temp files are hidden: ".<name>.<random>.tmp"
EVAL_STREAM, RESUME_STREAM = 1, 2  # seed streams of derived_seed

# metrics.csv starts with these columns; the agent's update metrics follow, in the order of its
# first update's dict.
METRIC_COLUMNS = [
    "step", "event", "episode", "episode_return", "episode_length", "updates",
    "eval_return", "eval_return_std", "eval_return_min", "eval_return_max", "eval_length",
]
TIMING_COLUMNS = ["step", "elapsed_s", "steps_per_s"]


class TrainError(Exception):
    """A problem the user can fix; the CLI prints it as one line."""


class RunDirError(TrainError):
    """The run directory cannot be used as asked (another run's, nothing to resume, ...)."""


class CheckpointError(TrainError):
    """A checkpoint that is missing, corrupt, or not one this run can continue from."""


class NonFiniteError(TrainError):
    """A loss or a weight became NaN or infinite; the run stopped, its last good checkpoint stays."""


@dataclass
class LoopConfig:
    """How the loop drives an algorithm: update ratio, evaluation, logging and checkpoints."""

    updates_per_step: float = doc(1.0, "agent updates per env step after warm-up, e.g. 0.5 or 2 (paper: 1)")
    eval_every: int = doc(10_000, "evaluate every this many env steps, and at step 0 and at the end (paper: 10000)")
    eval_episodes: int = doc(10, "episodes per evaluation, deterministic actions on a separate env (paper code: 1)")
    log_every: int = doc(1_000, "write the mean of the update metrics every this many env steps")
    checkpoint_every: int = doc(10_000, "checkpoint every this many env steps, at the end and on Ctrl-C/SIGTERM")

    def __post_init__(self):
        if not self.updates_per_step >= 0:
            raise ValueError(f"updates_per_step must be >= 0, got {self.updates_per_step}")
        for name in ("eval_every", "eval_episodes", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


LOOP_FIELDS = frozenset(f.name for f in dataclasses.fields(LoopConfig))


@dataclass
class Run:
    """What ``train`` returns: the trained agent, its config and the metrics history."""

    agent: Any
    config: Any
    env_id: str
    seed: int
    history: list[dict] = field(default_factory=list)
    run_dir: str | None = None
    loop: LoopConfig = field(default_factory=LoopConfig)
    total_steps: int = 0
    step: int = 0
    timing: list[dict] = field(default_factory=list)
    stop_reason: str | None = None  # "SIGINT" / "SIGTERM" when a signal ended the run early

    def metric(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged metric."""
        rows = [h for h in self.history if key in h]
        return np.array([h["step"] for h in rows]), np.array([h[key] for h in rows])


PRESETS = tuple(algos.qsm.PRESETS)  # every algorithm has the same preset names (a test checks it)


def preset_for(env_id: str) -> str:
    """The config preset an env family trains with by default: "bandit" for the 2-D bandits (an
    env object that is a ``Bandit2D`` has an id starting with ``bandit/`` here, see ``_make_envs``),
    "control" for every other env. "paper" (the faithful settings) is always one flag away."""
    return "bandit" if env_id.startswith("bandit/") else "control"


# Env steps when ``total_steps`` is not given. Bandits: 1,500 one-step episodes keep all four modes
# of bandit/four-gaussians (measured: 14-18 % each at 1,500 steps, 20-23 % at 2,000) in ~25 s on 2 cores.
DEFAULT_TOTAL_STEPS = {"bandit": 1_500, "control": 100_000}


def make_config(algo: str, env_id: str, preset: str | None = None, **overrides):
    """``algo``'s config: the named preset (default: the env family's, ``preset_for``), then ``overrides``."""
    _, config_cls = algos.get(algo)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown {algo} config field(s) {unknown}; valid fields: {sorted(names)}")
    return config_cls.preset(preset or preset_for(env_id), **overrides)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(seed: int, stream: int, index: int) -> int:
    """A reset seed for (run seed, purpose, index), unrelated to the run's other random streams."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------
# Files that are never half-written
# ----------------------------------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a hidden temp file in the same folder, fsync, then ``os.replace``:
    readers see the old file or the new one, never a part of either."""
    # open(..., "xb") rather than mkstemp: the file gets the usual permissions (umask), not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def is_temp_file(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write`'s temp files (left behind by a kill)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def format_cell(value: Any) -> str:
    """A CSV cell: '' for missing, exact ``repr`` for floats (the same bytes for the same number)."""
    if value is None:
        return ""
    if isinstance(value, (int, np.integer, str)):
        return str(value)
    return repr(float(value))


class CsvLog:
    """Rows kept in memory and in a CSV file that only ever holds whole rows.

    A row is appended with one write; a row with a column the header lacks rewrites the file
    atomically with the wider header (once per run: the agent's metric names are known at its
    first update). With ``path=None`` the rows stay in memory.
    """

    def __init__(self, path: Path | None, columns: list[str]):
        self.path, self.columns, self.rows = path, list(columns), []

    def start(self, resume_step: int | None) -> None:
        """Begin the file: empty, or (resuming) with the existing rows up to ``resume_step``."""
        if self.path is None:
            return
        if resume_step is not None and self.path.exists():
            columns, rows = read_csv(self.path)
            self.columns += [c for c in columns if c not in self.columns]
            self.rows = [r for r in rows if r["step"] <= resume_step]
        self._rewrite()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.path is None:
            return
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            with open(self.path, "a") as f:
                f.write(self._line(row))

    def _line(self, row: dict[str, Any]) -> str:
        return ",".join(format_cell(row.get(c)) for c in self.columns) + "\n"

    def _rewrite(self) -> None:
        text = ",".join(self.columns) + "\n" + "".join(self._line(r) for r in self.rows)
        atomic_write(self.path, lambda f: f.write(text.encode()))


# ----------------------------------------------------------------------------------------------
# Checkpoints: tensors and primitives only, read back with torch.load(weights_only=True)
# ----------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`train`, on CPU; a clear :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same here
        raise CheckpointError(
            f"cannot read {path} ({type(e).__name__}): it is corrupt or not a checkpoint; "
            "start over with --force or restore the file"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a qsm_tutorial checkpoint; start over with --force")
    return state


def rng_state(action_space: gym.Space) -> dict:
    """Python, NumPy, torch (and CUDA) generators and the env's action-space sampler."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = torch.from_numpy(np_state["state"]["key"].astype(np.int64))
    return {
        "python": random.getstate(),
        "numpy": np_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "action_space": action_space.np_random.bit_generator.state,
    }


def set_rng_state(state: dict, action_space: gym.Space) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np_state["state"]["key"] = np_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    action_space.np_random.bit_generator.state = state["action_space"]


def first_nonfinite(tree: Any, prefix: str = "") -> str | None:
    """The name of the first float tensor holding NaN/inf in a nested state dict, or None."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        is_bad = isinstance(tree, torch.Tensor) and tree.is_floating_point() and not torch.isfinite(tree).all()
        return prefix if is_bad else None
    for key, value in items:
        found = first_nonfinite(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


class RunDir:
    """A run's folder: checks what it may hold before anything is written, then the files."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config = self.path / CONFIG_FILE
        self.checkpoint = self.path / CHECKPOINT_FILE
        self.metrics = self.path / METRICS_FILE
        self.timing = self.path / TIMING_FILE

    def saved_config(self) -> dict | None:
        """The ``config.json`` of the run already here, or None if there is none."""
        if not self.config.exists():
            return None
        try:
            saved = json.loads(self.config.read_text())
            _ = saved["algo"], saved["env_id"], saved["seed"], saved["loop"], saved["agent"]
            return saved
        except (ValueError, KeyError, TypeError):
            raise RunDirError(
                f"{self.config} is not a qsm_tutorial run config; choose another --run-dir or pass --force"
            ) from None

    def resume_fields(self, algo: str) -> dict[str, Any]:
        """The saved loop and algorithm fields, the base that a resume's overrides change; empty
        when there is no readable config of an ``algo`` run (``prepare`` then says what is wrong)."""
        try:
            saved = self.saved_config()
        except RunDirError:
            return {}
        if saved is None or saved["algo"] != algo:
            return {}
        known = LOOP_FIELDS | {f.name for f in dataclasses.fields(algos.get(algo)[1])}
        fields = {**saved["loop"], **saved["agent"]}
        return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}

    def prepare(self, record: dict, resume: bool, force: bool) -> dict | None:
        """Check that this folder may take the run ``record`` as asked; return the checkpoint to
        resume from (or None for a new run). Writes nothing."""
        saved = None
        try:
            saved = self.saved_config()
        except RunDirError:
            if not force:
                raise
        identity = ("algo", "env_id", "seed")
        other_run = saved is not None and any(saved[k] != record[k] for k in identity)
        if other_run and not force:
            raise RunDirError(
                f"{self.path} belongs to another run ({saved['algo']} on {saved['env_id']}, seed {saved['seed']}); "
                "choose another --run-dir, or pass --force to replace it"
            )
        if not resume:
            # Without a checkpoint there is nothing to lose: a run killed before its first one restarts.
            if not force and self.checkpoint.exists():
                raise RunDirError(
                    f"{self.path} already holds this run; pass --resume to continue it or --force to start it over"
                )
            return None
        if not self.checkpoint.exists():
            raise RunDirError(f"nothing to resume in {self.path}: it has no {CHECKPOINT_FILE}; run without --resume")
        if saved is not None and not force:
            changed = [f"{part}.{k}" for part in ("loop", "agent") for k in record[part] if saved[part].get(k) != record[part][k]]
            if changed:
                raise RunDirError(
                    f"resuming {self.path} with a changed config ({', '.join(changed)}) is refused; "
                    "drop those options or pass --force"
                )
        checkpoint = load_checkpoint(self.checkpoint)
        if checkpoint.get("algo") != record["algo"]:
            raise CheckpointError(f"{self.checkpoint} holds a {checkpoint.get('algo')} agent, not {record['algo']}")
        return checkpoint

    def begin(self, record: dict, resumed: bool) -> None:
        """Write the config; a new run first removes the files of the run it replaces."""
        self.path.mkdir(parents=True, exist_ok=True)
        for p in self.path.iterdir():
            if is_temp_file(p.name) or (not resumed and p == self.checkpoint):
                p.unlink()
        atomic_write(self.config, lambda f: f.write(json.dumps(record, indent=2).encode()))

    def save_checkpoint(self, state: dict) -> None:
        atomic_write(self.checkpoint, lambda f: torch.save(state, f))


# ----------------------------------------------------------------------------------------------
# Evaluation and stopping
# ----------------------------------------------------------------------------------------------
def evaluate(agent, env: gym.Env, episodes: int, seed: int) -> dict[str, float]:
    """Mean, std, min and max undiscounted return (and mean length) of ``episodes`` episodes with
    deterministic actions; episode j resets with ``derived_seed(seed, EVAL_STREAM, j)``."""
    returns, lengths = [], []
    for j in range(episodes):
        obs, _ = env.reset(seed=derived_seed(seed, EVAL_STREAM, j))
        episode_return, length, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
            episode_return += float(reward)
            length += 1
            done = terminated or truncated
        returns.append(episode_return)
        lengths.append(length)
    r = np.array(returns)
    return {
        "eval_return": float(r.mean()),
        "eval_return_std": float(r.std()),
        "eval_return_min": float(r.min()),
        "eval_return_max": float(r.max()),
        "eval_length": float(np.mean(lengths)),
    }


class GracefulStop:
    """While active, SIGINT and SIGTERM ask the loop to stop after the current step (``requested``
    names the signal); a second signal interrupts at once. Only the main thread can install them."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
def _make_envs(env_or_id: str | gym.Env, seed: int) -> tuple[gym.Env, gym.Env, str, bool]:
    """``(env, eval_env, env_id, made_here)``; a given env object is evaluated on a deep copy."""
    if isinstance(env_or_id, str):
        return envs.make(env_or_id, seed=seed), envs.make(env_or_id), env_or_id, True
    env = env_or_id
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(f"the algorithms need a continuous (Box) action space, got {env.action_space}")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    env_id = getattr(env.spec, "id", None) or type(env.unwrapped).__name__
    if isinstance(env.unwrapped, Bandit2D) and not env_id.startswith("bandit/"):
        env_id = f"bandit/{env_id}"  # so that it trains with the bandit preset, as envs.make's bandits do
    return env, copy.deepcopy(env), env_id, False


def updates_due(step: int, config, ratio: float) -> int:
    """Total updates owed after env step ``step``: ``ratio`` per step once the warm-up is over and
    the buffer holds a batch (the buffer holds ``step`` transitions)."""
    learning_from = max(config.warmup_steps, config.batch_size - 1)
    return math.floor(ratio * (step - learning_from)) if step > learning_from else 0


def step_budget(total_steps: int | None, env_id: str) -> int:
    """``total_steps``, or the env family's ``DEFAULT_TOTAL_STEPS`` when it is None."""
    if total_steps is None:
        return DEFAULT_TOTAL_STEPS[preset_for(env_id)]
    if not is_count(total_steps):
        raise ValueError(f"total_steps (--total-steps) must be an integer >= 1, or left out for the env's default; got {total_steps!r}")
    return total_steps


def _run_record(algo, env_id, seed, total_steps, loop, config, obs_dim, act_dim, device) -> dict:
    """The resolved config of a run, as JSON (``config.json``)."""
    record = {
        "algo": algo,
        "env_id": env_id,
        "seed": seed,
        "total_steps": total_steps,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "device": str(device),
        "loop": dataclasses.asdict(loop),
        "agent": dataclasses.asdict(config),
        "protocol": {
            "warmup": f"env steps 1..{config.warmup_steps} take uniform random actions",
            "updates": f"{loop.updates_per_step} updates per env step once the warm-up is over and a batch is stored",
            "bootstrap": "mask = 1 - terminated: time limits bootstrap",
            "evaluation": (
                f"at step 0, every {loop.eval_every} steps and at the end: {loop.eval_episodes} episodes on a "
                "separate env instance, deterministic actions agent.act(obs, deterministic=True), episode j reset "
                "with seed derived_seed(seed, 1, j) at every evaluation"
            ),
            "eval_return": "mean over those episodes of the undiscounted episode return",
            "episode_return": "undiscounted return of each training episode (exploration on)",
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "gymnasium": gym.__version__},
    }
    return json.loads(json.dumps(record))  # tuples become lists, as they will read back


def _restore(checkpoint: dict, agent, buffer: ReplayBuffer, action_space: gym.Space, path: Path) -> tuple[int, int, int]:
    """Load a checkpoint into the run's objects; ``(step, episodes, updates)`` to continue from."""
    try:
        agent.load_state_dict(checkpoint["agent"])
        buffer.load_state_dict(checkpoint["replay"])
        set_rng_state(checkpoint["rng"], action_space)
        return checkpoint["step"], checkpoint["episodes"], checkpoint["updates"]
    except (KeyError, RuntimeError, ValueError, TypeError) as e:  # e.g. network sizes changed with --force
        message = " ".join(str(e).split()[:30]) or type(e).__name__
        raise CheckpointError(f"{path} does not fit this run ({message})") from None


def train(
    env_or_id: str | gym.Env,
    algo: str = "qsm",
    total_steps: int | None = None,
    seed: int = 0,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    preset: str | None = None,
    on_step: Callable[[Run], None] | None = None,
    **overrides,
) -> Run:
    """Train ``algo`` on an env for ``total_steps`` environment steps and return a :class:`Run`.

    ``overrides`` set fields of :class:`LoopConfig` (``eval_every``, ``updates_per_step``, ...) and
    of the algorithm's config dataclass (for QSM, :class:`~qsm_tutorial.algos.qsm.QSMConfig`), on
    top of the ``preset``: by default the env family's (``"bandit"`` for bandits, ``"control"``
    otherwise, see ``preset_for``); ``preset="paper"`` is the paper's configuration. Without
    ``total_steps`` the budget is the env family's ``DEFAULT_TOTAL_STEPS``.

    With ``run_dir`` the run is written there (config, metrics, checkpoints; see the module doc).
    A folder that already holds a run is refused unless ``resume`` (continue from its checkpoint;
    the saved config fields are the base, and ``overrides`` that change one are refused) or
    ``force`` (start over; with ``resume``: accept a changed config).
    Without ``run_dir`` nothing is written. SIGINT/SIGTERM end the run after the current step
    (checkpointed) and ``Run.stop_reason`` names the signal. ``on_step(run)``, if given, is called
    after every env step and its updates (``run.step``, ``run.agent.n_updates`` tell where the run
    is), e.g. to keep snapshots of the weights (``widgets.train_bandit_snapshots``).
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    store = RunDir(run_dir) if run_dir is not None else None
    if resume and store:
        overrides = {**store.resume_fields(algo), **overrides}
    loop = LoopConfig(**{k: overrides.pop(k) for k in LOOP_FIELDS & overrides.keys()})
    seed_everything(seed)
    env, eval_env, env_id, made_here = _make_envs(env_or_id, seed)
    try:
        config = make_config(algo, env_id, preset, **overrides)
        total_steps = step_budget(total_steps, env_id)
        agent_cls, _ = algos.get(algo)
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        agent = agent_cls(obs_dim, act_dim, config)
        buffer = ReplayBuffer(obs_dim, act_dim, config.buffer_size)
        record = _run_record(algo, env_id, seed, total_steps, loop, config, obs_dim, act_dim, agent.device)
        checkpoint = store.prepare(record, resume, force) if store else None
        start, episodes, updates = 0, 0, 0
        if checkpoint is not None:
            start, episodes, updates = _restore(checkpoint, agent, buffer, env.action_space, store.checkpoint)
        metrics = CsvLog(store.metrics if store else None, METRIC_COLUMNS)
        timing = CsvLog(store.timing if store else None, TIMING_COLUMNS)
        if store:
            store.begin(record, resumed=checkpoint is not None)
            metrics.start(start if checkpoint is not None else None)
            timing.start(start if checkpoint is not None else None)
        run = Run(agent, config, env_id, seed, history=metrics.rows, run_dir=str(store.path) if store else None,
                  loop=loop, total_steps=total_steps, step=start, timing=timing.rows)
        saved_step = start  # the last good checkpoint, named when a run diverges

        def stop_on_nonfinite(what: str, step: int) -> NonFiniteError:
            kept = f"the last good checkpoint (step {saved_step}) is in {store.path}" if store else "nothing was saved"
            return NonFiniteError(f"non-finite {what} at step {step}: the run stopped; {kept}")

        if start == 0:
            metrics.append({"step": 0, "event": "eval", **evaluate(agent, eval_env, loop.eval_episodes, seed)})
        obs, _ = env.reset(seed=seed if start == 0 else derived_seed(seed, RESUME_STREAM, start))
        episode_return, episode_length, last_eval = 0.0, 0, None
        window: dict[str, list[float]] = {}
        session_start = window_start = time.perf_counter()
        window_steps, eval_seconds = 0, 0.0
        bar = tqdm(total=total_steps, initial=start, disable=not progress, desc=f"{algo} {env_id}", unit="step", mininterval=0.5)
        with GracefulStop() as stop, bar:
            for step in range(start + 1, total_steps + 1):
                # -- act and store ---------------------------------------------------------------
                action = env.action_space.sample() if step <= config.warmup_steps else agent.act(obs)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                buffer.add(obs, action, reward, next_obs, terminated)
                obs, episode_return, episode_length = next_obs, episode_return + float(reward), episode_length + 1
                if terminated or truncated:
                    episodes += 1
                    metrics.append({"step": step, "event": "episode", "episode": episodes,
                                    "episode_return": episode_return, "episode_length": episode_length})
                    obs, _ = env.reset()
                    episode_return, episode_length = 0.0, 0
                # -- learn -------------------------------------------------------------------------
                for _ in range(updates_due(step, config, loop.updates_per_step) - updates):
                    info = agent.update(buffer.sample(config.batch_size, device=agent.device))
                    updates += 1
                    for key, value in info.items():
                        if not math.isfinite(value):
                            raise stop_on_nonfinite(f"{key} ({value})", step)
                        window.setdefault(key, []).append(value)
                # -- log, evaluate, checkpoint ---------------------------------------------------
                window_steps += 1
                bar.update(1)
                if step % loop.log_every == 0 and window:
                    means = {k: float(np.mean(v)) for k, v in window.items()}
                    metrics.append({"step": step, "event": "train", "updates": updates, **means})
                    seconds = time.perf_counter() - window_start - eval_seconds
                    steps_per_s = window_steps / seconds
                    timing.append({"step": step, "elapsed_s": time.perf_counter() - session_start, "steps_per_s": steps_per_s})
                    postfix = {"return": metrics_last(metrics, "episode_return"), "eval": last_eval, "steps/s": round(steps_per_s)}
                    bar.set_postfix({k: v for k, v in postfix.items() if v is not None}, refresh=False)
                    window, window_start, window_steps, eval_seconds = {}, time.perf_counter(), 0, 0.0
                if step % loop.eval_every == 0 or step == total_steps:
                    t0 = time.perf_counter()
                    result = evaluate(agent, eval_env, loop.eval_episodes, seed)
                    eval_seconds += time.perf_counter() - t0
                    metrics.append({"step": step, "event": "eval", **result})
                    last_eval = round(result["eval_return"], 1)
                run.step = step
                if on_step is not None:
                    on_step(run)
                if store and (step % loop.checkpoint_every == 0 or step == total_steps or stop.requested):
                    bad = first_nonfinite(agent.state_dict())
                    if bad:
                        raise stop_on_nonfinite(f"weights ({bad})", step)
                    state = {"format": CHECKPOINT_FORMAT, "algo": algo, "env_id": env_id, "seed": seed, "step": step,
                             "episodes": episodes, "updates": updates, "agent": agent.state_dict(),
                             "replay": buffer.state_dict(), "rng": rng_state(env.action_space)}
                    store.save_checkpoint(state)
                    saved_step = step
                if stop.requested:
                    run.stop_reason = stop.requested
                    break
        return run
    finally:
        if made_here:
            env.close()
            eval_env.close()


def metrics_last(log: CsvLog, key: str) -> float | None:
    """The latest value of ``key`` in a log (rounded for the progress bar), or None."""
    for row in reversed(log.rows):
        if key in row:
            return round(row[key], 1)
    return None


# ----------------------------------------------------------------------------------------------
# The command line: every config field becomes a flag, its doc the help
# ----------------------------------------------------------------------------------------------
def _cli_type(hint) -> tuple[Callable[[str], Any] | None, dict]:
    """argparse ``type`` and extra kwargs for a dataclass field's type hint."""
    if hint is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return (lambda text: tuple(item(x) for x in text.replace(" ", "").split(",") if x)), {"metavar": "N,N"}
    return hint, {}


def add_config_arguments(parser: argparse.ArgumentParser, config_cls, title: str) -> None:
    """One flag per field of ``config_cls``: ``--field-name``, help = the field's doc and default.
    Flags left out do not override anything (defaults come from the dataclass and its preset)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parse, extra = _cli_type(hints[f.name])
        if parse is not None:
            extra["type"] = parse
        help_text = f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        group.add_argument(cli_flag(f.name), dest=f.name, default=argparse.SUPPRESS, help=help_text, **extra)


def build_parser(algo: str) -> argparse.ArgumentParser:
    """The full ``qsm-train`` parser, with the config flags of ``algo``."""
    parser = argparse.ArgumentParser(
        prog="qsm-train",
        description=(
            "Train QSM, SAC or TD3 on an env, writing config, metrics and checkpoints to a run directory. "
            "Bandit envs use each algorithm's 'bandit' preset, other envs its 'control' preset; "
            "--preset paper gives the paper's settings. "
            "`--algo sac --help` lists SAC's fields."
        ),
    )
    run = parser.add_argument_group("run")
    run.add_argument("--algo", choices=sorted(algos.ALGOS), help="algorithm (default: qsm)")
    run.add_argument("--env", help="env id: dmc/cartpole-swingup, InvertedPendulum-v5, bandit/four-gaussians, ...")
    run.add_argument("--total-steps", type=int, help="env steps (default: 1500 for bandits, 100000 otherwise)")
    run.add_argument("--seed", type=int, help="the run's one seed (default: 0)")
    run.add_argument("--seeds", type=_seed_list, help="several seeds side by side in one process, e.g. 0,1,2,3 "
                     "(QSM's networks are stacked; seed k is written to <run-dir>/seed<k>, bit-for-bit a --seed k run)")
    run.add_argument("--run-dir", help="where the run is written (default: runs/<env>/<algo>/seed<seed>)")
    run.add_argument("--resume", action="store_true", help="continue from the run dir's last checkpoint, with its saved config")
    run.add_argument("--force", action="store_true", help="start over in a run dir that holds a run; with --resume, accept a changed config")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--preset", choices=PRESETS, help="named config: paper (the paper's), bandit or control "
                     "(this package's deviations, documented with each algorithm's PRESETS; default: bandit for bandit/ envs, control otherwise)")
    run.add_argument("--threads", type=count_argument, help="torch CPU threads; 1 is fastest for small networks on a busy machine (default: torch's)")
    add_config_arguments(parser, LoopConfig, "loop")
    add_config_arguments(parser, algos.get(algo)[1], f"{algo} config")
    return parser


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
    # First pass: just what locates the run (its algo decides which config flags exist).
    pre = argparse.ArgumentParser(add_help=False)
    for name in ("--algo", "--env", "--run-dir", "--seed"):
        pre.add_argument(name)
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    saved = None
    if known.resume and (known.run_dir or known.env):
        seed = known.seed if (known.seed or "").isdigit() else "0"
        saved = _saved_config(Path(known.run_dir or default_run_dir(known.env, known.algo or "qsm", int(seed))))
    algo = known.algo or (saved or {}).get("algo", "qsm")
    args = vars(build_parser(algo if algo in algos.ALGOS else "qsm").parse_args(argv))
    args["algo"] = algo
    if saved:
        for arg, key in (("env", "env_id"), ("total_steps", "total_steps"), ("seed", "seed")):
            if args[arg] is None:
                args[arg] = saved[key]
    if args["env"] is None:
        if known.resume and known.run_dir:  # (saved is None: say why, not what to type)
            RunDir(Path(known.run_dir)).saved_config()  # a config.json that is not a run's: its own error
            raise RunDirError(f"nothing to resume in {known.run_dir}: it has no config.json; "
                              "pass --env (and --algo) to start a new run there")  # fmt: skip
        raise RunDirError("--env is required (or --run-dir with --resume)")
    threads = args.pop("threads")
    if threads is not None:
        torch.set_num_threads(threads)
    seeds = args.pop("seeds")
    if seeds is not None:
        if args["resume"] or args["seed"] is not None:
            raise RunDirError("--seeds starts new runs side by side; to continue one of them use "
                              "--run-dir <run-dir>/seed<k> --resume (and --seed for a single run)")
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
    try:
        kwargs = parse_cli(argv)
        if "seeds" in kwargs:
            from .multiseed import train_seeds  # multiseed imports this module

            runs = train_seeds(**kwargs)
        else:
            runs = [train(**kwargs)]
    except KeyboardInterrupt:
        print("interrupted before a checkpoint could be written; --resume continues from the last one", file=sys.stderr)
        return 130
    except (TrainError, envs.UnknownEnvError, ValueError, gym.error.Error) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return _report(runs)


def _report(runs: list[Run]) -> int:
    """The CLI's summary, one line per run, and its exit status: 128 + the signal number when a
    signal stopped the run(s) (after a checkpoint), else 0."""
    for run in runs:
        if run.stop_reason:
            print(f"stopped by {run.stop_reason} at step {run.step}; checkpoint saved in {run.run_dir}; "
                  "continue with --resume", file=sys.stderr)
            return 128 + signal.Signals[run.stop_reason].value
        steps, returns = run.metric("eval_return")
        final = f"eval return {returns[-1]:.1f}" if len(returns) else "no evaluation"
        print(f"{run.agent.algo} on {run.env_id}, seed {run.seed}: {run.step} steps, {final}; run dir {run.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
