"""Pieces every algorithm shares: config fields with docs, twin critics, the TD target, Polyak."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import field, replace
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..diffusion import mlp, xavier_init_


def doc(default: Any, help: str) -> Any:
    """A dataclass field whose one-line ``help`` becomes the CLI's ``--help`` text."""
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def config_help(config_cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config_cls)}


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when present, else CPU; a device torch cannot use here is a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA GPU here (torch {torch.__version__}); use auto or cpu")
    return resolved


class TwinCritic(nn.Module):
    """Two independent Q-networks [s, a] → hidden → ReLU → hidden → ReLU → 1, evaluated together."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (512, 512)):
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden, 1]
        self.q1 = xavier_init_(mlp(sizes, nn.ReLU))
        self.q2 = xavier_init_(mlp(sizes, nn.ReLU))

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        """Q₁ and Q₂ stacked: shape [2, B]."""
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)])


def critic_target(reward: Tensor, mask: Tensor, gamma: float, next_q: Tensor) -> Tensor:
    """TD target  y = r + γ · mask · min(Q̄₁, Q̄₂)(s′, a′)  (``next_q`` is [2, B] from the targets).

    ``mask`` = 1 − terminated: 0 for a bandit's one-step episode, so there y = r.
    """
    return reward + gamma * mask * next_q.min(dim=0).values


def critic_loss(q: Tensor, y: Tensor) -> Tensor:
    """Σ over both critics of the mean squared TD error  (Q_i(s, a) − y)²."""
    return ((q - y.unsqueeze(0)) ** 2).mean(dim=1).sum()


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """θ̄ ← (1 − τ) θ̄ + τ θ."""
    for p_t, p in zip(target.parameters(), online.parameters()):
        p_t.lerp_(p, tau)


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block ``module``'s parameters take no gradients: an actor step back-propagates
    through the critic to the action without computing (and then discarding) critic gradients."""
    module.requires_grad_(False)
    try:
        yield module
    finally:
        module.requires_grad_(True)


def apply_preset(config_cls, presets: dict[str, dict], name: str, algo: str, overrides: dict):
    """``config_cls`` with the named preset's deviations from the paper, then ``overrides``."""
    if name not in presets:
        raise ValueError(f"unknown {algo} preset {name!r}; choose one of {sorted(presets)}")
    return replace(config_cls(), **{**presets[name], **overrides})


class Checkpointable:
    """``state_dict`` / ``load_state_dict`` over the modules and optimisers named in ``checkpoint_parts``
    (all tensors and primitives, so checkpoints load with ``torch.load(weights_only=True)``)."""

    checkpoint_parts: tuple[str, ...] = ()
    n_updates: int = 0

    def state_dict(self) -> dict:
        return {**{name: getattr(self, name).state_dict() for name in self.checkpoint_parts}, "n_updates": self.n_updates}

    def load_state_dict(self, state: dict) -> None:
        for name in self.checkpoint_parts:
            getattr(self, name).load_state_dict(state[name])
        self.n_updates = int(state["n_updates"])
