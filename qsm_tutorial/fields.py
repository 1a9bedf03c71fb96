"""Score fields and ∇ₐQ fields on a grid of actions, as tensors (no plotting here).

QSM is a statement about two vector fields over action space, for one state s:

    the policy's score   ∇ₐ log π_t(a | s) = −ε_θ(s, a, t) / √(1 − ᾱ_t)      (at noise level t)
    the critic's slope   ∇ₐQ(s, a)

and QSM trains ε_θ so that −ε_θ(s, a, t) ≈ α·∇ₐQ(s, a). This module evaluates both fields on a
grid of actions (``qsm_tutorial.envs.bandits.action_grid(n)``, shape [n, n, 2]) and measures how
well they agree (cosine alignment). Every function takes tensors (or an env / agent that produces
them) and returns tensors; ``viz`` draws them.

    from qsm_tutorial import envs, fields
    env = envs.make("bandit/four-gaussians")
    grid = envs.bandits.action_grid(21)
    score = fields.policy_score_field(agent, None, None, grid, t=0)      # ScoreField(score, direction)
    grad_q = fields.q_gradient_field(env, grid)                           # exact ∇ₐQ = ∇ₐr
    fields.alignment(score.direction, grad_q).mean                        # mean cosine, in [−1, 1]
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .diffusion import NoiseSchedule

__all__ = [
    "ScoreField",
    "Alignment",
    "policy_score_field",
    "q_gradient_field",
    "q_value_field",
    "alignment",
    "matching_error",
    "boltzmann_weights",
    "sample_boltzmann",
]


class ScoreField(NamedTuple):
    """The policy's score at noise level t, and the raw network direction QSM trains.

    ``score``: −ε_θ(s, a, t) / √(1 − ᾱ_t) = ∇ₐ log π_t(a | s), the score of the noised policy.
    ``direction``: −ε_θ(s, a, t), the vector QSM regresses onto α·∇ₐQ(s, a). Same direction as
    ``score`` (a positive rescaling), a different magnitude.
    """

    score: Tensor
    direction: Tensor


class Alignment(NamedTuple):
    """Cosine alignment of two vector fields.

    ``cosine`` [...]: cos∠(u, v) per point, NaN where either vector is (near) zero;
    ``mask`` [...]: where the cosine is defined; ``mean``: the (weighted) mean cosine over the mask
    (NaN when the mask is empty).
    """

    cosine: Tensor
    mask: Tensor
    mean: float


# ----------------------------------------------------------------------------------------------
# The policy's score field
# ----------------------------------------------------------------------------------------------
def _as_obs(obs: Any, obs_dim: int, device: torch.device) -> Tensor:
    if obs is None:
        return torch.zeros(obs_dim, device=device)  # a bandit's one constant observation
    o = torch.as_tensor(np.asarray(obs, dtype=np.float32) if not isinstance(obs, Tensor) else obs)
    o = o.to(device=device, dtype=torch.float32).reshape(-1)
    if o.shape[0] != obs_dim:
        raise ValueError(f"obs must hold {obs_dim} numbers (one observation), got shape {tuple(o.shape)}")
    return o


def _check_actions(actions: Tensor) -> Tensor:
    a = torch.as_tensor(actions)
    if a.dim() < 2:
        raise ValueError(f"actions must have shape [..., act_dim] (e.g. a grid [n, n, 2]), got {tuple(a.shape)}")
    return a


def policy_score_field(
    policy: Any,
    schedule: NoiseSchedule | None,
    obs: Any,
    actions: Tensor,
    t: int = 0,
) -> ScoreField:
    """The policy's score at noise level ``t`` on ``actions`` [..., act_dim], for one observation.

        direction = −ε_θ(s, a, t),    score = −ε_θ(s, a, t) / √(1 − ᾱ_t).

    ``policy``: an agent with ``.actor`` (a :class:`~qsm_tutorial.diffusion.Denoiser`) and
    ``.schedule`` (e.g. ``QSMAgent``), or a denoiser itself, then with ``schedule``.
    ``schedule``: None to use the agent's. ``obs``: one observation [obs_dim]; None means zeros
    (a bandit's). ``t``: the step index in {0 … T−1}. Returns a :class:`ScoreField` of tensors
    shaped like ``actions`` (float32, on the CPU), computed without gradients.
    """
    denoiser = getattr(policy, "actor", policy)
    if schedule is None:
        schedule = getattr(policy, "schedule", None)
        if schedule is None:
            raise ValueError("pass the noise schedule, or an agent that has one (agent.schedule)")
    if not isinstance(denoiser, nn.Module):
        raise TypeError(f"policy must be an agent with .actor or a Denoiser module, got {type(policy).__name__}")
    if not 0 <= int(t) < schedule.T:
        raise ValueError(f"noise level t must be in [0, {schedule.T - 1}] for this {schedule.T}-step schedule, got {t}")
    device = next(denoiser.parameters()).device
    a = _check_actions(actions)
    shape = a.shape
    flat = a.reshape(-1, shape[-1]).to(device=device, dtype=torch.float32)
    o = _as_obs(obs, denoiser.obs_dim, device).expand(flat.shape[0], -1)
    t_batch = torch.full((flat.shape[0],), int(t), dtype=torch.long, device=device)
    with torch.no_grad():
        direction = -denoiser(o, flat, t_batch)
    sigma = float(torch.sqrt(1.0 - schedule.alphas_bar[int(t)]))
    direction = direction.reshape(shape).cpu()
    return ScoreField(score=direction / sigma, direction=direction)


# ----------------------------------------------------------------------------------------------
# ∇ₐQ: exact (bandits, gridworlds) or from a learned critic
# ----------------------------------------------------------------------------------------------
def _gridworld_values(env: Any, values: Any) -> Tensor:
    if values is None:
        return env.optimal_values().V
    return values.V if hasattr(values, "V") else torch.as_tensor(values, dtype=torch.float64)


def _critic_q(critic: Callable, obs: Tensor, actions: Tensor) -> Tensor:
    q = critic(obs, actions)
    if q.dim() == 2 and q.shape[0] in (1, 2) and q.shape[1] == actions.shape[0]:
        q = q.mean(dim=0)  # twin critics [2, B]: their mean, as QSM uses it
    return q.reshape(actions.shape[0])


def _source_kind(source: Any) -> str:
    if hasattr(source, "reward_grad") and hasattr(source, "reward"):
        return "bandit"
    if hasattr(source, "action_gradient") and hasattr(source, "optimal_values"):
        return "gridworld"
    if hasattr(source, "action_gradient") and hasattr(source, "env") and hasattr(source, "V"):
        return "solution"  # a ValueSolution: V^π or V* with its env
    if hasattr(source, "critic") and isinstance(getattr(source, "critic"), nn.Module):
        return "agent"
    if isinstance(source, nn.Module):
        return "critic"
    if callable(source):
        return "function"
    raise TypeError(
        f"cannot take ∇ₐQ of a {type(source).__name__}: pass a Bandit2D, a GridWorld (with state=), "
        "a value solution, an agent with .critic, a critic module, or a function Q(actions)"
    )


def _learned_q(source: Any, obs: Any, actions: Tensor, kind: str, grad: bool) -> Tensor:
    critic = source.critic if kind == "agent" else source
    device = next(critic.parameters()).device
    obs_dim = getattr(source, "obs_dim", None)
    if obs is None and obs_dim is None:
        raise ValueError("pass obs= (one observation) to evaluate a learned critic")
    shape = actions.shape
    flat = actions.reshape(-1, shape[-1]).to(device=device, dtype=torch.float32)
    o = _as_obs(obs, obs_dim if obs_dim is not None else len(np.atleast_1d(obs)), device)
    o = o.expand(flat.shape[0], -1)
    if not grad:
        with torch.no_grad():
            return _critic_q(critic, o, flat).reshape(shape[:-1]).cpu()
    flat = flat.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_critic_q(critic, o, flat).sum(), flat)
    return g.reshape(shape).cpu()


def q_gradient_field(
    source: Any,
    actions: Tensor,
    *,
    obs: Any = None,
    state: int | None = None,
    values: Any = None,
) -> Tensor:
    """∇ₐQ(s, a) on ``actions`` [..., act_dim], for one state; same shape as ``actions``.

    ``source`` decides where Q comes from:

    - a :class:`~qsm_tutorial.envs.Bandit2D`: exact, ∇ₐQ = ∇ₐr (one-step episodes);
    - a :class:`~qsm_tutorial.envs.gridworld.GridWorld`: exact, for cell ``state`` and the values
      ``values`` (a V tensor [n_states] or a value solution; None means V*, the optimal values);
    - a value solution (``env.optimal_values()`` or ``env.evaluate_policy(samples)``): exact ∇ₐQ*
      or ∇ₐQ^π of that solution, for cell ``state``;
    - an agent with ``.critic`` or a critic module returning [2, B] (twin) or [B]: learned, the
      mean of both critics' ∇ₐQ at observation ``obs`` (None: zeros, a bandit's), as QSM uses it;
    - a function ``Q(actions [..., d]) -> [...]``: differentiated by autograd.
    """
    return _q_field(source, actions, obs=obs, state=state, values=values, grad=True)


def q_value_field(
    source: Any,
    actions: Tensor,
    *,
    obs: Any = None,
    state: int | None = None,
    values: Any = None,
) -> Tensor:
    """Q(s, a) on ``actions`` [..., act_dim] → [...], from the same sources as :func:`q_gradient_field`
    (for the landscape drawn under the arrows)."""
    return _q_field(source, actions, obs=obs, state=state, values=values, grad=False)


def _q_field(source: Any, actions: Tensor, *, obs: Any, state: int | None, values: Any, grad: bool) -> Tensor:
    """∇ₐQ (``grad``) or Q on ``actions`` from any source of :func:`q_gradient_field`."""
    a = _check_actions(actions)
    kind = _source_kind(source)
    if kind == "bandit":
        return source.reward_grad(a) if grad else source.reward(a)
    if kind in ("gridworld", "solution"):
        if state is None:
            raise ValueError("a gridworld field is for one cell: pass state= (an index, see env.index_of(row, col))")
        if kind == "solution":
            return source.action_gradient(state, a) if grad else source.Q(state, a)
        V = _gridworld_values(source, values)
        return source.action_gradient(state, a, V) if grad else source.Q(state, a, V)
    if kind in ("agent", "critic"):
        return _learned_q(source, obs, a, kind, grad=grad)
    if not grad:
        with torch.no_grad():
            return source(a)
    x = a.detach().to(torch.float32 if not a.is_floating_point() else a.dtype).requires_grad_(True)
    (g,) = torch.autograd.grad(source(x).sum(), x)
    return g


# ----------------------------------------------------------------------------------------------
# Agreement between two fields
# ----------------------------------------------------------------------------------------------
def alignment(
    u: Tensor,
    v: Tensor,
    rel_tol: float = 1e-2,
    abs_tol: float = 1e-8,
    weights: Tensor | None = None,
) -> Alignment:
    """cos∠(u, v) = ⟨u, v⟩ / (‖u‖‖v‖) per point, and its mean where both vectors are non-negligible.

    A vector counts as zero (its direction is noise) when its norm is below
    max(``abs_tol``, ``rel_tol`` · the largest norm of its field): e.g. ∇ₐr far from every bump of
    a Gaussian bandit. ``weights`` [...] (optional, ≥ 0) weight the mean, e.g. by the policy's
    density, to ask "is the score aligned where the policy puts its actions?".
    """
    u, v = torch.as_tensor(u).double(), torch.as_tensor(v).double()
    if u.shape != v.shape:
        raise ValueError(f"the two fields must have the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    nu, nv = u.norm(dim=-1), v.norm(dim=-1)
    tol_u = max(abs_tol, rel_tol * float(nu.max())) if nu.numel() else abs_tol
    tol_v = max(abs_tol, rel_tol * float(nv.max())) if nv.numel() else abs_tol
    mask = (nu > tol_u) & (nv > tol_v)
    cos = (u * v).sum(-1) / (nu * nv).clamp_min(1e-300)
    cos = torch.where(mask, cos.clamp(-1.0, 1.0), torch.full_like(cos, float("nan")))
    if not bool(mask.any()):
        return Alignment(cos.float(), mask, float("nan"))
    w = torch.ones_like(cos) if weights is None else torch.as_tensor(weights, dtype=torch.float64).expand_as(cos)
    w = torch.where(mask, w, torch.zeros_like(w))
    total = float(w.sum())
    mean = float((torch.nan_to_num(cos) * w).sum() / total) if total > 0 else float("nan")
    return Alignment(cos.float(), mask, mean)


def matching_error(direction: Tensor, target: Tensor) -> float:
    """The QSM loss on a grid, normalised:  mean‖d − g‖² / mean‖g‖²  (0 is a perfect match).

    ``direction`` is −ε_θ and ``target`` is α·∇ₐQ: this is what the actor step minimises (at
    noised replay actions rather than on a grid). Unlike the cosine it also sees the magnitude, so
    it is smallest at the α the policy was trained with.
    """
    d, g = torch.as_tensor(direction).double(), torch.as_tensor(target).double()
    return float(((d - g) ** 2).sum(-1).mean() / ((g**2).sum(-1).mean()).clamp_min(1e-300))


# ----------------------------------------------------------------------------------------------
# The Boltzmann policy π ∝ exp(α·Q): the fixed point of Langevin dynamics with drift α∇ₐQ
# ----------------------------------------------------------------------------------------------
def boltzmann_weights(q_values: Tensor, alpha: float) -> Tensor:
    """π(a) = exp(α·Q(a)) / Σ exp(α·Q) over the grid points of ``q_values`` [...] (sums to 1)."""
    q = torch.as_tensor(q_values).double()
    return torch.softmax(alpha * q.reshape(-1), dim=0).reshape(q.shape)


def sample_boltzmann(
    actions: Tensor,
    q_values: Tensor,
    alpha: float,
    n: int,
    generator: torch.Generator | None = None,
    jitter: bool = True,
) -> Tensor:
    """``n`` actions [n, 2] from π ∝ exp(α·Q) on a regular grid ``actions`` [g, g, 2].

    A grid point is drawn with probability ``boltzmann_weights``; with ``jitter`` the action is
    then spread uniformly over that point's grid cell (clipped to the box), so samples do not stack.
    """
    a = torch.as_tensor(actions).double()
    p = boltzmann_weights(q_values, alpha).reshape(-1)
    idx = torch.multinomial(p, n, replacement=True, generator=generator)
    out = a.reshape(-1, a.shape[-1])[idx]
    if jitter and a.dim() == 3 and a.shape[0] > 1:
        spacing = float(a[0, 1, 0] - a[0, 0, 0])
        u = torch.rand(out.shape, generator=generator, dtype=out.dtype) - 0.5
        lo, hi = float(a[..., 0].min()), float(a[..., 0].max())
        out = (out + spacing * u).clamp(lo, hi)
    return out
