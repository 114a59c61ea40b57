"""Pure tensor kernels for grouped, critic-free advantage estimation.

Every function here takes flat per-step tensors (one row per agent turn); the
kernels and their private helpers (``_scan``, ``_segments``, ``_checks``) import
nothing but torch.

Layout
------
* 1-D tensors of ``N`` steps; ``[N, 1]`` is accepted too and the result has the
  shape of ``reward``.
* The steps of one trajectory are contiguous and in time order, and the last
  step of every trajectory has ``done=True``. Trajectories and groups may come
  in any order.
* ``group_id`` (the rollout group: G rollouts of one task from one initial
  state) and ``state_key`` (a digest of the environment state) are integers.

Normalisation rules (``normalize=``)
------------------------------------
* ``"mean_std"``: ``(x - mean) / (std + eps)`` with the sample (unbiased) std.
* ``"mean"``: ``x - mean``.
* ``"none"``: ``x`` unchanged.
* A set of fewer than two values has std 1 and a mean equal to its value, so a
  singleton state group's GiGPO step term, or a one-trajectory GRPO group, is 0.
* One exception, kept from the official GiGPO code: GiGPO's *episode* term for a
  set of one value uses mean 0 and std 1 (the raw return passes through).

Precision
---------
Every kernel computes in float64 internally and returns the dtype of
``reward``: in float32, rounding noise of order 1e-7 in a group of identical
rollouts would otherwise be divided by ``std + eps`` (with ``eps=1e-6``) and
come out as advantages of order 1 instead of 0. A result that does not fit the
output dtype raises ``ValueError`` instead of returning inf or NaN.

Vectorisation
-------------
No Python loop runs over steps, trajectories or groups, whatever their lengths.
The backward recursions (returns, GAE) are a blocked scan: blocks of at most 64
steps solved by one product with a cached discount matrix, then a carry across
blocks that is the same scan on a 64 times shorter sequence (``_scan``): exact
sums with no division and no cancellation. Group statistics are ``bincount`` /
``index_add_`` over dense ids, made dense without sorting the state keys
(``_segments``). Memory is ``O(N)``. Inputs under ``2^22`` steps run on one
intra-op thread, so that the kernels stay fast when other cores are busy.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ._checks import (
    check_done,
    check_episode_stats,
    check_ids,
    check_normalize,
    check_penalty,
    check_reward,
    check_singleton_value,
    check_std_floor,
    check_trajectory_groups,
    check_unit,
    flat_steps,
    prepare_inputs,
    to_output,
)
from ._scan import ScanPlan, plan_scan, reverse_discounted_scan
from ._segments import dense_ids, pair_index

__all__ = [
    "GAGPOTerms",
    "check_group_structure",
    "discounted_returns",
    "gagpo_advantage",
    "gagpo_terms",
    "gigpo_advantage",
    "group_normalize",
    "grouped_value_proxy",
    "group_index",
    "grpo_advantage",
    "next_in_trajectory",
    "rloo_advantage",
    "state_group_index",
    "trajectory_index",
    "validate_options",
]

Normalize = Literal["mean_std", "mean", "none"]
# Kernels on fewer steps run on one intra-op thread (see ``_threads_for``).
_PARALLEL_MIN_STEPS = 1 << 22


# ---------------------------------------------------------------------------
# threading and the public checks (the input checks live in _checks.py)
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _threads_for(x: Tensor):
    """Run a kernel on ``x`` on one intra-op thread unless ``x`` is huge (CPU only).

    A kernel is a chain of memory-bound operations of microseconds to a few
    milliseconds each. With two or more intra-op threads every operation waits for
    all of them; when the other cores are busy (as in training, where environment
    workers share them) each wait costs up to a scheduler time slice, and a kernel
    becomes several to a hundred times slower, while on idle cores the threads gain
    little (docs/benchmarks.md). Below ``_PARALLEL_MIN_STEPS`` steps, so for every
    batch a trainer produces, the kernels therefore run single-threaded; the
    caller's setting is restored on exit.
    """
    threads = torch.get_num_threads()
    small = isinstance(x, Tensor) and x.device.type == "cpu" and x.numel() < _PARALLEL_MIN_STEPS
    if threads == 1 or not small:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _threads_by_size(kernel):
    """Decorate a kernel to run under :func:`_threads_for` its first argument."""
    first = next(iter(inspect.signature(kernel).parameters))

    @functools.wraps(kernel)
    def sized(*args, **kwargs):
        with _threads_for(args[0] if args else kwargs.get(first)):
            return kernel(*args, **kwargs)

    return sized


# the private entry points of the estimators and transforms get the same threading
_dense = _threads_by_size(dense_ids)
_pair_index = _threads_by_size(pair_index)


def check_group_structure(group_id: Tensor, done: Tensor) -> None:
    """Raise ``ValueError`` unless every trajectory keeps one ``group_id`` and ends with ``done``.

    Examples:
        >>> check_group_structure(torch.tensor([0, 0, 1]), torch.tensor([False, True, True]))
    """
    d = flat_steps("done", done)
    if d.dtype != torch.bool:
        raise ValueError(f"done must be a bool tensor, got {d.dtype}.")
    check_trajectory_groups(check_ids("group_id", group_id, d), d)


def group_index(group_id: Tensor) -> tuple[Tensor, int]:
    """Dense ids ``0..n-1`` of the rollout groups (in sorted order of ``group_id``) and ``n``.

    Examples:
        >>> index, n = group_index(torch.tensor([7, 7, 3, 7]))
        >>> index.tolist(), n
        ([1, 1, 0, 1], 2)
    """
    return _dense(flat_steps("group_id", group_id).long())


def state_group_index(state_key: Tensor, group_id: Tensor) -> tuple[Tensor, int]:
    """Dense ids of the ``(group_id, state_key)`` state groups and their number.

    Steps share an id exactly when they share both the rollout group and the state key.

    Examples:
        >>> index, n = state_group_index(torch.tensor([5, 6, 5, 5]), torch.tensor([0, 0, 0, 1]))
        >>> n, bool(index[0] == index[2]), bool(index[0] != index[3])
        (3, True, True)
    """
    g = flat_steps("group_id", group_id)
    if g.dtype == torch.bool or g.is_floating_point() or g.is_complex():
        raise ValueError(f"group_id must be an integer tensor (int64), got {g.dtype}.")
    return _pair_index(g.long(), check_ids("state_key", state_key, g))


def validate_options(
    *,
    gamma: float | None = None,
    lmbda: float | None = None,
    normalize: str | None = None,
    eps: float = 1e-6,
    std_floor: float | None = None,
    singleton_value: str | None = None,
    episode_stats: str | None = None,
) -> None:
    """Raise ``ValueError`` naming the first bad option among those given (``None``: not checked).

    The kernels check their options on every call; modules call this once, at construction.

    Examples:
        >>> validate_options(gamma=0.95, normalize="mean_std", std_floor=0.0)
        >>> validate_options(gamma=1.5)
        Traceback (most recent call last):
        ...
        ValueError: gamma must lie in [0, 1], got 1.5.
    """
    if gamma is not None:
        check_unit("gamma", gamma)
    if lmbda is not None:
        check_unit("lmbda", lmbda)
    if normalize is not None:
        check_normalize(normalize, eps)
    if std_floor is not None:
        check_std_floor(std_floor)
    if singleton_value is not None:
        check_singleton_value(singleton_value)
    if episode_stats is not None:
        check_episode_stats(episode_stats)


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------
def trajectory_index(done: Tensor) -> Tensor:
    """Index of the trajectory each step belongs to (0, 1, ... in batch order).

    Args:
        done (Tensor): bool ``[N]``; ``True`` on the last step of each trajectory.

    Examples:
        >>> trajectory_index(torch.tensor([False, True, True, False, True])).tolist()
        [0, 0, 1, 2, 2]
    """
    d = done.reshape(-1)
    index = torch.zeros(d.numel(), dtype=torch.long, device=d.device)
    index[1:] = d[:-1]  # a new trajectory starts after every done
    return index.cumsum_(0)


def _take(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` for 1-D ``x``; ``index_select`` is several times cheaper than advanced indexing."""
    return x.index_select(0, index)


def _segment_mean(x: Tensor, index: Tensor, n: int) -> Tensor:
    """Per-segment mean of ``x`` (segments given by a dense ``index``)."""
    count = torch.bincount(index, minlength=n).to(x.dtype)
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, index, x) / count


def _segment_mean_std(x: Tensor, index: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-segment count, mean and sample std (two-pass, no cancellation)."""
    count = torch.bincount(index, minlength=n).to(x.dtype)
    mean = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, index, x).div_(count)
    dev = _take(mean, index)
    torch.sub(x, dev, out=dev)
    sq = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, index, dev.mul_(dev))
    std = sq.div_((count - 1).clamp_min(1)).sqrt_()
    return count, mean, std


def _segment_centre_scale(
    x: Tensor, index: Tensor, n: int, normalize: str, eps: float, singleton_mean_zero: bool = False,
    std_floor: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Per-segment ``(centre, scale)`` of the normalisation rule: ``Norm(x) = (x - centre) / scale``."""
    count, mean, std = _segment_mean_std(x, index, n)
    single = count < 2
    centre = torch.where(single, torch.zeros_like(mean) if singleton_mean_zero else mean, mean)
    if normalize == "mean":
        return centre, torch.ones_like(std)
    return centre, torch.where(single, torch.ones_like(std), std.clamp_min(std_floor)) + eps


def _normalize_by(
    stats_x: Tensor, stats_index: Tensor, n: int, x: Tensor, x_index: Tensor, normalize: str, eps: float,
    singleton_mean_zero: bool = False, std_floor: float = 0.0,
) -> Tensor:
    """Normalise ``x`` (segments ``x_index``) with the statistics of ``stats_x`` (segments ``stats_index``).

    ``std_floor`` is an absolute lower bound on the std of sets of two or more values.
    """
    if normalize == "none" or x.numel() == 0:
        return x.clone()
    centre, scale = _segment_centre_scale(
        stats_x, stats_index, n, normalize, eps, singleton_mean_zero, std_floor
    )
    return (x - _take(centre, x_index)) / _take(scale, x_index)


@_threads_by_size
def _normalize_segments(
    x: Tensor,
    index: Tensor,
    n: int,
    normalize: str,
    eps: float,
    singleton_mean_zero: bool = False,
    std_floor: float = 0.0,
) -> Tensor:
    """Normalise ``x`` within the segments given by a dense ``index`` (see :func:`_normalize_by`)."""
    return _normalize_by(x, index, n, x, index, normalize, eps, singleton_mean_zero, std_floor)


@_threads_by_size
def group_normalize(
    x: Tensor,
    group_id: Tensor,
    normalize: Normalize = "mean_std",
    eps: float = 1e-6,
    *,
    std_floor: float = 0.0,
) -> Tensor:
    """Normalise ``x`` within the rows that share a ``group_id``.

    Follows the module's normalisation rules (a set of one value gives 0).

    Args:
        x (Tensor): float ``[N]`` or ``[N, 1]``.
        group_id (Tensor): int64, same shape.
        normalize (str): ``"mean_std"``, ``"mean"`` or ``"none"``.
        eps (float): added to the std.

    Keyword Args:
        std_floor (float): absolute lower bound on the std (in the unit of ``x``) of
            sets of two or more values, ``"mean_std"`` only. Defaults to ``0.0`` (off).

    Examples:
        >>> x = torch.tensor([1.0, 3.0, 5.0])
        >>> group_normalize(x, torch.tensor([0, 0, 1])).tolist()
        [-0.7071062922477722, 0.7071062922477722, 0.0]
    """
    check_normalize(normalize, eps)
    std_floor = check_std_floor(std_floor)
    v = check_reward(x, "x")
    g = check_ids("group_id", group_id, v)
    index, n = _dense(g)
    return to_output(_normalize_segments(v, index, n, normalize, eps, std_floor=std_floor), x)


@_threads_by_size
def _reverse_discounted_scan(x: Tensor, done: Tensor, factor: float, plan: ScanPlan | None = None) -> Tensor:
    """``y_t = x_t + factor * y_{t+1}`` inside each trajectory (``y := 0`` after done).

    A blocked scan (:mod:`torchrl_gagpo._scan`): exact sums, vectorised for any
    trajectory length. Pass the ``plan`` of ``done`` to share it between scans.
    """
    return reverse_discounted_scan(x, plan if plan is not None else plan_scan(done), factor)


# ---------------------------------------------------------------------------
# public kernels
# ---------------------------------------------------------------------------
@_threads_by_size
def discounted_returns(reward: Tensor, done: Tensor, gamma: float) -> Tensor:
    """Discounted return-to-go ``G_t = sum_k gamma^(k-t) r_k`` within each trajectory.

    Args:
        reward (Tensor): float ``[N]`` or ``[N, 1]``.
        done (Tensor): bool, same shape; ``True`` on each trajectory's last step.
        gamma (float): discount in ``[0, 1]``.

    Examples:
        >>> r = torch.tensor([0.0, 0.0, 10.0, 1.0])
        >>> d = torch.tensor([False, False, True, True])
        >>> discounted_returns(r, d, 0.5).tolist()
        [2.5, 5.0, 10.0, 1.0]
    """
    gamma = check_unit("gamma", gamma)
    r, d, _ = prepare_inputs(reward, done)
    return to_output(_reverse_discounted_scan(r, d, gamma), reward)


@_threads_by_size
def grouped_value_proxy(returns: Tensor, state_key: Tensor, group_id: Tensor) -> Tensor:
    """Mean of ``returns`` over all steps with the same ``(group_id, state_key)``.

    Every occurrence counts: a state visited twice in one trajectory contributes
    twice. The result is broadcast back to every step.

    Args:
        returns (Tensor): float ``[N]`` or ``[N, 1]``, e.g. :func:`discounted_returns`.
        state_key (Tensor): int64, same shape.
        group_id (Tensor): int64, same shape.

    Examples:
        >>> G = torch.tensor([1.0, 3.0, 4.0, 8.0])
        >>> s = torch.tensor([7, 7, 9, 7])
        >>> grouped_value_proxy(G, s, torch.tensor([0, 0, 0, 1])).tolist()
        [2.0, 2.0, 4.0, 8.0]
    """
    g_ret = check_reward(returns, "returns")
    s = check_ids("state_key", state_key, g_ret)
    g = check_ids("group_id", group_id, g_ret)
    index, n = _pair_index(g, s)
    return to_output(_take(_segment_mean(g_ret, index, n), index), returns)


def _next_in_trajectory(value: Tensor, done: Tensor) -> Tensor:
    """``value`` of the trajectory's next step, 0 after its last step."""
    nxt = torch.empty_like(value)
    nxt[:-1] = value[1:]
    nxt[-1:] = 0.0
    return nxt.masked_fill_(done, 0.0)


def next_in_trajectory(value: Tensor, done: Tensor) -> Tensor:
    """The ``value`` of each step's successor in its trajectory, 0 after the last step.

    Examples:
        >>> next_in_trajectory(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([False, True, True])).tolist()
        [2.0, 0.0, 0.0]
    """
    v = check_reward(value, "value")
    return to_output(_next_in_trajectory(v, check_done(done, v)), value)


@_threads_by_size
def _gagpo_raw(
    r: Tensor, d: Tensor, s: Tensor, g: Tensor, group_index: tuple[Tensor, int], gamma: float, lmbda: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Unnormalised GAGPO advantage, value proxy and next-step value (flat, checked inputs)."""
    plan = plan_scan(d)
    returns = _reverse_discounted_scan(r, d, gamma, plan)
    index, n = _pair_index(g, s, group_index)
    value = _take(_segment_mean(returns, index, n), index)
    next_value = _next_in_trajectory(value, d)
    delta = torch.mul(next_value, gamma, out=returns).add_(r).sub_(value)  # r + gamma V' - V
    advantage = _reverse_discounted_scan(delta, d, gamma * lmbda, plan)
    return advantage, value, next_value


def _singleton_backup(
    r: Tensor, d: Tensor, s: Tensor, g: Tensor, group_index: tuple[Tensor, int], gamma: float, lmbda: float,
    value: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """GAGPO's raw advantage, value and next value with ``V(s) := r + gamma V(s')`` on singleton states.

    An option, not the paper's. A state seen once in its rollout group takes the backed-up
    value of its successor instead of its own return, so its TD residual is 0 and it only
    passes on the credit of later steps. Runs of singletons back up from the first state
    with two or more visits (or from 0 after the last step).
    """
    index, n = _pair_index(g, s, group_index)
    single = _take(torch.bincount(index, minlength=n), index) == 1
    # one backward scan whose segments end at every non-singleton step (its proxy value) or at done
    value = discounted_returns(torch.where(single, r, value), d | ~single, gamma)
    next_value = _next_in_trajectory(value, d)
    advantage = discounted_returns(r + gamma * next_value - value, d, gamma * lmbda)
    return advantage, value, next_value


@_threads_by_size
def gagpo_advantage(
    reward: Tensor,
    done: Tensor,
    state_key: Tensor,
    group_id: Tensor,
    *,
    gamma: float = 0.95,
    lmbda: float = 0.8,
    normalize: Normalize = "mean_std",
    eps: float = 1e-6,
    std_floor: float = 0.0,
    singleton_value: Literal["proxy", "backup"] = "proxy",
    penalty: Tensor | None = None,
) -> Tensor:
    """GAGPO advantage: GAE over a grouped, non-parametric value proxy.

    ::

        G_t   = sum_k gamma^(k-t) r_k                         (return-to-go)
        V(s)  = mean{G_t : same (group_id, state_key) = s}     (value proxy)
        d_t   = r_t + gamma * V(s_{t+1}) - V(s_t)              (V := 0 after the last step)
        A_t   = d_t + gamma * lmbda * A_{t+1}                  (A := 0 after the last step)
        A     <- normalised over all steps sharing a group_id

    ``lmbda=1`` gives ``G_t - V(s_t)`` (Monte-Carlo), ``lmbda=0`` one-step TD.

    Args:
        reward (Tensor): float ``[N]`` or ``[N, 1]``.
        done (Tensor): bool, same shape.
        state_key (Tensor): int64, same shape; the state *before* each step's action.
        group_id (Tensor): int64, same shape.

    Keyword Args:
        gamma (float): discount. Defaults to ``0.95``.
        lmbda (float): GAE trace parameter. Defaults to ``0.8``.
        normalize (str): ``"mean_std"`` (default), ``"mean"`` or ``"none"``.
        eps (float): added to the std. Defaults to ``1e-6``.
        std_floor (float): absolute lower bound on the group std, in reward units
            (``"mean_std"`` only; an option, not the paper's). Defaults to ``0.0`` (off).
        singleton_value (str): ``"proxy"`` (default, the paper's: a state seen once is
            valued by its own return) or ``"backup"`` (an option, not the paper's:
            ``V(s) := r + gamma V(s')`` for states seen once).
        penalty (Tensor, optional): per-step amount already subtracted in ``reward``
            (the invalid-reply penalty). When given it is taken out of the returns and
            charged to its own step only: ``A_t`` (before normalisation) minus ``penalty_t``.

    Examples:
        >>> r = torch.tensor([0.0, 10.0, 0.0, 0.0])
        >>> d = torch.tensor([False, True, False, True])
        >>> s = torch.tensor([0, 1, 0, 2])
        >>> A = gagpo_advantage(r, d, s, torch.zeros(4, dtype=torch.long), normalize="none")
        >>> [round(a, 4) for a in A.tolist()]
        [4.75, 0.0, -4.75, 0.0]
    """
    return gagpo_terms(
        reward, done, state_key, group_id, gamma=gamma, lmbda=lmbda, normalize=normalize, eps=eps,
        std_floor=std_floor, singleton_value=singleton_value, penalty=penalty,
    ).advantage


class GAGPOTerms(NamedTuple):
    """What :func:`gagpo_terms` returns, each with the dtype and shape of ``reward``."""

    #: the normalised advantage (what :func:`gagpo_advantage` returns)
    advantage: Tensor
    #: GAE over the value proxy before the penalty charge and the normalisation
    raw_advantage: Tensor
    #: the value proxy ``V(s_t)``
    value: Tensor
    #: ``V(s_{t+1})`` (0 after the last step)
    next_value: Tensor


@_threads_by_size
def gagpo_terms(
    reward: Tensor,
    done: Tensor,
    state_key: Tensor,
    group_id: Tensor,
    *,
    gamma: float = 0.95,
    lmbda: float = 0.8,
    normalize: Normalize = "mean_std",
    eps: float = 1e-6,
    std_floor: float = 0.0,
    singleton_value: Literal["proxy", "backup"] = "proxy",
    penalty: Tensor | None = None,
    normalize_scope: Literal["group", "batch"] = "group",
) -> GAGPOTerms:
    """GAGPO's advantage with its intermediate terms: raw GAE, value proxy, next value.

    The arguments are those of :func:`gagpo_advantage`, plus ``normalize_scope``:
    ``"group"`` (default, the paper's) standardises over each rollout group,
    ``"batch"`` over every step of the call. ``raw_advantage + value`` is the
    ``lmbda``-return, the value target.

    Examples:
        >>> r = torch.tensor([0.0, 10.0, 0.0, 0.0])
        >>> d = torch.tensor([False, True, False, True])
        >>> s = torch.tensor([0, 1, 0, 2])
        >>> terms = gagpo_terms(r, d, s, torch.zeros(4, dtype=torch.long), gamma=0.95, lmbda=1.0,
        ...                     normalize="none")
        >>> [round(v, 4) for v in terms.value.tolist()]
        [4.75, 10.0, 4.75, 0.0]
        >>> torch.equal(terms.advantage, terms.raw_advantage)  # normalize="none", no penalty
        True
    """
    gamma = check_unit("gamma", gamma)
    lmbda = check_unit("lmbda", lmbda)
    check_normalize(normalize, eps)
    std_floor = check_std_floor(std_floor)
    check_singleton_value(singleton_value)
    if normalize_scope not in ("group", "batch"):
        raise ValueError(f"normalize_scope must be 'group' or 'batch', got {normalize_scope!r}.")
    r, d, g = prepare_inputs(reward, done, group_id)
    s = check_ids("state_key", state_key, r)
    p = check_penalty(penalty, r)
    task = r if p is None else r + p
    groups = _dense(g)
    raw, value, next_value = _gagpo_raw(task, d, s, g, groups, gamma, lmbda)
    if singleton_value == "backup":
        raw, value, next_value = _singleton_backup(task, d, s, g, groups, gamma, lmbda, value)
    charged = raw if p is None else raw - p
    scope = groups if normalize_scope == "group" else (torch.zeros_like(groups[0]), 1)
    advantage = _normalize_segments(charged, *scope, normalize, eps, std_floor=std_floor)
    return GAGPOTerms(*(to_output(x, reward) for x in (advantage, raw, value, next_value)))


def _trajectory_sums(r: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Per-trajectory reward sums and the trajectory index of every step."""
    traj = trajectory_index(d)
    return torch.bincount(traj, weights=r).to(r.dtype), traj  # (bincount of nothing is int64)


def _per_trajectory_groups(g: Tensor, d: Tensor) -> tuple[Tensor, int]:
    """Dense group index of each trajectory (read on its last step)."""
    return _dense(g[d])


def _episode_scores(
    r: Tensor, d: Tensor, g: Tensor, p: Tensor | None, episode_stats: str
) -> tuple[Tensor, Tensor, int, Tensor, Tensor]:
    """The sets behind an episode-level term: ``(stats values, their segments, n, row scores, row segments)``.

    A row's score is its trajectory's undiscounted return, minus the row's own
    ``penalty`` when given (``r`` is then the reward without it). ``"trajectory"``
    statistics count each trajectory's return once; ``"step"`` statistics are over
    the row scores (longer trajectories weigh more).
    """
    sums, traj = _trajectory_sums(r, d)
    rows = _take(sums, traj) if p is None else _take(sums, traj) - p
    if episode_stats == "step":
        index, n = _dense(g)
        return rows, index, n, rows, index
    tg, n = _per_trajectory_groups(g, d)
    return sums, tg, n, rows, _take(tg, traj)


@_threads_by_size
def gigpo_advantage(
    reward: Tensor,
    done: Tensor,
    state_key: Tensor,
    group_id: Tensor,
    *,
    gamma: float = 0.95,
    step_weight: float = 1.0,
    normalize: Normalize = "mean_std",
    episode_stats: Literal["trajectory", "step"] = "trajectory",
    eps: float = 1e-6,
    std_floor: float = 0.0,
    penalty: Tensor | None = None,
) -> Tensor:
    """GiGPO advantage: episode term plus ``step_weight`` times the anchor-state step term.

    ::

        A^E(tau_i) = normalise_group(R_i),  R_i = sum_t r_t (undiscounted)
        A^S_t      = normalise_{(group_id, state_key)}(G_t)
        A_t        = A^E + step_weight * A^S_t

    ``episode_stats="trajectory"`` takes the group statistics over one value per
    trajectory (the paper); ``"step"`` over every step row (the official code's
    default, longer trajectories weigh more). A set of one value uses mean 0 and
    std 1 for the episode term (official code), so it passes ``R`` through.

    Args:
        reward (Tensor): float ``[N]`` or ``[N, 1]``.
        done (Tensor): bool, same shape.
        state_key (Tensor): int64, same shape.
        group_id (Tensor): int64, same shape.

    Keyword Args:
        gamma (float): discount of the step term's return. Defaults to ``0.95``.
        step_weight (float): weight ``omega`` of the step term. Defaults to ``1.0``.
        normalize (str): for both terms. Defaults to ``"mean_std"``.
        episode_stats (str): ``"trajectory"`` (default) or ``"step"``.
        eps (float): added to the std. Defaults to ``1e-6``.
        std_floor (float): absolute lower bound on the std of both terms' sets, in
            reward units (``"mean_std"`` only). Defaults to ``0.0`` (off).
        penalty (Tensor, optional): per-step amount already subtracted in ``reward``
            (the invalid-reply penalty). When given it is taken out of the returns and
            charged to its own row only, as the official code does: the row's episode
            score is ``R_i - penalty_t`` and its step return ``G_t - penalty_t``.

    Examples:
        >>> r = torch.tensor([0.0, 10.0, 0.0, 0.0])
        >>> d = torch.tensor([False, True, False, True])
        >>> s = torch.tensor([0, 1, 0, 2])
        >>> A = gigpo_advantage(r, d, s, torch.zeros(4, dtype=torch.long), normalize="mean")
        >>> A.tolist()
        [9.75, 5.0, -9.75, -5.0]
    """
    gamma = check_unit("gamma", gamma)
    check_normalize(normalize, eps)
    check_episode_stats(episode_stats)
    std_floor = check_std_floor(std_floor)
    step_weight = float(step_weight)
    if not 0 <= step_weight < float("inf"):
        raise ValueError(f"step_weight must be finite and >= 0, got {step_weight}.")
    r, d, g = prepare_inputs(reward, done, group_id)
    s = check_ids("state_key", state_key, r)
    p = check_penalty(penalty, r)
    task = r if p is None else r + p
    stats, stats_index, n, rows, rows_index = _episode_scores(task, d, g, p, episode_stats)
    episode = _normalize_by(stats, stats_index, n, rows, rows_index, normalize, eps, True, std_floor)
    returns = _reverse_discounted_scan(task, d, gamma)
    if p is not None:
        returns = returns - p
    index, n = _pair_index(g, s)
    step = _normalize_segments(returns, index, n, normalize, eps, std_floor=std_floor)
    return to_output(episode + step_weight * step, reward)


@_threads_by_size
def grpo_advantage(
    reward: Tensor,
    done: Tensor,
    group_id: Tensor,
    *,
    normalize: Normalize = "mean_std",
    eps: float = 1e-6,
    std_floor: float = 0.0,
    episode_stats: Literal["trajectory", "step"] = "trajectory",
    penalty: Tensor | None = None,
) -> Tensor:
    """GRPO advantage: trajectory reward sums normalised across the group, broadcast to steps.

    Args:
        reward (Tensor): float ``[N]`` or ``[N, 1]``.
        done (Tensor): bool, same shape.
        group_id (Tensor): int64, same shape.

    Keyword Args:
        normalize (str): ``"mean_std"`` (default), ``"mean"`` or ``"none"``.
        eps (float): added to the std. Defaults to ``1e-6``.
        std_floor (float): absolute lower bound on the group std, in reward units
            (``"mean_std"`` only). Defaults to ``0.0`` (off).
        episode_stats (str): ``"trajectory"`` (default: one value per trajectory) or
            ``"step"`` (one value per step row, as verl-agent's GRPO, where every step
            is a sample: longer trajectories weigh more).
        penalty (Tensor, optional): per-step amount already subtracted in ``reward``;
            when given it is charged to its own row only: the row's score is
            ``R_i - penalty_t`` (see :func:`gigpo_advantage`).

    Examples:
        >>> r = torch.tensor([0.0, 1.0, 0.0])
        >>> d = torch.tensor([False, True, True])
        >>> grpo_advantage(r, d, torch.zeros(3, dtype=torch.long), normalize="mean").tolist()
        [0.5, 0.5, -0.5]
    """
    check_normalize(normalize, eps)
    check_episode_stats(episode_stats)
    std_floor = check_std_floor(std_floor)
    r, d, g = prepare_inputs(reward, done, group_id)
    p = check_penalty(penalty, r)
    scores = _episode_scores(r if p is None else r + p, d, g, p, episode_stats)
    return to_output(_normalize_by(*scores, normalize, eps, std_floor=std_floor), reward)


@_threads_by_size
def rloo_advantage(
    reward: Tensor,
    done: Tensor,
    group_id: Tensor,
    *,
    episode_stats: Literal["trajectory", "step"] = "trajectory",
    penalty: Tensor | None = None,
) -> Tensor:
    """RLOO advantage: ``R_i`` minus the mean of the other trajectories' ``R`` in the group.

    Broadcast to every step; 0 for a group with a single trajectory.

    Args:
        reward (Tensor): float ``[N]`` or ``[N, 1]``.
        done (Tensor): bool, same shape.
        group_id (Tensor): int64, same shape.

    Keyword Args:
        episode_stats (str): ``"trajectory"`` (default: leave one trajectory out) or
            ``"step"`` (leave one step row out among all rows of the group, as
            verl-agent's RLOO, where every step is a sample).
        penalty (Tensor, optional): per-step amount already subtracted in ``reward``;
            when given it is charged to its own row only: the row's score is
            ``R_i - penalty_t``, the baseline is built from the others' scores
            (``"step"``) or returns (``"trajectory"``).

    Examples:
        >>> r = torch.tensor([0.0, 3.0, 0.0, 6.0])
        >>> d = torch.tensor([False, True, True, True])
        >>> rloo_advantage(r, d, torch.zeros(4, dtype=torch.long)).tolist()
        [0.0, 0.0, -4.5, 4.5]
    """
    check_episode_stats(episode_stats)
    r, d, g = prepare_inputs(reward, done, group_id)
    p = check_penalty(penalty, r)
    task = r if p is None else r + p
    stats, stats_index, n, rows, rows_index = _episode_scores(task, d, g, p, episode_stats)
    count = torch.bincount(stats_index, minlength=n).to(r.dtype)
    total = torch.zeros(n, dtype=r.dtype, device=r.device).index_add_(0, stats_index, stats)
    # the row's own value as the set sees it (its return, or its own score in "step" mode)
    own = rows if p is None or episode_stats == "step" else rows + p
    c = _take(count, rows_index)
    others = (_take(total, rows_index) - own) / (c - 1).clamp_min(1)
    return to_output(torch.where(c > 1, rows - others, rows - own), reward)
