"""A fast, dependency-free multi-turn text task with revisitable states.

:class:`ToyGame` is a corridor of rooms: the agent starts in the first room and
must reach the last one. ``go forward`` moves one room on (it fails with
probability ``slip``), ``go back`` one room back, and the distractor commands
(``look around``, ``check inventory``, ...) change nothing, so states recur
within and across rollouts. The observation names the room and nothing else:
it *is* the state, so exact values are computable. Pure Python. :class:`ToyTextEnv` serves it through
:class:`~torchrl_gagpo.envs.base.TextAgentEnv`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .base import GameState, TextAgentEnv
from .credit import BACK, DISTRACTORS, FORWARD, ROOMS

__all__ = ["ToyGame", "ToyTask", "ToyTextEnv"]

# the corridor's vocabulary (commands, room names) is the credit chain's: one home, envs/credit.py
_THEMES = (ROOMS[0:8], ROOMS[8:16], ROOMS[16:24])


@dataclass(frozen=True)
class ToyTask:
    """One corridor: ``rooms`` names in order; the last room is the goal."""

    task_id: int
    rooms: tuple[str, ...]

    @property
    def goal(self) -> str:
        return self.rooms[-1]


class ToyGame:
    """The corridor engine (no torch, no TorchRL).

    Args:
        task (ToyTask): the corridor to play.

    Keyword Args:
        slip (float): probability that ``go forward`` fails. Defaults to ``0.0``.
        distractors (int): number of do-nothing commands offered. Defaults to ``2``.
        seed (int): seeds the slips. Defaults to ``0``.

    Examples:
        >>> game = ToyGame(ToyTask(0, ("hall", "kitchen", "garden")))
        >>> game.reset().observation
        'You are in the hall. The goal is the garden.'
        >>> game.step("go forward").observation
        'You are in the kitchen. The goal is the garden.'
        >>> game.step("go forward").won
        True
    """

    def __init__(self, task: ToyTask, *, slip: float = 0.0, distractors: int = 2, seed: int = 0) -> None:
        check_game_options(slip, distractors)
        self.task = task
        self.slip = slip
        self.actions = [FORWARD, BACK, *DISTRACTORS[:distractors]]
        self._rng = random.Random(seed)
        self.position = 0

    def observation(self) -> str:
        return f"You are in the {self.task.rooms[self.position]}. The goal is the {self.task.goal}."

    def _state(self) -> GameState:
        won = self.position == len(self.task.rooms) - 1
        return GameState(self.observation(), list(self.actions), won=won, info={"position": self.position})

    def reset(self) -> GameState:
        self.position = 0
        return self._state()

    def step(self, command: str) -> GameState:
        if command == FORWARD and self._rng.random() >= self.slip:
            self.position = min(self.position + 1, len(self.task.rooms) - 1)
        elif command == BACK:
            self.position = max(self.position - 1, 0)
        return self._state()


def check_game_options(slip: float, distractors: int) -> None:
    """Raise ``ValueError`` for a slip outside ``[0, 1)`` or an unknown number of distractors."""
    if not 0.0 <= slip < 1.0:
        raise ValueError(f"slip must lie in [0, 1), got {slip}.")
    if isinstance(distractors, bool) or not isinstance(distractors, int) or not 0 <= distractors <= len(DISTRACTORS):
        raise ValueError(f"distractors must be an int in [0, {len(DISTRACTORS)}], got {distractors!r}.")


def make_tasks(num_tasks: int, min_rooms: int, max_rooms: int, seed: int = 0) -> list[ToyTask]:
    """Deterministic corridors of ``min_rooms..max_rooms`` rooms (the goal included)."""
    if not 2 <= min_rooms <= max_rooms <= len(_THEMES[0]):
        raise ValueError(f"need 2 <= min_rooms <= max_rooms <= {len(_THEMES[0])}, got {min_rooms}, {max_rooms}.")
    rng = random.Random(f"toy-tasks/{seed}")
    tasks = []
    for task_id in range(num_tasks):
        theme = list(_THEMES[task_id % len(_THEMES)])
        rng.shuffle(theme)
        tasks.append(ToyTask(task_id, tuple(theme[: rng.randint(min_rooms, max_rooms)])))
    return tasks


class ToyTextEnv(TextAgentEnv):
    """The corridor game as a TorchRL multi-turn text environment.

    Keyword Args:
        num_tasks (int): distinct corridors. Defaults to ``8``.
        min_rooms, max_rooms (int): corridor length range, goal included. Defaults to ``3``.
        slip (float): failure probability of ``go forward``. Defaults to ``0.0``.
        distractors (int): do-nothing commands offered. Defaults to ``2``.
        max_steps (int): turns before truncation. Defaults to ``8``.
        success_reward (float): Defaults to ``1.0`` (ALFWorld uses 10).
        **kwargs: the other :class:`~torchrl_gagpo.envs.base.TextAgentEnv` options
            (``group_size``, ``history_length``, ``invalid_action_penalty``, ``seed``, ...).

    Examples:
        >>> env = ToyTextEnv(group_size=2, seed=0)
        >>> td = env.reset()
        >>> td["observation"][0].startswith("You are in the")
        True
        >>> list(td["admissible_actions"][0])
        ['go forward', 'go back', 'look around', 'check inventory']
    """

    env_name = "a corridor of rooms"

    def __init__(
        self,
        *,
        num_tasks: int = 8,
        min_rooms: int = 3,
        max_rooms: int = 3,
        slip: float = 0.0,
        distractors: int = 2,
        max_steps: int = 8,
        success_reward: float = 1.0,
        seed: int = 0,
        tasks: Sequence[ToyTask] | None = None,
        **kwargs,
    ) -> None:
        check_game_options(slip, distractors)
        self.tasks = list(tasks) if tasks is not None else make_tasks(num_tasks, min_rooms, max_rooms, seed)
        if not self.tasks:
            raise ValueError("ToyTextEnv needs at least one task.")
        self.slip = slip
        self.distractors = distractors
        self.game: ToyGame | None = None
        super().__init__(max_steps=max_steps, success_reward=success_reward, seed=seed, **kwargs)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_description(self, task_id: int) -> str:
        return f"reach the {self.tasks[task_id].goal}."

    def demonstration(self, task_id: int) -> list[str]:
        return [FORWARD] * (len(self.tasks[task_id].rooms) - 1)

    def _game_reset(self, task_id: int, episode_seed: int) -> GameState:
        self.game = ToyGame(self.tasks[task_id], slip=self.slip, distractors=self.distractors, seed=episode_seed)
        return self.game.reset()

    def _game_step(self, command: str) -> GameState:
        return self.game.step(command)
