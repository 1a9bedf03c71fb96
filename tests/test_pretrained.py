"""Trained policies shipped with the package load by name and still earn what their manifest says."""

import json

import pytest
import torch

import qsm_tutorial
from qsm_tutorial import envs, results
from qsm_tutorial.loop import evaluate

SHIPPED = results.available_pretrained()


def test_export_then_load_gives_the_runs_policy(tmp_path):
    """A run's policy, exported weights-only, acts exactly as the run's own agent."""
    run = qsm_tutorial.train("InvertedPendulum-v5", "qsm", total_steps=60, seed=0, run_dir=tmp_path / "run", progress=False,
                             warmup_steps=30, batch_size=16, actor_hidden=(8, 8), critic_hidden=(8, 8), eval_episodes=1)  # fmt: skip
    folder = results.export_pretrained(tmp_path / "run", "pendulum/qsm", command="(test)", commit="0" * 7, root=tmp_path / "shipped")
    assert results.available_pretrained(tmp_path / "shipped") == ["pendulum/qsm"]
    weights = torch.load(folder / results.POLICY_FILE, weights_only=True)
    assert set(weights) == {"actor", "critic"}  # the control preset picks the best of 16 samples by the critics
    manifest = json.loads((folder / results.MANIFEST_FILE).read_text())
    assert manifest["steps"] == 60 and manifest["eval_return"] == run.metric("eval_return")[1][-1]
    agent = results.load_pretrained("pendulum/qsm", root=tmp_path / "shipped")
    obs = torch.zeros(4).numpy()
    torch.manual_seed(0)
    expected = run.agent.act(obs, deterministic=True)
    torch.manual_seed(0)
    assert (agent.act(obs, deterministic=True) == expected).all()


def test_unknown_name_lists_what_exists(tmp_path):
    with pytest.raises(KeyError, match="no pretrained policy 'nope'"):
        results.load_pretrained("nope", root=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_earns_its_manifest_return(name):
    """The evaluation protocol of the run (same episodes, same seeds) on the shipped weights: within
    5 % of the manifest's return (the same numbers on the machine that trained it; other CPUs'
    kernels round differently, and a swing-up episode amplifies rounding)."""
    agent = results.load_pretrained(name)
    m = agent.manifest
    with envs.make(m["env_id"]) as env:
        got = evaluate(agent, env, m["eval_episodes"], m["seed"])["eval_return"]
    assert got == pytest.approx(m["eval_return"], rel=0.05, abs=10.0), (name, got, m["eval_return"])
