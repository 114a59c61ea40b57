"""Environment handles for the rollout runner: an env in a worker process, or in this process.

Both handles expose the same small asynchronous interface, so the runner
(:class:`~torchrl_gagpo.collectors.runner.GroupRunner`) steps several environments at
once without knowing where they live:

* ``submit(method, *args)`` starts ``reset``, ``step`` or ``call`` and returns at once;
* ``done()`` says whether the answer is there (:func:`wait_any` waits for the first of several);
* ``result()`` waits for that call's result (raises :class:`EnvWorkerError` if the
  worker died, hung or raised);
* ``restart()`` replaces a broken environment by a fresh one from the same factory.

:class:`EnvProcess` runs the environment in a child started with
``python -m torchrl_gagpo.collectors._env_server``: it never imports the user's
``__main__`` (unlike a ``multiprocessing`` spawn pool), so scripts without an
``if __name__ == "__main__":`` guard work, and the environment's Python code runs
outside the learner's GIL. The factory travels by cloudpickle, so a lambda or a
function defined in a script works too; the child gets this process's ``sys.path``,
so factories from modules next to the user's script import there as well.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import torch

__all__ = ["EnvProcess", "EnvWorkerError", "InlineEnv", "wait_any"]

logger = logging.getLogger(__name__)

#: Methods an environment handle accepts.
METHODS = ("reset", "step", "call")


class EnvWorkerError(RuntimeError):
    """An environment worker died, did not answer in time, or raised during a call."""


#: dtypes whose tensors travel as numpy arrays (numpy has no bfloat16 or complex32).
_NUMPY_DTYPES = frozenset({torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
                           torch.uint32, torch.uint64, torch.float16, torch.float32, torch.float64, torch.complex64,
                           torch.complex128})


class _WirePickler(pickle.Pickler):
    """Pickles plain CPU tensors as numpy arrays, which ``torch.from_numpy`` restores.

    torch's own reducer writes every tensor through ``torch.save`` (a zip-like record per
    storage, and the whole storage of a view); for the dozens of one-element tensors of an
    environment step that is most of the pickling time. Anything else (bfloat16, grads,
    other devices, nested or expanded tensors, tensor subclasses) keeps torch's reducer.
    A received tensor owns its data but its storage cannot be resized (``resize_``, or
    ``torch.cat(..., out=t)`` growing ``t``); its values, shape and dtype are the sender's.
    """

    def reducer_override(self, obj):
        if (type(obj) is torch.Tensor and obj.dtype in _NUMPY_DTYPES and obj.device.type == "cpu"
                and obj.layout == torch.strided and not obj.is_nested and not obj.requires_grad
                and not obj.is_conj() and not obj.is_neg() and (obj.numel() <= 1 or 0 not in obj.stride())):
            try:
                return torch.from_numpy, (obj.numpy(),)
            except (RuntimeError, TypeError):  # a tensor numpy cannot view: torch's reducer takes it
                return NotImplemented
        return NotImplemented


def encode_message(obj: Any) -> bytes:
    """``obj`` pickled in the worker protocol's wire format.

    The message is pickled whole before anything is written to a pipe, so an object that
    does not pickle raises here and never leaves half a message in the stream.
    """
    buffer = io.BytesIO()
    _WirePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _dumps(obj: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(obj)


class EnvProcess:
    """One environment in a child process (started on first use, restarted on demand).

    Args:
        create_env_fn (callable): ``create_env_fn() -> EnvBase``; pickled with cloudpickle.

    Keyword Args:
        timeout (float): seconds to wait for an answer before the worker is declared
            hung and killed. Defaults to ``600``.
        start_timeout (float): the same for starting the worker and building its
            environment (imports take seconds on a busy machine). Defaults to ``600``.
        num_threads (int): torch threads inside the worker. Defaults to ``1``.

    Examples:
        >>> from torchrl_gagpo.envs import ToyTextEnv
        >>> env = EnvProcess(lambda: ToyTextEnv(seed=0))  # doctest: +SKIP
        >>> env.submit("reset", None); td = env.result()  # doctest: +SKIP
        >>> env.close()  # doctest: +SKIP
    """

    def __init__(self, create_env_fn: Callable[[], Any], *, timeout: float = 600.0, start_timeout: float = 600.0,
                 num_threads: int = 1) -> None:
        if not callable(create_env_fn):
            raise TypeError(f"create_env_fn must be callable, got {type(create_env_fn).__name__}.")
        self.create_env_fn = create_env_fn
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self.num_threads = int(num_threads)
        self._payload = _dumps(create_env_fn)
        self._process: subprocess.Popen | None = None
        self._pending: str | None = None
        self._deadline = 0.0
        self.info: dict = {}

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.alive else None

    def start(self) -> None:
        """Start the worker and build its environment; fills :attr:`info`."""
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.num_threads))
        command = [sys.executable, "-m", "torchrl_gagpo.collectors._env_server", str(self.num_threads)]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._pending = None
        # the child can import what this process can (a factory defined next to the user's script)
        self._send(("init", (self._payload, list(sys.path))))
        self.info = self._receive("init", self.start_timeout)

    def _send(self, request: tuple) -> None:
        try:
            message = encode_message(request)
        except Exception as err:  # noqa: BLE001 - any pickling failure: the worker itself is fine
            raise TypeError(f"cannot send {request[0]} to the environment worker: its arguments do not "
                            f"pickle ({type(err).__name__}: {err})") from err
        try:
            self._process.stdin.write(message)
            self._process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as err:
            self.kill()
            raise EnvWorkerError(f"environment worker died before {request[0]}: {err!r}") from err

    def _receive(self, method: str, timeout: float | None = None) -> Any:
        process = self._process
        timeout = self.timeout if timeout is None else timeout
        try:
            ready, _, _ = select.select([process.stdout], [], [], timeout)
            if not ready:
                self.kill()
                raise EnvWorkerError(f"environment worker did not answer {method} within {timeout:.0f} s")
            status, payload = pickle.load(process.stdout)
        except (EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
            code = process.poll()
            self.kill()
            raise EnvWorkerError(f"environment worker died during {method} (exit code {code}): {err!r}") from err
        if status == "error":
            raise EnvWorkerError(f"environment raised during {method}:\n{payload}")
        return payload

    def submit(self, method: str, *args: Any) -> None:
        """Send one call; :meth:`result` returns its answer."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
        if self._pending is not None:
            raise RuntimeError(f"a {self._pending} call is still pending on this environment worker")
        if not self.alive:
            self.start()
        self._send((method, args))
        self._pending = method
        self._deadline = time.monotonic() + self.timeout

    def done(self) -> bool:
        """The pending call's answer can be read without waiting (or its time is up)."""
        if self._pending is None or self._process is None:
            return True
        ready, _, _ = select.select([self._process.stdout], [], [], 0)
        return bool(ready) or time.monotonic() >= self._deadline

    def waitable(self) -> int | None:
        """The file descriptor :func:`wait_any` selects on."""
        return self._process.stdout.fileno() if self._process is not None else None

    def result(self) -> Any:
        method, self._pending = self._pending, None
        if method is None:
            raise RuntimeError("no call is pending on this environment worker")
        return self._receive(method, max(0.0, self._deadline - time.monotonic()))

    def call(self, name: str, *args: Any) -> Any:
        """Call a method (or read an attribute, with no args) of the environment, synchronously."""
        self.submit("call", name, args)
        return self.result()

    def restart(self) -> None:
        self.kill()
        self.start()

    def kill(self) -> None:
        process, self._process = self._process, None
        self._pending = None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            logger.error("environment worker %d did not exit after SIGKILL", process.pid)
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        """Close the environment (its own workers too) and end the process."""
        if self.alive and self._pending is None:
            try:
                self._send(("close", ()))
                self._process.wait(timeout=30)
            except (EnvWorkerError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def __del__(self) -> None:
        try:
            self.kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class InlineEnv:
    """An environment in this process behind the same interface as :class:`EnvProcess`.

    With ``pool``, calls run in that thread pool (useful when the environment mostly
    waits on its own engine process, as ``ALFWorldEnv`` does); without, they run at
    :meth:`submit`.
    """

    def __init__(self, create_env_fn: Callable[[], Any], *, pool: ThreadPoolExecutor | None = None) -> None:
        self.create_env_fn = create_env_fn
        self.pool = pool
        self.env = None
        self._future: Future | None = None
        self.info: dict = {}

    def start(self) -> None:
        self.env = self.create_env_fn()
        self.info = env_info(self.env)

    def submit(self, method: str, *args: Any) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
        if self.env is None:
            self.start()
        if self.pool is not None:
            self._future = self.pool.submit(dispatch, self.env, method, args)
        else:
            future: Future = Future()
            try:
                future.set_result(dispatch(self.env, method, args))
            except Exception as err:  # noqa: BLE001 - re-raised by result()
                future.set_exception(err)
            self._future = future

    def done(self) -> bool:
        return self._future is None or self._future.done()

    def waitable(self) -> Future | None:
        return self._future

    def result(self) -> Any:
        future, self._future = self._future, None
        if future is None:
            raise RuntimeError("no call is pending on this environment")
        try:
            return future.result()
        except Exception as err:  # noqa: BLE001 - any environment failure is the runner's to handle
            raise EnvWorkerError(f"environment raised: {type(err).__name__}: {err}") from err

    def call(self, name: str, *args: Any) -> Any:
        self.submit("call", name, args)
        return self.result()

    def restart(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        if self.env is not None:
            try:
                self.env.close()
            except Exception as err:  # noqa: BLE001 - closing a broken env must not mask the first error
                logger.warning("closing an environment failed: %s", err)
        self.env = None


def wait_any(handles: Sequence, poll_s: float = 1.0) -> list[int]:
    """Indices of the handles whose pending call has answered (at least one; waits for it)."""
    while True:
        ready = [i for i, h in enumerate(handles) if h.done()]
        if ready:
            return ready
        waitables = [h.waitable() for h in handles]
        if all(isinstance(w, int) for w in waitables):
            select.select(waitables, [], [], poll_s)
        else:
            wait_futures([w for w in waitables if isinstance(w, Future)], timeout=poll_s,
                         return_when=FIRST_COMPLETED)


def env_info(env) -> dict:
    """What the runner needs to know about an environment."""
    return {"num_tasks": getattr(env, "num_tasks", None), "pid": os.getpid()}


def dispatch(env, method: str, args: tuple) -> Any:
    """Run one handle call on ``env`` (shared by both handles and the worker process)."""
    if method == "reset":
        return env.reset(*args)
    if method == "step":
        (action,) = args
        return env.step(action).get("next")
    name, call_args = args
    attr = getattr(env, name)
    return attr(*call_args) if callable(attr) else attr


def close_all(handles) -> None:
    """Close every handle, logging (not raising) failures."""
    for handle in handles:
        try:
            handle.close()
        except Exception as err:  # noqa: BLE001
            logger.warning("closing an environment handle failed: %s", err)
