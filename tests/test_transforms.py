"""StateKey (environment side) and StateKeyGrouping (replay-buffer side)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import paper_group, trajectory
from tensordict import NonTensorStack, TensorDict, lazy_stack
from torchrl.data import LazyStackStorage, ReplayBuffer
from torchrl.envs import TransformedEnv
from torchrl.envs.utils import check_env_specs

from torchrl_gagpo import GroupedGAE, StateKey, StateKeyGrouping, state_digest
from torchrl_gagpo.envs import ToyTextEnv


class TestStateKey:
    def test_normalised_text(self):
        td = TensorDict(observation=NonTensorStack("in the hall", " in  the hall\n", "in the garden"), batch_size=[3])
        keys = StateKey()(td)["state_key"].reshape(-1).tolist()
        assert keys[0] == keys[1] != keys[2]
        assert keys[0] == state_digest("in the hall") and keys[0] >= 0

    def test_identical_across_processes(self):
        code = "from torchrl_gagpo import state_digest; print(state_digest('You are in the kitchen.'))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert int(out.stdout.strip()) == state_digest("You are in the kitchen.")

    def test_key_fn_and_several_texts(self):
        td = TensorDict(
            observation=NonTensorStack("hall", "hall"), inventory=NonTensorStack("apple", "key"), batch_size=[2]
        )
        both = StateKey(["observation", "inventory"])(td.clone())["state_key"].reshape(-1)
        assert both[0] != both[1]
        only_obs = StateKey(["observation", "inventory"], key_fn=lambda obs, inv: obs)(td.clone())["state_key"]
        assert only_obs[0] == only_obs[1]
        with pytest.raises(ValueError, match="must return a str"):
            StateKey(["observation"], key_fn=lambda obs: 3)(td.clone())

    def test_writes_root_and_next(self):
        td = TensorDict(
            observation=NonTensorStack("a", "b"),
            next=TensorDict(observation=NonTensorStack("b", "c"), batch_size=[2]),
            batch_size=[2],
        )
        StateKey()(td)
        assert td["state_key"][1] == td["next", "state_key"][0]

    def test_in_env(self):
        env = TransformedEnv(ToyTextEnv(seed=1), StateKey(["observation"], out_key="obs_key"))
        check_env_specs(env)
        td = env.reset()
        # the toy env's own state_key digests the observation too
        assert td["obs_key"].item() == td["state_key"].item()

    def test_bad_input(self):
        with pytest.raises(ValueError, match="at least one"):
            StateKey([])
        with pytest.raises(KeyError, match="observation"):
            StateKey()(TensorDict(other=NonTensorStack("x"), batch_size=[1]))


def flat(td, key):
    return td.get(key).reshape(-1).tolist()


class TestStateKeyGrouping:
    def test_group_over_several_extends(self):
        t = StateKeyGrouping(3)
        a, b, c = paper_group(5)
        assert t.inv(a) is None and t.inv(b) is None
        assert t.pending_groups == 1 and t.pending_trajectories == 2
        out = t.inv(c)
        assert out.shape == (10,)
        # states s0..s4 of group 5 -> dense ids; s0 appears 3 times, s1 twice
        assert flat(out, "state_group") == [0, 1, 2, 0, 3, 1, 2, 0, 3, 4]
        assert flat(out, "state_group_size") == [3, 2, 2, 3, 2, 2, 2, 3, 2, 1]
        assert flat(out, "group_size") == [3] * 10
        assert t.get_stats()["released_groups"] == 1 and t.pending_groups == 0

    def test_interleaved_groups_in_one_batch(self):
        g0, g1 = paper_group(0), paper_group(1)
        batch = torch.cat([g0[0], g1[0], g1[1], g0[1], g1[2], g0[2]])
        out = StateKeyGrouping(3, estimator=GroupedGAE(normalize="none")).inv(batch)
        assert out.shape == (20,)
        gid = out["group_id"].reshape(-1)
        # group 1 completed first; each group's advantages equal the single-group result
        ref = GroupedGAE(normalize="none")(torch.cat(paper_group(1)))["advantage"]
        torch.testing.assert_close(out["advantage"][gid == 1], ref)
        # state groups never mix rollout groups and are unique across the release
        sg = out["state_group"].reshape(-1)
        assert set(sg[gid == 0].tolist()).isdisjoint(sg[gid == 1].tolist())

    def test_state_groups_unique_across_releases(self):
        t = StateKeyGrouping(1)
        first = t.inv(trajectory(0, [1, 2], [0, 1]))
        second = t.inv(trajectory(1, [1, 2], [0, 1]))
        assert flat(first, "state_group") == [0, 1] and flat(second, "state_group") == [2, 3]

    def test_two_dimensional_input(self):
        a, b = paper_group(0)[0], paper_group(1)[0]  # two 3-step trajectories as rows of [2, 3]
        out = StateKeyGrouping(1).inv(torch.stack([a, b]))
        assert out.shape == (6,) and flat(out, "group_id") == [0, 0, 0, 1, 1, 1]

    def test_incomplete_trajectory_queues_nothing(self):
        t = StateKeyGrouping(2)
        bad = torch.cat([trajectory(0, [0, 1], [0, 1]), trajectory(0, [0, 1], [0, 0])[:1]])
        with pytest.raises(ValueError, match="incomplete trajectory"):
            t.inv(bad)
        assert t.pending_trajectories == 0

    def test_group_id_change_without_done(self):
        traj = trajectory(0, [0, 1, 2], [0, 0, 1])
        traj.set("group_id", torch.tensor([[0], [0], [1]]))
        with pytest.raises(ValueError, match="group_id changes"):
            StateKeyGrouping(1).inv(traj)

    def test_flush_and_clear(self):
        t = StateKeyGrouping(4, estimator=GroupedGAE())
        for traj in paper_group(0):
            assert t.inv(traj) is None
        out = t.flush()
        assert out.shape == (10,) and flat(out, "group_size") == [3] * 10
        assert torch.isfinite(out["advantage"]).all()
        assert t.flush() is None and t.get_stats()["flushed_groups"] == 1
        # what flush returns is written unchanged by the buffer
        rb = ReplayBuffer(storage=LazyStackStorage(100), transform=t)
        rb.extend(out)
        assert len(rb) == 10
        t.inv(paper_group(1)[0])
        t.clear()
        assert t.pending_groups == 0

    def test_drop_uniform_groups(self):
        t = StateKeyGrouping(2, drop_uniform_groups=True)
        assert t.inv(torch.cat([trajectory(0, [0, 1], [0, 0]), trajectory(0, [0, 2], [0, 0])])) is None
        assert t.dropped_groups == 1
        out = t.inv(torch.cat([trajectory(1, [0, 1], [0, 1]), trajectory(1, [0, 2], [0, 0])]))
        assert out.shape == (4,)

    def test_ragged_token_data(self):
        steps = []
        for i, traj in enumerate(paper_group(0)):
            for j, step in enumerate(traj.unbind(0)):
                step = step.clone()
                step.set(("tokens", "full"), torch.arange(3 + i + j))
                steps.append(step)
        out = StateKeyGrouping(3, estimator=GroupedGAE()).inv(lazy_stack(steps))
        lengths = [x.numel() for x in out.get(("tokens", "full"), as_list=True)]
        assert lengths == [3, 4, 5, 4, 5, 6, 7, 5, 6, 7]
        assert out["advantage"].shape == (10, 1)

    def test_through_replay_buffer(self):
        rb = ReplayBuffer(storage=LazyStackStorage(100), transform=StateKeyGrouping(3, estimator=GroupedGAE()))
        g0, g1 = paper_group(0), paper_group(1)
        rb.extend(torch.cat([g0[0], g1[0]]))
        assert len(rb) == 0
        rb.extend(torch.cat([g0[1], g0[2], g1[1]]))
        assert len(rb) == 10
        rb.extend(g1[2])
        assert len(rb) == 20 and "advantage" in rb[:].keys()

    @pytest.mark.parametrize("group_size", [0, -1, 1.5, True])
    def test_bad_group_size(self, group_size):
        with pytest.raises(ValueError, match="group_size"):
            StateKeyGrouping(group_size)

    def test_missing_keys(self):
        with pytest.raises(KeyError, match="group_id"):
            StateKeyGrouping(1).inv(trajectory(0, [0], [1.0]).exclude("group_id"))
        with pytest.raises(KeyError, match="state_key"):
            StateKeyGrouping(1).inv(trajectory(0, [0], [1.0]).exclude("state_key"))


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
