"""Figures of the course: one call per figure, each returning a matplotlib ``Figure``.

Conventions (those of the paper's Figure 1): the policy's score is drawn in ORANGE, ∇ₐQ in BLUE.
Each algorithm has one colour in every figure (:data:`ALGO_COLORS`: QSM orange like its score, SAC
purple, TD3 teal; :func:`algo_color` finds it from a label such as "QSM (paper)"). Legends are at
least 8 pt, and axes say their units (environment steps, return, actions in [−1, 1]).
Arrows are *normalised*: every arrow has the same length (a fraction of the grid spacing, centred
on its grid point, so none leaves the axes) and its magnitude is shown by its opacity, relative to
the largest arrow of its field (or of both fields with ``shared_scale``). The reward / Q landscape
is drawn in light greens underneath.

Inputs are tensors or arrays (from :mod:`qsm_tutorial.fields`, a trained agent's samples, or saved
runs' metrics); nothing here reaches into training. Figures are made with
``matplotlib.figure.Figure`` rather than pyplot, so a notebook shows each once (as the cell's
value) and nothing accumulates in pyplot's figure manager; ``save_figure`` writes them to PNG.

    fig = viz.plot_fields(grid, score=s.direction, grad_q=g, background=(fine_grid, reward))
    viz.save_figure(fig, "four_gaussians_fields")      # figures/four_gaussians_fields.png
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "POLICY_COLOR",
    "Q_COLOR",
    "GAUSSIAN_COLOR",
    "TD3_COLOR",
    "ALGO_COLORS",
    "NEUTRAL_COLORS",
    "algo_color",
    "MIN_LEGEND_FONTSIZE",
    "ACTION_LABELS",
    "quiver_field",
    "update_quiver",
    "draw_landscape",
    "light_cmap",
    "plot_fields",
    "plot_field_sequence",
    "plot_alignment",
    "plot_action_samples",
    "plot_gridworld_fields",
    "plot_learning_curves",
    "plot_action_histograms",
    "plot_policy_improvement",
    "save_figure",
    "figures_dir",
]

POLICY_COLOR = "#f07f0e"  # orange: the policy's score, the policy's samples
Q_COLOR = "#1f6fb4"  # blue: ∇ₐQ
GAUSSIAN_COLOR = "#7b2f9a"  # purple: a Gaussian policy's samples (SAC)
TD3_COLOR = "#2a9d8f"  # teal: TD3's deterministic actor (not blue: blue means ∇ₐQ)
# One colour per algorithm, the same in every figure of the package (learning curves, samples, histograms).
ALGO_COLORS = {"qsm": POLICY_COLOR, "sac": GAUSSIAN_COLOR, "td3": TD3_COLOR}
# Lines that are none of these (runs of one algorithm, mixture components): no orange, blue, purple or teal.
NEUTRAL_COLORS = ("#2b2b2b", "#b5651d", "#c51b7d", "#8c8c8c")
LANDSCAPE_CMAP = "Greens"
# Actions are normalised to [-1, 1] by every env of the package (envs.make), so that is their unit.
ACTION_LABELS = (r"action $a_1 \in [-1, 1]$", r"action $a_2 \in [-1, 1]$")
MIN_LEGEND_FONTSIZE = 8.0  # points: no legend of the course is smaller

# Sizes chosen to stay readable when a figure is shown ~600 px wide (README, notebook).
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def algo_color(label: str, default: str | None = None) -> str | None:
    """The colour of the algorithm a label names ("QSM", "qsm-paper", "SAC (Gaussian policy)" ...), from
    :data:`ALGO_COLORS`; ``default`` when the label does not start with an algorithm's name."""
    algo = re.match(r"[a-z0-9]*", str(label).lower()).group()  # "QSM-PAPER", "QSM (paper)" -> "qsm"
    return ALGO_COLORS.get(algo, default)


def _np(x: Any) -> np.ndarray:
    """A tensor or array as a float64 numpy array (on the CPU, detached)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _figure(figsize: tuple[float, float]) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=figsize, layout="constrained")


def _subplots(fig: Figure, nrows: int, ncols: int, **kwargs) -> np.ndarray:
    with matplotlib.rc_context(STYLE):
        axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return axes


def _styled(fn):
    """Run a figure function under the course's rc style (fonts, spines)."""

    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = fn.__name__, fn.__doc__, fn
    return wrapper


# ----------------------------------------------------------------------------------------------
# Building blocks: normalised arrows, landscapes, action axes
# ----------------------------------------------------------------------------------------------
def _grid_spacing(actions: np.ndarray) -> float:
    if actions.ndim == 3 and actions.shape[1] > 1:
        return float(abs(actions[0, 1, 0] - actions[0, 0, 0]))
    return 0.1


def _arrow_data(field: np.ndarray, length: float, ref_norm: float | None, gamma: float, min_rel: float):
    """Unit arrows of fixed ``length`` and a strength in [0, 1] from the magnitude: (U, V, C)."""
    f = field.reshape(-1, 2)
    norm = np.linalg.norm(f, axis=-1)
    ref = float(norm.max()) if ref_norm is None else float(ref_norm)
    ref = ref if ref > 0 else 1.0
    ok = norm > min_rel * ref
    unit = np.where(ok[:, None], f / np.maximum(norm, 1e-300)[:, None], 0.0)
    strength = np.clip(norm / ref, 0.0, 1.0) ** gamma
    return length * unit[:, 0], length * unit[:, 1], np.where(ok, strength, 0.0)


_CMAP_CACHE: dict[str, mcolors.Colormap] = {}


def _alpha_cmap(color: str) -> mcolors.Colormap:
    """A colormap from a faint to the full ``color``: magnitude shown as opacity."""
    if color not in _CMAP_CACHE:
        r, g, b = mcolors.to_rgb(color)
        _CMAP_CACHE[color] = mcolors.LinearSegmentedColormap.from_list(f"alpha_{color}", [(r, g, b, 0.3), (r, g, b, 1.0)])
    return _CMAP_CACHE[color]


def quiver_field(
    ax,
    actions: Any,
    field: Any,
    color: str = POLICY_COLOR,
    *,
    length: float | None = None,
    ref_norm: float | None = None,
    gamma: float = 0.5,
    min_rel: float = 1e-3,
    width: float | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    flip_y: bool = False,
    zorder: int = 3,
):
    """Draw ``field`` [n, n, 2] at the points ``actions`` [n, n, 2] as equal-length arrows.

    Each arrow is ``length`` long (default 0.8 × the grid spacing), centred on its point (so it
    never reaches past half a spacing from the grid), and as opaque as (‖f‖ / ``ref_norm``)^``gamma``
    (``ref_norm`` defaults to the field's largest norm; pass a common value to compare two fields'
    magnitudes). Vectors below ``min_rel`` × ``ref_norm`` are not drawn (their direction is noise).
    ``offset``/``scale`` place the grid elsewhere (point a is drawn at offset + scale·a, e.g. inside
    a gridworld cell); ``flip_y`` for image axes whose y grows downward. Returns the ``Quiver``; :func:`update_quiver` changes its field in place.
    """
    a = _np(actions)
    length = 0.8 * _grid_spacing(a) * scale if length is None else length
    U, V, C = _arrow_data(_np(field), length, ref_norm, gamma, min_rel)
    sy = -scale if flip_y else scale
    X = offset[0] + scale * a[..., 0].reshape(-1)
    Y = offset[1] + sy * a[..., 1].reshape(-1)
    if flip_y:  # image axes (row index grows downward): "up" is a negative y step
        V = -V
    w = 0.1 * length if width is None else width
    # Heads sized in data units (a wide arrow gets a proportionally smaller head multiple).
    head_w, head_l = max(0.34 * length, 1.9 * w), max(0.32 * length, 1.5 * w)
    q = ax.quiver(
        X, Y, U, V, C,
        cmap=_alpha_cmap(color), norm=mcolors.Normalize(0.0, 1.0),
        angles="xy", scale_units="xy", scale=1.0, units="xy", width=w,
        headwidth=head_w / w, headlength=head_l / w, headaxislength=0.9 * head_l / w,
        minlength=0.0, pivot="mid", zorder=zorder,
    )  # fmt: skip
    q._qsm = dict(length=length, gamma=gamma, min_rel=min_rel, flip=flip_y)
    return q


def update_quiver(q, field: Any, ref_norm: float | None = None) -> None:
    """Replace the field drawn by a :func:`quiver_field` quiver (same grid), in place (fast)."""
    opts = q._qsm
    U, V, C = _arrow_data(_np(field), opts["length"], ref_norm, opts["gamma"], opts["min_rel"])
    q.set_UVC(U, -V if opts["flip"] else V, C)


def light_cmap(name: str = LANDSCAPE_CMAP, top: float = 0.62) -> mcolors.Colormap:
    """``name`` without its darkest part (0 → ``top`` of the map), so arrows and dots on top stay visible."""
    key = f"{name}_light_{top}"
    if key not in _CMAP_CACHE:
        base = matplotlib.colormaps[name]
        _CMAP_CACHE[key] = mcolors.ListedColormap(base(np.linspace(0.0, top, 256)), name=key)
    return _CMAP_CACHE[key]


def draw_landscape(ax, actions: Any, values: Any, cmap: str = LANDSCAPE_CMAP, colorbar: str | None = "reward r(a)", light: bool = True, vmin: float | None = None, vmax: float | None = None):
    """``values`` [n, n] on the regular grid ``actions`` [n, n, 2] as an image under the arrows.

    ``light`` leaves the darkest colours of ``cmap`` out (so arrows and samples stay visible on
    top); ``colorbar``: its label, or None for no colour bar. Returns the ``AxesImage``
    (``set_data`` / ``set_clim`` update it).
    """
    a, v = _np(actions), _np(values)
    h = _grid_spacing(a) / 2
    extent = (a[..., 0].min() - h, a[..., 0].max() + h, a[..., 1].min() - h, a[..., 1].max() + h)
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    cm = light_cmap(cmap) if light else cmap
    im = ax.imshow(v, origin="lower", extent=extent, cmap=cm, vmin=lo, vmax=max(hi, lo + 1e-12), interpolation="bilinear", zorder=0)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, shrink=0.85)
        cb.set_label(colorbar)
    return im


def _action_axes(ax, bound: float = 1.0, margin: float = 0.08, labels: bool = True) -> None:
    ax.set_xlim(-bound - margin, bound + margin)
    ax.set_ylim(-bound - margin, bound + margin)
    ax.set_aspect("equal")
    ax.add_patch(matplotlib.patches.Rectangle((-bound, -bound), 2 * bound, 2 * bound, fill=False, ec="0.55", lw=0.8, ls="--", zorder=1))
    if labels:
        ax.set_xlabel(ACTION_LABELS[0])
        ax.set_ylabel(ACTION_LABELS[1])
    ax.set_xticks([-1, 0, 1])
    ax.set_yticks([-1, 0, 1])


def _arrow_handle(color: str, label: str) -> Line2D:
    return Line2D([], [], color=color, marker=r"$\rightarrow$", markersize=14, linestyle="None", label=label)


def _legend_below(fig: Figure, handles: list, title: str | None) -> Figure:
    """One legend row under the panels, and the figure's title."""
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def _margin(actions: Any) -> float:
    return 0.5 * _grid_spacing(_np(actions)) + 0.04


SCORE_LABEL = r"policy score $-\epsilon_\theta \propto \nabla_a \log\pi$"
GRAD_Q_LABEL = r"$\nabla_a Q$"


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
@_styled
def plot_fields(
    actions: Any,
    score: Any = None,
    grad_q: Any = None,
    *,
    layout: str = "overlay",
    background: tuple[Any, Any] | None = None,
    samples: Any = None,
    title: str | None = None,
    score_label: str = SCORE_LABEL,
    grad_label: str = GRAD_Q_LABEL,
    shared_scale: bool = False,
    background_label: str = "reward r(a) = Q(a)",
) -> Figure:
    """The policy's score (orange) and ∇ₐQ (blue) on the grid ``actions`` [n, n, 2].

    ``layout``: ``"overlay"`` (one panel, the paper's Figure 1 style: where the two agree, the thin
    blue arrow lies inside the wide orange one) or ``"side-by-side"`` (two panels).
    ``background``: ``(grid, values)`` drawn underneath (e.g. the reward on a finer grid);
    ``samples`` [N, 2]: policy samples drawn as dots; ``shared_scale``: one opacity scale for both
    fields (compare magnitudes, e.g. −ε against α∇ₐQ) instead of one per field.
    """
    if layout not in ("overlay", "side-by-side"):
        raise ValueError(f"layout must be 'overlay' or 'side-by-side', got {layout!r}")
    if score is None and grad_q is None:
        raise ValueError("give score=, grad_q= or both")
    ref = None
    if shared_scale and score is not None and grad_q is not None:
        ref = max(np.linalg.norm(_np(score), axis=-1).max(), np.linalg.norm(_np(grad_q), axis=-1).max())
    panels = 2 if layout == "side-by-side" and score is not None and grad_q is not None else 1
    fig = _figure((4.3 * panels + 0.4, 4.0))
    axes = _subplots(fig, 1, panels).ravel()
    m = _margin(actions)
    for i, ax in enumerate(axes):
        if background is not None:
            draw_landscape(ax, *background, colorbar=background_label if i == panels - 1 else None)
        _action_axes(ax, margin=m)
        handles = []
        show_score = score is not None and (panels == 1 or i == 0)
        show_q = grad_q is not None and (panels == 1 or i == 1)
        if show_score:
            w = 0.25 * 0.8 * _grid_spacing(_np(actions)) if show_q else None
            quiver_field(ax, actions, score, POLICY_COLOR, ref_norm=ref, width=w, zorder=3)
            handles.append(_arrow_handle(POLICY_COLOR, score_label))
        if show_q:
            quiver_field(ax, actions, grad_q, Q_COLOR, ref_norm=ref, zorder=4)
            handles.append(_arrow_handle(Q_COLOR, grad_label))
        if samples is not None and i == 0:
            s = _np(samples)
            ax.scatter(s[:, 0], s[:, 1], s=5, color=POLICY_COLOR, alpha=0.5, lw=0, zorder=2)
            handles.append(Line2D([], [], color=POLICY_COLOR, marker="o", ls="None", ms=4, label="policy samples"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(handles), frameon=False, handletextpad=0.2)
        if panels == 2:
            ax.set_title("policy score" if i == 0 else r"$\nabla_a Q$")
    if title:
        fig.suptitle(title)
    return fig


@_styled
def plot_field_sequence(
    actions: Any,
    scores: Sequence[Any],
    grad_q: Any,
    titles: Sequence[str],
    *,
    background: tuple[Any, Any] | None = None,
    ncols: int | None = None,
    title: str | None = None,
) -> Figure:
    """Several score fields (orange) over the same ∇ₐQ (blue), one panel each, in reading order.

    The paper's Figure 1: a randomly initialised policy's score, then the score after QSM steps.
    ``scores``: fields [n, n, 2] on the grid ``actions``; ``titles``: one per panel.
    """
    if len(scores) != len(titles):
        raise ValueError(f"give one title per score field: {len(scores)} fields, {len(titles)} titles")
    n = len(scores)
    ncols = ncols or min(n, 3)
    nrows = -(-n // ncols)
    fig = _figure((3.3 * ncols + 0.6, 3.35 * nrows + 0.5))
    axes = _subplots(fig, nrows, ncols, sharex=True, sharey=True)
    m = _margin(actions)
    w = 0.25 * 0.8 * _grid_spacing(_np(actions))
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.set_axis_off()
            continue
        im = None
        if background is not None:
            im = draw_landscape(ax, *background, colorbar=None)
        _action_axes(ax, margin=m, labels=False)
        quiver_field(ax, actions, scores[k], POLICY_COLOR, width=w, zorder=3)
        quiver_field(ax, actions, grad_q, Q_COLOR, zorder=4)
        ax.set_title(titles[k])
        if k % ncols == 0:
            ax.set_ylabel(ACTION_LABELS[1])
        if k // ncols == nrows - 1:
            ax.set_xlabel(ACTION_LABELS[0])
    handles = [_arrow_handle(POLICY_COLOR, SCORE_LABEL), _arrow_handle(Q_COLOR, GRAD_Q_LABEL + " (exact)")]
    if background is not None:
        handles.append(matplotlib.patches.Patch(color=mcolors.to_rgba("tab:green", 0.5), label="reward (darker = higher)"))
    return _legend_below(fig, handles, title)


@_styled
def plot_alignment(
    actions: Any,
    cosines: Any | Sequence[Any],
    titles: Sequence[str] | None = None,
    *,
    means: Sequence[float] | None = None,
    title: str | None = None,
) -> Figure:
    """Heat maps of cos∠(score, ∇ₐQ) [n, n] on the grid ``actions`` (green aligned, red opposed).

    ``cosines``: one map or a list of maps (e.g. before / after training); NaN (a negligible
    vector, see ``fields.alignment``) is grey. ``means``: printed in the titles.
    """
    maps = [cosines] if not isinstance(cosines, (list, tuple)) else list(cosines)
    titles = list(titles) if titles is not None else [""] * len(maps)
    if len(titles) != len(maps):
        raise ValueError(f"give one title per map: {len(maps)} maps, {len(titles)} titles")
    fig = _figure((3.3 * len(maps) + 1.0, 3.5))
    axes = _subplots(fig, 1, len(maps), sharey=True).ravel()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="0.8")
    a = _np(actions)
    h = _grid_spacing(a) / 2
    extent = (a[..., 0].min() - h, a[..., 0].max() + h, a[..., 1].min() - h, a[..., 1].max() + h)
    im = None
    for k, (ax, c) in enumerate(zip(axes, maps)):
        im = ax.imshow(np.ma.masked_invalid(_np(c)), origin="lower", extent=extent, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xlabel(ACTION_LABELS[0])
        if k == 0:
            ax.set_ylabel(ACTION_LABELS[1])
        ax.set_xticks([-1, 0, 1])
        ax.set_yticks([-1, 0, 1])
        t = titles[k]
        if means is not None:
            t = f"{t}\nmean cos = {means[k]:.2f}" if t else f"mean cos = {means[k]:.2f}"
        ax.set_title(t)
    cb = fig.colorbar(im, ax=list(axes), fraction=0.046, pad=0.03, shrink=0.85)
    cb.set_label(r"cos$\angle$(score, $\nabla_a Q$)  (grey: $\approx$0 vector)")
    if title:
        fig.suptitle(title)
    return fig


@_styled
def plot_action_samples(
    samples: Mapping[str, Any] | Any,
    background: tuple[Any, Any] | None = None,
    *,
    modes: Any = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
    background_label: str = "reward r(a)",
    max_points: int = 2000,
    points: Mapping[str, Any] | None = None,
    points_label: str = "deterministic action",
    samples_label: str | None = None,
) -> Figure:
    """Action samples over the reward / Q landscape, one panel per policy.

    ``samples``: ``{"QSM (diffusion)": [N, 2], "SAC (Gaussian)": [N, 2]}`` or one [N, 2] array;
    ``background``: ``(grid [n, n, 2], values [n, n])``; ``modes`` [K, 2]: optimal actions, marked ×;
    ``points``: ``{panel name: [K, 2]}`` extra actions marked ★ (e.g. a Gaussian's mean action).
    ``samples_label``: the legend's name for the dots (default "N policy samples"; say "particles" or
    "data points" where they are not a policy's actions).
    Colours: ``colors[name]`` if given, else the algorithm's colour when the panel's name starts with
    one (:func:`algo_color`: "QSM ..." orange, "SAC ..." purple), else orange, purple, ... by position.
    """
    sets = dict(samples) if isinstance(samples, Mapping) else {"policy samples": samples}
    palette = [POLICY_COLOR, GAUSSIAN_COLOR, "#b22222", "#8b5a2b"]
    n = len(sets)
    fig = _figure((3.4 * n + 0.9, 4.0))
    axes = _subplots(fig, 1, n, sharey=True).ravel()
    for k, (ax, (name, s)) in enumerate(zip(axes, sets.items())):
        if background is not None:
            draw_landscape(ax, *background, colorbar=background_label if k == n - 1 else None)
        _action_axes(ax, margin=0.05, labels=False)
        ax.set_xlabel(ACTION_LABELS[0])
        if k == 0:
            ax.set_ylabel(ACTION_LABELS[1])
        pts = _np(s)[:max_points]
        color = (colors or {}).get(name) or algo_color(name, palette[k % len(palette)])
        ax.scatter(pts[:, 0], pts[:, 1], s=7, color=color, alpha=0.45, lw=0, zorder=3)
        if modes is not None:
            mo = _np(modes)
            ax.scatter(mo[:, 0], mo[:, 1], marker="x", s=55, color="k", lw=1.6, zorder=4)
        if points is not None and name in points:
            p = np.atleast_2d(_np(points[name]))
            ax.scatter(p[:, 0], p[:, 1], marker="*", s=260, color=color, ec="k", lw=1.0, zorder=5)
        ax.set_title(name)
    n_pts = min(len(_np(s)), max_points)
    dots = samples_label if samples_label is not None else f"{n_pts} policy samples"
    handles = [Line2D([], [], color="0.45", marker="o", ls="None", ms=4, label=dots)]
    if modes is not None:
        handles.append(Line2D([], [], color="k", marker="x", ls="None", ms=8, mew=1.6, label="optimal actions"))
    if points:
        handles.append(Line2D([], [], color="0.45", marker="*", mec="k", ls="None", ms=13, label=points_label))
    return _legend_below(fig, handles, title)


@_styled
def plot_gridworld_fields(
    env: Any,
    fields: Any = None,
    actions: Any = None,
    *,
    samples: Any = None,
    values: Any = None,
    title: str | None = None,
    field_label: str = r"$\nabla_a Q(s, \cdot)$ in each cell",
    sample_label: str = "policy's pushes",
    per_cell_scale: bool = True,
    ax=None,
) -> Figure:
    """A gridworld with a small action field in every non-terminal cell.

    ``fields`` [n_states, n, n, 2]: a vector field over the push grid ``actions`` [n, n, 2] per
    state (e.g. ∇ₐQ*, drawn blue); ``samples`` [n_states, N, 2]: the pushes a policy plays in each
    state (orange dots). Inside a cell, the push a = (a₁, a₂) sits at (a₁, a₂)·0.42 from the cell's
    centre, up being up: a dot near a cell's right edge is a push to the right.
    ``values`` [n_states]: a heat map of state values under it (``env.draw``).
    ``per_cell_scale``: arrow opacity relative to each cell's largest vector (directions readable
    in every cell) rather than to the largest of the whole map (magnitudes comparable across cells).
    ``ax``: draw into these axes (the returned Figure is theirs).
    """
    if ax is None:
        fig = _figure((0.9 * env.width + 1.6, 0.9 * env.height + 0.9))
        ax = _subplots(fig, 1, 1)[0, 0]
    fig = ax.figure
    env.draw(ax, values=values, show_agent=False)
    live = np.flatnonzero(~_np(env.is_terminal).astype(bool))
    handles = []
    half = 0.42
    if fields is not None:
        f = _np(fields)
        a = _np(actions)
        length = 0.8 * _grid_spacing(a) * half
        ref = float(np.linalg.norm(f[live], axis=-1).max())
        for s in live:
            r, c = env.cells[s]
            cell_ref = float(np.linalg.norm(f[s], axis=-1).max()) if per_cell_scale else ref
            quiver_field(ax, a, f[s], Q_COLOR, ref_norm=cell_ref, length=length, offset=(c, r), scale=half, flip_y=True, zorder=4)
        handles.append(_arrow_handle(Q_COLOR, field_label))
    if samples is not None:
        smp = _np(samples)
        for s in live:
            r, c = env.cells[s]
            ax.scatter(c + half * smp[s, :, 0], r - half * smp[s, :, 1], s=6, color=POLICY_COLOR, ec="none", alpha=0.8, zorder=5)
        handles.append(Line2D([], [], color=POLICY_COLOR, marker="o", ls="None", ms=4, label=sample_label))
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), frameon=False)
    if title:
        ax.set_title(title)
    return fig


@_styled
def plot_learning_curves(
    curves: Mapping[str, tuple[Any, Any]],
    *,
    band: str = "std",
    xlabel: str = "environment steps",
    ylabel: str = "episode return",
    title: str | None = None,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Mean over seeds with a band, one line per curve.

    ``curves``: ``{label: (steps [T], values [n_seeds, T])}`` (a 1-D ``values`` is one seed).
    ``band``: ``"std"`` (mean ± 1 std), ``"sem"`` (± standard error), ``"minmax"`` or ``"none"``.
    NaNs (a seed without that point) are ignored in the statistics. Labels starting with an
    algorithm's name share its colour (:data:`ALGO_COLORS`); the second, third, ... such curve is dashed, dotted, ...
    ("QSM" solid, "QSM (paper)" or "QSM-PAPER" dashed).
    """
    if band not in ("std", "sem", "minmax", "none"):
        raise ValueError(f"band must be 'std', 'sem', 'minmax' or 'none', got {band!r}")
    fig = _figure((5.6, 3.6))
    ax = _subplots(fig, 1, 1)[0, 0]
    times_used: dict[str, int] = {}
    for k, (label, (steps, values)) in enumerate(curves.items()):
        x, y = _np(steps), np.atleast_2d(_np(values))
        if y.shape[1] != x.shape[0]:
            raise ValueError(f"curve {label!r}: values have {y.shape[1]} points per seed but steps has {x.shape[0]}")
        color = (colors or {}).get(label) or algo_color(label, f"C{k}")
        style = ("-", "--", ":", "-.")[times_used.get(color, 0) % 4]
        times_used[color] = times_used.get(color, 0) + 1
        with np.errstate(all="ignore"):
            mean = np.nanmean(y, axis=0)
            n_seeds = y.shape[0]
            ax.plot(x, mean, color=color, ls=style, lw=1.8, label=f"{label} ({n_seeds} seed{'s' if n_seeds > 1 else ''})")
            if band != "none" and n_seeds > 1:
                if band == "minmax":
                    lo, hi = np.nanmin(y, axis=0), np.nanmax(y, axis=0)
                else:
                    spread = np.nanstd(y, axis=0)
                    if band == "sem":
                        spread = spread / np.sqrt(np.sum(np.isfinite(y), axis=0).clip(min=1))
                    lo, hi = mean - spread, mean + spread
                ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    band_text = {"std": "mean ± 1 std over seeds", "sem": "mean ± s.e. over seeds", "minmax": "mean, min-max over seeds", "none": "mean over seeds"}[band]
    ax.legend(title=band_text, frameon=False)
    if title:
        ax.set_title(title)
    return fig


@_styled
def plot_action_histograms(samples: Mapping[str, Mapping[int, Any]], *, xlabel: str = r"action $a \in [-1, 1]$", title: str | None = None) -> Figure:
    """Histograms of 1-D action samples: one row per policy, one column per training step.

    ``samples``: ``{policy label: {env step: actions [N]}}``. Each panel's title gives the shares
    pushing left (a < −0.05), right (a > 0.05) and sitting at the box's faces (|a| ≥ 0.99), the
    numbers that say whether a "bimodal" histogram is two choices or samples piled on ±1.
    """
    steps = sorted({step for per_step in samples.values() for step in per_step})
    fig = _figure((2.7 * len(steps), 2.1 * len(samples) + 0.4))
    axes = _subplots(fig, len(samples), len(steps), sharex=True)
    for i, (label, per_step) in enumerate(samples.items()):
        color = algo_color(label, f"C{i}")
        for j, step in enumerate(steps):
            ax = axes[i, j]
            if step not in per_step:  # (a run without a snapshot at that step)
                ax.text(0.5, 0.5, f"{label}, {step / 1000:g}k steps:\nnot saved", ha="center", va="center", fontsize=8, color="0.5", transform=ax.transAxes)
                ax.axis("off")
                continue
            a = _np(per_step[step]).reshape(-1)
            ax.hist(a, bins=np.linspace(-1, 1, 41), color=color)
            left, right, faces = (a < -0.05).mean(), (a > 0.05).mean(), (np.abs(a) >= 0.99).mean()
            ax.set_title(f"{label}, {step / 1000:g}k steps\nleft {left:.0%} · right {right:.0%} · at ±1 {faces:.0%}", fontsize=8)
            ax.set_yticks([])
            ax.set_xlim(-1.05, 1.05)
            if i == len(samples) - 1:
                ax.set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    return fig


def _get(result: Any, key: str):
    return result[key] if isinstance(result, Mapping) else getattr(result, key)


@_styled
def plot_policy_improvement(results: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """V^π(start) and the score–∇ₐQ^π alignment per QSM iteration, one line per run.

    ``results``: ``{label: r}`` where ``r`` has ``start_values`` [K + 1], ``alignment`` [K] and
    ``optimal_start_value`` (attributes or keys), e.g. ``theory.qsm_policy_improvement`` results.
    V* is drawn dashed in the run's colour.
    """
    fig = _figure((8.2, 3.5))
    ax_v, ax_a = _subplots(fig, 1, 2).ravel()
    palette = NEUTRAL_COLORS  # not orange/blue (score/∇Q), nor an algorithm's colour: these are runs of QSM
    lowest = 0.0
    for k, (label, r) in enumerate(results.items()):
        color = palette[k % len(palette)]
        v = _np(_get(r, "start_values"))
        ax_v.plot(np.arange(len(v)), v, color=color, lw=1.8, marker="o", ms=2.5, label=label)
        ax_v.axhline(float(_get(r, "optimal_start_value")), color=color, ls="--", lw=1.0)
        al = _np(_get(r, "alignment"))
        ax_a.plot(np.arange(len(al)), al, color=color, lw=1.5, label=label)
        lowest = min(lowest, float(np.nanmin(al)) if al.size else 0.0)
    ax_v.plot([], [], color="0.3", ls="--", lw=1.0, label="$V^*$(start) (optimal)")
    ax_v.set_xlabel("QSM iteration")
    ax_v.set_ylabel(r"$V^\pi$(start), exact")
    ax_v.set_title("value never decreases")
    ax_v.grid(alpha=0.3)
    ax_v.legend(frameon=False, loc="lower right")
    ax_a.set_xlabel("QSM iteration")
    ax_a.set_ylabel(r"mean cos$\angle$(score, $\nabla_a Q^\pi$)")
    ax_a.set_title("learned score vs. exact $\\nabla_a Q^\\pi$")
    ax_a.set_ylim(lowest - 0.08, 1.03)
    ax_a.axhline(0.0, color="0.6", lw=0.8)
    ax_a.grid(alpha=0.3)
    ax_a.legend(frameon=False, loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------
def figures_dir() -> Path:
    """Where figures go: ``$QSM_FIGURES_DIR`` if set, else the repository's ``figures/`` (when the
    package runs from a checkout), else ``./figures``."""
    env = os.environ.get("QSM_FIGURES_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists():
        return repo / "figures"
    return Path.cwd() / "figures"


def save_figure(fig: Figure, name: str, directory: str | Path | None = None, dpi: int = 130) -> Path:
    """Write ``fig`` as ``<directory>/<name>.png`` (default directory: :func:`figures_dir`).

    Returns the path. ``name`` may end in ``.png``; other extensions are refused.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"save_figure needs a matplotlib Figure, got {type(fig).__name__}")
    stem = str(name)
    if stem.endswith(".png"):
        stem = stem[:-4]
    if not stem or "." in Path(stem).name:
        raise ValueError(f"figure name {name!r} should be a plain name such as 'figure1_score_field' (PNG is added)")
    out_dir = Path(directory) if directory is not None else figures_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.png"
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path
