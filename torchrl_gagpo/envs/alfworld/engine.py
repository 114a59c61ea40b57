"""The real ALFWorld engine, in this process or in a worker process of its own.

The engine is alfworld's own stack, unmodified: TextWorld's ``PddlEnv`` (PDDL +
Fast Downward) wrapped in ``AlfredDemangler`` and ``AlfredInfos``, the classes
``AlfredTWEnv`` uses. Fast Downward keeps global state and is CPU-bound, so each
environment instance normally drives its own worker process
(:class:`EngineProcess`): several instances then step in parallel, and a crash
or a hang of one worker is detected (:class:`EngineCrash`) without taking the
trainer down.
"""

from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import time
from typing import Any

from ..base import GameState
from . import _worker

__all__ = ["AlfredGame", "EngineCrash", "EngineError", "EngineProcess", "make_engine"]


#: Larger answers are garbage (a state is a few KiB).
MAX_ANSWER_BYTES = 64 * 1024 * 1024


def _unpickle(data: bytes) -> tuple[str, Any]:
    """``(status, payload)`` of one answer; anything else is ``pickle.UnpicklingError``."""
    try:
        status, payload = pickle.loads(data)
    except Exception as err:  # noqa: BLE001 - garbage can fail to unpickle in many ways
        raise pickle.UnpicklingError(f"garbled answer ({type(err).__name__}: {err})") from err
    return status, payload


class EngineError(RuntimeError):
    """The engine raised while loading, resetting or stepping a game."""


class EngineCrash(EngineError):
    """The worker process died, or did not answer within its timeout."""


class EngineProcess:
    """An :class:`AlfredGame` in a worker process (started on first use, restarted after a crash).

    The worker runs ``_worker.py`` by path (it imports alfworld and textworld
    only, not torch), talking pickled requests over its stdin/stdout, so it
    starts fast and does not depend on how the parent was started.

    Keyword Args:
        facts (bool): see :class:`AlfredGame`. Defaults to ``False``.
        timeout (float): seconds to wait for an answer before the worker is
            declared hung and killed. Defaults to ``120``.
    """

    def __init__(self, *, facts: bool = False, timeout: float = 120.0) -> None:
        self.facts = facts
        self.timeout = timeout
        self.gamefile: str | None = None
        self._process: subprocess.Popen | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        command = [sys.executable, _worker.__file__] + (["--facts"] if self.facts else [])
        env = _worker.drop_empty_alfworld_data(dict(os.environ))
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.gamefile = None

    def _read(self, size: int, deadline: float) -> bytes:
        """Exactly ``size`` bytes of the worker's answers, or ``TimeoutError`` / ``EOFError``."""
        fd = self._process.stdout.fileno()  # read unbuffered: never through the file object
        chunks = []
        while size:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, size)
            if not chunk:
                raise EOFError("the worker closed its answers")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _call(self, method: str, *args: Any) -> Any:
        if not self.alive:
            self.start()
        process = self._process
        deadline = time.monotonic() + self.timeout
        try:
            pickle.dump((method, args), process.stdin)
            process.stdin.flush()
            size = int.from_bytes(self._read(_worker.ANSWER_HEADER, deadline), "little")
            if size > MAX_ANSWER_BYTES:
                raise pickle.UnpicklingError(f"garbled answer (announced {size} bytes)")
            status, payload = _unpickle(self._read(size, deadline))
        except TimeoutError:
            self.kill()
            seconds = f"{self.timeout:.0f} s"
            raise EngineCrash(f"the ALFWorld worker did not answer {method} within {seconds}") from None
        except (EOFError, OSError, pickle.UnpicklingError) as err:
            self.kill()
            raise EngineCrash(f"the ALFWorld worker died during {method}: {err!r}") from err
        if status == "error":
            raise EngineError(payload)
        return payload if payload is None else GameState(*payload)

    def load(self, gamefile: str) -> None:
        self._call("load", gamefile)
        self.gamefile = gamefile

    def reset(self) -> GameState:
        return self._call("reset")


    def step(self, command: str) -> GameState:
        return self._call("step", command)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            for stream in (self._process.stdin, self._process.stdout):
                stream.close()
        self._process = None
        self.gamefile = None

    def close(self) -> None:
        if self.alive:
            try:
                pickle.dump(("close", ()), self._process.stdin)
                self._process.stdin.flush()
                self._process.wait(timeout=10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def __del__(self) -> None:
        try:
            self.kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class AlfredGame(_worker.AlfredGame):
    """One ALFWorld game played in this process (``engine="inline"``)."""

    def reset(self) -> GameState:
        return GameState(*super().reset())

    def step(self, command: str) -> GameState:
        return GameState(*super().step(command))


def make_engine(kind: str, *, facts: bool = False) -> AlfredGame | EngineProcess:
    """``"process"`` (a worker process, the default of ``ALFWorldEnv``) or ``"inline"``."""
    if kind == "process":
        return EngineProcess(facts=facts)
    if kind == "inline":
        return AlfredGame(facts=facts)
    raise ValueError(f"engine must be 'process' or 'inline', got {kind!r}.")

