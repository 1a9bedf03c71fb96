"""The QSM update with fewer operations, for one agent or for S agents (seeds) at once.

The equations are those of ``algos/qsm.py`` (read that file first: it is the readable reference);
this file computes them faster. What changes, and why it pays on a CPU:

- **Fused Adam** (``torch.optim.Adam(fused=True)``): one kernel over all parameters instead of
  about ten tensor operations per parameter (3-4× faster optimiser steps).
- **A cheaper Mish.** mish(x) = x·tanh(softplus(x)) = x·n/(n + 2) with n = eˣ(eˣ + 2): one
  exponential instead of exp, log1p and tanh, and a hand-written backward (forward 2.5× faster,
  forward + backward 1.4×; equal to ``F.mish`` within 4e-7 relative).
- **Time features out of the loops.** The step t takes only T values, so the time MLP runs on T
  rows, not B; its contribution to the denoiser's first layer is a per-step bias. In the DDPM
  chain the observation's contribution is computed once, not T times: each reverse step multiplies
  only the |A| action columns. That removes a quarter of the TD target's FLOPs and 12 % of the
  update's (3.18 → 2.79 GFLOP at the paper's sizes).
- **∇ₐQ by hand.** The actor's target needs the critics' action-gradient; for ReLU networks it is
  a product of weight matrices masked by the active units, computed without building an autograd
  graph (``twin_q_action_gradient``; 12.4 → 15.0 updates/s on this CPU, A/B in one script).
- **Stacked parameters.** Every tensor carries a leading *seed* axis S, each layer is one batched
  matrix multiply (``torch.baddbmm``) over it: S agents update in one pass (``multiseed.py``), and
  one agent is the case S = 1 (its tensors are zero-copy views of the agent's own modules).
  Seeds never mix: every loss is reduced per seed and summed only to call ``backward`` once, and
  seed k's numbers are bit-identical for any S (output layers are computed in the orientation whose
  kernel does not depend on S, see ``stacked_linear``).
- **Gradients in the parameters' layout.** ``stacked_linear`` is one autograd Function whose
  backward makes ∂W = gᵀx straight into [out, in] order and a contiguous ∂x; autograd's own backward
  of the same product made transposed gradients, which cost a 512×512 transposed copy per weight and
  strided ReLU backwards (the critic step's forward and backward 14 % faster, A/B in one script).
- **No autograd Function where no gradient flows.** The TD target's sampling chain and the ∇ₐQ sweep
  run under ``no_grad``; there ``mish`` and ``stacked_linear`` call their forward math directly
  (``needs_graph``), saving ``Function.apply``'s ~20 µs of Python per layer (whole update +1-4 %
  at the paper's sizes in four same-process A/Bs on the Xeon; the same numbers, bit for bit).

What it does not do: merge the two critics into one batched network (measured on this CPU: no
faster than two, since the matrix multiplies dominate).

``torch.compile`` is opt-in (``QSMConfig.compile``, ``--compile``): the critic and actor losses,
forward and backward, compiled by TorchInductor at the first update (``maybe_compiled``). Once
∇ₐQ no longer called ``autograd.grad`` and the chain's constants stopped being read from tensors,
both compile without graph breaks. On a 2-core CPU it fuses the elementwise work around the
matrix multiplies (a Mish is seven passes over a [256, 512] tensor in eager mode, one compiled) for
10-35 % more updates/s than the eager fast path (``benchmarks/throughput.py`` measures it beside the
others: 1.51× the reference path against the eager fast path's 1.34× on an AVX2 EPYC, 1.50-1.70×
against 1.11-1.34× on an AVX-512 Xeon, whose faster matrix multiplies leave the passes a larger
share; see ``relu`` for the one kernel that once cost the Xeon 13-16 %, and ``_StackedLinear`` for
where the bias goes), after 25-60 s of compiling (less with Inductor's on-disk cache), and it needs
a C++ compiler at run time: worth it for a long run, not for a notebook's first cell, so it is off
by default. Numbers agree with the eager path to float32 rounding (a test checks it).

The metrics stay Python floats, copied to the host once per step: on a CPU that costs
microseconds, and the training loop synchronises every env step anyway (``act`` returns a NumPy
action).

Randomness is drawn in exactly the reference's order and shapes (``draw_td_noise``,
``draw_actor_noise``), from the global generator, so for one seed the fast and the reference path
see the same random numbers and the same initial weights. They then agree to float32 rounding
(``tests/test_fast.py`` measures it); they are not bit-identical, because operations are
reassociated (for example [a, s, time]·W is summed as a·W_a + s·W_s + time·W_time).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion import NoiseSchedule, add_noise, gaussian_prior_eps, reflect_into_box
from ..replay import Batch
from .common import critic_target

Params = dict[str, Tensor]
"""A module's named parameters with a leading seed axis: ``{"net.0.weight": [S, out, in], ...}``.
The names are those of the reference module's ``named_parameters()``, so slice k of every tensor
is exactly the state dict of seed k's ``Denoiser`` or ``TwinCritic``."""


# ----------------------------------------------------------------------------------------------
# Mish, with one exponential
# ----------------------------------------------------------------------------------------------
def _mish_factor(x: Tensor) -> Tensor:
    """t = tanh(softplus(x)) = n / (n + 2) with n = eˣ (eˣ + 2), in a fresh tensor."""
    # In place wherever a buffer is free: a pass that writes a fresh [256, 512] tensor costs about
    # twice one that rewrites a tensor just made (cache lines fetched from L3 before the write),
    # measured on a 2-core Xeon; the update's TD chain runs ten of these under no_grad.
    e = x.clamp(max=20.0).exp_()  # above 20, t = 1 to float32 precision
    n = e.add(2.0).mul_(e)
    return n.div_(torch.add(n, 2.0, out=e))  # (not 1 − 2/(n + 2): that cancels for x ≪ 0)


class _Mish(torch.autograd.Function):
    """mish(x) = x · t,  t = tanh(softplus(x)) = n / (n + 2),  n = eˣ (eˣ + 2);
    mish′(x) = t + x · σ(x) · (1 − t²)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        t = _mish_factor(x)
        ctx.save_for_backward(x, t)
        return x * t

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, t = ctx.saved_tensors
        d = torch.sigmoid(x).mul_(x).mul_(1.0 - t * t).add_(t)
        return d.mul_(grad)


def needs_graph(*tensors: Tensor) -> bool:
    """Whether autograd will record an op on ``tensors``. Where it will not (the TD target, acting),
    the hand-written Functions are skipped: ``Function.apply`` costs ~20 µs of Python per call,
    most of the time of a small network's sampling step (measured on the Xeon)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def mish(x: Tensor) -> Tensor:
    """The Mish activation x · tanh(softplus(x)), computed with one exponential."""
    return _Mish.apply(x) if needs_graph(x) else _mish_factor(x).mul_(x)


# ----------------------------------------------------------------------------------------------
# ReLU, compiled without a bool mask
# ----------------------------------------------------------------------------------------------
class _ReluFromOutput(torch.autograd.Function):
    """relu(x), whose backward reads the output itself, relu′ = sign(relu(x)) ∈ {0, 1}: the same
    numbers as autograd's ReLU backward, with nothing saved but the output."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad * out.sign()


def relu(x: Tensor) -> Tensor:
    """``F.relu``; under ``torch.compile``, a ReLU whose backward needs no bool mask.

    Traced from ``F.relu``, Inductor saves the critic's last hidden ReLU as a bool mask ``out <= 0``
    for the backward, and its C++ kernel storing a bool mask is pathologically slow on AVX-512 CPUs
    (torch 2.13: a ReLU over [2, 256, 512] with its mask 4.3 ms compiled against 0.15 ms without,
    measured on a 2-core Xeon). With the backward written on the output, the compiled update ran
    16 % more updates/s there (A/B in one process). In eager mode the plain ``F.relu`` is the faster
    (its backward is one fused pass; the Function here costs two, 4 % of an update).
    ``benchmarks/inductor_relu_mask.py`` tells whether the torch at hand still needs this."""
    return _ReluFromOutput.apply(x) if torch.compiler.is_compiling() else F.relu(x)


# ----------------------------------------------------------------------------------------------
# Stacked parameters and stacked MLPs
# ----------------------------------------------------------------------------------------------
def view_params(module: nn.Module) -> Params:
    """The parameters of one module as an S = 1 stack: zero-copy views, gradients reach the module."""
    return {name: p.unsqueeze(0) for name, p in module.named_parameters()}


def stack_params(modules: list[nn.Module]) -> Params:
    """The parameters of S modules of the same shape, stacked into new leaf tensors [S, ...]."""
    names = [name for name, _ in modules[0].named_parameters()]
    return {
        name: torch.stack([m.get_parameter(name).detach() for m in modules]).requires_grad_(modules[0].get_parameter(name).requires_grad)
        for name in names
    }


def alias_modules(modules: list[nn.Module], params: Params) -> None:
    """Point every parameter of ``modules[k]`` at slice k of the stack (shared memory): the modules
    then always hold the stack's current values (for acting and evaluating) at no copying cost."""
    for k, m in enumerate(modules):
        for name, p in m.named_parameters():
            p.data = params[name].data[k]


def member_state(params: Params, k: int) -> dict[str, Tensor]:
    """Seed k's slice of a stack, as the reference module's state dict (cloned)."""
    return {name: p.detach()[k].clone() for name, p in params.items()}


def mlp_layers(params: Params, prefix: str) -> list[tuple[Tensor, Tensor]]:
    """[(weight [S, out, in], bias [S, out]), ...] of the ``nn.Sequential`` named ``prefix``."""
    weights = [n for n in params if n.startswith(prefix + ".") and n.endswith(".weight")]
    return [(params[n], params[n[: -len("weight")] + "bias"]) for n in weights]


def _stacked_affine(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x Wᵀ + b for S seeds (the forward of ``stacked_linear``)."""
    if weight.shape[1] == 1:  # one output column: computed as a row (see stacked_linear)
        return torch.baddbmm(bias.unsqueeze(-1), weight, x.transpose(1, 2)).transpose(1, 2)
    if torch.compiler.is_compiling():
        # Inductor adds the bias inside the activation's kernel that follows; a baddbmm would
        # first copy the bias into every row (compiled update 2-6 % faster, A/B on the Xeon)
        return torch.bmm(x, weight.transpose(1, 2)) + bias.unsqueeze(1)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class _StackedLinear(torch.autograd.Function):
    """y = x Wᵀ + b for S seeds, with a backward that writes each gradient in its tensor's layout.

    Autograd's own backward of ``baddbmm(b, x, Wᵀ)`` makes ∂W as (xᵀ g)ᵀ, a transposed view that the
    parameter's ``.grad`` then copies into [out, in] order, and for an output layer computed as a row
    it hands the layer below a transposed ∂x, on which every elementwise op of the backward runs
    strided. Measured on this CPU, one thread: a 512×512 transposed copy ~1.4 ms, the ReLU backward on
    a transposed [256, 512] gradient 0.74 ms against 0.03 ms contiguous; the critic step's forward and
    backward 14 % faster without them, 1-2 % of a whole update (A/B in one script).
    Here ∂W = gᵀ x is one batched product straight into [out, in], and ∂x = g W is contiguous.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return _stacked_affine(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        n_out = weight.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # for one output, g W is an outer product: elementwise, exact
            grad_x = grad * weight if n_out == 1 else torch.bmm(grad, weight)
        if ctx.needs_input_grad[1]:
            # ∂W with out rows where out is a multiple of 8; else (a denoiser's |A| outputs) with |A|
            # columns, as autograd does: small odd row counts take S-dependent kernels. One output
            # row (a critic's Q, a 1-D action) is a matrix-vector product, whose batched kernel on
            # AVX-512 CPUs depends on S in any orientation: computed seed by seed (cheap at that size).
            if n_out == 1:
                grad_w = torch.stack([torch.mm(g.t(), xk) for g, xk in zip(grad, x)])
            elif n_out % 8 == 0:
                grad_w = torch.bmm(grad.transpose(1, 2), x)
            else:
                grad_w = torch.bmm(x.transpose(1, 2), grad).transpose(1, 2)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(1)
        return grad_x, grad_w, grad_b


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x [S, B, in] → x Wᵀ + b  [S, B, out]: one batched matrix multiply for all S seeds.

    With one output (a critic's Q) the product is computed as a row, W xᵀ + b: a batched multiply
    with a single output *column* takes another kernel path when S > 1 than when S = 1, and seed k's
    numbers must not depend on S; wider outputs (a denoiser's |A| columns) are S-independent as
    columns and not as rows. (Measured on an AVX2 AMD EPYC's kernels for widths 32-512, batches
    1-256, out 1-17, and for the tested sizes on an AVX-512 Xeon's; ``tests/test_multiseed.py``
    checks it on the machine it runs on.)"""
    return _StackedLinear.apply(x, weight, bias) if needs_graph(x, weight, bias) else _stacked_affine(x, weight, bias)


def stacked_mlp(layers: list[tuple[Tensor, Tensor]], x: Tensor, activation) -> Tensor:
    """The reference ``mlp`` (activation between layers, none after the last), for S seeds."""
    for w, b in layers[:-1]:
        x = activation(stacked_linear(x, w, b))
    return stacked_linear(x, *layers[-1])


# ----------------------------------------------------------------------------------------------
# Twin critics
# ----------------------------------------------------------------------------------------------
def twin_q(critic: Params, obs: Tensor, action: Tensor) -> Tensor:
    """Q₁ and Q₂ of S seeds' ``TwinCritic``: obs [S, B, O], action [S, B, A] → [S, 2, B]."""
    x = torch.cat([obs, action], dim=-1)
    q1 = stacked_mlp(mlp_layers(critic, "q1"), x, relu)
    q2 = stacked_mlp(mlp_layers(critic, "q2"), x, relu)
    return torch.cat([q1, q2], dim=-1).transpose(1, 2)


def twin_q_action_gradient(critic: Params, obs: Tensor, actions: Tensor) -> Tensor:
    """g = ½ (∇ₐQ₁ + ∇ₐQ₂)(s, a) per seed, detached (``q_action_gradient``, for S seeds).

    Back-propagated by hand: for a ReLU network the chain rule is a product of the weights masked
    by which units are on, ∇ₓQ = W_L diag(1[h_{L−1} > 0]) W_{L−1} ⋯ diag(1[h₁ > 0]) W₁, so one
    forward pass that keeps the masks and one backward sweep of matrix products give it, with no
    autograd graph (and nothing that stops ``torch.compile``). Only the first layer's *action*
    columns are kept at the end.
    """
    x = torch.cat([obs, actions], dim=-1).detach()
    obs_dim = obs.shape[-1]
    grad = torch.zeros_like(actions)
    with torch.no_grad():
        for prefix in ("q1", "q2"):
            layers = mlp_layers(critic, prefix)
            h, on = x, []
            for w, b in layers[:-1]:
                h = stacked_linear(h, w, b).relu_()
                on.append(h.sign())  # 1 where a unit is on, 0 where off (h ≥ 0); cheaper than a bool mask
            g = layers[-1][0].expand(-1, h.shape[1], -1)  # ∂Q/∂h_{L−1} = W_L, the same row for every sample
            for (w, _), mask in zip(reversed(layers[1:-1]), reversed(on[1:])):
                g = torch.bmm(g * mask, w)
            # all input columns, then the action's: a product with |A| = 1 output column would
            # take a kernel path that depends on S (see stacked_linear)
            grad += torch.bmm(g * on[0], layers[0][0])[..., obs_dim:]
    return grad.mul_(0.5)


# ----------------------------------------------------------------------------------------------
# The denoiser ε_θ(s, a_t, t)
# ----------------------------------------------------------------------------------------------
def fourier_features(freqs: Tensor, t: Tensor) -> Tensor:
    """[cos 2πtW, sin 2πtW] for S seeds: freqs [S, F], integer t [S, N] → [S, N, 2F]."""
    angles = 2 * math.pi * t.float().unsqueeze(-1) * freqs.unsqueeze(1)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def denoiser_eps(actor: Params, obs: Tensor, a_t: Tensor, t: Tensor) -> Tensor:
    """ε_θ(s, a_t, t) of S seeds' ``Denoiser`` for any integer steps t [S, B] (the plain forward)."""
    time = stacked_mlp(mlp_layers(actor, "time_mlp"), fourier_features(actor["time_features.W"], t), mish)
    return stacked_mlp(mlp_layers(actor, "net"), torch.cat([a_t, obs, time], dim=-1), mish)


def _first_layer(actor: Params, act_dim: int, obs_dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The denoiser's first weight split by input, [W_a | W_s | W_time], and its bias."""
    w, b = actor["net.0.weight"], actor["net.0.bias"]
    return w[:, :, :act_dim], w[:, :, act_dim : act_dim + obs_dim], w[:, :, act_dim + obs_dim :], b


def time_bias(actor: Params, T: int, act_dim: int, obs_dim: int) -> Tensor:
    """time(t) · W_timeᵀ + b for t = 0 … T−1: [S, T, hidden], the first layer's per-step bias."""
    S = actor["time_features.W"].shape[0]
    # Rows padded to a multiple of 8: this CPU's batched multiply takes an S-dependent kernel path
    # for 5-7 and 9-11 rows (T = 5 is the paper's), which would make seeds differ with S.
    rows = T if T == 1 else -(-T // 8) * 8
    steps = torch.arange(rows, device=actor["time_features.W"].device).expand(S, rows)
    time = stacked_mlp(mlp_layers(actor, "time_mlp"), fourier_features(actor["time_features.W"], steps), mish)
    _, _, w_time, b = _first_layer(actor, act_dim, obs_dim)
    return stacked_linear(time, w_time, b)[:, :T]


def denoiser_eps_train(actor: Params, obs: Tensor, a_t: Tensor, t: Tensor, T: int) -> Tensor:
    """ε_θ(s, a_t, t) for steps t < T, with the time MLP evaluated on T rows instead of B."""
    act_dim, obs_dim = a_t.shape[-1], obs.shape[-1]
    bias = time_bias(actor, T, act_dim, obs_dim)  # [S, T, H]
    one_hot = (t.unsqueeze(-1) == torch.arange(T, device=t.device)).to(bias.dtype)  # [S, B, T]
    rows = torch.bmm(one_hot, bias)  # row t of the table, for each sample
    w_as = actor["net.0.weight"][:, :, : act_dim + obs_dim]
    h = torch.baddbmm(rows, torch.cat([a_t, obs], dim=-1), w_as.transpose(1, 2))
    return stacked_mlp(mlp_layers(actor, "net")[1:], mish(h), mish)


def add_action_columns(fixed: Tensor, a: Tensor, w_a: Tensor) -> Tensor:
    """fixed + a W_aᵀ: the first layer of a sampling step, whose other inputs' part is ``fixed``.

    With one action dimension the product has inner size 1, an outer product, computed elementwise:
    batched products with inner size 1 take S-dependent kernels on AVX-512 CPUs (seed k's numbers
    would change with S)."""
    if a.shape[-1] == 1:
        return torch.addcmul(fixed, a, w_a.transpose(1, 2))
    return torch.baddbmm(fixed, a, w_a.transpose(1, 2))


def _step_coefficients(schedule: NoiseSchedule, temperature: float) -> list[tuple[float, float, float]]:
    """Per step t: β_t/√(1−ᾱ_t), √α_t and √β_t·τ (``ddpm_step``'s constants, as Python floats)."""
    return [(c_eps, sqrt_alpha, sqrt_beta * temperature) for c_eps, sqrt_alpha, sqrt_beta in schedule.reverse_constants]


def ddpm_sample_from(actor: Params, schedule: NoiseSchedule, obs: Tensor, noise: list[Tensor], temperature: float = 1.0) -> Tensor:
    """``ddpm_sample`` for S seeds with given noise [a_T, z_{T−1}, …, z_0] (each [S, B, A]).

    Every reverse step multiplies only the action columns of the first layer: the observation's
    and the step's contributions are per-chain and per-step constants.
    """
    T = schedule.T
    a = noise[0]
    act_dim, obs_dim = a.shape[-1], obs.shape[-1]
    w_a, w_s, _, _ = _first_layer(actor, act_dim, obs_dim)
    obs_part = torch.bmm(obs, w_s.transpose(1, 2))  # [S, B, H], once per chain
    bias = time_bias(actor, T, act_dim, obs_dim)  # [S, T, H]
    rest = mlp_layers(actor, "net")[1:]
    coeffs = _step_coefficients(schedule, temperature)
    for t in reversed(range(T)):
        h = add_action_columns(obs_part + bias[:, t : t + 1], a, w_a)
        eps = stacked_mlp(rest, mish(h), mish)
        c_eps, sqrt_alpha, noise_scale = coeffs[t]
        a = (a - c_eps * eps) / sqrt_alpha
        if t > 0:
            a = a + noise_scale * noise[T - t]
        a = a.clamp(-1.0, 1.0)
    return a.clamp(-1.0, 1.0)


def langevin_sample_from(actor: Params, obs: Tensor, noise: list[Tensor], step_size: float) -> Tensor:
    """``QSMAgent.sample`` with ``sampler="langevin"`` for S seeds, with given noise
    [uniform a₀ in [−1, 1], z₁, …, z_n]: a ← reflect(a + η · (−ε_θ(s, a, 0)) + √(2η) · z)."""
    a = noise[0]
    act_dim, obs_dim = a.shape[-1], obs.shape[-1]
    w_a, w_s, _, _ = _first_layer(actor, act_dim, obs_dim)
    fixed = torch.bmm(obs, w_s.transpose(1, 2)) + time_bias(actor, 1, act_dim, obs_dim)  # t = 0
    rest = mlp_layers(actor, "net")[1:]
    noise_scale = math.sqrt(2 * step_size)
    for z in noise[1:]:
        score = -stacked_mlp(rest, mish(add_action_columns(fixed, a, w_a)), mish)
        a = reflect_into_box(a + step_size * score + noise_scale * z, 1.0)
    return a


# ----------------------------------------------------------------------------------------------
# Random numbers, in the reference's order
# ----------------------------------------------------------------------------------------------
@dataclass
class TDNoise:
    """The random numbers of one TD target: the sampler's and the target noise's ([S, B, A] each),
    and which seeds bootstrap at all (the reference draws nothing when no transition does)."""

    sample: list[Tensor]
    target: Tensor
    bootstrap: Tensor  # [S] bool


def draw_sampler_noise(config, batch_size: int, act_dim: int, device) -> list[Tensor]:
    """What ``QSMAgent.sample`` draws from the global generator, in its order: the DDPM chain's
    a_T and one z per step (T + 1 draws; z₀ is drawn and unused, as the reference draws it), or
    Langevin's uniform a₀ and its z's. Each [1, B, A] (an S = 1 stack)."""
    B = batch_size
    if config.sampler == "langevin":
        noise = [torch.rand(B, act_dim, device=device) * 2 - 1]
        noise += [torch.randn(B, act_dim, device=device) for _ in range(config.langevin_steps)]
    else:
        noise = [torch.randn(B, act_dim, device=device) for _ in range(config.T + 1)]
    return [n.unsqueeze(0) for n in noise]


def policy_sample_from(actor: Params, config, schedule: NoiseSchedule, obs: Tensor, noise: list[Tensor]) -> Tensor:
    """``QSMAgent.sample`` for S seeds with given noise (``draw_sampler_noise``): obs [S, B, O] → [S, B, A]."""
    if config.sampler == "langevin":
        return langevin_sample_from(actor, obs, noise, config.langevin_step_size)
    return ddpm_sample_from(actor, schedule, obs, noise, config.temperature)


def draw_td_noise(config, batch: Batch, act_dim: int) -> TDNoise | None:
    """What ``QSMAgent._next_q`` draws from the global generator, in its order: the sampler's
    (``draw_sampler_noise``), then the target noise. ``batch`` is one seed's ([B, ...]). None when
    no transition bootstraps (the reference then draws nothing)."""
    if not bool(batch.mask.any()):
        return None
    B, device = batch.reward.shape[0], batch.reward.device
    sample = draw_sampler_noise(config, B, act_dim, device)
    target = torch.randn(B, act_dim, device=device)
    return TDNoise(sample, target.unsqueeze(0), torch.ones(1, dtype=torch.bool, device=device))


def stack_td_noise(per_seed: list[TDNoise | None]) -> TDNoise | None:
    """S seeds' draws as one [S, ...] stack (zeros for a seed that does not bootstrap)."""
    present = [n for n in per_seed if n is not None]
    if not present:
        return None
    zero = TDNoise([torch.zeros_like(s) for s in present[0].sample], torch.zeros_like(present[0].target), ~present[0].bootstrap)
    per_seed = [n if n is not None else zero for n in per_seed]
    return TDNoise(
        [torch.cat(parts) for parts in zip(*(n.sample for n in per_seed))],
        torch.cat([n.target for n in per_seed]),
        torch.cat([n.bootstrap for n in per_seed]),
    )


def draw_actor_noise(config, batch_size: int, act_dim: int, device) -> tuple[Tensor, Tensor]:
    """What ``QSMAgent.update_actor`` draws, in its order: t uniform in {0 … T−1}, then z. [1, B(, A)]."""
    t = torch.randint(0, config.T, (batch_size,), device=device)
    z = torch.randn(batch_size, act_dim, device=device)
    return t.unsqueeze(0), z.unsqueeze(0)


def add_seed_axis(batch: Batch) -> Batch:
    """One seed's batch as an S = 1 stack."""
    return Batch(*(x.unsqueeze(0) for x in (batch.obs, batch.action, batch.reward, batch.next_obs, batch.mask)))


def stack_batches(batches: list[Batch]) -> Batch:
    return Batch(*(torch.stack(parts) for parts in zip(*((b.obs, b.action, b.reward, b.next_obs, b.mask) for b in batches))))


# ----------------------------------------------------------------------------------------------
# The update, for S seeds
# ----------------------------------------------------------------------------------------------
@dataclass
class QSMNets:
    """The learnable tensors of S QSM agents (leading seed axis on every tensor)."""

    actor: Params
    critic: Params
    critic_target: Params

    @classmethod
    def view_of(cls, agent) -> "QSMNets":
        """One ``QSMAgent``'s networks as an S = 1 stack (views: gradients reach its modules)."""
        return cls(view_params(agent.actor), view_params(agent.critic), view_params(agent.critic_target))


def adam_options(device: torch.device) -> dict:
    """Fused Adam where this torch has it for ``device`` (CPU and CUDA in torch ≥ 2.4)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def next_q(nets: QSMNets, config, schedule: NoiseSchedule, batch: Batch, noise: TDNoise | None) -> Tensor:
    """Q̄ᵢ(s′, a′) with a′ the current actor's sample plus target noise, clipped: [S, 2, B]."""
    S, B = batch.reward.shape
    if noise is None:
        return torch.zeros(S, 2, B, device=batch.reward.device)
    a = policy_sample_from(nets.actor, config, schedule, batch.next_obs, noise.sample)
    next_a = (a + config.target_noise * noise.target).clamp(-1.0, 1.0)
    q = twin_q(nets.critic_target, batch.next_obs, next_a)
    return torch.where(noise.bootstrap[:, None, None], q, torch.zeros_like(q))


def critic_loss(nets: QSMNets, config, schedule: NoiseSchedule, batch: Batch, noise: TDNoise | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Σᵢ mean (Qᵢ(s, a) − y)² per seed [S], and the step's metrics."""
    with torch.no_grad():
        y = critic_target(batch.reward, batch.mask, config.gamma, next_q(nets, config, schedule, batch, noise).transpose(0, 1))
    q = twin_q(nets.critic, batch.obs, batch.action)  # [S, 2, B]
    loss = ((q - y.unsqueeze(1)) ** 2).mean(dim=-1).sum(dim=-1)  # critic_loss, per seed
    return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean(dim=(1, 2))}


def critic_step(nets: QSMNets, optimizer, config, schedule: NoiseSchedule, batch: Batch, noise: TDNoise | None) -> dict[str, Tensor]:
    """``QSMAgent.update_critic`` for S seeds: minimise ``critic_loss``."""
    loss, metrics = maybe_compiled(critic_loss, config.compile)(nets, config, schedule, batch, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    optimizer.step()
    return metrics


def q_score_target(g: Tensor, alpha: float, normalize: bool = False) -> Tensor:
    """``qsm.q_score_target`` per seed (g [S, B, A]): −α · g, or −α · g / mean‖g‖ over each seed's batch."""
    if normalize:
        g = g / (g.norm(dim=-1).mean(dim=-1)[:, None, None] + 1e-6)
    return -alpha * g


def actor_loss(nets: QSMNets, config, schedule: NoiseSchedule, batch: Batch, t: Tensor, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """mean ‖ε_θ(s, a_t, t) − target‖² per seed [S] (target: −α ∇ₐQ(s, a_t) + …), and the metrics."""
    noised = add_noise(schedule, batch.action, t, z)
    g = twin_q_action_gradient(nets.critic, batch.obs, noised)
    target = q_score_target(g, config.alpha, config.normalize_q_grad) + config.denoise_weight * z
    target = target + gaussian_prior_eps(schedule, noised, t, config.prior_std)
    eps = denoiser_eps_train(nets.actor, batch.obs, noised, t, schedule.T)
    loss = ((eps - target) ** 2).mean(dim=(1, 2))  # actor_loss, per seed
    return loss, {"actor_loss": loss.detach(), "grad_q_norm": g.norm(dim=-1).mean(dim=-1)}


def actor_step(
    nets: QSMNets, optimizer, scheduler, config, schedule: NoiseSchedule, batch: Batch, t: Tensor, z: Tensor
) -> dict[str, Tensor]:
    """``QSMAgent.update_actor`` for S seeds: regress ε_θ(s, a_t, t) onto −α ∇ₐQ(s, a_t) (``actor_loss``)."""
    loss, metrics = maybe_compiled(actor_loss, config.compile)(nets, config, schedule, batch, t, z)
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    optimizer.step()
    scheduler.step()
    return metrics


def check_compilable(device: torch.device) -> None:
    """Fail now, in one line, rather than deep inside the first update: TorchInductor writes C++ for
    the CPU, so ``compile=True`` on a CPU needs a C++ compiler (g++, or the one named by $CXX)."""
    if device.type != "cpu":
        return
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise ValueError("compile=True (--compile) needs a C++ compiler for TorchInductor's CPU code: "
                         "install g++ (or set CXX to one), or train without --compile") from None  # fmt: skip


@functools.cache
def _compiled(loss_fn):
    # torch's own compile machinery imports deprecated jit helpers and warns a dozen times; not ours to fix
    warnings.filterwarnings("ignore", message="`torch.jit.script_method` is deprecated", category=DeprecationWarning)
    return torch.compile(loss_fn, dynamic=False)


def maybe_compiled(loss_fn, compile: bool):
    """``loss_fn`` itself, or (``QSMConfig.compile``) its ``torch.compile``d version: forward and
    backward compiled by TorchInductor on first use (and again for new shapes)."""
    return _compiled(loss_fn) if compile else loss_fn


SEED_ALIGNMENT = 64
"""Elementwise kernels (Adam's step, Polyak's lerp) run a vectorised loop over whole SIMD chunks and
a scalar loop over the rest, and the two round differently. When one seed's slice of a stack holds
a multiple of this many numbers, every seed's numbers take the same path for any S; smaller or
odder slices (an output bias of |A| numbers) are updated seed by seed (``updated_per_seed``)."""


def updated_per_seed(stacked: Tensor) -> bool:
    """Whether elementwise updates of this [S, ...] stack must run on each seed's slice alone to
    give the numbers a single-seed run gives (see ``SEED_ALIGNMENT``)."""
    return stacked[0].numel() % SEED_ALIGNMENT != 0


def adam_tensors(params: Params) -> list[Tensor]:
    """What a stacked Adam optimises: each stack whole, or, where ``updated_per_seed``, its S slices
    as separate tensors (views sharing the stack's memory, handed their slice of its gradient by a
    hook when backward has filled it). Order: by name, seed slices in seed order."""
    tensors = []
    for p in params.values():
        if not updated_per_seed(p):
            tensors.append(p)
            continue
        slices = [p.data[k] for k in range(p.shape[0])]

        def hand_out(p: Tensor, slices=slices) -> None:
            if p.grad is None:  # a compiled backward also calls the hook for inputs it gave no gradient
                return
            for k, piece in enumerate(slices):
                piece.grad = p.grad[k]
            p.grad = None  # the slices hold it now; the next backward starts afresh

        p.register_post_accumulate_grad_hook(hand_out)
        tensors += slices
    return tensors


@torch.no_grad()
def polyak(target: Params, online: Params, tau: float) -> None:
    """θ̄ ← (1 − τ) θ̄ + τ θ on stacked tensors (``polyak_update`` for S seeds)."""
    for name, p_t in target.items():
        if updated_per_seed(p_t):
            for k in range(p_t.shape[0]):
                p_t[k].lerp_(online[name][k], tau)
        else:
            p_t.lerp_(online[name], tau)


def floats(metrics: dict[str, Tensor], seed: int = 0) -> dict[str, float]:
    """One seed's metrics as Python floats, with a single device-to-host copy."""
    values = torch.stack([v[seed] for v in metrics.values()]).tolist()
    return dict(zip(metrics, values))
