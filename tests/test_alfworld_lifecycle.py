"""ALFWorldEnv's engine workers: they end with the env (regression of issue 15.3) and their faults
end an episode, not the run.

torchrl 0.14's ``EnvBase.close`` never calls ``_close``: the workers outlived ``close()``. Here
``close()``, garbage collection and interpreter exit each end every worker; the tests count the
worker processes (children of this process running ``_worker.py``). A hung or garbling worker is
killed and replaced (a killed one: ``tests/test_alfworld.py::test_engine_crash_ends_the_episode``).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import child_pids, pid_alive, step

from torchrl_gagpo.envs.alfworld import ALFWorldEnv
from torchrl_gagpo.envs.alfworld.engine import EngineCrash, EngineProcess

WORKER = "_worker.py"


@pytest.fixture()
def games(one_alfworld_game):
    return one_alfworld_game


def workers() -> list[int]:
    return child_pids(os.getpid(), WORKER)


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_close_ends_every_worker(games):
    before = set(workers())
    envs = [ALFWorldEnv(data_path=games, seed=s) for s in range(3)]
    for env in envs:
        env.reset()
    started = set(workers()) - before
    assert len(started) == 3
    for env in envs:
        env.close()
    assert not started & set(workers())  # gone when close() returns, no waiting
    envs[0].close()  # closing twice is harmless
    assert envs[0].reset()["task_type"][0] == "pick_and_place_simple"  # a closed env can start again
    envs[0].close()


def test_garbage_collection_ends_the_worker(games):
    before = set(workers())
    env = ALFWorldEnv(data_path=games)
    env.reset()
    (pid,) = set(workers()) - before
    del env
    gc.collect()
    assert wait_until(lambda: not pid_alive(pid)), "the worker outlived its garbage-collected env"


def test_hung_worker_is_killed_and_the_episode_ends(games, caplog):
    """A worker that stops answering (SIGSTOP here) is declared hung after the timeout and killed;
    the episode ends as truncated with ``engine_error``; the next reset starts a fresh worker."""
    env = ALFWorldEnv(data_path=games)
    try:
        td = env.reset()
        env._engine.timeout = 1.0
        hung = env._engine._process.pid
        os.kill(hung, signal.SIGSTOP)
        nxt = step(env, td, "<action>look</action>")
        assert nxt["engine_error"].item() and nxt["truncated"].item()
        assert wait_until(lambda: not pid_alive(hung)) and "did not answer" in caplog.text
        assert not step(env, env.reset(), "<action>look</action>")["engine_error"].item()
    finally:
        env.close()


GARBLERS = {
    "short_then_silent": "w(b'garbage'); time.sleep(60)",  # never a whole answer
    "huge_length": "w(b'\\xff' * 64); time.sleep(60)",
    "not_a_pickle": "w((5).to_bytes(8, 'little') + b'hello'); time.sleep(60)",
    "exits": "w(b'garbage')",
}


@pytest.mark.parametrize("garbler", list(GARBLERS))
def test_garbled_worker_answers_are_an_engine_crash_within_the_timeout(garbler):
    """Bytes that are not the protocol's (a worker printing into its answers, then hanging or dying)
    end the call within the timeout; the worker is killed and a fresh one starts on the next call."""
    writer = "w = lambda b: (sys.stdout.buffer.write(b), sys.stdout.flush())"
    code = f"import sys, time\n{writer}\n{GARBLERS[garbler]}"
    engine = EngineProcess(timeout=2)
    engine.start = lambda: setattr(engine, "_process", subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE))  # fmt: skip
    started = time.monotonic()
    with pytest.raises(EngineCrash, match="died during reset|did not answer reset"):
        engine.reset()
    assert time.monotonic() - started < 10
    assert engine._process is None  # killed and forgotten: the next call starts a fresh worker


EXIT = """
import sys
from torchrl_gagpo.envs.alfworld import ALFWorldEnv
env = ALFWorldEnv(data_path=sys.argv[1])
env.reset()
print(env._engine._process.pid, flush=True)
"""


@pytest.mark.parametrize("ending", ["normal", "exception"])
def test_interpreter_exit_ends_the_worker(games, ending):
    code = EXIT + ("raise SystemExit(3)\n" if ending == "exception" else "")
    command = [sys.executable, "-c", code, str(games)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == (3 if ending == "exception" else 0), done.stderr[-2000:]
    pid = int(done.stdout.split()[-1])
    assert wait_until(lambda: not pid_alive(pid)), "the worker outlived its interpreter"


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
