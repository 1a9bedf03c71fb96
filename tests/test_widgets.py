"""The explorers build and redraw without a browser: update(...) changes the drawn data."""

import base64

import numpy as np
import pytest

from qsm_tutorial import widgets

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# One xdist worker runs this file (with --dist loadgroup, as `make test` does), so the trained
# snapshots below are made once, not once per worker.
pytestmark = pytest.mark.xdist_group("widgets")


@pytest.fixture(scope="session")  # session: a module fixture is rebuilt when xdist interleaves files
def snapshots():
    # A tiny run: small nets, short warm-up and Langevin chains; 100 updates, a snapshot every 25.
    return widgets.train_bandit_snapshots(
        "single-peak",
        total_steps=132,
        every=25,
        seed=0,
        warmup_steps=32,
        batch_size=32,
        actor_hidden=(32, 32),
        critic_hidden=(32, 32),
        langevin_steps=10,
    )


def uv(q):
    return np.stack([np.asarray(q.U).copy(), np.asarray(q.V).copy()])


def test_train_bandit_snapshots(snapshots):
    assert snapshots.updates == [0, 25, 50, 75, 100]
    assert len(snapshots) == 5 and snapshots.bandit == "single-peak"
    a0 = snapshots.agent(0).actor.net[0].weight.detach().clone()
    a4 = snapshots.agent(4).actor.net[0].weight.detach().clone()
    assert not np.allclose(a0.numpy(), a4.numpy())  # the weights did change along the run


def test_bandit_explorer_update_changes_the_drawn_data(snapshots):
    ex = widgets.explore_bandit(snapshots, n_arrows=9, n_samples=64)
    assert ex.values["bandit"] == "single-peak" and ex.values["iteration"] == 4
    score, grad = ex.quivers["score"], ex.quivers["grad_q"]
    before = uv(score)
    ex.update(iteration=0)  # an earlier snapshot: another score field
    assert not np.allclose(uv(score), before)
    at_t0 = uv(score)
    ex.update(t=3)  # another noise level: the network sees another t
    assert not np.allclose(uv(score), at_t0)
    c_before = np.asarray(score.get_array()).copy()
    ex.update(alpha=200.0)  # α scales ∇Q against the score (one opacity scale): the score fades
    assert np.asarray(score.get_array()).max() < 0.5 * c_before.max()
    assert "α = 200" in ex.title.get_text()
    ex.update(grad="critic")  # the learned critic's gradient instead of the exact one
    png = ex.render_png()
    assert png[:8] == PNG_MAGIC
    # the layout toggle rebuilds the figure with two panels
    ex.update(layout="side-by-side")
    assert len([a for a in ex.figure.axes if a.get_label() != "<colorbar>"]) == 2
    assert ex.render_png()[:8] == PNG_MAGIC
    # a bandit without snapshots shows an untrained policy and says so
    ex.update(bandit="ring")
    assert ex.values["iteration"] == 0 and "no training snapshots" in ex.status.value
    with pytest.raises(ValueError, match="unknown control"):
        ex.update(temperature=2.0)
    with pytest.raises(ValueError, match="not a valid value"):
        ex.update(bandit="no-such-bandit")


def test_bandit_explorer_fast_path_redraws_only_dynamic_artists(snapshots):
    ex = widgets.explore_bandit(snapshots, n_arrows=9, n_samples=64)
    first = np.frombuffer(ex.render_png(), np.uint8).copy()
    ex.update(t=2)
    second = ex.render_png()
    ex.update(t=0)
    third = ex.render_png()
    assert second != third  # the picture follows the data ...
    assert np.array_equal(np.frombuffer(third, np.uint8), first)  # ... and the blitted frame equals a fresh one


def test_static_fallback_bundle(snapshots):
    ex = widgets.explore_bandit(snapshots, n_arrows=7, n_samples=32)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # a widget frontend shows the widget
    assert base64.b64decode(bundle["image/png"])[:8] == PNG_MAGIC  # anything else: the figure as PNG
    assert bundle["text/plain"].startswith("BanditExplorer(bandit='single-peak'")
    assert ex.widget.children[-1] is ex.output


def test_gridworld_explorer_update_changes_the_drawn_data():
    ex = widgets.explore_gridworld("cliff", n_samples=50)
    q = ex.quiver
    start = uv(q)
    cells = [s for _, s in ex.controls["cell"].options]
    other = next(s for s in cells if s != ex.values["cell"])
    ex.update(cell=other)
    assert not np.allclose(uv(q), start)
    offsets = ex.scatter.get_offsets().copy()
    ex.update(alpha=1.0)  # a hotter Boltzmann policy: other samples
    assert not np.allclose(ex.scatter.get_offsets(), offsets)
    greedy = uv(ex.greedy)
    ex.update(slip=0.3)  # the optimal pushes change with the slip (cliff: the detour)
    assert not np.allclose(uv(ex.greedy), greedy)
    assert ex.render_png()[:8] == PNG_MAGIC
    ex.update(layout="two-routes")
    assert ex.values["cell"] in [s for _, s in ex.controls["cell"].options]
    assert "two-routes" in ex.map_title.get_text()
    with pytest.raises(ValueError, match="not a valid value"):
        ex.update(cell=10_000)


def load_browser_test():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "browser_test.py"
    spec = importlib.util.spec_from_file_location("browser_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def test_the_browser_tests_sliders_exist_in_the_explorers_their_notebooks_show(snapshots):
    # `make browser-test` (the last step of CI) looks for these slider labels in these notebooks:
    # a renamed control or explorer call fails here, in seconds, rather than there.
    bt = load_browser_test()
    built = {"bandit": (widgets.explore_bandit(snapshots, n_arrows=7, n_samples=32), "explore_bandit("),
             "gridworld": (widgets.explore_gridworld("cliff", n_samples=50), "explore_gridworld(")}  # fmt: skip
    assert set(bt.EXPLORERS) == set(built)
    for name, case in bt.EXPLORERS.items():
        explorer, call = built[name]
        sliders = [c.description for c in explorer.controls.values() if "Slider" in type(c).__name__]
        assert case.slider in sliders, (name, sliders)
        assert call in case.notebook.read_text(), case.notebook
    assert bt.parse_explorers("gridworld, bandit") == [bt.EXPLORERS["gridworld"], bt.EXPLORERS["bandit"]]
    with pytest.raises(Exception, match="unknown explorer"):
        bt.parse_explorers("bandit,cartpole")
