"""ALFWorldEnv: the real ALFWorld engine as a TorchRL multi-turn text environment."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..base import GameState, TextAgentEnv, episode_summary
from .data import find_games, resolve_data_path
from .engine import EngineError, make_engine
from .generate import TASK_TYPES, require_alfworld

__all__ = ["ALFWORLD_COLUMNS", "ALFWorldEnv"]

logger = logging.getLogger(__name__)

#: The paper's ALFWorld columns and the task type behind each.
ALFWORLD_COLUMNS = (
    ("Pick", "pick_and_place_simple"),
    ("Look", "look_at_obj_in_light"),
    ("Clean", "pick_clean_then_place_in_recep"),
    ("Heat", "pick_heat_then_place_in_recep"),
    ("Cool", "pick_cool_then_place_in_recep"),
    ("Pick2", "pick_two_obj_and_place"),
)

_BANNER = "-= Welcome to TextWorld, ALFRED! =-"
_TASK_MARK = "Your task is to: "


def _observation_and_inventory(state: GameState) -> str:
    return f"{state.observation}\nYou are carrying: {state.info.get('inventory') or 'nothing'}."


def _facts(state: GameState) -> str:
    return state.info["facts"]


STATE_KEYS = {"observation": None, "observation+inventory": _observation_and_inventory, "facts": _facts}


class ALFWorldEnv(TextAgentEnv):
    """ALFWorld (text) played by alfworld's own engine, one agent turn per step.

    Games come from the embedded default set (generated offline on first use),
    or from ``data_path`` / ``ALFWORLD_DATA`` in the official layout (see
    :mod:`torchrl_gagpo.envs.alfworld.data`). Each instance drives one engine in a
    worker process of its own; run several instances (e.g. in torchrl's
    ``AsyncEnvPool``) to step games in parallel. The prompt follows verl-agent's
    ALFWorld prompt: task, the last ``history_length`` observation/action pairs,
    the current observation, the admissible actions (without ``help``) and the
    ``<think>``/``<action>`` instruction. Rewards: 10 on success, minus 0.1 for an
    invalid reply; ``max_steps`` 50. Besides the common contract each step writes
    ``task_type``.

    Keyword Args:
        data_path (str, optional): games in the official layout; default: the
            embedded set (or ``ALFWORLD_DATA`` when set).
        split (str): ``"train"``, ``"valid_seen"`` or ``"valid_unseen"``. Defaults to ``"train"``.
        task_types (iterable of str): subset of the six task types.
        games_per_type (int, optional): keep only the first N games (sorted by path) of each type.
        state_key (str): ``"observation"`` (default: the digest of the observation
            text, as GiGPO's anchor state), ``"observation+inventory"`` (also what
            the agent carries) or ``"facts"`` (the digest of the engine's PDDL facts,
            the true world state, without the bookkeeping facts that look, inventory
            and examine set: those commands are self-loops). The last two read the
            facts from the engine, which makes steps slower.
        engine (str): ``"process"`` (default) or ``"inline"`` (this process).
        group_size, max_steps, history_length, invalid_action_penalty, success_reward,
        prompt_template, system_prompt, seed: see :class:`~torchrl_gagpo.envs.base.TextAgentEnv`.

    Examples:
        >>> env = ALFWorldEnv(group_size=2)  # doctest: +SKIP
        >>> td = env.reset()  # doctest: +SKIP
        >>> td["task_type"][0]  # doctest: +SKIP
        'pick_heat_then_place_in_recep'
    """

    env_name = "the ALFRED Embodied Environment"
    info_keys = ("task_type",)

    def __init__(
        self,
        *,
        data_path: str | os.PathLike | None = None,
        split: str = "train",
        task_types: Iterable[str] = TASK_TYPES,
        games_per_type: int | None = None,
        state_key: str = "observation",
        engine: str = "process",
        max_steps: int = 50,
        success_reward: float = 10.0,
        state_key_fn: Callable[[GameState], str] | None = None,
        **kwargs,
    ) -> None:
        require_alfworld("alfworld")  # both engines need it: say which extra to install, now
        if state_key not in STATE_KEYS:
            raise ValueError(f"state_key must be one of {sorted(STATE_KEYS)}, got {state_key!r}.")
        if engine not in ("process", "inline"):
            raise ValueError(f"engine must be 'process' or 'inline', got {engine!r}.")
        self.data_root = resolve_data_path(data_path)
        self.split = split
        self.games = find_games(self.data_root, split, task_types)
        if games_per_type is not None:
            if games_per_type < 1:
                raise ValueError(f"games_per_type must be >= 1 or None, got {games_per_type}.")
            per_type: dict[str, list] = {}
            for game in self.games:
                per_type.setdefault(game.task_type, []).append(game)
            self.games = sorted((g for games in per_type.values() for g in games[:games_per_type]),
                                key=lambda g: g.gamefile)
        self.engine_kind = engine
        self.state_key_mode = state_key
        self._facts = state_key != "observation"
        if state_key_fn is None:
            state_key_fn = STATE_KEYS[state_key]
        self._engine = None
        self._task_text = ""
        super().__init__(max_steps=max_steps, success_reward=success_reward, state_key_fn=state_key_fn, **kwargs)

    # -- TextAgentEnv hooks ---------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return len(self.games)

    def task_info(self, task_id: int) -> dict[str, str]:
        return {"task_type": self.games[task_id].task_type}

    def describe_task(self, task_id: int) -> str:
        return f"ALFWorld game {self.games[task_id].gamefile}"

    def task_description(self, task_id: int) -> str:
        return self._task_text

    @classmethod
    def summarize_episodes(cls, records: list[dict]) -> tuple[list[str], list[list], dict]:
        """The paper's table: success % per task type (Pick ... Pick2) and overall (All)."""
        summary = episode_summary(records)
        row = []
        for name, task_type in ALFWORLD_COLUMNS:
            subset = [r for r in records if r.get("task_type") == task_type]
            rate = 100 * sum(r["won"] for r in subset) / len(subset) if subset else float("nan")
            summary[f"success_{name.lower()}"] = rate / 100
            row.append(rate)
        return [name for name, _ in ALFWORLD_COLUMNS] + ["All"], [[*row, 100 * summary["success"]]], summary

    def demonstration(self, task_id: int) -> list[str] | None:
        """The planner walkthrough stored in the game file."""
        return json.loads(Path(self.games[task_id].gamefile).read_text()).get("walkthrough")

    def format_actions(self, actions: list[str]) -> str:
        return "\n " + "\n ".join(f"'{a}'" for a in actions) + "\n"

    def _engine_reset(self, gamefile: str) -> GameState:
        if self._engine is None:
            self._engine = make_engine(self.engine_kind, facts=self._facts)
        if self._engine.gamefile != gamefile:
            self._engine.load(gamefile)
        return self._engine.reset()

    def _game_reset(self, task_id: int, episode_seed: int) -> GameState:
        gamefile = self.games[task_id].gamefile
        try:
            state = self._engine_reset(gamefile)
        except EngineError as err:
            logger.error("engine error resetting %s: %s; restarting the engine", gamefile, err)
            self._close_engine()
            try:
                state = self._engine_reset(gamefile)
            except EngineError as again:
                raise RuntimeError(f"ALFWorld cannot reset {gamefile}: {again}") from again
        text = state.observation.replace(_BANNER, "").strip()
        self._task_text = text.split(_TASK_MARK, 1)[1].strip() if _TASK_MARK in text else ""
        return GameState(text, state.admissible_actions, state.won, state.info)

    def _game_step(self, command: str) -> GameState:
        return self._engine.step(command)

    def _close_engine(self) -> None:
        if self._engine is not None and hasattr(self._engine, "kill"):
            self._engine.kill()
        self._engine = None

    def _close(self, raise_if_closed: bool = True) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def close(self, *, raise_if_closed: bool = True) -> None:
        """End the engine worker now (torchrl 0.14's ``EnvBase.close`` never calls ``_close``).

        A later reset starts a fresh worker. Garbage collection and interpreter exit end
        the worker too.
        """
        self._close()
        super().close(raise_if_closed=raise_if_closed)
