import math

import pytest
import torch

from qsm_tutorial.diffusion import (
    gaussian_prior_eps,
    Denoiser,
    NoiseSchedule,
    add_noise,
    ddpm_sample,
    ddpm_step,
    langevin_sample,
    reflect_into_box,
)
from qsm_tutorial.envs.bandits import action_grid, gaussian_bumps


def test_vp_schedule_matches_paper_values():
    s = NoiseSchedule.vp(5)
    assert torch.allclose(s.betas, torch.tensor([0.196, 0.459, 0.636, 0.755, 0.835]), atol=5e-4)
    assert torch.allclose(s.alphas_bar, torch.tensor([0.804, 0.435, 0.159, 0.039, 0.0064]), atol=5e-4)


@pytest.mark.parametrize("name", ["vp", "cosine", "linear"])
class TestSchedules:
    """The checks every schedule must pass (one class over all schedules, as diffusers does)."""

    def test_shapes_and_ranges(self, name):
        s = NoiseSchedule.from_name(name, 10)
        assert s.betas.shape == s.alphas.shape == s.alphas_bar.shape == (10,)
        assert ((s.betas > 0) & (s.betas < 1)).all()

    def test_alphas_bar_is_cumulative_product(self, name):
        s = NoiseSchedule.from_name(name, 7)
        expected = torch.tensor([math.prod(1 - b for b in s.betas[: i + 1].tolist()) for i in range(7)])
        assert torch.allclose(s.alphas_bar, expected, atol=1e-6)
        assert (s.alphas_bar[1:] < s.alphas_bar[:-1]).all()


def test_bad_schedule_input():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule.from_name("sigmoid", 5)
    with pytest.raises(ValueError, match="positive integer"):
        NoiseSchedule.vp(0)


def test_add_noise_by_hand():
    s = NoiseSchedule.vp(5)
    a0 = torch.tensor([[0.5, -0.2], [0.1, 0.9]])
    z = torch.tensor([[1.0, 0.0], [-0.5, 2.0]])
    t = torch.tensor([0, 3])
    # closed form of the VP schedule: log ᾱ_t = −Σ_{i≤t+1} (b_min/T + ½(b_max − b_min)(2i − 1)/T²)
    ab = [math.exp(-sum(0.1 / 5 + 0.5 * 9.9 * (2 * i - 1) / 25 for i in range(1, t + 2))) for t in (0, 3)]
    expected = torch.tensor(
        [[math.sqrt(ab[0]) * a + math.sqrt(1 - ab[0]) * e for a, e in zip(a0[0].tolist(), z[0].tolist())],
         [math.sqrt(ab[1]) * a + math.sqrt(1 - ab[1]) * e for a, e in zip(a0[1].tolist(), z[1].tolist())]]
    )
    assert torch.allclose(add_noise(s, a0, t, z), expected, atol=1e-5)


def test_one_reverse_step_by_hand():
    s = NoiseSchedule.vp(5)
    a_t, eps, z = torch.tensor([[0.3, -0.4]]), torch.tensor([[0.2, 0.1]]), torch.tensor([[1.0, -1.0]])
    t = 2
    beta, abar = 1 - math.exp(-0.1 / 5 - 0.5 * 9.9 * 5 / 25), 0.1585
    expected = [(a - beta / math.sqrt(1 - abar) * e) / math.sqrt(1 - beta) + math.sqrt(beta) * n
                for a, e, n in zip([0.3, -0.4], [0.2, 0.1], [1.0, -1.0])]
    out = ddpm_step(s, eps, a_t, t, z, clip=None)
    assert torch.allclose(out, torch.tensor([expected]), atol=2e-4)
    # the last step (t = 0) adds no noise, and clipping bounds the result
    no_noise = ddpm_step(s, eps, a_t, 0, z, clip=None)
    assert torch.allclose(no_noise, ddpm_step(s, eps, a_t, 0, torch.zeros_like(z), clip=None))
    assert ddpm_step(s, torch.full_like(eps, -50.0), a_t, 2, z).abs().max() <= 1.0


def test_denoiser_shapes_and_batched_sampler():
    net = Denoiser(obs_dim=3, act_dim=2, hidden=(32, 32))
    obs = torch.randn(64, 3)
    eps = net(obs, torch.randn(64, 2), torch.randint(0, 5, (64,)))
    assert eps.shape == (64, 2)
    a, chain = ddpm_sample(net, NoiseSchedule.vp(5), obs, 2, return_chain=True)
    assert a.shape == (64, 2) and len(chain) == 6 and a.abs().max() <= 1.0


def test_reflect_into_box():
    a = torch.tensor([1.2, -1.5, 3.5, 0.3, -4.2])
    assert torch.allclose(reflect_into_box(a), torch.tensor([0.8, -0.5, -0.5, 0.3, -0.2]), atol=1e-6)


def total_variation(samples: torch.Tensor, density: torch.Tensor, bins: int) -> float:
    """TV between a 2-D histogram of samples on [-1,1]² and a density given on the bin centres."""
    idx = ((samples + 1) / 2 * bins).long().clamp(0, bins - 1)
    hist = torch.zeros(bins, bins)
    hist.index_put_((idx[:, 1], idx[:, 0]), torch.ones(len(samples)), accumulate=True)
    p = density / density.sum()
    return 0.5 * (hist / hist.sum() - p).abs().sum().item()


def test_langevin_reaches_boltzmann_density():
    """Langevin with drift α∇ₐr samples exp(α·r)/Z on the box.

    Measured (seeds 0-2, 20k chains, 400 steps of η = 1e-3, 20×20 bins): TV = 0.052-0.057, while
    the sampling noise floor alone (20k exact samples against the exact density) is 0.054-0.056.
    A wrong drift is far away: α halved gives TV ≈ 0.16, the sign flipped gives > 0.25. So 0.08.
    """
    g = torch.Generator().manual_seed(0)
    reward = gaussian_bumps([(0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5)], sigma=0.3)
    alpha, bins = 3.0, 20

    def drift(a):
        a = a.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(reward(a).sum(), a)
        return alpha * grad

    a0 = torch.rand(20_000, 2, generator=g) * 2 - 1
    samples = langevin_sample(drift, a0, step_size=1e-3, n_steps=400, generator=g)
    centres = action_grid(bins * 2 + 1)[1::2, 1::2]  # bin centres, [bins, bins, 2] with x along dim 1
    density = torch.exp(alpha * reward(centres))
    assert total_variation(samples, density, bins) < 0.08
    wrong = torch.exp(-alpha * reward(centres))  # the density of the opposite sign
    assert total_variation(samples, wrong, bins) > 0.25


def test_gaussian_prior_eps_is_minus_sigma_t_times_the_noised_score():
    """ε = −√(1−ᾱ_t) ∇ log N(a_t; 0, ᾱ_t σ² + 1 − ᾱ_t), checked against autograd of the density."""
    schedule = NoiseSchedule.vp(5)
    a_t = torch.randn(64, 3, requires_grad=True)
    t = torch.randint(0, 5, (64,))
    abar = schedule.alphas_bar[t].unsqueeze(-1)
    var = abar * 0.5**2 + 1 - abar
    (score,) = torch.autograd.grad(torch.distributions.Normal(0.0, var.sqrt()).log_prob(a_t).sum(), a_t)
    torch.testing.assert_close(gaussian_prior_eps(schedule, a_t, t, 0.5), -(1 - abar).sqrt() * score)
    assert torch.equal(gaussian_prior_eps(schedule, a_t, t, 0.0), torch.zeros_like(a_t))


def test_gaussian_prior_keeps_the_five_step_sampler_inside_the_box():
    """With the prior's exact ε the T = 5 chain stays inside [−1, 1] (measured: std 0.35, none beyond
    0.95, for σ = 0.5); with ε = 0 (no pull back, the untrained QSM situation) the chain's ÷√α_t
    expansion pushes most samples onto the faces (measured 69 %)."""
    schedule = NoiseSchedule.vp(5)
    obs = torch.zeros(20_000, 1)
    gen = torch.Generator().manual_seed(0)
    prior = ddpm_sample(lambda o, a, t: gaussian_prior_eps(schedule, a, t, 0.5), schedule, obs, 1, generator=gen)
    none = ddpm_sample(lambda o, a, t: torch.zeros_like(a), schedule, obs, 1, generator=gen)
    assert 0.3 < prior.std() < 0.45 and (prior.abs() > 0.95).float().mean() < 0.01
    assert (none.abs() > 0.95).float().mean() > 0.6


def test_one_exponential_mish_is_torchs_mish():
    """nets.Mish (x − 2x/(n+2), n = eˣ(eˣ+2)) against F.mish in float64, values and gradients, from
    −60 to 60: float32 rounding apart, no NaN. For x ≪ 0 the subtraction cancels, so the value's error
    is absolute, within two float32 ulps of max(|x|, 1) (measured: 1.02 ulps, 1.2e-6, at most); the
    gradient's error is 1.3e-7 at most."""
    import torch.nn.functional as F

    from qsm_tutorial.nets import Mish

    x = torch.linspace(-60, 60, 20001, requires_grad=True)
    y = Mish()(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    x64 = x.detach().double().requires_grad_(True)
    ref = F.mish(x64)
    (g_ref,) = torch.autograd.grad(ref.sum(), x64)
    ulp = torch.finfo(torch.float32).eps * x.detach().double().abs().clamp(min=1)
    assert ((y.double() - ref).abs() <= 2 * ulp).all()
    assert torch.allclose(g.double(), g_ref, rtol=0, atol=5e-7) and not torch.isnan(g).any()


def test_prior_target_is_the_noised_eps_of_a_prior_times_a_level_dependent_boltzmann_factor():
    """For a linear Q = g·a (1-D), the noised density of π ∝ N(0, σ²)·exp(αQ) is integrated on a grid
    and its ε = −√(1−ᾱ) ∂ log p_t / ∂a_t taken by autograd: it equals gaussian_prior_eps − α f_t g
    (f_t = √(ᾱ(1−ᾱ)) σ² / (ᾱσ² + 1 − ᾱ)), so the package's target gaussian_prior_eps − α g is the
    exact noised ε at the inverse temperature α / f_t, not α (unless f_t = 1, which never happens)."""
    from qsm_tutorial.diffusion import gaussian_prior_eps

    schedule, sigma, alpha, g = NoiseSchedule.vp(5), 0.5, 1.0, 0.8
    a = torch.linspace(-30, 30, 60001, dtype=torch.float64)  # π at α / f_t is centred up to 10: the grid covers it
    for t in range(5):
        abar = schedule.alphas_bar[t].double()
        f_t = torch.sqrt(abar * (1 - abar)) * sigma**2 / (abar * sigma**2 + 1 - abar)

        def noised_eps(inverse_temperature: float, a_t: torch.Tensor) -> torch.Tensor:
            log_pi = -0.5 * a**2 / sigma**2 + inverse_temperature * g * a
            a_t = a_t.clone().requires_grad_(True)
            kernel = -0.5 * (a_t[:, None] - abar.sqrt() * a[None]) ** 2 / (1 - abar)
            log_p = torch.logsumexp(log_pi[None] + kernel, dim=1)
            (score,) = torch.autograd.grad(log_p.sum(), a_t)
            return -(1 - abar).sqrt() * score

        a_t = torch.linspace(-1.5, 1.5, 7, dtype=torch.float64)
        prior = gaussian_prior_eps(schedule, a_t.float()[:, None], torch.full((7,), t), sigma)[:, 0].double()
        assert torch.allclose(noised_eps(alpha, a_t), prior - alpha * f_t * g, atol=1e-6)  # the exact ε at α
        assert torch.allclose(noised_eps(alpha / f_t, a_t), prior - alpha * g, atol=1e-5)  # the implemented one
        assert 0.01 < f_t < 0.3
