"""Every environment the course uses, behind one function: :func:`make`.

The ids the package defines (:func:`available`):

- ``bandit/<name>``: one-step 2-D toy bandits (:mod:`qsm_tutorial.envs.bandits`);
- ``gridworld/<name>``: small worlds with exact Q (:mod:`qsm_tutorial.envs.gridworld`);
- ``dmc/<domain>-<task>``: DeepMind Control tasks (:mod:`qsm_tutorial.envs.control`), the named
  ones in :data:`DMC_TASKS` and any other task of dm_control's suite;
- Gymnasium MuJoCo ids such as ``HalfCheetah-v5`` (:data:`GYM_TASKS`, or any Gymnasium id with a
  bounded Box action space), behind the same wrapper stack.

Every env has actions in [-1, 1]^d.

Gymnasium: importing this module registers every ``bandit/``, ``gridworld/`` and ``dmc/`` id of
:func:`available` with Gymnasium's registry under the same spelling (Gymnasium reads
``bandit/four-gaussians`` as namespace ``bandit``, name ``four-gaussians``, no version), so
``gymnasium.make("bandit/four-gaussians")`` builds the env that ``make("bandit/four-gaussians")``
builds, inside Gymnasium's usual checker and order wrappers; keyword arguments pass through
(``gymnasium.make("gridworld/two-routes", slip=0.2)``). Gymnasium's own ids (``HalfCheetah-v5``)
keep Gymnasium's meaning there: the raw env, without this package's wrapper stack. The entry point
is :func:`make` itself, so nothing heavy (dm_control) is imported until a control env is built.
``import qsm_tutorial`` alone does not import this module (the command line starts before torch);
Gymnasium's module-qualified spelling, ``gymnasium.make("qsm_tutorial.envs:bandit/four-gaussians")``,
imports it first.
"""

from __future__ import annotations

import difflib
from typing import Callable

import gymnasium as gym

from . import bandits, gridworld
from .bandits import Bandit2D
from .ids import DMC_TASKS, GYM_TASKS, UnknownEnvError

# {id: factory(**kwargs)} of the envs that need no simulator.
_TOY_ENVS: dict[str, Callable[..., gym.Env]] = {**bandits.ENVS, **gridworld.ENVS}


def available() -> list[str]:
    """The env ids the package itself defines (bandits, gridworlds, the named control tasks)."""
    return sorted([*_TOY_ENVS, *DMC_TASKS, *GYM_TASKS])


def make(env_id: str, seed: int | None = None, **kwargs) -> gym.Env:
    """Build the env ``env_id``; with ``seed``, its reset and its action space are seeded.

    ``kwargs`` go to the env's constructor (for example ``make("gridworld/two-routes", slip=0.2)``).
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env id must be a string such as 'bandit/four-gaussians', got {env_id!r}")
    factory = _TOY_ENVS.get(env_id)
    if factory is None:
        # mujoco and dm_control take seconds to import: only when a control id is asked for.
        from . import control

        factory = control.resolve(env_id)
    if factory is None:
        close = difflib.get_close_matches(env_id, available(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownEnvError(
            f"unknown env id {env_id!r}.{hint} Known ids: {', '.join(available())} "
            "(or any dmc/<domain>-<task> or Gymnasium MuJoCo id)."
        )
    env = factory(**kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def _register_with_gymnasium() -> None:
    """Make ``gymnasium.make(id)`` work for the package's own ids (see the module doc)."""
    for env_id in [*_TOY_ENVS, *DMC_TASKS]:
        if env_id not in gym.registry:  # a second import, or a reload, registers nothing twice
            gym.register(env_id, entry_point=f"{__name__}:make", kwargs={"env_id": env_id})


_register_with_gymnasium()


__all__ = ["make", "available", "UnknownEnvError", "Bandit2D", "DMC_TASKS", "GYM_TASKS"]
