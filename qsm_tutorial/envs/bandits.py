"""2-D toy bandits: one state, one step, actions in [−1, 1]², and a reward we know exactly.

Because every episode ends after one step, Q(s, a) = E[r | a]: the reward *is* the critic, and its
gradient ∇ₐr is the exact ∇ₐQ that QSM tries to match. That makes these the place to see the method
work, and fail, before anything is learned.

Built-ins (``qsm_tutorial.envs.make("bandit/<name>")``):

=================  ==============================================================================
four-gaussians     four equal bumps at (±0.5, ±0.5), σ = 0.15: four equally optimal interior modes
eight-gaussians    eight equal bumps on a circle of radius 0.6, σ = 0.1
ring               a ring of radius 0.6: a continuum of optimal actions
four-clusters      bumps at (±0.8, ±0.8) of heights 3, 0, 1.5, 5 (Diffusion-QL's toy): one best mode
single-peak        a concave bowl, 1 − ‖a − (0.4, −0.3)‖²: one optimum away from the origin
=================  ==============================================================================

A Gaussian policy has one mode: on ``four-gaussians`` it must sit on one bump (or, worse, between
them); a diffusion policy can put mass on all four.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

RewardFn = Callable[[Tensor], Tensor]


class Bandit2D(gym.Env):
    """A one-state, one-step bandit over actions a ∈ [−1, 1]² with reward ``reward_fn(a)``.

    ``reward_fn`` maps a tensor of actions of shape [..., 2] to rewards of shape [...] and must be
    differentiable (torch operations), so that ``reward_grad`` can return the exact ∇ₐr.
    ``reward_noise`` adds N(0, σ²) to the reward the env returns (not to ``reward``): a learned
    critic must then average, while the exact field stays available for comparison.
    The observation is a constant ``[0.0]`` (there is one state).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        reward_fn: RewardFn,
        name: str = "custom",
        modes: Sequence[Sequence[float]] | None = None,
        reward_noise: float = 0.0,
    ):
        self.reward_fn = reward_fn
        self.name = name
        self.modes = None if modes is None else torch.tensor(modes, dtype=torch.float32)
        if reward_noise < 0:
            raise ValueError(f"reward_noise must be >= 0, got {reward_noise}")
        self.reward_noise = float(reward_noise)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._check_reward_fn()

    # -- the exact reward and its gradient: the true Q and ∇ₐQ ---------------------------------
    def reward(self, actions: Tensor) -> Tensor:
        """r(a) for a batch of actions [..., 2] → [...] (float32, no noise)."""
        actions = torch.as_tensor(actions, dtype=torch.float32)
        return self.reward_fn(actions)

    def reward_grad(self, actions: Tensor) -> Tensor:
        """∇ₐr(a) by autograd, same shape as ``actions``."""
        a = torch.as_tensor(actions, dtype=torch.float32).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.reward_fn(a).sum(), a)
        return grad

    def optimum(self, grid_size: int = 201) -> tuple[Tensor, float]:
        """The best action on a dense grid and its reward (a check for plots and tests)."""
        a = action_grid(grid_size).reshape(-1, 2)
        r = self.reward(a)
        i = int(torch.argmax(r))
        return a[i], float(r[i])

    # -- the Gymnasium interface ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (2,):
            raise ValueError(f"a {self.name} bandit action has shape (2,), got {a.shape}; pass one 2-D action")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action {a} is not finite; check the policy for NaNs")
        if np.any(np.abs(a) > 1.0 + 1e-6):
            raise ValueError(f"action {a} is outside [-1, 1]^2; clip it with np.clip(a, -1, 1)")
        r = float(self.reward(torch.from_numpy(a)))
        if not math.isfinite(r):
            raise ValueError(f"reward_fn returned {r} at action {a}; it must be finite on [-1, 1]^2")
        if self.reward_noise > 0:
            r += self.reward_noise * float(self.np_random.standard_normal())
        obs = np.zeros(1, dtype=np.float32)
        return obs, r, True, False, {}

    def _check_reward_fn(self) -> None:
        probe = action_grid(5).reshape(-1, 2)
        try:
            out = self.reward_fn(probe)
        except Exception as e:  # the user's function: say which one failed and how to call it
            raise ValueError(f"reward_fn of bandit {self.name!r} failed on a [25, 2] tensor of actions: {e}") from e
        if not isinstance(out, Tensor) or out.shape != probe.shape[:-1]:
            got = f"a {type(out).__module__.split('.')[0]}.{type(out).__name__}"
            if hasattr(out, "shape"):
                got += f" of shape {tuple(out.shape)}"
            raise ValueError(
                f"reward_fn of bandit {self.name!r} must map actions [..., 2] to rewards [...] as torch tensors; "
                f"for a [25, 2] input it returned {got}, expected a torch.Tensor of shape (25,)"
            )
        if not torch.isfinite(out).all():
            raise ValueError(f"reward_fn of bandit {self.name!r} returned non-finite values on [-1, 1]^2")


def mode_shares(samples: Tensor, modes: Tensor, radius: float = 0.25) -> list[float]:
    """The fraction of ``samples`` [N, 2] within ``radius`` of each of the ``modes`` [K, 2]."""
    d = torch.cdist(torch.as_tensor(samples, dtype=torch.float32), torch.as_tensor(modes, dtype=torch.float32))
    near = d.min(dim=1).values < radius
    return [float(((d.argmin(dim=1) == k) & near).float().mean()) for k in range(len(modes))]


def action_grid(n: int, bound: float = 1.0) -> Tensor:
    """An n × n grid of actions over [−bound, bound]², shape [n, n, 2] (x varies along dim 1)."""
    xs = torch.linspace(-bound, bound, n)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    return torch.stack([gx, gy], dim=-1)


# ----------------------------------------------------------------------------------------------
# Reward functions of the built-in bandits
# ----------------------------------------------------------------------------------------------
def gaussian_bumps(centers: Sequence[Sequence[float]], sigma: float, heights: Sequence[float] | None = None) -> RewardFn:
    """r(a) = Σ_k h_k · exp(−‖a − c_k‖² / 2σ²)."""
    c = torch.tensor(centers, dtype=torch.float32)
    h = torch.ones(len(c)) if heights is None else torch.tensor(heights, dtype=torch.float32)

    def reward(a: Tensor) -> Tensor:
        d2 = ((a.unsqueeze(-2) - c) ** 2).sum(-1)
        return (h * torch.exp(-d2 / (2 * sigma**2))).sum(-1)

    return reward


def ring(radius: float = 0.6, width: float = 0.1) -> RewardFn:
    """r(a) = exp(−(‖a‖ − radius)² / 2·width²)."""

    def reward(a: Tensor) -> Tensor:
        norm = torch.sqrt((a**2).sum(-1) + 1e-12)
        return torch.exp(-((norm - radius) ** 2) / (2 * width**2))

    return reward


def concave_bowl(center: Sequence[float]) -> RewardFn:
    """r(a) = 1 − ‖a − c‖²: concave, one maximum at c."""
    c = torch.tensor(center, dtype=torch.float32)

    def reward(a: Tensor) -> Tensor:
        return 1.0 - ((a - c) ** 2).sum(-1)

    return reward


FOUR_GAUSSIAN_MODES = [(0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5)]
EIGHT_GAUSSIAN_MODES = [(0.6 * math.cos(k * math.pi / 4), 0.6 * math.sin(k * math.pi / 4)) for k in range(8)]
FOUR_CLUSTER_MODES = [(-0.8, 0.8), (-0.8, -0.8), (0.8, 0.8), (0.8, -0.8)]
FOUR_CLUSTER_HEIGHTS = [3.0, 0.0, 1.5, 5.0]  # top-left, bottom-left, top-right, bottom-right
SINGLE_PEAK = (0.4, -0.3)

BUILTIN_BANDITS: dict[str, tuple[Callable[[], RewardFn], list | None]] = {
    "four-gaussians": (lambda: gaussian_bumps(FOUR_GAUSSIAN_MODES, 0.15), FOUR_GAUSSIAN_MODES),
    "eight-gaussians": (lambda: gaussian_bumps(EIGHT_GAUSSIAN_MODES, 0.1), EIGHT_GAUSSIAN_MODES),
    "ring": (lambda: ring(0.6, 0.1), None),
    "four-clusters": (lambda: gaussian_bumps(FOUR_CLUSTER_MODES, 0.2, FOUR_CLUSTER_HEIGHTS), FOUR_CLUSTER_MODES),
    "single-peak": (lambda: concave_bowl(SINGLE_PEAK), [SINGLE_PEAK]),
}


def _factory(name: str) -> Callable[..., Bandit2D]:
    make_reward, modes = BUILTIN_BANDITS[name]

    def make(**kwargs) -> Bandit2D:
        return Bandit2D(make_reward(), name=name, modes=modes, **kwargs)

    return make


ENVS: dict[str, Callable[..., Bandit2D]] = {f"bandit/{name}": _factory(name) for name in BUILTIN_BANDITS}
