import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from qsm_tutorial import envs
from qsm_tutorial.envs import Bandit2D
from qsm_tutorial.envs.bandits import BUILTIN_BANDITS, action_grid, concave_bowl

BANDIT_IDS = [f"bandit/{name}" for name in BUILTIN_BANDITS]


def test_available_lists_every_builtin_bandit():
    assert set(BANDIT_IDS) <= set(envs.available())
    assert len(BANDIT_IDS) >= 5


@pytest.mark.parametrize("env_id", BANDIT_IDS)
def test_gymnasium_check_env(env_id):
    env = envs.make(env_id, seed=0)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    obs2, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert terminated and not truncated and np.isfinite(reward)


@pytest.mark.parametrize("env_id", BANDIT_IDS)
def test_reward_grad_matches_finite_differences(env_id):
    env = envs.make(env_id)
    a = torch.rand(50, 2, dtype=torch.float32) * 1.6 - 0.8
    h = 1e-3
    fd = torch.stack(
        [(env.reward(a + h * e) - env.reward(a - h * e)) / (2 * h) for e in torch.eye(2)], dim=-1
    )
    assert torch.allclose(env.reward_grad(a), fd, atol=2e-2, rtol=1e-2)


def test_four_gaussians_has_four_equal_modes():
    env = envs.make("bandit/four-gaussians")
    peaks = env.reward(env.modes)
    assert torch.allclose(peaks, peaks[0].expand(4), atol=1e-6)
    assert env.reward(torch.zeros(2)) < 0.1 * peaks[0]


def test_four_clusters_best_mode_is_bottom_right():
    best, value = envs.make("bandit/four-clusters").optimum()
    assert torch.allclose(best, torch.tensor([0.8, -0.8]), atol=0.02)
    assert math.isclose(value, 5.0, rel_tol=0.01)


def test_custom_bandit_and_noise():
    env = Bandit2D(concave_bowl((0.2, 0.2)), name="mine", reward_noise=0.5)
    env.reset(seed=0)
    rewards = [env.step(np.array([0.2, 0.2], np.float32))[1] for _ in range(400)]
    assert abs(np.mean(rewards) - 1.0) < 4 * 0.5 / math.sqrt(400)
    assert 0.4 < np.std(rewards) < 0.6


def test_unknown_env_id_lists_what_exists():
    with pytest.raises(envs.UnknownEnvError, match="bandit/four-gaussians") as err:
        envs.make("bandit/four-gausians")
    assert "Did you mean" in str(err.value) and "\n" not in str(err.value)


def test_reward_fn_with_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"must map actions \[\.\.\., 2\] to rewards"):
        Bandit2D(lambda a: a.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="failed on a"):
        Bandit2D(lambda a: a @ torch.ones(3))


def test_non_finite_rewards_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        Bandit2D(lambda a: torch.log(a[..., 0]))  # log of negatives is NaN on the probe grid
    env = Bandit2D(lambda a: 1.0 / (a[..., 0] - 0.3))  # finite on the probe grid, infinite at 0.3
    env.reset(seed=0)
    with pytest.raises(ValueError, match="must be finite"):
        env.step(np.array([0.3, 0.0], np.float32))


@pytest.mark.parametrize(
    "action, message",
    [([1.5, 0.0], "outside"), ([np.nan, 0.0], "not finite"), ([0.1, 0.2, 0.3], "shape")],
)
def test_bad_actions_are_refused(action, message):
    env = envs.make("bandit/ring", seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(np.array(action, np.float32))


def test_action_grid_layout():
    g = action_grid(3)
    assert g.shape == (3, 3, 2)
    assert torch.equal(g[0, 2], torch.tensor([1.0, -1.0]))  # x varies along dim 1, y along dim 0
