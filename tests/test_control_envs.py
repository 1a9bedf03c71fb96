"""Control envs (DeepMind Control through shimmy, Gymnasium MuJoCo) and rollout videos."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering, before mujoco is imported

import gymnasium as gym
import numpy as np
import pytest

from qsm_tutorial import envs
from qsm_tutorial.envs import control

FAST_IDS = ["dmc/cartpole-swingup", "InvertedPendulum-v5"]


def _check_interface(env: gym.Env) -> None:
    """Flat finite float32 obs, a float32 Box(-1, 1) action space, and a working random step."""
    space = env.action_space
    assert isinstance(space, gym.spaces.Box) and space.dtype == np.float32
    np.testing.assert_array_equal(space.low, -1.0)
    np.testing.assert_array_equal(space.high, 1.0)
    obs, _ = env.reset(seed=0)
    for o in (obs, env.step(space.sample())[0]):
        assert o.dtype == np.float32 and o.ndim == 1 and np.all(np.isfinite(o))
        assert o.shape == env.observation_space.shape


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_interface_and_time_limit(env_id):
    env = envs.make(env_id, seed=0)
    _check_interface(env)
    assert env.spec.max_episode_steps == 1000  # the TimeLimit is visible in the spec
    env.close()


def test_every_named_id_builds_resets_and_steps():
    named = set(control.DMC_TASKS) | set(control.GYM_TASKS)
    assert named <= set(envs.available())
    for env_id in sorted(named):
        env = envs.make(env_id, seed=0)
        _check_interface(env)
        env.close()


def test_resolver_builds_unnamed_tasks():
    env = envs.make("dmc/pendulum-swingup", seed=0)  # not registered by name
    _check_interface(env)
    assert envs.make("MountainCarContinuous-v0").action_space.shape == (1,)


def test_dmc_dict_observation_is_flattened_in_sorted_key_order():
    env = envs.make("dmc/cartpole-swingup")
    obs, _ = env.reset(seed=3)
    raw = env.unwrapped._env.task.get_observation(env.unwrapped._env.physics)
    expected = np.concatenate([np.ravel(raw[key]) for key in sorted(raw)]).astype(np.float32)
    np.testing.assert_allclose(obs, expected, rtol=1e-6)


def test_actions_in_minus_one_one_map_to_the_real_bounds():
    # InvertedPendulum's motor takes [-3, 3]; Pendulum's torque [-2, 2].
    env = envs.make("InvertedPendulum-v5", seed=0)
    low, high = env.unwrapped.action_space.low, env.unwrapped.action_space.high
    assert high[0] == 3.0
    for action, expected in ((-1.0, low), (1.0, high)):
        env.step(np.array([action], dtype=np.float32))
        np.testing.assert_allclose(env.unwrapped.data.ctrl, expected)

    env = envs.make("Pendulum-v1", seed=0)
    env.step(np.array([1.0], dtype=np.float32))
    assert env.unwrapped.last_u == pytest.approx(env.unwrapped.action_space.high[0]) == 2.0

    env = envs.make("dmc/cheetah-run", seed=0)  # float64 inside, float32 outside
    inner = env.unwrapped.action_space
    env.step(np.full(6, -1.0, dtype=np.float32))
    np.testing.assert_allclose(env.unwrapped._env.physics.data.ctrl, inner.low)


def _rollout(env_id: str, seed: int, steps: int = 20) -> np.ndarray:
    """Observations of a fresh env under a fixed action sequence."""
    env = envs.make(env_id)
    actions = np.random.default_rng(123).uniform(-1, 1, (steps,) + env.action_space.shape)
    obs, _ = env.reset(seed=seed)
    seq = [obs] + [env.step(a.astype(np.float32))[0] for a in actions]
    env.close()
    return np.stack(seq)


@pytest.mark.parametrize("env_id", ["dmc/cartpole-swingup", "dmc/walker-run", "InvertedPendulum-v5"])
def test_seed_fixes_the_physics(env_id):
    a, b, c = _rollout(env_id, seed=7), _rollout(env_id, seed=7), _rollout(env_id, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], c[0])  # random initial state follows the seed


def test_make_with_seed_makes_later_resets_reproducible():
    first = [envs.make("dmc/walker-run", seed=5).reset()[0] for _ in range(2)]
    np.testing.assert_array_equal(*first)


def test_dmc_episode_ends_by_truncation_at_1000_steps():
    env = envs.make("dmc/cartpole-swingup", seed=0)
    env.reset(seed=0)
    for t in range(1, 1001):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (t == 1000)
    assert info["episode"]["l"] == 1000


def test_dmc_shorter_time_limit():
    env = envs.make("dmc/cartpole-swingup", seed=0, max_episode_steps=50)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(50)]
    assert flags[-1] == (False, True) and not any(any(f) for f in flags[:-1])
    with pytest.raises(ValueError, match="time_limit"):
        envs.make("dmc/cartpole-swingup", max_episode_steps=5000)


def test_dm_control_model_deprecation_is_not_logged_other_absl_warnings_are(caplog):
    absl = logging.getLogger("absl")
    with caplog.at_level("WARNING", logger="absl"):
        envs.make("dmc/cheetah-run").close()  # its XML sets the deprecated 'settotalmass'
        absl.warning("an unrelated warning")
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == ["an unrelated warning"]


def test_unknown_dmc_domain_and_task():
    with pytest.raises(ValueError, match="unknown dm_control domain 'foo'.*cartpole") as err:
        envs.make("dmc/foo-bar")
    assert isinstance(err.value, envs.UnknownEnvError)  # also a KeyError, like other unknown ids
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown dm_control task 'bar'.*dmc/cartpole-swingup"):
        envs.make("dmc/cartpole-bar")


def test_discrete_actions_are_refused():
    with pytest.raises(control.UnsupportedEnvError, match="QSM needs continuous actions.*Discrete"):
        envs.make("CartPole-v1")


class _UnboundedActions(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)


def test_unbounded_action_box_is_refused():
    with pytest.raises(control.UnsupportedEnvError, match="bounded action Box"):
        control.wrap(_UnboundedActions())


def test_rgb_render_for_gym_mujoco():
    env = envs.make("InvertedPendulum-v5", render_mode="rgb_array", seed=0)
    frame = env.render()
    assert frame.shape == (control.RENDER_HEIGHT, control.RENDER_WIDTH, 3) and frame.dtype == np.uint8
    env.close()


def test_record_rollout_writes_a_readable_mp4(tmp_path):
    import imageio.v2 as imageio

    from qsm_tutorial.video import record_rollout, show_video

    path = tmp_path / "videos" / "swingup.mp4"
    frames, episode_return = record_rollout(
        "dmc/cartpole-swingup", lambda obs: np.ones(1, np.float32), seed=0, max_steps=20, path=path
    )
    assert frames.shape == (21, 240, 320, 3) and frames.dtype == np.uint8
    assert frames.std() > 0 and not np.array_equal(frames[0], frames[-1])  # the cart moved
    assert np.isfinite(episode_return)
    read = np.stack(imageio.mimread(path))
    assert read.shape == frames.shape
    assert [p.name for p in path.parent.iterdir()] == ["swingup.mp4"]  # no temp file left
    assert "base64" in show_video(frames)._repr_html_()
    assert "base64" in show_video(path)._repr_html_()
