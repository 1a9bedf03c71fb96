"""Soft Actor-Critic (Haarnoja et al. 2018), the QSM paper's baseline, as its authors' codebase runs it.

One update, after one environment step:

1. critic:       a′ ~ π(·|s′),  y = r + γ · mask · (min(Q̄₁, Q̄₂)(s′, a′) − α · log π(a′|s′));
                 minimise Σᵢ (Qᵢ(s, a) − y)²;  Polyak-average the targets.
2. actor:        a ~ π(·|s) reparameterised;  minimise  α · log π(a|s) − ½ (Q₁ + Q₂)(s, a).
3. temperature:  H = −mean log π(a|s) from step 2;  minimise  α · (H − H̄),  H̄ = −|A|/2.

The policy is a tanh-squashed diagonal Gaussian: u ~ N(μ(s), σ(s)²), a = tanh(u), so actions lie
in (−1, 1) and log π needs the change-of-variables term of the tanh (:func:`tanh_gaussian_log_prob`).

Where this differs from the SAC papers it follows the QSM authors' codebase (``jaxrl5``), which made
the paper's baseline curves: the actor maximises the *mean* of the two critics (SAC uses the min),
the target entropy is −|A|/2 (SAC: −|A|), the temperature starts at 1.0, log σ is clipped to
[−20, 2], and the temperature loss is α · (H − H̄) differentiated with respect to log α.
Compare with qsm.py: the critic step is the same up to the entropy term; the actor step is where
the two methods differ.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nets import TwinCritic, mlp, xavier_init_
from ..replay import Batch
from .common import BASELINE_PRESETS, Checkpointable, apply_preset, check_config, critic_loss, critic_target, doc, frozen, polyak_update, resolve_device

# The clip range of log σ in the authors' Gaussian head (jaxrl5's Normal: -20, 2).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class SACConfig:
    """SAC hyperparameters; every default is the QSM paper's baseline (``jaxrl5`` SACLearner)."""

    actor_hidden: tuple[int, ...] = doc((256, 256), "hidden widths of the policy MLP (paper: 256, 256)")
    critic_hidden: tuple[int, ...] = doc((256, 256), "hidden widths of each critic (paper: 256, 256)")
    actor_lr: float = doc(3e-4, "Adam learning rate of the policy (paper: 3e-4)")
    critic_lr: float = doc(3e-4, "Adam learning rate of the critics (paper: 3e-4)")
    temperature_lr: float = doc(3e-4, "Adam learning rate of log alpha (paper: 3e-4)")
    init_temperature: float = doc(1.0, "initial entropy temperature alpha (paper: 1.0)")
    target_entropy_per_dim: float = doc(-0.5, "target entropy per action dimension: target = this * |A| (paper: -0.5)")
    gamma: float = doc(0.99, "discount factor (paper: 0.99)")
    tau: float = doc(0.005, "Polyak rate of the target critics (paper: 0.005)")
    batch_size: int = doc(256, "minibatch size (paper: 256)")
    warmup_steps: int = doc(10_000, "uniform-random actions before learning starts (paper: 10000)")
    buffer_size: int = doc(1_000_000, "replay buffer capacity (paper: 1e6)")
    device: str = doc("auto", "torch device: auto (CUDA if present), cpu or cuda")

    def __post_init__(self):
        check_config(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> "SACConfig":
        """Named deviations from the paper (see ``PRESETS``)."""
        return apply_preset(cls, PRESETS, name, "SAC", overrides)


# Deviations from the paper: the two baselines share theirs (``common.BASELINE_PRESETS``).
PRESETS: dict[str, dict] = BASELINE_PRESETS


# ----------------------------------------------------------------------------------------------
# The equations of the method, one function each
# ----------------------------------------------------------------------------------------------
def tanh_gaussian_log_prob(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log π(a|s) of a = tanh(u), u ~ N(μ, σ²), summed over action dimensions:

        log π(a|s) = Σᵢ [ log N(uᵢ; μᵢ, σᵢ) − log(1 − tanh²(uᵢ)) ],

    with log(1 − tanh²(u)) = 2 (log 2 − u − softplus(−2u)), which stays finite where tanh(u) = ±1
    in float32.
    """
    gaussian = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_det_tanh = 2 * (math.log(2) - u - F.softplus(-2 * u))
    return (gaussian - log_det_tanh).sum(dim=-1)


def soft_critic_target(
    reward: Tensor, mask: Tensor, gamma: float, next_q: Tensor, next_log_prob: Tensor, alpha: Tensor
) -> Tensor:
    """y = r + γ · mask · (min(Q̄₁, Q̄₂)(s′, a′) − α · log π(a′|s′)),  a′ ~ π(·|s′)."""
    return critic_target(reward, mask, gamma, next_q - alpha * next_log_prob)


def sac_actor_loss(log_prob: Tensor, q: Tensor, alpha: Tensor) -> Tensor:
    """mean over the batch of  α · log π(a|s) − ½ (Q₁ + Q₂)(s, a),  a ~ π(·|s) reparameterised
    (``q`` is [2, B] from the online critics)."""
    return (alpha * log_prob - q.mean(dim=0)).mean()


def temperature_loss(log_alpha: Tensor, entropy: Tensor, target_entropy: float) -> Tensor:
    """α · (H − H̄) with α = exp(log α): its gradient α · (H − H̄) lowers α while the policy's
    entropy H is above the target H̄ and raises it below (``entropy`` is detached)."""
    return log_alpha.exp() * (entropy - target_entropy)


# ----------------------------------------------------------------------------------------------
# The agent
# ----------------------------------------------------------------------------------------------
class TanhGaussianActor(nn.Module):
    """s → hidden → ReLU → … → ReLU → (μ, log σ): the Gaussian of u; actions are tanh(u)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.trunk = xavier_init_(nn.Sequential(mlp([obs_dim, *hidden], nn.ReLU), nn.ReLU()))
        self.head = xavier_init_(nn.Linear(hidden[-1], 2 * act_dim))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.head(self.trunk(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """A reparameterised action a = tanh(μ + σ ε) and its log π(a|s)."""
        mean, log_std = self(obs)
        u = mean + log_std.exp() * torch.randn_like(mean)
        return torch.tanh(u), tanh_gaussian_log_prob(u, mean, log_std)


class SACAgent(Checkpointable):
    """A tanh-Gaussian policy, twin critics and a learned temperature, updated by ``update(batch)``."""

    algo = "sac"
    checkpoint_parts = ('actor', 'critic', 'critic_target', 'actor_opt', 'critic_opt', 'alpha_opt')

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig | None = None):
        self.config = cfg = config or SACConfig()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = resolve_device(cfg.device)
        self.target_entropy = cfg.target_entropy_per_dim * act_dim
        self.actor = TanhGaussianActor(obs_dim, act_dim, cfg.actor_hidden).to(self.device)
        self.critic = TwinCritic(obs_dim, act_dim, cfg.critic_hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # α is learned as log α: positive by construction, and scale-free steps.
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=self.device, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.temperature_lr)
        self.n_updates = 0

    @property
    def alpha(self) -> Tensor:
        """The temperature α = exp(log α), detached."""
        return self.log_alpha.detach().exp()

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """An action for one observation (or a batch): a sample of π, or its mode tanh(μ(s))
        when ``deterministic`` (the evaluation action)."""
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        single = obs_t.ndim == 1
        obs_t = obs_t.reshape(-1, self.obs_dim)
        a = torch.tanh(self.actor(obs_t)[0]) if deterministic else self.actor.sample(obs_t)[0]
        a = a.cpu().numpy()
        return a[0] if single else a

    @torch.no_grad()
    def sample_actions(self, obs: np.ndarray, n: int) -> Tensor:
        """``n`` policy samples for one observation, shape [n, act_dim] (for plots)."""
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=self.device).reshape(1, -1)
        return self.actor.sample(obs_t.expand(n, -1))[0].cpu()

    # -- learning ------------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        """One critic step, one target update, one actor step, then one temperature step."""
        metrics = self.update_critic(batch)
        polyak_update(self.critic_target, self.critic, self.config.tau)
        metrics.update(self.update_actor(batch))
        metrics.update(self.update_temperature(metrics["entropy"]))
        self.n_updates += 1
        return metrics

    def update_critic(self, batch: Batch) -> dict[str, float]:
        with torch.no_grad():
            next_a, next_log_prob = self.actor.sample(batch.next_obs)
            next_q = self.critic_target(batch.next_obs, next_a)
            y = soft_critic_target(batch.reward, batch.mask, self.config.gamma, next_q, next_log_prob, self.alpha)
        q = self.critic(batch.obs, batch.action)
        loss = critic_loss(q, y)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return {"critic_loss": loss.item(), "q_mean": q.mean().item()}

    def update_actor(self, batch: Batch) -> dict[str, float]:
        a, log_prob = self.actor.sample(batch.obs)
        with frozen(self.critic):
            q = self.critic(batch.obs, a)
        loss = sac_actor_loss(log_prob, q, self.alpha)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return {"actor_loss": loss.item(), "entropy": -log_prob.mean().item()}

    def update_temperature(self, entropy: float) -> dict[str, float]:
        loss = temperature_loss(self.log_alpha, torch.tensor(entropy, device=self.device), self.target_entropy)
        self.alpha_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.alpha_opt.step()
        return {"alpha": self.alpha.item()}

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "log_alpha": self.log_alpha.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
