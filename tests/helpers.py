"""Builders of small trajectory batches on the data contract."""

from __future__ import annotations

import torch
from tensordict import TensorDict


def trajectory(group_id: int, states: list[int], rewards: list[float], **extra) -> TensorDict:
    """One complete trajectory: ``group_id``, ``state_key`` and ``("next", reward/done/terminated)``."""
    t = len(states)
    done = torch.zeros(t, 1, dtype=torch.bool)
    done[-1] = True
    td = TensorDict(
        group_id=torch.full((t, 1), group_id),
        state_key=torch.tensor(states).view(t, 1),
        next=TensorDict(
            reward=torch.tensor(rewards, dtype=torch.float32).view(t, 1),
            done=done,
            terminated=done.clone(),
            batch_size=[t],
        ),
        batch_size=[t],
    )
    for key, value in extra.items():
        td.set(key, value)
    return td


def paper_group(group_id: int = 0) -> list[TensorDict]:
    """The three-trajectory example of docs/algorithm.md (states s0..s4, reward 10 on success)."""
    return [
        trajectory(group_id, [0, 1, 2], [0, 0, 10]),
        trajectory(group_id, [0, 3, 1, 2], [0, 0, 0, 10]),
        trajectory(group_id, [0, 3, 4], [0, 0, 0]),
    ]
