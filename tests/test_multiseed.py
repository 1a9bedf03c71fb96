"""Several seeds in one process give each seed's single-seed run, bit for bit; memory stays fixed."""

import pytest
import torch

import qsm_tutorial
from qsm_tutorial.algos import fast
from qsm_tutorial.multiseed import SeedRandomState, train_seeds
from qsm_tutorial.replay import ReplayBuffer

# Small and short, but with everything the loop does: warm-up, acting, episodes that end and
# restart (InvertedPendulum falls), bootstrapped TD targets, evaluations and logging windows.
SMALL = dict(total_steps=75, warmup_steps=40, batch_size=16, actor_hidden=(16, 16), critic_hidden=(16, 16), T=3,
             eval_episodes=1, eval_every=60, log_every=30, progress=False)  # fmt: skip


def flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flat(v, f"{prefix}.{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from flat(v, f"{prefix}.{i}")
    else:
        yield prefix, tree


def assert_identical_runs(single, multi) -> None:
    assert single.history == multi.history  # episodes, training metrics, evaluations: exact floats
    a, b = dict(flat(single.agent.state_dict())), dict(flat(multi.agent.state_dict()))
    assert a.keys() == b.keys()
    for key, x in a.items():
        same = torch.equal(x, b[key]) if torch.is_tensor(x) else x == b[key]
        assert same, f"{key} differs"


@pytest.mark.parametrize(
    "env_id, extra, seeds",
    [
        ("InvertedPendulum-v5", {}, (3, 0)),
        ("bandit/ring", {"langevin_steps": 4}, (3, 0)),
        ("dmc/cheetah-run", {}, (3, 0, 1)),  # |A| = 6: output layers and biases that need care, fast.py
    ],
)
def test_each_seed_equals_its_single_seed_run(env_id, extra, seeds):
    multi = train_seeds(env_id, "qsm", seeds=seeds, **SMALL, **extra)
    assert [r.seed for r in multi] == list(seeds)
    for seed, run in zip(seeds, multi):
        assert_identical_runs(qsm_tutorial.train(env_id, "qsm", seed=seed, **SMALL, **extra), run)
    assert multi[0].history != multi[1].history  # and the seeds differ from each other


@pytest.mark.parametrize(
    "obs_dim, act_dim, hidden, batch_size",
    # pendulum-like (|A| = 1: matrix-vector products, S-dependent on AVX-512 unless done per seed); cheetah-like; the paper's sizes
    [(3, 1, 32, 32), (3, 1, 64, 64), (17, 6, 64, 64), (17, 6, 512, 256)],
)
def test_stacked_update_of_a_seed_does_not_depend_on_the_others(obs_dim, act_dim, hidden, batch_size):
    """Slice 0 of an S = 3 update equals the S = 1 update bit for bit (kernels are per slice),
    for one and for several action dimensions (the output layers' kernels differ, see
    ``fast.stacked_linear``)."""
    from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig
    from qsm_tutorial.multiseed import StackedQSM

    cfg = QSMConfig(device="cpu", actor_hidden=(hidden, hidden), critic_hidden=(hidden, hidden), batch_size=batch_size)
    buffers = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        b = ReplayBuffer(obs_dim, act_dim, 2 * batch_size)
        for _ in range(2 * batch_size):
            b.add(torch.randn(obs_dim, generator=g).numpy(), torch.rand(act_dim, generator=g).numpy(), 1.0,
                  torch.randn(obs_dim, generator=g).numpy(), False)  # fmt: skip
        buffers.append(b)
    results = []
    for S in (1, 3):
        torch.manual_seed(0)
        stack = StackedQSM([QSMAgent(obs_dim, act_dim, cfg) for _ in range(S)])
        for step in range(3):
            batches, td, actor = [], [], []
            for k in range(S):  # seed k's draws depend on k and the step only
                torch.manual_seed(100 * step + k)
                batches.append(buffers[k].sample(batch_size))
                td.append(fast.draw_td_noise(cfg, batches[-1], act_dim))
                actor.append(fast.draw_actor_noise(cfg, batch_size, act_dim, "cpu"))
            info = stack.update(batches, td, actor)
        results.append((info[0], stack.state_dict(0)))
    assert results[0][0] == results[1][0]
    for key, x in dict(flat(results[0][1])).items():
        y = dict(flat(results[1][1]))[key]
        assert torch.equal(x, y) if torch.is_tensor(x) else x == y, key


def test_seed_random_state_isolates_streams():
    a, b = SeedRandomState(), SeedRandomState()
    torch.manual_seed(0)
    with a:
        torch.manual_seed(1)
    with b:
        torch.manual_seed(1)
    outside = torch.rand(3)
    with a:
        xa = torch.rand(3)
    with b:
        xb = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(outside, torch.rand(3)) and torch.equal(xa, xb)


def test_other_algorithms_run_seed_after_seed():
    runs = train_seeds("bandit/ring", "sac", seeds=(0, 1), total_steps=40, warmup_steps=20, batch_size=8,
                       actor_hidden=(8, 8), critic_hidden=(8, 8), eval_episodes=1, progress=False)  # fmt: skip
    assert [r.seed for r in runs] == [0, 1] and all(r.step == 40 for r in runs)


def test_bad_seeds_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        train_seeds("bandit/ring", seeds=(1, 1))


def test_cli_seeds_writes_each_seed_as_its_single_seed_run(tmp_path, capsys):
    from qsm_tutorial.cli import main

    flags = ["--env", "bandit/ring", "--total-steps", "60", "--warmup-steps", "30", "--batch-size", "8",
             "--actor-hidden", "8,8", "--critic-hidden", "8,8", "--langevin-steps", "3", "--eval-episodes", "1",
             "--no-progress"]  # fmt: skip
    assert main([*flags, "--seeds", "1,0", "--run-dir", str(tmp_path / "multi")]) == 0
    assert main([*flags, "--seed", "1", "--run-dir", str(tmp_path / "single")]) == 0
    assert capsys.readouterr().out.count("steps, eval return") == 3
    multi, single = (tmp_path / "multi" / "seed1" / "metrics.csv").read_bytes(), (tmp_path / "single" / "metrics.csv").read_bytes()
    assert multi == single and (tmp_path / "multi" / "seed0" / "metrics.csv").read_bytes() != multi


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


def test_stacked_update_compiles():
    """``compile=True`` with stacked seeds: the compiled backward also calls the per-seed gradient
    hooks of parameters it gives no gradient (they must skip them); numbers as eager to rounding."""
    from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig
    from qsm_tutorial.multiseed import StackedQSM

    buffers = []
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        b = ReplayBuffer(4, 1, 64)
        for _ in range(64):
            b.add(torch.randn(4, generator=g).numpy(), torch.rand(1, generator=g).numpy(), 1.0, torch.randn(4, generator=g).numpy(), False)
        buffers.append(b)
    infos = {}
    for compile in (False, True):
        cfg = QSMConfig(device="cpu", actor_hidden=(32, 32), critic_hidden=(32, 32), batch_size=32, compile=compile)
        torch.manual_seed(0)
        stack = StackedQSM([QSMAgent(4, 1, cfg) for _ in range(2)])
        for step in range(2):
            torch.manual_seed(step)
            batches = [b.sample(32) for b in buffers]
            info = stack.update(batches, [fast.draw_td_noise(cfg, b, 1) for b in batches],
                                [fast.draw_actor_noise(cfg, 32, 1, "cpu") for _ in batches])  # fmt: skip
        infos[compile] = info
    for eager, compiled in zip(infos[False], infos[True]):
        assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-7)
