"""Networks shared by the algorithms: MLPs with Xavier initialisation and the twin critics."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Mish(nn.Module):
    """mish(x) = x · tanh(softplus(x)), written as x − 2x / (n + 2) with n = eˣ(eˣ + 2): the same
    function with one exponential instead of exp, log1p and tanh. Compiled, this form (with
    ``torch.reciprocal``) gave the fastest kernel of those measured (docs/performance.md); for
    x ≪ 0 its subtraction leaves an absolute error of about a float32 ulp of x. Above x = 20,
    mish(x) = x in float32; the clamp keeps n finite there, so no NaN reaches the gradient."""

    def forward(self, x: Tensor) -> Tensor:
        e = torch.exp(x.clamp(max=20.0))
        n = e * (e + 2)
        return torch.where(x > 20.0, x, x - 2 * x * torch.reciprocal(n + 2))


def xavier_init_(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases for every Linear layer (as the QSM code does)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return module


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
