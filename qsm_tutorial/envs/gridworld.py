"""Small grid worlds with a continuous push action and *exact* Q, V and ∇ₐQ.

The agent stands on a cell of a grid and chooses a push a = (aₓ, a_y) ∈ [−1, 1]² (x to the right,
y up). The push does not move it deterministically: it sets the probabilities of the five moves
k ∈ {up, down, left, right, stay} through a softmax,

    p_k(a) = (1 − slip) · softmax(κ⟨a, d_k⟩)_k + slip · u_k,

with d_k the unit vector of move k (the logit of *stay* is fixed at 0), κ = ``sharpness``, and
u = (¼, ¼, ¼, ¼, 0) the "slip": with probability ``slip`` a uniformly random direction replaces the
move. A move into a wall or off the grid leaves the agent where it is. Entering a goal cell ends the
episode with reward ``goal_reward`` (+1), entering a hazard ends it with ``hazard_reward`` (−1);
every other move costs ``step_cost`` (0 by default: the discount γ already favours short routes).

Because p(a) is smooth in a and there are only a few states, everything a critic should learn can
be computed exactly with torch, and differentiated:

    Q(s, a) = Σ_k p_k(a) · (r(s, k) + γ · (1 − done(s, k)) · V(s'(s, k)))      (one Bellman backup)
    V^π    = (I − γ P_π)⁻¹ r_π                                             (policy evaluation)
    V*(s)  = max_a Q*(s, a)                                                (policy iteration)

``GridWorld.Q``, ``GridWorld.action_gradient``, ``GridWorld.evaluate_policy`` and
``GridWorld.optimal_values`` return these; ∇ₐQ comes from torch.autograd.

Built-ins (``qsm_tutorial.envs.make("gridworld/<name>", slip=..., sharpness=..., gamma=...)``):

===============  ==============================================================================
open             a 5 × 5 room, start top-left, goal bottom-right
two-routes       start below a wall block, goal above it: going left or going right around the
                 block are equally short, so Q*(start, ·) has two equal maxima, a = (−1, 0) and
                 a = (1, 0). Hazards right above and below the start make every push in between
                 bad, the average push (0, 0) included: a multimodal optimal policy.
cliff            a short route (4 moves) along a row of hazards and a safe detour (8 moves)
                 above a wall: with slip = 0 the best first push is right (the short route, tilted
                 up, away from the edge); from slip ≈ 0.12 on, it is up (the detour)
custom           your own world: ``make("gridworld/custom", layout=...)``
===============  ==============================================================================

Layouts are strings of rows: ``#`` wall, ``.`` free, ``S`` start (exactly one), ``G`` goal (at
least one), ``H`` hazard. Cells outside the string count as walls.

Why the two routes go in *opposite* directions: if they started with orthogonal moves (up or
right), the diagonal push (1, 1) would split its mass between two equally good cells and waste less
on "stay" than either pure push, so it would be the single best action: the modes merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # matplotlib is imported only when something is drawn
    from matplotlib.axes import Axes

# ----------------------------------------------------------------------------------------------
# Moves
# ----------------------------------------------------------------------------------------------
MOVES: tuple[str, ...] = ("up", "down", "left", "right", "stay")
# (Δrow, Δcol) of each move on the grid: row 0 is the top, so "up" decreases the row.
MOVE_DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))
# d_k in action coordinates (x right, y up) for the four directions; "stay" has no direction.
DIRECTIONS = torch.tensor([[0.0, 1.0], [0.0, -1.0], [-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
# Where a slip sends the agent: one of the four directions, uniformly (never "stay").
SLIP_DISTRIBUTION = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0], dtype=torch.float64)

CELL_CHARS = {"#": "wall", ".": "free", "S": "start", "G": "goal", "H": "hazard"}
_CHAR_HELP = "use '#' wall, '.' free, 'S' start, 'G' goal, 'H' hazard"


def move_probabilities(actions: Tensor, sharpness: float = 4.0, slip: float = 0.0) -> Tensor:
    """p_k(a) = (1 − slip)·softmax(κ⟨a, d_up⟩, κ⟨a, d_down⟩, κ⟨a, d_left⟩, κ⟨a, d_right⟩, 0)_k + slip·u_k.

    ``actions`` [..., 2] → probabilities [..., 5] over :data:`MOVES`, in float64, differentiable in
    the actions (torch ops only).
    """
    a = torch.as_tensor(actions).to(torch.float64)
    if a.shape[-1:] != (2,):
        raise ValueError(f"actions must have shape [..., 2] (one 2-D push each), got {tuple(a.shape)}")
    logits = sharpness * (a @ DIRECTIONS.T)  # [..., 4]: κ⟨a, d_k⟩ for up, down, left, right
    logits = torch.cat([logits, torch.zeros_like(logits[..., :1])], dim=-1)  # stay: logit 0
    return (1.0 - slip) * torch.softmax(logits, dim=-1) + slip * SLIP_DISTRIBUTION


def action_grid(n: int = 41) -> Tensor:
    """An n × n grid of actions over [−1, 1]² (boundary included), shape [n, n, 2], float64.

    Entry [i, j] is the action (x_j, y_i): x varies along dim 1, as in an image with y up-flipped.
    """
    xs = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    return torch.stack([gx, gy], dim=-1)


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------
LAYOUTS: dict[str, str] = {
    "open": """
        #######
        #S....#
        #.....#
        #.....#
        #.....#
        #....G#
        #######
    """,
    "two-routes": """
        #########
        #...G...#
        #.#####.#
        #.##H##.#
        #...S...#
        ####H####
    """,
    "cliff": """
        #######
        #.....#
        #.###.#
        #S...G#
        #HHHHH#
        #######
    """,
}


def parse_layout(layout: str | Sequence[str]) -> tuple[str, ...]:
    """Check a layout and return its rows (indentation and blank lines are ignored).

    Raises a one-line ValueError for ragged rows, unknown characters, or a missing start / goal.
    """
    lines = layout.splitlines() if isinstance(layout, str) else list(layout)
    rows = tuple(line.strip() for line in lines if line.strip())
    if not rows:
        raise ValueError(f"the layout is empty; give rows of characters ({_CHAR_HELP})")
    for r, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise ValueError(
                f"layout rows must all have the same length: row {r} has {len(row)} characters, "
                f"row 0 has {len(rows[0])} (pad short rows with '#')"
            )
        for c, ch in enumerate(row):
            if ch not in CELL_CHARS:
                raise ValueError(f"unknown character {ch!r} at row {r}, column {c} of the layout; {_CHAR_HELP}")
    n_start = sum(row.count("S") for row in rows)
    if n_start != 1:
        raise ValueError(f"the layout needs exactly one start 'S', it has {n_start}")
    if not any("G" in row for row in rows):
        raise ValueError("the layout has no goal 'G'; mark at least one cell with G")
    return rows


# ----------------------------------------------------------------------------------------------
# Exact solutions
# ----------------------------------------------------------------------------------------------
@dataclass
class ValueSolution:
    """A state-value vector ``V`` [n_states] (float64) of ``env``, and the Q and ∇ₐQ it implies."""

    env: "GridWorld" = field(repr=False)
    V: Tensor

    def Q(self, state: int | Tensor, actions: Tensor) -> Tensor:
        """Q(s, a) = Σ_k p_k(a)·(r + γ(1 − done)·V(s')), see :meth:`GridWorld.Q`."""
        return self.env.Q(state, actions, self.V)

    def action_gradient(self, state: int | Tensor, actions: Tensor) -> Tensor:
        """∇ₐQ(s, a) by autograd, see :meth:`GridWorld.action_gradient`."""
        return self.env.action_gradient(state, actions, self.V)

    @property
    def start_value(self) -> float:
        """V(start)."""
        return float(self.V[self.env.start_index])


@dataclass
class OptimalSolution(ValueSolution):
    """V* and the greedy push a*(s) per state [n_states, 2]; ``Q``/``action_gradient`` give Q*, ∇ₐQ*.

    ``iterations``: policy-iteration sweeps used; ``bellman_residual``: max_s |max_a Q*(s, a) − V*(s)|
    over the action grid and a*(s) (≈ 1e-12 when converged).
    """

    greedy_actions: Tensor = field(default=None)  # type: ignore[assignment]
    iterations: int = 0
    bellman_residual: float = float("nan")


@dataclass
class PolicySolution(ValueSolution):
    """V^π of a policy given by action samples, with its expected transition matrix and reward.

    ``transition[s, s'] = E_a[P(s' | s, a)]`` restricted to continuing moves (rows of terminal
    states and moves that end the episode are 0), ``reward[s] = E_a[r(s, a)]``, so that
    V^π = (I − γ·transition)⁻¹ reward.
    """

    transition: Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    reward: Tensor = field(default=None, repr=False)  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------
# The environment
# ----------------------------------------------------------------------------------------------
class GridWorld(gym.Env):
    """A grid world with a continuous push action a ∈ [−1, 1]² and exact Q (see the module doc).

    Observation: the one-hot vector of the agent's cell among the ``n_states`` non-wall cells
    (float32, in [0, 1]^n_states), numbered row by row; :meth:`state_index` and :meth:`position_of`
    translate. Episodes end (``terminated``) on entering a goal or hazard and are truncated after
    ``max_steps`` steps.

    Knobs: ``slip`` ∈ [0, 1] (probability that a random direction replaces the move),
    ``sharpness`` κ ≥ 0 (how decisively a push selects its direction), ``gamma`` ∈ [0, 1),
    ``max_steps``, the rewards, and ``layout`` (rows of ``# . S G H``). They are fixed at
    construction: build a new env to change them.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        layout: str | Sequence[str] = LAYOUTS["open"],
        *,
        slip: float = 0.0,
        sharpness: float = 4.0,
        gamma: float = 0.95,
        max_steps: int = 50,
        goal_reward: float = 1.0,
        hazard_reward: float = -1.0,
        step_cost: float = 0.0,
        render_mode: str | None = None,
        name: str = "custom",
    ):
        _check_knobs(slip, sharpness, gamma, max_steps, render_mode)
        self.layout = parse_layout(layout)
        self.name = name
        self.slip, self.sharpness, self.gamma = float(slip), float(sharpness), float(gamma)
        self.max_steps = int(max_steps)
        self.goal_reward, self.hazard_reward = float(goal_reward), float(hazard_reward)
        self.step_cost = float(step_cost)
        self.render_mode = render_mode
        self.height, self.width = len(self.layout), len(self.layout[0])

        # States are the non-wall cells, row by row.
        self.cells: list[tuple[int, int]] = [
            (r, c) for r, row in enumerate(self.layout) for c, ch in enumerate(row) if ch != "#"
        ]
        self._index = {cell: i for i, cell in enumerate(self.cells)}
        self.n_states = len(self.cells)
        kinds = [self.layout[r][c] for r, c in self.cells]
        self.start_index = kinds.index("S")
        self.is_goal = torch.tensor([k == "G" for k in kinds])
        self.is_hazard = torch.tensor([k == "H" for k in kinds])
        self.is_terminal = self.is_goal | self.is_hazard
        self._build_tables()
        if not self._goal_reachable():
            raise ValueError("no goal 'G' can be reached from the start 'S'; open a path through the walls")

        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(self.n_states,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.state: int | None = None  # None until reset()
        self.steps = 0
        self._done = False

    # -- the model: tables of next state, reward and continuation per (state, move) ------------
    def _build_tables(self) -> None:
        """next_state[s, k], move_reward[s, k], move_continues[s, k] for the 5 moves of each state.

        A terminal state is absorbing with reward 0 and ``move_continues = 0``, so V(terminal) = 0
        and Q(terminal, ·) = 0 fall out of the same formulas.
        """
        S = self.n_states
        self.next_state = torch.zeros(S, len(MOVES), dtype=torch.long)
        self.move_reward = torch.zeros(S, len(MOVES), dtype=torch.float64)
        self.move_continues = torch.zeros(S, len(MOVES), dtype=torch.float64)
        for s, (r, c) in enumerate(self.cells):
            for k, (dr, dc) in enumerate(MOVE_DELTAS):
                if self.is_terminal[s]:
                    self.next_state[s, k] = s
                    continue
                s2 = self._index.get((r + dr, c + dc), s)  # walls and the outside: stay in place
                self.next_state[s, k] = s2
                if self.is_goal[s2]:
                    self.move_reward[s, k] = self.goal_reward
                elif self.is_hazard[s2]:
                    self.move_reward[s, k] = self.hazard_reward
                else:
                    self.move_reward[s, k] = -self.step_cost
                    self.move_continues[s, k] = 1.0

        # numpy copies for step(): indexing torch tensors one scalar at a time is slow.
        self._next_np, self._reward_np = self.next_state.numpy(), self.move_reward.numpy()
        self._terminal_np = self.is_terminal.numpy()

    def _goal_reachable(self) -> bool:
        seen, frontier = {self.start_index}, [self.start_index]
        while frontier:
            s = frontier.pop()
            if self.is_goal[s]:
                return True
            for s2 in self.next_state[s].tolist():
                if s2 not in seen:
                    seen.add(s2)
                    frontier.append(s2)
        return False

    def move_probs(self, actions: Tensor) -> Tensor:
        """p_k(a) for actions [..., 2] → [..., 5] (float64), with this env's sharpness and slip."""
        return move_probabilities(actions, self.sharpness, self.slip)

    def backup_targets(self, V: Tensor) -> Tensor:
        """y[s, k] = r(s, k) + γ·(1 − done(s, k))·V(s'(s, k)): the value of each move, [n_states, 5]."""
        V = self._check_values(V)
        return self.move_reward + self.gamma * self.move_continues * V[self.next_state]

    # -- exact Q, ∇ₐQ, V^π, V* -------------------------------------------------------------------
    def Q(self, state: int | Tensor, actions: Tensor, V: Tensor) -> Tensor:
        """Q(s, a) = Σ_k p_k(a)·(r(s, k) + γ·(1 − done(s, k))·V(s'(s, k))), one exact backup of V.

        ``state``: an int, or a LongTensor broadcastable against ``actions.shape[:-1]``;
        ``actions``: [..., 2]; ``V``: [n_states]. Returns [...], differentiable in the actions, in
        the actions' dtype when they are a float tensor (else float64). Q of a terminal state is 0.
        """
        actions = torch.as_tensor(actions)
        out_dtype = actions.dtype if actions.is_floating_point() else torch.float64
        y = self.backup_targets(V)[self._check_state(state)]  # [5] or [..., 5]
        return (self.move_probs(actions) * y).sum(-1).to(out_dtype)

    def action_gradient(self, state: int | Tensor, actions: Tensor, V: Tensor) -> Tensor:
        """∇ₐQ(s, a) by torch.autograd, same shape and dtype as ``actions`` [..., 2]."""
        a = torch.as_tensor(actions)
        a = (a if a.is_floating_point() else a.to(torch.float64)).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.Q(state, a, V).sum(), a)  # states are independent
        return grad

    def evaluate_policy(self, action_samples: Tensor) -> PolicySolution:
        """Exact V^π for the policy that, in state s, plays one of ``action_samples[s]`` uniformly.

        ``action_samples``: [n_states, n_samples, 2] (or [n_states, 2] for a deterministic
        policy); rows of terminal states are ignored. With p̄(s) = mean over samples of p(a):

            r_π(s) = Σ_k p̄_k(s)·r(s, k),   P_π(s, s') = Σ_k p̄_k(s)·(1 − done(s, k))·[s'(s, k) = s'],
            V^π = (I − γ P_π)⁻¹ r_π   (a linear solve, exact for the given samples).

        Returns a :class:`PolicySolution`; its ``Q(state, actions)`` is Q^π.
        """
        a = torch.as_tensor(action_samples).to(torch.float64)
        if a.dim() == 2:
            a = a.unsqueeze(1)
        if a.dim() != 3 or a.shape[0] != self.n_states or a.shape[2] != 2:
            raise ValueError(
                f"action_samples must have shape [n_states={self.n_states}, n_samples, 2], got {tuple(a.shape)}"
            )
        p_bar = self.move_probs(a).mean(dim=1)  # [S, 5]: the policy's expected move distribution
        return self._solve(p_bar)

    def _solve(self, p_bar: Tensor) -> PolicySolution:
        reward = (p_bar * self.move_reward).sum(-1)
        transition = torch.zeros(self.n_states, self.n_states, dtype=torch.float64)
        transition.scatter_add_(1, self.next_state, p_bar * self.move_continues)
        system = torch.eye(self.n_states, dtype=torch.float64) - self.gamma * transition
        V = torch.linalg.solve(system, reward)
        return PolicySolution(env=self, V=V, transition=transition, reward=reward)

    def optimal_values(
        self, n_grid: int = 41, refine: bool = True, tol: float = 1e-11, max_iter: int = 200
    ) -> OptimalSolution:
        """V*, Q* and the greedy pushes, by policy iteration with exact evaluation.

        Each sweep: (1) improvement: for every state, the best push on an ``n_grid`` × ``n_grid``
        grid of [−1, 1]² under Q(s, ·; V); with ``refine``, polished by zooming a local grid around
        it 20 times (to ≈5e-10 in a, so V* is the continuous optimum, assuming the best grid cell
        brackets the global maximum); (2) evaluation: V ← V^π of those pushes by a linear solve.
        It stops when V changes by less than ``tol``. With ``refine=False`` the result is the exact
        optimum of the MDP restricted to the grid actions.
        """
        grid = action_grid(n_grid).reshape(-1, 2)
        grid_probs = self.move_probs(grid)  # [G, 5], computed once
        spacing = 2.0 / (n_grid - 1)
        V = torch.zeros(self.n_states, dtype=torch.float64)
        # Grid sweeps are nearly free; the zooming refinement is switched on only once the grid
        # optimum is found, and then typically needs one or two more sweeps.
        polishing = False
        for it in range(1, max_iter + 1):
            actions = self._greedy_actions(V, grid, grid_probs, polishing, spacing)
            V_new = self._solve(self.move_probs(actions)).V
            change = float((V_new - V).abs().max())
            V = V_new
            if change < tol:
                if polishing or not refine:
                    break
                polishing = True
        else:
            raise RuntimeError(f"policy iteration did not converge in {max_iter} sweeps (last change {change:.2e})")
        actions = self._greedy_actions(V, grid, grid_probs, refine, spacing)
        q_grid = (grid_probs @ self.backup_targets(V).T).max(0).values
        q_best = torch.maximum(self.Q(torch.arange(self.n_states), actions, V), q_grid)
        residual = float((q_best - V).abs().max())
        return OptimalSolution(env=self, V=V, greedy_actions=actions, iterations=it, bellman_residual=residual)

    def _greedy_actions(self, V: Tensor, grid: Tensor, grid_probs: Tensor, refine: bool, spacing: float) -> Tensor:
        """argmax_a Q(s, a; V) per state [n_states, 2]: best grid action, then a zooming local search."""
        y = self.backup_targets(V)  # [S, 5]
        best = grid[(grid_probs @ y.T).argmax(0)]  # [S, 2]: Q on the grid is one matmul
        if not refine:
            return best
        states = torch.arange(self.n_states)
        offsets = action_grid(11).reshape(-1, 2)  # 11 × 11 local grid in [−1, 1]², scaled below
        half_width = spacing
        for _ in range(20):  # 0.4^20 · spacing ≈ 5e-10 in a: the error in Q is negligible
            # Candidates around the current best (it is one of them: offset 0), clipped to the box.
            cand = (best.unsqueeze(1) + half_width * offsets).clamp(-1.0, 1.0)  # [S, 121, 2]
            q = (self.move_probs(cand) * y.unsqueeze(1)).sum(-1)
            best = cand[states, q.argmax(1)]
            half_width *= 0.4  # the new bracket: two local spacings (0.2·half_width) each side
        return best

    def start_value(self, values: Tensor | ValueSolution | None = None) -> float:
        """V(start) of a value vector or solution; with no argument, V*(start) of the optimal policy."""
        if values is None:
            values = self.optimal_values()
        V = values.V if isinstance(values, ValueSolution) else values
        return float(self._check_values(V)[self.start_index])

    # -- states and observations ----------------------------------------------------------------
    def position_of(self, state_index: int) -> tuple[int, int]:
        """(row, column) of a state on the layout (row 0 is the top)."""
        return self.cells[self._check_state(state_index)]

    def index_of(self, row: int, col: int) -> int:
        """The state index of the non-wall cell (row, col)."""
        if (row, col) not in self._index:
            raise ValueError(f"cell ({row}, {col}) is a wall or outside the {self.height}×{self.width} layout")
        return self._index[(row, col)]

    def observation(self, state_index: int) -> np.ndarray:
        """The one-hot observation [n_states] (float32) of a state."""
        obs = np.zeros(self.n_states, dtype=np.float32)
        obs[self._check_state(state_index)] = 1.0
        return obs

    def state_index(self, obs: np.ndarray | Tensor) -> int:
        """The state of a one-hot observation (its argmax)."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.shape != (self.n_states,):
            raise ValueError(f"a {self.name} observation has shape ({self.n_states},), got {obs.shape}")
        return int(np.argmax(obs))

    # -- the Gymnasium interface ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.state, self.steps, self._done = self.start_index, 0, False
        return self.observation(self.state), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.state is None or self._done:
            raise RuntimeError("call reset() before step(): the episode has not started or is over")
        a = self._check_action(action)
        p = self.move_probs(torch.from_numpy(a)).numpy()
        # Inverse-CDF sampling with the env's own generator (robust to p summing to 1 ± 1e-16).
        k = min(int(np.searchsorted(np.cumsum(p), self.np_random.random(), side="right")), len(MOVES) - 1)
        s = self.state
        self.state = int(self._next_np[s, k])
        reward = float(self._reward_np[s, k])
        terminated = bool(self._terminal_np[self.state])
        self.steps += 1
        truncated = not terminated and self.steps >= self.max_steps
        self._done = terminated or truncated
        return self.observation(self.state), reward, terminated, truncated, self._info(move=MOVES[k])

    def _info(self, **extra: Any) -> dict:
        return {"state": self.state, "position": self.cells[self.state], **extra}

    def render(self) -> np.ndarray | None:
        """An RGB image [H·16, W·16, 3] (uint8) of the layout and the agent, for ``render_mode="rgb_array"``."""
        if self.render_mode is None:
            gym.logger.warn("render() needs render_mode='rgb_array' when the env is made")
            return None
        return self._rgb_array(cell=16)

    def _rgb_array(self, cell: int) -> np.ndarray:
        colors = np.array([_COLORS[CELL_CHARS[ch]] for row in self.layout for ch in row], dtype=np.uint8)
        img = colors.reshape(self.height, self.width, 3).repeat(cell, axis=0).repeat(cell, axis=1)
        img[::cell, :, :] = (img[::cell, :, :] * 0.8).astype(np.uint8)  # faint grid lines
        img[:, ::cell, :] = (img[:, ::cell, :] * 0.8).astype(np.uint8)
        if self.state is not None:
            r, c = self.cells[self.state]
            yy, xx = np.mgrid[0:cell, 0:cell]
            disk = (yy - (cell - 1) / 2) ** 2 + (xx - (cell - 1) / 2) ** 2 <= (0.32 * cell) ** 2
            img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell][disk] = _COLORS["agent"]
        return img

    def draw(
        self,
        ax: "Axes | None" = None,
        values: Tensor | np.ndarray | None = None,
        show_agent: bool = True,
        annotate: bool = False,
    ) -> "Axes":
        """Draw the layout with matplotlib (walls dark, goal green, hazard red, start marked 'S').

        ``values`` [n_states]: a heat map of state values on the non-terminal cells (with a
        colour bar; ``annotate`` writes the numbers). ``show_agent``: a blue dot on the current cell.
        Returns the axes.
        """
        import matplotlib.pyplot as plt
        from matplotlib import colors as mcolors

        if ax is None:
            _, ax = plt.subplots(figsize=(0.5 * self.width + 1.5, 0.5 * self.height + 0.5))
        img = np.array([[_COLORS[CELL_CHARS[ch]] for ch in row] for row in self.layout], dtype=float) / 255.0
        if values is not None:
            v = np.asarray(torch.as_tensor(values).detach().cpu().double())
            if v.shape != (self.n_states,):
                raise ValueError(f"values must have shape ({self.n_states},) (one per state), got {v.shape}")
            live = ~self.is_terminal.numpy()
            norm = mcolors.Normalize(vmin=float(v[live].min()), vmax=float(v[live].max()) + 1e-12)
            cmap = plt.get_cmap("viridis")
            for s in np.flatnonzero(live):
                r, c = self.cells[s]
                img[r, c] = cmap(norm(v[s]))[:3]
                if annotate:
                    color = "w" if norm(v[s]) < 0.6 else "k"  # readable on dark and light cells
                    ax.text(c, r, f"{v[s]:.2f}", ha="center", va="center", fontsize=7, color=color)
            mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
            ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04, label="value")
        ax.imshow(img, interpolation="nearest")
        for s, (r, c) in enumerate(self.cells):
            ch = self.layout[r][c]
            if ch in "SGH" and not (annotate and values is not None and ch == "S"):
                color = "k" if ch == "S" else "w"
                ax.text(c, r, ch, ha="center", va="center", fontsize=9, fontweight="bold", color=color)
        if show_agent and self.state is not None:
            r, c = self.cells[self.state]
            ax.plot(c, r, "o", color=np.array(_COLORS["agent"]) / 255.0, markersize=10, markeredgecolor="w")
        ax.set_xticks(np.arange(-0.5, self.width), minor=True)
        ax.set_yticks(np.arange(-0.5, self.height), minor=True)
        ax.grid(which="minor", color="0.6", linewidth=0.5)
        ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
        knobs = f"slip={self.slip:g}, κ={self.sharpness:g}, γ={self.gamma:g}"
        ax.set_title(f"gridworld/{self.name}  ({knobs})", fontsize=9)
        return ax

    # -- input checks ---------------------------------------------------------------------------
    def _check_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,):
            raise ValueError(f"a gridworld action is one 2-D push of shape (2,), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action {a} is not finite; check the policy for NaNs")
        if np.any(np.abs(a) > 1.0 + 1e-6):  # 1e-6: float32 rounding of a clipped action
            raise ValueError(f"action {a} is outside [-1, 1]^2; clip it with np.clip(action, -1, 1)")
        return np.clip(a, -1.0, 1.0)

    def _check_state(self, state: int | Tensor) -> int | Tensor:
        if isinstance(state, Tensor):
            in_range = state.numel() == 0 or (state.min() >= 0 and state.max() < self.n_states)
            if state.dtype not in (torch.int64, torch.int32) or not in_range:
                raise ValueError(f"states must be integer indices in [0, {self.n_states}), got {state}")
            return state.long()
        if not isinstance(state, (int, np.integer)) or not 0 <= state < self.n_states:
            raise ValueError(f"a state is an integer index in [0, {self.n_states}), got {state!r}")
        return int(state)

    def _check_values(self, V: Tensor) -> Tensor:
        V = torch.as_tensor(V, dtype=torch.float64)
        if V.shape != (self.n_states,):
            raise ValueError(f"V must have shape ({self.n_states},) (one value per state), got {tuple(V.shape)}")
        return V


_COLORS: dict[str, tuple[int, int, int]] = {
    "wall": (45, 45, 50),
    "free": (236, 236, 236),
    "start": (190, 210, 240),
    "goal": (60, 170, 80),
    "hazard": (210, 60, 50),
    "agent": (30, 90, 210),
}


def _check_knobs(slip: float, sharpness: float, gamma: float, max_steps: int, render_mode: str | None) -> None:
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip is a probability in [0, 1], got {slip}")
    if not (np.isfinite(sharpness) and sharpness >= 0.0):
        raise ValueError(f"sharpness must be a finite number >= 0, got {sharpness}")
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1) so that values are finite, got {gamma}")
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps}")
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")


# ----------------------------------------------------------------------------------------------
# The ids gridworld/<name> (envs.make and gymnasium.make read ENVS)
# ----------------------------------------------------------------------------------------------
def _factory(name: str):
    def make(**kwargs: Any) -> GridWorld:
        if "layout" in kwargs:
            raise TypeError(
                f"gridworld/{name} has a fixed layout; use make('gridworld/custom', layout=...) for your own"
            )
        return GridWorld(LAYOUTS[name], name=name, **kwargs)

    return make


def _make_custom(layout: str | Sequence[str] | None = None, **kwargs: Any) -> GridWorld:
    if layout is None:
        example = "make('gridworld/custom', layout='#####\\n#S.G#\\n#####')"
        raise ValueError(f"gridworld/custom needs a layout, e.g. {example}")
    return GridWorld(layout, **kwargs)


ENVS: dict[str, Callable[..., GridWorld]] = {
    **{f"gridworld/{name}": _factory(name) for name in LAYOUTS},
    "gridworld/custom": _make_custom,
}

__all__ = [
    "GridWorld",
    "LAYOUTS",
    "MOVES",
    "OptimalSolution",
    "PolicySolution",
    "ValueSolution",
    "action_grid",
    "move_probabilities",
    "parse_layout",
]
