"""Accuracy of every advantage estimator against the exact advantages of a known model.

On the credit-assignment chain (``torchrl_gagpo.envs.credit``) the exact advantage
``A(s, a, t) = Q(s, a, t) - V(s, t)`` of a fixed policy is known by dynamic programming
(finite horizon: the values depend on the turns left). For each environment preset,
each policy (``uniform``, and ``partly_trained``: ``go forward`` with probability 0.6)
and each group size G in 2, 4, 8, 16, the same seeded rollouts are cut into groups of
G, every estimator is run on them through the functional kernels, and its advantage of
every sampled step (s, a, t) is compared with the exact one:

* ``corr``: Pearson correlation over all sampled steps (scale-free).
* ``mse``: mean squared error after the best global scale, ``min_c mean((c * A_hat - A)^2)``
  (least squares through the origin; ``scale`` is that ``c``). Normalised advantages have
  no natural unit, so this is the MSE every row can be compared on. ``mse_rel`` is ``mse``
  divided by ``mean(A^2)``, the MSE of predicting 0 (0 is perfect, 1 is no information).
* ``mse_raw``: the plain MSE, without any fit, for the variants that keep the reward's
  unit (``normalize="none"``/``"mean"`` and RLOO); ``null`` for ``"mean_std"`` rows.

Variants: GAGPO at lambda 0, 0.5, 0.8, 0.95, 1 with ``normalize="none"`` (the raw GAE
over the grouped value proxy) and with the default ``"mean_std"``, each also with
``singleton_value="backup"`` (option ``backup``: a state seen once is valued
``r + gamma V(s')``, not the paper's); GAGPO (lambda 0 and 0.8), GiGPO and GRPO with
``"mean_std"`` and an absolute std floor (options ``floor=0.1``, ``floor=0.3``, in reward
units: the success reward is 1); GiGPO and GRPO with ``"mean"`` (their un-normalised form)
and ``"mean_std"`` (their default); RLOO. The
``oracle_gae`` rows are GAE with the exact ``V(s, t)``: the error any single-sample
estimator of that lambda keeps with a perfect baseline (the same for every G). Estimators
group by the observed name, so with ``revisit < 1`` a room seen at two turns may be two
state groups, as in the text environment. Discount ``gamma`` (default 0.95) is the same
for the exact values and the estimators; GRPO and RLOO use undiscounted returns by
definition.

    python benchmarks/advantage_accuracy.py [--quick] [--json PATH] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from torchrl_gagpo import functional as F
from torchrl_gagpo.envs.credit import CreditTask, exact_q_values, sample_episodes, skewed_policy

GROUP_SIZES = (2, 4, 8, 16)
LAMBDAS = (0.0, 0.5, 0.8, 0.95, 1.0)
ENVS = {
    "chain": {"n_states": 5, "n_distractors": 2, "horizon": 12},
    "slippery": {"n_states": 5, "n_distractors": 2, "horizon": 12, "slip": 0.2},
    "clocked": {"n_states": 5, "n_distractors": 2, "horizon": 12, "revisit": 0.25},
    "long": {"n_states": 8, "n_distractors": 2, "horizon": 30},
}
POLICIES = {"uniform": None, "partly_trained": 0.6}  # probability of "go forward" (None: uniform)
DEFAULT_PLOT = Path(__file__).resolve().parent / "out" / "advantage_accuracy.png"


def make_batch(task: CreditTask, pi: np.ndarray, n_traj: int, gamma: float, seed: int) -> dict:
    """Flat per-step tensors of ``n_traj`` rollouts, with the exact V, next V and A of every step."""
    episodes = sample_episodes(task, pi, n_traj, seed=seed)
    Q, V = exact_q_values(task, pi, gamma)
    ids: dict[str, int] = {}
    keys, rooms, turns, actions, rewards, done, traj, next_v = [], [], [], [], [], [], [], []
    for i, ep in enumerate(episodes):
        n = len(ep.actions)
        keys += [ids.setdefault(name, len(ids)) for name in ep.names]
        rooms += ep.rooms
        turns += ep.turns
        actions += ep.actions
        rewards += ep.rewards
        done += [False] * (n - 1) + [True]
        traj += [i] * n
        # exact value of the next step of the same episode: 0 after its last step (goal or truncation)
        next_v += [V[t + 1, r] for t, r in zip(ep.turns[:-1], ep.rooms[1:], strict=True)] + [0.0]
    rooms, turns, actions = np.array(rooms), np.array(turns), np.array(actions)
    exact = Q[turns, rooms, actions] - V[turns, rooms]
    as_t = lambda x, dtype=torch.float64: torch.tensor(x, dtype=dtype)  # noqa: E731
    return {
        "reward": as_t(rewards), "done": as_t(done, torch.bool), "state_key": as_t(keys, torch.int64),
        "traj": as_t(traj, torch.int64), "value": as_t(V[turns, rooms]), "next_value": as_t(next_v),
        "exact": exact, "success": float(np.mean([ep.won for ep in episodes])),
    }  # fmt: skip


FLOORS = (0.1, 0.3)


def variants(gamma: float) -> list[tuple[str, float | None, str, str, object]]:
    """``(estimator, lmbda, normalize, option, fn(batch, group_id) -> advantage)`` of every variant."""
    out = []
    for lam in LAMBDAS:
        for norm in ("none", "mean_std"):
            for single in ("proxy", "backup"):
                out.append(("gagpo", lam, norm, "" if single == "proxy" else "backup",
                            lambda b, g, lam=lam, norm=norm, single=single: F.gagpo_advantage(
                                b["reward"], b["done"], b["state_key"], g, gamma=gamma, lmbda=lam,
                                normalize=norm, singleton_value=single)))
    for floor in FLOORS:
        for lam in (0.0, 0.8):
            out.append(("gagpo", lam, "mean_std", f"floor={floor}", lambda b, g, lam=lam, floor=floor:
                        F.gagpo_advantage(b["reward"], b["done"], b["state_key"], g, gamma=gamma, lmbda=lam,
                                          std_floor=floor)))
    for norm in ("mean", "mean_std"):
        out.append(("gigpo", None, norm, "", lambda b, g, norm=norm: F.gigpo_advantage(
            b["reward"], b["done"], b["state_key"], g, gamma=gamma, normalize=norm)))
        out.append(("grpo", None, norm, "", lambda b, g, norm=norm: F.grpo_advantage(
            b["reward"], b["done"], g, normalize=norm)))
    for floor in FLOORS:
        out.append(("gigpo", None, "mean_std", f"floor={floor}", lambda b, g, floor=floor: F.gigpo_advantage(
            b["reward"], b["done"], b["state_key"], g, gamma=gamma, std_floor=floor)))
        out.append(("grpo", None, "mean_std", f"floor={floor}", lambda b, g, floor=floor: F.grpo_advantage(
            b["reward"], b["done"], g, std_floor=floor)))
    out.append(("rloo", None, "none", "", lambda b, g: F.rloo_advantage(b["reward"], b["done"], g)))
    for lam in LAMBDAS:  # GAE with the exact V(s, t): independent of the grouping
        out.append(("oracle_gae", lam, "none", "", lambda b, g, lam=lam: F.discounted_returns(
            b["reward"] + gamma * b["next_value"] - b["value"], b["done"], gamma * lam)))
    return out  # fmt: skip


def score(estimate: np.ndarray, exact: np.ndarray, raw: bool) -> dict:
    """Correlation, scale-fitted MSE (absolute and relative to ``mean(A^2)``) and plain MSE."""
    ss = float(estimate @ estimate)
    scale = float(estimate @ exact) / ss if ss > 0 else 0.0
    mse = float(np.mean((scale * estimate - exact) ** 2))
    corr = float(np.corrcoef(estimate, exact)[0, 1]) if estimate.std() > 0 and exact.std() > 0 else None
    return {"corr": corr, "mse": mse, "mse_rel": mse / float(np.mean(exact**2)), "scale": scale,
            "mse_raw": float(np.mean((estimate - exact) ** 2)) if raw else None}  # fmt: skip


def run(envs: list[str], n_traj: int, gamma: float, seed: int) -> list[dict]:
    rows = []
    for e, env in enumerate(envs):
        task = CreditTask(**ENVS[env])
        for p, (policy, p_forward) in enumerate(POLICIES.items()):
            pi = skewed_policy(task, 1.0 / task.n_actions if p_forward is None else p_forward)
            batch = make_batch(task, pi, n_traj, gamma, seed=seed * 1000 + e * 10 + p)
            exact = batch["exact"]
            block = []
            for group_size in GROUP_SIZES:
                group_id = batch["traj"] // group_size
                for estimator, lam, norm, option, fn in variants(gamma):
                    estimate = fn(batch, group_id).numpy()
                    block.append({"env": env, "policy": policy, "estimator": estimator, "lmbda": lam,
                                  "normalize": norm, "option": option, "group_size": group_size,
                                  "n_steps": exact.size,
                                  "success_rate": batch["success"],
                                  **score(estimate, exact, raw=norm != "mean_std")})  # fmt: skip
            print_block(env, task, policy, batch, block)
            rows += block
    return rows


def _fmt(x: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:>{width}.3f}"


def print_block(env: str, task: CreditTask, policy: str, batch: dict, block: list[dict]) -> None:
    exact = batch["exact"]
    print(f"\n{env} (n_states={task.n_states}, distractors={task.n_distractors}, horizon={task.horizon}, "
          f"slip={task.slip}, revisit={task.revisit}), policy {policy}: {exact.size:,} steps, "
          f"success {batch['success']:.2f}, mean(A^2) {np.mean(exact**2):.4g}")  # fmt: skip
    gs = " ".join(f"{'G=' + str(g):>6}" for g in GROUP_SIZES)
    print(f"{'estimator':<11} {'lmbda':>5} {'normalize':<9} {'option':<9} | corr {gs} | mse_rel {gs} "
          f"| mse_raw/mean(A^2) {gs}")  # fmt: skip
    seen = []
    for r in block:
        key = (r["estimator"], r["lmbda"], r["normalize"], r["option"])
        if key in seen:
            continue
        seen.append(key)
        same = [x for x in block if (x["estimator"], x["lmbda"], x["normalize"], x["option"]) == key]
        corr = " ".join(_fmt(x["corr"]) for x in same)
        rel = " ".join(_fmt(x["mse_rel"]) for x in same)
        raw = " ".join(_fmt(None if x["mse_raw"] is None else x["mse_raw"] / np.mean(exact**2)) for x in same)
        lam = "-" if key[1] is None else f"{key[1]:g}"
        print(f"{key[0]:<11} {lam:>5} {key[2]:<9} {key[3] or '-':<9} |      {corr} |         {rel} |"
              f"                   {raw}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(len(envs), len(policies), figsize=(5.5 * len(policies), 3.6 * len(envs)),
                             squeeze=False, sharey=True)  # fmt: skip
    cmap = plt.get_cmap("viridis")
    colours = {("gagpo", lam): cmap(0.9 * i / (len(LAMBDAS) - 1)) for i, lam in enumerate(LAMBDAS)}
    colours.update({("gigpo", None): "tab:red", ("grpo", None): "tab:orange", ("rloo", None): "tab:brown"})
    for i, env in enumerate(envs):
        for j, policy in enumerate(policies):
            ax = axes[i][j]
            for (est, lam), colour in colours.items():
                for norm in ("none", "mean", "mean_std"):
                    key = (env, policy, est, lam, norm)
                    pts = [(r["group_size"], r["corr"]) for r in rows
                           if r["corr"] is not None and not r["option"]
                           and (r["env"], r["policy"], r["estimator"], r["lmbda"], r["normalize"]) == key]
                    if pts:
                        label = est if lam is None else f"{est} λ={lam:g}"
                        label += " (mean_std)" if norm == "mean_std" else ""
                        ax.plot(*zip(*pts, strict=True), color=colour, ls="--" if norm == "mean_std" else "-",
                                marker="o", ms=3, label=label)  # fmt: skip
            oracle = [(r["group_size"], r["corr"]) for r in rows if (r["env"], r["policy"], r["estimator"],
                      r["lmbda"]) == (env, policy, "oracle_gae", 1.0)]  # fmt: skip
            ax.plot(*zip(*oracle, strict=True), color="black", ls=":", label="oracle GAE λ=1 (exact V)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(GROUP_SIZES, [str(g) for g in GROUP_SIZES])
            ax.set_title(f"{env}, {policy}", fontsize=10)
            ax.set_xlabel("group size G")
            ax.set_ylabel("corr with exact A(s, a, t)")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="one environment, fewer rollouts (under 30 s)")
    parser.add_argument("--json", type=str, default=None, help="write the rows as JSON here")
    parser.add_argument("--plot", type=str, default=str(DEFAULT_PLOT), help="plot path ('' for none)")
    parser.add_argument("--envs", nargs="+", choices=sorted(ENVS), default=None, help="environment presets")
    parser.add_argument("--rollouts", type=int, default=None, help="rollouts per environment and policy")
    parser.add_argument("--gamma", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the kernels are cheap here; leave the cores to others
    envs = args.envs or (["chain"] if args.quick else list(ENVS))
    n_traj = args.rollouts or (1024 if args.quick else 8192)
    if n_traj < max(GROUP_SIZES) or n_traj % max(GROUP_SIZES):
        parser.error(f"--rollouts must be a positive multiple of {max(GROUP_SIZES)}, got {n_traj}")
    start = time.perf_counter()
    print(f"{n_traj} rollouts per environment and policy, gamma {args.gamma}, seed {args.seed}")
    rows = run(envs, n_traj, args.gamma, args.seed)
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.1f} s")
    if args.plot:
        plot(rows, Path(args.plot))
        print(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
