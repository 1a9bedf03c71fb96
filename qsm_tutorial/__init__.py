"""qsm_tutorial: learn and use Q-Score Matching.

Q-Score Matching (Psenka et al., ICML 2024) trains a diffusion-model policy for reinforcement
learning by matching the policy's score ∇ₐ log π(a|s) to α·∇ₐQ(s, a), the action-gradient of the
critic. Start with ``qsm_tutorial.train("bandit/four-gaussians")``.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["envs", "train", "Run", "__version__"]


def __getattr__(name: str):
    """``envs``, ``train`` and ``Run`` load on first use, so that the command-line front doors
    (``__main__``) start before torch does, and ``python -m qsm_tutorial.train`` runs that
    submodule fresh (the function comes from the loop, not via the submodule)."""
    if name == "envs":
        return importlib.import_module(".envs", __name__)
    if name in ("train", "Run"):
        value = getattr(importlib.import_module(".loop", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
