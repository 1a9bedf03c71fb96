"""TD3 (Fujimoto, van Hoof, Meger 2018), the QSM paper's baseline, as its authors' codebase runs it.

One update, after one environment step:

1. critic:  a′ = μ̄(s′) + clip(ε, −c, c),  ε ~ N(0, 0.2²), c = 0.5   (target policy smoothing)
            y  = r + γ · mask · min(Q̄₁, Q̄₂)(s′, a′);  minimise Σᵢ (Qᵢ(s, a) − y)²;
            Polyak-average the target critics.
2. actor, every ``actor_delay``-th update only (delayed policy updates):
            minimise −½ (Q₁ + Q₂)(s, μ(s));  Polyak-average the target actor μ̄.

The policy is deterministic, μ(s) = tanh(MLP(s)); it explores with N(0, 0.1²) noise, clipped to
[−1, 1], and is evaluated without noise.

Where this differs from the TD3 paper it follows the QSM authors' codebase (``jaxrl5``), which made
the paper's baseline curves: the actor maximises the *mean* of the two critics (TD3 uses Q₁), the
target critics are Polyak-averaged after every critic step (TD3: only on actor steps), and the
smoothed target action a′ is not clipped back to [−1, 1] (TD3 clips it). Compare with qsm.py: the
critic step is the same up to how a′ is drawn; QSM has no target actor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..nets import TwinCritic, mlp, xavier_init_
from ..replay import Batch
from .common import BASELINE_PRESETS, Checkpointable, apply_preset, check_config, critic_loss, critic_target, doc, frozen, polyak_update, resolve_device


@dataclass
class TD3Config:
    """TD3 hyperparameters; every default is the QSM paper's baseline (``jaxrl5`` TD3Learner)."""

    actor_hidden: tuple[int, ...] = doc((256, 256), "hidden widths of the policy MLP (paper: 256, 256)")
    critic_hidden: tuple[int, ...] = doc((256, 256), "hidden widths of each critic (paper: 256, 256)")
    actor_lr: float = doc(3e-4, "Adam learning rate of the policy (paper: 3e-4)")
    critic_lr: float = doc(3e-4, "Adam learning rate of the critics (paper: 3e-4)")
    gamma: float = doc(0.99, "discount factor (paper: 0.99)")
    tau: float = doc(0.005, "Polyak rate of the target critics and target actor (paper: 0.005)")
    batch_size: int = doc(256, "minibatch size (paper: 256)")
    exploration_noise: float = doc(0.1, "std of Gaussian noise added to actions while acting (paper: 0.1)")
    target_noise: float = doc(0.2, "std of the smoothing noise added to the target action a' (paper: 0.2)")
    target_noise_clip: float = doc(0.5, "the smoothing noise is clipped to +-this (paper: 0.5)")
    actor_delay: int = doc(2, "one actor (and target actor) step every this many critic steps (paper: 2)")
    warmup_steps: int = doc(10_000, "uniform-random actions before learning starts (paper: 10000)")
    buffer_size: int = doc(1_000_000, "replay buffer capacity (paper: 1e6)")
    device: str = doc("auto", "torch device: auto (CUDA if present), cpu or cuda")

    def __post_init__(self):
        check_config(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> "TD3Config":
        """Named deviations from the paper (see ``PRESETS``)."""
        return apply_preset(cls, PRESETS, name, "TD3", overrides)


# Deviations from the paper: the two baselines share theirs (``common.BASELINE_PRESETS``).
PRESETS: dict[str, dict] = BASELINE_PRESETS


# ----------------------------------------------------------------------------------------------
# The equations of the method, one function each
# ----------------------------------------------------------------------------------------------
def td3_target_action(target_action: Tensor, noise_std: float, noise_clip: float) -> Tensor:
    """Target policy smoothing:  a′ = μ̄(s′) + clip(ε, −c, c),  ε ~ N(0, σ²)  (not clipped to
    [−1, 1], as in the authors' code)."""
    noise = (noise_std * torch.randn_like(target_action)).clamp(-noise_clip, noise_clip)
    return target_action + noise


def td3_actor_loss(q: Tensor) -> Tensor:
    """−mean over the batch of ½ (Q₁ + Q₂)(s, μ(s))  (``q`` is [2, B] from the online critics)."""
    return -q.mean(dim=0).mean()


# ----------------------------------------------------------------------------------------------
# The agent
# ----------------------------------------------------------------------------------------------
class DeterministicActor(nn.Module):
    """s → hidden → ReLU → … → ReLU → |A| → tanh: one action per state, in (−1, 1)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.net = xavier_init_(nn.Sequential(mlp([obs_dim, *hidden], nn.ReLU), nn.ReLU(), nn.Linear(hidden[-1], act_dim)))

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs))


class TD3Agent(Checkpointable):
    """A deterministic policy with a target copy and twin critics, updated by ``update(batch)``."""

    algo = "td3"
    checkpoint_parts = ('actor', 'actor_target', 'critic', 'critic_target', 'actor_opt', 'critic_opt')

    def __init__(self, obs_dim: int, act_dim: int, config: TD3Config | None = None):
        self.config = cfg = config or TD3Config()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = resolve_device(cfg.device)
        self.actor = DeterministicActor(obs_dim, act_dim, cfg.actor_hidden).to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinCritic(obs_dim, act_dim, cfg.critic_hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.n_updates = 0

    # -- sampling ------------------------------------------------------------------------------
    def _noisy(self, actions: Tensor) -> Tensor:
        return (actions + self.config.exploration_noise * torch.randn_like(actions)).clamp(-1.0, 1.0)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """An action for one observation (or a batch): μ(s) plus exploration noise, or μ(s) alone
        when ``deterministic`` (the evaluation action)."""
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        single = obs_t.ndim == 1
        a = self.actor(obs_t.reshape(-1, self.obs_dim))
        if not deterministic:
            a = self._noisy(a)
        a = a.cpu().numpy()
        return a[0] if single else a

    @torch.no_grad()
    def sample_actions(self, obs: np.ndarray, n: int) -> Tensor:
        """``n`` behaviour actions μ(s) + noise for one observation, shape [n, act_dim] (for plots:
        the policy itself is one point)."""
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=self.device).reshape(1, -1)
        return self._noisy(self.actor(obs_t).expand(n, -1)).cpu()

    # -- learning ------------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        """One critic step and target-critic update; every ``actor_delay``-th call also one actor
        step and target-actor update (the authors' order: the 2nd, 4th, … update)."""
        metrics = self.update_critic(batch)
        polyak_update(self.critic_target, self.critic, self.config.tau)
        self.n_updates += 1
        if self.n_updates % self.config.actor_delay == 0:
            metrics.update(self.update_actor(batch))
            polyak_update(self.actor_target, self.actor, self.config.tau)
        return metrics

    def update_critic(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            next_a = td3_target_action(self.actor_target(batch.next_obs), cfg.target_noise, cfg.target_noise_clip)
            y = critic_target(batch.reward, batch.mask, cfg.gamma, self.critic_target(batch.next_obs, next_a))
        q = self.critic(batch.obs, batch.action)
        loss = critic_loss(q, y)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return {"critic_loss": loss.item(), "q_mean": q.mean().item()}

    def update_actor(self, batch: Batch) -> dict[str, float]:
        with frozen(self.critic):
            q = self.critic(batch.obs, self.actor(batch.obs))
        loss = td3_actor_loss(q)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return {"actor_loss": loss.item()}
