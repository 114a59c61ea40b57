"""Lockstep rollouts of whole rollout groups over several environment instances.

Why not ``LLMCollector``: in synchronous mode it steps one environment per call,
and in asynchronous mode (an ``AsyncEnvPool``) episodes keep running while the
weights change, so an iteration cannot end on a group boundary: GAGPO needs
complete groups sampled from one policy version. This loop steps every
environment that still has work in lockstep: one batched policy call for all of
them, then their steps in parallel threads (each ALFWorld engine lives in its own
process, so the threads mostly wait on pipes). Each instance plays whole groups
(``group_size`` consecutive episodes of one task), and an iteration ends when all
assigned groups are complete. The data written is the same as the collector's:
one tensordict row per turn with the environment's keys and ``"next"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from tensordict import TensorDict, TensorDictBase, lazy_stack

__all__ = ["GroupRollout", "RolloutTimes"]


@dataclass
class RolloutTimes:
    """Wall seconds spent in the policy and in the environments (resets included)."""

    policy_s: float = 0.0
    env_s: float = 0.0
    steps: int = 0
    episodes: int = 0
    extra: dict = field(default_factory=dict)


class GroupRollout:
    """Runs whole groups (training) or given tasks (evaluation) over ``envs`` with ``policy``.

    Args:
        envs (sequence of TextAgentEnv): instances with batch size ``(1,)``; each
            keeps its own task sampler and group counter.
        policy (callable): maps a ``[B]`` lazy stack of environment rows to the
            same rows with the policy's outputs (``AdmissibleActionPolicy`` or
            ``GeneratePolicy``).
    """

    def __init__(self, envs: Sequence, policy: Callable[[TensorDictBase], TensorDictBase]) -> None:
        if not envs:
            raise ValueError("GroupRollout needs at least one environment.")
        self.envs = list(envs)
        self.policy = policy
        self._pool = ThreadPoolExecutor(max_workers=len(self.envs), thread_name_prefix="env")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def collect_groups(self, n_groups: int) -> tuple[list[TensorDictBase], RolloutTimes]:
        """``n_groups`` complete groups, spread round-robin over the environments."""
        group_size = self.envs[0].group_size
        w = len(self.envs)
        plans = [[None] * ((n_groups // w + (i < n_groups % w)) * group_size) for i in range(w)]
        return self._run(plans)

    def run_episodes(self, task_ids: Sequence[int], *, policy=None, group_id_base: int = -1
                     ) -> tuple[list[TensorDictBase], RolloutTimes]:
        """One episode per task id (forced resets that do not touch the training groups).

        ``policy`` replaces the rollout's policy for these episodes (e.g. a greedy one).
        """
        plans: list[list] = [[] for _ in self.envs]
        for n, task_id in enumerate(task_ids):
            forced = TensorDict(
                task_id=torch.tensor([[int(task_id)]]), group_id=torch.tensor([[group_id_base - n]]), batch_size=(1,)
            )
            plans[n % len(self.envs)].append(forced)
        return self._run(plans, policy or self.policy)

    def _run(self, plans: list[list], policy=None) -> tuple[list[TensorDictBase], RolloutTimes]:
        policy = policy or self.policy
        times = RolloutTimes()
        current: list[TensorDictBase | None] = [None] * len(self.envs)
        steps: list[list[TensorDictBase]] = [[] for _ in self.envs]
        trajectories: list[TensorDictBase] = []
        plans = [list(p) for p in plans]
        while True:
            # start the next episode where one is due
            starting = [i for i, td in enumerate(current) if td is None and plans[i]]
            if starting:
                t = time.perf_counter()
                resets = self._pool.map(lambda i: self.envs[i].reset(plans[i].pop(0)), starting)
                for i, td in zip(starting, resets):
                    current[i] = td
                times.env_s += time.perf_counter() - t
            active = [i for i, td in enumerate(current) if td is not None]
            if not active:
                break
            t = time.perf_counter()
            acted = policy(lazy_stack([current[i][0] for i in active]))
            times.policy_s += time.perf_counter() - t
            t = time.perf_counter()
            results = list(self._pool.map(lambda a: self.envs[a[0]].step(lazy_stack([a[1]])),
                                          zip(active, acted.unbind(0))))
            times.env_s += time.perf_counter() - t
            for i, out in zip(active, results):
                steps[i].append(out[0])
                times.steps += 1
                if bool(out["next", "done"].reshape(-1)[0]):
                    trajectories.append(lazy_stack(steps[i]))
                    steps[i] = []
                    current[i] = None
                    times.episodes += 1
                else:
                    current[i] = out["next"]
        return trajectories, times
