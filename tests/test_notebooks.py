"""The course notebooks run from top to bottom, and their checked outputs reproduce.

For each numbered notebook in ``notebooks/`` (one test each, so xdist spreads them over its workers):

1. papermill executes it in smoke mode (``smoke=True``, figures into a temp dir) into a temp copy,
   with the ``python3`` kernel of *this* interpreter's environment; any error fails the test;
2. nbval re-executes that copy with ``--nbval-lax``: the cells marked ``# NBVAL_CHECK_OUTPUT``
   (schedule values, seeded shares, fixed package facts) must print exactly what they printed the first
   time. Together: the notebook runs, and the same seed gives the same numbers. Cells whose output
   legitimately varies (progress bars, timings, versions) are not marked, so nbval does not compare them.

Fast static checks (no execution) make sure every notebook keeps the conventions of DESIGN.md: a
``parameters`` cell with ``smoke = False``, and committed outputs without errors or paths of the
machine that produced them.

The committed notebooks carry the outputs of a full run at their defaults. To refresh them (and the
``figures/nb*_*.png`` they write) after changing a notebook or the package:

    python tests/test_notebooks.py --update                      # every notebook
    python tests/test_notebooks.py --update 02a_the_qsm_target   # one
    python tests/test_notebooks.py --update solutions/02a_solutions  # a solutions notebook
    python tests/test_notebooks.py --update --solutions          # every solutions notebook

Notebooks are numbered in reading order: ``NN_name.ipynb``, or ``NNa_``/``NNb_`` for a topic split in two. The
solutions notebooks (``notebooks/solutions/NN_solutions.ipynb``, ``NNa_solutions.ipynb``) are executed in smoke mode too (no
nbval: their numbers mean something only at their defaults); static checks make sure each answers every
exercise of its notebook, in order, and that the notebook links to it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOK_NAME = re.compile(r"(\d\d[a-z]?)_\w+\.ipynb")  # "02a_the_qsm_target.ipynb" -> number "02a"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]*_*.ipynb") if NOTEBOOK_NAME.fullmatch(p.name))
# Worked solutions to the exercises: notebooks/solutions/NN_solutions.ipynb, one per course notebook that has them,
# named here relative to notebooks/ ("solutions/00_solutions.ipynb", "solutions/02a_solutions.ipynb").
SOLUTIONS = sorted(f"solutions/{p.name}" for p in (NOTEBOOK_DIR / "solutions").glob("[0-9][0-9]*_solutions.ipynb"))


def notebook_number(name: str) -> str:
    """A course or solutions notebook's number: "02a" for 02a_the_qsm_target.ipynb and solutions/02a_solutions.ipynb."""
    return Path(name).name.split("_")[0]
KERNEL = "python3"
CELL_TIMEOUT_S = 900


def _kernel_env() -> dict[str, str]:
    """The environment of the kernels we start: the interpreter's own ``bin`` first on PATH (so a
    kernelspec that says ``python`` finds this environment's, even without an activated venv), and
    one BLAS/OpenMP thread (the notebooks choose torch's threads themselves)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silences a debugger warning on kernel start
    return env


POLL_SLICE_S = 1.0


def poll_kernel_channels_in_slices() -> None:
    """Make the async kernel client (papermill's, through nbclient) wait for a message in 1 s polls.

    Why: now and then the client missed the wake-up of a message that had arrived. The kernel had
    finished a cell that displays widgets and sent its reply, but nbclient's wait on the shell channel,
    one ``poll`` with the cell timeout (900 s), only saw the reply when that poll ended: a CI run stood
    still for 15 minutes on the bandit explorer's cell (notebook 02 then, 02b now; seen 2026-12-03, ipykernel 6.31, pyzmq 27.3,
    jupyter_client 8.10; a second client got the kernel's replies at once, and it had executed the cell).
    nbclient#312 reports the same with widgets. A poll that ends finds the waiting message, so short
    polls bound such a stall to about a second. nbval's client is the blocking one and is not affected."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    if getattr(AsyncZMQSocketChannel.get_msg, "polls_in_slices", False):
        return

    async def get_msg(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = POLL_SLICE_S if deadline is None else max(0.0, min(POLL_SLICE_S, deadline - time.monotonic()))
            if await self.socket.poll(int(wait * 1000)):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    get_msg.polls_in_slices = True
    AsyncZMQSocketChannel.get_msg = get_msg


def execute(notebook: str | Path, output: str | Path, parameters: dict, cwd: str | Path) -> None:
    """Run ``notebook`` with papermill into ``output`` (raises ``PapermillExecutionError`` on an error)."""
    import papermill as pm

    poll_kernel_channels_in_slices()
    env = _kernel_env()
    old = dict(os.environ)
    os.environ.update(env)  # papermill starts the kernel with this process's environment
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            kernel_name=KERNEL,
            cwd=str(cwd),
            progress_bar=False,
            execution_timeout=CELL_TIMEOUT_S,
        )
    finally:
        os.environ.clear()
        os.environ.update(old)


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


# ----------------------------------------------------------------------------------------------
# Execution: papermill in smoke mode, then nbval on the executed copy
# ----------------------------------------------------------------------------------------------
@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_checked_outputs_reproduce(name, tmp_path):
    executed = tmp_path / name
    figures = tmp_path / "figures"
    execute(NOTEBOOK_DIR / name, executed, {"smoke": True, "figures_dir": str(figures)}, cwd=tmp_path)

    checked = [c for c in _code_cells(executed) if "NBVAL_CHECK_OUTPUT" in _source(c)]
    assert all(c.get("outputs") for c in checked), f"{name}: a checked cell printed nothing in smoke mode"

    # nbval re-runs the executed copy (its injected parameters included) and compares the checked cells.
    # A subprocess keeps nbval's kernel and its pytest session apart from this one (and from xdist).
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={CELL_TIMEOUT_S}",
         "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), str(executed)],
        cwd=tmp_path, env=_kernel_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, f"nbval failed on {name}:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"


@pytest.mark.notebooks
@pytest.mark.parametrize("name", SOLUTIONS)
def test_solution_notebook_runs_in_smoke_mode(name, tmp_path):
    """A solutions notebook runs from top to bottom with papermill in smoke mode (tiny budgets); its printed
    numbers are the learner's reference only at its defaults, so nbval does not compare them."""
    execute(NOTEBOOK_DIR / name, tmp_path / Path(name).name, {"smoke": True}, cwd=tmp_path)


def _exercise_numbers(path: Path, heading: str) -> list[int]:
    """The exercise numbers of a notebook: list items ``N. **`` after the line ``## Exercises`` of its markdown
    (a course notebook), or ``## Exercise N`` headings (a solutions notebook)."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
    if heading == "## Exercises":
        parts = [re.split(r"^## Exercises\s*$", _source(c), flags=re.M) for c in cells]
        text = "".join(p[1] for p in parts if len(p) > 1)
        return [int(n) for n in re.findall(r"^(\d+)\. \*\*", text, flags=re.M)]
    return [int(n) for c in cells for n in re.findall(r"^## Exercise (\d+)\b", _source(c), flags=re.M)]


@pytest.mark.parametrize("name", SOLUTIONS)
def test_solution_notebook_answers_every_exercise_of_its_notebook(name):
    number = notebook_number(name)
    (course,) = [n for n in NOTEBOOKS if notebook_number(n) == number]
    asked = _exercise_numbers(NOTEBOOK_DIR / course, "## Exercises")
    assert asked, f"{course}: no numbered exercises found in its '## Exercises' cell"
    assert _exercise_numbers(NOTEBOOK_DIR / name, "## Exercise N") == asked, f"{name} must answer exercises {asked} of {course}, in order"
    assert name in (NOTEBOOK_DIR / course).read_text(), f"{course} must link to {name}"


def test_sliced_kernel_polls_return_a_late_message_and_time_out_on_time():
    """The patched async channel (``poll_kernel_channels_in_slices``) still delivers a message that
    arrives several slices late, and still raises Empty when its timeout passes, not a slice later."""
    import asyncio

    import zmq
    import zmq.asyncio
    from jupyter_client.channels import AsyncZMQSocketChannel
    from jupyter_client.session import Session

    poll_kernel_channels_in_slices()
    session, ctx = Session(), zmq.asyncio.Context()
    receiver, sender = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sender.connect(f"tcp://127.0.0.1:{port}")
    channel = AsyncZMQSocketChannel(receiver, session)

    async def scenario():
        t0 = time.monotonic()
        with pytest.raises(Empty):
            await channel.get_msg(timeout=0.3)
        timed_out_after = time.monotonic() - t0

        async def send_late():
            await asyncio.sleep(2.5 * POLL_SLICE_S)
            await sender.send_multipart(session.serialize(session.msg("status", {"execution_state": "idle"})))

        task = asyncio.ensure_future(send_late())
        msg = await channel.get_msg(timeout=10 * POLL_SLICE_S)
        await task
        return timed_out_after, msg

    try:
        timed_out_after, msg = asyncio.run(scenario())
    finally:
        receiver.close(linger=0), sender.close(linger=0), ctx.term()
    assert 0.25 <= timed_out_after < 0.3 + POLL_SLICE_S / 2
    assert msg["header"]["msg_type"] == "status" and msg["content"] == {"execution_state": "idle"}


# ----------------------------------------------------------------------------------------------
# Static checks of the committed notebooks (fast, no kernel)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NOTEBOOKS + SOLUTIONS)
def test_notebook_has_a_papermill_parameters_cell_with_smoke_off(name):
    cells = _code_cells(NOTEBOOK_DIR / name)
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{name}: exactly one code cell must be tagged 'parameters', found {len(tagged)}"
    assert cells[0] is tagged[0], f"{name}: the parameters cell must be the first code cell"
    assert re.search(r"^smoke = False\b", _source(tagged[0]), flags=re.M), f"{name}: the parameters cell must set smoke = False"


@pytest.mark.parametrize("name", NOTEBOOKS + SOLUTIONS)
def test_committed_outputs_have_no_errors_and_no_machine_paths(name):
    home = str(Path.home())
    for i, cell in enumerate(_code_cells(NOTEBOOK_DIR / name)):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{name}, code cell {i}: committed error output {out.get('ename')}"
            text = json.dumps({k: v for k, v in out.get("data", {}).items() if k.startswith("text")}) + "".join(out.get("text", ""))
            for path in {str(ROOT), home} - {"/"}:
                assert path not in text, f"{name}, code cell {i}: an output shows the path {path!r}"


DRAWS = re.compile(r"viz\.plot_|\.savefig\(|plt\.show\(|display\(fig")


@pytest.mark.parametrize("name", NOTEBOOKS + SOLUTIONS)
def test_every_cell_that_draws_shows_its_picture(name):
    """A code cell that makes a figure (a ``viz.plot_*`` call, ``savefig``, ``plt.show``) has an image in
    its committed output: ``plt.show()`` on a Figure that pyplot does not manage (every ``viz`` figure)
    shows nothing, and a reader of the saved notebook would see an empty cell."""
    for i, cell in enumerate(_code_cells(NOTEBOOK_DIR / name)):
        code = "\n".join(line.split("#")[0] for line in _source(cell).splitlines())
        if DRAWS.search(code):
            images = [o for o in cell.get("outputs", []) if {"image/png", "image/svg+xml"} & set(o.get("data", {}))]
            assert images, f"{name}, code cell {i}: it draws a figure but its committed output has no image"


# ----------------------------------------------------------------------------------------------
# Refreshing the committed outputs
# ----------------------------------------------------------------------------------------------
def update(names: list[str]) -> None:
    """Execute notebooks at their defaults, in place, from ``notebooks/`` (figures go to ``figures/``),
    and drop papermill's per-run metadata (timestamps, durations) so re-runs diff cleanly."""
    import nbformat

    for name in names:
        path = NOTEBOOK_DIR / (name if name.endswith(".ipynb") else f"{name}.ipynb")
        t0 = time.perf_counter()
        cwd = os.getcwd()
        os.chdir(path.parent)  # relative paths only, so none of this machine's paths reach the metadata
        try:
            execute(path.name, path.name, {}, cwd=".")
        finally:
            os.chdir(cwd)
        nb = nbformat.read(path, as_version=4)
        nb.metadata.pop("papermill", None)
        for cell in nb.cells:
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
        nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "--update":
        sys.exit(__doc__)
    if args[1:] == ["--solutions"]:
        update(SOLUTIONS)
    else:
        update(args[1:] or NOTEBOOKS)
