"""QSM on toy bandits: the update's pieces, the sign of the target, modes kept, the corner trap."""

import numpy as np
import pytest
import torch

import qsm_tutorial
from qsm_tutorial import envs
from qsm_tutorial.algos.common import critic_target
from qsm_tutorial.nets import TwinCritic
from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig, q_action_gradient, q_score_target
from qsm_tutorial.envs.bandits import SINGLE_PEAK, mode_shares
from qsm_tutorial.replay import ReplayBuffer


def test_config_defaults_are_the_papers():
    c = QSMConfig()
    assert (c.alpha, c.T, c.schedule, c.actor_hidden, c.critic_hidden) == (50.0, 5, "vp", (512, 512), (512, 512))
    assert (c.actor_lr, c.critic_lr, c.gamma, c.tau, c.batch_size) == (3e-4, 3e-4, 0.99, 0.005, 256)
    assert (c.exploration_noise, c.target_noise, c.warmup_steps, c.sampler) == (0.1, 0.1, 10_000, "ddpm")
    assert QSMConfig.preset("paper") == c


def test_td_target_is_reward_when_episode_ended():
    reward, mask = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[5.0, 3.0], [4.0, 6.0]])
    assert torch.allclose(critic_target(reward, mask, 0.9, next_q), torch.tensor([1.0, 2.0 + 0.9 * 3.0]))


def test_bandit_critic_learns_the_reward_through_the_general_update():
    """A bandit's transitions all end, so the general TD update regresses Q onto r."""
    env = envs.make("bandit/single-peak", seed=0)
    torch.manual_seed(0)
    agent = QSMAgent(1, 2, QSMConfig.preset("bandit"))
    buffer = ReplayBuffer(1, 2, 2000)
    obs, _ = env.reset(seed=0)
    for _ in range(2000):
        a = env.action_space.sample()
        _, r, terminated, _, _ = env.step(a)
        buffer.add(obs, a, r, obs, terminated)
    for _ in range(300):
        agent.update_critic(buffer.sample(256))
    test_a = torch.rand(200, 2) * 2 - 1
    q = agent.critic(torch.zeros(200, 1), test_a).mean(0)
    assert (q - env.reward(test_a)).abs().mean() < 0.05


def test_score_target_points_up_the_critic_gradient():
    torch.manual_seed(0)
    critic = TwinCritic(1, 2, (16, 16))
    obs, a = torch.zeros(8, 1), torch.rand(8, 2)
    g = q_action_gradient(critic, obs, a)
    a_req = a.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(critic(obs, a_req)[0].sum(), a_req)
    a_req = a.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(critic(obs, a_req)[1].sum(), a_req)
    assert torch.allclose(g, (g1 + g2) / 2)
    assert torch.allclose(q_score_target(g, alpha=3.0), -3.0 * g)
    normalized = q_score_target(g, alpha=3.0, normalize=True)
    assert torch.allclose(normalized.norm(dim=-1).mean(), torch.tensor(3.0), atol=1e-4)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="sampler"):
        QSMConfig(sampler="euler")
    with pytest.raises(ValueError, match="unknown QSM preset"):
        QSMConfig.preset("fast")
    with pytest.raises(TypeError, match="unknown qsm config field"):
        qsm_tutorial.train("bandit/ring", total_steps=10, alfa=3.0)


@pytest.mark.slow
def test_sign_samples_concentrate_at_the_single_peak():
    run = qsm_tutorial.train("bandit/single-peak", seed=0, progress=False)
    samples = run.agent.sample_actions(np.zeros(1), 2000)
    mean = samples.mean(dim=0)
    assert torch.linalg.norm(mean - torch.tensor(SINGLE_PEAK)) < 0.1, mean


@pytest.mark.slow
def test_bandit_defaults_keep_all_four_modes():
    """Each of the four equal modes keeps >= 10 % of 2,000 samples (measured: see the note in
    ``train.DEFAULT_TOTAL_STEPS``); a Gaussian policy would hold at most one."""
    env = envs.make("bandit/four-gaussians")
    run = qsm_tutorial.train("bandit/four-gaussians", seed=0, progress=False)
    shares = mode_shares(run.agent.sample_actions(np.zeros(1), 2000), env.modes)
    assert min(shares) >= 0.10, shares


@pytest.mark.slow
def test_faithful_ddpm_sampler_piles_samples_onto_the_corners():
    """The known trap: the paper's 5-step DDPM chain with the -alpha*grad Q target, on interior modes,
    puts (almost) every sample on a corner of the box and none near a mode."""
    env = envs.make("bandit/four-gaussians")
    run = qsm_tutorial.train("bandit/four-gaussians", seed=0, total_steps=800, sampler="ddpm", alpha=50.0, progress=False)
    samples = run.agent.sample_actions(np.zeros(1), 2000)
    at_corner = float((samples.abs() > 0.99).all(dim=1).float().mean())
    assert at_corner > 0.9 and sum(mode_shares(samples, env.modes)) < 0.05


def test_action_candidates_take_the_critics_best_sample():
    """With N candidates, act() returns, per state, the policy sample with the highest min(Q₁, Q₂)."""
    agent = QSMAgent(3, 2, QSMConfig(device="cpu", actor_hidden=(16, 16), critic_hidden=(16, 16), action_candidates=8))
    agent.critic = lambda obs, a: torch.stack([a[:, 0], a[:, 0] + a[:, 1]])  # min = a₀ unless a₁ < 0
    obs = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    torch.manual_seed(1)
    chosen = agent.act(obs, deterministic=True)
    torch.manual_seed(1)
    candidates = agent.sample(torch.as_tensor(obs).repeat_interleave(8, dim=0)).view(50, 8, 2)
    q = torch.minimum(candidates[..., 0], candidates.sum(-1))
    expected = candidates[torch.arange(50), q.argmax(1)]
    np.testing.assert_array_equal(chosen, expected.numpy())
    assert not np.array_equal(chosen, candidates[:, 0].numpy())  # not just the first sample


def test_action_candidates_must_be_positive():
    with pytest.raises(ValueError, match="action_candidates"):
        QSMConfig(action_candidates=0)
