"""The diffusion policy: noise schedules, the denoiser network, and the samplers.

Notation (DDPM, noise-prediction form). Step indices run t = 0 … T−1 (index t is the paper's step
t+1). With β_t the noise added at step t, α_t = 1 − β_t and ᾱ_t = ∏_{j≤t} α_j:

    forward (noising):   a_t = √ᾱ_t · a_0 + √(1 − ᾱ_t) · z,             z ~ N(0, I)
    reverse (one step):  a_{t−1} = (a_t − β_t / √(1 − ᾱ_t) · ε_θ(s, a_t, t)) / √α_t + √β_t · τ · z

The network ε_θ predicts the noise; −ε_θ / √(1 − ᾱ_t) is the score ∇ₐ log p_t(a | s). QSM trains
ε_θ so that every reverse step moves *up* the critic's action-gradient (see ``algos/qsm.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .nets import Mish, mlp, xavier_init_


# ----------------------------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseSchedule:
    """The β_t of a T-step diffusion, with α_t = 1 − β_t and ᾱ_t = ∏_{j≤t} α_j (t = 0 … T−1)."""

    betas: Tensor

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @property
    def alphas_bar(self) -> Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @classmethod
    def vp(cls, T: int, beta_min: float = 0.1, beta_max: float = 10.0) -> "NoiseSchedule":
        """The variance-preserving schedule of the QSM code (its default, b_min 0.1, b_max 10).

        β_i = 1 − exp(−b_min/T − ½(b_max − b_min)(2i − 1)/T²),  i = 1 … T.
        """
        _check_T(T)
        i = torch.arange(1, T + 1, dtype=torch.float64)
        betas = 1.0 - torch.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 * i - 1) / T**2)
        return cls(betas.float())

    @classmethod
    def cosine(cls, T: int, s: float = 0.008) -> "NoiseSchedule":
        """The cosine schedule of Nichol & Dhariwal: ᾱ(t) ∝ cos²((t/T + s)/(1 + s) · π/2), β ≤ 0.999."""
        _check_T(T)
        x = torch.linspace(0, T, T + 1, dtype=torch.float64)
        f = torch.cos((x / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        return cls(betas.float())

    @classmethod
    def linear(cls, T: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> "NoiseSchedule":
        """β linear from ``beta_start`` to ``beta_end`` (the original DDPM schedule, meant for T ≈ 1000)."""
        _check_T(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64).float())

    @classmethod
    def from_name(cls, name: str, T: int) -> "NoiseSchedule":
        """``"vp"``, ``"cosine"`` or ``"linear"`` with T steps."""
        makers = {"vp": cls.vp, "cosine": cls.cosine, "linear": cls.linear}
        if name not in makers:
            raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(makers)}")
        return makers[name](T)

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        return NoiseSchedule(self.betas.to(device))


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"the number of diffusion steps T must be a positive integer, got {T!r}")


def add_noise(schedule: NoiseSchedule, a0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Forward noising q(a_t | a_0):  a_t = √ᾱ_t · a_0 + √(1 − ᾱ_t) · z.

    ``t`` holds one step index per row of ``a0`` (shape [B]); ``noise`` has the shape of ``a0``.
    """
    abar = schedule.alphas_bar.to(a0.device)[t].unsqueeze(-1)
    return abar.sqrt() * a0 + (1.0 - abar).sqrt() * noise


# ----------------------------------------------------------------------------------------------
# The denoiser ε_θ(s, a_t, t)
# ----------------------------------------------------------------------------------------------
class FourierTimeFeatures(nn.Module):
    """Learnable Fourier features of the integer step t: [cos 2πtW, sin 2πtW], W ~ N(0, σ²) at init."""

    def __init__(self, n_frequencies: int = 32, init_std: float = 0.2):
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_frequencies) * init_std)

    def forward(self, t: Tensor) -> Tensor:
        angles = 2 * math.pi * t.float().unsqueeze(-1) * self.W  # t is the raw index, not t/T
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class Denoiser(nn.Module):
    """ε_θ(s, a_t, t): the noise-prediction network of the QSM code.

    t → Fourier features (32 frequencies → 64) → 128 → Mish → 128; then
    [a_t, s, time features] → hidden → Mish → hidden → Mish → |A| (linear output, no layer norm).
    ``n_levels`` (the diffusion's T, when known) lets ``forward`` embed each level once.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...] = (512, 512),
        time_hidden: int = 128,
        n_frequencies: int = 32,
        n_levels: int | None = None,
    ):
        super().__init__()
        self.obs_dim, self.act_dim, self.n_levels = obs_dim, act_dim, n_levels
        self.time_features = FourierTimeFeatures(n_frequencies)
        self.time_mlp = mlp([2 * n_frequencies, time_hidden, time_hidden], Mish)
        self.net = mlp([act_dim + obs_dim + time_hidden, *hidden, act_dim], Mish)
        xavier_init_(self.time_mlp)
        xavier_init_(self.net)

    def forward(self, obs: Tensor, a_t: Tensor, t: Tensor) -> Tensor:
        """ε for each row: ``net`` on [a_t, s, time features of t], its first layer split by columns.
        The time columns (with the bias) give a bias that depends on the level only, so with
        ``n_levels`` each level's is computed once: T rows of products instead of one per row."""
        first, n_in = self.net[0], self.act_dim + self.obs_dim
        levels, rows = (t, slice(None)) if self.n_levels is None else (torch.arange(self.n_levels, device=t.device), t)
        level_bias = F.linear(self.time_mlp(self.time_features(levels)), first.weight[:, n_in:], first.bias)
        hidden = F.linear(torch.cat([a_t, obs], dim=-1), first.weight[:, :n_in]) + level_bias[rows]
        return self.net[1:](hidden)


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------
def ddpm_step(
    schedule: NoiseSchedule,
    eps: Tensor,
    a_t: Tensor,
    t: int,
    noise: Tensor,
    temperature: float = 1.0,
    clip: float | None = 1.0,
) -> Tensor:
    """One ancestral reverse step at noise level t (0-based, t = T−1 … 0), as in the QSM code:

        a_{t−1} = (a_t − β_t / √(1 − ᾱ_t) · ε) / √α_t  +  [t > 0] · √β_t · τ · z,

    then clipped to [−clip, clip]. Note the added noise has variance β_t (not the DDPM posterior
    variance), which is what the authors' code uses.
    """
    beta, alpha, abar = schedule.betas[t], schedule.alphas[t], schedule.alphas_bar[t]
    a = (a_t - beta / torch.sqrt(1 - abar) * eps) / torch.sqrt(alpha)
    if t > 0:
        a = a + torch.sqrt(beta) * temperature * noise
    if clip is not None:
        a = a.clamp(-clip, clip)
    return a


def ddpm_sample(
    denoiser: Callable[[Tensor, Tensor, Tensor], Tensor],
    schedule: NoiseSchedule,
    obs: Tensor,
    act_dim: int,
    temperature: float = 1.0,
    clip: float | None = 1.0,
    generator: torch.Generator | None = None,
    return_chain: bool = False,
    noise: Tensor | None = None,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Ancestral DDPM sampling, one action per row of ``obs``, in the notebooks' 0-based indexing:
    the noise levels are t = 0 … T−1, the chain starts at the most-noised level, a_{T−1} ~ N(0, I),
    and ``ddpm_step`` at level t maps a_t to a_{t−1}, for t = T−1 … 0; the last step's output a_{−1}
    is the sample returned. (The paper counts levels from 1: its a_T … a_0 are our a_{T−1} … a_{−1}.)
    ``noise`` [T + 1, B, |A|] supplies a_{T−1} and each step's z (drawn here when None, in that
    order). With ``return_chain`` also returns the list [a_{T−1}, a_{T−2}, …, a_0, a_{−1}] of T + 1
    tensors (for plots)."""
    B, device = obs.shape[0], obs.device
    if noise is None:
        noise = torch.randn(schedule.T + 1, B, act_dim, generator=generator, device=device)
    a = noise[0]
    chain = [a]
    for i, t in enumerate(reversed(range(schedule.T)), start=1):
        t_batch = torch.full((B,), t, dtype=torch.long, device=device)
        a = ddpm_step(schedule, denoiser(obs, a, t_batch), a, t, noise[i], temperature, clip)
        chain.append(a)
    return (a, chain) if return_chain else a


def gaussian_prior_eps(schedule: NoiseSchedule, a_t: Tensor, t: Tensor, prior_std: float) -> Tensor:
    """ε of a Gaussian prior N(0, σ²) at noise level t:  √(1−ᾱ_t) · a_t / (ᾱ_t σ² + 1 − ᾱ_t).

    a_t = √ᾱ_t a + √(1−ᾱ_t) z with a ~ N(0, σ²) is N(0, ᾱ_t σ² + 1 − ᾱ_t), whose score is
    −a_t / (ᾱ_t σ² + 1 − ᾱ_t), and ε = −√(1−ᾱ_t) · score: the term that pulls each reverse step back
    toward 0, which QSM's target lacks (``QSMConfig.prior_std``; σ = 0 gives zeros).

    What the sum with QSM's −α∇ₐQ is, exactly: for a linear Q = g·a, the noised ε of
    N(0, σ²)·exp(αQ) is this term − α f_t g with f_t = √(ᾱ_t(1−ᾱ_t)) σ² / (ᾱ_t σ² + 1 − ᾱ_t)
    (0.02 … 0.25 for the VP schedule and σ = 0.5). So "this term − α g" is the noised ε of
    N(0, σ²)·exp((α / f_t) Q): a prior times a Boltzmann factor whose inverse temperature grows as
    the noise level falls (tests/test_diffusion.py checks both statements by numerical integration).
    Shapes: a_t [..., B, A], t [..., B].
    """
    if prior_std == 0:
        return torch.zeros_like(a_t)
    abar = schedule.alphas_bar[t].unsqueeze(-1)
    return (1 - abar).sqrt() * a_t / (abar * prior_std**2 + 1 - abar)


def langevin_sample(
    score: Callable[[Tensor], Tensor],
    a0: Tensor,
    step_size: float = 1e-3,
    n_steps: int = 200,
    clip: float | None = 1.0,
    generator: torch.Generator | None = None,
    return_chain: bool = False,
    noise: Tensor | None = None,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Unadjusted Langevin dynamics with drift ``score(a)`` (for example α∇ₐQ):

        a ← a + η · score(a) + √(2η) · z

    whose stationary density is ∝ exp(∫score), e.g. exp(α·Q)/Z, up to an O(η) bias. With ``clip``
    the chain is reflected at the box's faces, so the box is the support (reflection, unlike
    clipping, keeps the stationary density uniform-correct at the boundary). ``noise``
    [n_steps, *a0.shape] supplies the z's (drawn step by step when None).
    """
    a = a0.clone()
    chain = [a]
    noise_scale = math.sqrt(2 * step_size)
    for i in range(n_steps):
        z = torch.randn(a.shape, generator=generator, device=a.device) if noise is None else noise[i]
        a = a + step_size * score(a) + noise_scale * z
        if clip is not None:
            a = reflect_into_box(a, clip)
        if return_chain:
            chain.append(a)
    return (a, chain) if return_chain else a


def reflect_into_box(a: Tensor, bound: float = 1.0) -> Tensor:
    """Reflect points at the faces of [−bound, bound]^d (folding any overshoot back inside)."""
    period = 4 * bound
    x = torch.remainder(a + bound, period)  # in [0, 4b)
    return torch.where(x > 2 * bound, period - x, x) - bound
