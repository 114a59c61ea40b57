"""Entry point of an environment worker process (see :class:`~torchrl_gagpo.collectors.EnvProcess`).

``python -m torchrl_gagpo.collectors._env_server [num_threads]`` reads pickled requests on
stdin and answers ``("ok", result)`` or ``("error", traceback)`` on stdout. The first
request, ``("init", (cloudpickled_factory,))``, builds the environment. Anything the
environment prints goes to stderr, never into the protocol.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback


def serve(num_threads: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when the
    # environment stops (it may still need it to finish a group before checkpointing).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints of the environment go to stderr
    requests = sys.stdin.buffer

    import torch

    torch.set_num_threads(num_threads)
    from torchrl_gagpo.collectors.env_process import dispatch, encode_message, env_info

    env = None
    while True:
        try:
            method, args = pickle.load(requests)
        except EOFError:
            break
        if method == "close":
            break
        try:
            if method == "init":
                payload, parent_path = args
                sys.path[:0] = [p for p in parent_path if p not in sys.path]
                env = pickle.loads(payload)()
                result = env_info(env)
            else:
                result = dispatch(env, method, args)
            message = encode_message(("ok", result))  # a result that does not pickle is the env's error
        except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides
            message = encode_message(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"))
        replies.write(message)
        replies.flush()
    if env is not None:
        env.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
