"""Interactive explorers (ipywidgets 8) for the score and ∇ₐQ fields, with a static fallback.

- :func:`explore_bandit`: a bandit's learned score (orange) and α·∇ₐQ (blue) at noise level t, at
  any training iteration of a QSM run (snapshots from :func:`train_bandit_snapshots`), over the
  target density π ∝ exp(α·Q) and the policy's samples.
- :func:`explore_gridworld`: a gridworld cell's action field ∇ₐQ*(s, ·), Q*(s, ·) and the pushes
  of the Boltzmann policy π(a | s) ∝ exp(α·Q*(s, a)), as the slip of the dynamics and α change.

Each returns an explorer object. In JupyterLab it displays as sliders above a figure; every change
updates the existing artists (``set_UVC``, ``set_data``, ``set_offsets``) from fields cached per
(snapshot, t) or (layout, slip), redraws only those artists over a cached background (blitting:
axes, labels and colour bars are drawn once), and shows the frame as a PNG in an
``ipywidgets.Output`` (matplotlib's non-interactive Agg backend: no ipympl needed);
``benchmarks/widget_redraw.py`` times it (docs/performance.md). Where there is no widget frontend
(papermill, nbval, a static notebook viewer) the same display carries a PNG of the current figure, so the
notebook still shows it. ``explorer.update(t=2, alpha=10.0)`` changes values from code (tests,
scripts), ``explorer.figure`` is the matplotlib Figure, ``explorer.render_png()`` its PNG bytes.

The iteration slider needs snapshots of a run; ``qsm_tutorial.train`` keeps only the final agent,
so :func:`train_bandit_snapshots` trains through it with an ``on_step`` callback that keeps the
actor's and critics' weights every ``every`` updates.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from . import fields, viz
from .algos.qsm import QSMAgent, QSMConfig

Tensor = torch.Tensor

__all__ = [
    "BanditSnapshots",
    "train_bandit_snapshots",
    "explore_bandit",
    "explore_gridworld",
    "make_bandit",
    "BanditExplorer",
    "GridWorldExplorer",
]

BANDITS = ("four-gaussians", "eight-gaussians", "ring", "four-clusters", "single-peak")
LAYOUTS = ("two-routes", "cliff", "open")


# ----------------------------------------------------------------------------------------------
# Snapshots of a QSM run on a bandit
# ----------------------------------------------------------------------------------------------
@dataclass
class BanditSnapshots:
    """The actor's and critics' weights of one QSM run on a bandit, at several update counts.

    ``updates[i]`` is the number of agent updates done when ``states[i]`` (a dict with ``"actor"``
    and ``"critic"`` state dicts, as in ``QSMAgent.state_dict()``) was taken; ``config`` is the
    agent's :class:`QSMConfig`. Build it with :func:`train_bandit_snapshots`, or from your own
    ``agent.state_dict()`` copies: ``BanditSnapshots("bandit/ring", config, [0, 500], [sd0, sd1])``.
    """

    env_id: str
    config: QSMConfig
    updates: list[int]
    states: list[dict]
    seconds: float = 0.0
    _agent: QSMAgent | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if len(self.updates) != len(self.states) or not self.states:
            raise ValueError(f"give one update count per snapshot: {len(self.updates)} counts, {len(self.states)} snapshots")
        if not self.env_id.startswith("bandit/"):
            raise ValueError(f"snapshots are for bandits ('bandit/<name>'), got {self.env_id!r}")

    def __len__(self) -> int:
        return len(self.states)

    @property
    def bandit(self) -> str:
        return self.env_id.split("/", 1)[1]

    def agent(self, i: int) -> QSMAgent:
        """An agent holding snapshot ``i``'s actor and critics (one agent, reloaded on each call)."""
        if self._agent is None:
            self._agent = QSMAgent(1, 2, replace_device(self.config))
        self._agent.actor.load_state_dict(self.states[i]["actor"])
        self._agent.critic.load_state_dict(self.states[i]["critic"])
        return self._agent

    @classmethod
    def untrained(cls, bandit: str, seed: int = 0, **overrides) -> "BanditSnapshots":
        """A single snapshot of a freshly initialised agent (no training)."""
        env_id = _bandit_id(bandit)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            agent = QSMAgent(1, 2, replace_device(QSMConfig.preset("bandit", **overrides)))
        return cls(env_id, agent.config, [0], [_weights(agent)])


def replace_device(config: QSMConfig) -> QSMConfig:
    """The config on the CPU (plots and widgets never need a GPU)."""
    return dataclasses.replace(config, device="cpu")


def _weights(agent: QSMAgent) -> dict:
    return {
        "actor": {k: v.detach().cpu().clone() for k, v in agent.actor.state_dict().items()},
        "critic": {k: v.detach().cpu().clone() for k, v in agent.critic.state_dict().items()},
    }


def make_bandit(bandit: str, seed: int | None = None):
    """The bandit env ``bandit/<name>``; built-ins directly (no simulator imports), others by ``envs.make``."""
    from .envs.bandits import BUILTIN_BANDITS, Bandit2D

    name = _bandit_id(bandit).split("/", 1)[1]
    if name not in BUILTIN_BANDITS:
        from . import envs

        return envs.make(f"bandit/{name}", seed=seed)
    make_reward, modes = BUILTIN_BANDITS[name]
    env = Bandit2D(make_reward(), name=name, modes=modes)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def _bandit_id(bandit: str) -> str:
    name = bandit.split("/", 1)[1] if bandit.startswith("bandit/") else bandit
    return f"bandit/{name}"


def train_bandit_snapshots(
    bandit: str = "four-gaussians",
    total_steps: int = 1500,
    every: int = 100,
    seed: int = 0,
    progress: bool = False,
    **overrides,
) -> BanditSnapshots:
    """Train QSM on ``bandit/<bandit>`` with ``qsm_tutorial.train`` (the ``"bandit"`` preset;
    ``overrides`` set :class:`QSMConfig` or loop fields) and keep the actor's and critics' weights
    every ``every`` updates. Snapshot 0 is the initialisation.
    """
    from .loop import train

    if every < 1:
        raise ValueError(f"every must be >= 1 (updates between snapshots), got {every}")
    updates: list[int] = []
    states: list[dict] = []

    def snapshot(agent: QSMAgent) -> None:
        updates.append(agent.n_updates)
        states.append(_weights(agent))

    def keep(run) -> None:  # train's on_step: the initial weights, then every `every` updates
        n = run.agent.n_updates
        if not updates or (n % every == 0 and n != updates[-1]):
            snapshot(run.agent)

    t0 = time.perf_counter()
    overrides = {"device": "cpu", "eval_every": total_steps, **overrides}
    run = train(_bandit_id(bandit), "qsm", total_steps, seed, progress=progress, on_step=keep, **overrides)
    if updates[-1] != run.agent.n_updates:
        snapshot(run.agent)
    return BanditSnapshots(run.env_id, run.config, updates, states, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# The shared machinery: controls, update(**values), fast redraw, PNG display with a static fallback
# ----------------------------------------------------------------------------------------------
def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


class _Explorer:
    """Controls + one reused Figure; ``update(**values)`` is the only way state changes.

    Fast redraw (blitting): everything that does not change with the fast controls (axes, ticks,
    labels, legends, colour bars: text layout is most of a full draw's cost) is drawn once into a
    cached background; an update restores it and draws only the *dynamic* artists (arrows, images,
    dots, titles) on top, then encodes the PNG. A change that alters the background (a new
    layout, a new colour scale) invalidates it: ``_static_key()`` names what the background
    depends on.
    """

    dpi = 90  # of the PNG shown in the notebook: redraw time grows with the pixel count

    def __init__(self):
        import ipywidgets as widgets

        self._widgets = widgets
        self._suspended = False
        self.output = widgets.Output()
        self.controls: dict[str, Any] = {}
        self.figure: Figure | None = None
        self._background = None
        self._background_key: Any = None

    # -- controls ---------------------------------------------------------------------------
    def _add_control(self, name: str, widget) -> None:
        self.controls[name] = widget
        widget.observe(lambda change, n=name: self._on_change(n, change), names="value")

    def _on_change(self, name: str, change) -> None:
        if not self._suspended:
            self.update(**{name: change["new"]})

    @property
    def values(self) -> dict[str, Any]:
        """The current value of every control."""
        return {k: w.value for k, w in self.controls.items()}

    def update(self, **values: Any) -> None:
        """Set controls by name (``explorer.update(t=2, alpha=10.0)``) and redraw once.

        Unknown names or values a control does not offer raise a one-line ``ValueError``;
        sliders clamp to their range.
        """
        from traitlets import TraitError

        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; this explorer has {sorted(self.controls)}")
        self._suspended = True
        try:
            for k, v in values.items():
                try:
                    self.controls[k].value = v
                except TraitError as e:
                    raise ValueError(f"{k}={v!r} is not a valid value: {self._choices(k)}") from e
            self._before_redraw(set(values))
        finally:
            self._suspended = False
        self._redraw()
        self._show()

    def _choices(self, name: str) -> str:
        w = self.controls[name]
        if hasattr(w, "options"):
            return "choose one of " + ", ".join(repr(o[1] if isinstance(o, tuple) else o) for o in w.options)
        return f"a value in [{getattr(w, 'min', '?')}, {getattr(w, 'max', '?')}]"

    def _before_redraw(self, changed: set[str]) -> None:  # rebuild dependent controls / the figure
        pass

    def _redraw(self) -> None:  # update the artists' data
        raise NotImplementedError

    def _dynamic_artists(self) -> list:  # drawn on every update, in this order
        raise NotImplementedError

    def _static_key(self) -> Any:  # the background is redrawn when this changes
        return None

    # -- rendering ----------------------------------------------------------------------------
    def _new_figure(self, figsize: tuple[float, float]) -> Figure:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        with matplotlib.rc_context(viz.STYLE):
            fig = Figure(figsize=figsize, dpi=self.dpi, layout="constrained")
        FigureCanvasAgg(fig)
        self._background = None
        return fig

    def _render(self) -> np.ndarray:
        """Draw the figure into its Agg buffer (blitting when the background is valid)."""
        from matplotlib.layout_engine import ConstrainedLayoutEngine

        fig, canvas = self.figure, self.figure.canvas
        dynamic = self._dynamic_artists()
        key = self._static_key()
        if self._background is None or key != self._background_key:
            if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):
                # First draw of a new figure: lay it out with every artist, then freeze the layout
                # (panels must not move as titles change, and layout costs time on each draw).
                for a in dynamic:
                    a.set_animated(False)
                canvas.draw()
                fig.set_layout_engine("none")
            for a in dynamic:
                a.set_animated(True)  # animated artists are left out of a full draw
            canvas.draw()
            self._background = canvas.copy_from_bbox(fig.bbox)
            self._background_key = key
        else:
            canvas.restore_region(self._background)
        for a in dynamic:
            if a.get_visible():
                fig.draw_artist(a)
        return np.asarray(canvas.buffer_rgba())

    def render_png(self) -> bytes:
        """The current figure as PNG bytes (what the notebook shows)."""
        from PIL import Image

        rgba = self._render()
        buf = io.BytesIO()
        Image.fromarray(rgba[..., :3]).save(buf, format="png", compress_level=1)
        return buf.getvalue()

    def _show(self) -> None:
        if not _in_kernel():
            return  # plain Python: the artists are updated; render_png() draws them
        from IPython.display import Image, clear_output, display

        with self.output:
            clear_output(wait=True)
            display(Image(data=self.render_png()))

    # -- display ----------------------------------------------------------------------------
    @property
    def widget(self):
        """The ipywidgets box (controls above the figure output)."""
        if not hasattr(self, "_box"):
            w = self._widgets
            rows = [w.HBox(list(group)) for group in self._control_rows()]
            self._box = w.VBox([*rows, self.output])
        return self._box

    def _control_rows(self) -> list[list]:
        return [list(self.controls.values())]

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The widget for a widget frontend, plus a PNG of the figure for anything else."""
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        bundle["image/png"] = base64.b64encode(self.render_png()).decode("ascii")
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        vals = ", ".join(f"{k}={_fmt(v)}" for k, v in self.values.items())
        return f"{type(self).__name__}({vals})"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else repr(v)


# ----------------------------------------------------------------------------------------------
# Bandit explorer
# ----------------------------------------------------------------------------------------------
class BanditExplorer(_Explorer):
    """See :func:`explore_bandit`. Artists: ``quivers["score"]``, ``quivers["grad_q"]``,
    ``images`` (π ∝ exp(α·Q)), ``scatter`` (policy samples), ``title``."""

    def __init__(
        self,
        snapshots: Mapping[str, BanditSnapshots],
        bandit: str,
        n_arrows: int = 15,
        n_samples: int = 400,
        n_background: int = 81,
        t: int = 0,
        alpha: float | None = None,
        layout: str = "overlay",
        grad: str = "exact",
        seed: int = 0,
    ):
        super().__init__()
        from .envs.bandits import action_grid

        self.snapshots = dict(snapshots)
        self.n_samples, self.seed = n_samples, seed
        self.grid = action_grid(n_arrows)
        self.fine = action_grid(n_background)
        self._cache: dict[tuple, Any] = {}
        w = self._widgets
        snaps = self._snapshots_for(bandit)
        style = {"description_width": "initial"}
        bandits = list(dict.fromkeys([*self.snapshots, *BANDITS]))
        self._add_control("bandit", w.Dropdown(options=bandits, value=snaps.bandit, description="bandit", style=style))
        self._add_control("iteration", w.SelectionSlider(options=self._iteration_options(snaps), value=len(snaps) - 1, description="updates", style=style, continuous_update=False))
        self._add_control("t", w.IntSlider(value=t, min=0, max=snaps.config.T - 1, description="noise level t", style=style, continuous_update=False))
        a0 = float(alpha if alpha is not None else snaps.config.alpha)
        self._add_control("alpha", w.FloatLogSlider(value=a0, base=10, min=-0.5, max=2.5, step=0.05, description="α", style=style, continuous_update=False, readout_format=".3g"))
        self._add_control("layout", w.ToggleButtons(options=["overlay", "side-by-side"], value=layout, style={"button_width": "95px"}))
        self._add_control("grad", w.ToggleButtons(options=[("exact ∇r", "exact"), ("learned critic", "critic")], value=grad, style={"button_width": "105px"}))
        self.status = w.HTML()
        self._build_figure()
        self._redraw()

    def _control_rows(self):
        c = self.controls
        return [[c["bandit"], c["iteration"], c["t"]], [c["alpha"], c["layout"], c["grad"]], [self.status]]

    # -- data (cached) ----------------------------------------------------------------------
    def _snapshots_for(self, bandit: str) -> BanditSnapshots:
        name = bandit.split("/", 1)[-1]
        if name not in self.snapshots:
            self.snapshots[name] = BanditSnapshots.untrained(name, seed=self.seed)
        return self.snapshots[name]

    @staticmethod
    def _iteration_options(snaps: BanditSnapshots) -> list[tuple[str, int]]:
        return [(str(u), i) for i, u in enumerate(snaps.updates)]

    def _cached(self, key: tuple, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _env(self, bandit: str):
        return self._cached(("env", bandit), lambda: make_bandit(bandit))

    def _score(self, bandit: str, i: int, t: int) -> Tensor:
        """−ε_θ(a, t) of snapshot i on the arrow grid (cached per snapshot and t)."""
        agent = lambda: self._snapshots_for(bandit).agent(i)  # noqa: E731
        return self._cached(("score", bandit, i, t), lambda: fields.policy_score_field(agent(), None, None, self.grid, t).direction)

    def _grad(self, bandit: str, source: str, i: int) -> Tensor:
        if source == "exact":
            return self._cached(("grad", bandit), lambda: fields.q_gradient_field(self._env(bandit), self.grid))
        return self._cached(("critic-grad", bandit, i), lambda: fields.q_gradient_field(self._snapshots_for(bandit).agent(i), self.grid))

    def _reward_fine(self, bandit: str) -> Tensor:
        return self._cached(("reward", bandit), lambda: self._env(bandit).reward(self.fine))

    def _samples(self, bandit: str, i: int) -> np.ndarray:
        def make():
            agent = self._snapshots_for(bandit).agent(i)
            with torch.random.fork_rng():  # the same samples every time, the user's RNG untouched
                torch.manual_seed(self.seed)
                return agent.sample_actions(np.zeros(1, np.float32), self.n_samples).numpy()

        return self._cached(("samples", bandit, i), make)

    # -- drawing ----------------------------------------------------------------------------
    def _build_figure(self) -> None:
        side = self.controls["layout"].value == "side-by-side"
        fig = self._new_figure((8.6, 4.4) if side else (5.8, 4.8))
        with matplotlib.rc_context(viz.STYLE):
            axes = fig.subplots(1, 2 if side else 1, squeeze=False).ravel()
            m = viz._margin(self.grid)
            self.axes, self.images, self.boxes = list(axes), [], []
            for ax in axes:
                self.images.append(viz.draw_landscape(ax, self.fine, torch.zeros(self.fine.shape[:2]), colorbar=None, vmin=0.0, vmax=1.0))
                viz._action_axes(ax, margin=m)
                self.boxes.append(ax.patches[-1])  # the dashed box, drawn over the image
            zero = torch.zeros_like(self.grid)
            wide = 0.25 * 0.8 * viz._grid_spacing(viz._np(self.grid))
            ax_s, ax_q = (axes[0], axes[1]) if side else (axes[0], axes[0])
            self.scatter = ax_s.scatter(np.zeros(0), np.zeros(0), s=6, color=viz.POLICY_COLOR, alpha=0.45, lw=0, zorder=2)
            self.quivers = {
                "score": viz.quiver_field(ax_s, self.grid, zero, viz.POLICY_COLOR, width=None if side else wide, zorder=3),
                "grad_q": viz.quiver_field(ax_q, self.grid, zero, viz.Q_COLOR, zorder=4),
            }
            if side:
                axes[0].set_title("policy: learned score and samples")
                axes[1].set_title(r"target: $\alpha\nabla_a Q$")
            cb = fig.colorbar(self.images[-1], ax=self.axes, fraction=0.046, pad=0.03, shrink=0.8)
            cb.set_label(r"target density $\pi_\alpha \propto e^{\alpha Q}$ (max = 1)")
            handles = [
                viz._arrow_handle(viz.POLICY_COLOR, r"learned $-\epsilon_\theta(a, t)$"),
                viz._arrow_handle(viz.Q_COLOR, r"$\alpha\nabla_a Q(a)$"),
                viz.Line2D([], [], color=viz.POLICY_COLOR, marker="o", ls="None", ms=4, label="policy samples"),
            ]
            fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
            self.title = fig.suptitle("\n")
        self.figure = fig
        self._layout = self.controls["layout"].value

    def _dynamic_artists(self) -> list:
        return [*self.images, *self.boxes, self.scatter, self.quivers["score"], self.quivers["grad_q"], self.title]

    def _before_redraw(self, changed: set[str]) -> None:
        c = self.controls
        if "bandit" in changed:
            snaps = self._snapshots_for(c["bandit"].value)
            opts = self._iteration_options(snaps)
            keep = c["iteration"].value if "iteration" in changed and c["iteration"].value < len(opts) else len(opts) - 1
            c["iteration"].options = opts
            c["iteration"].value = keep
            c["t"].max = snaps.config.T - 1
        if c["layout"].value != self._layout:
            self._build_figure()

    def _redraw(self) -> None:
        v = self.values
        bandit, i, t, alpha = v["bandit"], int(v["iteration"]), int(v["t"]), float(v["alpha"])
        snaps = self._snapshots_for(bandit)
        score = self._score(bandit, i, t)
        target = alpha * self._grad(bandit, v["grad"], i)
        # One opacity scale for both fields: a mismatch of magnitude (wrong α) shows as opacity.
        ref = max(float(score.norm(dim=-1).max()), float(target.norm(dim=-1).max()))
        viz.update_quiver(self.quivers["score"], score, ref_norm=ref)
        viz.update_quiver(self.quivers["grad_q"], target, ref_norm=ref)
        density = fields.boltzmann_weights(self._reward_fine(bandit), alpha).numpy()
        for im in self.images:
            im.set_data(density / density.max())
        self.scatter.set_offsets(self._samples(bandit, i))
        cos = fields.alignment(score, target).mean
        err = fields.matching_error(score, target)
        self.title.set_text(
            f"{bandit}: {snaps.updates[i]} updates, t = {t}, α = {alpha:.3g} (trained: {snaps.config.alpha:g})\n"
            f"mean cos = {cos:.2f},  ‖−ε − α∇Q‖² / ‖α∇Q‖² = {err:.2f}"
        )
        self.status.value = (
            ""
            if len(snaps) > 1
            else f"<i>bandit/{bandit} has no training snapshots: this is an untrained policy. Train some with "
            f"<code>train_bandit_snapshots('{bandit}')</code> and pass them to <code>explore_bandit</code>.</i>"
        )


def explore_bandit(
    snapshots: BanditSnapshots | Mapping[str, BanditSnapshots] | Sequence[BanditSnapshots] | None = None,
    *,
    bandit: str | None = None,
    n_arrows: int = 15,
    n_samples: int = 400,
    t: int = 0,
    alpha: float | None = None,
    layout: str = "overlay",
    grad: str = "exact",
    seed: int = 0,
) -> BanditExplorer:
    """An explorer of a QSM policy's score on a bandit, along its training.

    Controls: ``bandit`` (dropdown), ``iteration`` (the snapshot, labelled by its number of
    updates), ``t`` (noise level), ``alpha`` (the α of the target α·∇ₐQ and of the background
    density π ∝ exp(α·Q)), ``layout`` ("overlay" or "side-by-side"), ``grad`` ("exact" ∇ₐr or the
    learned "critic"). ``snapshots``: from :func:`train_bandit_snapshots` (one run, a list, or
    ``{name: run}``); a bandit without snapshots shows an untrained policy. Both fields share one
    opacity scale, so an α far from the one the policy was trained with shows as arrows of very
    different strength (and a large matching error in the title).

    Returns a :class:`BanditExplorer`; display it (last expression of a cell) to interact, or call
    ``.update(t=..., alpha=..., iteration=...)`` from code.
    """
    if snapshots is None:
        runs: dict[str, BanditSnapshots] = {}
    elif isinstance(snapshots, BanditSnapshots):
        runs = {snapshots.bandit: snapshots}
    elif isinstance(snapshots, Mapping):
        runs = {_bandit_id(k).split("/", 1)[1]: s for k, s in snapshots.items()}
    else:
        runs = {s.bandit: s for s in snapshots}
    bandit = _bandit_id(bandit or next(iter(runs), "four-gaussians")).split("/", 1)[1]
    if layout not in ("overlay", "side-by-side"):
        raise ValueError(f"layout must be 'overlay' or 'side-by-side', got {layout!r}")
    if grad not in ("exact", "critic"):
        raise ValueError(f"grad must be 'exact' or 'critic', got {grad!r}")
    ex = BanditExplorer(runs, bandit, n_arrows=n_arrows, n_samples=n_samples, t=t, alpha=alpha, layout=layout, grad=grad, seed=seed)
    ex._show()  # fill the figure output now (in a kernel), before the box is displayed
    return ex


# ----------------------------------------------------------------------------------------------
# Gridworld explorer
# ----------------------------------------------------------------------------------------------
class GridWorldExplorer(_Explorer):
    """See :func:`explore_gridworld`. Artists: ``quiver`` (∇ₐQ* of the cell), ``image`` (Q*(s, ·)),
    ``scatter`` (Boltzmann samples), ``value_image`` (V* on the map), ``marker`` (the cell)."""

    def __init__(self, layout: str, cell: int | None, slip: float, alpha: float, n_arrows: int = 11, n_grid: int = 41, n_samples: int = 300, seed: int = 0):
        super().__init__()
        from .envs import gridworld as gw

        self._gw = gw
        self.n_samples, self.seed = n_samples, seed
        self.arrows = gw.action_grid(n_arrows)
        self.fine = gw.action_grid(n_grid)
        self._cache: dict[tuple, Any] = {}
        w = self._widgets
        style = {"description_width": "initial"}
        env = self._solved(layout, slip)[0]
        self._add_control("layout", w.Dropdown(options=list(LAYOUTS), value=layout, description="layout", style=style))
        self._add_control("cell", w.Dropdown(options=self._cell_options(env), value=env.start_index if cell is None else cell, description="cell", style=style))
        self._add_control("slip", w.FloatSlider(value=slip, min=0.0, max=0.5, step=0.05, description="slip", style=style, continuous_update=False))
        self._add_control("alpha", w.FloatLogSlider(value=alpha, base=10, min=0, max=2.5, step=0.05, description="α", style=style, continuous_update=False, readout_format=".3g"))
        self._build_figure()
        self._redraw()

    def _control_rows(self):
        c = self.controls
        return [[c["layout"], c["cell"]], [c["slip"], c["alpha"]]]

    @staticmethod
    def _cell_options(env) -> list[tuple[str, int]]:
        return [
            (f"row {r}, col {c}" + (" (start)" if s == env.start_index else ""), s)
            for s, (r, c) in enumerate(env.cells)
            if not bool(env.is_terminal[s])
        ]

    # -- data (cached per layout and slip) --------------------------------------------------------
    def _solved(self, layout: str, slip: float):
        """(env, V* solution, Q* on the fine grid [S, g, g], ∇ₐQ* on the arrow grid [S, n, n, 2])."""
        key = ("solved", layout, round(float(slip), 6))
        if key not in self._cache:
            env = self._gw.GridWorld(self._gw.LAYOUTS[layout], name=layout, slip=float(slip))
            sol = env.optimal_values()
            S = env.n_states
            states = torch.arange(S).view(S, 1, 1)
            q_fine = env.Q(states, self.fine.expand(S, *self.fine.shape), sol.V)
            grads = env.action_gradient(states, self.arrows.expand(S, *self.arrows.shape), sol.V)
            self._cache[key] = (env, sol, q_fine, grads)
        return self._cache[key]

    def _samples(self, layout: str, slip: float, cell: int, alpha: float) -> np.ndarray:
        key = ("samples", layout, round(float(slip), 6), cell, round(float(alpha), 6))
        if key not in self._cache:
            q_fine = self._solved(layout, slip)[2]
            gen = torch.Generator().manual_seed(self.seed)
            self._cache[key] = fields.sample_boltzmann(self.fine, q_fine[cell], alpha, self.n_samples, generator=gen).numpy()
        return self._cache[key]

    # -- drawing ------------------------------------------------------------------------------
    def _build_figure(self) -> None:
        v = self.values
        env = self._solved(v["layout"], v["slip"])[0]
        fig = self._new_figure((9.4, 4.5))
        with matplotlib.rc_context(viz.STYLE):
            ax_map, ax_act = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
            env.draw(ax_map, show_agent=False)
            self.value_image = ax_map.imshow(np.full((env.height, env.width), np.nan), cmap="viridis", alpha=0.55, interpolation="nearest", zorder=1, vmin=0, vmax=1)
            cb = fig.colorbar(self.value_image, ax=ax_map, fraction=0.046, pad=0.03, shrink=0.8)
            cb.set_label("$V^*$(cell)")
            self._live = ~env.is_terminal.numpy()
            xs = np.array([c for r, c in env.cells], dtype=float)[self._live]
            ys = np.array([r for r, c in env.cells], dtype=float)[self._live]
            zeros = np.zeros(len(xs))
            self.greedy = ax_map.quiver(xs, ys, zeros, zeros, color=viz.Q_COLOR, angles="xy", scale_units="xy", scale=1.0, units="xy", width=0.06, headwidth=3.5, headlength=3.5, headaxislength=3.2, pivot="mid", zorder=4)
            self.marker = matplotlib.patches.Rectangle((0, 0), 1, 1, fill=False, ec=viz.POLICY_COLOR, lw=3, zorder=5)
            ax_map.add_patch(self.marker)
            ax_map.legend(
                handles=[viz._arrow_handle(viz.Q_COLOR, "greedy push $a^*$(cell)"), matplotlib.patches.Patch(fill=False, ec=viz.POLICY_COLOR, lw=2, label="selected cell")],
                loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False,
            )  # fmt: skip
            # Q*(s, ·) is shown rescaled to [0, 1] per cell (its range is in the title), so the colour
            # bar, part of the cached background, does not change from cell to cell.
            self.image = viz.draw_landscape(ax_act, self.fine, torch.zeros(self.fine.shape[:2]), colorbar=None, vmin=0.0, vmax=1.0)
            cb2 = fig.colorbar(self.image, ax=ax_act, fraction=0.046, pad=0.03, shrink=0.8, ticks=[0, 1])
            cb2.ax.set_yticklabels(["min", "max"])
            cb2.set_label(r"$Q^*$(cell, a)")
            viz._action_axes(ax_act, margin=viz._margin(self.arrows))
            self.box = ax_act.patches[-1]
            self.quiver = viz.quiver_field(ax_act, self.arrows, torch.zeros_like(self.arrows), viz.Q_COLOR, zorder=4)
            self.scatter = ax_act.scatter(np.zeros(0), np.zeros(0), s=11, color=viz.POLICY_COLOR, alpha=0.75, ec="#7a3a00", lw=0.3, zorder=3)
            (self.best,) = ax_act.plot([], [], marker="*", ms=14, color="k", mec="w", ls="None", zorder=5)
            ax_act.set_xlabel("push $a_1$ (right)")
            ax_act.set_ylabel("push $a_2$ (up)")
            ax_act.legend(
                handles=[
                    viz._arrow_handle(viz.Q_COLOR, r"$\nabla_a Q^*$"),
                    viz.Line2D([], [], color=viz.POLICY_COLOR, marker="o", ls="None", ms=4, label=r"$\pi \propto e^{\alpha Q^*}$"),
                    viz.Line2D([], [], color="k", marker="*", ls="None", ms=8, label="$a^*$"),
                ],
                loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False, handletextpad=0.2,
            )  # fmt: skip
            self.ax_map, self.ax_act = ax_map, ax_act
            self.title = ax_act.set_title("\n")
            self.map_title = ax_map.set_title(" ")
        self.figure = fig
        self._built_for = v["layout"]

    def _static_key(self):
        # The map (V*, greedy pushes, its colour bar) changes only with the layout and the slip.
        return (self.controls["layout"].value, round(float(self.controls["slip"].value), 6))

    def _dynamic_artists(self) -> list:
        return [self.image, self.box, self.scatter, self.quiver, self.best, self.title, self.marker]

    def _before_redraw(self, changed: set[str]) -> None:
        c = self.controls
        if c["layout"].value != self._built_for:
            env = self._solved(c["layout"].value, c["slip"].value)[0]
            requested = c["cell"].value if "cell" in changed else None
            c["cell"].options = self._cell_options(env)
            valid = [s for _, s in c["cell"].options]
            c["cell"].value = requested if requested in valid else env.start_index
            self._build_figure()

    def _redraw(self) -> None:
        v = self.values
        layout, slip, cell, alpha = v["layout"], float(v["slip"]), int(v["cell"]), float(v["alpha"])
        env, sol, q_fine, grads = self._solved(layout, slip)
        # the map (static part: redrawn into the background only when layout or slip change)
        img = np.full((env.height, env.width), np.nan)
        for s in np.flatnonzero(self._live):
            r, c = env.cells[s]
            img[r, c] = float(sol.V[s])
        self.value_image.set_data(np.ma.masked_invalid(img))
        finite = img[np.isfinite(img)]
        self.value_image.set_clim(float(finite.min()), float(finite.max()) + 1e-9)
        a_star = sol.greedy_actions.numpy()[self._live]
        self.greedy.set_UVC(0.38 * a_star[:, 0], -0.38 * a_star[:, 1])
        self.map_title.set_text(f"{layout}, slip {slip:.2f}: $V^*$, greedy pushes")
        # the selected cell's action space (dynamic)
        r, c = env.cells[cell]
        self.marker.set_xy((c - 0.5, r - 0.5))
        q = q_fine[cell]
        lo, hi = float(q.min()), float(q.max())
        self.image.set_data(((q - lo) / max(hi - lo, 1e-12)).numpy())
        viz.update_quiver(self.quiver, grads[cell])
        self.scatter.set_offsets(self._samples(layout, slip, cell, alpha))
        best = sol.greedy_actions[cell].numpy()
        self.best.set_data([best[0]], [best[1]])
        value_pi = float((fields.boltzmann_weights(q, alpha) * q).sum())
        self.title.set_text(
            f"cell (row {r}, col {c}): $Q^*$ from {lo:.2f} to {hi:.2f}, $V^*$ = {float(sol.V[cell]):.3f}\n"
            f"$\\pi \\propto e^{{\\alpha Q^*}}$ with α = {alpha:.3g}: $E_\\pi[Q^*]$ = {value_pi:.3f}"
        )


def explore_gridworld(
    layout: str = "two-routes",
    *,
    cell: int | None = None,
    slip: float = 0.0,
    alpha: float = 30.0,
    n_samples: int = 300,
    seed: int = 0,
) -> GridWorldExplorer:
    """An explorer of a gridworld cell's action field: ∇ₐQ*(s, ·), Q*(s, ·) and π ∝ exp(α·Q*(s, ·)).

    Controls: ``layout`` (two-routes, cliff, open), ``cell`` (a non-terminal cell's state index;
    default the start), ``slip`` (probability that a random move replaces the chosen one; V* is
    re-solved and cached per value), ``alpha`` (inverse temperature of the Boltzmann policy,
    sampled on a 41 × 41 grid of pushes). The map shows V* and the greedy push a*(s) of every cell.

    Returns a :class:`GridWorldExplorer`; display it to interact or call ``.update(slip=0.2, ...)``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    ex = GridWorldExplorer(layout, cell, slip, alpha, n_samples=n_samples, seed=seed)
    ex._show()
    return ex
