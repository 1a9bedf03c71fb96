"""The training loop and CLI: runs on disk that survive kills, resume, refuse bad input in one line."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import qsm_tutorial
from qsm_tutorial import envs, results
from qsm_tutorial.algos.qsm import QSMConfig
from qsm_tutorial.algos.sac import SACAgent
from qsm_tutorial.cli import main
from qsm_tutorial.loop import LoopConfig, NonFiniteError, updates_due
from qsm_tutorial.storage import CHECKPOINT_FORMAT, CsvLog, RunDir, RunDirError, is_temp_file, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Small networks, a short warm-up, evaluation only at step 0 and at the end.
TINY = dict(actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=32, warmup_steps=100, eval_episodes=1, log_every=50)
TINY_FLAGS = ["--actor-hidden", "16,16", "--critic-hidden", "16,16", "--batch-size", "32", "--warmup-steps", "50",
              "--eval-episodes", "1", "--eval-every", "1000000", "--log-every", "50", "--no-progress", "--threads", "1"]


def train(env_id="InvertedPendulum-v5", algo="td3", total_steps=200, **kw):
    return qsm_tutorial.train(env_id, algo=algo, total_steps=total_steps, progress=False, **{**TINY, **kw})


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_run_dir_readable(run_dir: Path) -> int:
    """Every file but atomic-write temp files parses: config JSON, whole CSV rows, the checkpoint.
    Returns the checkpoint's step."""
    names = {p.name for p in run_dir.iterdir() if not is_temp_file(p.name)}
    assert names <= {"config.json", "metrics.csv", "timing.csv", "checkpoint.pt", "status.json", ".lock"}, names  # (.lock: a killed writer's)
    json.loads((run_dir / "config.json").read_text())
    for csv_name in ("metrics.csv", "timing.csv"):
        text = (run_dir / csv_name).read_text()
        assert text.endswith("\n")
        lines = text.splitlines()
        assert len({line.count(",") for line in lines}) == 1, f"ragged rows in {csv_name}"
        results.read_csv(run_dir / csv_name)
    return load_checkpoint(run_dir / "checkpoint.pt")["step"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qsm_tutorial", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qsm_tutorial", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ------------------------------------------------------------------------------ smoke and resume
def smoke_env(env_id: str):
    """An id, or for DMC an env object with 100-step episodes (the loop evaluates a deep copy):
    a full 1000-step DMC evaluation would dominate the test's time."""
    return envs.make(env_id, max_episode_steps=100) if env_id.startswith("dmc/") else env_id


@pytest.mark.parametrize("env_id", ["InvertedPendulum-v5", "dmc/cartpole-balance"])
@pytest.mark.parametrize("algo", ["qsm", "sac", "td3"])
def test_each_algo_trains_writes_metrics_and_resumes_to_its_budget(tmp_path, algo, env_id):
    run = train(smoke_env(env_id), algo, total_steps=160, run_dir=tmp_path, checkpoint_every=80)
    assert run.step == 160 and run.run_dir == str(tmp_path) and run.agent.n_updates == 160 - 100
    assert assert_run_dir_readable(tmp_path) == 160
    first = results.load_run(tmp_path)
    given_id = {"dmc/cartpole-balance": "dm_control/cartpole-balance-v0"}.get(env_id, env_id)  # an env object's spec id
    assert first.config["algo"] == algo and first.config["env_id"] == given_id
    assert list(first.events("eval")["step"]) == [0, 160] and len(first.events("episode")["step"]) >= 1
    assert {"critic_loss", "actor_loss", "q_mean"} <= first.metrics.keys()

    resumed = train(smoke_env(env_id), algo, total_steps=220, run_dir=tmp_path, resume=True)
    assert resumed.step == 220 and resumed.agent.n_updates == 220 - 100
    assert assert_run_dir_readable(tmp_path) == 220
    steps = results.load_run(tmp_path).metrics["step"]
    assert steps[-1] == 220 and np.all(np.diff(steps) >= 0)


def test_same_seed_same_metrics_file(tmp_path):
    """metrics.csv holds no wall-clock numbers: the same seed writes the same bytes."""
    for name in ("a", "b"):
        train(total_steps=250, seed=3, run_dir=tmp_path / name)
    assert (tmp_path / "a/metrics.csv").read_bytes() == (tmp_path / "b/metrics.csv").read_bytes()
    train(total_steps=250, seed=4, run_dir=tmp_path / "c")
    assert (tmp_path / "a/metrics.csv").read_bytes() != (tmp_path / "c/metrics.csv").read_bytes()


def test_resuming_one_checkpoint_twice_gives_the_same_run(tmp_path):
    train(algo="sac", total_steps=180, run_dir=tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for name in ("a", "b"):
        train(algo="sac", total_steps=260, run_dir=tmp_path / name, resume=True)
    assert (tmp_path / "a/metrics.csv").read_bytes() == (tmp_path / "b/metrics.csv").read_bytes()
    rows = results.load_run(tmp_path / "a").metrics
    assert rows["step"][-1] == 260 and (rows["event"] == "eval").sum() == 3  # 0, 180, 260


def test_updates_per_step_ratio():
    cfg = LoopConfig()
    config = type("C", (), {"warmup_steps": 100, "batch_size": 32})
    assert [updates_due(s, config, 1.0) for s in (99, 100, 101, 110)] == [0, 0, 1, 10]
    assert updates_due(110, config, 0.5) == 5 and updates_due(110, config, 2) == 20
    assert cfg.updates_per_step == 1.0
    assert train(total_steps=150, updates_per_step=2).agent.n_updates == 100


def test_in_memory_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = train(total_steps=120)
    assert run.run_dir is None and list(tmp_path.iterdir()) == []
    steps, values = run.metric("eval_return")
    assert list(steps) == [0, 120] and np.all(values > 0)


# ------------------------------------------------------------------------------ kills and signals
def test_sigkill_leaves_readable_files_and_resume_reaches_the_budget(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--algo", "td3", "--env", "InvertedPendulum-v5", "--run-dir", str(run_dir), *TINY_FLAGS]
    proc = start_cli(*args, "--total-steps", "1000000", "--checkpoint-every", "100")
    try:
        wait_for(lambda: (run_dir / "checkpoint.pt").exists(), proc)
        time.sleep(0.5)  # well into the next checkpoint interval, mid-write with luck
    finally:
        proc.kill()
        proc.wait()
    step = assert_run_dir_readable(run_dir)
    assert step >= 100 and step % 100 == 0
    done = cli(*args, "--resume", "--total-steps", str(step + 150))
    assert done.returncode == 0, done.stderr
    assert assert_run_dir_readable(run_dir) == step + 150
    assert not any(is_temp_file(p.name) for p in run_dir.iterdir())


def test_sigterm_checkpoints_the_current_step_and_exits(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_cli("--algo", "sac", "--env", "InvertedPendulum-v5", "--run-dir", str(run_dir), *TINY_FLAGS,
                     "--total-steps", "1000000", "--checkpoint-every", "100000")
    wait_for(lambda: (run_dir / "metrics.csv").exists() and "train" in (run_dir / "metrics.csv").read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at step" in stderr and "Traceback" not in stderr
    step = int(stderr.split("at step ")[1].split(";")[0])
    assert assert_run_dir_readable(run_dir) == step


# ------------------------------------------------------------------------------ bad input
def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_error_is_one_line_without_traceback_in_a_real_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "qsm_tutorial.train", "--env", "NoSuchEnv-v9", "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr  # the error only: no runpy warning about qsm_tutorial.train
    assert out.stderr.startswith("error: unknown env id 'NoSuchEnv-v9'")
    assert not (tmp_path / "r").exists()


def test_train_ends_with_one_summary_line_when_it_shows_progress(capsys, tmp_path):
    tiny = dict(total_steps=40, warmup_steps=20, eval_every=40, eval_episodes=1, batch_size=8, actor_hidden=(8, 8), critic_hidden=(8, 8))
    run = qsm_tutorial.train("bandit/ring", run_dir=tmp_path / "r", **tiny)
    out = capsys.readouterr().out
    assert out == run.summary() + "\n"
    assert out.startswith("qsm on bandit/ring, seed 0: 40 steps, eval return ") and str(tmp_path / "r") in out
    qsm_tutorial.train("bandit/ring", progress=False, **tiny)
    assert capsys.readouterr().out == ""
    stopped = qsm_tutorial.train("bandit/ring", on_step=lambda r: r.step < 25, **tiny)
    assert capsys.readouterr().out == "qsm on bandit/ring, seed 0: stopped by callback at step 25; not saved (no run_dir)\n"
    assert stopped.step == 25


def test_qsm_tutorial_train_stays_callable_after_its_submodule_is_imported():
    code = ("import qsm_tutorial; f = qsm_tutorial.train; import qsm_tutorial.train; "
            "run = qsm_tutorial.train('bandit/four-gaussians', total_steps=20, warmup_steps=10, eval_every=20, eval_episodes=1, progress=False); "
            "print(f is qsm_tutorial.loop.train, type(run).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "Run"]


def test_discrete_action_space_is_refused(capsys, tmp_path):
    assert "continuous actions" in one_line_error(capsys, ["--env", "CartPole-v1", "--run-dir", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


@pytest.fixture
def finished_run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    train(total_steps=120, run_dir=run_dir, seed=0)
    return run_dir


def test_run_dir_of_another_run_is_refused(capsys, finished_run):
    before = hashes(finished_run)
    for other in (["--algo", "sac"], ["--algo", "td3", "--seed", "1"]):
        err = one_line_error(capsys, [*other, "--env", "InvertedPendulum-v5", "--run-dir", str(finished_run), "--total-steps", "50"])
        assert "belongs to another run" in err
    err = one_line_error(capsys, ["--algo", "td3", "--env", "InvertedPendulum-v5", "--run-dir", str(finished_run)])
    assert "already holds this run" in err and "--resume" in err
    err = one_line_error(capsys, ["--run-dir", str(finished_run), "--resume", "--actor-lr", "0.1"])
    assert "changed config (agent.actor_lr)" in err
    assert hashes(finished_run) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(os.urandom(3000)), "cannot read"),
        (lambda p: torch.save({"weights": torch.zeros(3)}, p), "not a qsm_tutorial checkpoint"),
        (lambda p: p.unlink(), "nothing to resume"),
        (lambda p: p.write_bytes(corrupt_64_bytes(p.read_bytes())), "is damaged (checksum mismatch"),  # torch.load would read it
    ],
)
def test_bad_checkpoint_on_resume_is_one_line_and_touches_nothing(capsys, finished_run, damage, message):
    damage(finished_run / "checkpoint.pt")
    before = hashes(finished_run)
    assert message in one_line_error(capsys, ["--run-dir", str(finished_run), "--resume", "--total-steps", "200"])
    assert hashes(finished_run) == before


def corrupt_64_bytes(data: bytes) -> bytes:
    """64 bytes of the largest tensor record (the replay buffer) overwritten, the zip left valid."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


def test_a_checkpoint_of_another_seed_is_refused_on_resume(capsys, tmp_path, finished_run):
    other = tmp_path / "seed1"
    train(total_steps=110, run_dir=other, seed=1)
    (other / "checkpoint.pt").write_bytes((finished_run / "checkpoint.pt").read_bytes())  # same sizes, seed 0's
    before = hashes(other)
    err = one_line_error(capsys, ["--run-dir", str(other), "--resume", "--total-steps", "200"])
    assert "written by a run with seed 0, not 1" in err
    assert hashes(other) == before


def test_a_second_writer_is_refused_in_one_line_naming_the_first(capsys, finished_run):
    before = hashes(finished_run)
    with RunDir(finished_run).lock():
        err = one_line_error(capsys, ["--run-dir", str(finished_run), "--resume", "--total-steps", "200"])
        assert f"is being written by pid {os.getpid()}" in err
        with pytest.raises(RunDirError, match="is being written by"):
            train(total_steps=200, run_dir=finished_run, resume=True)
    assert hashes(finished_run) == before  # the lock file went with the lock
    assert train(total_steps=130, run_dir=finished_run, resume=True).step == 130  # and the run is free again


def test_forced_resume_with_other_network_sizes_does_not_fit(capsys, finished_run):
    before = hashes(finished_run)
    err = one_line_error(capsys, ["--run-dir", str(finished_run), "--resume", "--force", "--actor-hidden", "8,8"])
    assert "checkpoint.pt does not fit this run" in err
    assert hashes(finished_run) == before


def test_force_starts_over(finished_run):
    run = train(algo="sac", total_steps=110, run_dir=finished_run, force=True)
    assert run.step == 110 and results.load_run(finished_run).algo == "sac"
    assert load_checkpoint(finished_run / "checkpoint.pt")["algo"] == "sac"


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_update = SACAgent.update

    def update(self, batch):
        metrics = real_update(self, batch)
        return {**metrics, "critic_loss": float("nan")} if self.n_updates >= 30 else metrics

    monkeypatch.setattr(SACAgent, "update", update)
    with pytest.raises(NonFiniteError, match=r"non-finite critic_loss \(nan\) at step 130.*checkpoint \(step 120\)"):
        train(algo="sac", total_steps=300, run_dir=tmp_path, checkpoint_every=40)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 120


# ------------------------------------------------------------------------------ CLI and results
def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--algo", "td3", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ["--target-noise-clip", "the smoothing noise is clipped to +-this (paper: 0.5) (default: 0.5)",
                 "--actor-hidden N,N", "(default: 256,256)", "--updates-per-step", "--resume", "--force"]:
        assert text in out, text


def test_cli_trains_and_resume_takes_the_saved_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["--algo", "sac", "--env", "InvertedPendulum-v5", "--run-dir", str(run_dir), "--total-steps", "120", *TINY_FLAGS]
    assert main(argv) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["agent"]["actor_hidden"] == [16, 16] and config["loop"]["log_every"] == 50
    assert config["protocol"]["evaluation"].startswith("at step 0")
    assert config["threads"] == 1
    torch.set_num_threads(2)  # the shell's default differs from what the run chose
    try:
        assert main(["--run-dir", str(run_dir), "--resume", "--total-steps", "150", "--no-progress"]) == 0
        assert json.loads((run_dir / "config.json").read_text())["threads"] == 1  # --resume took the saved count
        assert torch.get_num_threads() == 2  # and gave the caller's back
    finally:
        torch.set_num_threads(1)
    assert "sac on InvertedPendulum-v5, seed 0: 150 steps" in capsys.readouterr().out


def test_checkpoint_holds_only_tensors_and_primitives(finished_run):
    state = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["step"] == 120
    assert {"agent", "replay", "rng", "episodes", "updates"} <= state.keys()
    agent = results.load_agent(finished_run)
    obs = np.zeros(4, np.float32)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), agent.act(obs, deterministic=True))


def test_csv_log_grows_its_header_atomically(tmp_path):
    log = CsvLog(tmp_path / "m.csv", ["step", "event"])
    log.start(None)
    log.append({"step": 0, "event": "eval"})
    log.append({"step": 5, "event": "train", "loss": 0.1})
    assert (tmp_path / "m.csv").read_text() == "step,event,loss\n0,eval,\n5,train,0.1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def write_fake_run(run_dir: Path, algo: str, seed: int, evals: dict[int, float]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"algo": algo, "env_id": "E-v0", "seed": seed, "loop": {}, "agent": {}}))
    rows = "".join(f"{s},eval,{v}\n" for s, v in evals.items())
    (run_dir / "metrics.csv").write_text("step,event,eval_return\n" + rows + "7,episode,\n")


def test_load_runs_groups_seeds_into_a_band(tmp_path):
    write_fake_run(tmp_path / "sac/seed0", "sac", 0, {0: 1.0, 10: 3.0, 20: 5.0})
    write_fake_run(tmp_path / "sac/seed1", "sac", 1, {0: 3.0, 10: 5.0})
    write_fake_run(tmp_path / "td3/seed0", "td3", 0, {0: 0.0})
    runs = results.load_runs(str(tmp_path / "*" / "seed*"))
    assert [(r.algo, r.seed) for r in runs] == [("sac", 0), ("sac", 1), ("td3", 0)]
    band = results.seed_band(results.group_runs(runs)["sac"])
    assert list(band.steps) == [0, 10] and band.n_runs == 2
    np.testing.assert_allclose(band.mean, [2.0, 4.0])
    np.testing.assert_allclose(band.low, [1.0, 3.0])
    np.testing.assert_allclose(band.high, [3.0, 5.0])
    np.testing.assert_allclose(band.std, [1.0, 1.0])


def test_learning_curves_from_runs_and_from_a_learning_csv(tmp_path):
    write_fake_run(tmp_path / "sac/seed0", "sac", 0, {0: 1.0, 10: 3.0, 20: 5.0})
    write_fake_run(tmp_path / "sac/seed1", "sac", 1, {0: 3.0, 10: 5.0})
    steps, values = results.curves_from_runs(results.load_runs(str(tmp_path / "*" / "seed*")))["SAC"]
    assert list(steps) == [0, 10]
    np.testing.assert_allclose(values, [[1.0, 3.0], [3.0, 5.0]])
    csv_path = tmp_path / "learning_x.csv"
    csv_path.write_text("env,algo,seed,step,eval_return\nx,qsm,0,0,1.0\nx,qsm,0,10,2.0\nx,qsm,1,0,4.0\n")
    steps, values = results.curves_from_csv(csv_path)["QSM"]
    assert list(steps) == [0, 10]
    np.testing.assert_allclose(values, [[1.0, 2.0], [4.0, np.nan]])
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert results.curves_from_csv(tmp_path / "other.csv") == {}


def test_control_envs_default_to_the_control_preset_and_paper_is_one_flag_away():
    from qsm_tutorial.algos.qsm import PRESETS, QSMConfig
    from qsm_tutorial.loop import make_config

    assert make_config("qsm", "InvertedPendulum-v5") == QSMConfig.preset("control")
    assert make_config("qsm", "InvertedPendulum-v5", "paper") == QSMConfig()
    assert make_config("qsm", "bandit/ring") == QSMConfig.preset("bandit")
    assert PRESETS["control"] and QSMConfig.preset("control") != QSMConfig()
    run = train(algo="qsm", total_steps=110, preset="paper", actor_hidden=(8, 8))
    assert run.config.alpha == 50 and run.config.prior_std == 0 and run.config.action_candidates == 1


def test_a_bandit_env_object_trains_with_the_bandit_preset():
    bandit = envs.make("bandit/single-peak")
    run = qsm_tutorial.train(bandit.unwrapped, total_steps=5, progress=False, warmup_steps=5)
    assert run.env_id.startswith("bandit/") and run.config.sampler == "langevin"


def test_cli_preset_flag(tmp_path, capsys):
    assert main(["--env", "InvertedPendulum-v5", "--preset", "paper", "--total-steps", "60",
                 "--run-dir", str(tmp_path), *TINY_FLAGS]) == 0  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text())["agent"]["alpha"] == 50
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'fast' (choose from paper, bandit, control)"
        main(["--env", "InvertedPendulum-v5", "--preset", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_every_algorithm_has_the_cli_preset_names():
    from qsm_tutorial.algos import qsm, sac, td3
    from qsm_tutorial.loop import PRESETS

    assert set(PRESETS) == {"paper", "bandit", "control"}
    assert all(set(module.PRESETS) == set(PRESETS) for module in (qsm, sac, td3))


def test_cli_seeds_that_repeat_are_one_line_errors(capsys):
    assert main(["--env", "bandit/ring", "--seeds", "1,1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "distinct" in err


@pytest.mark.parametrize("algo", ["qsm", "sac", "td3"])
def test_cli_device_torch_cannot_use_is_a_one_line_error_before_any_run_dir(capsys, tmp_path, algo):
    run_dir = tmp_path / "run"
    assert main(["--algo", algo, "--env", "bandit/ring", "--device", "gpu", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gpu' is not a torch device" in err
    if not torch.cuda.is_available():
        assert main(["--algo", algo, "--env", "bandit/ring", "--device", "cuda", "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "sees no CUDA GPU" in err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("algo", "flags", "message"),
    [
        ("qsm", ["--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1, got 0"),
        ("qsm", ["--T", "0"], "T (--T) must be an integer >= 1"),
        ("qsm", ["--actor-hidden", "128,0"], "actor_hidden (--actor-hidden) must be one or more layer widths >= 1"),
        ("qsm", ["--prior-std", "nan"], "prior_std (--prior-std) must be a finite number >= 0, got nan"),
        ("qsm", ["--alpha", "0"], "alpha (--alpha) must be a finite number > 0"),
        ("sac", ["--tau", "0"], "tau (--tau) must be in (0, 1]"),
        ("sac", ["--init-temperature", "-1"], "init_temperature (--init-temperature) must be a finite number > 0"),
        ("td3", ["--gamma", "1.5"], "gamma (--gamma) must be in [0, 1]"),
        ("td3", ["--actor-delay", "0"], "actor_delay (--actor-delay) must be an integer >= 1"),
        ("qsm", ["--total-steps", "-5"], "total_steps (--total-steps) must be an integer >= 1"),
        ("qsm", ["--total-steps", "0", "--seeds", "0,1"], "total_steps (--total-steps) must be an integer >= 1"),
    ],
)
def test_values_no_run_can_use_are_one_line_errors_naming_the_flag(capsys, tmp_path, algo, flags, message):
    # before these checks a batch of 0 trained into NaNs at the first update, and a negative budget ran nothing
    run_dir = tmp_path / "run"
    err = one_line_error(capsys, ["--algo", algo, "--env", "bandit/ring", "--run-dir", str(run_dir), *flags])
    assert message in err, err
    assert not run_dir.exists()


def test_config_counts_accept_numpy_integers_and_refuse_floats():
    assert QSMConfig(batch_size=np.int64(64), actor_hidden=(np.int64(32), 32)).batch_size == 64  # e.g. from a sweep
    with pytest.raises(ValueError, match="buffer_size"):
        QSMConfig(buffer_size=1e6)


@pytest.mark.parametrize("threads", ["0", "-1", "two"])
def test_cli_threads_below_one_are_refused_by_the_parser(capsys, threads):
    with pytest.raises(SystemExit) as stop:  # before: -1 reached torch.set_num_threads and a traceback
        main(["--env", "bandit/ring", "--threads", threads])
    assert stop.value.code == 2 and "argument --threads: expected an integer >= 1" in capsys.readouterr().err


def test_resuming_an_empty_run_dir_says_there_is_nothing_to_resume(capsys, tmp_path):
    err = one_line_error(capsys, ["--run-dir", str(tmp_path / "nothing"), "--resume"])
    assert "nothing to resume in" in err and "no config.json" in err, err


# ------------------------------------------------------------------------------ redesign: loop, storage, CLI
BANDIT = dict(actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=32, warmup_steps=60, eval_episodes=2,
              log_every=20, langevin_steps=10)  # fmt: skip


def training_rows(run_dir: Path) -> list[str]:
    """metrics.csv's episode and train rows (what training did), as text."""
    return [line for line in (run_dir / "metrics.csv").read_text().splitlines() if ",eval," not in line]


def test_evaluation_cadence_does_not_change_the_training_run(tmp_path):
    """QSM's deterministic act still samples (Langevin/DDPM noise): evaluation draws from its own
    generators, so evaluating every 20 steps or only at the ends trains the same agent."""
    for name, every in (("often", 20), ("rarely", 1000)):
        qsm_tutorial.train("bandit/four-gaussians", "qsm", 160, seed=1, progress=False, run_dir=tmp_path / name,
                           eval_every=every, **BANDIT)  # fmt: skip
    often, rarely = training_rows(tmp_path / "often"), training_rows(tmp_path / "rarely")
    assert len(often) > 100 and any(",train," in line for line in often)
    assert often == rarely
    evals = lambda name: results.load_run(tmp_path / name).events("eval")  # noqa: E731
    assert len(evals("often")["step"]) == 9 and len(evals("rarely")["step"]) == 2
    # the same agent at the same step: the same evaluation, however often it was evaluated before
    np.testing.assert_array_equal(evals("often")["eval_return"][[0, -1]], evals("rarely")["eval_return"])


def test_on_step_returning_false_stops_the_run_with_a_checkpoint(tmp_path):
    seen = []

    def callback(run):
        seen.append(run.step)
        return run.step < 130  # None (no return) and True continue; False stops

    run = train(total_steps=1000, run_dir=tmp_path, on_step=callback, checkpoint_every=1000)
    assert run.stop_reason == "callback" and run.step == 130 and seen == list(range(1, 131))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 130
    resumed = train(total_steps=150, run_dir=tmp_path, resume=True)
    assert resumed.step == 150 and resumed.stop_reason is None


def test_tensorboard_events_hold_the_metrics_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(total_steps=150, run_dir=tmp_path, tensorboard=True, eval_every=100)
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    board = EventAccumulator(str(events.parent))
    board.Reload()
    tags = board.Tags()["scalars"]
    assert {"eval/eval_return", "train/critic_loss", "episode/episode_return"} <= set(tags)
    steps, values = run.metric("eval_return")
    logged = board.Scalars("eval/eval_return")
    assert [e.step for e in logged] == list(steps) == [0, 100, 150]
    np.testing.assert_allclose([e.value for e in logged], values, rtol=1e-6)
    assert json.loads((tmp_path / "config.json").read_text())["loop"]["tensorboard"] is True


def test_tensorboard_without_the_package_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    for name in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    err = one_line_error(capsys, ["--env", "bandit/ring", "--tensorboard", "--run-dir", str(tmp_path / "r")])
    assert "pip install -e '.[tensorboard]'" in err
    assert not (tmp_path / "r").exists()


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_the_values_this_run_will_use(capsys, finished_run):
    control, paper = QSMConfig.preset("control"), QSMConfig()
    assert control.alpha != paper.alpha
    out = help_text(capsys, "--algo", "qsm", "--env", "dmc/cheetah-run")
    assert f"grad_a Q (paper: 50) (default: {control.alpha})" in out and "preset 'control' for dmc/cheetah-run" in out
    assert f"(default: {paper.alpha})" in help_text(capsys, "--algo", "qsm", "--env", "dmc/cheetah-run", "--preset", "paper")
    # resuming: the saved run's values (TINY's 16-wide td3 networks, 120 steps)
    out = help_text(capsys, "--run-dir", str(finished_run), "--resume")
    assert "td3 config (values shown: the run's saved config.json)" in out
    assert "(default: 16,16)" in out and "env steps (default: 120)" in out and "(default: InvertedPendulum-v5)" in out
    assert "(default: 50)" in out  # log_every, a loop field


def test_load_runs_skips_a_run_without_metrics_with_a_warning(tmp_path):
    write_fake_run(tmp_path / "sac/seed0", "sac", 0, {0: 1.0})
    write_fake_run(tmp_path / "sac/seed1", "sac", 1, {0: 3.0})
    (tmp_path / "sac/seed1/metrics.csv").unlink()
    with pytest.warns(UserWarning, match="seed1.*no metrics.csv"):
        runs = results.load_runs(str(tmp_path / "*" / "seed*"))
    assert [r.seed for r in runs] == [0]


def test_a_half_written_last_metrics_line_is_ignored(tmp_path):
    write_fake_run(tmp_path / "run", "sac", 0, {0: 1.0, 10: 3.0})
    with open(tmp_path / "run/metrics.csv", "a") as f:
        f.write("20,ev")  # a kill mid-write: no newline
    with pytest.warns(UserWarning, match="last line was cut short.*'20,ev'"):
        run = results.load_run(tmp_path / "run")
    assert list(run.metrics["step"]) == [0, 10, 7] and list(run.curve()[1]) == [1.0, 3.0]


PRE_REDESIGN_RUN = ROOT / "tests/data/pre_redesign_run"  # qsm-train at 67fa562, see tests/data/README.md


def test_a_run_written_before_the_redesign_resumes_or_is_refused_untouched(tmp_path, capsys):
    fixture = hashes(PRE_REDESIGN_RUN)
    run_dir = tmp_path / "old"
    shutil.copytree(PRE_REDESIGN_RUN, run_dir)
    # a changed option is refused in one line, and the folder keeps every byte
    assert "changed config (agent.actor_lr)" in one_line_error(capsys, ["--run-dir", str(run_dir), "--resume", "--actor-lr", "0.5"])
    assert hashes(run_dir) == fixture
    # as saved: it continues (or, should a later change make it unreadable, is refused untouched)
    status = main(["--run-dir", str(run_dir), "--resume", "--total-steps", "400", "--no-progress"])
    out, err = capsys.readouterr()
    if status == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and hashes(run_dir) == fixture
    else:
        assert status == 0 and "qsm on bandit/four-gaussians, seed 0: 400 steps" in out, err
        assert assert_run_dir_readable(run_dir) == 400
        old_rows = (PRE_REDESIGN_RUN / "metrics.csv").read_text().splitlines()[1:]
        new = results.load_run(run_dir)
        assert list(new.metrics["step"][: len(old_rows)]) == [int(line.split(",")[0]) for line in old_rows]
        assert list(new.events("eval")["step"]) == [0, 100, 200, 300, 400]
    assert hashes(PRE_REDESIGN_RUN) == fixture


def test_a_resume_and_a_budget_inside_the_warm_up_are_announced_in_one_line(capsys, finished_run):
    train(total_steps=130, run_dir=finished_run, resume=True)
    err = capsys.readouterr().err
    assert "resuming td3 on InvertedPendulum-v5, seed 0" in err and "from step 120 of 130" in err
    train(total_steps=80, warmup_steps=100)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "80 steps do not pass the warm-up (100 random steps" in err
    train(total_steps=150, warmup_steps=100)
    assert "warm-up" not in capsys.readouterr().err


@pytest.mark.parametrize("asked, used", [(None, 1), (2, 2)])
def test_train_runs_with_one_thread_unless_asked_and_restores_the_callers(asked, used):
    """The default suits a shared machine (one thread for these small networks); the caller's
    setting is untouched afterwards; a bad count is one line."""
    seen = []
    torch.set_num_threads(2 if asked is None else 1)
    try:
        before = torch.get_num_threads()
        train(total_steps=110, threads=asked, on_step=lambda run: seen.append(torch.get_num_threads()))
        assert set(seen) == {used} and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
        train(total_steps=110, threads=0)


def test_a_run_shorter_than_the_checkpoint_interval_says_a_crash_would_leave_nothing(tmp_path, capsys):
    quick = dict(eval_every=10**6, log_every=1000, warmup_steps=2100)  # (all warm-up: no update, a few seconds)
    train(total_steps=2100, run_dir=tmp_path / "short", checkpoint_every=5000, **quick)
    err = capsys.readouterr().err
    assert "writes one only at its end" in err and "--checkpoint-every" in err, err
    train(total_steps=2100, run_dir=tmp_path / "checkpointed", checkpoint_every=1000, **quick)
    assert "writes one only at its end" not in capsys.readouterr().err
