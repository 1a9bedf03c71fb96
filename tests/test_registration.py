"""Gymnasium registration: gymnasium.make builds the env that envs.make builds, for each family."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from qsm_tutorial import envs


def _same_env(env_id: str, **kwargs) -> None:
    ours, theirs = envs.make(env_id, **kwargs), gym.make(env_id, **kwargs)
    assert theirs.unwrapped.spec.id == env_id
    assert theirs.observation_space == ours.observation_space
    assert theirs.action_space == ours.action_space
    np.testing.assert_array_equal(theirs.action_space.low, -1.0)
    np.testing.assert_array_equal(theirs.action_space.high, 1.0)
    obs_ours, _ = ours.reset(seed=7)
    obs_theirs, _ = theirs.reset(seed=7)
    np.testing.assert_array_equal(obs_theirs, obs_ours)
    action = np.full(ours.action_space.shape, 0.5, dtype=np.float32)
    for a, b in zip(theirs.step(action), ours.step(action)):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        elif not isinstance(a, dict):
            assert a == b
    ours.close()
    theirs.close()


@pytest.mark.parametrize("env_id", ["bandit/four-gaussians", "gridworld/two-routes"])
def test_gymnasium_make_builds_the_same_toy_env(env_id):
    _same_env(env_id)


def test_gymnasium_make_passes_keyword_arguments():
    _same_env("gridworld/cliff", slip=0.2)
    assert gym.make("gridworld/cliff", slip=0.2).unwrapped.slip == 0.2
    custom = gym.make("gridworld/custom", layout="#####\n#S.G#\n#####")
    assert custom.unwrapped.n_states == 3


def test_gymnasium_make_builds_the_same_dmc_env():
    _same_env("dmc/cartpole-swingup")
    env = gym.make("dmc/cartpole-swingup")
    assert env.spec.max_episode_steps == 1000  # dm_control's episode length, seen through the wrappers
    env.close()


def test_every_package_id_but_gymnasiums_own_is_registered():
    own = [i for i in envs.available() if i.split("/")[0] in {"bandit", "gridworld", "dmc"}]
    assert set(own) == set(envs.available()) - set(envs.GYM_TASKS)
    for env_id in own:
        spec = gym.spec(env_id)
        assert spec.entry_point == "qsm_tutorial.envs:make" and spec.kwargs == {"env_id": env_id}
    # Gymnasium's own ids keep their meaning (the raw env, not ours).
    assert gym.spec("HalfCheetah-v5").entry_point != "qsm_tutorial.envs:make"


def test_registration_is_idempotent_and_loads_no_simulator():
    # In a fresh interpreter (a reload here would leave other tests with stale classes), with
    # warnings as errors: Gymnasium warns when an id is registered again.
    code = """
import importlib, sys
import gymnasium
import qsm_tutorial.envs as envs
assert "dmc/cheetah-run" in gymnasium.registry
assert "dm_control" not in sys.modules and "mujoco" not in sys.modules
importlib.reload(envs)
importlib.reload(envs)
assert gymnasium.make("bandit/ring").action_space.shape == (2,)
"""
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)


def test_a_module_qualified_id_needs_no_import_of_ours():
    # A fresh interpreter with only a bare `import qsm_tutorial`, which registers nothing: Gymnasium
    # imports the module named before the colon, and that registers the ids (the README's spelling).
    code = """
import sys
import gymnasium
import qsm_tutorial
assert "qsm_tutorial.envs" not in sys.modules
env = gymnasium.make("qsm_tutorial.envs:bandit/ring")
assert env.unwrapped.spec.id == "bandit/ring" and env.action_space.shape == (2,)
"""
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)
