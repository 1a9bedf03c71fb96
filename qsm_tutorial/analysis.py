"""Questions asked of a trained agent: where its actions go at a state, and whether its modes are choices.

    env = envs.make("dmc/cartpole-swingup")
    obs, _ = env.reset(seed=0)
    actions = agent.sample_actions(obs, 1000)          # the paper's Figure 4: 1,000 actions at s₀
    action_shares(actions)                             # {"left": .., "right": .., "saturated": ..}
    forced_first_action_returns(agent, env, [-1.0, 1.0], seeds=range(5))

A policy can look bimodal because its samples pile onto the box's faces (±1) rather than because it
holds two good ways to act; the second function tells which: if both first actions lead to high
returns, the modes are real alternatives.
"""

from __future__ import annotations

from typing import Iterable

import gymnasium as gym
import numpy as np
import torch

SATURATED = 0.99  # |a| at or beyond this is "at the box's face"


def action_shares(actions: torch.Tensor | np.ndarray, dead_zone: float = 0.05) -> dict[str, float]:
    """For 1-D actions: the share pushing left (a < −dead_zone), right (a > dead_zone), and
    at the faces of the box (|a| ≥ 0.99), each over all samples."""
    a = torch.as_tensor(actions).reshape(-1).float()
    return {
        "left": float((a < -dead_zone).float().mean()),
        "right": float((a > dead_zone).float().mean()),
        "saturated": float((a.abs() >= SATURATED).float().mean()),
    }


def episode_return(agent, env: gym.Env, seed: int, first_action: np.ndarray | None = None, hold: int = 1) -> float:
    """The undiscounted return of one episode from ``reset(seed=seed)``, with deterministic actions
    (no exploration noise), the first ``hold`` of them replaced by ``first_action`` when given."""
    obs, _ = env.reset(seed=seed)
    total, done, step = 0.0, False, 0
    while not done:
        forced = first_action is not None and step < hold
        action = np.asarray(first_action, np.float32) if forced else agent.act(obs, deterministic=True)
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
        step += 1
    return total


def forced_first_action_returns(agent, env: gym.Env, first_actions: Iterable[float], seeds: Iterable[int],
                                hold: int = 1) -> dict[float, list[float]]:  # fmt: skip
    """{first action: [return of the episode from each seed]}: each first action held for ``hold``
    steps, then the policy acts. Equal returns across first actions mean either choice works."""
    seeds = list(seeds)
    return {float(a): [episode_return(agent, env, s, np.array([a], np.float32), hold) for s in seeds] for a in first_actions}
