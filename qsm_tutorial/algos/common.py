"""Pieces every algorithm shares: config fields with docs, twin critics, the TD target, Polyak."""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from contextlib import contextmanager
from dataclasses import field, replace
from typing import Any, Iterator

import torch
from torch import Tensor, nn




def doc(default: Any, help: str) -> Any:
    """A dataclass field whose one-line ``help`` becomes the CLI's ``--help`` text."""
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def cli_flag(name: str) -> str:
    """The command-line flag of a config field: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when present, else CPU; a device torch cannot use here is a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):  # mps, meta, xpu, ...: untested here, or (meta) no data at all
        raise ValueError(f"device {device!r}: this package trains on cpu or cuda only; use auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA GPU here (torch {torch.__version__}); use auto or cpu")
    return resolved


# Values no run can use, checked where each config is made (``check_config``); a config checks the
# fields it has. Everything else (a discount of 0, no warm-up, ...) is allowed: it may be a lesson.
POSITIVE_INTS = ("batch_size", "buffer_size", "T", "langevin_steps", "action_candidates", "actor_delay")
NON_NEGATIVE = ("warmup_steps", "actor_lr_decay_steps", "exploration_noise", "target_noise", "target_noise_clip",
                "temperature", "denoise_weight", "prior_std")  # fmt: skip
POSITIVE = ("actor_lr", "critic_lr", "temperature_lr", "init_temperature", "alpha", "langevin_step_size")
FINITE = ("target_entropy_per_dim",)


def is_count(value) -> bool:
    """An integer >= 1 (a NumPy integer too; not a bool, not a float such as 1e6)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def count_argument(text: str) -> int:
    """An ``argparse`` type for flags that take an integer >= 1 (``--threads``, ``--jobs``)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if not is_count(value):
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def check_config(cfg) -> None:
    """A one-line ``ValueError`` naming the field (and its CLI flag) for a value no run can use;
    called by every algorithm's config when it is made, so a bad value fails before any training."""

    def bad(name: str, rule: str) -> ValueError:
        return ValueError(f"{name} ({cli_flag(name)}) must be {rule}, got {getattr(cfg, name)!r}")

    fields = {f.name for f in dataclasses.fields(cfg)}
    for name in fields & set(POSITIVE_INTS):
        value = getattr(cfg, name)
        if not is_count(value):
            raise bad(name, "an integer >= 1")
    for name in fields & set(NON_NEGATIVE):
        if not 0 <= getattr(cfg, name) < math.inf:  # (also refuses NaN)
            raise bad(name, "a finite number >= 0")
    for name in fields & set(POSITIVE):
        if not 0 < getattr(cfg, name) < math.inf:
            raise bad(name, "a finite number > 0")
    for name in fields & set(FINITE):
        if not -math.inf < getattr(cfg, name) < math.inf:
            raise bad(name, "a finite number")
    if not 0 <= cfg.gamma <= 1:
        raise bad("gamma", "in [0, 1]")
    if not 0 < cfg.tau <= 1:
        raise bad("tau", "in (0, 1]")
    for name in ("actor_hidden", "critic_hidden"):
        widths = getattr(cfg, name)
        if not widths or not all(is_count(w) for w in widths):
            raise bad(name, "one or more layer widths >= 1, such as 256,256")
    resolve_device(cfg.device)  # a bad device fails here, before a run directory is made


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


# SAC's and TD3's deviations from the paper, by purpose (one table, so that the two baselines stay alike
# and a change reaches both). "paper" is the faithful setting.
BASELINE_PRESETS: dict[str, dict] = {
    "paper": {},
    # Control tasks: the paper's baseline settings as they are (they learn InvertedPendulum-v5 and
    # dmc/cartpole-balance within the budgets of benchmarks/learning.py).
    "control": {},
    # Toy bandits: the same short warm-up, buffer and network sizes as QSM's bandit preset, so the
    # three algorithms compare on equal terms (a 10k warm-up would exceed a bandit's whole budget).
    "bandit": dict(
        actor_hidden=(128, 128),
        critic_hidden=(128, 128),
        actor_lr=1e-3,
        critic_lr=1e-3,
        warmup_steps=256,
        buffer_size=100_000,
    ),
}


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
