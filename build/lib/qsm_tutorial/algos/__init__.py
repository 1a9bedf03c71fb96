"""The algorithms: QSM and the paper's baselines, one readable file each, the same shape."""

from .qsm import QSMAgent, QSMConfig
from .sac import SACAgent, SACConfig
from .td3 import TD3Agent, TD3Config

ALGOS = {
    "qsm": (QSMAgent, QSMConfig),
    "sac": (SACAgent, SACConfig),
    "td3": (TD3Agent, TD3Config),
}


def get(algo: str):
    """``(AgentClass, ConfigClass)`` of ``algo``."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose one of {sorted(ALGOS)}")
    return ALGOS[algo]


__all__ = ["ALGOS", "get", "QSMAgent", "QSMConfig", "SACAgent", "SACConfig", "TD3Agent", "TD3Config"]
