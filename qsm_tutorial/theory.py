"""QSM with an *exact* critic: the actor step on its own, and the policy-improvement theorem, numerically.

With a learned critic two things change at once (the critic and the actor), so it is hard to see
what the actor step alone does. Here the critic is exact:

- on a bandit, ∇ₐQ = ∇ₐr is known in closed form: :func:`exact_qsm_actor_steps` is the QSM actor
  update with that gradient in place of the critic's (the paper's Figure 1: a random score field
  turning toward ∇ₐQ);
- on a gridworld, Q^π of *any* policy given by action samples is one linear solve
  (``GridWorld.evaluate_policy``): :func:`qsm_policy_improvement` alternates exact policy
  evaluation with a QSM actor fit and checks the theorem of the paper, that moving the policy along
  a score matched to ∇ₐQ^π does not decrease its value.

The policy of the gridworld experiment is a *particle policy driven by a learned score*: in each
state s it plays one of N actions a_1..a_N (its particles) uniformly. One iteration:

    1. evaluate:  V^π, Q^π  = exact, from the particles (``evaluate_policy``)
    2. match:     fit ε_θ(s, a_t, t) to −α·∇ₐQ^π(s, a_t) at noised particles a_t (the QSM loss,
                  the denoiser conditioned on the one-hot state)
    3. improve:   move every particle along the learned score, a ← clip(a + η·(−ε_θ(s, a, 0)))

Step 3 is the deterministic (noise-free) part of Langevin dynamics with the learned score: with no
noise the policy heads for argmax Q rather than exp(α·Q), which is what makes the value monotone
(the noise of Langevin dynamics trades value for entropy). By the performance-difference lemma,
V^π′ − V^π = Σ_s d^π′(s)·(E_{a∼π′(s)} Q^π(s, a) − V^π(s)), and each particle's Q^π(s, a) rises to
first order by η·⟨−ε_θ, ∇ₐQ^π⟩ ≥ 0 where the score is aligned: so V^π cannot decrease unless the
learned score points against ∇ₐQ^π somewhere the policy acts. The experiment records both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .algos.qsm import actor_loss
from .diffusion import Denoiser, NoiseSchedule, add_noise
from .envs.gridworld import LAYOUTS, GridWorld
from .fields import alignment

__all__ = ["exact_qsm_actor_steps", "ImprovementResult", "qsm_policy_improvement"]


# ----------------------------------------------------------------------------------------------
# The QSM actor step with an exact ∇ₐQ
# ----------------------------------------------------------------------------------------------
def exact_qsm_actor_steps(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    grad_q: Callable[[Tensor], Tensor],
    alpha: float,
    n_steps: int,
    optimizer: torch.optim.Optimizer,
    batch_size: int = 256,
    obs: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> list[float]:
    """``n_steps`` QSM actor updates of ``denoiser`` against an exact action-gradient.

    Each step: replay actions a ~ U([−1, 1]²) (a bandit's warm-up buffer), t ~ U{0 … T−1},
    a_t = √ᾱ_t·a + √(1 − ᾱ_t)·z, and one ``optimizer`` step on the QSM loss
    mean (ε_θ(s, a_t, t) + α·∇ₐQ(a_t))², with ``grad_q(a_t)`` in place of the critics' gradient.
    ``obs`` is the one observation (None: zeros, a bandit's). Returns the losses.
    """
    d = denoiser.act_dim
    o = torch.zeros(denoiser.obs_dim) if obs is None else torch.as_tensor(obs, dtype=torch.float32).reshape(-1)
    o = o.expand(batch_size, -1)
    losses = []
    for _ in range(n_steps):
        a = torch.rand(batch_size, d, generator=generator) * 2 - 1
        t = torch.randint(0, schedule.T, (batch_size,), generator=generator)
        a_t = add_noise(schedule, a, t, torch.randn(batch_size, d, generator=generator))
        target = -alpha * grad_q(a_t).to(torch.float32).detach()
        loss = actor_loss(denoiser(o, a_t, t), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------------------------
# The policy-improvement theorem on a gridworld with exact Q^π
# ----------------------------------------------------------------------------------------------
@dataclass
class ImprovementResult:
    """What :func:`qsm_policy_improvement` measured, one entry per iteration.

    ``start_values`` [n_iterations + 1]: V^π(start) of the particle policy before each iteration
    and after the last; ``mean_values``: V^π averaged over the non-terminal states (also monotone);
    ``alignment`` [n_iterations]: mean cosine between the learned score −ε_θ(s, a, 0) and ∇ₐQ^π(s, a)
    at the particles (states and particles where either vector is negligible left out);
    ``optimal_start_value``: V*(start); ``particles`` [n_states, N, 2]: the final policy;
    ``values``: the final V^π [n_states].
    """

    layout: str
    slip: float
    alpha: float
    start_values: np.ndarray
    mean_values: np.ndarray
    alignment: np.ndarray
    optimal_start_value: float
    particles: Tensor
    values: Tensor
    seconds: float
    env: object = field(repr=False, default=None)

    @property
    def largest_decrease(self) -> float:
        """max_k (V_k − V_{k+1})(start), ≤ 0 when the sequence never decreases."""
        return float(np.max(-np.diff(self.start_values))) if len(self.start_values) > 1 else 0.0


def qsm_policy_improvement(
    layout: str = "cliff",
    slip: float = 0.0,
    n_iterations: int = 40,
    n_particles: int = 16,
    alpha: float = 10.0,
    step_size: float = 0.01,
    move_steps: int = 4,
    fit_steps: int = 25,
    hidden: tuple[int, ...] = (64, 64),
    lr: float = 3e-3,
    T: int = 5,
    seed: int = 0,
    **env_kwargs,
) -> ImprovementResult:
    """Repeated QSM improvement of a particle policy on ``gridworld/<layout>`` with exact Q^π.

    Each iteration evaluates the policy exactly, fits a state-conditioned denoiser to the QSM target
    −α·∇ₐQ^π at noised particles (``fit_steps`` Adam steps, VP schedule with ``T`` steps), then moves
    each particle ``move_steps`` times by η·(−ε_θ(s, a, 0)), clipped to the box (η = ``step_size``;
    the learned −ε ≈ α∇ₐQ, so a particle moves about η·α·‖∇ₐQ^π‖ per step). The particles start
    uniform on [−1, 1]² in every state: a random policy. The denoiser keeps its weights from one
    iteration to the next (warm start), as QSM's actor does. A negative ``alpha`` matches the score
    to −∇ₐQ^π: a control that must make the policy worse. ``env_kwargs`` go to :class:`GridWorld`
    (``sharpness``, ``gamma``, ...).
    """
    if alpha == 0:
        raise ValueError("alpha must be nonzero (the score is matched to alpha * grad_a Q)")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the denoiser's initial weights
    if layout not in LAYOUTS:
        raise ValueError(f"unknown gridworld layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    env = GridWorld(LAYOUTS[layout], name=layout, slip=slip, **env_kwargs)
    S = env.n_states
    live = ~env.is_terminal
    schedule = NoiseSchedule.vp(T)
    denoiser = Denoiser(S, 2, hidden=hidden, time_hidden=32, n_frequencies=8)
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    onehot = torch.eye(S)
    obs = onehot.unsqueeze(1).expand(S, n_particles, S).reshape(-1, S)
    states = torch.arange(S).unsqueeze(1).expand(S, n_particles)  # [S, N]

    particles = torch.rand(S, n_particles, 2, generator=gen, dtype=torch.float64) * 2 - 1
    start_values, mean_values, aligns = [], [], []

    def learned_score(a: Tensor) -> Tensor:  # −ε_θ(s, a, 0) at every particle, [S, N, 2]
        with torch.no_grad():
            t = torch.zeros(S * n_particles, dtype=torch.long)
            return -denoiser(obs, a.reshape(-1, 2).float(), t).reshape(S, n_particles, 2).double()

    for _ in range(n_iterations):
        # 1. exact policy evaluation of the particle policy
        sol = env.evaluate_policy(particles)
        start_values.append(sol.start_value)
        mean_values.append(float(sol.V[live].mean()))
        # 2. QSM: regress ε_θ(s, a_t, t) onto −α ∇ₐQ^π(s, a_t) at noised particles
        for _ in range(fit_steps):
            t = torch.randint(0, T, (S * n_particles,), generator=gen)
            z = torch.randn(S * n_particles, 2, generator=gen)
            a_t = add_noise(schedule, particles.reshape(-1, 2).float(), t, z)
            g = sol.action_gradient(states, a_t.reshape(S, n_particles, 2).double()).reshape(-1, 2)
            loss = actor_loss(denoiser(obs, a_t, t), (-alpha * g).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        # 3. move the particles along the learned score; record its alignment with ∇ₐQ^π there
        grad_here = sol.action_gradient(states, particles)
        score = learned_score(particles)
        aligns.append(alignment(score[live], grad_here[live]).mean)
        for _ in range(move_steps):
            particles = (particles + step_size * learned_score(particles)).clamp(-1.0, 1.0)
        particles[~live] = 0.0  # terminal cells: no decision is made there

    final = env.evaluate_policy(particles)
    start_values.append(final.start_value)
    mean_values.append(float(final.V[live].mean()))
    return ImprovementResult(
        layout=layout,
        slip=float(slip),
        alpha=float(alpha),
        start_values=np.array(start_values),
        mean_values=np.array(mean_values),
        alignment=np.array(aligns),
        optimal_start_value=env.optimal_values().start_value,
        particles=particles,
        values=final.V,
        seconds=time.perf_counter() - t0,
        env=env,
    )
