"""Continuous-control tasks: DeepMind Control (``dmc/<domain>-<task>``) and Gymnasium MuJoCo.

Both families go through the same wrapper stack, :func:`wrap`, so an agent sees one interface:

- observations: a float32 1-D vector (dm_control's dict observations are flattened in the
  sorted-key order of their Gymnasium ``Dict`` space, so the layout is fixed);
- actions: a ``Box(-1, 1)``, rescaled to the task's real bounds (the policy's ``tanh`` range);
- ``terminated`` (the task ended, do not bootstrap) kept apart from ``truncated`` (time limit);
- ``info["episode"]`` with the return and length when an episode ends.

DMC tasks are built through Farama's shimmy (``gymnasium.make("dm_control/<d>-<t>-v0")``).
Seeding: ``env.reset(seed=s)`` replaces the dm_control task's ``RandomState`` by
``RandomState(s)`` (shimmy's ``DmControlCompatibilityV0.reset``), and every random initial
state of a suite task is drawn from it, so the physics follows the run seed; the tests check it.

:func:`resolve` gives :func:`qsm_tutorial.envs.make` a factory for any dm_control suite task
(the course's named ones are :data:`DMC_TASKS`) and any Gymnasium id with a bounded Box action
space (:data:`GYM_TASKS` are the ones the course uses).
"""

from __future__ import annotations

import logging
import os
import warnings

# Offscreen rendering on a headless machine; must be set before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from functools import partial  # noqa: E402
from typing import Any, Callable  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.wrappers import (  # noqa: E402
    DtypeObservation,
    FlattenObservation,
    RecordEpisodeStatistics,
    RescaleAction,
    TimeLimit,
    TransformAction,
)

import shimmy  # noqa: E402,F401  (importing shimmy registers the dm_control/* Gymnasium ids)
from dm_control import suite  # noqa: E402

from .ids import DMC_TASKS, GYM_TASKS, UnknownEnvError  # noqa: E402


def _not_settotalmass_deprecation(record: logging.LogRecord) -> bool:
    # MuJoCo 3 deprecates an attribute that dm_control's own cheetah.xml uses and says so, through
    # absl's logger, at every load of the model: dozens of lines per run that no user can act on.
    return "'settotalmass' is deprecated" not in record.getMessage()


logging.getLogger("absl").addFilter(_not_settotalmass_deprecation)

# Small frames keep notebooks and videos light (dm_control's own default size).
RENDER_HEIGHT, RENDER_WIDTH = 240, 320
# dm_control camera that tracks the body; camera 0 does it for every other named domain.
_DMC_CAMERA: dict[str, int] = {"quadruped": 2}


class UnsupportedEnvError(ValueError):
    """An env that exists but that QSM cannot drive (discrete or unbounded actions)."""


class UnknownControlTaskError(UnknownEnvError, ValueError):
    """A ``dmc/<domain>-<task>`` id that dm_control's suite does not have."""


# ----------------------------------------------------------------------------- wrapper stack


def check_action_space(env: gym.Env, name: str = "") -> None:
    """Raise :class:`UnsupportedEnvError` unless ``env`` has a bounded, finite Box action space."""
    space = env.action_space
    name = name or _env_name(env)
    if not isinstance(space, gym.spaces.Box):
        raise UnsupportedEnvError(
            f"{name}: QSM needs continuous actions (a bounded Box action space), got {space}"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise UnsupportedEnvError(
            f"{name}: QSM needs a bounded action Box to rescale to [-1, 1], got {space}"
        )


def wrap(env: gym.Env, max_episode_steps: int | None = None) -> gym.Env:
    """The one wrapper stack of the course: flat float32 obs, actions in [-1, 1], episode stats.

    ``env`` should already carry its ``TimeLimit`` (``gymnasium.make`` adds it); pass
    ``max_episode_steps`` to add one to a bare env. ``terminated`` and ``truncated`` pass
    through untouched, which is what a TD target needs.
    """
    try:
        check_action_space(env)
    except UnsupportedEnvError:
        env.close()  # free the simulator before reporting
        raise
    if max_episode_steps is not None:
        env = TimeLimit(env, max_episode_steps)
    if not (isinstance(env.observation_space, gym.spaces.Box) and len(env.observation_space.shape) == 1):
        env = FlattenObservation(env)  # dm_control dicts (sorted keys) and image-like boxes
    if env.observation_space.dtype != np.float32:
        # torch works in float32. Casting the float64 bounds (mostly +-inf) warns for nothing.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*precision lowered by casting")
            env = DtypeObservation(env, np.float32)
    # Bounds in the space's own dtype: python floats become float64 and warn in a float32 Box.
    one = env.action_space.dtype.type(1.0)
    env = RescaleAction(env, min_action=-one, max_action=one)
    if env.action_space.dtype != np.float32:  # dm_control says float64; one dtype for both families
        env = _float32_actions(env)
    return RecordEpisodeStatistics(env)


def _float32_actions(env: gym.Env) -> gym.Env:
    """Advertise a float32 ``Box(-1, 1)`` and hand the inner env its own dtype."""
    inner = env.action_space
    space = gym.spaces.Box(-1.0, 1.0, shape=inner.shape, dtype=np.float32)
    return TransformAction(env, lambda action: np.asarray(action, dtype=inner.dtype), space)


def _env_name(env: gym.Env) -> str:
    return env.spec.id if env.spec is not None else type(env.unwrapped).__name__


# ----------------------------------------------------------------------------- DeepMind Control


def parse_dmc_id(env_id: str) -> tuple[str, str]:
    """``"dmc/walker-run"`` -> ``("walker", "run")``; a clear error for an unknown task."""
    name = env_id.removeprefix("dmc/")
    domain, _, task = name.partition("-")  # domains never contain '-'; tasks may contain '_'
    tasks_of = {d: sorted(t for dd, t in suite.ALL_TASKS if dd == d) for d, _ in suite.ALL_TASKS}
    if domain not in tasks_of:
        raise UnknownControlTaskError(
            f"unknown dm_control domain {domain!r} in {env_id!r}; "
            f"known domains: {', '.join(sorted(tasks_of))}"
        )
    if task not in tasks_of[domain]:
        raise UnknownControlTaskError(
            f"unknown dm_control task {task!r} for domain {domain!r} in {env_id!r}; "
            f"known tasks: {', '.join(f'dmc/{domain}-{t}' for t in tasks_of[domain])}"
        )
    return domain, task


def make_dmc(
    domain: str,
    task: str,
    *,
    render_mode: str | None = None,
    width: int = RENDER_WIDTH,
    height: int = RENDER_HEIGHT,
    camera_id: int | None = None,
    max_episode_steps: int | None = None,
    task_kwargs: dict[str, Any] | None = None,
    environment_kwargs: dict[str, Any] | None = None,
) -> gym.Env:
    """A wrapped dm_control suite task; episodes end by time limit only (1000 steps by default).

    ``max_episode_steps`` may shorten the episode (a Gymnasium ``TimeLimit`` then truncates
    first); a longer one needs ``environment_kwargs={"time_limit": seconds}``.
    """
    parse_dmc_id(f"dmc/{domain}-{task}")  # clear error before shimmy's generic one
    render_kwargs = {
        "width": width,
        "height": height,
        "camera_id": _DMC_CAMERA.get(domain, 0) if camera_id is None else camera_id,
    }
    env = gym.make(
        f"dm_control/{domain}-{task}-v0",
        render_mode=render_mode,
        render_kwargs=render_kwargs,
        task_kwargs=task_kwargs,
        environment_kwargs=environment_kwargs,
    )
    # dm_control ends the episode itself (discount 1 -> shimmy reports truncated=True); the
    # TimeLimit at the same step count gives the env a spec.max_episode_steps and, when shorter,
    # stops before dm_control would silently auto-reset on the next step.
    native = _dmc_step_limit(env)
    if max_episode_steps is None:
        max_episode_steps = native
    elif max_episode_steps > native:
        env.close()
        raise ValueError(
            f"dmc/{domain}-{task} ends after {native} steps; for longer episodes pass "
            "environment_kwargs={'time_limit': seconds}"
        )
    return wrap(env, max_episode_steps=max_episode_steps)


def _dmc_step_limit(env: gym.Env) -> int:
    limit = env.unwrapped._env._step_limit  # dm_control's time_limit / control timestep
    if not np.isfinite(limit):
        raise ValueError("this dm_control task has no time limit; pass max_episode_steps")
    return int(round(limit))


# ----------------------------------------------------------------------------- Gymnasium


def make_gym(
    env_id: str,
    *,
    render_mode: str | None = None,
    max_episode_steps: int | None = None,
    **kwargs: Any,
) -> gym.Env:
    """A wrapped Gymnasium env (``HalfCheetah-v5``, ``Pendulum-v1``, ...).

    MuJoCo envs render at 320x240 unless ``width``/``height`` are given; other ``kwargs`` go
    to the env's constructor (for example ``ctrl_cost_weight``).
    """
    if render_mode is not None and _is_gym_mujoco(env_id):
        kwargs.setdefault("width", RENDER_WIDTH)
        kwargs.setdefault("height", RENDER_HEIGHT)
    env = gym.make(env_id, render_mode=render_mode, max_episode_steps=max_episode_steps, **kwargs)
    return wrap(env)


def _is_gym_mujoco(env_id: str) -> bool:
    return "gymnasium.envs.mujoco" in str(gym.spec(env_id).entry_point)


# ----------------------------------------------------------------------------- ids


def resolve(env_id: str) -> Callable[..., gym.Env] | None:
    """Factory for any ``dmc/<domain>-<task>``, ``dm_control/<d>-<t>-v0`` or Gymnasium id.

    An unknown dmc task raises here (listing the known ones); a Gymnasium id with discrete or
    unbounded actions gets a factory whose build raises :class:`UnsupportedEnvError`, so the
    user reads why instead of "unknown id".
    """
    if env_id.startswith("dmc/"):
        return partial(make_dmc, *parse_dmc_id(env_id))
    if env_id.startswith("dm_control/") and env_id.endswith("-v0"):  # shimmy's spelling
        name = env_id.removeprefix("dm_control/").removesuffix("-v0")
        if name.partition("-")[0] in {domain for domain, _ in suite.ALL_TASKS}:
            return partial(make_dmc, *parse_dmc_id(f"dmc/{name}"))
    if env_id in gym.registry:
        return partial(make_gym, env_id)
    return None


__all__ = [
    "DMC_TASKS",
    "GYM_TASKS",
    "UnsupportedEnvError",
    "UnknownControlTaskError",
    "check_action_space",
    "wrap",
    "parse_dmc_id",
    "make_dmc",
    "make_gym",
    "resolve",
]
