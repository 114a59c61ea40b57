"""GAGPOLoss: PPO-clip with one importance ratio per action (agent turn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import NestedKey, TensorClass, TensorDict, TensorDictBase
from torchrl.modules.llm import LLMWrapperBase
from torchrl.objectives.llm import GRPOLoss
from torchrl.objectives.value import ValueEstimatorBase

from .estimators import GroupedGAE

__all__ = ["GAGPOLoss", "GAGPOLossOutput"]

Ratio = Literal["action_mean", "action_sum", "token"]
Aggregation = Literal["action_mean", "token_mean"]


class GAGPOLossOutput(TensorClass["nocast"]):
    """Output of :class:`GAGPOLoss`.

    ``loss_*`` entries are summed and back-propagated; the rest are detached
    diagnostics, each a masked mean over real action tokens (or over actions).
    """

    loss_objective: torch.Tensor
    clip_fraction: torch.Tensor
    ratio_mean: torch.Tensor
    ESS: torch.Tensor
    kl_approx: torch.Tensor
    loss_kl: torch.Tensor | None = None
    kl_to_ref: torch.Tensor | None = None
    loss_entropy: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


def _per_action_mean(x: torch.Tensor, mask: torch.Tensor, n_tok: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, 0.0).sum(-1) / n_tok.clamp_min(1)


class GAGPOLoss(GRPOLoss):
    """Clipped surrogate with an action-level importance ratio (GAGPO, arXiv:2605.13217).

    An *action* is one agent turn: the response tokens of that turn, scored on
    the stored ``("tokens", "full")`` with the prompt masked out. Its ratio is::

        action_mean:  rho = exp(mean_j [log pi(y_j) - log pi_old(y_j)])   (default, length-normalised)
        action_sum:   rho = exp(sum_j  [log pi(y_j) - log pi_old(y_j)])   (product of token ratios)
        token:        one ratio per token, as GRPO

    and the objective is ``-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``
    averaged over actions (``aggregation="action_mean"``, default) or tokens
    (``"token_mean"``). Optional terms: ``kl_coef`` times the k3 estimate of
    ``KL(pi || pi_ref)`` (masked mean over action tokens) and an entropy bonus.

    The advantage has one value per action, shape ``[B, 1]`` or ``[B, 1, 1]``.
    When it is missing the loss calls its value estimator (default
    :class:`~torchrl_gagpo.GroupedGAE`) on the batch, which must then hold whole
    rollout groups; ``make_value_estimator(gamma=..., lmbda=...)`` and estimator
    swaps work as with torchrl's PPO.

    Args:
        actor_network (LLMWrapperBase): a torchrl LLM wrapper in scoring mode,
            ``input_mode="tokens"``, ``generate=False``, so the stored tokens are
            scored as they are (never a re-tokenised history).

    Keyword Args:
        clip_epsilon (float or (float, float)): clip range, symmetric or
            ``(low, high)``. Defaults to ``0.2``.
        ratio (str): ``"action_mean"`` (default), ``"action_sum"`` or ``"token"``.
        aggregation (str): ``"action_mean"`` (default) or ``"token_mean"``.
        kl_coef (float): weight of the KL-to-reference term; 0 disables it. Defaults to ``0.0``.
        entropy_coef (float): weight of the entropy bonus; 0 disables it. Defaults to ``0.0``.
        dual_clip (float, optional): dual-clip constant ``c > 1`` bounding the loss of
            negative-advantage actions by ``-c A``. Defaults to ``None``.
        device (torch.device, optional): device of the buffers.

    Keys (``set_keys``): ``advantage`` (``"advantage"``), ``action``
    (``("tokens", "full")``), ``sample_log_prob`` (behaviour log-probs aligned with
    ``action``, ``("log_probs", "full")``), ``ref_log_probs``
    (``("ref_log_probs", "full")``, read only when ``kl_coef > 0``). The prompt
    length comes from ``("tokens", "prompt")``.

    Examples:
        >>> from torchrl.modules.llm import TransformersWrapper
        >>> from torchrl_gagpo.policies import make_tiny_model, make_tiny_tokenizer
        >>> tok = make_tiny_tokenizer(); model = make_tiny_model(tok)
        >>> actor = TransformersWrapper(model, tokenizer=tok, input_mode="tokens", generate=False,
        ...                             return_log_probs=True, pad_output=False)
        >>> loss = GAGPOLoss(actor, clip_epsilon=0.2)
        >>> loss.tensor_keys.sample_log_prob
        ('log_probs', 'full')
    """

    output_type = GAGPOLossOutput
    default_value_estimator = GroupedGAE

    @dataclass
    class _AcceptedKeys(GRPOLoss._AcceptedKeys):
        """Tensordict keys read by :class:`GAGPOLoss` (see the class docstring)."""

        advantage: NestedKey = "advantage"
        action: NestedKey = ("tokens", "full")
        sample_log_prob: NestedKey = ("log_probs", "full")
        ref_log_probs: NestedKey = ("ref_log_probs", "full")

    default_keys = _AcceptedKeys
    _schedulable_buffers = frozenset({"clip_epsilon_low", "clip_epsilon_high", "kl_coef", "entropy_coef"})

    def __init__(
        self,
        actor_network: LLMWrapperBase,
        *,
        clip_epsilon: float | tuple[float, float] = 0.2,
        ratio: Ratio = "action_mean",
        aggregation: Aggregation = "action_mean",
        kl_coef: float = 0.0,
        entropy_coef: float = 0.0,
        dual_clip: float | None = None,
        device: torch.device | None = None,
    ) -> None:
        if not isinstance(actor_network, LLMWrapperBase):
            raise ValueError(
                "GAGPOLoss needs a torchrl LLM wrapper (e.g. TransformersWrapper) as actor_network, "
                f"got {type(actor_network).__name__}."
            )
        if actor_network.generate or getattr(actor_network, "input_mode", None) != "tokens":
            raise ValueError(
                "GAGPOLoss scores the stored action tokens: build the actor with "
                "input_mode='tokens', generate=False (e.g. policy.get_new_version(input_mode='tokens', "
                "generate=False)); scoring a history would re-tokenise it."
            )
        if ratio not in ("action_mean", "action_sum", "token"):
            raise ValueError(f"ratio must be 'action_mean', 'action_sum' or 'token', got {ratio!r}.")
        if aggregation not in ("action_mean", "token_mean"):
            raise ValueError(f"aggregation must be 'action_mean' or 'token_mean', got {aggregation!r}.")
        for name, value in (("kl_coef", kl_coef), ("entropy_coef", entropy_coef)):
            if not float(value) >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if dual_clip is not None and not float(dual_clip) > 1:
            raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}.")
        self._kl_enabled = float(kl_coef) > 0
        super().__init__(
            actor_network,
            clip_epsilon=clip_epsilon,
            entropy_bonus=float(entropy_coef) > 0,
            entropy_coeff=float(entropy_coef),
            device=device,
            masking_strategy="sft",
        )
        buffer_device = self.clip_epsilon_low.device
        self.register_buffer("kl_coef", torch.tensor(float(kl_coef), device=buffer_device))
        self.register_buffer("entropy_coef", torch.tensor(float(entropy_coef), device=buffer_device))
        self.ratio = ratio
        self.aggregation = aggregation
        self.dual_clip = None if dual_clip is None else float(dual_clip)

    # -- keys --------------------------------------------------------------------------
    def _set_in_keys(self) -> None:
        k = self.tensor_keys
        keys = list(getattr(self.actor_network, "in_keys", []) or [])
        keys += [k.action, ("tokens", "prompt"), k.sample_log_prob, k.advantage]
        if getattr(self, "_kl_enabled", False):
            keys.append(k.ref_log_probs)
        self._in_keys = list(dict.fromkeys(keys))

    @property
    def out_keys(self) -> list[str]:
        keys = ["loss_objective", "clip_fraction", "ratio_mean", "ESS", "kl_approx"]
        if self._kl_enabled:
            keys += ["loss_kl", "kl_to_ref"]
        if self.entropy_bonus:
            keys += ["loss_entropy", "entropy"]
        return keys

    @out_keys.setter
    def out_keys(self, values) -> None:  # GRPOLoss assigns it; our list is derived
        pass

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if getattr(self, "_value_estimator", None) is not None:
            self._value_estimator.set_keys(advantage=self.tensor_keys.advantage)
        self._set_in_keys()

    def make_value_estimator(self, value_type=None, **hyperparams) -> GAGPOLoss:
        """Build or set the estimator used when a batch has no ``advantage``.

        Args:
            value_type: a ``ValueEstimatorBase`` subclass (built with ``hyperparams``)
                or instance; defaults to :class:`~torchrl_gagpo.GroupedGAE`.
        """
        if value_type is None:
            value_type = self.default_value_estimator
        is_class = isinstance(value_type, type) and issubclass(value_type, ValueEstimatorBase)
        if not (is_class or isinstance(value_type, ValueEstimatorBase)):
            raise ValueError(
                "GAGPOLoss takes a grouped estimator (GroupedGAE, GiGPOEstimator, GRPOEstimator, "
                f"RLOOEstimator, or another ValueEstimatorBase), got {value_type!r}."
            )
        super().make_value_estimator(value_type, **hyperparams)
        self._forward_value_estimator_keys()
        return self

    # -- forward -----------------------------------------------------------------------
    def _advantage(self, td: TensorDictBase) -> tuple[TensorDictBase, torch.Tensor]:
        key = self.tensor_keys.advantage
        if td.get(key, None) is None:
            td = self.value_estimator(td)
        advantage = td.get(key)
        b = td.batch_size.numel()
        if td.ndim != 1 or advantage.shape not in ((b, 1), (b, 1, 1)):
            raise ValueError(
                f"GAGPOLoss expects a 1-D batch of actions with an advantage of shape [B, 1] or "
                f"[B, 1, 1] (one value per action); got batch {tuple(td.batch_size)} and "
                f"advantage {tuple(advantage.shape)}."
            )
        advantage = advantage.reshape(b)
        if not bool(torch.isfinite(advantage).all()):
            raise ValueError("the advantage contains NaN or inf.")
        return td, advantage.detach()

    def _reduce(self, x: torch.Tensor, mask: torch.Tensor, n_tok: torch.Tensor, valid: torch.Tensor):
        """Aggregate a per-action ``[B]`` or per-token ``[B, T]`` quantity."""
        if x.ndim == 2:
            if self.aggregation == "token_mean":
                return torch.where(mask, x, 0.0).sum() / n_tok.sum()
            x = _per_action_mean(x, mask, n_tok)
        if self.aggregation == "token_mean":
            return (x * n_tok)[valid].sum() / n_tok.sum()
        return x[valid].mean()

    def _surrogate(self, log_ratio: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
        ratio = log_ratio.exp()
        # min(rho A, clip(rho) A), written per sign of A so an overflowing rho never meets A = 0.
        gain = torch.where(
            advantage >= 0,
            torch.minimum(ratio, 1 + self.clip_epsilon_high) * advantage,
            torch.maximum(ratio, 1 - self.clip_epsilon_low) * advantage,
        )
        if self.dual_clip is not None:
            gain = torch.where(advantage < 0, torch.maximum(gain, self.dual_clip * advantage), gain)
        return -gain

    def forward(self, tensordict: TensorDictBase) -> GAGPOLossOutput:
        """Compute the loss terms and diagnostics on a batch of actions."""
        k = self.tensor_keys
        if k.action not in tensordict.keys(True):
            raise ValueError(f"action tokens {k.action!r} are missing from the batch.")
        td, advantage = self._advantage(tensordict.copy())
        log_weight, dist, _, mask = self._log_weight(td, adv_shape=td.batch_size)
        token_lw = torch.where(mask, log_weight.squeeze(-1), 0.0)  # [B, T]
        n_tok = mask.sum(-1)
        valid = n_tok > 0
        if not bool(valid.any()):
            raise ValueError("no action tokens in the batch: every response is empty or masked.")
        if self.ratio == "token":
            unit_lw, unit_adv = token_lw, advantage[:, None].expand_as(token_lw)
        else:
            unit_lw = token_lw.sum(-1)
            if self.ratio == "action_mean":
                unit_lw = unit_lw / n_tok.clamp_min(1)
            unit_adv = advantage
        loss = self._reduce(self._surrogate(unit_lw, unit_adv), mask, n_tok, valid)
        out = TensorDict(loss_objective=loss)
        with torch.no_grad():
            lo, hi = self._clip_bounds
            clipped = ((unit_lw < lo) | (unit_lw > hi)).to(unit_lw.dtype)
            out["clip_fraction"] = self._reduce(clipped, mask, n_tok, valid)
            out["ratio_mean"] = self._reduce(unit_lw.exp(), mask, n_tok, valid)
            units = unit_lw[mask] if unit_lw.ndim == 2 else unit_lw[valid]
            out["ESS"] = (2 * units.logsumexp(0) - (2 * units).logsumexp(0)).exp() / units.numel()
            out["kl_approx"] = self._reduce(token_lw.exp() - 1 - token_lw, mask, n_tok, valid)
        if self._kl_enabled:
            kl = self._reduce(self._k3_to_ref(td, mask), mask, n_tok, valid)
            out["loss_kl"] = self.kl_coef * kl
            out["kl_to_ref"] = kl.detach()
        if self.entropy_bonus:
            entropy = self._reduce(dist.entropy(), mask, n_tok, valid)
            out["loss_entropy"] = -self.entropy_coef * entropy
            out["entropy"] = entropy.detach()
        return self.output_type.from_tensordict(out)

    def _k3_to_ref(self, td: TensorDictBase, mask: torch.Tensor) -> torch.Tensor:
        """Per-token k3 estimate of KL(pi || pi_ref), 0 outside ``mask``."""
        ref = td.get(self.tensor_keys.ref_log_probs, None, as_padded_tensor=True, padding_side="left", padding_value=0.0)
        if ref is None:
            raise KeyError(
                f"kl_coef > 0 but the reference log-probs {self.tensor_keys.ref_log_probs!r} are missing."
            )
        cur = td.get("_cur_log_prob")
        ref = ref.reshape(cur.shape) if ref.numel() == cur.numel() else ref
        if ref.shape != cur.shape:
            raise ValueError(
                f"reference log-probs of shape {tuple(ref.shape)} do not align with the action tokens "
                f"{tuple(cur.shape)}; store them aligned with {self.tensor_keys.action!r}."
            )
        keep = mask & torch.isfinite(ref)
        diff = torch.where(keep, ref - cur, 0.0)
        return diff.exp() - diff - 1
