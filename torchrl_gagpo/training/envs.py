"""Environment factories for the trainer: ``factory(cfg, split, seed) -> TextAgentEnv``."""

from __future__ import annotations

from .config import TrainConfig

__all__ = ["ENV_FACTORIES", "make_env"]


def _common(cfg: TrainConfig, seed: int) -> dict:
    return {
        "group_size": cfg.group_size,
        "max_steps": cfg.max_steps,
        "history_length": cfg.history_length,
        "invalid_action_penalty": cfg.invalid_action_penalty,
        "seed": seed,
    }


def alfworld_env(cfg: TrainConfig, split: str, seed: int):
    from ..envs.alfworld import ALFWorldEnv

    return ALFWorldEnv(data_path=cfg.data_path, split=split, games_per_type=cfg.games_per_type, **_common(cfg, seed))


_WEBSHOP_DATA: dict = {}


def webshop_env(cfg: TrainConfig, split: str, seed: int):
    from ..envs.webshop import WebShopData, WebShopEnv

    # one loaded catalog (products, goals, search index) shared by every env instance
    key = (cfg.data_path, cfg.human_goals)
    if key not in _WEBSHOP_DATA:
        _WEBSHOP_DATA[key] = WebShopData.load(cfg.data_path, human_goals=cfg.human_goals)
    return WebShopEnv(data=_WEBSHOP_DATA[key], split=split, num_goals=cfg.num_goals,
                      reward=cfg.webshop_reward, **_common(cfg, seed))


def toy_env(cfg: TrainConfig, split: str, seed: int):
    from ..envs import ToyTextEnv

    # the toy tasks have no splits: every split plays the same corridors
    return ToyTextEnv(num_tasks=16, min_rooms=3, max_rooms=4, **_common(cfg, seed))


def credit_env(cfg: TrainConfig, split: str, seed: int):
    from ..envs.credit import CreditTextEnv

    # the credit-assignment chain (known model, exact advantages); no splits, like the toy
    return CreditTextEnv(num_tasks=16, n_states=5, n_distractors=2, **_common(cfg, seed))


ENV_FACTORIES = {"alfworld": alfworld_env, "webshop": webshop_env, "toy": toy_env, "credit": credit_env}


def make_env(cfg: TrainConfig, split: str, seed: int):
    """The environment ``cfg.env`` names."""
    try:
        factory = ENV_FACTORIES[cfg.env]
    except KeyError:
        raise ValueError(f"unknown env {cfg.env!r}; choose from {sorted(ENV_FACTORIES)}") from None
    return factory(cfg, split, seed)
