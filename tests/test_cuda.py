"""On a GPU (skipped without one): the update there, eager and CUDA-graph compiled, is the CPU's
update to float32 rounding; checkpoints move between devices; ``device="auto"`` picks CUDA."""

import copy

import pytest
import torch

import qsm_tutorial
from qsm_tutorial.algos.qsm import QSMAgent, QSMConfig, draw_update_noise
from qsm_tutorial.replay import Batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def batch_on(device, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    B = 64
    cpu = Batch(torch.randn(B, 5, generator=g), torch.rand(B, 1, generator=g) * 2 - 1, torch.randn(B, generator=g),
                torch.randn(B, 5, generator=g), torch.ones(B))  # fmt: skip
    return Batch(*(x.to(device) for x in cpu))


@pytest.mark.parametrize("compile", ["off", "on"])
def test_cuda_update_equals_the_cpu_update(compile):
    cfg = QSMConfig.preset("control", actor_hidden=(64, 64), critic_hidden=(64, 64), device="cpu", compile="off")
    cpu = QSMAgent(5, 1, cfg)
    gpu = QSMAgent(5, 1, QSMConfig(**{**cfg.__dict__, "device": "cuda", "compile": compile}))
    gpu.load_state_dict(copy.deepcopy(cpu.state_dict()))
    for step in range(5):
        b = batch_on("cpu", step)
        noise = draw_update_noise(cfg, cfg.T, b)
        m_cpu = cpu.update(b, noise)
        m_gpu = gpu.update(Batch(*(x.cuda() for x in b)), type(noise)(*(x.cuda() if x is not None else None for x in noise)))
        assert m_gpu == pytest.approx(m_cpu, rel=1e-3, abs=1e-5)
    for name, p in cpu.actor.state_dict().items():
        assert torch.allclose(gpu.actor.state_dict()[name].cpu(), p, rtol=1e-4, atol=1e-5), name


def test_auto_device_is_cuda_and_checkpoints_cross_devices(tmp_path):
    # A bandit needs no simulator: the GPU machine's image has no mujoco or dm_control (benchmarks/gpu_check.sh).
    run = qsm_tutorial.train("bandit/four-gaussians", "qsm", total_steps=60, run_dir=tmp_path / "r", progress=False,
                             warmup_steps=30, batch_size=16, actor_hidden=(8, 8), critic_hidden=(8, 8), eval_episodes=1)  # fmt: skip
    assert run.agent.device.type == "cuda"
    resumed = qsm_tutorial.train("bandit/four-gaussians", "qsm", total_steps=80, run_dir=tmp_path / "r", resume=True, progress=False, device="cpu", force=True)
    assert resumed.agent.device.type == "cpu" and resumed.step == 80
