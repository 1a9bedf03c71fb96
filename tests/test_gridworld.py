"""Tests of qsm_tutorial.envs.gridworld: the gym interface, and that its "exact" Q really is exact."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from qsm_tutorial.envs import make
from qsm_tutorial.envs.gridworld import LAYOUTS, MOVES, GridWorld, action_grid, parse_layout

NAMES = ["open", "two-routes", "cliff"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Every tensor here is tiny: on a shared CPU, extra torch threads only spin and make the exact
    # solvers 10-50× slower. Restored afterwards for the other test modules.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def all_states(env: GridWorld) -> torch.Tensor:
    return torch.arange(env.n_states)


# -- the Gymnasium interface ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_layouts_pass_gymnasium_env_checker(name):
    env = make(f"gridworld/{name}", render_mode="rgb_array")
    # Through gymnasium.make (registered on import) the env has a spec: the checker then also
    # builds it in its other render modes.
    check_env(gym.make(f"gridworld/{name}", render_mode="rgb_array").unwrapped)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.sum() == 1.0 and env.observation_space.contains(obs)
    assert env.state_index(obs) == env.start_index == info["state"]
    r, c = env.position_of(env.start_index)
    assert env.layout[r][c] == "S" and env.index_of(r, c) == env.start_index
    img = env.render()
    assert img.dtype == np.uint8 and img.shape == (env.height * 16, env.width * 16, 3)


def test_reset_seed_makes_episodes_reproducible():
    def episode(seed: int) -> list[int]:
        env = make("gridworld/open", slip=0.5)
        env.reset(seed=seed)
        return [env.step(np.array([0.3, -0.2], np.float32))[4]["state"] for _ in range(20)]

    assert episode(7) == episode(7)
    assert episode(7) != episode(8)  # slip 0.5 over 20 steps: equal paths would be a seeding bug


def test_episodes_terminate_on_goal_and_truncate_at_max_steps():
    env = GridWorld("S.G", sharpness=50.0, max_steps=3)  # κ = 50: a push picks its move w.p. 1 − 1e-21
    env.reset(seed=0)
    steps = [env.step([1.0, 0.0]) for _ in range(2)]
    assert [s[1:4] for s in steps] == [(0.0, False, False), (1.0, True, False)]  # reward 1 on entering G
    env.reset(seed=0)
    steps = [env.step([-1.0, 0.0]) for _ in range(3)]  # pushing into the outside: stay put
    assert [s[2:4] for s in steps] == [(False, False), (False, False), (False, True)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0.0, 0.0])


def test_custom_layout_via_make_and_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = make("gridworld/custom", layout=["#####", "#S.H#", "#..G#", "#####"], slip=0.1)
    assert env.n_states == 6 and int(env.is_hazard.sum()) == 1
    env.reset(seed=0)
    ax = env.draw(values=env.optimal_values().V, annotate=True)
    assert ax.images and ax.get_title().startswith("gridworld/custom")
    plt.close(ax.figure)


# -- exact values -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, push, wrong_knobs",
    [("open", (0.6, -0.6), {"gamma": 0.9}), ("cliff", (0.8, 0.2), {"hazard_reward": 0.0})],
)
def test_exact_policy_value_matches_monte_carlo(name, push, wrong_knobs):
    gamma, n_episodes, n_samples = 0.95, 800, 3
    # max_steps = 400: the truncated tail is at most γ^400 ≈ 1e-9, so MC estimates the same V^π.
    knobs = {"slip": 0.2, "gamma": gamma, "max_steps": 400}
    env = make(f"gridworld/{name}", **knobs)
    # A stochastic policy: in state s, one of 3 fixed pushes (scattered around `push`) uniformly.
    gen = torch.Generator().manual_seed(0)
    samples = (torch.tensor(push) + 0.5 * torch.randn(env.n_states, n_samples, 2, generator=gen)).clamp(-1, 1)
    exact = env.evaluate_policy(samples)

    # Q^π is consistent with V^π: V^π(s) = mean over the policy's actions of Q^π(s, a).
    q = exact.Q(all_states(env)[:, None], samples.double())
    torch.testing.assert_close(q.mean(1), exact.V, atol=1e-12, rtol=0)

    rng = np.random.default_rng(0)
    env.reset(seed=0)
    returns = np.empty(n_episodes)
    for i in range(n_episodes):
        obs, _ = env.reset()
        ret, discount, done = 0.0, 1.0, False
        while not done:
            action = samples[env.state_index(obs), rng.integers(n_samples)].numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            ret += discount * reward
            discount *= gamma
            done = terminated or truncated
        returns[i] = ret
    mean, stderr = returns.mean(), returns.std(ddof=1) / np.sqrt(n_episodes)
    # Measured (seeds 0): open: exact 0.4480, MC 0.4533 ± 0.0064 (0.8 s.e.);
    #                     cliff: exact −0.2981, MC −0.2822 ± 0.0262 (0.6 s.e.).
    assert abs(mean - exact.start_value) < 4 * stderr
    # The check has power: a model with a plausible bug (wrong discount; hazards not penalised)
    # gives a value of the same policy far outside the 4-standard-error band (measured: 0.2255,
    # 36 s.e. away, and +0.2082, 19 s.e. away).
    wrong = make(f"gridworld/{name}", **{**knobs, **wrong_knobs}).evaluate_policy(samples).start_value
    assert abs(mean - wrong) > 8 * stderr


def test_optimal_values_satisfy_bellman_optimality():
    env = make("gridworld/cliff", slip=0.1)
    opt = env.optimal_values()
    assert opt.bellman_residual < 1e-10
    S = all_states(env)[:, None]
    # No action beats V*: Q*(s, a) ≤ V*(s) at random actions, and at random actions close to the
    # greedy ones (where an optimum found only on the 41 × 41 grid would be beaten, by ~1e-5).
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(env.n_states, 256, 2, generator=gen, dtype=torch.float64) * 2 - 1
    jitter = 0.02 * torch.randn(env.n_states, 256, 2, generator=gen, dtype=torch.float64)
    near = (opt.greedy_actions[:, None] + jitter).clamp(-1, 1)
    assert (opt.Q(S, a) <= opt.V[:, None] + 1e-12).all() and (opt.Q(S, near) <= opt.V[:, None] + 1e-12).all()
    # ... the greedy pushes attain it, and the best push on a 41 × 41 grid comes within the grid's resolution.
    torch.testing.assert_close(opt.Q(all_states(env), opt.greedy_actions), opt.V, atol=1e-10, rtol=0)
    gap = opt.V - opt.Q(S, action_grid(41).reshape(1, -1, 2)).max(1).values
    assert gap.min() > -1e-10 and gap.max() < 5e-3
    assert (opt.V[env.is_terminal] == 0).all()
    # V* dominates any policy, e.g. a random one, and the grid-only solution.
    assert (env.evaluate_policy(a).V <= opt.V + 1e-10).all()
    assert (env.optimal_values(refine=False).V <= opt.V + 1e-10).all()
    assert env.start_value() == pytest.approx(opt.start_value, abs=1e-12)


def test_action_gradient_matches_finite_differences():
    env = make("gridworld/two-routes", slip=0.1, sharpness=3.0)
    V = env.optimal_values().V
    S = all_states(env)[:, None]
    a = torch.rand(env.n_states, 4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.8 - 0.9
    grad = env.action_gradient(S, a, V)
    h, eye = 1e-6, torch.eye(2, dtype=torch.float64)
    fd = torch.stack([(env.Q(S, a + h * eye[i], V) - env.Q(S, a - h * eye[i], V)) / (2 * h) for i in range(2)], -1)
    torch.testing.assert_close(grad, fd, atol=1e-7, rtol=0)
    assert grad.abs().max() > 0.05  # not trivially zero
    assert env.action_gradient(0, a[0].float(), V).dtype == torch.float32


# -- the layouts teach what they claim ---------------------------------------------------------------
def test_two_routes_has_two_equal_optimal_pushes():
    env = make("gridworld/two-routes")
    opt = env.optimal_values()
    grid = action_grid(81)  # x = grid[i, j, 0] varies with j; column 40 is x = 0
    q = opt.Q(env.start_index, grid)
    left, right, middle = q[:, :40], q[:, 41:], q[:, 40]
    assert float(left.max()) == pytest.approx(float(right.max()), abs=1e-12)  # mirror symmetry
    a_left = grid[:, :40].reshape(-1, 2)[left.argmax()]
    a_right = grid[:, 41:].reshape(-1, 2)[right.argmax()]
    torch.testing.assert_close(a_left, torch.tensor([-1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(a_right, torch.tensor([1.0, 0.0], dtype=torch.float64))
    # Two separate maxima: every push with x = 0 (between them) is clearly worse.
    assert float(middle.max()) < float(left.max()) - 0.1
    assert float(left.max()) == pytest.approx(opt.start_value, abs=1e-9)


@pytest.mark.parametrize("slip, first_move", [(0.0, "right"), (0.3, "up")])
def test_cliff_slip_flips_optimal_first_move(slip, first_move):
    env = make("gridworld/cliff", slip=slip)
    opt = env.optimal_values()
    probs = env.move_probs(opt.greedy_actions[env.start_index])
    assert MOVES[int(probs.argmax())] == first_move
    # Not a near-tie: the best push that mostly moves right and the best that mostly moves up
    # (over an 81 × 81 grid) differ by a clear margin (measured: 0.034 at slip 0, 0.076 at 0.3).
    grid = action_grid(81).reshape(-1, 2)
    q, move = opt.Q(env.start_index, grid), env.move_probs(grid).argmax(-1)
    best_right, best_up = q[move == MOVES.index("right")].max(), q[move == MOVES.index("up")].max()
    assert (best_right - best_up if first_move == "right" else best_up - best_right) > 0.02


# -- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "action, message",
    [([1.5, 0.0], r"outside \[-1, 1\]\^2; clip"), ([np.nan, 0.0], "not finite"), ([0.1, 0.2, 0.3], "shape")],
)
def test_bad_actions_raise(action, message):
    env = make("gridworld/open")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


@pytest.mark.parametrize(
    "layout, message",
    [
        ("#####\n#..G#\n#####", "exactly one start"),
        ("#####\n#S..#\n#####", "no goal"),
        ("#####\n#S.Gx\n#####", "unknown character 'x' at row 1, column 4"),
        ("#####\n#S.G#\n####", "same length"),
        ("#####\n#S#G#\n#####", "can be reached"),
        ("", "empty"),
    ],
)
def test_bad_layouts_raise_one_line_errors(layout, message):
    with pytest.raises(ValueError, match=message) as err:
        GridWorld(layout)
    assert "\n" not in str(err.value)


def test_bad_knobs_and_shapes_raise():
    for knobs in ({"slip": 1.5}, {"gamma": 1.0}, {"sharpness": -1.0}, {"max_steps": 0}, {"render_mode": "human"}):
        with pytest.raises(ValueError):
            make("gridworld/open", **knobs)
    with pytest.raises(TypeError, match="gridworld/custom"):
        make("gridworld/open", layout=LAYOUTS["cliff"])
    env = make("gridworld/open")
    with pytest.raises(ValueError, match="n_samples"):
        env.evaluate_policy(torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="one value per state"):
        env.Q(0, torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="integer index"):
        env.Q(env.n_states, torch.zeros(2), torch.zeros(env.n_states))
    assert parse_layout("  #S.G#  \n\n") == ("#S.G#",)
