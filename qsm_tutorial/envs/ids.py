"""The control ids the course names, and the error for an id nobody knows.

Apart from ``envs/__init__.py`` so that :mod:`~qsm_tutorial.envs.control` can use them without
importing the package that imports it (no import circle), and so that naming the tasks loads no
simulator.
"""

from __future__ import annotations

# The QSM paper's DMC set plus two easy ones to debug with.
DMC_TASKS: tuple[str, ...] = (
    "dmc/cartpole-balance",
    "dmc/cartpole-swingup",
    "dmc/cheetah-run",
    "dmc/walker-run",
    "dmc/hopper-hop",
    "dmc/quadruped-walk",
    "dmc/humanoid-walk",
)
# The Gymnasium MuJoCo tasks the course uses.
GYM_TASKS: tuple[str, ...] = (
    "Pendulum-v1",
    "InvertedPendulum-v5",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Walker2d-v5",
    "Ant-v5",
    "Humanoid-v5",
)


class UnknownEnvError(KeyError):
    """An env id that no module of the package knows."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])
