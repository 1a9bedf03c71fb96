"""Q-Score Matching (Psenka, Escontrela, Abbeel, Ma, ICML 2024), as the authors implemented it.

One update, after one environment step:

1. critic:  y = r + γ · mask · min(Q̄₁, Q̄₂)(s′, a′),   a′ = DDPM sample of the *current* actor at s′
            plus N(0, 0.1²), clipped;   minimise Σᵢ (Qᵢ(s, a) − y)²;  Polyak-average the targets.
2. actor:   a_t = √ᾱ_t · a + √(1 − ᾱ_t) · z   (a: the replay action, t uniform in {0 … T−1})
            g   = ½ (∇ₐQ₁ + ∇ₐQ₂)(s, a_t)      (online critics, after step 1, detached)
            minimise ‖ε_θ(s, a_t, t) − (−α · g)‖².

The target for ε is −α∇ₐQ because the reverse step *subtracts* ε: every denoising step then moves
up the critic's action-gradient. There is no gradient through the sampling chain, no entropy term,
no behaviour cloning. α is an inverse temperature: Langevin dynamics with drift α∇ₐQ samples
π ∝ exp(α·Q).

Where the paper's algorithm box and the authors' code differ, this file follows the code (the code
made the paper's curves): ∇Q is taken at the *noised replay action* (not at a fresh policy sample),
the TD target uses the current actor (no target actor), the reverse step adds noise of variance β_t.

Beyond the paper (off by default, one flag each): ``sampler="langevin"`` samples with Langevin
dynamics driven by the learned score instead of the 5-step DDPM chain. On toy bandits with interior
modes the faithful DDPM chain piles samples onto the corners of the box (see ``sample_corner_fraction``
in the tests and notebook 2): its reverse steps divide by √α_t, a ×12.5 expansion over the chain, and
nothing in the target pulls actions back. Langevin with the same learned score has exp(α·Q) as its
fixed point, so it keeps interior modes. The bandit preset uses it.

On control tasks the paper's settings fail in a measured way (InvertedPendulum-v5: 96-100 % of
actions at ±1, α‖∇ₐQ‖ of 100-300 against unit-size noise, evaluation at random level; notebook 05).
The "control" preset, the default of ``train`` on non-bandit envs, answers each cause with one field:
``prior_std`` (a Gaussian prior's noised score in the target, so the chain contracts; with
−α∇ₐQ it is the noised ε of N(0, σ²)·exp(α_t Q) with a level-dependent α_t = α / f_t, see
``diffusion.gaussian_prior_eps``), ``normalize_q_grad`` with α = 1 (a target of fixed size whatever the reward
scale), and ``action_candidates`` (``act`` keeps the best of N samples by the critics).
``preset="paper"`` / ``--preset paper`` is the faithful configuration.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..diffusion import Denoiser, NoiseSchedule, add_noise, ddpm_sample, gaussian_prior_eps, langevin_sample
from ..nets import TwinCritic
from ..replay import Batch
from .common import (Checkpointable, apply_preset, check_config, critic_loss, critic_target, doc, polyak_update,
                     resolve_device)  # fmt: skip


@dataclass
class QSMConfig:
    """QSM hyperparameters; every default is the paper's (``Alescontrela/score_matching_rl``)."""

    alpha: float = doc(50.0, "inverse temperature: the score is matched to alpha * grad_a Q (paper: 50)")
    T: int = doc(5, "number of diffusion (denoising) steps (paper: 5)")
    schedule: str = doc("vp", "noise schedule: vp (b_min 0.1, b_max 10), cosine or linear (paper: vp)")
    actor_hidden: tuple[int, ...] = doc((512, 512), "hidden widths of the denoiser's main MLP (paper: 512, 512)")
    critic_hidden: tuple[int, ...] = doc((512, 512), "hidden widths of each critic (paper: 512, 512)")
    actor_lr: float = doc(3e-4, "Adam learning rate of the denoiser (paper: 3e-4)")
    actor_lr_decay_steps: int = doc(2_000_000, "cosine decay of the actor lr to 0 over this many updates; 0 = constant (paper: 2e6)")
    critic_lr: float = doc(3e-4, "Adam learning rate of the critics (paper: 3e-4)")
    gamma: float = doc(0.99, "discount factor (paper: 0.99)")
    tau: float = doc(0.005, "Polyak rate of the target critics (paper: 0.005)")
    batch_size: int = doc(256, "minibatch size (paper: 256)")
    exploration_noise: float = doc(0.1, "std of Gaussian noise added to actions while acting (paper: 0.1)")
    target_noise: float = doc(0.1, "std of Gaussian noise added to a' in the TD target (paper: 0.1)")
    temperature: float = doc(1.0, "scale of the noise added in each DDPM reverse step (paper: 1.0)")
    normalize_q_grad: bool = doc(False, "divide grad_a Q by its batch-mean norm, so alpha no longer depends on the reward scale (paper: False)")
    denoise_weight: float = doc(0.0, "weight of the plain DDPM denoising target (the drawn noise z) added to the actor's target; 0 = paper")
    prior_std: float = doc(0.0, "std of a Gaussian prior N(0, prior_std^2) whose noised score is added to the actor's target (a prior times a Boltzmann factor, see diffusion.gaussian_prior_eps): it holds DDPM samples inside the box (0 = paper: no prior)")
    sampler: str = doc("ddpm", "how actions are drawn: ddpm (paper) or langevin (learned score as Langevin drift)")
    langevin_steps: int = doc(100, "Langevin steps per sample when sampler=langevin")
    langevin_step_size: float = doc(2e-3, "Langevin step size eta when sampler=langevin")
    action_candidates: int = doc(1, "act() draws this many policy samples per state and takes the one the critics rate highest (1 = paper: a single sample)")
    warmup_steps: int = doc(10_000, "uniform-random actions before learning starts (paper: 10000)")
    buffer_size: int = doc(1_000_000, "replay buffer capacity (paper: 1e6)")
    device: str = doc("auto", "torch device: auto (CUDA if present), cpu or cuda")
    compile: str = doc("auto", "torch.compile the update's two losses (forward and backward) at the first update: on, off, or auto = on for runs long enough to repay it (qsm.COMPILE_MIN_UPDATES updates) when a C++ compiler is present")

    def __post_init__(self):
        check_config(self)
        if self.sampler not in ("ddpm", "langevin"):
            raise ValueError(f"sampler must be 'ddpm' or 'langevin', got {self.sampler!r}")
        if isinstance(self.compile, bool):  # configs saved before the redesign
            self.compile = "on" if self.compile else "off"
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile (--compile) must be auto, on or off, got {self.compile!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "QSMConfig":
        """Named deviations from the paper, each chosen by measurement (see ``PRESETS``)."""
        return apply_preset(cls, PRESETS, name, "QSM", overrides)


# Deviations from the paper, by purpose. "paper" is the faithful setting.
PRESETS: dict[str, dict] = {
    "paper": {},
    # Toy bandits on a 2-core CPU: small networks (the problem is 2-D), a short warm-up (the whole
    # action space is one state), Langevin sampling so interior modes survive, alpha sized to
    # rewards of height ~1 (exp(alpha * r) then separates peaks from valleys by e^-alpha).
    "bandit": dict(
        alpha=20.0,
        langevin_steps=50,
        actor_hidden=(128, 128),
        critic_hidden=(128, 128),
        actor_lr=1e-3,
        critic_lr=1e-3,
        actor_lr_decay_steps=0,
        sampler="langevin",
        warmup_steps=256,
        buffer_size=100_000,
    ),
    # Control tasks (InvertedPendulum-v5, DMC) on a CPU budget. Each change answers a measured cause
    # of the paper's settings failing there (benchmarks/results/qsm_inverted_pendulum_diagnosis.csv):
    # - prior_std: the 5-step DDPM chain divides by √α_t at every step and QSM's target has no term
    #   pulling actions back, so 65-100 % of sampled actions sat at ±1 (bang-bang). A Gaussian
    #   prior's noised score in the target pulls every reverse step toward 0 (a prior N(0, 0.5²) times
    #   a Boltzmann factor, gaussian_prior_eps says exactly which): interior actions.
    # - normalize_q_grad, alpha=1: α‖∇ₐQ‖ reached 100-300 (loss 1e4-1e5, unfittable) as Q grew
    #   with the returns; dividing ∇ₐQ by its batch-mean norm keeps the target's size fixed.
    # - action_candidates: the policy's spread (std ≈ 0.35) is exploration, but a balancing task
    #   needs precise actions; act() takes the best of 16 samples by the critics (as later papers'
    #   QSM baselines do, "best-of-N").
    # - 256-wide networks (the baselines' width, several times cheaper on a CPU), constant actor lr.
    "control": dict(
        prior_std=0.5,
        normalize_q_grad=True,
        alpha=1.0,
        action_candidates=16,
        actor_hidden=(256, 256),
        critic_hidden=(256, 256),
        actor_lr_decay_steps=0,
    ),
}


# ----------------------------------------------------------------------------------------------
# The equations of the method, one function each
# ----------------------------------------------------------------------------------------------
Denoise = Callable[[Tensor, Tensor, Tensor], Tensor]  # ε_θ(s, a_t, t)
Critic = Callable[[Tensor, Tensor], Tensor]  # (s, a) → [Q₁, Q₂], shape [2, B]


class UpdateNoise(NamedTuple):
    """Every random draw of one update, in the order the authors' code makes them; ``update``
    takes it as an argument, so a test can replay another implementation's draws."""

    chain: Tensor | None  # the TD target's sampler at s′: DDPM a_T, z_{T−1} … z_0 [T+1, B, A] (None: nothing bootstraps)
    target: Tensor | None  # N(0, I) [B, A], times target_noise, added to a′
    t: Tensor  # the actor step's noise levels, uniform in {0 … T−1} [B]
    z: Tensor  # the actor step's noise: a_t = √ᾱ_t a + √(1 − ᾱ_t) z [B, A]


def policy_sample(actor: Denoise, schedule: NoiseSchedule, cfg: QSMConfig, obs: Tensor, chain: Tensor) -> Tensor:
    """Actions from the policy at ``obs`` given the sampler's noise ``chain`` (``draw_chain_noise``)."""
    if cfg.sampler == "langevin":
        t0 = torch.zeros(obs.shape[0], dtype=torch.long, device=obs.device)
        return langevin_sample(lambda a: -actor(obs, a, t0), chain[0], cfg.langevin_step_size, cfg.langevin_steps, noise=chain[1:])
    return ddpm_sample(actor, schedule, obs, chain.shape[-1], cfg.temperature, noise=chain)


def q_action_gradient(critic: Critic, obs: Tensor, actions: Tensor) -> Tensor:
    """g = ½ (∇ₐQ₁ + ∇ₐQ₂)(s, a): the mean of both online critics' action-gradients, a constant."""
    with torch.no_grad():  # torch.func.grad still differentiates in a; no graph to the critics' weights
        return torch.func.grad(lambda a: critic(obs, a).mean(dim=0).sum())(actions)


def q_score_target(g: Tensor, alpha: float, normalize: bool = False) -> Tensor:
    """The regression target for ε_θ at a noised action, from g = ∇ₐQ(s, a_t):  −α · g.

    With ``normalize``, g is divided by its mean norm over the batch, −α · g / mean‖g‖: the
    target's size no longer grows with the reward scale and the critic's values (a deviation).
    """
    if normalize:
        g = g / (g.norm(dim=-1).mean() + 1e-6)
    return -alpha * g


def actor_loss(eps_pred: Tensor, target: Tensor) -> Tensor:
    """Mean over batch and action dimensions of (ε_θ(s, a_t, t) − target)²."""
    return ((eps_pred - target) ** 2).mean()


# ----------------------------------------------------------------------------------------------
# The update's two losses: what runs, for one seed (modules) or many (torch.func, see seeds.py)
# ----------------------------------------------------------------------------------------------
def qsm_critic_loss(critic: Critic, target_critic: Critic, actor: Denoise, schedule: NoiseSchedule, cfg: QSMConfig,
                    batch: Batch, noise: UpdateNoise) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Step 1: Σᵢ mean (Qᵢ(s, a) − y)², with y from the target critics at a′ = the current actor's
    sample at s′ plus N(0, target_noise²), clipped. Returns (loss, Q [2, B])."""
    with torch.no_grad():
        if noise.chain is None:  # every transition ended (a bandit's): nothing bootstraps, y = r
            next_q = torch.zeros(2, *batch.reward.shape, device=batch.reward.device)
        else:
            next_a = policy_sample(actor, schedule, cfg, batch.next_obs, noise.chain)
            next_a = (next_a + cfg.target_noise * noise.target).clamp(-1.0, 1.0)
            next_q = target_critic(batch.next_obs, next_a)
        y = critic_target(batch.reward, batch.mask, cfg.gamma, next_q)
    q = critic(batch.obs, batch.action)
    return critic_loss(q, y), q



def qsm_actor_loss(actor: Denoise, critic: Critic, schedule: NoiseSchedule, cfg: QSMConfig, batch: Batch,
                   noise: UpdateNoise) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Step 2: ‖ε_θ(s, a_t, t) − (−α g)‖² at the noised replay action a_t, g = ∇ₐQ(s, a_t) of the
    online critics (after step 1). The deviations' terms are zero at the paper's settings. Returns
    (loss, g)."""
    noised = add_noise(schedule, batch.action, noise.t, noise.z)
    g = q_action_gradient(critic, batch.obs, noised)
    target = q_score_target(g, cfg.alpha, cfg.normalize_q_grad)
    target = target + cfg.denoise_weight * noise.z + gaussian_prior_eps(schedule, noised, noise.t, cfg.prior_std)
    return actor_loss(actor(batch.obs, noised, noise.t), target), g


# ----------------------------------------------------------------------------------------------
# Random draws and compilation
# ----------------------------------------------------------------------------------------------
def draw_chain_noise(cfg: QSMConfig, T: int, batch_size: int, act_dim: int, device) -> Tensor:
    """The sampler's noise for ``batch_size`` actions: DDPM a_T and z's [T+1, B, A]; Langevin a
    uniform start and its z's [steps+1, B, A]."""
    if cfg.sampler == "langevin":
        start = torch.rand(1, batch_size, act_dim, device=device) * 2 - 1
        return torch.cat([start, torch.randn(cfg.langevin_steps, batch_size, act_dim, device=device)])
    return torch.randn(T + 1, batch_size, act_dim, device=device)


def draw_update_noise(cfg: QSMConfig, T: int, batch: Batch) -> UpdateNoise:
    """One update's draws from torch's generator, in the authors' order (chain, target, t, z)."""
    B, A = batch.action.shape
    device = batch.action.device
    bootstraps = bool(batch.mask.any())
    chain = draw_chain_noise(cfg, T, B, A, device) if bootstraps else None
    target = torch.randn(B, A, device=device) if bootstraps else None
    return UpdateNoise(chain, target, torch.randint(0, T, (B,), device=device), torch.randn(B, A, device=device))


COMPILE_MIN_UPDATES = 20_000
"""``compile="auto"`` compiles for runs of at least this many updates: compiling costs tens of
seconds at the first update, which a run repays only over thousands of updates (docs/performance.md)."""


def resolve_compile(config: QSMConfig, planned_updates: int) -> QSMConfig:
    """``config`` with ``compile="auto"`` decided for a run of ``planned_updates`` updates: "on"
    when it is long enough to repay compiling and a C++ compiler is present (else "off", saying why
    in one line). An agent made directly (notebooks, tests) treats "auto" as "off"."""
    if config.compile != "auto":
        return config
    if planned_updates < COMPILE_MIN_UPDATES:
        return replace(config, compile="off")
    missing = missing_compiler(resolve_device(config.device))
    if missing:
        print(f"qsm: running the update eagerly: torch.compile {missing}")
    return replace(config, compile="off" if missing else "on")


def missing_compiler(device: torch.device) -> str | None:
    """Why TorchInductor cannot compile for ``device`` here, or None: on a CPU it writes C++."""
    if device.type != "cpu":
        return None
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return "needs a C++ compiler for TorchInductor's CPU code"
    return None


def compiled(loss_fn, device: torch.device):
    """``torch.compile`` of a loss function, forward and backward. On CUDA also captured in CUDA
    graphs ("reduce-overhead"): one launch per graph instead of one per kernel, which is where a
    GPU's time goes at these network sizes."""
    # torch's compiler imports its deprecated jit helpers and warns several times: not ours to fix
    warnings.filterwarnings("ignore", message="`torch.jit.script_method` is deprecated", category=DeprecationWarning)
    if device.type == "cuda":
        loss_fn = torch.compile(loss_fn, dynamic=False, mode="reduce-overhead")
    else:  # C++ instead of Python between the kernels, forward and backward: faster (docs/performance.md)
        loss_fn = torch.compile(loss_fn, dynamic=False, options={"cpp_wrapper": True})

    def call(*args):
        # Compiling happens inside the first call. Let the backward recompute cheap pointwise values
        # (a ReLU's mask) rather than save them: on a CPU Inductor stores bool masks slowly, which
        # cost vmapped seeds a third of their update (docs/performance.md).
        with torch._functorch.config.patch(aggressive_recomputation=True):
            return loss_fn(*args)

    return call


def adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam; fused (one kernel for all parameters, the same arithmetic) where torch has it."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))


def minimise(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# ----------------------------------------------------------------------------------------------
# The agent
# ----------------------------------------------------------------------------------------------
class QSMAgent(Checkpointable):
    """A diffusion policy ε_θ and twin critics, updated by ``update(batch)``."""

    algo = "qsm"
    checkpoint_parts = ("actor", "critic", "critic_target", "actor_opt", "critic_opt", "actor_sched")

    def __init__(self, obs_dim: int, act_dim: int, config: QSMConfig | None = None):
        self.config = cfg = config or QSMConfig()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = resolve_device(cfg.device)
        self.schedule = NoiseSchedule.from_name(cfg.schedule, cfg.T).to(self.device)
        self.actor = Denoiser(obs_dim, act_dim, cfg.actor_hidden, n_levels=cfg.T).to(self.device)
        self.critic = TwinCritic(obs_dim, act_dim, cfg.critic_hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, self.device)
        self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, self.device)
        self.actor_sched = torch.optim.lr_scheduler.LambdaLR(self.actor_opt, self._actor_lr_factor)
        self.n_updates = 0
        self.compiled = cfg.compile == "on"
        if self.compiled and missing_compiler(self.device):
            raise ValueError(f"compile=on (--compile on) {missing_compiler(self.device)}: install g++ (or set CXX), or use --compile off")
        self.critic_loss, self.actor_loss = self._critic_loss, self._actor_loss
        if self.compiled:
            self.critic_loss, self.actor_loss = compiled(self._critic_loss, self.device), compiled(self._actor_loss, self.device)

    def _actor_lr_factor(self, step: int) -> float:
        n = self.config.actor_lr_decay_steps
        return 1.0 if n <= 0 else 0.5 * (1 + math.cos(math.pi * min(step, n) / n))

    # -- learning ------------------------------------------------------------------------------
    def update(self, batch: Batch, noise: UpdateNoise | None = None) -> dict[str, float]:
        """One critic step, one target update, then one actor step (the authors' order)."""
        noise = noise or draw_update_noise(self.config, self.schedule.T, batch)
        metrics = self.update_critic(batch, noise)
        polyak_update(self.critic_target, self.critic, self.config.tau)
        metrics.update(self.update_actor(batch, noise))
        self.n_updates += 1
        return metrics

    def update_critic(self, batch: Batch, noise: UpdateNoise | None = None) -> dict[str, float]:
        noise = noise or draw_update_noise(self.config, self.schedule.T, batch)
        loss, q = self.critic_loss(batch, noise)
        minimise(self.critic_opt, loss)
        return {"critic_loss": loss.item(), "q_mean": q.mean().item()}

    def update_actor(self, batch: Batch, noise: UpdateNoise | None = None) -> dict[str, float]:
        noise = noise or draw_update_noise(self.config, self.schedule.T, batch)
        loss, g = self.actor_loss(batch, noise)
        minimise(self.actor_opt, loss)
        self.actor_sched.step()
        return {"actor_loss": loss.item(), "grad_q_norm": g.norm(dim=-1).mean().item()}

    def _critic_loss(self, batch: Batch, noise: UpdateNoise) -> tuple[Tensor, Tensor]:
        return qsm_critic_loss(self.critic, self.critic_target, self.actor, self.schedule, self.config, batch, noise)

    def _actor_loss(self, batch: Batch, noise: UpdateNoise) -> tuple[Tensor, Tensor]:
        return qsm_actor_loss(self.actor, self.critic, self.schedule, self.config, batch, noise)

    # -- sampling ------------------------------------------------------------------------------
    def learned_score(self, obs: Tensor, actions: Tensor) -> Tensor:
        """The policy's score estimate −ε_θ(s, a, t=0) ≈ α∇ₐQ (what QSM trains it to be)."""
        t0 = torch.zeros(actions.shape[0], dtype=torch.long, device=actions.device)
        return -self.actor(obs, actions, t0)

    @torch.no_grad()
    def sample(self, obs: Tensor) -> Tensor:
        """One action per row of ``obs`` from the policy (no exploration noise), in [−1, 1]."""
        chain = draw_chain_noise(self.config, self.schedule.T, obs.shape[0], self.act_dim, obs.device)
        return policy_sample(self.actor, self.schedule, self.config, obs, chain)

    @torch.no_grad()
    def best_of_candidates(self, obs: Tensor) -> Tensor:
        """``sample``, but with ``action_candidates`` = N > 1 draw N samples per row of ``obs`` and
        keep the one with the highest min(Q₁, Q₂): the critic picks among the policy's proposals."""
        n = self.config.action_candidates
        if n == 1:
            return self.sample(obs)
        rows = obs.repeat_interleave(n, dim=0)
        candidates = self.sample(rows)
        q = self.critic(rows, candidates).min(dim=0).values.view(obs.shape[0], n)
        best = q.argmax(dim=1)
        return candidates.view(obs.shape[0], n, -1)[torch.arange(obs.shape[0], device=obs.device), best]

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """An action for one observation (or a batch). ``deterministic`` drops the exploration
        noise; the DDPM sample itself stays stochastic, as in the paper's evaluation."""
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        single = obs_t.ndim == 1
        a = self.best_of_candidates(obs_t.reshape(-1, self.obs_dim))
        if not deterministic:
            a = (a + self.config.exploration_noise * torch.randn_like(a)).clamp(-1.0, 1.0)
        a = a.cpu().numpy()
        return a[0] if single else a

    @torch.no_grad()
    def sample_actions(self, obs: np.ndarray, n: int) -> Tensor:
        """``n`` policy samples for one observation, shape [n, act_dim] (for plots)."""
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=self.device).reshape(1, -1)
        return self.sample(obs_t.expand(n, -1)).cpu()
