"""Factories shared by training and evaluation: the acting policy and the advantage estimator."""

from __future__ import annotations

import torch

from ..estimators import GiGPOEstimator, GroupedGAE, GRPOEstimator, RLOOEstimator
from ..policies import AdmissibleActionPolicy
from .config import TrainConfig

__all__ = ["make_estimator", "make_policy"]


def make_estimator(cfg: TrainConfig):
    """The advantage estimator the grouping transform runs on every released group."""
    if cfg.estimator == "gagpo":
        return GroupedGAE(gamma=cfg.gamma, lmbda=cfg.lmbda, normalize=cfg.normalize,
                          normalize_scope=cfg.normalize_scope, episode_weight=cfg.episode_weight)
    if cfg.estimator == "gigpo":
        return GiGPOEstimator(gamma=cfg.gamma, normalize=cfg.normalize)
    if cfg.estimator == "grpo":
        return GRPOEstimator(normalize=cfg.normalize)
    return RLOOEstimator()


def make_policy(cfg: TrainConfig, model, tokenizer, *, greedy: bool = False, seed: int | None = None):
    """The acting policy: ``choose`` (score admissible actions) or ``generate`` (free text)."""
    generator = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    if cfg.policy == "choose":
        return AdmissibleActionPolicy(model, tokenizer, score=cfg.choose_score, greedy=greedy, generator=generator)
    from ..policies.generate import make_policy as make_generation_policy  # transformers or vLLM

    if cfg.backend == "vllm":
        from ..policies.generate import make_vllm_policy

        return make_vllm_policy(cfg.model_path, tokenizer, max_new_tokens=cfg.max_new_tokens, greedy=greedy)
    return make_generation_policy("generate", model, tokenizer, max_new_tokens=cfg.max_new_tokens, greedy=greedy,
                                  generator=generator)
