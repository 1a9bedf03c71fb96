"""The algorithms: QSM and the paper's baselines, one readable file each, the same shape."""

from .qsm import QSMAgent, QSMConfig, resolve_compile
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


def for_run(config, planned_updates: int):
    """``config`` as a run of ``planned_updates`` updates uses it (QSM decides ``compile="auto"``)."""
    return resolve_compile(config, planned_updates) if isinstance(config, QSMConfig) else config


__all__ = ["for_run", "ALGOS", "get", "QSMAgent", "QSMConfig", "SACAgent", "SACConfig", "TD3Agent", "TD3Config"]
