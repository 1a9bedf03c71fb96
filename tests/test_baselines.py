"""SAC and TD3: paper defaults, their equations against hand computations, the shared agent shape."""

import io
import math

import numpy as np
import pytest
import torch

from qsm_tutorial import algos
from qsm_tutorial.algos.sac import SACAgent, SACConfig, soft_critic_target, tanh_gaussian_log_prob, temperature_loss
from qsm_tutorial.algos.td3 import TD3Agent, TD3Config, td3_target_action
from qsm_tutorial.replay import ReplayBuffer

TINY = dict(actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=32, device="cpu")


def filled_buffer(obs_dim=3, act_dim=2, n=200, seed=0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(obs_dim, act_dim, n)
    for _ in range(n):
        buffer.add(rng.normal(size=obs_dim), rng.uniform(-1, 1, act_dim), rng.normal(), rng.normal(size=obs_dim), rng.random() < 0.1)
    return buffer


def test_sac_defaults_are_the_papers():
    c = SACConfig()
    assert (c.actor_hidden, c.critic_hidden, c.actor_lr, c.critic_lr, c.temperature_lr) == ((256, 256), (256, 256), 3e-4, 3e-4, 3e-4)
    assert (c.init_temperature, c.target_entropy_per_dim, c.gamma, c.tau, c.batch_size) == (1.0, -0.5, 0.99, 0.005, 256)
    assert c.warmup_steps == 10_000 and SACConfig.preset("paper") == c
    assert SACAgent(5, 4, SACConfig(device="cpu")).target_entropy == -2.0  # -|A|/2


def test_td3_defaults_are_the_papers():
    c = TD3Config()
    assert (c.actor_hidden, c.critic_hidden, c.actor_lr, c.critic_lr, c.gamma, c.tau) == ((256, 256), (256, 256), 3e-4, 3e-4, 0.99, 0.005)
    assert (c.exploration_noise, c.target_noise, c.target_noise_clip, c.actor_delay, c.batch_size) == (0.1, 0.2, 0.5, 2, 256)
    assert TD3Config.preset("paper") == c


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    """p(a) = N(atanh a; μ, σ) / (1 − a²) in 1-D, by hand; and the density integrates to 1."""
    mean, log_std = torch.tensor([0.3]), torch.tensor([math.log(0.7)])
    u = torch.tensor([[-2.0], [-0.1], [0.5], [3.0]])
    a = torch.tanh(u)
    gauss = torch.exp(-0.5 * ((u - mean) / 0.7) ** 2) / (0.7 * math.sqrt(2 * math.pi))
    by_hand = torch.log(gauss / (1 - a**2)).squeeze(-1)
    torch.testing.assert_close(tanh_gaussian_log_prob(u, mean, log_std), by_hand, rtol=1e-5, atol=1e-5)

    grid = torch.linspace(-1, 1, 200_001, dtype=torch.float64)[1:-1]
    density = tanh_gaussian_log_prob(torch.atanh(grid)[:, None], mean.double(), log_std.double()).exp()
    assert abs(torch.trapezoid(density, grid).item() - 1.0) < 1e-3


def test_tanh_gaussian_log_prob_sums_dimensions_and_stays_finite_at_saturation():
    mean, log_std = torch.zeros(3), torch.zeros(3)
    u = torch.tensor([[0.2, -0.4, 30.0]])  # tanh(30) == 1 in float32: the naive log(1 − a²) is -inf
    per_dim = [tanh_gaussian_log_prob(u[:, i : i + 1], mean[:1], log_std[:1]) for i in range(3)]
    out = tanh_gaussian_log_prob(u, mean, log_std)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, sum(per_dim))


def test_soft_critic_target_subtracts_the_entropy_bonus():
    reward, mask = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])
    next_q = torch.tensor([[5.0, 3.0], [4.0, 6.0]])
    next_log_prob = torch.tensor([-1.0, 0.5])
    y = soft_critic_target(reward, mask, 0.9, next_q, next_log_prob, torch.tensor(0.2))
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * (4.0 + 0.2), 2.0]))


@pytest.mark.parametrize("entropy, direction", [(5.0, -1), (-5.0, +1)])
def test_temperature_moves_toward_the_target_entropy(entropy, direction):
    """Entropy above the target lowers α, below raises it."""
    agent = SACAgent(3, 2, SACConfig(**TINY))
    assert agent.target_entropy == -1.0
    before = agent.alpha.item()
    for _ in range(50):
        agent.update_temperature(entropy)
    assert (agent.alpha.item() - before) * direction > 0.01
    # d/dlogα of α(H − H̄) at α = 1 is H − H̄: gradient descent lowers α when H > H̄
    log_alpha = torch.tensor(0.0, requires_grad=True)
    temperature_loss(log_alpha, torch.tensor(entropy), -1.0).backward()
    assert log_alpha.grad.item() == pytest.approx(entropy + 1.0)


def test_sac_temperature_and_entropy_fall_toward_the_target_on_a_bandit():
    """Whole updates on a one-step problem with a peaked reward: starting above the target −|A|/2,
    α falls and with it the policy's entropy."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(1, 2, 1000)
    for _ in range(1000):
        a = rng.uniform(-1, 1, 2)
        buffer.add(np.zeros(1), a, -4 * np.sum((a - 0.3) ** 2), np.zeros(1), True)
    agent = SACAgent(1, 2, SACConfig(**TINY, temperature_lr=3e-2, actor_lr=1e-2, critic_lr=1e-2))
    entropies = [agent.update(buffer.sample(32))["entropy"] for _ in range(250)]
    assert entropies[0] > agent.target_entropy + 2
    assert abs(np.mean(entropies[-30:]) - agent.target_entropy) < 0.7 and agent.alpha.item() < 0.3


def test_td3_target_smoothing_noise_is_clipped():
    torch.manual_seed(0)
    mu = torch.full((10_000, 2), 0.9)
    a = td3_target_action(mu, noise_std=10.0, noise_clip=0.5)
    assert (a - mu).abs().max() <= 0.5 + 1e-6
    assert (a - mu).abs().max() > 0.49  # the clip is reached, and a' may leave [-1, 1] (authors' code)
    assert a.max() > 1.0
    torch.testing.assert_close(td3_target_action(mu, 0.0, 0.5), mu)


def test_td3_actor_moves_only_every_actor_delay_updates():
    torch.manual_seed(0)
    agent = TD3Agent(3, 2, TD3Config(**TINY))
    buffer = filled_buffer()
    snapshot = lambda m: [p.detach().clone() for p in m.parameters()]
    actor0, target0 = snapshot(agent.actor), snapshot(agent.actor_target)
    first = agent.update(buffer.sample(32))
    assert "actor_loss" not in first
    assert all(torch.equal(p, q) for p, q in zip(actor0, agent.actor.parameters()))
    second = agent.update(buffer.sample(32))
    assert "actor_loss" in second
    assert not all(torch.equal(p, q) for p, q in zip(actor0, agent.actor.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(target0, agent.actor_target.parameters()))


@pytest.mark.parametrize("algo", sorted(algos.ALGOS))
def test_every_agent_has_the_same_shape(algo):
    """act / sample_actions / update / state_dict, ``algo``, ``device``, ``n_updates``."""
    agent_cls, config_cls = algos.get(algo)
    torch.manual_seed(0)
    agent = agent_cls(3, 2, config_cls(actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=32, device="cpu"))
    assert agent.algo == algo and agent.device == torch.device("cpu") and agent.n_updates == 0
    obs = np.zeros(3, np.float32)
    for deterministic in (False, True):
        a = agent.act(obs, deterministic=deterministic)
        assert a.shape == (2,) and np.all(np.abs(a) <= 1)
    assert agent.act(np.zeros((4, 3), np.float32)).shape == (4, 2)
    samples = agent.sample_actions(obs, 7)
    assert isinstance(samples, torch.Tensor) and samples.shape == (7, 2)

    buffer = filled_buffer()
    metrics = {}
    for _ in range(2):
        metrics.update(agent.update(buffer.sample(32)))
    assert {"critic_loss", "actor_loss", "q_mean"} <= metrics.keys()
    assert all(math.isfinite(v) for v in metrics.values()) and agent.n_updates == 2

    blob = io.BytesIO()
    torch.save(agent.state_dict(), blob)
    blob.seek(0)
    clone = agent_cls(3, 2, agent.config)
    clone.load_state_dict(torch.load(blob, weights_only=True))
    assert clone.n_updates == 2
    if algo != "qsm":  # QSM's deterministic action is still a DDPM sample
        np.testing.assert_array_equal(clone.act(obs, deterministic=True), agent.act(obs, deterministic=True))


def test_sac_update_reports_temperature_and_entropy():
    agent = SACAgent(3, 2, SACConfig(**TINY))
    metrics = agent.update(filled_buffer().sample(32))
    assert {"critic_loss", "actor_loss", "q_mean", "entropy", "alpha"} == metrics.keys()
    assert (metrics["alpha"] < 1.0) == (metrics["entropy"] > agent.target_entropy)
