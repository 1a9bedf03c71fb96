"""The fault and bad-input scenarios of the outside reliability review (../shared/reviews/reliability.md,
IDs kept: R = resume variants and damaged run dirs, F = file systems, I = CLI input, A = Python API,
L = results.load_runs, P = concurrency), rerun against today's code. Each either behaves correctly
or ends in one line that says what is wrong; a refused command changes no file of the run dir."""

import errno
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import qsm_tutorial
from qsm_tutorial import results, storage
from qsm_tutorial.cli import main
from qsm_tutorial.storage import is_temp_file, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=32, warmup_steps=100, eval_episodes=1, log_every=50)
TD3 = ["--algo", "td3", "--env", "InvertedPendulum-v5"]
TINY_FLAGS = ["--actor-hidden", "16,16", "--critic-hidden", "16,16", "--batch-size", "32", "--warmup-steps", "50",
              "--eval-episodes", "1", "--eval-every", "1000000", "--log-every", "50", "--no-progress", "--threads", "1"]  # fmt: skip


def train(env="InvertedPendulum-v5", algo="td3", total_steps=120, **kw):
    return qsm_tutorial.train(env, algo=algo, total_steps=total_steps, progress=False, **{**TINY, **kw})


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, message: str) -> None:
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A finished 120-step TD3 run (checkpoint at 120), copied by ``finished``."""
    run_dir = tmp_path_factory.mktemp("template") / "run"
    train(run_dir=run_dir, seed=0)
    return run_dir


@pytest.fixture
def finished(template, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(template, run_dir)
    return run_dir


def metric_rows(run_dir: Path) -> list[tuple]:
    _, rows = storage.read_csv(run_dir / "metrics.csv")
    return [(r["step"], r["event"]) for r in rows]


# ------------------------------------------------------------------------------ R: refused, nothing changes
def rewrite_checkpoint(**fields):
    """A valid checkpoint whose identity fields say another run's (same network sizes)."""
    def damage(d: Path):
        state = torch.load(d / "checkpoint.pt", weights_only=True)
        torch.save({**state, **fields}, d / "checkpoint.pt")
    return damage


def edit_config(**fields):
    def damage(d: Path):
        config = json.loads((d / "config.json").read_text())
        for key, value in fields.items():
            part, _, name = key.rpartition(".")
            (config[part] if part else config)[name] = value
        (d / "config.json").write_text(json.dumps(config))
    return damage


def invert_64_bytes(d: Path):
    data = (d / "checkpoint.pt").read_bytes()
    n = len(data) // 3
    (d / "checkpoint.pt").write_bytes(data[:n] + bytes(b ^ 0xFF for b in data[n : n + 64]) + data[n + 64 :])


def ragged_middle_line(d: Path):
    lines = (d / "metrics.csv").read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"
    (d / "metrics.csv").write_text("".join(lines))


REFUSED = {  # ID: (damage to the finished run, extra resume flags, what the one line says)
    "R1-other-option": (None, ["--actor-lr", "0.5"], "changed config (agent.actor_lr)"),
    "R2-other-env": (None, ["--env", "InvertedDoublePendulum-v5"], "belongs to another run"),
    "R3-other-algo": (None, ["--algo", "sac"], "belongs to another run"),
    "R5-budget-below-the-checkpoint": (None, ["--total-steps", "100"], "is at step 120 already, past a budget of 100"),
    "R7-checkpoint-truncated": (lambda d: (d / "checkpoint.pt").write_bytes((d / "checkpoint.pt").read_bytes()[:5000]), [], "cannot read"),
    "R8-checkpoint-empty": (lambda d: (d / "checkpoint.pt").write_bytes(b""), [], "cannot read"),
    "R9-checkpoint-64-bytes-inverted": (invert_64_bytes, [], "is damaged (checksum mismatch"),
    "R10-config-truncated": (lambda d: (d / "config.json").write_text((d / "config.json").read_text()[:300]), [], "not a qsm_tutorial run config"),
    "R11-config-wrong-types": (edit_config(**{"loop.log_every": "100"}), [], "config.json holds a bad value: log_every"),
    "R11-config-hidden-as-string": (edit_config(**{"agent.actor_hidden": "16,16"}), [], "config.json holds a bad value: actor_hidden"),
    "R12-ragged-line-inside-metrics": (ragged_middle_line, [], "metrics.csv is damaged at line 3"),
    "R14-config-deleted": (lambda d: (d / "config.json").unlink(), [], "nothing to resume"),
    "R16-checkpoint-of-another-env": (rewrite_checkpoint(env_id="InvertedDoublePendulum-v5"), [], "written by a run with env_id"),
    "R17-checkpoint-of-another-seed": (rewrite_checkpoint(seed=1), [], "written by a run with seed 1, not 0"),
    "R15-checkpoint-of-another-algo": (rewrite_checkpoint(algo="sac"), [], "holds a sac agent, not td3"),
    "R24-config-on-a-gpu": (edit_config(**{"agent.device": "cuda"}), [], "torch sees no CUDA GPU here"),
    "R24-moved-to-the-cpu": (edit_config(**{"agent.device": "cuda"}), ["--device", "cpu"], "changed config (agent.device)"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_resume_is_one_line_and_changes_no_file(capsys, finished, case):
    damage, flags, message = REFUSED[case]
    if case.startswith("R24") and torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    if damage:
        damage(finished)
    before = hashes(finished)
    status, _, err = run_cli(capsys, "--run-dir", finished, "--resume", *flags)
    assert_one_line_error(status, err, message)
    assert hashes(finished) == before


def test_r21_the_same_command_again_is_refused(capsys, finished):
    before = hashes(finished)
    status, _, err = run_cli(capsys, *TD3, "--run-dir", finished, *TINY_FLAGS)
    assert_one_line_error(status, err, "already holds this run; pass --resume")
    assert hashes(finished) == before


def test_r22_a_run_dir_that_is_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "afile").write_text("mine")
    status, _, err = run_cli(capsys, *TD3, "--run-dir", tmp_path / "afile", *TINY_FLAGS)
    assert_one_line_error(status, err, "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine"


def test_r23_a_folder_that_is_not_a_run_is_never_written_without_force(capsys, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "metrics.csv").write_text("someone's numbers\n")
    (folder / "data.txt").write_text("kept")
    before = hashes(folder)
    status, _, err = run_cli(capsys, *TD3, "--run-dir", folder, *TINY_FLAGS, "--total-steps", "60")
    assert_one_line_error(status, err, "holds files (data.txt, metrics.csv) but no run (no config.json)")
    assert hashes(folder) == before
    status, out, err = run_cli(capsys, *TD3, "--run-dir", folder, *TINY_FLAGS, "--total-steps", "60", "--force")
    assert status == 0 and "60 steps" in out, err
    assert (folder / "data.txt").read_text() == "kept"


def test_a_folder_left_by_a_kill_before_the_config_is_not_foreign(capsys, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("pid 1 on elsewhere")  # a killed writer's lock and temp file
    (folder / ".config.json.123-abcd.tmp").write_text("{")
    status, out, err = run_cli(capsys, *TD3, "--run-dir", folder, *TINY_FLAGS, "--total-steps", "60")
    assert status == 0, err
    assert not any(is_temp_file(p.name) for p in folder.iterdir())


# ------------------------------------------------------------------------------ R: resumed correctly
def cut_last_line(newline: bool):
    def damage(d: Path):
        text = (d / "metrics.csv").read_text()
        last = text.splitlines()[-1]
        (d / "metrics.csv").write_text(text + last[: len(last) // 2] + ("\n" if newline else ""))
    return damage


def stale_temp_files(d: Path):
    (d / ".checkpoint.pt.99999-deadbeef.tmp").write_bytes(b"half")
    (d / ".metrics.csv.99999-deadbeef.tmp").write_text("half")


RESUMED = {  # ID: (damage, a line stderr must hold or None)
    "R4-a-finished-run-as-saved": (None, None),
    "R6-a-larger-budget": (None, "budget changed from 120 steps"),
    "R12-last-line-cut-without-newline": (cut_last_line(False), "its last line was cut short"),
    "R12-last-line-cut-with-newline": (cut_last_line(True), "its last line was cut short"),
    "R13-metrics-deleted": (lambda d: (d / "metrics.csv").unlink(), "metrics.csv is missing: the rows up to step 120 are lost"),
    "R19-stale-temp-files": (stale_temp_files, None),
}


@pytest.mark.parametrize("case", sorted(RESUMED))
def test_a_resume_that_can_go_on_reaches_its_budget_and_says_what_it_dropped(capsys, finished, case):
    damage, note = RESUMED[case]
    rows = metric_rows(finished)
    if damage:
        damage(finished)
    budget = 120 if case.startswith("R4") else 150
    before = hashes(finished)
    status, out, err = run_cli(capsys, "--run-dir", finished, "--resume", "--total-steps", budget)
    assert status == 0 and f"seed 0: {budget} steps" in out, err
    assert "Traceback" not in err and (note is None or note in err), err
    assert "resuming td3 on InvertedPendulum-v5, seed 0" in err
    if case.startswith("R4"):
        assert hashes(finished) == before
    after = metric_rows(finished)
    assert len(after) == len(set(after)) and after[-1] == (budget, "eval")
    if not case.startswith("R13"):
        assert after[: len(rows)] == rows  # the rows up to the checkpoint are kept, whole
    assert not any(is_temp_file(p.name) for p in finished.iterdir())
    assert load_checkpoint(finished / "checkpoint.pt")["step"] == budget


def test_the_api_resume_keeps_the_runs_own_budget(finished):
    run = qsm_tutorial.train("InvertedPendulum-v5", algo="td3", run_dir=finished, resume=True, progress=False)
    assert run.total_steps == 120 and run.step == 120  # not the env family's default of 100,000


def test_r20_force_keeps_a_users_file(capsys, finished):
    (finished / "notes.txt").write_text("mine")
    status, _, err = run_cli(capsys, *TD3, "--run-dir", finished, *TINY_FLAGS, "--total-steps", "60", "--force")
    assert status == 0, err
    assert (finished / "notes.txt").read_text() == "mine" and load_checkpoint(finished / "checkpoint.pt")["step"] == 60


def test_r25_resume_force_takes_the_changed_config(capsys, finished):
    status, _, err = run_cli(capsys, "--run-dir", finished, "--resume", "--force", "--actor-lr", "0.001", "--total-steps", "130")
    assert status == 0, err
    assert json.loads((finished / "config.json").read_text())["agent"]["actor_lr"] == 0.001


# ------------------------------------------------------------------------------ F: file systems
def failing(err_no: int, strerror: str, after: int = 0):
    """A stand-in for os.fsync that fails like the file system would, after ``after`` good calls."""
    calls = {"n": 0}
    real = storage.os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err_no, strerror)
        return real(fd)
    return fsync


@pytest.mark.parametrize(
    ("err_no", "strerror", "advice"),
    [
        (errno.ENOSPC, "No space left on device", "the disk is full: free space"),
        (errno.EROFS, "Read-only file system", "the file system is read-only"),
        (errno.EACCES, "Permission denied", "permission denied"),
    ],
)
def test_f_a_file_system_error_while_resuming_is_one_line_and_keeps_the_checkpoint(capsys, monkeypatch, finished, err_no, strerror, advice):
    before = hashes(finished)
    monkeypatch.setattr(storage.os, "fsync", failing(err_no, strerror))
    status, _, err = run_cli(capsys, "--run-dir", finished, "--resume", "--total-steps", "200")
    assert_one_line_error(status, err, f"cannot write {finished / 'config.json'}: {strerror}; {advice}")
    assert hashes(finished) == before  # nothing written, no temp file left
    monkeypatch.undo()
    status, _, err = run_cli(capsys, "--run-dir", finished, "--resume", "--total-steps", "200")
    assert status == 0, err


def test_f3_the_disk_fills_up_at_a_checkpoint(capsys, monkeypatch, tmp_path):
    """F3/F4: a full disk at the second checkpoint: one line, the first checkpoint intact; once
    space is free, the resume the line asks for reaches the budget."""
    run_dir = tmp_path / "run"
    real_save = storage.RunDir.save_checkpoint
    saved = []

    def save_checkpoint(self, state):
        if saved:  # the second one: the disk is full
            monkeypatch.setattr(storage.os, "fsync", failing(errno.ENOSPC, "No space left on device"))
        real_save(self, state)
        saved.append(state["step"])

    monkeypatch.setattr(storage.RunDir, "save_checkpoint", save_checkpoint)
    status, _, err = run_cli(capsys, *TD3, "--run-dir", run_dir, *TINY_FLAGS, "--total-steps", "300", "--checkpoint-every", "100")
    assert_one_line_error(status, err, "No space left on device; the disk is full: free space, then run the command again (with --resume")
    assert saved == [100] and load_checkpoint(run_dir / "checkpoint.pt")["step"] == 100
    assert not any(is_temp_file(p.name) for p in run_dir.iterdir())
    monkeypatch.undo()
    status, out, err = run_cli(capsys, "--run-dir", run_dir, "--resume")
    assert status == 0 and "300 steps" in out, err


def test_f2_a_new_run_under_a_read_only_parent_is_one_line(capsys, monkeypatch, tmp_path):
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if tmp_path / "ro" in (self, *self.parents):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    status, _, err = run_cli(capsys, *TD3, "--run-dir", tmp_path / "ro/run", *TINY_FLAGS)
    assert_one_line_error(status, err, f"cannot create {tmp_path / 'ro/run'}: Read-only file system; the file system is read-only")


# The same cases on real mounts (a read-only bind mount, a small tmpfs), where the machine lets the
# tests mount (root with CAP_SYS_ADMIN); the CLI runs as its own process, so every syscall is real.
def mount(*args: str) -> None:
    out = subprocess.run(["mount", *args], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"real-mount case: cannot mount here ({out.stderr.strip() or 'not root'})")


@pytest.fixture
def mounts():
    """Mount points to unmount after the test, latest first."""
    points: list[Path] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def read_only(folder: Path, mounts: list[Path]) -> None:
    mount("--bind", str(folder), str(folder))
    mounts.append(folder)
    mount("-o", "remount,ro,bind", str(folder))


def qsm_train(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qsm_tutorial", *map(str, argv)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_f1_real_resume_in_a_read_only_run_dir(finished, mounts):
    before = hashes(finished)
    read_only(finished, mounts)
    out = qsm_train("--run-dir", finished, "--resume", "--total-steps", 200)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Read-only file system; the file system is read-only" in out.stderr, out.stderr
    assert hashes(finished) == before


def test_f2_real_new_run_under_a_read_only_parent(tmp_path, mounts):
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro", mounts)
    out = qsm_train(*TD3, "--run-dir", tmp_path / "ro/run", *TINY_FLAGS)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Read-only file system" in out.stderr, out.stderr
    assert not (tmp_path / "ro/run").exists()


def fill(folder: Path, leave: int) -> Path:
    """A file that takes all free space of ``folder``'s file system but ``leave`` bytes."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free - leave
    with open(filler, "wb") as f:
        while free > 0:
            try:
                f.write(b"\0" * min(free, 1 << 16))
                f.flush()
            except OSError:
                break
            free -= 1 << 16
    return filler


@pytest.mark.parametrize("left", ["none", "less than a checkpoint"])
def test_f3_f4_real_disk_full(tmp_path, mounts, left):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk))
    mounts.append(disk)
    run_dir = disk / "run"
    flags = [*TD3, "--run-dir", run_dir, *TINY_FLAGS, "--checkpoint-every", 200]
    assert qsm_train(*flags, "--total-steps", 400).returncode == 0
    checkpoint = run_dir / "checkpoint.pt"
    before = hashes(run_dir)
    filler = fill(disk, 0 if left == "none" else checkpoint.stat().st_size // 2)
    full = qsm_train("--run-dir", run_dir, "--resume", "--total-steps", 800, "--no-progress")
    last = full.stderr.strip().splitlines()[-1]
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert last.startswith("error: ") and "No space left on device; the disk is full: free space" in last, full.stderr
    assert hashes(run_dir)["checkpoint.pt"] == before["checkpoint.pt"] and load_checkpoint(checkpoint)["step"] == 400
    assert not any(is_temp_file(p.name) for p in run_dir.iterdir())
    rows = metric_rows(run_dir)  # whole rows only (read_csv would warn on a cut one)
    assert len(rows) == len(set(rows))
    filler.unlink()
    done = qsm_train("--run-dir", run_dir, "--resume", "--total-steps", 800, "--no-progress")
    assert done.returncode == 0 and "800 steps" in done.stdout, done.stderr
    steps = [step for step, event in metric_rows(run_dir) if event == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 800


def test_a_run_dir_under_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "afile").write_text("mine")
    status, _, err = run_cli(capsys, *TD3, "--run-dir", tmp_path / "afile/run", *TINY_FLAGS)
    assert_one_line_error(status, err, "a part of that path is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine"


def test_f_a_run_dir_removed_while_the_run_writes_is_one_line(tmp_path):
    run_dir = tmp_path / "run"

    def remove(run):
        if run.step == 60:
            shutil.rmtree(run_dir)

    with pytest.raises(storage.FileSystemError, match="a folder on that path is missing") as info:
        train(total_steps=200, run_dir=run_dir, on_step=remove, checkpoint_every=50)
    assert str(run_dir) in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ I: command-line input
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--updates-per-step", "inf"], "updates_per_step (--updates-per-step) must be a finite number >= 0, got inf"),  # I10
        (["--buffer-size", "100000000000000"], "buffer_size (--buffer-size) 100,000,000,000,000 needs"),  # I11
        (["--critic-lr", "inf"], "critic_lr (--critic-lr) must be a finite number > 0, got inf"),  # I13
        (["--alpha", "inf"], "alpha (--alpha) must be a finite number > 0, got inf"),  # I13
        (["--exploration-noise", "inf"], "exploration_noise (--exploration-noise) must be a finite number >= 0"),  # I14
        (["--prior-std", "inf"], "prior_std (--prior-std) must be a finite number >= 0"),  # I15
        (["--langevin-step-size", "inf"], "langevin_step_size (--langevin-step-size) must be a finite number > 0"),  # I16
        (["--device", "mps"], "device 'mps': this package trains on cpu or cuda only"),  # I20
        (["--device", "meta"], "device 'meta': this package trains on cpu or cuda only"),  # I21
        (["--seed", "4294967296"], "seed must be an integer from 0 to 2**32 - 1"),  # I18
    ],
)
def test_i_values_no_run_can_use_are_one_line_and_write_nothing(capsys, tmp_path, flags, message):
    run_dir = tmp_path / "run"
    status, _, err = run_cli(capsys, "--env", "bandit/four-gaussians", "--run-dir", run_dir, "--no-progress", *flags)
    assert_one_line_error(status, err, message)
    assert not run_dir.exists()


def test_i13_a_run_that_diverges_before_its_first_checkpoint_does_not_name_one(capsys, tmp_path):
    status, _, err = run_cli(capsys, "--env", "bandit/four-gaussians", "--run-dir", tmp_path / "run", "--alpha", "1e38",
                             "--total-steps", "400", "--warmup-steps", "50", "--batch-size", "32", "--actor-hidden", "16,16",
                             "--critic-hidden", "16,16", "--eval-episodes", "1", "--no-progress")  # fmt: skip
    assert_one_line_error(status, err, "the run stopped; no checkpoint had been written yet (every 10,000 steps)")
    assert not (tmp_path / "run/checkpoint.pt").exists()


# ------------------------------------------------------------------------------ A: the Python API
class UserEnv(gym.Env):
    """A user's one-step env: reward = the action's first coordinate; it records what it is given."""

    def __init__(self, low=-2.0, high=2.0, obs_space=None):
        self.observation_space = obs_space or gym.spaces.Box(-1, 1, (3,), np.float32)
        self.action_space = gym.spaces.Box(low, high, (1,), np.float32)
        self.actions = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.actions.append(float(action[0]))
        return np.zeros(3, np.float32), float(action[0]), False, True, {}


def test_a2_a_bounded_box_is_rescaled_so_the_policy_reaches_its_ends():
    env = UserEnv(-2.0, 2.0)
    run = train(env, total_steps=300, warmup_steps=100, actor_hidden=(32, 32), critic_hidden=(32, 32), actor_lr=3e-3)
    warmup = np.array(env.actions[:100])
    assert warmup.min() < -1.5 and warmup.max() > 1.5 and np.all(np.abs(env.actions) <= 2.0)
    # the evaluation's one step (on a copy of the env) got 2x the policy's action: before, 1x, so the
    # policy's [-1, 1] covered half of the task's [-2, 2]
    policy_action = run.agent.act(np.zeros(3, np.float32), deterministic=True)[0]
    assert run.metric("eval_return")[1][-1] == pytest.approx(2 * policy_action, rel=1e-5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (lambda: UserEnv(-np.inf, np.inf), "need a bounded action space"),  # A1
        (lambda: UserEnv(obs_space=gym.spaces.Discrete(3)), "need observations in a 1-D Box"),
    ],
)
def test_a1_an_env_the_algorithms_cannot_drive_is_one_line(env, message):
    with pytest.raises(ValueError, match=message) as info:
        train(env())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(seed=1.5), "seed must be an integer"),  # A8
        (dict(seed="0"), "seed must be an integer"),  # A8
        (dict(updates_per_step=float("inf")), "updates_per_step .* must be a finite number"),  # A9
        (dict(eval_every=50.5), r"eval_every \(--eval-every\) must be an integer >= 1, got 50.5"),  # A10
        (dict(log_every=10.5), "log_every .* must be an integer"),  # A10
        (dict(eval_episodes=1.5), "eval_episodes .* must be an integer"),  # A11
        (dict(checkpoint_every=0.5), "checkpoint_every .* must be an integer"),  # A12
    ],
)
def test_a_api_values_no_run_can_use_name_the_argument(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(run_dir=tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_a5_a_reward_fn_returning_numpy_says_so():
    from qsm_tutorial.envs import Bandit2D

    with pytest.raises(ValueError, match=r"returned a numpy.ndarray of shape \(25,\), expected a torch.Tensor of shape \(25,\)"):
        Bandit2D(lambda a: a[..., 0].numpy(), name="custom")


def test_c17_resuming_a_seeds_root_names_the_per_seed_command(capsys, tmp_path):
    status, _, err = run_cli(capsys, "--run-dir", tmp_path, "--seeds", "0,1", "--resume")
    assert_one_line_error(status, err, f"continue each seed alone: --run-dir {tmp_path}/seed<k> --resume")


def test_c16_a_signal_to_a_seeds_run_names_every_seeds_dir(capsys, tmp_path):
    from qsm_tutorial.cli import _report
    from qsm_tutorial.loop import Run

    runs = [Run(None, None, "E-v0", k, run_dir=str(tmp_path / f"seed{k}"), step=900, stop_reason="SIGTERM") for k in (0, 1)]
    assert _report(runs, printed=False) == 143
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path}/seed0, {tmp_path}/seed1" in err and "--run-dir <that dir> --resume" in err


def test_c13_ctrl_c_while_qsm_train_starts_is_one_line(tmp_path):
    """SIGINT while torch and MuJoCo still load (the console script imports them inside its entry point)."""
    import signal

    run_dir = tmp_path / "run"
    # a short run, so that a Ctrl-C that got lost fails the assertions below instead of timing out
    proc = subprocess.Popen([str(Path(sys.executable).parent / "qsm-train"), *TD3, "--run-dir", str(run_dir), *TINY_FLAGS, "--total-steps", "2000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("interrupted while starting") or err.startswith("interrupted before training began"), err
    assert not run_dir.exists()


def test_c13_ctrl_c_swallowed_by_a_library_while_loading_still_stops(tmp_path, monkeypatch, capsys):
    """A module that catches the KeyboardInterrupt of a Ctrl-C while it loads (as a C extension that
    clears the error can): the command still stops with the one line, and its main() never runs."""
    (tmp_path / "swallows_ctrl_c.py").write_text(
        "import os, signal, time\n"
        "try:\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(0.2)\nexcept KeyboardInterrupt:\n    pass\n"
        "def main():\n    raise AssertionError('main() ran after a Ctrl-C')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from qsm_tutorial.__main__ import start

    assert start("swallows_ctrl_c") == 130
    assert capsys.readouterr().err == "interrupted while starting, before anything was written\n"


def test_c13_ctrl_c_before_training_says_whether_a_checkpoint_can_be_resumed(capsys, monkeypatch, finished):
    from qsm_tutorial import cli

    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    before = hashes(finished)
    status, _, err = run_cli(capsys, "--run-dir", finished, "--resume", "--total-steps", 200)
    assert status == 130 and err == f"interrupted before training began; the checkpoint in {finished} is unchanged and --resume continues from it\n"
    status, _, err = run_cli(capsys, *TD3, "--run-dir", finished.parent / "new")
    assert status == 130 and err.endswith("no checkpoint was written: run the same command again to start\n")
    assert hashes(finished) == before


# ------------------------------------------------------------------------------ L: results.load_runs
def write_run(d: Path, seed: int) -> None:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"algo": "sac", "env_id": "E-v0", "seed": seed, "loop": {}, "agent": {}}))
    (d / "metrics.csv").write_text("step,event,eval_return\n0,eval,1.0\n10,eval,2.0\n")


BROKEN_RUNS = {  # L2-L5: each is skipped and named; the good runs load
    "L2-foreign-config": (lambda d: (d / "config.json").write_text('{"name": "some other tool"}'), "is not a qsm_tutorial run config"),
    "L3-config-only": (lambda d: (d / "metrics.csv").unlink(), "has config.json but no metrics.csv"),
    "L5-invalid-json": (lambda d: (d / "config.json").write_text('{"algo": '), "is not valid JSON"),
    "ragged-middle-line": (lambda d: (d / "metrics.csv").write_text("step,event,eval_return\n0,eval\n10,eval,2.0\n"), "is damaged at line 2"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_RUNS))
def test_l_load_runs_skips_and_names_what_is_not_a_complete_run(tmp_path, case):
    damage, message = BROKEN_RUNS[case]
    write_run(tmp_path / "seed0", 0)
    write_run(tmp_path / "seed1", 1)
    damage(tmp_path / "seed1")
    with pytest.warns(UserWarning, match=f"skipping {tmp_path / 'seed1'}: .*{message}"):
        runs = results.load_runs(str(tmp_path / "seed*"))
    assert [r.seed for r in runs] == [0]


def test_l4_a_cut_last_line_is_left_out_with_a_warning(tmp_path):
    write_run(tmp_path / "seed0", 0)
    with open(tmp_path / "seed0/metrics.csv", "a") as f:
        f.write("20,ev")
    with pytest.warns(UserWarning, match="last line was cut short"):
        runs = results.load_runs(str(tmp_path / "seed*"))
    assert list(runs[0].metrics["step"]) == [0, 10]


# ------------------------------------------------------------------------------ P: two processes
@pytest.mark.slow
def test_p1_a_second_process_on_a_run_dir_is_refused_and_the_first_finishes(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "qsm_tutorial", *TD3, "--run-dir", str(run_dir), *TINY_FLAGS, "--checkpoint-every", "100"]
    first = subprocess.Popen([*args, "--total-steps", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        for extra in (["--total-steps", "1000000"], ["--resume"], ["--force", "--seed", "1", "--total-steps", "500"]):  # P1, P3, P4
            second = subprocess.run(args + extra, capture_output=True, text=True, timeout=120, cwd=ROOT)
            assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
            assert "is being written by pid" in second.stderr and first.poll() is None, second.stderr
    finally:
        first.terminate()  # SIGTERM: the first one stops with a checkpoint
    out, err = first.communicate(timeout=120)
    assert first.returncode == 143 and "stopped by SIGTERM" in err, err
    rows = metric_rows(run_dir)
    assert len(rows) == len(set(rows)) and rows[0] == (0, "eval")
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 0 and load_checkpoint(run_dir / "checkpoint.pt")["seed"] == 0


# ------------------------------------------------------------------------------ resume is exact
@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["dmc/cartpole-balance", "InvertedPendulum-v5"])
def test_a_crashed_and_resumed_run_writes_the_uninterrupted_runs_metrics(tmp_path, env_id):
    """Item 8: the crash comes 20 steps after the checkpoint at 150, mid-episode (100-step DMC
    episodes; the pendulum's end when it falls) and mid-window (rows every 40 steps)."""
    def make():
        return qsm_tutorial.envs.make(env_id, max_episode_steps=100) if env_id.startswith("dmc/") else env_id

    def crash(run):
        if run.step == 170:
            raise RuntimeError("crash")

    kw = dict(checkpoint_every=50, log_every=40)
    train(make(), total_steps=330, run_dir=tmp_path / "a", **kw)
    with pytest.raises(RuntimeError, match="crash"):
        train(make(), total_steps=330, run_dir=tmp_path / "b", on_step=crash, **kw)
    assert load_checkpoint(tmp_path / "b/checkpoint.pt")["step"] == 150
    train(make(), total_steps=330, run_dir=tmp_path / "b", resume=True, **kw)
    a, b = (tmp_path / "a/metrics.csv").read_text(), (tmp_path / "b/metrics.csv").read_text()
    assert a == b and a.count(",episode,") >= 3
