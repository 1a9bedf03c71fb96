"""A replay buffer of transitions in float32 arrays allocated once.

Memory is fixed at construction: (2·obs_dim + act_dim + 2) · 4 bytes per slot, so a 1M-slot buffer
for cheetah-run (17-D observations, 6-D actions) takes 1e6 · 42 · 4 B ≈ 168 MB and never grows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class Batch(NamedTuple):
    """A minibatch of transitions; ``mask`` is 1 − terminated (0 ends the bootstrap). A named
    tuple, so ``torch.func.vmap`` maps over a stack of them (several seeds' minibatches)."""

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    mask: Tensor


class ReplayBuffer:
    """A ring buffer of (s, a, r, s′, terminated) with uniform sampling.

    Only ``terminated`` stops bootstrapping; a time-limit truncation is stored as an ordinary
    transition, so the critic bootstraps through it (the episode did not really end).
    """

    FIELDS = ("obs", "action", "reward", "next_obs", "mask")

    def __init__(self, obs_dim: int, act_dim: int, capacity: int = 1_000_000):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, act_dim), np.float32)
        self.reward = np.zeros((capacity,), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.mask = np.zeros((capacity,), np.float32)
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in self.FIELDS)

    def add(self, obs, action, reward: float, next_obs, terminated: bool) -> None:
        i = self.pos
        self.obs[i] = obs
        self.action[i] = action
        self.reward[i] = reward
        self.next_obs[i] = next_obs
        self.mask[i] = 0.0 if terminated else 1.0
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> Batch:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer; add transitions first")
        idx = torch.randint(0, self.size, (batch_size,), generator=generator).numpy()
        return Batch(*(torch.from_numpy(getattr(self, f)[idx]).to(device) for f in self.FIELDS))

    # -- checkpointing: plain tensors, loadable with torch.load(weights_only=True) ---------------
    def state_dict(self) -> dict:
        n = self.size
        state = {f: torch.from_numpy(getattr(self, f)[:n].copy()) for f in self.FIELDS}
        state.update(size=torch.tensor(n), pos=torch.tensor(self.pos), capacity=torch.tensor(self.capacity))
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"checkpoint replay capacity {int(state['capacity'])} differs from this run's {self.capacity}; "
                "resume with the same buffer_size"
            )
        n = int(state["size"])
        for f in self.FIELDS:
            getattr(self, f)[:n] = state[f].numpy()
        self.size, self.pos = n, int(state["pos"])
