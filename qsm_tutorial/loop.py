"""The training loop: act, store, update, evaluate, log, checkpoint.

    run = qsm_tutorial.train("InvertedPendulum-v5", algo="sac", total_steps=30_000, seed=0,
                             run_dir="runs/InvertedPendulum-v5/sac/seed0")
    run.agent.act(obs, deterministic=True)

Protocol (also written into each run's ``config.json``). Env steps 1 … ``warmup_steps`` take
uniform random actions; after that the agent acts with its exploration noise and makes
``updates_per_step`` updates per env step on minibatches drawn uniformly from the replay buffer,
once the buffer holds a batch. A transition's mask is 1 − terminated: time limits bootstrap.
At step 0, every ``eval_every`` steps and at the end, the agent is evaluated over
``eval_episodes`` episodes of a separate env instance with deterministic actions
(``agent.act(obs, deterministic=True)``); episode j of every evaluation starts from
``reset(seed=derived_seed(seed, EVAL_STREAM, j))``, so all evaluations see the same initial
states, and draws its policy noise from generators seeded with
``derived_seed(seed, EVAL_NOISE_STREAM, j)``, so evaluating (and how often) leaves the training
run's random streams untouched. ``eval_return`` is the mean undiscounted return of those episodes.

Runs on disk: see :mod:`qsm_tutorial.storage`. A checkpoint is written every ``checkpoint_every``
steps, at the end, on SIGINT/SIGTERM (the current step finishes first; a second signal stops at
once) and when ``on_step`` returns False. Resuming restores networks, optimisers, replay buffer and
RNG states and the update metrics not yet logged, drops the metric rows logged after the checkpoint,
and continues the training episode the interruption cut: the env is reset as that episode began
(its seed, or the env's random state before its reset, both in the checkpoint) and the episode's
actions, the last ones in the replay buffer, are replayed, each observation checked against the
stored one. A resumed run's ``metrics.csv`` is then byte-identical to the uninterrupted run's (same
machine, same thread count). An env that does not replay exactly (non-deterministic physics, a
buffer shorter than the episode) starts a fresh episode from a reset seeded by the step instead,
with one line saying so: the cut episode stays in the buffer as if a time limit had ended it, and
the run is reproducible but no longer identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import numbers
import os
import platform
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from . import algos, envs
from .algos.common import doc, is_count
from .envs.bandits import Bandit2D
from .replay import ReplayBuffer
from .storage import (
    CHECKPOINT_FORMAT,
    METRIC_COLUMNS,
    TIMING_COLUMNS,
    CheckpointError,
    CsvLog,
    RunDir,
    RunDirError,
    TensorBoardLog,
    TrainError,
    require_tensorboard,
    saved_fields,
)

EVAL_STREAM, RESUME_STREAM, EVAL_NOISE_STREAM = 1, 2, 3  # seed streams of derived_seed


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
    tensorboard: bool = doc(False, "also write metrics.csv's scalars as TensorBoard events to <run-dir>/tensorboard/")

    def __post_init__(self):
        if not 0 <= self.updates_per_step < math.inf:  # (also refuses NaN)
            raise ValueError(f"updates_per_step (--updates-per-step) must be a finite number >= 0, got {self.updates_per_step}")
        for name in ("eval_every", "eval_episodes", "log_every", "checkpoint_every"):
            if not is_count(getattr(self, name)):  # 50.5 would evaluate at odd steps, 1.5 episodes fail later
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be an integer >= 1, got {getattr(self, name)!r}")


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
    stop_reason: str | None = None  # "SIGINT" / "SIGTERM" / "callback" when the run ended early

    def metric(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged metric."""
        rows = [h for h in self.history if key in h]
        return np.array([h["step"] for h in rows]), np.array([h[key] for h in rows])

    def summary(self) -> str:
        """One line: where the run ended, its last evaluation and where it is saved."""
        head = f"{self.agent.algo} on {self.env_id}, seed {self.seed}"
        saved = f"run dir {self.run_dir}" if self.run_dir else "not saved (no run_dir)"
        if self.stop_reason:
            return f"{head}: stopped by {self.stop_reason} at step {self.step}; {saved}"
        returns = self.metric("eval_return")[1]
        final = f"eval return {returns[-1]:.1f}" if len(returns) else "no evaluation"
        return f"{head}: {self.step} steps, {final}; {saved}"


PRESETS = tuple(algos.qsm.PRESETS)  # every algorithm has the same preset names (a test checks it)


def preset_for(env_id: str) -> str:
    """The config preset an env family trains with by default: "bandit" for the 2-D bandits (an
    env object that is a ``Bandit2D`` has an id starting with ``bandit/`` here, see ``_make_envs``),
    "control" for every other env. "paper" (the faithful settings) is always one flag away."""
    return "bandit" if env_id.startswith("bandit/") else "control"


# Env steps when ``total_steps`` is not given: enough for a bandit's modes to show, a control
# task's first progress.
DEFAULT_TOTAL_STEPS = {"bandit": 1_500, "control": 100_000}


def make_config(algo: str, env_id: str, preset: str | None = None, **overrides):
    """``algo``'s config: the named preset (default: the env family's, ``preset_for``), then ``overrides``."""
    _, config_cls = algos.get(algo)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown {algo} config field(s) {unknown}; valid fields: {sorted(names)}")
    return config_cls.preset(preset or preset_for(env_id), **overrides)


def resume_fields(saved: dict | None, algo: str) -> dict[str, Any]:
    """The loop and algorithm fields of a saved ``config.json`` that this package still has, the
    base that a resume's overrides change; empty when ``saved`` is None or another algo's run."""
    if saved is None or saved.get("algo") != algo:
        return {}
    return {**saved_fields(saved["loop"], LoopConfig), **saved_fields(saved["agent"], algos.get(algo)[1])}


# ----------------------------------------------------------------------------------------------
# Randomness: one seed, separate streams
# ----------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(seed: int, stream: int, index: int) -> int:
    """A seed for (run seed, purpose, index), unrelated to the run's other random streams."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Inside the block, Python's, NumPy's and torch's global generators (and ``device``'s, if
    CUDA) start from ``seed``; after it they are as they were, as if the block drew nothing."""
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=cuda):
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # (torch.manual_seed would reseed every GPU too)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


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


def _env_rng(env: gym.Env):
    unwrapped = env.unwrapped
    if type(unwrapped).np_random is not gym.Env.np_random:  # e.g. shimmy's dm_control env: the task's RandomState
        return unwrapped.np_random
    return getattr(unwrapped, "_np_random", None)  # (gymnasium's np_random property would make an unseeded one)


def env_rng_state(env: gym.Env) -> dict:
    """The random state an env's next ``reset()`` draws from: a Gymnasium env's ``np_random``
    (a Generator), or dm_control's task ``RandomState`` (shimmy's ``np_random``); empty if none."""
    try:
        rng = _env_rng(env)
    except Exception:  # a user's env with an np_random of its own kind: resume then starts a fresh episode
        return {}
    if isinstance(rng, np.random.Generator):
        return {"generator": rng.bit_generator.state}
    if isinstance(rng, np.random.RandomState):
        state = rng.get_state(legacy=False)
        state["state"]["key"] = torch.from_numpy(state["state"]["key"].astype(np.int64))
        return {"random_state": state}
    return {}


def set_env_rng_state(env: gym.Env, state: dict) -> None:
    """Put back what :func:`env_rng_state` returned."""
    rng = _env_rng(env)
    if "generator" in state and isinstance(rng, np.random.Generator):
        rng.bit_generator.state = state["generator"]
    elif "random_state" in state and isinstance(rng, np.random.RandomState):
        saved = copy.deepcopy(state["random_state"])
        saved["state"]["key"] = saved["state"]["key"].numpy().astype(np.uint32)
        rng.set_state(saved)
    elif state:
        raise ValueError("the env's random generator is not the one the checkpoint saved")


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


# ----------------------------------------------------------------------------------------------
# Evaluation and stopping
# ----------------------------------------------------------------------------------------------
def evaluate(agent, env: gym.Env, episodes: int, seed: int) -> dict[str, float]:
    """Mean, std, min and max undiscounted return (and mean length) of ``episodes`` episodes with
    deterministic actions; episode j resets with ``derived_seed(seed, EVAL_STREAM, j)`` and draws
    from generators of its own (``isolated_rng``), so the training run's streams do not move."""
    returns, lengths = [], []
    for j in range(episodes):
        with isolated_rng(derived_seed(seed, EVAL_NOISE_STREAM, j), getattr(agent, "device", "cpu")):
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
# The pieces of a run
# ----------------------------------------------------------------------------------------------
def _make_envs(env_or_id: str | gym.Env, seed: int) -> tuple[gym.Env, gym.Env, str, bool]:
    """``(env, eval_env, env_id, made_here)``; a given env object is evaluated on a deep copy. Its
    actions are handled as ``envs.make``'s are: a bounded Box other than [-1, 1] is rescaled to it
    (the policies act in [-1, 1]); a space without finite bounds, or not a Box, is refused."""
    if isinstance(env_or_id, str):
        return envs.make(env_or_id, seed=seed), envs.make(env_or_id), env_or_id, True
    env = env_or_id
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"the algorithms need a continuous (Box) action space, got {space}")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ValueError(f"the algorithms need a bounded action space (finite low and high, rescaled to [-1, 1]), got {space}")
    obs_space = env.observation_space
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1):
        raise ValueError(f"the algorithms need observations in a 1-D Box (a vector), got {obs_space}; "
                         "wrap the env in gymnasium.wrappers.FlattenObservation")  # fmt: skip
    if np.any(space.low != -1) or np.any(space.high != 1):
        one = space.dtype.type(1.0)
        env = gym.wrappers.RescaleAction(env, min_action=-one, max_action=one)  # the agent acts in [-1, 1]
    env.reset(seed=seed)
    env.action_space.seed(seed)
    env_id = getattr(env.spec, "id", None) or type(env.unwrapped).__name__
    if isinstance(env.unwrapped, Bandit2D) and not env_id.startswith("bandit/"):
        env_id = f"bandit/{env_id}"  # so that it trains with the bandit preset, as envs.make's bandits do
    return env, copy.deepcopy(env), env_id, False


@contextlib.contextmanager
def _blaming_saved_config(saved: dict | None, asked: frozenset, store: RunDir | None) -> Iterator[None]:
    """A bad value that a resume read from ``config.json`` (not one the caller set) is that file's
    fault: the error says so, and what to do."""
    try:
        yield
    except (ValueError, TypeError) as e:
        field_name = str(e).split(" ", 1)[0]
        from_file = saved is not None and field_name not in asked and (
            field_name in saved.get("loop", {}) or field_name in saved.get("agent", {}))
        if not from_file:
            raise
        raise RunDirError(f"{store.config} holds a bad value: {e}; fix it there, or start over with --force") from None


def _replay_buffer(obs_dim: int, act_dim: int, capacity: int) -> ReplayBuffer:
    """The replay buffer, refused in one line when its arrays could never fit in this machine's memory."""
    need = (2 * obs_dim + act_dim + 2) * 4 * capacity  # the float32 arrays of replay.ReplayBuffer
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        have = None
    too_big = f"buffer_size (--buffer-size) {capacity:,} needs {need / 2**30:,.1f} GiB of memory"
    if have and need > have:
        raise TrainError(f"{too_big}, more than this machine's {have / 2**30:,.1f} GiB; lower --buffer-size")
    try:
        return ReplayBuffer(obs_dim, act_dim, capacity)
    except MemoryError:
        raise TrainError(f"{too_big}, more than can be allocated here; lower --buffer-size") from None


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
        "threads": torch.get_num_threads(),  # results depend on it (summation order); --resume restores it
        "loop": dataclasses.asdict(loop),
        "agent": dataclasses.asdict(config),
        "protocol": {
            "warmup": f"env steps 1..{config.warmup_steps} take uniform random actions",
            "updates": f"{loop.updates_per_step} updates per env step once the warm-up is over and a batch is stored",
            "bootstrap": "mask = 1 - terminated: time limits bootstrap",
            "evaluation": (
                f"at step 0, every {loop.eval_every} steps and at the end: {loop.eval_episodes} episodes on a "
                "separate env instance, deterministic actions agent.act(obs, deterministic=True), episode j reset "
                f"with seed derived_seed(seed, {EVAL_STREAM}, j) at every evaluation, its policy noise from generators "
                f"seeded with derived_seed(seed, {EVAL_NOISE_STREAM}, j), apart from training's"
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


class MetricsLog:
    """metrics.csv (and, with ``tensorboard``, the same scalars as TensorBoard events)."""

    def __init__(self, store: RunDir | None, tensorboard: bool):
        self.csv = CsvLog(store.metrics if store else None, METRIC_COLUMNS)
        self.rows = self.csv.rows
        self._store, self._tensorboard, self.board = store, tensorboard, None

    def start(self, resume_step: int | None) -> None:
        self.csv.start(resume_step)
        self.rows = self.csv.rows
        if self._tensorboard and self._store:
            self.board = TensorBoardLog(self._store.tensorboard, resume_step)

    def append(self, row: dict[str, Any]) -> None:
        self.csv.append(row)
        if self.board:
            self.board.append(row)

    def last(self, key: str) -> float | None:
        """The latest value of ``key`` (rounded for the progress bar), or None."""
        for row in reversed(self.rows):
            if key in row:
                return round(row[key], 1)
        return None

    def close(self) -> None:
        if self.board:
            self.board.close()


# ----------------------------------------------------------------------------------------------
# The loop: one "lane" per seed; one seed is one lane
# ----------------------------------------------------------------------------------------------
class SeedRandomState:
    """One seed's Python, NumPy and torch (CPU and CUDA) random state; ``with state:`` makes it the
    global state for the block and keeps what the block left (lanes of several seeds take turns)."""

    def __init__(self):
        self.state = self._capture()

    @staticmethod
    def _capture():
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()

    @staticmethod
    def _restore(state) -> None:
        cpu, cuda, np_state, py_state = state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)

    def __enter__(self) -> "SeedRandomState":
        self._outer = self._capture()
        self._restore(self.state)
        return self

    def __exit__(self, *exc) -> None:
        self.state = self._capture()
        self._restore(self._outer)


@dataclass
class Lane:
    """One seed's run inside the loop: its envs, agent, buffer, files, counters and random state."""

    run: Run
    env: gym.Env
    eval_env: gym.Env
    made_here: bool
    buffer: ReplayBuffer
    store: RunDir | None
    metrics: MetricsLog
    timing: CsvLog
    rng: Any  # SeedRandomState where lanes take turns, else a no-op context
    episodes: int = 0
    updates: int = 0
    saved_step: int = 0
    obs: Any = None
    episode_return: float = 0.0
    episode_length: int = 0
    window: dict = field(default_factory=dict)
    state_dict: Callable[[], dict] | None = None  # the agent's state (a stacked model's slice for several seeds)
    lock: Any = None  # the run dir's lock (storage.RunDirLock), released by close()
    episode_start: dict | None = None  # how the current training episode began: {"seed": s} or {"rng": env's state}

    @property
    def agent(self):
        return self.run.agent

    def act_and_store(self, step: int) -> None:
        config = self.run.config
        action = self.env.action_space.sample() if step <= config.warmup_steps else self.agent.act(self.obs)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.buffer.add(self.obs, action, reward, next_obs, terminated)
        self.obs, self.episode_return, self.episode_length = next_obs, self.episode_return + float(reward), self.episode_length + 1
        if terminated or truncated:
            self.episodes += 1
            self.metrics.append({"step": step, "event": "episode", "episode": self.episodes,
                                 "episode_return": self.episode_return, "episode_length": self.episode_length})  # fmt: skip
            self.episode_start = {"rng": env_rng_state(self.env)}  # (before the reset draws from it)
            self.obs, _ = self.env.reset()
            self.episode_return, self.episode_length = 0.0, 0

    def record_update(self, info: dict[str, float], step: int) -> None:
        self.updates += 1
        for key, value in info.items():
            if not math.isfinite(value):
                raise self.nonfinite(f"{key} ({value})", step)
            self.window.setdefault(key, []).append(value)

    def nonfinite(self, what: str, step: int) -> NonFiniteError:
        if self.store is None:
            kept = "nothing was saved"
        elif self.store.checkpoint.exists():
            kept = f"the last good checkpoint (step {self.saved_step}) is in {self.store.path}"
        else:
            kept = f"no checkpoint had been written yet (every {self.run.loop.checkpoint_every:,} steps)"
        return NonFiniteError(f"non-finite {what} at step {step} (seed {self.run.seed}): the run stopped; {kept}")

    def log_window(self, step: int, steps: int, seconds: float, elapsed: float) -> None:
        means = {k: float(np.mean(v)) for k, v in self.window.items()}
        self.metrics.append({"step": step, "event": "train", "updates": self.updates, **means})
        self.timing.append({"step": step, "elapsed_s": elapsed, "steps_per_s": steps / seconds})
        self.window = {}

    def evaluate(self, step: int) -> None:
        result = evaluate(self.agent, self.eval_env, self.run.loop.eval_episodes, self.run.seed)
        self.metrics.append({"step": step, "event": "eval", **result})

    def checkpoint(self, step: int) -> None:
        agent_state = self.state_dict() if self.state_dict else self.agent.state_dict()
        bad = first_nonfinite(agent_state)
        if bad:
            raise self.nonfinite(f"weights ({bad})", step)
        run = self.run
        self.store.save_checkpoint({
            "format": CHECKPOINT_FORMAT, "algo": self.agent.algo, "env_id": run.env_id, "seed": run.seed, "step": step,
            "total_steps": run.total_steps, "episodes": self.episodes, "updates": self.updates, "agent": agent_state,
            "replay": self.buffer.state_dict(), "rng": rng_state(self.env.action_space),
            "episode": {"length": self.episode_length, **(self.episode_start or {})}, "window": self.window,
        })  # fmt: skip
        self.saved_step = step

    def resume_episode(self, saved: dict | None, step: int) -> None:
        """Continue the training episode that the checkpoint at ``step`` cut: reset the env as that
        episode began (its seed, or the env's random state before its reset) and replay its actions,
        the last ones of the replay buffer, checking each observation against the stored one. An env
        that does not replay exactly (or a checkpoint without the record) starts a fresh episode from
        a reset seeded by the step, with one line saying so."""
        seed = self.run.seed
        if saved and "length" in saved and saved["length"] <= len(self.buffer) and ("seed" in saved or "rng" in saved):
            try:
                if "seed" in saved:
                    obs, _ = self.env.reset(seed=saved["seed"])
                else:
                    set_env_rng_state(self.env, saved["rng"])
                    obs, _ = self.env.reset()
                episode_return, exact = 0.0, True
                for i in range(saved["length"]):
                    j = (self.buffer.pos - saved["length"] + i) % self.buffer.capacity
                    obs, reward, terminated, truncated, _ = self.env.step(self.buffer.action[j].copy())
                    episode_return += float(reward)
                    if terminated or truncated or not np.array_equal(np.asarray(obs, np.float32), self.buffer.next_obs[j]):
                        exact = False
                        break
            except (TypeError, ValueError, KeyError, AttributeError):
                exact = False
            if exact:
                self.obs, self.episode_return, self.episode_length = obs, episode_return, saved["length"]
                self.episode_start = {k: v for k, v in saved.items() if k != "length"}
                return
            tqdm.write(f"note: the env did not replay the episode the checkpoint cut ({saved['length']} steps in); "
                       f"a fresh training episode starts at step {step:,}", file=sys.stderr)  # fmt: skip
        fresh = derived_seed(seed, RESUME_STREAM, step)
        self.obs, _ = self.env.reset(seed=fresh)
        self.episode_start, self.episode_return, self.episode_length = {"seed": fresh}, 0.0, 0

    def close(self) -> None:
        self.metrics.close()
        if self.lock:
            self.lock.release()
        if self.made_here:
            self.env.close()
            self.eval_env.close()


def open_lane(env_or_id, algo, total_steps, seed, run_dir, resume, force, preset, overrides, rng) -> Lane:
    """Set up one seed's run as ``train`` documents it (config, envs, agent, buffer, run dir,
    resume), evaluate it at step 0 if new, and reset its env. ``rng`` is the lane's random state."""
    if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and 0 <= seed < 2**32):
        raise ValueError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
    store = RunDir(run_dir) if run_dir is not None else None
    if resume == "auto":  # continue a checkpointed run, start one that has none
        resume = store is not None and store.checkpoint.exists()
    asked = frozenset(overrides)  # the fields the caller set: on resume, the only ones that can change
    saved = None
    if resume and store:
        try:
            saved = store.saved_config()
        except RunDirError:
            saved = None  # prepare() says what is wrong
        overrides = {**resume_fields(saved, algo), **overrides}
        if total_steps is None and saved is not None and saved.get("algo") == algo:
            total_steps = saved.get("total_steps")  # the run's own budget, not the env family's default
    overrides = dict(overrides)
    with _blaming_saved_config(saved, asked, store):
        loop = LoopConfig(**{k: overrides.pop(k) for k in LOOP_FIELDS & overrides.keys()})
    if loop.tensorboard:
        if store is None:
            raise TrainError("tensorboard=True writes event files into the run directory: pass a run_dir")
        require_tensorboard()
    with rng:
        seed_everything(seed)
        env, eval_env, env_id, made_here = _make_envs(env_or_id, seed)
        lock = None
        try:
            with _blaming_saved_config(saved, asked, store):
                config = make_config(algo, env_id, preset, **overrides)
            total_steps = step_budget(total_steps, env_id)
            config = algos.for_run(config, updates_due(total_steps, config, loop.updates_per_step))
            agent_cls, _ = algos.get(algo)
            obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
            agent = agent_cls(obs_dim, act_dim, config)
            buffer = _replay_buffer(obs_dim, act_dim, config.buffer_size)
            record = _run_record(algo, env_id, seed, total_steps, loop, config, obs_dim, act_dim, agent.device)
            lock = store.lock() if store else None  # held until the lane closes: one writer per run dir
            checkpoint = store.prepare(record, resume, force, asked) if store else None
            start, episodes, updates = 0, 0, 0
            if checkpoint is not None:
                start, episodes, updates = _restore(checkpoint, agent, buffer, env.action_space, store.checkpoint)
            metrics = MetricsLog(store, loop.tensorboard)
            timing = CsvLog(store.timing if store else None, TIMING_COLUMNS)
            if store and checkpoint is not None:  # read (and check) the rows kept before any file is written
                metrics.csv.read_back(start)
                timing.read_back(start)
            if store:
                store.begin(record, resumed=checkpoint is not None)
                metrics.start(start if checkpoint is not None else None)
                timing.start(start if checkpoint is not None else None)
        except BaseException:
            if lock:
                lock.release()
            if made_here:
                env.close()
                eval_env.close()
            raise
        run = Run(agent, config, env_id, seed, history=metrics.rows, run_dir=str(store.path) if store else None,
                  loop=loop, total_steps=total_steps, step=start, timing=timing.rows)  # fmt: skip
        lane = Lane(run, env, eval_env, made_here, buffer, store, metrics, timing, rng, episodes, updates, saved_step=start, lock=lock)
        announce(run, config, loop, resumed=checkpoint is not None, budget_was=(saved or {}).get("total_steps"))
        try:
            if start == 0:  # (its step-0 evaluation runs in run_lanes, with the progress bar on screen)
                lane.obs, _ = env.reset(seed=seed)
                lane.episode_start = {"seed": seed}
            else:
                lane.window = {k: list(v) for k, v in checkpoint.get("window", {}).items()}
                lane.resume_episode(checkpoint.get("episode"), start)
        except BaseException:
            lane.close()
            raise
    return lane


QUIET_BELOW_STEPS = 2_000  # runs this short take seconds to redo: no note that a crash would lose them


def announce(run: Run, config, loop: LoopConfig, resumed: bool, budget_was: int | None = None) -> None:
    """One line on stderr for what a user would otherwise miss: that a run resumed, and from which
    step (and that its budget changed from ``budget_was``, the saved one); that its budget never
    passes the warm-up, so no update would run; that a new run on disk, longer than
    ``QUIET_BELOW_STEPS``, is shorter than the checkpoint interval, so a crash before its end leaves
    nothing to resume."""
    where = f" in {run.run_dir}" if run.run_dir else ""
    if resumed:
        changed = f" (budget changed from {budget_was:,} steps)" if budget_was not in (None, run.total_steps) else ""
        tqdm.write(f"resuming {run.agent.algo} on {run.env_id}, seed {run.seed}{where} from step {run.step:,} of {run.total_steps:,}"
                   f"{changed}", file=sys.stderr)  # fmt: skip
    if updates_due(run.total_steps, config, loop.updates_per_step) == 0:
        tqdm.write(f"note: {run.total_steps:,} steps do not pass the warm-up ({config.warmup_steps:,} random steps, batch "
                   f"{config.batch_size}): this run makes no update; raise --total-steps or lower --warmup-steps", file=sys.stderr)  # fmt: skip
    if run.run_dir and not resumed and run.total_steps > QUIET_BELOW_STEPS and loop.checkpoint_every >= run.total_steps:
        tqdm.write(f"note: a checkpoint comes every {loop.checkpoint_every:,} steps, so this {run.total_steps:,}-step run writes one "
                   "only at its end or on Ctrl-C (a kill -9 before then leaves nothing to resume); lower --checkpoint-every "
                   "to resume it after a crash", file=sys.stderr)  # fmt: skip


def learn(lanes: list[Lane], stack, step: int) -> None:
    """The updates owed after env step ``step``: each lane's agent alone, or every lane at once
    through ``stack`` (a model of several seeds, ``algos.seeds``), each drawing from its own state."""
    lane0 = lanes[0]
    config, ratio = lane0.run.config, lane0.run.loop.updates_per_step
    for _ in range(updates_due(step, config, ratio) - lane0.updates):
        if stack is None:
            for lane in lanes:
                with lane.rng:
                    info = lane.agent.update(lane.buffer.sample(config.batch_size, device=lane.agent.device))
                lane.record_update(info, step)
            continue
        batches, noises = [], []
        for lane in lanes:
            with lane.rng:
                batches.append(lane.buffer.sample(config.batch_size, device=lane.agent.device))
                noises.append(stack.draw_noise(batches[-1]))
        for lane, info in zip(lanes, stack.update(batches, noises)):
            lane.record_update(info, step)


def evaluate_lanes(lanes: list[Lane], step: int, bar: tqdm) -> float:
    """Evaluate every lane at ``step``, saying so on the progress bar while it runs and showing the
    first lane's result after; returns the seconds it took (left out of the steps/s figures)."""
    t0 = time.perf_counter()
    bar.set_postfix_str(f"evaluating at step {step:,} ({lanes[0].run.loop.eval_episodes} episodes)", refresh=True)
    for lane in lanes:
        with lane.rng:
            lane.evaluate(step)
    bar.set_postfix({"eval": round(lanes[0].metrics.last("eval_return"), 1)}, refresh=True)
    return time.perf_counter() - t0


def run_lanes(lanes: list[Lane], stack=None, progress: bool = True, on_step=None) -> None:
    """Step every lane in lockstep to the budget: act and store, learn, log, evaluate, checkpoint."""
    lane0 = lanes[0]
    run0, loop = lane0.run, lane0.run.loop
    start, total_steps = run0.step, run0.total_steps
    session_start = window_start = time.perf_counter()
    window_steps, eval_seconds = 0, 0.0
    desc = f"{lane0.agent.algo} {run0.env_id}" + (f" ×{len(lanes)} seeds" if len(lanes) > 1 else "")
    bar = tqdm(total=total_steps, initial=start, disable=not progress, desc=desc, unit="step", mininterval=0.5)
    with GracefulStop() as stop, bar:
        if start == 0:  # the untrained policy, so that every curve starts at step 0
            eval_seconds += evaluate_lanes(lanes, 0, bar)
        for step in range(start + 1, total_steps + 1):
            for lane in lanes:
                with lane.rng:
                    lane.act_and_store(step)
            learn(lanes, stack, step)
            window_steps += 1
            bar.update(1)
            if step % loop.log_every == 0 and lane0.window:
                seconds = time.perf_counter() - window_start - eval_seconds
                for lane in lanes:
                    lane.log_window(step, window_steps, seconds, time.perf_counter() - session_start)
                postfix = {"return": lane0.metrics.last("episode_return"), "eval": lane0.metrics.last("eval_return"),
                           "steps/s": round(window_steps / seconds)}  # fmt: skip
                bar.set_postfix({k: v for k, v in postfix.items() if v is not None}, refresh=False)
                window_start, window_steps, eval_seconds = time.perf_counter(), 0, 0.0
            if step % loop.eval_every == 0 or step == total_steps:
                eval_seconds += evaluate_lanes(lanes, step, bar)
            for lane in lanes:
                lane.run.step = step
                if on_step is not None and on_step(lane.run) is False and not stop.requested:
                    stop.requested = "callback"
            for lane in lanes:
                if lane.store and (step % loop.checkpoint_every == 0 or step == total_steps or stop.requested):
                    with lane.rng:
                        lane.checkpoint(step)
            if stop.requested:
                for lane in lanes:
                    lane.run.stop_reason = stop.requested
                break


DEFAULT_THREADS = 1  # torch CPU threads of a run unless asked: the package's networks are small, and a
# second thread fights any other work on a shared machine (docs/performance.md, "Threads")


@contextlib.contextmanager
def torch_threads(threads: int | None, store_path: str | os.PathLike | None = None, resume: bool | str = False) -> Iterator[int]:
    """Run the block with ``threads`` torch CPU threads: as asked, else (resuming) the run's saved
    count, else ``DEFAULT_THREADS``; the caller's setting comes back afterwards. A result depends on
    the count (summation order), which ``config.json`` records."""
    if threads is None and resume and store_path is not None:
        try:
            threads = (RunDir(store_path).saved_config() or {}).get("threads")
        except RunDirError:
            threads = None  # (prepare() says what is wrong with the folder)
    threads = DEFAULT_THREADS if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def train(
    env_or_id: str | gym.Env,
    algo: str = "qsm",
    total_steps: int | None = None,
    seed: int = 0,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool | str = False,
    force: bool = False,
    progress: bool = True,
    preset: str | None = None,
    on_step: Callable[[Run], bool | None] | None = None,
    threads: int | None = None,
    **overrides,
) -> Run:
    """Train ``algo`` on an env for ``total_steps`` environment steps and return a :class:`Run`.

    ``overrides`` set fields of :class:`LoopConfig` (``eval_every``, ``updates_per_step``, ...) and
    of the algorithm's config dataclass (for QSM, :class:`~qsm_tutorial.algos.qsm.QSMConfig`), on
    top of the ``preset``: by default the env family's (``"bandit"`` for bandits, ``"control"``
    otherwise, see ``preset_for``); ``preset="paper"`` is the paper's configuration. Without
    ``total_steps`` the budget is the env family's ``DEFAULT_TOTAL_STEPS``.

    With ``run_dir`` the run is written there (see :mod:`qsm_tutorial.storage`). A folder that
    already holds a run is refused unless ``resume`` (continue from its checkpoint; the saved config
    fields are the base, and ``overrides`` that change one are refused) or ``force`` (start over;
    with ``resume``: accept a changed config); ``resume="auto"`` resumes when the folder holds a
    checkpoint and starts the run otherwise (a sweep's trials). Without ``run_dir`` nothing is written.
    SIGINT/SIGTERM end the run after the current step (checkpointed) and ``Run.stop_reason`` names
    the signal. ``on_step(run)``, if given, is called after every env step and its updates
    (``run.step``, ``run.agent.n_updates`` tell where the run is); returning ``False`` stops the run
    there, checkpointed, with ``stop_reason = "callback"`` (as Stable-Baselines3 callbacks do).
    ``threads``: torch CPU threads for the run (default: a resumed run's own, else ``DEFAULT_THREADS``).
    With ``progress``, a bar while it runs and ``Run.summary()``'s line at the end.
    """
    with torch_threads(threads, run_dir, resume):
        lane = open_lane(env_or_id, algo, total_steps, seed, run_dir, resume, force, preset, overrides, contextlib.nullcontext())
        try:
            run_lanes([lane], progress=progress, on_step=on_step)
            if progress:
                print(lane.run.summary())
            return lane.run
        finally:
            lane.close()


def train_seeds(
    env_id: str,
    algo: str = "qsm",
    seeds: tuple[int, ...] = (0, 1, 2, 3),
    total_steps: int | None = None,
    *,
    run_root: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    preset: str | None = None,
    threads: int | None = None,
    **overrides,
) -> list[Run]:
    """Train one agent per seed on ``env_id`` side by side in this process, in lockstep; a list of
    :class:`Run` in the order of ``seeds``. QSM's seeds update as one batched model
    (:class:`~qsm_tutorial.algos.seeds.QSMSeeds`); other algorithms update seed after seed.
    ``overrides`` are :func:`train`'s. With ``run_root``, seed k is written to ``<run_root>/seed<k>``
    as ``train`` writes a run (continue one alone with ``train(..., run_dir=..., resume=True)``).
    Seed k's run equals ``train(env_id, algo, total_steps, seed=k, ...)`` to float32 rounding."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    if not isinstance(env_id, str):
        raise TypeError(f"train_seeds takes an env id (a string), got {type(env_id).__name__}")
    with torch_threads(threads):
        lanes: list[Lane] = []
        stack = None
        try:
            for seed in seeds:
                run_dir = Path(run_root) / f"seed{seed}" if run_root is not None else None
                lanes.append(open_lane(env_id, algo, total_steps, seed, run_dir, False, force, preset, overrides, SeedRandomState()))
            if algo == "qsm" and len(lanes) > 1:
                from .algos.seeds import QSMSeeds

                stack = QSMSeeds([lane.agent for lane in lanes])
                for k, lane in enumerate(lanes):
                    lane.state_dict = lambda k=k: stack.state_dict(k)
            run_lanes(lanes, stack, progress)
            if progress:
                print("\n".join(lane.run.summary() for lane in lanes))
            return [lane.run for lane in lanes]
        finally:
            if stack is not None:
                stack.release()
            for lane in lanes:
                lane.close()
