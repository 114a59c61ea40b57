"""Text environments on the torchrl_gagpo data contract (installed as ``torchrl_gagpo.envs``).

``ALFWorldEnv`` and ``WebShopEnv`` are imported on first access, so that importing this
package needs neither the ``alfworld`` nor the ``webshop`` extra.
"""

from importlib import import_module

from .base import GameState, TextAgentEnv, extract_action, parse_action
from .toy import ToyGame, ToyTask, ToyTextEnv

__all__ = [
    "ALFWorldEnv", "GameState", "TextAgentEnv", "ToyGame", "ToyTask", "ToyTextEnv", "WebShopEnv",
    "extract_action", "parse_action",
]  # fmt: skip

_LAZY = {"ALFWorldEnv": ".alfworld", "WebShopEnv": ".webshop"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
