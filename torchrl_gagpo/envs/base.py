"""TextAgentEnv: the shared machinery of the multi-turn text environments.

One environment step is one agent turn (one LLM call). The base class owns
what every text game shares: the windowed prompt, ``<action>`` parsing and the
invalid-action penalty, state keys, rollout groups (G episodes of one task from
one initial state, a fresh ``group_id`` per draw) and the TorchRL specs. A
subclass plugs a game engine in through two hooks, :meth:`_game_reset` and
:meth:`_game_step`.
"""

from __future__ import annotations

import logging
import random
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, NonTensor, Unbounded
from torchrl.data.llm import History
from torchrl.envs.llm import ChatEnv
from torchrl.modules.llm.policies import ChatHistory

from torchrl_gagpo._utils import ROLE_MARKER_PATTERN, normalize_text, prompt_safe, state_digest

__all__ = ["GameState", "TextAgentEnv", "episode_summary", "extract_action", "parse_action"]

logger = logging.getLogger(__name__)

MAX_RESPONSE_CHARS = 10_000
_TAGS = re.IGNORECASE | re.DOTALL | re.ASCII
_ACTION_RE = re.compile(r"<action>(.*?)</action>", _TAGS)
_OPEN_RE = re.compile(r"<action>", _TAGS)
_CLOSE_RE = re.compile(r"</action>", _TAGS)
# undecodable bytes (U+FFFD), NUL and lone surrogates: removed from the command, the reply is invalid
_UNDECODABLE = re.compile("[\ufffd\x00\ud800-\udfff]")


def extract_action(text: Any) -> tuple[str, bool]:
    """The command inside an LLM reply and whether the reply is well-formed; see :func:`parse_action`.

    Examples:
        >>> extract_action("<think>hm</think><action> Go  Forward </action>")
        ('go forward', True)
        >>> extract_action("no tags at all")
        ('no tags at all', False)
    """
    if not isinstance(text, str):
        return "", False
    clean = _UNDECODABLE.sub("", ROLE_MARKER_PATTERN.sub(" ", text))
    too_long = len(text) > MAX_RESPONSE_CHARS
    window = clean[-30:] if too_long else clean
    matches = _ACTION_RE.findall(window)
    tagged = len(matches) == 1 and len(_OPEN_RE.findall(window)) == 1 and len(_CLOSE_RE.findall(window)) == 1
    command = normalize_text(matches[-1] if matches else window[-30:]).lower()
    return command, bool(tagged and command and not too_long and clean == text)


def parse_action(text: Any, admissible: Sequence[str]) -> tuple[str, bool]:
    """Extract the action of an LLM reply; return ``(command, valid)``.

    The reply must hold exactly one ``<action>...</action>``; its content is
    whitespace-collapsed and matched case-insensitively against ``admissible``.
    Anything else is invalid: no or unbalanced tags, several actions, an empty
    or inadmissible action, a reply longer than 10,000 characters, undecodable
    bytes (U+FFFD), lone surrogates, NUL characters or injected chat-role markers
    of any common chat template (:data:`torchrl_gagpo._utils.ROLE_MARKERS`). The command
    of an invalid reply is still what the engine receives, as in verl-agent:
    the tag content, or the reply's last 30 characters when there is no single
    tag, with role markers and undecodable characters removed. The engine
    answers it like any other command (an inadmissible one changes nothing).

    Examples:
        >>> parse_action("<think>hm</think><action> Go  Forward </action>", ["go forward", "look"])
        ('go forward', True)
        >>> parse_action("<action>fly</action>", ["go forward"])
        ('fly', False)
        >>> parse_action("<action>look</action><action>look</action>", ["look"])
        ('look', False)
    """
    command, well_formed = extract_action(text)
    if not well_formed:
        return command, False
    lookup = {normalize_text(a).lower(): a for a in admissible}
    if command in lookup:
        return lookup[command], True
    return command, False


@dataclass
class GameState:
    """What a game engine reports after a reset or a step.

    Attributes:
        observation: the text the agent sees now.
        admissible_actions: the commands the engine accepts now.
        won: the task is solved.
        info: engine extras (``task_type``, ...).
        finished: the episode is over even though the task may not be solved
            (WebShop: a purchase). A won episode is always over.
        score: the task's graded score in [0, 1] (WebShop's purchase score);
            ``None`` means ``float(won)``.
    """

    observation: str
    admissible_actions: list[str]
    won: bool = False
    info: dict = field(default_factory=dict)
    finished: bool = False
    score: float | None = None


DEFAULT_PROMPT = (
    "You are an expert agent in {env_name}. Your task is to: {task}\n"
    "{history}"
    "You are now at step {step} and your current observation is: {observation}\n"
    "Your admissible actions of the current situation are: [{actions}].\n\n"
    "Now it's your turn to take an action. First reason step by step about the current situation "
    "inside <think> </think> tags. Then choose one admissible action for the current step and give it "
    "inside <action> </action> tags."
)
HISTORY_BLOCK = (
    "Before this step you have taken {n_steps} step(s). Your most recent {n_shown} observations "
    "and the actions you took are: {pairs}\n"
)


def episode_summary(records: list[dict]) -> dict:
    """Success rate, episode count, mean return and mean length of evaluation records."""
    n = max(len(records), 1)
    return {
        "success": sum(r["won"] for r in records) / n,
        "episodes": len(records),
        "return_mean": sum(r["return"] for r in records) / n,
        "episode_length": sum(r["length"] for r in records) / n,
    }


class TextAgentEnv(ChatEnv):
    """Base class of the multi-turn text environments (batch size ``(1,)``).

    Each reset starts an episode of the current rollout group: ``group_size``
    consecutive *completed* episodes share one task, one initial state and one
    ``group_id``; then a new task is drawn (seeded) with a fresh ``group_id``. A
    reset whose episode is never stepped (such as a collector's priming reset)
    does not use up a group member. A reset tensordict carrying ``task_id`` and
    ``group_id`` (for example from torchrl's ``DataLoadingPrimer``) overrides
    the draw.

    Every step writes the data contract of ``torchrl_gagpo``: ``history.prompt``
    (the next prompt), ``observation``, ``admissible_actions``, ``state_key``,
    ``task_id``, ``group_id``, ``turn``, ``won``, ``invalid_action``,
    ``engine_error``, ``task_score``, ``penalty``, ``reward``, ``done``/``terminated``/``truncated``,
    plus the subclass's ``info_keys`` (e.g. ``task_type``). The reward is
    ``success_reward`` on success minus ``invalid_action_penalty`` for an invalid
    reply (``penalty`` holds that subtracted amount). An invalid reply whose command
    does not act on the game (:meth:`command_acts`) is a self-loop: the next state
    keeps the current ``state_key``, so the engine's constant "nothing happens" text
    never aliases the states of a group. If the engine raises during a step, the episode ends as truncated
    with ``engine_error`` set, the error is logged with :meth:`describe_task`, and
    the next reset starts afresh: a collector's batch goes on. A step after the
    episode ended raises ``RuntimeError`` and changes nothing (no reward, turn or
    completed group member). Every text written (prompt, observation, actions) is
    valid UTF-8: lone surrogates become U+FFFD.

    Keyword Args:
        group_size (int): episodes per rollout group. Defaults to ``1``.
        max_steps (int): turns before truncation.
        history_length (int): past (observation, action) pairs in the prompt. Defaults to ``2``.
        invalid_action_penalty (float): subtracted on an invalid turn; 0 disables. Defaults to ``0.1``.
        success_reward (float): reward of the winning turn. Defaults to ``10.0``.
        prompt_template (str, optional): ``str.format`` template with the fields
            ``env_name, task, history, step, observation, actions``.
        system_prompt (str, optional): a system message before the prompt.
        state_key_fn (callable, optional): ``fn(GameState) -> str``, the text that
            identifies the state (default: the observation).
        seed (int): seeds task draws and the engine. Defaults to ``0``.
    """

    env_name = "a text environment"
    #: Extra per-task text entries written on every step (values from :meth:`task_info`).
    info_keys: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        group_size: int = 1,
        max_steps: int,
        history_length: int = 2,
        invalid_action_penalty: float = 0.1,
        success_reward: float = 10.0,
        prompt_template: str | None = None,
        system_prompt: str | None = None,
        state_key_fn: Callable[[GameState], str] | None = None,
        seed: int = 0,
        device: torch.device | None = None,
    ) -> None:
        limits = (("group_size", group_size, 1), ("max_steps", max_steps, 1), ("history_length", history_length, 0))
        for name, value, low in limits:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
        if invalid_action_penalty < 0:
            raise ValueError(f"invalid_action_penalty must be >= 0, got {invalid_action_penalty}.")
        self.group_size = group_size
        self.max_steps = max_steps
        self.history_length = history_length
        self.invalid_action_penalty = float(invalid_action_penalty)
        self.success_reward = float(success_reward)
        self.prompt_template = prompt_template or DEFAULT_PROMPT
        self.state_key_fn = state_key_fn
        self.seed_value = int(seed)
        self._task_rng = random.Random(f"tasks/{seed}")
        self._task_order: list[int] = []
        self._next_group = 0
        self._group: tuple[int, int] | None = None
        self._completed_in_group = 0
        self._episode: dict[str, Any] = {}
        super().__init__(input_mode="history", batch_size=(1,), system_prompt=system_prompt, device=device)

    # -- hooks for subclasses --------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        """Number of distinct tasks."""
        raise NotImplementedError

    def task_description(self, task_id: int) -> str:
        """One-line task statement shown in the prompt."""
        raise NotImplementedError

    def _game_reset(self, task_id: int, episode_seed: int) -> GameState:
        """Start ``task_id`` in its initial state (identical for every member of a group)."""
        raise NotImplementedError

    def _game_step(self, command: str) -> GameState:
        """Apply ``command`` (valid or not) and report the new state."""
        raise NotImplementedError

    def parse_reply(self, text: Any, state: GameState) -> tuple[str, bool]:
        """``(command, valid)`` of the agent's reply in ``state``; default :func:`parse_action`."""
        return parse_action(text, state.admissible_actions)

    def task_info(self, task_id: int) -> dict[str, str]:
        """Values of :attr:`info_keys` for a task."""
        return {}

    def describe_task(self, task_id: int) -> str:
        """How logs and errors name a task (e.g. its game file)."""
        return f"task {task_id}"

    def task_reward(self, state: GameState) -> float:
        """The task's reward for arriving in ``state`` (before any invalid-reply penalty)."""
        return self.success_reward * bool(state.won)

    def command_acts(self, command: str, state: GameState) -> bool:
        """Whether the command of an invalid reply still acts on the game in ``state``.

        The engine receives the command of every reply (as in verl-agent). An invalid
        reply whose command is one of the admissible actions (a malformed reply around
        a valid command) acts like that action; any other command leaves the game as it
        is, and the turn is a self-loop: its ``("next", "state_key")`` is the current
        ``state_key``, whatever text the engine answers ("Nothing happens."). Override it
        for engines whose commands are not all listed (WebShop's free-text search).
        """
        admissible = {normalize_text(a).lower() for a in state.admissible_actions}
        return normalize_text(command).lower() in admissible

    def demonstration(self, task_id: int) -> list[str] | None:
        """A list of commands that solves the task (for behaviour cloning), if the env knows one."""
        return None

    @classmethod
    def summarize_episodes(cls, records: list[dict]) -> tuple[list[str], list[list], dict]:
        """This environment's evaluation table: ``(header, rows, summary)``.

        ``records`` hold one dict per evaluation episode with the keys ``task_id``,
        ``task_type``, ``won``, ``return``, ``length``, ``invalid``, ``task_score`` and
        ``engine_error`` (see :func:`torchrl_gagpo.training.evaluation.episode_records`).
        Rows are percentages; ``summary`` holds fractions. The base table is the success
        rate; ALFWorld and WebShop report the paper's columns.

        Examples:
            >>> TextAgentEnv.summarize_episodes([{"won": True, "return": 10.0, "length": 3}])[0]
            ['Success']
        """
        summary = episode_summary(records)
        return ["Success"], [[100 * summary["success"]]], summary

    def sampler_state(self) -> dict:
        """The task sampler and group counters, for exact resumption between groups."""
        return {
            "rng": self._task_rng.getstate(),
            "order": list(self._task_order),
            "next_group": self._next_group,
            "group": self._group,
            "completed_in_group": self._completed_in_group,
        }

    def load_sampler_state(self, state: dict) -> None:
        """Restore what :meth:`sampler_state` returned."""
        self._task_rng.setstate(state["rng"])
        self._task_order = list(state["order"])
        self._next_group = state["next_group"]
        self._group = None if state["group"] is None else tuple(state["group"])
        self._completed_in_group = state["completed_in_group"]

    # -- specs -----------------------------------------------------------------------
    @staticmethod
    def _history_spec(shape, key: str) -> Composite:
        """ChatHistory spec without the tool fields, which text agents never write."""
        spec = ChatHistory.default_spec(shape=shape, keys=[key])
        for field_name in ("tool_calls", "tool_responses"):
            del spec[key][field_name]
        return spec

    def _make_specs(self) -> None:
        b = self.batch_size
        self.full_observation_spec = Composite(
            history=self._history_spec(b, "prompt"),
            observation=NonTensor(shape=b, example_data="You are in a room."),
            admissible_actions=NonTensor(shape=b, example_data=["look"]),
            state_key=Unbounded(shape=(*b, 1), dtype=torch.int64),
            task_id=Unbounded(shape=(*b, 1), dtype=torch.int64),
            group_id=Unbounded(shape=(*b, 1), dtype=torch.int64),
            turn=Unbounded(shape=(*b, 1), dtype=torch.int64),
            won=Categorical(2, shape=(*b, 1), dtype=torch.bool),
            invalid_action=Categorical(2, shape=(*b, 1), dtype=torch.bool),
            engine_error=Categorical(2, shape=(*b, 1), dtype=torch.bool),
            task_score=Unbounded(shape=(*b, 1), dtype=torch.float32),
            penalty=Unbounded(shape=(*b, 1), dtype=torch.float32),
            **{key: NonTensor(shape=b, example_data="text") for key in self.info_keys},
            shape=b,
        )
        self.full_action_spec = Composite(history=self._history_spec(b, "full"), shape=b)
        self.full_state_spec = Composite(shape=b)
        self.full_reward_spec = Composite(reward=Unbounded(shape=(*b, 1)), shape=b)
        self.full_done_spec = Composite(
            done=Categorical(2, shape=(*b, 1), dtype=torch.bool),
            terminated=Categorical(2, shape=(*b, 1), dtype=torch.bool),
            truncated=Categorical(2, shape=(*b, 1), dtype=torch.bool),
            shape=b,
        )

    # -- groups ----------------------------------------------------------------------
    def _draw_task(self) -> int:
        if not self._task_order:
            self._task_order = list(range(self.num_tasks))
            self._task_rng.shuffle(self._task_order)
        return self._task_order.pop()

    def _next_member(self, tensordict: TensorDictBase | None) -> tuple[int, int, bool]:
        """``(task_id, group_id, forced)`` of the episode a reset starts."""
        if tensordict is not None and all(tensordict.get(key, None) is not None for key in ("task_id", "group_id")):
            task_id = int(tensordict.get("task_id").reshape(-1)[0])
            if not 0 <= task_id < self.num_tasks:
                raise ValueError(f"task_id {task_id} is out of range: this env has {self.num_tasks} tasks.")
            return task_id, int(tensordict.get("group_id").reshape(-1)[0]), True
        if self._group is None or self._completed_in_group >= self.group_size:
            # a 63-bit id of (seed, n): unique per draw, for seeds of any size
            self._group = (self._draw_task(), state_digest(f"group/{self.seed_value}/{self._next_group}"))
            self._next_group += 1
            self._completed_in_group = 0
        return (*self._group, False)

    def episode_seed(self, task_id: int, group_id: int) -> int:
        """Seed of the engine for one group: every member starts identically."""
        return state_digest(f"{self.seed_value}/{task_id}/{group_id}")

    # -- prompt ----------------------------------------------------------------------
    def build_prompt(self, state: GameState) -> str:
        """The user message for the current turn (bounded by ``history_length``)."""
        ep = self._episode
        memory = list(ep["memory"])[-self.history_length :] if self.history_length else []
        history = ""
        if memory:
            first = ep["turn"] - len(memory) + 1
            pairs = " ".join(
                f"[Observation {first + i}: '{obs}', Action {first + i}: '{act}']"
                for i, (obs, act) in enumerate(memory)
            )
            history = HISTORY_BLOCK.format(n_steps=ep["turn"], n_shown=len(memory), pairs=pairs)
        return self.prompt_template.format(
            env_name=self.env_name,
            task=ep["task"],
            history=history,
            step=ep["turn"] + 1,
            observation=state.observation,
            actions=self.format_actions(state.admissible_actions),
        )

    def format_actions(self, actions: list[str]) -> str:
        """How the admissible actions appear inside the prompt's ``[...]``."""
        return ", ".join(actions)

    def _state_key(self, state: GameState) -> int:
        text = self.state_key_fn(state) if self.state_key_fn is not None else state.observation
        return state_digest(text)

    def _observe(
        self, state: GameState, *, reward: float = 0.0, invalid: bool = False, error: bool = False,
        done=(False, False), key: int | None = None, penalty: float = 0.0,
    ):
        """The observation tensordict of ``state``; ``key`` overrides its state key (a self-loop).

        ``penalty`` is the part of ``reward`` that is a penalty (``reward = task reward - penalty``).
        """
        ep = self._episode
        ep["state_key"] = self._state_key(state) if key is None else key
        # every text written here may reach a tokenizer: valid UTF-8 only (lone surrogates replaced)
        messages = [{"role": "user", "content": prompt_safe(self.build_prompt(state))}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": prompt_safe(self.system_prompt)})
        terminated, truncated = done
        out = TensorDict(
            history=ChatHistory(prompt=History.from_chats([messages]), batch_size=(1,)),
            observation=[prompt_safe(state.observation)],
            admissible_actions=[[prompt_safe(a) for a in state.admissible_actions]],
            state_key=torch.tensor([[ep["state_key"]]]),
            task_id=torch.tensor([[ep["task_id"]]]),
            group_id=torch.tensor([[ep["group_id"]]]),
            turn=torch.tensor([[ep["turn"]]]),
            won=torch.tensor([[state.won]]),
            invalid_action=torch.tensor([[invalid]]),
            engine_error=torch.tensor([[error]]),
            task_score=torch.tensor([[float(state.won) if state.score is None else state.score]], dtype=torch.float32),
            penalty=torch.tensor([[penalty]], dtype=torch.float32),
            reward=torch.tensor([[reward]], dtype=torch.float32),
            terminated=torch.tensor([[terminated]]),
            truncated=torch.tensor([[truncated]]),
            done=torch.tensor([[terminated or truncated]]),
            batch_size=(1,),
        )
        for key, value in ep["info"].items():
            out[key] = [prompt_safe(value) if isinstance(value, str) else value]
        return out.to_lazystack(0)

    # -- EnvBase -----------------------------------------------------------------------
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        task_id, group_id, forced = self._next_member(tensordict)
        state = self._game_reset(task_id, self.episode_seed(task_id, group_id))
        self._episode = {
            "task_id": task_id,
            "group_id": group_id,
            "forced": forced,
            "task": self.task_description(task_id),
            "info": {key: self.task_info(task_id)[key] for key in self.info_keys},
            "turn": 0,
            "memory": deque(maxlen=max(self.history_length, 1)),
            "state": state,
            "done": False,
        }
        out = self._observe(state)
        out.exclude("reward", inplace=True)
        return out

    def _reply_text(self, tensordict: TensorDictBase) -> Any:
        """The assistant's reply of this turn, or ``None`` when there is none (an invalid turn)."""
        history = tensordict.get("history", None)
        full = getattr(history, "full", None)
        if full is None or full.shape[-1] == 0:
            return None
        last = full[0, -1] if full.ndim == 2 else full[-1]
        return last.content if last.role == "assistant" else None

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        ep = self._episode
        if not ep:
            raise RuntimeError(f"{type(self).__name__}.step() called before reset().")
        if ep["done"]:
            # refused before anything moves: no second reward, no extra completed episode, no turn
            raise RuntimeError(
                f"{type(self).__name__}.step() after the episode has ended (done=True at turn {ep['turn']}); "
                "call reset() to start the next episode."
            )
        before = ep["state"]
        command, valid = self.parse_reply(self._reply_text(tensordict), before)
        # an invalid reply that does not act is a self-loop: the state keeps its key
        loop_key = ep["state_key"] if not valid and not self.command_acts(command, before) else None
        try:
            state = self._game_step(command)
        except Exception as err:  # noqa: BLE001 - any engine failure ends the episode, not the batch
            logger.error("engine error on %s at turn %d: %s", self.describe_task(ep["task_id"]), ep["turn"] + 1, err)
            ep["turn"] += 1
            ep["done"] = True
            self._completed_in_group += 0 if ep["forced"] else 1
            return self._observe(before, reward=0.0, invalid=not valid, error=True, done=(False, True),
                                 key=ep["state_key"])
        ep["turn"] += 1
        ep["memory"].append((before.observation, command))
        ep["state"] = state
        terminated = bool(state.won or state.finished)
        truncated = ep["turn"] >= self.max_steps and not terminated
        penalty = 0.0 if valid else self.invalid_action_penalty
        ep["done"] = terminated or truncated
        if ep["done"] and not ep["forced"]:
            self._completed_in_group += 1
        return self._observe(state, reward=self.task_reward(state) - penalty, invalid=not valid,
                             done=(terminated, truncated), key=loop_key, penalty=penalty)

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self.seed_value = int(seed)
            self._task_rng = random.Random(f"tasks/{seed}")
            self._task_order, self._group, self._next_group = [], None, 0

