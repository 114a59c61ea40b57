"""Text environments on the torchrl_gagpo data contract (installed as ``torchrl_gagpo.envs``)."""

from .base import GameState, TextAgentEnv, extract_action, parse_action
from .toy import ToyGame, ToyTask, ToyTextEnv

__all__ = ["GameState", "TextAgentEnv", "ToyGame", "ToyTask", "ToyTextEnv", "extract_action", "parse_action"]
