"""Every environment the course uses, behind one function: :func:`make`.

Ids the package defines itself are registered by the modules of this folder:

- ``bandit/<name>``: one-step 2-D toy bandits (:mod:`qsm_tutorial.envs.bandits`);
- ``gridworld/<name>``: small worlds with exact Q (:mod:`qsm_tutorial.envs.gridworld`);
- ``dmc/<domain>-<task>``: DeepMind Control tasks, and Gymnasium MuJoCo ids such as
  ``HalfCheetah-v5`` (:mod:`qsm_tutorial.envs.control`).

Every env has actions in [-1, 1]^d.
"""

from __future__ import annotations

import difflib
from typing import Callable

import gymnasium as gym

_REGISTRY: dict[str, Callable[..., gym.Env]] = {}
# Prefixes whose ids are built on demand by a module (any dm_control task, any Gymnasium id).
_RESOLVERS: list[Callable[[str], Callable[..., gym.Env] | None]] = []


class UnknownEnvError(KeyError):
    """An env id that no module of the package knows."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def register(env_id: str, factory: Callable[..., gym.Env]) -> None:
    """Register ``factory(**kwargs) -> gym.Env`` under ``env_id`` (used by the env modules)."""
    if env_id in _REGISTRY:
        raise ValueError(f"env id {env_id!r} is registered twice; pick another name")
    _REGISTRY[env_id] = factory


def register_resolver(resolver: Callable[[str], Callable[..., gym.Env] | None]) -> None:
    """Register a function that returns a factory for ids it understands, or None."""
    _RESOLVERS.append(resolver)


def _load_toy_modules() -> None:
    # Imported here, not at the top, so that `import qsm_tutorial` stays fast.
    from . import bandits, gridworld  # noqa: F401


def _load_modules() -> None:
    _load_toy_modules()
    # The control module imports mujoco and dm_control (seconds): only when a control id is asked for.
    from . import control  # noqa: F401


def available() -> list[str]:
    """The env ids the package itself defines (bandits, gridworlds, the supported control tasks)."""
    _load_modules()
    return sorted(_REGISTRY)


def make(env_id: str, seed: int | None = None, **kwargs) -> gym.Env:
    """Build the env ``env_id``; with ``seed``, its reset and its action space are seeded.

    ``kwargs`` go to the env's constructor (for example ``make("gridworld/two-routes", slip=0.2)``).
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env id must be a string such as 'bandit/four-gaussians', got {env_id!r}")
    _load_toy_modules()
    factory = _REGISTRY.get(env_id)
    if factory is None:
        _load_modules()
        factory = _REGISTRY.get(env_id)
    if factory is None:
        for resolve in _RESOLVERS:
            factory = resolve(env_id)
            if factory is not None:
                break
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


def __getattr__(name: str):
    # `envs.Bandit2D` without importing the bandit module at package import time.
    if name in {"Bandit2D"}:
        from .bandits import Bandit2D

        return Bandit2D
    raise AttributeError(name)


__all__ = ["make", "available", "register", "register_resolver", "UnknownEnvError", "Bandit2D"]
