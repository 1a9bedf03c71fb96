"""The fast QSM update (algos/fast.py) computes the reference update's numbers.

Tolerances are measured, not guessed. With the same seed and initial weights the two paths draw
the same random numbers; they differ only by float32 rounding (reassociated sums, a Mish with one
exponential). Measured on this machine after 1, 10 and 100 updates of 64-wide networks: losses
agree to ≤ 2e-7 relative and every parameter tensor to ≤ 1e-6 of its largest entry (DDPM sampler),
≤ 1.3e-5 with the Langevin sampler (Adam's first steps, lr · g/(|g| + ε), magnify rounding in
gradients that are near zero). The tests allow 1e-5 for losses and 1e-4 for parameters: a sign
error, a wrong coefficient or a missing term moves them by orders of magnitude more.
"""

import pytest
import torch
import torch.nn.functional as F

from qsm_tutorial.algos import fast
from qsm_tutorial.algos.common import TwinCritic
from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig, q_action_gradient
from qsm_tutorial.diffusion import Denoiser, NoiseSchedule, ddpm_sample
from qsm_tutorial.replay import Batch, ReplayBuffer

OBS, ACT = 5, 2


def filled_buffer(n=512, obs=OBS, act=ACT, terminal_every=0) -> ReplayBuffer:
    g = torch.Generator().manual_seed(1)
    buf = ReplayBuffer(obs, act, n)
    for i in range(n):
        buf.add(torch.randn(obs, generator=g).numpy(), (torch.rand(act, generator=g) * 2 - 1).numpy(),
                float(torch.rand(1, generator=g)), torch.randn(obs, generator=g).numpy(),
                bool(terminal_every and i % terminal_every == 0))  # fmt: skip
    return buf


def train_agent(fast_path: bool, n_updates: int, **overrides):
    buf = filled_buffer()
    torch.manual_seed(0)
    cfg = QSMConfig(device="cpu", fast=fast_path, actor_hidden=(64, 64), critic_hidden=(64, 64), batch_size=64, **overrides)
    agent = QSMAgent(OBS, ACT, cfg)
    metrics = [agent.update(buf.sample(64)) for _ in range(n_updates)]
    return agent, metrics


def assert_close_states(a: dict, b: dict, rtol: float) -> None:
    for part in ("actor", "critic", "critic_target"):
        for name, x in a[part].items():
            y = b[part][name]
            scale = y.abs().max().clamp_min(1e-3)
            assert (x - y).abs().max() <= rtol * scale, f"{part}.{name} differs by {(x - y).abs().max():.3g}"


@pytest.mark.parametrize(
    "overrides",
    [{}, {"sampler": "langevin", "langevin_steps": 5}, {"normalize_q_grad": True, "denoise_weight": 0.5, "T": 3}],
    ids=["ddpm", "langevin", "normalized-denoise"],
)
def test_fast_update_gives_the_reference_numbers(overrides):
    fast_agent, fast_metrics = train_agent(True, 20, **overrides)
    ref_agent, ref_metrics = train_agent(False, 20, **overrides)
    for mf, mr in zip(fast_metrics, ref_metrics):
        assert mf.keys() == mr.keys()
        for key in mr:
            assert mf[key] == pytest.approx(mr[key], rel=1e-5, abs=1e-7), key
    assert_close_states(fast_agent.state_dict(), ref_agent.state_dict(), rtol=1e-4)


def test_compiled_update_gives_the_fast_numbers():
    """``compile=True`` (torch.compile of the two losses) runs the same update: same metrics and
    weights as the eager fast path to float32 rounding (Inductor fuses and reorders elementwise
    work). Tolerances as for fast against reference; measured: metrics within 3e-7 relative."""
    compiled_agent, compiled_metrics = train_agent(True, 10, compile=True)
    eager_agent, eager_metrics = train_agent(True, 10)
    for mc, me in zip(compiled_metrics, eager_metrics):
        assert mc.keys() == me.keys()
        for key in me:
            assert mc[key] == pytest.approx(me[key], rel=1e-5, abs=1e-7), key
    assert_close_states(compiled_agent.state_dict(), eager_agent.state_dict(), rtol=1e-4)
    with pytest.raises(ValueError, match="compile=True compiles the fast update"):
        QSMConfig(fast=False, compile=True)


def test_compile_without_a_cpp_compiler_fails_at_once():
    """No C++ compiler: a one-line error when the agent is made, not an Inductor traceback at the
    first update (the CLI prints ValueErrors as one line)."""
    from torch._inductor import config as inductor_config
    from torch._inductor import cpp_builder

    found = inductor_config.cpp.cxx
    inductor_config.cpp.cxx = ("no-such-c++-compiler",)
    cpp_builder.cpp_compiler_search.cache_clear()
    try:
        with pytest.raises(ValueError, match="needs a C.. compiler"):
            QSMAgent(OBS, ACT, QSMConfig(device="cpu", compile=True))
    finally:
        inductor_config.cpp.cxx = found
        cpp_builder.cpp_compiler_search.cache_clear()
    QSMAgent(OBS, ACT, QSMConfig(device="cpu", compile=True))  # the real compiler is found again


def test_fast_update_handles_episodes_that_end():
    """Bandit-like batches (mask 0 everywhere, nothing bootstraps) and mixed ones."""
    for terminal_every in (1, 3):
        buf = filled_buffer(terminal_every=terminal_every)
        results = []
        for fast_path in (True, False):
            torch.manual_seed(0)
            agent = QSMAgent(OBS, ACT, QSMConfig(device="cpu", fast=fast_path, actor_hidden=(32, 32), critic_hidden=(32, 32)))
            results.append([agent.update(buf.sample(32)) for _ in range(5)])
        for mf, mr in zip(*results):
            assert mf["critic_loss"] == pytest.approx(mr["critic_loss"], rel=1e-5)


def test_checkpoints_move_between_paths():
    """A fast agent's state dict loads into a reference agent and gives the same actions."""
    fast_agent, _ = train_agent(True, 3)
    ref = QSMAgent(OBS, ACT, QSMConfig(device="cpu", fast=False, actor_hidden=(64, 64), critic_hidden=(64, 64)))
    ref.load_state_dict(fast_agent.state_dict())
    back = QSMAgent(OBS, ACT, QSMConfig(device="cpu", fast=True, actor_hidden=(64, 64), critic_hidden=(64, 64)))
    back.load_state_dict(ref.state_dict())
    obs = torch.randn(4, OBS).numpy()
    for agent in (ref, back):
        torch.manual_seed(3)
        a = agent.act(obs)
        torch.manual_seed(3)
        assert (a == fast_agent.act(obs)).all()


def test_mish_matches_torch():
    x = (torch.randn(4096) * 6).requires_grad_(True)
    x.data[:4] = torch.tensor([-100.0, -30.0, 25.0, 90.0])  # the tails: no inf/nan
    y = fast.mish(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    x_ref = x.detach().requires_grad_(True)
    y_ref = F.mish(x_ref)
    (g_ref,) = torch.autograd.grad(y_ref.sum(), x_ref)
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_layers_without_a_graph_give_the_numbers_of_those_with_one():
    """Where no gradient is needed (the TD target, acting) ``mish`` and ``stacked_linear`` skip their
    autograd Functions; the forward numbers must not change by it (bit for bit: the same kernels)."""
    x, w, b = torch.randn(2, 16, 32) * 4, torch.randn(2, 8, 32), torch.randn(2, 8)
    with_graph = [t.clone().requires_grad_(True) for t in (x, w, b)]
    mish_graph, linear_graph = fast.mish(with_graph[0]), fast.stacked_linear(*with_graph)
    assert mish_graph.grad_fn is not None and linear_graph.grad_fn is not None
    with torch.no_grad():
        mish_plain, linear_plain = fast.mish(with_graph[0]), fast.stacked_linear(*with_graph)
    assert mish_plain.grad_fn is None and linear_plain.grad_fn is None
    assert torch.equal(mish_plain, mish_graph.detach()) and torch.equal(linear_plain, linear_graph.detach())
    assert torch.equal(fast.mish(x), mish_plain)  # plain inputs need no graph either, with grad mode on


def test_compiled_relu_has_torchs_values_and_gradient():
    """The ReLU the compiled critic uses (backward from the output, no bool mask) gives exactly
    F.relu's numbers, at 0 too (relu′(0) = 0 in both), eagerly and compiled."""
    x = torch.randn(8, 64)
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30])
    grad_out = torch.randn_like(x)

    def value_and_grad(f):
        xi = x.clone().requires_grad_(True)
        y = f(xi)
        (g,) = torch.autograd.grad(y, xi, grad_out)
        return y.detach(), g

    y_ref, g_ref = value_and_grad(F.relu)
    for f in (fast._ReluFromOutput.apply, torch.compile(fast.relu, dynamic=False)):
        y, g = value_and_grad(f)
        assert torch.equal(y, y_ref) and torch.equal(g, g_ref)


def test_stacked_critics_equal_separate_critics():
    torch.manual_seed(0)
    critics = [TwinCritic(OBS, ACT, (32, 32)) for _ in range(3)]
    stacked = fast.stack_params(critics)
    obs, act = torch.randn(3, 16, OBS), torch.rand(3, 16, ACT) * 2 - 1
    q = fast.twin_q(stacked, obs, act)
    g = fast.twin_q_action_gradient(stacked, obs, act)
    for k, critic in enumerate(critics):
        assert torch.allclose(q[k], critic(obs[k], act[k]), atol=1e-6)
        assert torch.allclose(g[k], q_action_gradient(critic, obs[k], act[k]), atol=1e-6)
    # seed k's slice is exactly seed k's state dict, and views of one module write through
    assert all(torch.equal(v, critics[1].state_dict()[n]) for n, v in fast.member_state(stacked, 1).items())
    view = fast.view_params(critics[0])
    fast.twin_q(view, obs[:1], act[:1]).sum().backward()
    assert critics[0].q1[0].weight.grad is not None


def test_stacked_denoiser_and_sampler_equal_the_reference():
    torch.manual_seed(0)
    denoisers = [Denoiser(OBS, ACT, (32, 32)) for _ in range(2)]
    stacked = fast.stack_params(denoisers)
    schedule = NoiseSchedule.vp(5)
    obs, a = torch.randn(2, 16, OBS), torch.randn(2, 16, ACT)
    t = torch.randint(0, 5, (2, 16))
    eps_plain = fast.denoiser_eps(stacked, obs, a, t)
    eps_table = fast.denoiser_eps_train(stacked, obs, a, t, 5)
    for k, d in enumerate(denoisers):
        assert torch.allclose(eps_plain[k], d(obs[k], a[k], t[k]), atol=1e-5)
        assert torch.allclose(eps_table[k], d(obs[k], a[k], t[k]), atol=1e-5)
        torch.manual_seed(7)
        ref = ddpm_sample(d, schedule, obs[k], ACT)
        torch.manual_seed(7)
        noise = [torch.randn(1, 16, ACT) for _ in range(6)]
        got = fast.ddpm_sample_from({n: p[k : k + 1] for n, p in stacked.items()}, schedule, obs[k : k + 1], noise)
        assert torch.allclose(got[0], ref, atol=1e-5)


def test_update_metrics_are_python_floats():
    _, metrics = train_agent(True, 1)
    assert all(type(v) is float for v in metrics[0].values())


def test_fast_path_uses_fused_adam():
    agent = QSMAgent(OBS, ACT, QSMConfig(device="cpu", actor_hidden=(8, 8), critic_hidden=(8, 8)))
    assert agent.actor_opt.param_groups[0]["fused"] and agent.critic_opt.param_groups[0]["fused"]
    reference = QSMAgent(OBS, ACT, QSMConfig(device="cpu", fast=False, actor_hidden=(8, 8), critic_hidden=(8, 8)))
    assert not reference.actor_opt.param_groups[0]["fused"]


def test_batch_axis_helpers():
    b = Batch(torch.zeros(4, OBS), torch.zeros(4, ACT), torch.zeros(4), torch.zeros(4, OBS), torch.ones(4))
    s = fast.stack_batches([b, b, b])
    assert s.obs.shape == (3, 4, OBS) and s.mask.shape == (3, 4)
    assert fast.add_seed_axis(b).action.shape == (1, 4, ACT)


@pytest.mark.parametrize("n_out", [1, 6, 16], ids=["one-output-row", "odd-outputs", "hidden-width"])
def test_stacked_linear_backward_is_the_derivative(n_out):
    """The hand-written backward of ``stacked_linear`` (gradients in the parameters' own layout)
    against finite differences, in float64, for each of its three orientations."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
               for shape in ((2, 5, 3), (2, n_out, 3), (2, n_out)))  # fmt: skip
    assert torch.autograd.gradcheck(fast.stacked_linear, (x, w, b))
    expected = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
    assert torch.allclose(fast.stacked_linear(x, w, b), expected)
