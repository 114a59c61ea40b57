"""WebShopEnv: the WebShop engine as a TorchRL multi-turn text environment."""

from __future__ import annotations

import re
from typing import Any

from ..base import GameState, TextAgentEnv, episode_summary, extract_action
from .data import WebShopData
from .engine import WebShopEngine
from .pages import Page, page_segments, state_text

__all__ = ["WebShopEnv", "search_query"]

_PRICE_CLAUSE = re.compile(r",?\s*and price lower than [\d.]+ dollars\s*$", re.IGNORECASE)
_SPLITS = ("train", "test")
_REWARDS = ("success", "score")


def search_query(instruction: str) -> str:
    """The search the admissible-action list offers: the instruction without its price clause.

    Example:
        >>> search_query("i need a red mug, and price lower than 20.00 dollars")
        'i need a red mug'
    """
    return _PRICE_CLAUSE.sub("", instruction).strip().lower()


def _observation(page: Page) -> str:
    """What follows the instruction on the page, each part quoted, as verl-agent formats it."""
    segments = page_segments(page)
    if page.kind != "done":
        segments = segments[segments.index(page.instruction) + 1 :] if page.instruction in segments else segments
    return " [SEP] ".join(f"'{part}'" for part in segments)


def _page_state_text(state: GameState) -> str:
    return state.info["state_text"]


class WebShopEnv(TextAgentEnv):
    """WebShop (text mode) on the project's engine, one agent turn per step.

    Goals come from the shipped synthetic catalog, or from the original's data
    files via ``data_path`` / ``WEBSHOP_DATA`` (see
    :mod:`torchrl_gagpo.envs.webshop.data`). A task is a goal of the split; each
    rollout group shops for one goal. The prompt follows verl-agent's: task,
    the last ``history_length`` observation/action pairs, the current page
    without the instruction, the available actions (``search[<your query>]``
    while a search bar is shown, ``click[...]`` per clickable) and the
    ``<think>``/``<action>`` instruction. A ``search[...]`` reply with any
    non-empty query is valid on the start page; a ``click[...]`` reply is valid
    when it names a clickable of the page. The episode ends with
    ``click[buy now]`` (terminated) or after ``max_steps`` (15, truncated).
    Rewards: 10 when the purchase scores 1.0, else 0 (verl-agent's, the paper's),
    minus 0.1 for an invalid reply; the purchase's score is ``task_score``. With
    ``reward="score"`` the purchase pays 10 times its score instead, the original
    WebShop's dense reward (partial credit for the right product with wrong
    options); success is still a score of 1.0. The state key digests the page
    kind, its content and the selected options, never the instruction, so rollouts
    of a group that stand on the same page share a state.

    ``admissible_actions`` lists concrete commands for the admissible-action
    (``choose``) policy: on the start page one search, the instruction without its
    price clause (:func:`search_query`); elsewhere ``click[...]`` per clickable.

    Keyword Args:
        data (WebShopData, optional): loaded data to share between env instances.
        data_path (str, optional): the original's data files; default: the shipped
            catalog (or ``WEBSHOP_DATA`` when set).
        split (str): ``"train"`` or ``"test"`` goals. Defaults to ``"train"``.
        human_goals (bool): human-written goals (default) or synthetic ones.
        num_products (int, optional): use only the first N products.
        num_goals (int, optional): keep only the first N goals of the split.
        show_attrs (bool): item pages offer the Attributes sub-page. Defaults to ``False``.
        reward (str): ``"success"`` (``success_reward`` iff the score is 1.0, the
            default) or ``"score"`` (``success_reward`` times the purchase's score).
        group_size, max_steps, history_length, invalid_action_penalty, success_reward,
        prompt_template, system_prompt, state_key_fn, seed: see
        :class:`~torchrl_gagpo.envs.base.TextAgentEnv`.

    Examples:
        >>> env = WebShopEnv(group_size=2)  # doctest: +SKIP
        >>> td = env.reset()  # doctest: +SKIP
        >>> td["admissible_actions"][0][0].startswith("search[")  # doctest: +SKIP
        True
    """

    env_name = "the WebShop e-commerce environment"

    def __init__(
        self,
        *,
        data: WebShopData | None = None,
        data_path: str | None = None,
        split: str = "train",
        human_goals: bool = True,
        num_products: int | None = None,
        num_goals: int | None = None,
        show_attrs: bool = False,
        reward: str = "success",
        max_steps: int = 15,
        state_key_fn=None,
        **kwargs: Any,
    ) -> None:
        if reward not in _REWARDS:
            raise ValueError(f"reward must be one of {_REWARDS}, got {reward!r}.")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
        if num_goals is not None and (isinstance(num_goals, bool) or not isinstance(num_goals, int) or num_goals < 1):
            raise ValueError(f"num_goals must be a positive int or None, got {num_goals!r}.")
        if data is not None and (data_path is not None or num_products is not None):
            raise ValueError("pass either data or data_path/num_products, not both.")
        self.data = data if data is not None else WebShopData.load(
            data_path, human_goals=human_goals, num_products=num_products
        )
        self.split = split
        self.reward = reward
        self.goal_ids = list(self.data.split(split))[:num_goals]
        if not self.goal_ids:
            raise ValueError(f"the {split!r} split of {self.data.source} has no goals.")
        self.engine = WebShopEngine(self.data, show_attrs=show_attrs)
        super().__init__(
            max_steps=max_steps, state_key_fn=state_key_fn or _page_state_text, **kwargs
        )

    # -- TextAgentEnv hooks --------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return len(self.goal_ids)

    def goal(self, task_id: int) -> dict:
        """The goal record of a task."""
        return self.data.goals[self.goal_ids[task_id]]

    def task_description(self, task_id: int) -> str:
        return self.goal(task_id)["instruction_text"]

    def describe_task(self, task_id: int) -> str:
        return f"goal {self.goal_ids[task_id]} ({self.split}) of {self.data.source}"

    def _game_reset(self, task_id: int, episode_seed: int) -> GameState:
        return self._state(self.engine.reset(self.goal_ids[task_id]))

    def _game_step(self, command: str) -> GameState:
        result = self.engine.step(command)
        return self._state(result.page, finished=result.done, score=result.score)

    def task_reward(self, state: GameState) -> float:
        if self.reward == "score":
            return self.success_reward * state.score if state.finished else 0.0
        return super().task_reward(state)

    def parse_reply(self, text: Any, state: GameState) -> tuple[str, bool]:
        command, well_formed = extract_action(text)
        return command, well_formed and self.engine.is_valid(command)

    def command_acts(self, command: str, state: GameState) -> bool:
        """A command the engine accepts acts (any ``search[...]`` query), whatever the reply's form."""
        return self.engine.is_valid(command)

    def format_actions(self, actions: list[str]) -> str:
        shown = ["search[<your query>]" if a.startswith("search[") else a for a in actions]
        return "\n" + ",\n".join(f"'{a}'" for a in shown) + "\n"

    @classmethod
    def summarize_episodes(cls, records: list[dict]) -> tuple[list[str], list[list], dict]:
        """The paper's table: mean purchase score and success rate, in %."""
        summary = episode_summary(records)
        summary["score"] = sum(r.get("task_score") or 0.0 for r in records) / max(len(records), 1)
        return ["Score", "Success"], [[100 * summary["score"], 100 * summary["success"]]], summary

    def demonstration(self, task_id: int) -> list[str] | None:
        """Commands that buy the goal's product with the goal's options (None if search misses it)."""
        goal = self.goal(task_id)
        engine = WebShopEngine(self.data, show_attrs=self.engine.show_attrs)
        page = engine.reset(self.goal_ids[task_id])
        commands = [f"search[{search_query(page.instruction)}]"]
        page = engine.step(commands[0]).page
        target = goal["asin"].lower()
        while target not in engine.available_actions()["clickables"]:
            if not page.results:
                return None
            commands.append("click[next >]")
            page = engine.step(commands[-1]).page
        commands.append(f"click[{target}]")
        engine.step(commands[-1])
        wanted = goal["goal_options"].values() if isinstance(goal["goal_options"], dict) else goal["goal_options"]
        for value in wanted:
            if engine.is_valid(f"click[{value}]"):
                commands.append(f"click[{value}]")
                engine.step(commands[-1])
        commands.append("click[buy now]")
        return commands

    # -- helpers ----------------------------------------------------------------------------
    def _state(self, page: Page, *, finished: bool = False, score: float = 0.0) -> GameState:
        available = self.engine.available_actions()
        if available["has_search_bar"]:
            actions = [f"search[{search_query(page.instruction)}]"]
        else:
            actions = [f"click[{name}]" for name in available["clickables"] if name != "search"]
        return GameState(
            observation=_observation(page),
            admissible_actions=actions,
            won=finished and score == 1.0,
            finished=finished,
            score=score,
            info={"state_text": state_text(page), "page": page.kind},
        )
