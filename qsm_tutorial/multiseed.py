"""Several seeds of QSM in one process: S independent agents whose networks are stacked, so every
layer is one batched matrix multiply for all seeds, each with its own env, replay buffer and
random state.

    runs = train_seeds("dmc/cheetah-run", seeds=(0, 1, 2, 3), total_steps=50_000)
    runs[2].agent.act(obs)        # a list of train.Run, one per seed, in the order of ``seeds``

**Seed k's run is bit-for-bit** ``qsm_tutorial.train(env_id, "qsm", total_steps, seed=k,
**overrides)`` with the fast update (``QSMConfig.fast``, the default): the same initial weights,
actions, episodes, metrics, evaluations and final weights. Why that holds:

- each seed is set up as ``train`` sets it up (``seed_everything(k)``, then its envs, then its
  agent), and keeps its own torch / NumPy / Python random state, swapped in whenever that seed
  draws (acting, evaluating, sampling a minibatch, the update's noise), so it draws the same
  numbers in the same order as the single-seed loop;
- the update is ``algos/fast.py``'s, which a single agent also runs (as S = 1): every loss is
  reduced per seed, and every kernel computes slice k of an [S, ...] tensor exactly as it computes
  an [1, ...] one. That took care, because CPU kernels pick their code path by size: a batched
  multiply with one output column, or with 5-7 or 9-11 rows, rounds differently for S > 1, and on
  AVX-512 CPUs so do matrix-vector products and products with inner size 1; an elementwise update
  (Adam, Polyak) rounds its SIMD-sized chunks differently from the left-over numbers. So
  ``fast.py`` orients output layers by their width, computes one-output gradients seed by seed
  and a 1-D action's first layer elementwise, pads the time rows to 8, and steps the small stacks
  (output biases) seed by seed (``fast.adam_tensors``).
  ``tests/test_multiseed.py`` checks it for |A| = 1 and 6, up to the paper's sizes, on the kernels
  of the machine it runs on (so far checked on an AVX2 AMD EPYC and an AVX-512 Intel Xeon); should
  another BLAS compute slices differently, seeds would agree to float32 rounding and then drift
  apart as any two RL runs do.

The lockstep loop acts, stores and updates every seed at each env step, so all seeds finish
together. The speed-up is in the updates, where per-operation overhead is shared: at 64×64 one
stacked update of four seeds costs about twice one seed's (1.9-2.1× faster than four single
updates with one torch thread, 2.4× with two; the whole loop 1.5-2.1×, since acting stays per
seed). At the paper's 512-wide networks one seed already keeps a CPU core's matrix units busy
(0.87 of the measured compute bound on an AVX2 EPYC), so four seeds cost 3.5 times one: four times
the FLOPs cannot take less than 4 × 0.87 ≈ 3.5 times as long on the same core
(``benchmarks/throughput.py``; on an AVX-512 Xeon, 0.93-1.13× the speed of four single updates).
Algorithms other than QSM run their seeds one after another.

With ``run_root`` each seed writes the usual run directory (``<run_root>/seed<k>``: config,
metrics, timing, checkpoints in ``train``'s format), so a seed can be continued alone with
``qsm-train --run-dir <run_root>/seed<k> --resume``; a stacked run itself does not resume.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .algos import fast
from .algos.qsm import QSMAgent
from .replay import ReplayBuffer
from .loop import (
    LOOP_FIELDS,
    GracefulStop,
    LoopConfig,
    NonFiniteError,
    Run,
    _make_envs,
    _run_record,
    evaluate,
    first_nonfinite,
    make_config,
    rng_state,
    seed_everything,
    step_budget,
    train,
    updates_due,
)
from .storage import CHECKPOINT_FORMAT, METRIC_COLUMNS, TIMING_COLUMNS, CsvLog, RunDir


class SeedRandomState:
    """One seed's torch (CPU and CUDA), NumPy and Python random state; ``with state:`` makes it the
    global state for the block and stores what the block left."""

    def __init__(self):
        self.state = self._capture()

    @staticmethod
    def _capture():
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()

    @staticmethod
    def _restore(state) -> None:
        cpu, cuda, np_state, py_state = state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)

    def __enter__(self) -> "SeedRandomState":
        self._outer = self._capture()
        self._restore(self.state)
        return self

    def __exit__(self, *exc) -> None:
        self.state = self._capture()
        self._restore(self._outer)


class StackedQSM:
    """S ``QSMAgent``s trained as one: their parameters live in stacked [S, ...] tensors (each
    agent's modules are views of its slice, so ``agents[k].act`` always uses current weights),
    with one fused Adam per network over the stacks (small stacks as per-seed slices, so that each
    seed's numbers are those of its single-seed run: ``fast.adam_tensors``)."""

    def __init__(self, agents: list[QSMAgent]):
        self.agents = agents
        a0 = agents[0]
        self.config, self.schedule, self.device = a0.config, a0.schedule, a0.device
        self.nets = fast.QSMNets(
            fast.stack_params([a.actor for a in agents]),
            fast.stack_params([a.critic for a in agents]),
            fast.stack_params([a.critic_target for a in agents]),
        )
        for part in ("actor", "critic", "critic_target"):
            fast.alias_modules([getattr(a, part) for a in agents], getattr(self.nets, part))
        adam = fast.adam_options(self.device)
        self.actor_opt = torch.optim.Adam(fast.adam_tensors(self.nets.actor), lr=self.config.actor_lr, **adam)
        self.critic_opt = torch.optim.Adam(fast.adam_tensors(self.nets.critic), lr=self.config.critic_lr, **adam)
        self.actor_sched = torch.optim.lr_scheduler.LambdaLR(self.actor_opt, a0._actor_lr_factor)
        self.n_updates = 0

    def update(self, batches: list, td_noise: list, actor_noise: list) -> list[dict[str, float]]:
        """One QSM update of every seed (what ``QSMAgent.update`` does for one), from each seed's
        minibatch and random draws; returns each seed's metrics."""
        cfg = self.config
        batch = fast.stack_batches(batches)
        metrics = fast.critic_step(self.nets, self.critic_opt, cfg, self.schedule, batch, fast.stack_td_noise(td_noise))
        fast.polyak(self.nets.critic_target, self.nets.critic, cfg.tau)
        t, z = (torch.cat(parts) for parts in zip(*actor_noise))
        metrics.update(fast.actor_step(self.nets, self.actor_opt, self.actor_sched, cfg, self.schedule, batch, t, z))
        self.n_updates += 1
        values = torch.stack(list(metrics.values()), dim=1).tolist()  # [S, n_metrics], one host copy
        return [dict(zip(metrics, row)) for row in values]

    def _adam_state(self, optimizer, params: fast.Params, k: int) -> dict:
        """Seed k's part of a stacked Adam (see ``fast.adam_tensors``), as a plain Adam's state dict
        over its own parameters."""
        state, S = optimizer.state_dict()["state"], len(self.agents)
        per_param, i = {}, 0
        for j, p in enumerate(params.values()):
            if fast.updated_per_seed(p):
                mine = state.get(i + k)
                per_param[j] = {key: v.clone() for key, v in mine.items()} if mine else None
                i += S
            else:
                whole = state.get(i)
                per_param[j] = {key: (v[k].clone() if key != "step" else v.clone()) for key, v in whole.items()} if whole else None
                i += 1
        return {"state": {j: s for j, s in per_param.items() if s is not None}, "param_groups": self._param_groups(optimizer, len(params))}

    @staticmethod
    def _param_groups(optimizer, n_params: int) -> list[dict]:
        """The optimiser's hyper-parameters, listing a single agent's parameters 0 … n − 1."""
        group = {key: v for key, v in optimizer.state_dict()["param_groups"][0].items() if key != "params"}
        return [{**group, "params": list(range(n_params))}]

    def state_dict(self, k: int) -> dict:
        """Seed k's agent state, exactly as ``QSMAgent.state_dict`` has it (independent copies)."""
        return {
            "actor": fast.member_state(self.nets.actor, k),
            "critic": fast.member_state(self.nets.critic, k),
            "critic_target": fast.member_state(self.nets.critic_target, k),
            "actor_opt": self._adam_state(self.actor_opt, self.nets.actor, k),
            "critic_opt": self._adam_state(self.critic_opt, self.nets.critic, k),
            "actor_sched": self.actor_sched.state_dict(),
            "n_updates": self.n_updates,
        }

    def release(self) -> list[QSMAgent]:
        """The S agents as ordinary, independent agents (own memory, own optimiser state)."""
        states = [self.state_dict(k) for k in range(len(self.agents))]
        for agent, state in zip(self.agents, states):
            for module in (agent.actor, agent.critic, agent.critic_target):
                for p in module.parameters():
                    p.data = p.data.clone()
            agent.load_state_dict(state)
        return self.agents


def train_seeds(
    env_id: str,
    algo: str = "qsm",
    seeds: tuple[int, ...] = (0, 1, 2, 3),
    total_steps: int | None = None,
    *,
    run_root: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    **overrides,
) -> list[Run]:
    """Train one agent per seed on ``env_id``, side by side in this process; a list of
    :class:`~qsm_tutorial.train.Run` in the order of ``seeds``. ``overrides`` are those of
    :func:`~qsm_tutorial.train.train` (loop and algorithm fields). With ``run_root``, seed k is
    written to ``<run_root>/seed<k>`` as ``train`` would write it (``force`` replaces old runs)."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    if not isinstance(env_id, str):
        raise TypeError(f"train_seeds takes an env id (a string), got {type(env_id).__name__}")
    run_dirs = [Path(run_root) / f"seed{s}" for s in seeds] if run_root is not None else [None] * len(seeds)
    if algo != "qsm" or not make_config(algo, env_id, **{k: v for k, v in overrides.items() if k not in LOOP_FIELDS}).fast:
        # Nothing to stack: the seeds run one after another (the same results, no speed-up).
        return [
            train(env_id, algo, total_steps, seed, run_dir=d, force=force, progress=progress, **overrides)
            for seed, d in zip(seeds, run_dirs)
        ]
    loop = LoopConfig(**{k: overrides.pop(k) for k in LOOP_FIELDS & overrides.keys()})
    S = len(seeds)

    # -- set up every seed exactly as train() sets up one --------------------------------------
    envs, eval_envs, agents, buffers, rngs = [], [], [], [], []
    outer = SeedRandomState()
    try:
        for seed in seeds:
            seed_everything(seed)
            env, eval_env, _, _ = _make_envs(env_id, seed)
            envs.append(env)
            eval_envs.append(eval_env)
            config = make_config(algo, env_id, **overrides)
            obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
            agents.append(QSMAgent(obs_dim, act_dim, config))
            buffers.append(ReplayBuffer(obs_dim, act_dim, config.buffer_size))
            rngs.append(SeedRandomState())
        SeedRandomState._restore(outer.state)
        total_steps = step_budget(total_steps, env_id)
        stores = [RunDir(d) if d is not None else None for d in run_dirs]
        records = [_run_record(algo, env_id, s, total_steps, loop, config, obs_dim, act_dim, agents[0].device) for s in seeds]
        for store, record in zip(stores, records):
            if store:
                store.prepare(record, resume=False, force=force)
        metrics = [CsvLog(store.metrics if store else None, METRIC_COLUMNS) for store in stores]
        timing = [CsvLog(store.timing if store else None, TIMING_COLUMNS) for store in stores]
        for store, record, m, t in zip(stores, records, metrics, timing):
            if store:
                store.begin(record, resumed=False)
                m.start(None)
                t.start(None)
        runs = [
            Run(a, config, env_id, s, history=m.rows, run_dir=str(st.path) if st else None, loop=loop,
                total_steps=total_steps, step=0, timing=t.rows)
            for a, s, m, t, st in zip(agents, seeds, metrics, timing, stores)
        ]  # fmt: skip
        stack = StackedQSM(agents)

        def save(k: int, step: int, episodes: int, updates: int) -> None:
            state = stack.state_dict(k)
            bad = first_nonfinite(state)
            if bad:
                raise NonFiniteError(f"non-finite weights ({bad}) at step {step} of seed {seeds[k]}: the run stopped")
            with rngs[k]:
                rng = rng_state(envs[k].action_space)
            stores[k].save_checkpoint({
                "format": CHECKPOINT_FORMAT, "algo": algo, "env_id": env_id, "seed": seeds[k], "step": step,
                "episodes": episodes, "updates": updates, "agent": state, "replay": buffers[k].state_dict(), "rng": rng,
            })  # fmt: skip

        # -- the loop of train(), for all seeds in lockstep ------------------------------------
        obs = []
        for k in range(S):
            with rngs[k]:
                metrics[k].append({"step": 0, "event": "eval", **evaluate(agents[k], eval_envs[k], loop.eval_episodes, seeds[k])})
                obs.append(envs[k].reset(seed=seeds[k])[0])
        episode_return, episode_length, episodes = [0.0] * S, [0] * S, [0] * S
        updates = 0
        windows: list[dict[str, list[float]]] = [{} for _ in range(S)]
        session_start = window_start = time.perf_counter()
        window_steps, eval_seconds = 0, 0.0
        bar = tqdm(total=total_steps, disable=not progress, desc=f"{algo} {env_id} x{S} seeds", unit="step", mininterval=0.5)
        with GracefulStop() as stop, bar:
            for step in range(1, total_steps + 1):
                for k in range(S):
                    with rngs[k]:
                        action = envs[k].action_space.sample() if step <= config.warmup_steps else agents[k].act(obs[k])
                    next_obs, reward, terminated, truncated, _ = envs[k].step(action)
                    buffers[k].add(obs[k], action, reward, next_obs, terminated)
                    obs[k] = next_obs
                    episode_return[k] += float(reward)
                    episode_length[k] += 1
                    if terminated or truncated:
                        episodes[k] += 1
                        metrics[k].append({"step": step, "event": "episode", "episode": episodes[k],
                                           "episode_return": episode_return[k], "episode_length": episode_length[k]})  # fmt: skip
                        with rngs[k]:
                            obs[k] = envs[k].reset()[0]
                        episode_return[k], episode_length[k] = 0.0, 0
                for _ in range(updates_due(step, config, loop.updates_per_step) - updates):
                    batches, td_noise, actor_noise = [], [], []
                    for k in range(S):  # each seed draws what QSMAgent.update would, in its order
                        with rngs[k]:
                            batch = buffers[k].sample(config.batch_size, device=stack.device)
                            td_noise.append(fast.draw_td_noise(config, batch, act_dim))
                            actor_noise.append(fast.draw_actor_noise(config, config.batch_size, act_dim, stack.device))
                        batches.append(batch)
                    infos = stack.update(batches, td_noise, actor_noise)
                    updates += 1
                    for k, info in enumerate(infos):
                        for key, value in info.items():
                            if not math.isfinite(value):
                                raise NonFiniteError(f"non-finite {key} ({value}) at step {step} of seed {seeds[k]}: the run stopped")
                            windows[k].setdefault(key, []).append(value)
                window_steps += 1
                bar.update(1)
                if step % loop.log_every == 0 and windows[0]:
                    now = time.perf_counter()
                    steps_per_s = window_steps / (now - window_start - eval_seconds)
                    for k in range(S):
                        means = {key: float(np.mean(v)) for key, v in windows[k].items()}
                        metrics[k].append({"step": step, "event": "train", "updates": updates, **means})
                        timing[k].append({"step": step, "elapsed_s": now - session_start, "steps_per_s": steps_per_s})
                    bar.set_postfix({"steps/s": round(steps_per_s)}, refresh=False)
                    windows = [{} for _ in range(S)]
                    window_start, window_steps, eval_seconds = time.perf_counter(), 0, 0.0
                if step % loop.eval_every == 0 or step == total_steps:
                    t0 = time.perf_counter()
                    for k in range(S):
                        with rngs[k]:
                            metrics[k].append({"step": step, "event": "eval", **evaluate(agents[k], eval_envs[k], loop.eval_episodes, seeds[k])})
                    eval_seconds += time.perf_counter() - t0
                for run in runs:
                    run.step = step
                if any(stores) and (step % loop.checkpoint_every == 0 or step == total_steps or stop.requested):
                    for k in range(S):
                        save(k, step, episodes[k], updates)
                if stop.requested:
                    for run in runs:
                        run.stop_reason = stop.requested
                    break
        stack.release()
        return runs
    finally:
        for e in envs + eval_envs:
            e.close()
