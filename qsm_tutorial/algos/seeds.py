"""Several seeds of QSM as one batched model, with PyTorch's own tools over the *same* losses.

S agents' parameters are stacked into [S, ...] tensors (``torch.func.stack_module_state``) and the
losses of ``qsm.py`` run once for all seeds under ``torch.func.vmap``, each seed's networks called
through ``torch.func.functional_call``. Every loss is per seed; their sum is differentiated once, so
seed k's gradient is its own loss's. Adam and Polyak are elementwise, so one optimiser over the
stacks steps each seed as its own would. Each agent's modules become views of its slice of the
stacks: ``agents[k].act`` always uses the current weights.

Seed k agrees with its single-seed run to float32 rounding, not bit for bit: a batched matrix
multiply may sum in another order than a plain one (``tests/test_multiseed.py`` measures the gap).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ..replay import Batch
from .qsm import QSMAgent, UpdateNoise, adam, compiled, draw_update_noise, minimise, qsm_actor_loss, qsm_critic_loss

Params = dict[str, Tensor]


def stacked_parameters(modules: list[nn.Module]) -> Params:
    """The modules' parameters stacked along a new first axis, as leaves that take gradients;
    each module's parameters become views of its slice (they follow every in-place update)."""
    params, _ = stack_module_state(modules)
    for k, module in enumerate(modules):
        for name, p in module.named_parameters():
            p.data = params[name].data[k]
    return params


def called_with(module: nn.Module, params: Params):
    """``module``'s forward with ``params`` in place of its own (for one seed, inside vmap)."""
    return lambda *args: functional_call(module, params, args)


def stack_noise(noises: list[UpdateNoise]) -> UpdateNoise:
    """The seeds' draws stacked; where only some seeds bootstrap, the others get zeros (their
    masks are all 0, so their targets stay y = r, as in their own runs)."""
    def stacked(parts, like):
        if all(p is None for p in parts):
            return None
        return torch.stack([torch.zeros_like(like) if p is None else p for p in parts])

    present = next((n for n in noises if n.chain is not None), noises[0])
    return UpdateNoise(stacked([n.chain for n in noises], present.chain), stacked([n.target for n in noises], present.target),
                       torch.stack([n.t for n in noises]), torch.stack([n.z for n in noises]))  # fmt: skip


class QSMSeeds:
    """S ``QSMAgent``s updated as one: ``update(batches, noises)`` is S ``QSMAgent.update`` calls."""

    def __init__(self, agents: list[QSMAgent]):
        self.agents = agents
        base = agents[0]
        self.config, self.schedule, self.device = base.config, base.schedule, base.device
        self.actor = stacked_parameters([a.actor for a in agents])
        self.critic = stacked_parameters([a.critic for a in agents])
        self.critic_target = {k: v.detach() for k, v in stacked_parameters([a.critic_target for a in agents]).items()}
        self.actor_opt = adam(self.actor.values(), self.config.actor_lr, self.device)
        self.critic_opt = adam(self.critic.values(), self.config.critic_lr, self.device)
        self.actor_sched = torch.optim.lr_scheduler.LambdaLR(self.actor_opt, base._actor_lr_factor)
        self.n_updates = 0
        self.base, self._losses = base, {}

    def losses(self, bootstraps: bool):
        """The two losses vmapped over seeds (and compiled if the agents are); without a bootstrap
        the TD target's draws are None, which vmap must be told not to map over."""
        if bootstraps not in self._losses:
            noise_dims = UpdateNoise(0, 0, 0, 0) if bootstraps else UpdateNoise(None, None, 0, 0)
            critic = vmap(partial(self._critic_loss, self.base), in_dims=(0, 0, 0, 0, noise_dims))
            actor = vmap(partial(self._actor_loss, self.base), in_dims=(0, 0, 0, noise_dims))
            self._losses[bootstraps] = (compiled(critic, self.device), compiled(actor, self.device)) if self.base.compiled else (critic, actor)
        return self._losses[bootstraps]

    def _critic_loss(self, base: QSMAgent, critic: Params, target: Params, actor: Params, batch: Batch, noise: UpdateNoise):
        return qsm_critic_loss(called_with(base.critic, critic), called_with(base.critic_target, target),
                               called_with(base.actor, actor), self.schedule, self.config, batch, noise)  # fmt: skip

    def _actor_loss(self, base: QSMAgent, actor: Params, critic: Params, batch: Batch, noise: UpdateNoise):
        return qsm_actor_loss(called_with(base.actor, actor), called_with(base.critic, critic), self.schedule, self.config, batch, noise)

    def draw_noise(self, batch: Batch) -> UpdateNoise:
        """One seed's draws for an update (call it with that seed's random state in place)."""
        return draw_update_noise(self.config, self.schedule.T, batch)

    def update(self, batches: list[Batch], noises: list[UpdateNoise]) -> list[dict[str, float]]:
        """One update of every seed from its own minibatch and draws; each seed's metrics."""
        batch, noise = Batch(*(torch.stack(parts) for parts in zip(*batches))), stack_noise(noises)
        critic_losses, actor_losses = self.losses(noise.chain is not None)
        loss_c, q = critic_losses(self.critic, self.critic_target, self.actor, batch, noise)
        minimise(self.critic_opt, loss_c.sum())
        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.values()), list(self.critic.values()), self.config.tau)
        loss_a, g = actor_losses(self.actor, self.critic, batch, noise)
        minimise(self.actor_opt, loss_a.sum())
        self.actor_sched.step()
        self.n_updates += 1
        for agent in self.agents:
            agent.n_updates = self.n_updates
        metrics = torch.stack([loss_c, q.mean(dim=(1, 2)), loss_a, g.norm(dim=-1).mean(dim=1)], dim=1).tolist()  # one host copy
        return [dict(zip(("critic_loss", "q_mean", "actor_loss", "grad_q_norm"), row)) for row in metrics]

    def state_dict(self, k: int) -> dict:
        """Seed k's agent state as ``QSMAgent.state_dict`` has it (copies, not views of the stacks)."""
        return {
            "actor": {name: p[k].clone() for name, p in self.actor.items()},
            "critic": {name: p[k].clone() for name, p in self.critic.items()},
            "critic_target": {name: p[k].clone() for name, p in self.critic_target.items()},
            "actor_opt": self._adam_state(self.actor_opt, k),
            "critic_opt": self._adam_state(self.critic_opt, k),
            "actor_sched": self.actor_sched.state_dict(),
            "n_updates": self.n_updates,
        }

    @staticmethod
    def _adam_state(optimizer: torch.optim.Optimizer, k: int) -> dict:
        """Seed k's slice of a stacked Adam, as a one-seed Adam's state dict."""
        full = optimizer.state_dict()
        state = {i: {key: v.clone() if key == "step" else v[k].clone() for key, v in s.items()} for i, s in full["state"].items()}
        return {"state": state, "param_groups": full["param_groups"]}

    def release(self) -> list[QSMAgent]:
        """The S agents as ordinary, independent agents (own memory, own optimiser state)."""
        states = [self.state_dict(k) for k in range(len(self.agents))]
        for agent, state in zip(self.agents, states):
            for module in (agent.actor, agent.critic, agent.critic_target):
                for p in module.parameters():
                    p.data = p.data.clone()
            agent.load_state_dict(state)
        return self.agents
