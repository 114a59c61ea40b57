"""GroupCollector on Ray: same episodes as the local backend, weight broadcast, a killed worker."""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time

import pytest
import torch
from collector_envs import TOY, TouchingToyEnv, toy_env
from test_collectors import assert_whole_groups, signature

from torchrl_gagpo.collectors import VERSION_KEY, WORKER_KEY, GroupCollector
from torchrl_gagpo.envs import ToyTextEnv
from torchrl_gagpo.policies import AdmissibleActionPolicy
from torchrl_gagpo.training import TrainConfig
from torchrl_gagpo.training.components import PolicyReplica

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

CFG = TrainConfig(policy="choose", choose_score="mean", seed=11)


@pytest.fixture(scope="module")
def local_ray():
    import collector_envs

    ray.cloudpickle.register_pickle_by_value(collector_envs)  # the test environments travel by value
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def learner(tokenizer):
    from torchrl_gagpo.policies import make_tiny_model

    return make_tiny_model(tokenizer, seed=5)


def local_batch(learner, tokenizer, env_fn=toy_env, **kwargs):
    policy = AdmissibleActionPolicy(learner, tokenizer, score="mean")
    with GroupCollector(env_fn, policy, env_processes=False, **kwargs) as collector:
        return collector.collect_groups()


def test_ray_workers_play_the_same_episodes_as_the_local_backend(local_ray, learner, tokenizer):
    kwargs = {"group_size": 2, "groups_per_batch": 4, "seed": 2}
    with GroupCollector(functools.partial(ToyTextEnv, **TOY), backend="ray", num_workers=2,
                        policy_factory=PolicyReplica(CFG), policy_weights=learner, **kwargs) as collector:
        remote = collector.collect_groups()
        assert {int(w) for t in remote for w in t.get(WORKER_KEY)} == {0, 1}
        assert {int(v) for t in remote for v in t.get(VERSION_KEY)} == {0}
        assert signature(remote) == signature(local_batch(learner, tokenizer, **kwargs))
        # new weights reach every worker: the episodes follow the learner
        with torch.no_grad():
            for p in learner.parameters():
                p.add_(torch.randn_like(p))
        collector.update_policy_weights_()
        updated = collector.collect_groups()
        assert {int(v) for t in updated for v in t.get(VERSION_KEY)} == {1}
        assert signature(updated) == signature(local_batch(learner, tokenizer, seed=2, group_size=2,
                                                           groups_per_batch=8)[8:])


def test_a_killed_worker_is_restarted_and_its_groups_played_again(local_ray, learner, tokenizer, tmp_path, caplog):
    env_fn = functools.partial(TouchingToyEnv, str(tmp_path), 0.1)
    kwargs = {"group_size": 2, "groups_per_batch": 4, "seed": 2}
    with GroupCollector(env_fn, backend="ray", num_workers=2, policy_factory=PolicyReplica(CFG),
                        policy_weights=learner, **kwargs) as collector:
        victim = collector.worker_pids[0]

        def kill_when_stepping():
            deadline = time.time() + 120
            while not (tmp_path / str(victim)).exists() and time.time() < deadline:
                time.sleep(0.02)
            os.kill(victim, signal.SIGKILL)

        killer = threading.Thread(target=kill_when_stepping)
        killer.start()
        with caplog.at_level(logging.WARNING, logger="torchrl_gagpo.collectors"):
            trajectories = collector.collect_groups()
        killer.join()
        assert collector.worker_restarts == 1 and collector.worker_pids[0] != victim
        assert any("ray worker 0 died" in r.message for r in caplog.records)
        assert any("ray worker 0 died" in e for e in collector.events)
    assert_whole_groups(trajectories, 2)
    assert signature(trajectories) == signature(local_batch(learner, tokenizer, env_fn=env_fn, **kwargs))
