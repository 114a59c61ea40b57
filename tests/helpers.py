"""Shared test helpers: small trajectory and action batches on the data contract, env stepping, processes."""

from __future__ import annotations

import contextlib
import threading

import torch
from tensordict import TensorDict, lazy_stack
from torchrl.data.llm import History
from torchrl.modules.llm.policies import ChatHistory


def with_reply(td, reply):
    """``td`` (a reset/next tensordict) plus an action: the full history ending with ``reply``.

    ``reply=None`` builds a full history whose last message is the user's (no assistant reply).
    """
    prompt = td["history"].prompt
    full = prompt[0]
    if reply is not None:
        full = full.append(History(role="assistant", content=reply, batch_size=()), inplace=False)
    td = td.copy()
    td["history"] = ChatHistory(prompt=prompt, full=lazy_stack([full]), batch_size=(1,))
    return td


def step(env, td, reply):
    """One env step with the assistant reply ``reply``; returns the ``next`` tensordict."""
    return env.step(with_reply(td, reply))["next"]


def tagged(action: str) -> str:
    """A well-formed reply that takes ``action``."""
    return f"<think>let me see</think><action>{action}</action>"


def force(task_id: int, group_id: int = 100) -> TensorDict:
    """A reset tensordict that starts ``task_id`` in group ``group_id`` (does not use up a group member)."""
    return TensorDict(task_id=torch.tensor([[task_id]]), group_id=torch.tensor([[group_id]]), batch_size=(1,))


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


def child_pids(parent: int, command_part: str = "") -> list[int]:
    """Live (non-zombie) children of ``parent`` whose command line contains ``command_part`` (Linux)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z" and command_part in cmdline:
            found.append(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def serving(server):
    """``server.serve_forever()`` in a daemon thread for the ``with`` block, then shut down and closed."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def token_log_probs(model, full: torch.Tensor) -> torch.Tensor:
    """Log-prob of every token of ``full`` given its prefix (position 0: NaN), one sequence."""
    logits = model(input_ids=full[None]).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1).gather(-1, full[1:, None]).squeeze(-1)
    return torch.cat([torch.full((1,), float("nan")), logp])


def make_actions(model, advantages, *, seed: int = 0, prompt_len=(5, 12), response_len=(1, 6), vocab=400):
    """A batch of actions with behaviour log-probs scored by ``model`` (NaN on prompt positions)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for a in advantages:
            p = torch.randint(3, vocab, (int(torch.randint(*prompt_len, (1,), generator=g)),), generator=g)
            r = torch.randint(3, vocab, (int(torch.randint(*response_len, (1,), generator=g)),), generator=g)
            full = torch.cat([p, r])
            lp = token_log_probs(model, full)
            lp[: p.numel()] = float("nan")
            rows.append(
                TensorDict(
                    tokens=TensorDict(prompt=p, response=r, full=full),
                    log_probs=TensorDict(full=lp),
                    advantage=torch.tensor([float(a)]),
                )
            )
    return lazy_stack(rows)


# -- text environments (test_envs.py, test_env_replies.py) --------------------------------

act = tagged  # an action wrapped in <action> tags


def prompt_text(td) -> str:
    """Content of the (last) user message of ``history.prompt``."""
    prompt = td["history"].prompt
    assert prompt[0, -1].role == "user"
    return prompt[0, -1].content


def scalar(td, key):
    value = td[key]
    assert value.shape == (1, 1), (key, value.shape)
    return value.item()


def obs(td) -> str:
    return td["observation"][0]


def play_episode(env, actions, td=None):
    """Reset (unless ``td`` is given) and play ``actions`` cyclically until done; return the steps."""
    td = env.reset() if td is None else td
    steps = [td]
    i = 0
    while True:
        td = step(env, td, act(actions[i % len(actions)]))
        steps.append(td)
        i += 1
        if scalar(td, "done"):
            return steps
