"""A controllable credit-assignment task with a known model, and its exact advantages.

:class:`CreditTask` is a chain of ``n_states`` rooms: the agent starts in room 0 and
must reach the last room, the goal, within ``horizon`` turns; entering the goal pays
``success_reward`` and ends the episode, nothing else pays. ``go forward`` moves one
room on, ``go back`` one room back (room 0 stays put), and ``n_distractors``
commands (``look around``, ``wait``, ...) change nothing. With probability ``slip``
the engine executes a uniformly drawn action (the chosen one included) instead of
the chosen one. States recur within a rollout (back moves, distractors, slips) and
across the rollouts of a group (same start). ``revisit`` sets how often a recurring
room is the *same* state: each visit keeps the room's plain name with probability
``revisit``, otherwise its name carries the turn number (``"the hall, turn 3"``), a
state of its own that recurs only across rollouts at the same turn. Names do not
change the dynamics, so the exact values depend on the room and the turn only.
``noise`` makes exact text matching fail the way real observations do: each room is
described by a fixed sentence (``"the hall. You see a brass lamp, an oak chest and a
red rug."``) and each visit, with probability ``noise``, adds a random distractor
clause (``"A clock shows 3:07."``); the underlying state, and hence every exact value,
is unchanged, and the clauses come from their own random stream, so a noisy task plays
exactly the episodes of its clean twin.

The model is public (:meth:`CreditTask.transitions`, :attr:`CreditTask.goal`,
:meth:`CreditTask.reward`), and :func:`exact_values` / :func:`exact_advantages`
compute ``V^pi(s, t)`` and ``A^pi(s, a, t) = Q^pi(s, a, t) - V^pi(s, t)`` of a
stationary stochastic policy by backward induction over the turns. The engine,
:class:`CreditGame`, is pure Python (no torch); :class:`CreditTextEnv` serves it
through :class:`~torchrl_gagpo.envs.base.TextAgentEnv`.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .base import GameState, TextAgentEnv

__all__ = [
    "CreditEpisode", "CreditGame", "CreditTask", "CreditTextEnv", "exact_advantages", "exact_q_values",
    "exact_values", "make_credit_tasks", "policy_matrix", "sample_episodes", "skewed_policy",
]  # fmt: skip

FORWARD, BACK = "go forward", "go back"
DISTRACTORS = (
    "look around", "check inventory", "wait", "examine the walls",
    "read the sign", "listen", "sit down", "hum a tune",
)  # fmt: skip
ADJECTIVES = ("red", "oak", "brass", "dusty", "tall", "broken", "velvet", "iron", "pale", "carved")
ITEMS = ("lamp", "rug", "chest", "mirror", "bench", "shelf", "painting", "barrel", "crate", "statue")
CLAUSES = (
    "A clock shows {h}:{m:02d}.", "You hear {n} knocks.", "A {adj} moth circles {n} times.",
    "Somewhere a dog barks {n} times.", "The draught moves {n} leaves.", "A {adj} candle burns low.",
    "Rain taps {n} times on the window.", "A voice counts to {n}.",
)  # fmt: skip
ROOMS = (
    "hall", "corridor", "library", "kitchen", "cellar", "attic", "studio", "garden",
    "dock", "warehouse", "office", "lab", "vault", "roof", "tunnel", "harbour",
    "cave", "bridge", "tower", "forest", "meadow", "river", "temple", "summit",
    "pantry", "gallery", "chapel", "armoury", "nursery", "balcony", "stable", "cloister",
)  # fmt: skip
#: a stochastic policy: ``fn(room) -> probabilities over task.actions``, or an ``[n_states, n_actions]`` array
Policy = Callable[[int], Sequence[float]] | np.ndarray | Sequence[Sequence[float]]


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int)
    if bad or value < low or (high is not None and value > high):
        bound = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")


@dataclass(frozen=True)
class CreditTask:
    """The known model of one chain: rooms ``0 .. n_states - 1``, start 0, goal ``n_states - 1``.

    Keyword Args:
        task_id (int): Defaults to ``0``.
        n_states (int): rooms, the goal included, in ``[2, 32]``. Defaults to ``5``.
        n_distractors (int): do-nothing commands, in ``[0, 8]``. Defaults to ``2``.
        horizon (int): turns before truncation, ``>= n_states - 1``. Defaults to ``12``.
        slip (float): probability that a uniformly drawn action replaces the chosen
            one, in ``[0, 1)``. Defaults to ``0.0``.
        revisit (float): probability that a visit shows the room's plain name (else
            the name with the turn), in ``[0, 1]``. Defaults to ``1.0``.
        noise (float): with ``noise > 0`` observations carry the room's fixed description,
            and each visit a random distractor clause with probability ``noise``, in
            ``[0, 1]``. Defaults to ``0.0`` (the plain name).
        success_reward (float): reward of the turn that enters the goal. Defaults to ``1.0``.
        rooms (tuple[str, ...]): room names; default the first ``n_states`` of :data:`ROOMS`.

    Examples:
        >>> task = CreditTask(n_states=3, n_distractors=1, slip=0.3)
        >>> task.actions
        ('go forward', 'go back', 'look around')
        >>> [(round(p, 2), s) for p, s in task.transitions(1, "go forward")]
        [(0.1, 0), (0.1, 1), (0.8, 2)]
    """

    task_id: int = 0
    n_states: int = 5
    n_distractors: int = 2
    horizon: int = 12
    slip: float = 0.0
    revisit: float = 1.0
    noise: float = 0.0
    success_reward: float = 1.0
    rooms: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        _check_int("n_states", self.n_states, 2, len(ROOMS))
        _check_int("n_distractors", self.n_distractors, 0, len(DISTRACTORS))
        _check_int("horizon", self.horizon, 1)
        if self.horizon < self.n_states - 1:
            raise ValueError(f"horizon {self.horizon} is too short: the goal is {self.goal} moves away.")
        if not 0.0 <= self.slip < 1.0:
            raise ValueError(f"slip must lie in [0, 1), got {self.slip}.")
        if not 0.0 <= self.revisit <= 1.0:
            raise ValueError(f"revisit must lie in [0, 1], got {self.revisit}.")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must lie in [0, 1], got {self.noise}.")
        if not np.isfinite(self.success_reward):
            raise ValueError(f"success_reward must be finite, got {self.success_reward}.")
        rooms = tuple(self.rooms) or ROOMS[: self.n_states]
        if len(rooms) != self.n_states or len(set(rooms)) != self.n_states:
            raise ValueError(f"rooms must be {self.n_states} distinct names, got {rooms!r}.")
        object.__setattr__(self, "rooms", rooms)

    @property
    def actions(self) -> tuple[str, ...]:
        """The commands, always admissible: forward, back, then the distractors."""
        return (FORWARD, BACK, *DISTRACTORS[: self.n_distractors])

    @property
    def n_actions(self) -> int:
        return 2 + self.n_distractors

    start = 0

    @property
    def goal(self) -> int:
        """The terminal state; entering it pays :attr:`success_reward`."""
        return self.n_states - 1

    def is_terminal(self, state: int) -> bool:
        return state == self.goal

    def action_index(self, action: int | str) -> int:
        """Index of ``action`` (a name of :attr:`actions` or an index)."""
        if isinstance(action, str):
            try:
                return self.actions.index(action)
            except ValueError:
                raise ValueError(f"unknown action {action!r}; the actions are {list(self.actions)}") from None
        _check_int("action", action, 0, self.n_actions - 1)
        return action

    def effect(self, state: int, action: int) -> int:
        """The room an executed action leads to (deterministic; ``action`` is an index)."""
        if action == 0:
            return min(state + 1, self.goal)
        if action == 1:
            return max(state - 1, 0)
        return state

    def transitions(self, state: int, action: int | str) -> list[tuple[float, int]]:
        """``[(probability, next_state), ...]`` from a non-terminal ``state``, one per next state, sorted."""
        _check_int("state", state, 0, self.goal - 1)
        a = self.action_index(action)
        outcomes: dict[int, float] = {}
        for b in range(self.n_actions):
            p = self.slip / self.n_actions + (1.0 - self.slip) * (b == a)
            if p > 0:
                nxt = self.effect(state, b)
                outcomes[nxt] = outcomes.get(nxt, 0.0) + p
        return [(p, s) for s, p in sorted(outcomes.items())]

    def reward(self, state: int, action: int | str, next_state: int) -> float:
        """The reward of a transition: :attr:`success_reward` on entering the goal, else 0."""
        return self.success_reward if next_state == self.goal else 0.0

    def transition_matrix(self) -> np.ndarray:
        """``P[s, a, s']`` as a float64 array; the goal's rows are zero (absorbing, no decisions)."""
        P = np.zeros((self.n_states, self.n_actions, self.n_states))
        for s in range(self.goal):
            for a in range(self.n_actions):
                for p, nxt in self.transitions(s, a):
                    P[s, a, nxt] += p
        return P

    def state_name(self, state: int, turn: int | None = None) -> str:
        """The observation of a room: ``"the hall"``, or ``"the hall, turn 3"`` with a turn."""
        return f"the {self.rooms[state]}" if turn is None else f"the {self.rooms[state]}, turn {turn}"

    def describe(self, state: int) -> str:
        """The room's fixed description (three items drawn from a seed of its name), used with ``noise``.

        Examples:
            >>> CreditTask().describe(0) == CreditTask().describe(0)
            True
        """
        rng = random.Random(f"credit-room/{self.rooms[state]}")
        items = [f"{rng.choice(ADJECTIVES)} {rng.choice(ITEMS)}" for _ in range(3)]
        article = ["an" if item[0] in "aeiou" else "a" for item in items]
        return f"You see {article[0]} {items[0]}, {article[1]} {items[1]} and {article[2]} {items[2]}."


class CreditGame:
    """The engine of one :class:`CreditTask` (pure Python, seeded slips and names).

    An unknown command changes nothing (and never slips); every command uses up a turn.

    Examples:
        >>> game = CreditGame(CreditTask(n_states=3))
        >>> game.reset().observation
        'the hall'
        >>> game.step("wait").observation, game.step("go forward").observation
        ('the hall', 'the corridor')
        >>> game.step("go forward").won
        True
    """

    def __init__(self, task: CreditTask, *, seed: int = 0) -> None:
        self.task = task
        self._index = {name: i for i, name in enumerate(task.actions)}
        self._rng = random.Random(seed)
        self._noise_rng = random.Random(f"credit-noise/{seed}")  # own stream: noise never changes the play
        self.position = task.start
        self.turn = 0
        self.name = task.state_name(task.start)

    def _visit(self) -> GameState:
        task = self.task
        plain = task.revisit == 1.0 or self._rng.random() < task.revisit
        self.name = task.state_name(self.position, None if plain else self.turn)
        if task.noise > 0:
            self.name = f"{self.name}. {task.describe(self.position)}"
            if self._noise_rng.random() < task.noise:
                rng = self._noise_rng
                clause = rng.choice(CLAUSES).format(h=rng.randrange(1, 13), m=rng.randrange(60),
                                                    n=rng.randrange(2, 40), adj=rng.choice(ADJECTIVES))
                self.name = f"{self.name} {clause}"
        won = self.position == task.goal
        info = {"position": self.position, "turn": self.turn}
        return GameState(self.name, list(task.actions), won=won, info=info)

    def reset(self) -> GameState:
        self.position, self.turn = self.task.start, 0
        return self._visit()

    def step(self, command: str) -> GameState:
        a = self._index.get(command)
        if a is not None:
            if self.task.slip > 0 and self._rng.random() < self.task.slip:
                a = self._rng.randrange(self.task.n_actions)
            self.position = self.task.effect(self.position, a)
        self.turn += 1
        return self._visit()


# ---------------------------------------------------------------------------------------
# policies and exact dynamic programming
# ---------------------------------------------------------------------------------------
def policy_matrix(task: CreditTask, policy: Policy) -> np.ndarray:
    """``pi[s, a]`` (float64) of a policy given as a function of the room or as an array."""
    if callable(policy):
        rows = [np.asarray(policy(s), dtype=np.float64) for s in range(task.n_states)]
        if any(r.shape != (task.n_actions,) for r in rows):
            raise ValueError(f"policy(state) must return {task.n_actions} probabilities (one per action).")
        pi = np.stack(rows)
    else:
        pi = np.asarray(policy, dtype=np.float64)
    if pi.shape != (task.n_states, task.n_actions):
        shape = (task.n_states, task.n_actions)
        raise ValueError(f"policy must have shape (n_states, n_actions) = {shape}, got {pi.shape}.")
    if not np.isfinite(pi).all() or (pi < 0).any() or not np.allclose(pi.sum(1), 1.0, atol=1e-6):
        raise ValueError("policy rows must be finite, non-negative probabilities that sum to 1.")
    return pi


def skewed_policy(task: CreditTask, p_forward: float) -> np.ndarray:
    """``go forward`` with probability ``p_forward``, the rest shared uniformly by the other actions.

    ``p_forward = 1 / n_actions`` is the uniform policy.
    """
    if not 0.0 <= p_forward <= 1.0:
        raise ValueError(f"p_forward must lie in [0, 1], got {p_forward}.")
    pi = np.full((task.n_states, task.n_actions), (1.0 - p_forward) / (task.n_actions - 1))
    pi[:, 0] = p_forward
    return pi


def exact_q_values(
    task: CreditTask, policy: Policy, gamma: float, max_steps: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, V)`` of a stationary policy, by backward induction over the turns.

    ``V[t, s]`` is the expected discounted return ``sum_k gamma^k r_{t+k}`` from room
    ``s`` when ``t`` turns are used up, ``t = 0 .. max_steps``; ``Q[t, s, a]`` is the
    same after taking ``a`` at turn ``t``. An episode is truncated after ``max_steps``
    turns with nothing bootstrapped, so ``V[max_steps] = 0`` and the values depend on
    the turns left, not only on the room. The goal is terminal: its values are 0.

    Args:
        task (CreditTask): the model.
        policy: ``fn(room) -> probabilities over task.actions`` or an ``[n_states, n_actions]`` array.
        gamma (float): discount in ``[0, 1]``.
        max_steps (int, optional): turns before truncation. Defaults to ``task.horizon``.

    Returns:
        ``Q`` of shape ``[max_steps, n_states, n_actions]`` and ``V`` of shape ``[max_steps + 1, n_states]``.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}.")
    max_steps = task.horizon if max_steps is None else max_steps
    _check_int("max_steps", max_steps, 1)
    pi = policy_matrix(task, policy)
    P = task.transition_matrix()  # [S, A, S']
    R = P[:, :, task.goal] * task.success_reward  # expected reward of a step, [S, A]
    alive = np.ones(task.n_states)
    alive[task.goal] = 0.0  # nothing follows the goal
    Q = np.zeros((max_steps, task.n_states, task.n_actions))
    V = np.zeros((max_steps + 1, task.n_states))
    for t in range(max_steps - 1, -1, -1):
        Q[t] = R + gamma * (P @ (alive * V[t + 1]))
        V[t] = (pi * Q[t]).sum(1)
    return Q, V


def exact_values(task: CreditTask, policy: Policy, gamma: float, max_steps: int | None = None) -> np.ndarray:
    """``V[t, s]``, shape ``[max_steps + 1, n_states]``; see :func:`exact_q_values`.

    Examples:
        >>> task = CreditTask(n_states=2, n_distractors=0, horizon=2)
        >>> exact_values(task, [[0.5, 0.5], [0.5, 0.5]], gamma=0.5)[:, 0].tolist()
        [0.625, 0.5, 0.0]
    """
    return exact_q_values(task, policy, gamma, max_steps)[1]


def exact_advantages(
    task: CreditTask, policy: Policy, gamma: float, max_steps: int | None = None
) -> np.ndarray:
    """``A[t, s, a] = Q[t, s, a] - V[t, s]``, shape ``[max_steps, n_states, n_actions]`` (0 at the goal).

    Under the policy it averages to zero in every room and turn: ``sum_a pi[s, a] A[t, s, a] = 0``.
    """
    Q, V = exact_q_values(task, policy, gamma, max_steps)
    return Q - V[:-1, :, None]


# ---------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------
@dataclass
class CreditEpisode:
    """One rollout: per step the state's name, room, turn, chosen action index and reward."""

    names: list[str]
    rooms: list[int]
    actions: list[int]
    rewards: list[float]
    won: bool

    @property
    def turns(self) -> list[int]:
        return list(range(len(self.actions)))


def sample_episodes(task: CreditTask, policy: Policy, n: int, *, seed: int = 0) -> list[CreditEpisode]:
    """``n`` episodes of ``policy`` played on :class:`CreditGame` (seeded), truncated at ``task.horizon``."""
    _check_int("n", n, 0)
    cum = np.cumsum(policy_matrix(task, policy), 1).tolist()
    pick = random.Random(f"credit-policy/{seed}")
    episodes = []
    for k in range(n):
        game = CreditGame(task, seed=seed * 1_000_003 + k)
        state = game.reset()
        names, rooms, actions, rewards = [], [], [], []
        while True:
            room = game.position
            a = min(bisect.bisect_right(cum[room], pick.random() * cum[room][-1]), task.n_actions - 1)
            names.append(state.observation), rooms.append(room), actions.append(a)
            state = game.step(task.actions[a])
            rewards.append(task.success_reward if state.won else 0.0)
            if state.won or game.turn >= task.horizon:
                break
        episodes.append(CreditEpisode(names, rooms, actions, rewards, state.won))
    return episodes


def make_credit_tasks(num_tasks: int, *, seed: int = 0, **options) -> list[CreditTask]:
    """``num_tasks`` chains with the same ``options`` (see :class:`CreditTask`) and seeded room names."""
    _check_int("num_tasks", num_tasks, 1)
    n_states = options.get("n_states", CreditTask.n_states)
    _check_int("n_states", n_states, 2, len(ROOMS))
    rng = random.Random(f"credit-tasks/{seed}")
    rooms = [tuple(rng.sample(ROOMS, n_states)) for _ in range(num_tasks)]
    return [CreditTask(task_id=k, rooms=rooms[k], **options) for k in range(num_tasks)]


class CreditTextEnv(TextAgentEnv):
    """The credit-assignment chain as a TorchRL multi-turn text environment.

    The observation is the state's name (``"the hall"`` or ``"the hall, turn 3"``);
    every command of the task is admissible in every room. The task's horizon is
    ``max_steps`` and its goal reward ``success_reward``, so :func:`exact_values` of
    ``env.tasks[k]`` are the values of this environment's episodes (with valid replies).

    Keyword Args:
        num_tasks (int): chains with different room names. Defaults to ``8``.
        n_states, n_distractors, slip, revisit, noise: see :class:`CreditTask`.
        max_steps (int): turns before truncation. Defaults to ``12``.
        success_reward (float): Defaults to ``1.0``.
        **kwargs: the other :class:`~torchrl_gagpo.envs.base.TextAgentEnv` options.

    Examples:
        >>> env = CreditTextEnv(group_size=2, n_states=4, seed=0)
        >>> list(env.reset()["admissible_actions"][0])
        ['go forward', 'go back', 'look around', 'check inventory']
    """

    env_name = "a chain of rooms"

    def __init__(
        self,
        *,
        num_tasks: int = 8,
        n_states: int = 5,
        n_distractors: int = 2,
        slip: float = 0.0,
        revisit: float = 1.0,
        noise: float = 0.0,
        max_steps: int = 12,
        success_reward: float = 1.0,
        seed: int = 0,
        **kwargs,
    ) -> None:
        self.tasks = make_credit_tasks(
            num_tasks, seed=seed, n_states=n_states, n_distractors=n_distractors, horizon=max_steps,
            slip=slip, revisit=revisit, noise=noise, success_reward=success_reward,
        )  # fmt: skip
        self.game: CreditGame | None = None
        super().__init__(max_steps=max_steps, success_reward=success_reward, seed=seed, **kwargs)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_description(self, task_id: int) -> str:
        task = self.tasks[task_id]
        return f"reach {task.state_name(task.goal)}."

    def demonstration(self, task_id: int) -> list[str]:
        return [FORWARD] * self.tasks[task_id].goal

    def _game_reset(self, task_id: int, episode_seed: int) -> GameState:
        self.game = CreditGame(self.tasks[task_id], seed=episode_seed)
        return self.game.reset()

    def _game_step(self, command: str) -> GameState:
        return self.game.step(command)
