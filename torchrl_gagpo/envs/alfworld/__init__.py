"""ALFWorld on the real alfworld engine: an offline game generator and ALFWorldEnv.

Needs the ``alfworld`` extra (``pip install 'torchrl-gagpo[alfworld]'``).
"""

from .data import GameRecord, default_data_path, find_games, resolve_data_path
from .env import ALFWorldEnv
from .generate import SPLITS, TASK_TYPES, generate_games

__all__ = [
    "ALFWorldEnv",
    "GameRecord",
    "SPLITS",
    "TASK_TYPES",
    "default_data_path",
    "find_games",
    "generate_games",
    "resolve_data_path",
]
