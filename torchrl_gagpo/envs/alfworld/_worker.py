"""ALFWorld engine worker: alfworld's own engine behind a pickle protocol on stdin/stdout.

Run by path (``python _worker.py [--facts]``) from :class:`EngineProcess`; it imports
alfworld and textworld only, never torch, so it starts fast. Also
imported by the package for in-process play. Results are plain tuples
``(observation, admissible_actions, won, info)``.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

#: Bytes of the length that precedes every answer.
ANSWER_HEADER = 8
# bookkeeping predicates that look/inventory/examine/open set and no action or goal reads
_BOOKKEEPING = frozenset({"checked", "examined"})


def drop_empty_alfworld_data(environ: MutableMapping[str, str] = os.environ) -> MutableMapping[str, str]:
    """Remove an empty ``ALFWORLD_DATA`` from ``environ`` (default: this process's) and return ``environ``.

    Importing alfworld runs ``os.makedirs(os.environ.get("ALFWORLD_DATA", <default>))``, which crashes on an
    empty value; unset, alfworld picks its default folder. The one home of that rule: the in-process imports
    (:class:`AlfredGame`, ``generate.require_alfworld``) and the environments of worker processes use it.

    Example:
        >>> drop_empty_alfworld_data({"ALFWORLD_DATA": "", "HOME": "/root"})
        {'HOME': '/root'}
    """
    if environ.get("ALFWORLD_DATA") == "":
        del environ["ALFWORLD_DATA"]
    return environ


def _state(state: Any) -> tuple[str, list[str], bool, dict]:
    admissible = [c for c in state["admissible_commands"] if c != "help"]
    info = {}
    if state.get("facts") is not None:
        held = sorted(f.arguments[1].name.strip() for f in state["facts"] if f.name == "holds")
        info["inventory"] = ", ".join(held)
        # the world state: every PDDL fact but the bookkeeping ones, one per line, sorted
        info["facts"] = "\n".join(sorted(str(f) for f in state["facts"] if f.name not in _BOOKKEEPING))
    return state["feedback"], admissible, bool(state["won"]), info


class AlfredGame:
    """One ALFWorld game: TextWorld's ``PddlEnv`` with alfworld's ``AlfredDemangler`` and ``AlfredInfos``.

    Keyword Args:
        facts (bool): also read the state's PDDL facts: ``info["inventory"]`` (what the
            agent holds) and ``info["facts"]`` (every fact but the ``checked``/``examined``
            bookkeeping that look, inventory and examine set); slower steps. Defaults to ``False``.
    """

    def __init__(self, *, facts: bool = False) -> None:
        drop_empty_alfworld_data()
        try:
            import textworld
            from alfworld.agents.environment import alfred_tw_env as tw_env
            from textworld.envs import PddlEnv
        except ImportError as err:
            raise ImportError("the ALFWorld engine needs `pip install 'torchrl-gagpo[alfworld]'`.") from err
        infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=facts, extras=["gamefile"])
        self._env = tw_env.AlfredInfos(tw_env.AlfredDemangler(PddlEnv(infos), shuffle=False))
        self.gamefile: str | None = None

    def load(self, gamefile: str) -> None:
        self._env.load(gamefile)
        self.gamefile = gamefile

    def reset(self) -> tuple:
        return _state(self._env.reset())

    def step(self, command: str) -> tuple:
        state, _, _ = self._env.step(command)
        return _state(state)

    def close(self) -> None:
        self._env.close()


def serve(facts: bool) -> None:
    """Answer pickled ``(method, args)`` requests with ``("ok", result)`` or ``("error", text)``.

    Each answer is framed: its length (8 bytes, little-endian), then the pickle, so that the
    parent reads exactly one answer within its timeout, whatever bytes arrive.
    """
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the engine prints goes to stderr, never into the protocol
    requests = sys.stdin.buffer
    game = None
    while True:
        try:
            method, args = pickle.load(requests)
        except EOFError:
            return
        if method == "close":
            return
        try:
            if game is None:
                game = AlfredGame(facts=facts)
            reply = ("ok", getattr(game, method)(*args))
        except Exception as err:  # noqa: BLE001 - reported to the parent, which decides
            reply = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}")
        answer = pickle.dumps(reply)
        replies.write(len(answer).to_bytes(ANSWER_HEADER, "little") + answer)
        replies.flush()


if __name__ == "__main__":
    serve("--facts" in sys.argv[1:])
