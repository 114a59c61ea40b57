"""Input checks of the advantage kernels (:mod:`torchrl_gagpo.functional`): shapes, dtypes, devices, options.

The checks raise ``ValueError`` naming the bad input (``to_output`` names a result that does not
fit its dtype); the flat views and float64 copies the kernels compute on come from here. The
public kernels re-check their inputs on every call.
"""

from __future__ import annotations

import torch
from torch import Tensor

NORMALIZE_MODES = ("mean_std", "mean", "none")


def flat_steps(name: str, x: Tensor, n_ref: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.is_meta:
        raise ValueError(
            f"{name} is on the meta device: it has a shape but no values, so no advantage "
            "can be computed from it; pass a tensor on the CPU or a GPU."
        )
    if x.ndim == 2 and x.shape[-1] == 1:
        x = x.reshape(-1)
    elif x.ndim != 1:
        raise ValueError(
            f"{name} must have shape [N] or [N, 1] (one row per step), got {tuple(x.shape)}."
        )
    if n_ref is not None and x.numel() != n_ref:
        raise ValueError(
            f"{name} has {x.numel()} steps but reward has {n_ref}: every input must "
            "hold one row per step."
        )
    return x


def check_reward(reward: Tensor, name: str = "reward") -> Tensor:
    """Validated flat float64 copy of a per-step float input."""
    r = flat_steps(name, reward)
    if not r.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {r.dtype}.")
    if not all_finite(r):
        bad = int((~torch.isfinite(r)).nonzero()[0])
        raise ValueError(
            f"{name} contains NaN or inf (first at step {bad}); fix the environment "
            "reward before estimating advantages."
        )
    return r.to(torch.float64)


def all_finite(x: Tensor) -> bool:
    """Whether ``x`` holds no inf or NaN (one reduction in the common, finite case)."""
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):  # an inf or NaN makes the sum one
        return True
    return bool(torch.isfinite(x).all())  # the sum of finite values may still overflow


def to_output(x: Tensor, like: Tensor) -> Tensor:
    """Cast a float64 result back to the dtype and shape of ``like``; refuse inf/NaN."""
    out = x.to(like.dtype).view_as(like)
    if all_finite(out):
        return out
    if not all_finite(x):  # (x is the float64 result)
        raise ValueError(
            "the result overflows float64 (inf or NaN): the rewards are too large even for "
            "float64; rescale them."
        )
    raise ValueError(
        f"the result does not fit in {like.dtype} (inf or NaN): the rewards are too large; "
        "rescale them or pass float64 tensors."
    )


def check_done(done: Tensor, reward: Tensor) -> Tensor:
    d = flat_steps("done", done, reward.numel())
    if d.dtype != torch.bool:
        raise ValueError(f"done must be a bool tensor, got {d.dtype}.")
    if d.device != reward.device:
        raise ValueError(f"done is on {d.device} but reward is on {reward.device}.")
    if d.numel() and not bool(d[-1]):
        raise ValueError(
            "the last step is not done: every trajectory must be complete and end "
            "with done=True (collect whole trajectories, or split them on "
            "('next', 'done'))."
        )
    return d


def check_ids(name: str, ids: Tensor, reward: Tensor) -> Tensor:
    i = flat_steps(name, ids, reward.numel())
    if i.dtype == torch.bool or i.is_floating_point() or i.is_complex():
        raise ValueError(f"{name} must be an integer tensor (int64), got {i.dtype}.")
    if i.device != reward.device:
        raise ValueError(f"{name} is on {i.device} but reward is on {reward.device}.")
    return i.long()


def check_trajectory_groups(group_id: Tensor, done: Tensor) -> None:
    if group_id.numel() < 2:
        return
    changes = (group_id[1:] != group_id[:-1]).masked_fill_(done[:-1], False)
    if bool(changes.any()):
        step = int(changes.nonzero()[0]) + 1
        raise ValueError(
            f"group_id changes at step {step} inside a trajectory (the previous step "
            "is not done): a trajectory's last step must be done and all its steps "
            "must share one group_id."
        )


def check_normalize(normalize: str, eps: float) -> None:
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}.")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}.")


def check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}.")
    return value


def prepare_inputs(reward: Tensor, done: Tensor, group_id: Tensor | None = None):
    r = check_reward(reward)
    d = check_done(done, r)
    g = None
    if group_id is not None:
        g = check_ids("group_id", group_id, r)
        check_trajectory_groups(g, d)
    return r, d, g


def check_std_floor(std_floor: float) -> float:
    std_floor = float(std_floor)
    if not 0.0 <= std_floor < float("inf"):
        raise ValueError(f"std_floor must be a finite number >= 0 (in reward units), got {std_floor}.")
    return std_floor


def check_penalty(penalty: Tensor | None, r: Tensor) -> Tensor | None:
    """Validated flat float64 per-step penalty (``None`` stays ``None``)."""
    if penalty is None:
        return None
    p = check_reward(flat_steps("penalty", penalty, r.numel()), "penalty")
    if p.device != r.device:
        raise ValueError(f"penalty is on {p.device} but reward is on {r.device}.")
    return p


def check_singleton_value(singleton_value: str) -> None:
    if singleton_value not in ("proxy", "backup"):
        raise ValueError(f"singleton_value must be 'proxy' or 'backup', got {singleton_value!r}.")


def check_episode_stats(episode_stats: str) -> None:
    if episode_stats not in ("trajectory", "step"):
        raise ValueError(f"episode_stats must be 'trajectory' or 'step', got {episode_stats!r}.")
