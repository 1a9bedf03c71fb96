"""The algorithms: QSM and the paper's baselines, one readable file each, the same shape."""

from .qsm import QSMAgent, QSMConfig

ALGOS = {"qsm": (QSMAgent, QSMConfig)}


def get(algo: str):
    """``(AgentClass, ConfigClass)`` of ``algo``."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose one of {sorted(ALGOS)}")
    return ALGOS[algo]


__all__ = ["ALGOS", "get", "QSMAgent", "QSMConfig"]
