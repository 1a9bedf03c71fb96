"""Every figure function returns a Figure with labelled axes; arrows stay inside; PNGs are written."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.quiver import Quiver

from qsm_tutorial import fields, viz
from qsm_tutorial.envs.bandits import BUILTIN_BANDITS, Bandit2D, action_grid
from qsm_tutorial.envs.gridworld import LAYOUTS, GridWorld
from qsm_tutorial.envs.gridworld import action_grid as push_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bandit_fields():
    make_reward, modes = BUILTIN_BANDITS["four-gaussians"]
    env = Bandit2D(make_reward(), name="four-gaussians", modes=modes)
    grid, fine = action_grid(11), action_grid(41)
    grad_q = fields.q_gradient_field(env, grid)
    torch.manual_seed(0)
    score = torch.randn(11, 11, 2)
    return env, grid, fine, grad_q, score


def data_axes(fig: Figure):
    """The axes that hold data (colour-bar axes left out)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def assert_labelled(fig: Figure, need_title: bool = True):
    assert isinstance(fig, Figure)
    axes = data_axes(fig)
    assert axes
    # every data panel has an x label and its row a y label (shared y axes label the first only)
    assert all(ax.get_xlabel() for ax in axes), [ax.get_xlabel() for ax in axes]
    assert any(ax.get_ylabel() for ax in axes)
    if need_title:
        assert any(ax.get_title() for ax in axes) or (fig._suptitle is not None and fig._suptitle.get_text())


def assert_arrows_inside(fig: Figure):
    """Normalised arrows: every arrow, centred on its point, ends inside the axes' limits."""
    n = 0
    for ax in data_axes(fig):
        x0, x1 = sorted(ax.get_xlim())
        y0, y1 = sorted(ax.get_ylim())
        for q in (c for c in ax.collections if isinstance(c, Quiver)):
            X, Y = q.X, q.Y
            U, V = np.asarray(q.U), np.asarray(q.V)
            for sx in (-0.5, 0.5):
                assert np.all((X + sx * U >= x0) & (X + sx * U <= x1))
                assert np.all((Y + sx * V >= y0) & (Y + sx * V <= y1))
            n += 1
    assert n > 0


def test_plot_fields_overlay_and_side_by_side(bandit_fields):
    env, grid, fine, grad_q, score = bandit_fields
    fig = viz.plot_fields(grid, score, grad_q, background=(fine, env.reward(fine)), title="overlay")
    assert_labelled(fig)
    assert_arrows_inside(fig)
    quivers = [c for c in fig.axes[0].collections if isinstance(c, Quiver)]
    assert len(quivers) == 2
    # orange score, blue ∇Q (the paper's Figure 1 convention), and a legend naming both
    colours = {tuple(np.round(q.get_cmap()(1.0)[:3], 3)) for q in quivers}
    assert colours == {tuple(np.round(viz.matplotlib.colors.to_rgb(c), 3)) for c in (viz.POLICY_COLOR, viz.Q_COLOR)}
    assert len(fig.axes[0].get_legend().get_texts()) == 2
    # equal-length arrows: magnitude goes to opacity, not length
    lengths = np.hypot(quivers[1].U, quivers[1].V)
    assert np.allclose(lengths[lengths > 0], lengths.max())
    fig2 = viz.plot_fields(grid, score, grad_q, layout="side-by-side", samples=torch.rand(50, 2) * 2 - 1)
    assert len(data_axes(fig2)) == 2
    assert_labelled(fig2)
    with pytest.raises(ValueError, match="layout"):
        viz.plot_fields(grid, score, grad_q, layout="stacked")


def test_field_sequence_alignment_samples(bandit_fields):
    env, grid, fine, grad_q, score = bandit_fields
    fig = viz.plot_field_sequence(grid, [score, grad_q], grad_q, ["random", "matched"], background=(fine, env.reward(fine)))
    assert_labelled(fig)
    assert_arrows_inside(fig)
    assert fig.legends  # one legend for all panels
    al = [fields.alignment(score, grad_q), fields.alignment(grad_q, grad_q)]
    fig = viz.plot_alignment(grid, [a.cosine for a in al], ["random", "matched"], means=[a.mean for a in al])
    assert_labelled(fig)
    assert "mean cos = 1.00" in data_axes(fig)[1].get_title()
    fig = viz.plot_action_samples(
        {"QSM": torch.rand(200, 2) * 2 - 1, "SAC": torch.randn(200, 2) * 0.1},
        background=(fine, env.reward(fine)),
        modes=env.modes,
    )
    assert_labelled(fig)
    assert len(data_axes(fig)) == 2


def test_gridworld_fields_figure():
    env = GridWorld(LAYOUTS["two-routes"], name="two-routes")
    sol = env.optimal_values()
    grid = push_grid(5)
    S = env.n_states
    grads = env.action_gradient(torch.arange(S).view(S, 1, 1), grid.expand(S, 5, 5, 2), sol.V)
    fig = viz.plot_gridworld_fields(env, grads, grid, samples=torch.rand(S, 8, 2) * 2 - 1, values=sol.V, title="∇Q* per cell")
    assert isinstance(fig, Figure)
    ax = data_axes(fig)[0]
    assert ax.get_title() == "∇Q* per cell"
    assert ax.get_legend() is not None
    live = int((~env.is_terminal).sum())
    assert sum(isinstance(c, Quiver) for c in ax.collections) == live  # one small field per live cell


def test_learning_curves_and_improvement():
    steps = np.arange(0, 1000, 100)
    rng = np.random.default_rng(0)
    fig = viz.plot_learning_curves({"QSM": (steps, rng.normal(size=(3, 10)).cumsum(1)), "SAC": (steps, rng.normal(size=(3, 10)))})
    assert_labelled(fig, need_title=False)
    ax = data_axes(fig)[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2  # a band per curve
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["QSM (3 seeds)", "SAC (3 seeds)"]
    with pytest.raises(ValueError, match="points per seed"):
        viz.plot_learning_curves({"x": (steps, np.zeros((2, 4)))})
    # a variant of an algorithm keeps its colour and changes the line style
    one = (steps, np.zeros((2, 10)))
    ax = data_axes(viz.plot_learning_curves({"QSM": one, "QSM-PAPER": one, "QSM (paper)": one, "SAC": one}))[0]
    qsm, paper, paper2, sac = ax.lines
    assert qsm.get_color() == paper.get_color() == paper2.get_color() != sac.get_color()
    assert [line.get_linestyle() for line in ax.lines] == ["-", "--", ":", "-"]
    run = {"start_values": np.linspace(-0.5, 0.7, 11), "alignment": np.linspace(0.3, 0.9, 10), "optimal_start_value": 0.8}
    fig = viz.plot_policy_improvement({"slip 0": run, "slip 0.2": run})
    assert_labelled(fig)


def test_save_figure_writes_a_png(tmp_path, bandit_fields):
    env, grid, fine, grad_q, score = bandit_fields
    fig = viz.plot_fields(grid, grad_q=grad_q)
    path = viz.save_figure(fig, "fields_test", tmp_path)
    assert path == tmp_path / "fields_test.png"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000
    assert viz.save_figure(fig, "again.png", tmp_path).name == "again.png"
    with pytest.raises(ValueError, match="plain name"):
        viz.save_figure(fig, "bad.jpg", tmp_path)
    assert viz.figures_dir().name == "figures"


def _rgb(color) -> tuple:
    return tuple(np.round(viz.matplotlib.colors.to_rgb(color), 3))


def test_each_algorithm_has_one_colour_in_every_figure():
    """QSM, SAC and TD3 keep the colour of ``viz.ALGO_COLORS`` in learning curves, histograms and sample
    panels, wherever they stand in the figure; none of them is the blue that means ∇ₐQ."""
    want = {name: _rgb(viz.ALGO_COLORS[name.lower()]) for name in ("QSM", "SAC", "TD3")}
    assert len(set(want.values())) == 3 and _rgb(viz.Q_COLOR) not in want.values()
    assert want["QSM"] == _rgb(viz.POLICY_COLOR)  # QSM's samples are the orange of its score
    assert viz.algo_color("QSM (paper)") == viz.algo_color("qsm-paper") == viz.POLICY_COLOR
    assert viz.algo_color("data", "0.3") == "0.3"

    steps = np.arange(5)
    order = ["TD3", "SAC", "QSM"]  # not the order of ALGO_COLORS: the colour must follow the name, not the position
    ax = data_axes(viz.plot_learning_curves({name: (steps, np.zeros((2, 5))) for name in order}))[0]
    assert [_rgb(line.get_color()) for line in ax.lines] == [want[n] for n in order]

    rng = np.random.default_rng(0)
    fig = viz.plot_action_histograms({name: {1000: rng.uniform(-1, 1, 50)} for name in order})
    colours = [_rgb(data_axes(fig)[i].patches[0].get_facecolor()) for i in range(3)]
    assert colours == [want[n] for n in order]

    fig = viz.plot_action_samples({f"{name} policy": torch.rand(30, 2) * 2 - 1 for name in order})
    colours = [_rgb(ax.collections[0].get_facecolor()[0]) for ax in data_axes(fig)]
    assert colours == [want[n] for n in order]
    # an explicit colour still wins, and a name that is no algorithm gets the palette
    fig = viz.plot_action_samples({"SAC": torch.zeros(3, 2), "data": torch.zeros(3, 2)}, colors={"SAC": "k"})
    assert [_rgb(ax.collections[0].get_facecolor()[0]) for ax in data_axes(fig)] == [(0, 0, 0), _rgb(viz.GAUSSIAN_COLOR)]


def test_action_histograms_mark_the_steps_a_run_has_no_samples_for():
    """A run with fewer snapshots than another gets a labelled empty panel, not a silent gap."""
    rng = np.random.default_rng(0)
    fig = viz.plot_action_histograms({"QSM": {1000: rng.uniform(-1, 1, 50), 2000: rng.uniform(-1, 1, 50)},
                                      "SAC": {2000: rng.uniform(-1, 1, 50)}})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["SAC, 1k steps:\nnot saved"]


def _all_figures(bandit_fields):
    env, grid, fine, grad_q, score = bandit_fields
    steps = np.arange(0, 1000, 100)
    run = {"start_values": np.linspace(-0.5, 0.7, 11), "alignment": np.linspace(0.3, 0.9, 10), "optimal_start_value": 0.8}
    world = GridWorld(LAYOUTS["two-routes"], name="two-routes")
    S, pushes = world.n_states, push_grid(3)
    grads = world.action_gradient(torch.arange(S).view(S, 1, 1), pushes.expand(S, 3, 3, 2), world.optimal_values().V)
    return {
        "plot_fields": viz.plot_fields(grid, score, grad_q, background=(fine, env.reward(fine)), samples=torch.rand(20, 2)),
        "plot_field_sequence": viz.plot_field_sequence(grid, [score], grad_q, ["a"], background=(fine, env.reward(fine))),
        "plot_action_samples": viz.plot_action_samples({"QSM": torch.rand(20, 2)}, modes=env.modes, points={"QSM": torch.zeros(2)}),
        "plot_gridworld_fields": viz.plot_gridworld_fields(world, grads, pushes, samples=torch.rand(S, 4, 2)),
        "plot_learning_curves": viz.plot_learning_curves({"QSM": (steps, np.zeros((2, 10))), "SAC": (steps, np.ones(10))}),
        "plot_policy_improvement": viz.plot_policy_improvement({"slip 0": run}),
    }


def test_every_legend_is_at_least_8_points_and_action_axes_say_their_range(bandit_fields):
    figures = _all_figures(bandit_fields)
    for name, fig in figures.items():
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends, f"{name}: no legend"
        for legend in legends:
            texts = list(legend.get_texts()) + ([legend.get_title()] if legend.get_title().get_text() else [])
            sizes = [t.get_fontsize() for t in texts]
            assert min(sizes) >= viz.MIN_LEGEND_FONTSIZE, f"{name}: legend text of {min(sizes)} pt"
    # axes over the action box say that actions are normalised to [-1, 1]
    for name in ("plot_fields", "plot_field_sequence", "plot_action_samples"):
        labels = [ax.get_xlabel() for ax in data_axes(figures[name]) if ax.get_xlabel()]
        assert labels and all("[-1, 1]" in label for label in labels), (name, labels)


def test_plot_action_samples_names_its_dots():
    fig = viz.plot_action_samples({"p": torch.zeros(5, 2)}, samples_label="5 Langevin particles")
    assert fig.legends[0].get_texts()[0].get_text() == "5 Langevin particles"
    fig = viz.plot_action_samples({"p": torch.zeros(5, 2)})
    assert fig.legends[0].get_texts()[0].get_text() == "5 policy samples"
