"""qsm-sweep and what it stands on: ``--resume auto``, ``status.json``, trial states, and a Ray sweep
that survives a killed driver."""

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import qsm_tutorial
from qsm_tutorial import sweep
from qsm_tutorial.cli import main as train_main
from qsm_tutorial.storage import RunDir

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = "bandit/four-gaussians"
# Tiny trials: 300 steps of a bandit, warm-up 100, a checkpoint every 50 steps.
FLAGS = ["--actor-hidden", "16,16", "--critic-hidden", "16,16", "--batch-size", "32", "--warmup-steps", "100",
         "--eval-every", "100", "--eval-episodes", "1", "--log-every", "50", "--checkpoint-every", "50"]  # fmt: skip


def grid_args(root: Path, steps: int = 300) -> list[str]:
    return ["--algos", "qsm,td3", "--envs", ENV, "--seeds", "0-1", "--total-steps", str(steps), "--runs-root", str(root), *FLAGS]


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_cli(run_dir: Path, *args: str) -> int:
    return train_main(["--env", ENV, "--run-dir", str(run_dir), "--no-progress", "--threads", "1", *FLAGS, *args])


def sweep_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "qsm_tutorial.sweep", *args], capture_output=True, text=True, env=env, cwd=ROOT, **kw)


# ------------------------------------------------------------------------------ --resume auto and status.json
def test_resume_auto_starts_then_returns_at_once_when_complete(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_cli(run_dir, "--total-steps", "200", "--resume", "auto") == 0
    assert json.loads((run_dir / "status.json").read_text()) == {"step": 200, "total_steps": 200, "complete": True}
    before = hashes(run_dir)
    capsys.readouterr()
    assert train_cli(run_dir, "--total-steps", "200", "--resume", "auto") == 0
    assert "complete" in capsys.readouterr().out
    assert hashes(run_dir) == before  # returned without touching a file


def test_resume_auto_continues_a_stopped_run_and_status_follows_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    stopped = qsm_tutorial.train(ENV, total_steps=300, run_dir=run_dir, progress=False, checkpoint_every=50,
                                 warmup_steps=100, actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=32,
                                 on_step=lambda run: run.step < 120)  # fmt: skip
    assert stopped.stop_reason == "callback"
    assert RunDir(run_dir).read_status() == {"step": 120, "total_steps": 300, "complete": False}
    resumed = qsm_tutorial.train(ENV, total_steps=300, run_dir=run_dir, progress=False, resume="auto")
    assert resumed.step == 300 and RunDir(run_dir).read_status()["complete"]


# ------------------------------------------------------------------------------ trial states, commands, conflicts
@pytest.fixture
def half_finished_root(tmp_path):
    """qsm seed0 complete; qsm seed1 stopped at step 120; td3 seed0 a run of another seed; td3 seed1 nothing."""
    root = tmp_path / "runs"
    base = root / ENV
    assert train_cli(base / "qsm" / "seed0", "--algo", "qsm", "--total-steps", "300") == 0
    qsm_tutorial.train(ENV, "qsm", 300, seed=1, run_dir=base / "qsm" / "seed1", progress=False, checkpoint_every=50,
                       warmup_steps=100, actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=32, eval_every=100,
                       eval_episodes=1, log_every=50, on_step=lambda run: run.step < 120)  # fmt: skip
    assert train_cli(base / "td3" / "seed0", "--algo", "td3", "--seed", "5", "--total-steps", "300") == 0
    return root


def test_dry_run_reports_each_trials_true_state_and_writes_nothing(half_finished_root):
    before = hashes(half_finished_root)
    done = sweep_cli(*grid_args(half_finished_root), "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines[f"{ENV} qsm seed0"] == "complete (300 steps)"
    assert lines[f"{ENV} qsm seed1"] == "resumes at step 120"
    assert lines[f"{ENV} td3 seed0"].startswith("conflict:") and "seed 5" in lines[f"{ENV} td3 seed0"]
    assert lines[f"{ENV} td3 seed1"] == "new"
    assert hashes(half_finished_root) == before


def test_a_run_without_status_file_is_read_from_its_checkpoint(half_finished_root):
    (half_finished_root / ENV / "qsm" / "seed1" / "status.json").unlink()  # as written before status files existed
    trial = sweep.grid(["qsm"], [ENV], [1], half_finished_root, FLAGS)[0]
    assert str(sweep.trial_state(trial, 300)) == "resumes at step 120"


def test_conflicts_are_found_before_launch_and_touch_nothing(half_finished_root):
    before = hashes(half_finished_root)
    done = sweep_cli(*grid_args(half_finished_root))
    assert done.returncode == 2 and "seed 5" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    changed = sweep_cli("--algos", "qsm", "--envs", ENV, "--seeds", "0", "--total-steps", "300", "--runs-root",
                        str(half_finished_root), *FLAGS, "--actor-lr", "0.1", "--dry-run")  # fmt: skip
    assert "conflict: the sweep's flags change actor_lr" in changed.stdout, changed.stdout
    budget = sweep_cli("--algos", "qsm", "--envs", ENV, "--seeds", "0", "--total-steps", "400", "--runs-root",
                       str(half_finished_root), *FLAGS, "--dry-run")  # fmt: skip
    assert "conflict: its budget is 300 steps, the sweep asks 400" in budget.stdout, budget.stdout
    bad = sweep_cli("--algos", "qsm", "--envs", ENV, "--seeds", "1", "--runs-root", str(half_finished_root), "--no-such-flag", "3")
    assert bad.returncode == 2 and "--no-such-flag" in bad.stderr, bad.stderr
    assert hashes(half_finished_root) == before


def test_a_live_writer_is_a_conflict(half_finished_root):
    trial = sweep.grid(["qsm"], [ENV], [1], half_finished_root, FLAGS)[0]
    with RunDir(trial.run_dir).lock():
        state = sweep.trial_state(trial, 300)
    assert state.state == "conflict" and f"pid {os.getpid()}" in state.why
    assert sweep.trial_state(trial, 300).state == "resumes"


def test_printed_commands_run_as_printed(half_finished_root):
    done = sweep_cli(*grid_args(half_finished_root), "--print-commands")
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 4 and all(line.startswith("qsm-train ") for line in lines)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    resumed = subprocess.run(lines[1], shell=True, capture_output=True, text=True, env=env, cwd="/")  # qsm seed1
    assert resumed.returncode == 0 and "from step 120" in resumed.stderr, resumed.stderr
    again = subprocess.run(lines[1], shell=True, capture_output=True, text=True, env=env, cwd="/")
    assert again.returncode == 0 and "complete" in again.stdout
    trial = sweep.grid(["qsm"], [ENV], [1], half_finished_root, FLAGS)[0]
    assert sweep.trial_state(trial, 300).state == "complete"


def test_seed_ranges():
    assert sweep.seed_range("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(Exception, match="distinct"):
        sweep.seed_range("0-2,1")


# ------------------------------------------------------------------------------ a Ray sweep, killed and resumed
def eval_rows(run_dir: Path) -> list[str]:
    return [line for line in (run_dir / "metrics.csv").read_text().splitlines() if line.split(",")[1] == "eval"]


@pytest.mark.slow
def test_a_sweep_killed_midway_resumes_every_trial_exactly_once(tmp_path):
    pytest.importorskip("ray")
    by_hand, root = tmp_path / "by_hand", tmp_path / "swept"
    trials = sweep.grid(["qsm", "td3"], [ENV], [0, 1], root, FLAGS)
    for trial in sweep.grid(["qsm", "td3"], [ENV], [0, 1], by_hand, FLAGS):  # the same four runs by hand, uninterrupted
        assert train_main(trial.argv(300, 1)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "qsm_tutorial.sweep", *grid_args(root), "--quiet"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    statuses = lambda: [RunDir(t.run_dir).read_status() for t in trials]  # noqa: E731
    while not any(s and 50 <= s["step"] < 300 for s in statuses()):  # a trial checkpointed midway
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "no trial reached a checkpoint"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)  # the driver only: its private Ray follows it down
    driver.wait()
    interrupted = [s for s in statuses() if not (s and s["complete"])]
    assert interrupted, "every trial finished before the kill: nothing was tested"
    deadline = time.monotonic() + 60
    while any(RunDir(t.run_dir).writer() for t in trials) and time.monotonic() < deadline:
        time.sleep(0.5)  # the workers die with their raylet
    assert not any(RunDir(t.run_dir).writer() for t in trials)

    done = sweep_cli(*grid_args(root), timeout=600)
    assert done.returncode == 0, done.stderr
    for trial in trials:
        status = RunDir(trial.run_dir).read_status()
        assert status == {"step": 300, "total_steps": 300, "complete": True}
        rows = eval_rows(trial.run_dir)
        steps = [int(r.split(",")[0]) for r in rows]
        assert steps == [0, 100, 200, 300], f"{trial.name}: eval rows {steps}"
        rows_all = [line.split(",") for line in (trial.run_dir / "metrics.csv").read_text().splitlines()[1:]]
        episodes = [r[2] for r in rows_all if r[1] == "episode"]
        assert len(episodes) == len(set(episodes)) == 300, f"{trial.name}: episode rows repeated or lost"
        assert not (trial.run_dir / ".lock").exists()
        # A bandit's resume is exact (the loop restores every random state): the same rows as by hand.
        assert rows == eval_rows(by_hand / trial.run_dir.relative_to(root)), trial.name
    record = json.loads((root / "sweep.json").read_text())
    assert record["algos"] == ["qsm", "td3"] and record["seeds"] == [0, 1] and record["qsm_tutorial"] == qsm_tutorial.__version__
    again = sweep_cli(*grid_args(root), timeout=120)
    assert again.returncode == 0 and "4 complete" in again.stderr, again.stderr


def test_an_address_no_cluster_answers_is_one_line(tmp_path):
    pytest.importorskip("ray")
    done = sweep_cli("--algos", "qsm", "--envs", ENV, "--runs-root", str(tmp_path), "--total-steps", "100",
                     "--address", "127.0.0.1:1", timeout=120)  # fmt: skip
    assert done.returncode == 2 and "no Ray cluster answers at 127.0.0.1:1" in done.stderr, done.stderr
    assert not (tmp_path / ENV).exists()  # no trial started


@pytest.mark.slow
def test_a_trial_whose_worker_is_killed_is_started_again_and_resumes(tmp_path):
    pytest.importorskip("ray")
    root = tmp_path / "swept"
    args = ["--algos", "qsm", "--envs", ENV, "--seeds", "0", "--total-steps", "600", "--runs-root", str(root), *FLAGS]
    (trial,) = sweep.grid(["qsm"], [ENV], [0], root, FLAGS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "qsm_tutorial.sweep", *args], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while not ((s := RunDir(trial.run_dir).read_status()) and 100 <= s["step"] < 600):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        time.sleep(0.2)
    worker = int(RunDir(trial.run_dir).writer().split()[1])  # "pid N on host since ..."
    os.kill(worker, signal.SIGKILL)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    assert RunDir(trial.run_dir).read_status()["complete"]
    log = sweep.log_path(trial).read_text()
    assert log.count("qsm-train --algo qsm") == 2 and "resuming qsm" in log, log  # Ray started it again; it resumed
    steps = [int(r.split(",")[0]) for r in eval_rows(trial.run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 600
