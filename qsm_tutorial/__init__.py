"""qsm_tutorial: learn and use Q-Score Matching.

Q-Score Matching (Psenka et al., ICML 2024) trains a diffusion-model policy for reinforcement
learning by matching the policy's score ∇ₐ log π(a|s) to α·∇ₐQ(s, a), the action-gradient of the
critic. Start with ``qsm_tutorial.train("bandit/four-gaussians")``.
"""

from . import envs
from .loop import Run, train  # not via the submodule .train, so `python -m qsm_tutorial.train` runs it fresh

__version__ = "0.1.0"
__all__ = ["envs", "train", "Run", "__version__"]
