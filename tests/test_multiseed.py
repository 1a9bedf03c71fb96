"""Several seeds in one process: one batched model (torch.func) over the same losses, one loop.

Seed k of a stacked run agrees with its single-seed run to float32 rounding, not bit for bit: a
batched matrix multiply may sum in another order than a plain one. Tolerances below are measured.
"""

import copy

import numpy as np
import pytest
import torch

import qsm_tutorial
from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig, draw_update_noise
from qsm_tutorial.algos.seeds import QSMSeeds
from qsm_tutorial.loop import SeedRandomState, train_seeds
from qsm_tutorial.replay import Batch, ReplayBuffer

SMALL = dict(total_steps=75, warmup_steps=40, batch_size=16, actor_hidden=(16, 16), critic_hidden=(16, 16), T=3,
             eval_episodes=1, eval_every=60, log_every=30, progress=False)  # fmt: skip


def random_batch(obs_dim: int, act_dim: int, B: int, bootstrap_share: float = 0.9) -> Batch:
    return Batch(torch.randn(B, obs_dim), torch.rand(B, act_dim) * 2 - 1, torch.randn(B), torch.randn(B, obs_dim),
                 (torch.rand(B) < bootstrap_share).float())  # fmt: skip


def drift_over_movement(stacked: dict, single: dict, initial: dict) -> float:
    """max |stacked − single| over max |single − initial|: the gap as a share of how far training moved."""
    gap = max(float((stacked[k] - single[k]).detach().abs().max()) for k in single)
    moved = max(float((single[k] - initial[k]).detach().abs().max()) for k in single)
    return gap / moved


@pytest.mark.parametrize("obs_dim, act_dim, hidden, preset", [(3, 1, 32, "control"), (17, 6, 64, "control"), (1, 2, 32, "bandit")])
def test_stacked_update_equals_single_updates_to_float32_rounding(obs_dim, act_dim, hidden, preset):
    """S = 3 seeds, 30 updates, each seed's own batches and draws: every network of every seed stays
    within 1e-3 of its training movement of the single-seed agent (measured on this 2-core Xeon: at
    most 6e-5, usually 1e-6 to 1e-5; 1e-3 leaves room for other CPUs' kernels, while a real error,
    such as seeds mixing or a missed step, is of order 1)."""
    cfg = QSMConfig.preset(preset, actor_hidden=(hidden, hidden), critic_hidden=(hidden, hidden), batch_size=32,
                           device="cpu", compile="off", langevin_steps=4)  # fmt: skip
    def agent(k: int) -> QSMAgent:
        torch.manual_seed(k)
        return QSMAgent(obs_dim, act_dim, cfg)

    agents, singles = [agent(k) for k in range(3)], [agent(k) for k in range(3)]
    initial = [copy.deepcopy(a.state_dict()) for a in singles]
    stack = QSMSeeds(agents)
    torch.manual_seed(10)
    for _ in range(30):
        batches = [random_batch(obs_dim, act_dim, 32, 0.0 if preset == "bandit" else 0.9) for _ in agents]
        noises = [draw_update_noise(cfg, cfg.T, b) for b in batches]
        infos = stack.update(batches, noises)
        for single, b, n, info in zip(singles, batches, noises, infos):
            expected = single.update(b, n)
            assert info == pytest.approx(expected, rel=1e-4, abs=1e-6)
    for k, single in enumerate(singles):
        stacked_state = stack.state_dict(k)
        for part in ("actor", "critic", "critic_target"):
            gap = drift_over_movement(stacked_state[part], single.state_dict()[part], initial[k][part])
            print(f"seed {k} {part}: gap / movement {gap:.1e}")
            assert gap < 1e-3, (k, part, gap)


def test_seed_slice_state_loads_into_a_plain_agent_and_acts_the_same():
    cfg = QSMConfig.preset("control", actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=8, device="cpu", compile="off")
    agents = [QSMAgent(3, 1, cfg) for _ in range(2)]
    stack = QSMSeeds(agents)
    stack.update([random_batch(3, 1, 8) for _ in agents], [draw_update_noise(cfg, cfg.T, random_batch(3, 1, 8)) for _ in agents])
    plain = QSMAgent(3, 1, cfg)
    plain.load_state_dict(stack.state_dict(1))
    obs = np.zeros(3, np.float32)
    torch.manual_seed(0)
    a = agents[1].act(obs, deterministic=True)
    torch.manual_seed(0)
    assert np.array_equal(a, plain.act(obs, deterministic=True))
    saved = stack.state_dict(1)["actor"]["net.0.weight"]
    assert saved.untyped_storage().nbytes() == saved.numel() * 4  # a copy, not a view of the whole stack


@pytest.mark.parametrize("env_id, extra", [("InvertedPendulum-v5", {}), ("bandit/ring", {"langevin_steps": 4})])
def test_each_seed_of_a_stacked_run_follows_its_single_seed_run(env_id, extra):
    """The loop with lanes: the same episodes while warm-up actions are random, then the same
    training to float32 rounding (episode returns and evaluations within 1e-3 relative here)."""
    seeds = (3, 0)
    multi = train_seeds(env_id, "qsm", seeds=seeds, **SMALL, **extra)
    assert [r.seed for r in multi] == list(seeds)
    for seed, run in zip(seeds, multi):
        single = qsm_tutorial.train(env_id, "qsm", seed=seed, **SMALL, **extra)
        assert [r["event"] for r in single.history] == [r["event"] for r in run.history]
        for a, b in zip(single.history, run.history):
            for key, value in a.items():
                if isinstance(value, float):
                    assert b[key] == pytest.approx(value, rel=1e-3, abs=1e-4), (seed, a["step"], key)
                else:
                    assert b[key] == value
    assert multi[0].history != multi[1].history  # and the seeds differ from each other


def test_seed_random_state_is_swapped_in_and_out():
    torch.manual_seed(0)
    a, b = SeedRandomState(), SeedRandomState()
    outside = torch.rand(3)
    with a:
        xa = torch.rand(3)
    with b:
        xb = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(outside, torch.rand(3)) and torch.equal(xa, xb)


def test_other_algorithms_run_their_seeds_in_lockstep_without_stacking():
    runs = train_seeds("bandit/ring", "sac", seeds=(0, 1), total_steps=40, warmup_steps=20, batch_size=8,
                       actor_hidden=(8, 8), critic_hidden=(8, 8), eval_episodes=1, progress=False)  # fmt: skip
    assert [r.seed for r in runs] == [0, 1] and all(r.step == 40 for r in runs)
    single = qsm_tutorial.train("bandit/ring", "sac", total_steps=40, seed=1, warmup_steps=20, batch_size=8,
                                actor_hidden=(8, 8), critic_hidden=(8, 8), eval_episodes=1, progress=False)  # fmt: skip
    assert single.history == runs[1].history  # no stacking: each seed's own update, bit for bit


def test_bad_seeds_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        train_seeds("bandit/ring", seeds=(1, 1))


def test_cli_seeds_writes_each_seed_as_a_resumable_run(tmp_path, capsys):
    from qsm_tutorial.cli import main

    flags = ["--env", "bandit/ring", "--total-steps", "60", "--warmup-steps", "30", "--batch-size", "8",
             "--actor-hidden", "8,8", "--critic-hidden", "8,8", "--langevin-steps", "3", "--eval-episodes", "1",
             "--no-progress"]  # fmt: skip
    assert main([*flags, "--seeds", "1,0", "--run-dir", str(tmp_path / "multi")]) == 0
    assert capsys.readouterr().out.count("steps, eval return") == 2
    assert main(["--run-dir", str(tmp_path / "multi" / "seed1"), "--resume", "--total-steps", "70", "--no-progress"]) == 0
    assert "70 steps" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--seeds", "0,1", "--resume"], ["--seeds", "0,1", "--seed", "2"]])
def test_cli_seeds_refuses_resume_and_a_single_seed(argv, capsys, tmp_path):
    from qsm_tutorial.cli import main

    assert main(["--env", "bandit/ring", "--run-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds starts new runs" in err
    assert not any(tmp_path.iterdir())


def test_replay_buffer_for_a_million_cheetah_steps_is_under_250_mb():
    buf = ReplayBuffer(17, 6, 1_000_000)  # dmc/cheetah-run: 17-D observations, 6-D actions
    assert buf.nbytes == 1_000_000 * (2 * 17 + 6 + 2) * 4  # float32, allocated once
    assert buf.nbytes < 250e6
    before = buf.nbytes
    for _ in range(10):
        buf.add([0.0] * 17, [0.0] * 6, 0.0, [0.0] * 17, False)
    assert buf.nbytes == before and all(getattr(buf, f).dtype.name == "float32" for f in buf.FIELDS)


@pytest.mark.slow
def test_stacked_update_compiles_and_agrees_with_eager():
    infos = {}
    for compile in ("off", "on"):
        cfg = QSMConfig(device="cpu", actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=32, compile=compile)
        torch.manual_seed(0)
        stack = QSMSeeds([QSMAgent(3, 1, cfg) for _ in range(2)])
        torch.manual_seed(1)
        for _ in range(3):
            batches = [random_batch(3, 1, 32) for _ in range(2)]
            info = stack.update(batches, [draw_update_noise(cfg, cfg.T, b) for b in batches])
        infos[compile] = info
    for eager, compiled in zip(infos["off"], infos["on"]):
        assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-6)
