"""Which state grouping gives the most accurate advantages: exact, similarity, history, embedding.

On the credit-assignment chain (``torchrl_gagpo.envs.credit``) the exact advantage
``A(s, a, t)`` of a fixed policy is known. Two versions of the same task play the same
episodes (their random clauses have their own stream):

* ``clean``: the observation is the room's name (``"the hall"``), so exact text matching
  finds every recurring state;
* ``noisy``: ``CreditTask(noise=0.8)``: the observation is the room's name and fixed
  description, and 80% of the visits add a random distractor clause (``"A clock shows
  3:07."``). The states, and so the exact advantages, are the clean task's.

For each task, policy (``uniform``; ``partly_trained``: ``go forward`` with probability
0.6) and grouping strategy (``torchrl_gagpo.grouping``: exact; similarity and embedding at
several thresholds, the embedding from the hashed character-trigram ``NgramEncoder``;
history with k = 1, 2), the rollouts are cut into rollout groups of G = 8, the strategy
groups their steps, and GAGPO (lambda 0.8) and GiGPO (both ``normalize="mean_std"``) run on
those groups. Per row:

* ``singleton_share``: share of the steps whose state group holds only that step;
* ``corr_exact`` / ``mse_rel``: Pearson correlation with the exact advantages, and the MSE
  after the best global scale divided by ``mean(A^2)`` (as ``advantage_accuracy.py``);
* ``purity``: share of the steps whose state group holds only steps of their own room
  (1 for exact matching on these tasks; merging different rooms lowers it);
* ``ms``: the strategy's time on the whole batch.

``--curves`` adds learning curves: the trainer (``python -m torchrl_gagpo.training``) on the
``credit`` and ``credit_noisy`` environments with ``--grouping`` per strategy, the setting
of ``learning_curves.py`` (tiny LM, choose policy, 10 iterations of 2 x 8 episodes), and
reports the steps to 80% rollout success over the seeds. ``--json`` writes one row per
measurement, ``kind`` ``"accuracy"`` (with ``task, strategy, singleton_share, corr_exact``)
or ``"curve"`` (one training run).

    python benchmarks/grouping_accuracy.py [--quick] [--json PATH] [--curves] [--seeds N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _runs import DEFAULT_WORKERS, print_table, run_jobs, train_quietly
from advantage_accuracy import score
from learning_curves import TASK, WINDOW, steps_to
from tensordict import NonTensorStack, TensorDict

from torchrl_gagpo import functional as F
from torchrl_gagpo._utils import state_digest
from torchrl_gagpo.envs.credit import CreditTask, exact_q_values, sample_episodes, skewed_policy
from torchrl_gagpo.grouping import (
    EmbeddingGrouping,
    ExactGrouping,
    HistoryGrouping,
    NgramEncoder,
    SimilarityGrouping,
    grouping_ids,
)  # fmt: skip
from torchrl_gagpo.training.config import TrainConfig
from torchrl_gagpo.training.logging import read_metrics

GROUP_SIZE = 8
TASKS = {"clean": 0.0, "noisy": 0.8}  # noise of the CreditTask
CHAIN = {"n_states": 5, "n_distractors": 2, "horizon": 12}
POLICIES = {"uniform": None, "partly_trained": 0.6}
THRESHOLDS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0)


def strategies(quick: bool) -> dict[str, object]:
    thresholds = (0.7, 0.8, 0.9) if quick else THRESHOLDS
    out = {"exact": ExactGrouping()}
    out.update({f"similarity@{t:g}": SimilarityGrouping(t) for t in thresholds})
    out.update({f"embedding@{t:g}": EmbeddingGrouping(t, encoder=NgramEncoder()) for t in thresholds})
    out.update({f"history@{k}": HistoryGrouping(k, action_key="action") for k in (1, 2)})
    return out


def make_batch(task: CreditTask, pi: np.ndarray, n_traj: int, gamma: float, seed: int):
    """``n_traj`` rollouts as the trainer's batch, with the exact advantage and the room of each step."""
    episodes = sample_episodes(task, pi, n_traj, seed=seed)
    Q, V = exact_q_values(task, pi, gamma)
    names, rooms, turns, actions, rewards, done, group = [], [], [], [], [], [], []
    for i, ep in enumerate(episodes):
        n = len(ep.actions)
        names += ep.names
        rooms += ep.rooms
        turns += ep.turns
        actions += ep.actions
        rewards += ep.rewards
        done += [False] * (n - 1) + [True]
        group += [i // GROUP_SIZE] * n
    n = len(names)
    column = lambda x, dtype: torch.tensor(x, dtype=dtype).reshape(n, 1)  # noqa: E731
    td = TensorDict(
        group_id=column(group, torch.int64), observation=NonTensorStack(*names),
        state_key=column([state_digest(name) for name in names], torch.int64),
        action=column(actions, torch.int64),
        next=TensorDict(reward=column(rewards, torch.float64), done=column(done, torch.bool), batch_size=[n]),
        batch_size=[n],
    )  # fmt: skip
    rooms, turns, actions = np.array(rooms), np.array(turns), np.array(actions)
    exact = Q[turns, rooms, actions] - V[turns, rooms]
    return td, exact, rooms


def diagnostics(group_id: torch.Tensor, ids: torch.Tensor, rooms: np.ndarray) -> dict:
    index, n = F.state_group_index(ids, group_id)
    size = torch.bincount(index, minlength=n)[index]
    room = torch.as_tensor(rooms)
    lo = torch.full((n,), 10**6, dtype=torch.long).scatter_reduce_(0, index, room, "amin")
    hi = torch.full((n,), -1, dtype=torch.long).scatter_reduce_(0, index, room, "amax")
    return {"state_groups": n, "singleton_share": float((size == 1).double().mean()),
            "purity": float((lo[index] == hi[index]).double().mean())}


def accuracy(n_traj: int, gamma: float, seed: int, quick: bool) -> list[dict]:
    rows = []
    for p, (policy, p_forward) in enumerate(POLICIES.items()):
        for task_name, noise in TASKS.items():
            task = CreditTask(**CHAIN, noise=noise)
            pi = skewed_policy(task, 1.0 / task.n_actions if p_forward is None else p_forward)
            # the same seed for both tasks: the same episodes
            td, exact, rooms = make_batch(task, pi, n_traj, gamma, seed=seed * 100 + p)
            reward, done = td["next", "reward"].reshape(-1), td["next", "done"].reshape(-1)
            group_id = td["group_id"].reshape(-1)
            for name, strategy in strategies(quick).items():
                start = time.perf_counter()
                ids = grouping_ids(strategy, td)
                ms = 1000 * (time.perf_counter() - start)
                base = {"task": task_name, "policy": policy, "strategy": name, "group_size": GROUP_SIZE,
                        "n_steps": int(exact.size), "ms": ms, **diagnostics(group_id, ids, rooms)}
                estimates = {
                    "gagpo": F.gagpo_advantage(reward, done, ids, group_id, gamma=gamma, lmbda=0.8),
                    "gigpo": F.gigpo_advantage(reward, done, ids, group_id, gamma=gamma),
                }
                for estimator, estimate in estimates.items():
                    s = score(estimate.numpy(), exact, raw=False)
                    rows.append({**base, "estimator": estimator, "corr_exact": s["corr"],
                                 "mse_rel": s["mse_rel"]})
    return rows


def print_accuracy(rows: list[dict]) -> None:
    for policy in dict.fromkeys(r["policy"] for r in rows):
        print(f"\npolicy {policy}, groups of {GROUP_SIZE}:")
        table = []
        for name in dict.fromkeys(r["strategy"] for r in rows):
            entry = {"strategy": name}
            for task in TASKS:
                pick = {r["estimator"]: r for r in rows
                        if (r["policy"], r["strategy"], r["task"]) == (policy, name, task)}
                entry[f"{task} singletons"] = f"{pick['gagpo']['singleton_share']:.3f}"
                entry[f"{task} purity"] = f"{pick['gagpo']['purity']:.3f}"
                entry[f"{task} corr gagpo"] = f"{pick['gagpo']['corr_exact']:.3f}"
                entry[f"{task} corr gigpo"] = f"{pick['gigpo']['corr_exact']:.3f}"
            entry["noisy ms"] = f"{pick['gagpo']['ms']:.0f}"
            table.append(entry)
        print_table(table, text_columns=("strategy",))


# -- learning curves ----------------------------------------------------------------------------------
CURVE_STRATEGIES = {
    "exact": {},
    "similarity@0.75": {"grouping": "similarity", "grouping_threshold": 0.75},
    "embedding@0.8": {"grouping": "embedding", "grouping_threshold": 0.8},
    "history@2": {"grouping": "history", "grouping_history": 2},
}


def run_curve(env: str, name: str, seed: int, iterations: int, workdir: Path) -> dict:
    out = workdir / f"{env}_{name}_seed{seed}"
    cfg = TrainConfig(**{**TASK, **CURVE_STRATEGIES[name], "env": env, "seed": seed, "iterations": iterations,
                         "out": str(out)})
    _, wall = train_quietly(cfg)
    metrics = read_metrics(out / "metrics.jsonl")
    steps = np.array([m["env_steps"] for m in metrics], dtype=float)
    success = np.array([m["success_rate"] for m in metrics], dtype=float)
    return {"task": env, "strategy": name, "seed": seed, "steps_to_80": steps_to(steps, success, 0.8),
            "final_success": float(success[-WINDOW:].mean()), "wall_s": wall,
            "singleton_share": float(np.mean([m["singleton_share"] for m in metrics]))}


def curves(seeds: int, iterations: int, workers: int, names: list[str]) -> list[dict]:
    jobs = [(env, name, seed) for env in ("credit", "credit_noisy") for name in names
            for seed in range(seeds)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="grouping_curves_") as tmp:
        results = run_jobs(run_curve, [(*job, iterations, Path(tmp)) for job in jobs], workers=workers)
        for (env, name, seed), row in zip(jobs, results, strict=True):
            print(f"  {env:<12} {name:<16} seed {seed}: to 80% {row['steps_to_80']}, final "
                  f"{row['final_success']:.2f}, {row['wall_s']:.0f} s", flush=True)
            rows.append(row)
    table = []
    for env in ("credit", "credit_noisy"):
        for name in names:
            rs = [r for r in rows if (r["task"], r["strategy"]) == (env, name)]
            hit = [r["steps_to_80"] for r in rs if r["steps_to_80"] is not None]
            table.append({"task": env, "strategy": name,
                          "steps_to_80": (f"{np.mean(hit):.0f} +- {np.std(hit):.0f} ({len(hit)}/{len(rs)})"
                                          if hit else f"never (0/{len(rs)})"),
                          "final_success": f"{np.mean([r['final_success'] for r in rs]):.2f}",
                          "group singleton share": f"{np.mean([r['singleton_share'] for r in rs]):.2f}"})
    print()
    print_table(table, text_columns=("task", "strategy"))
    return rows


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="fewer rollouts and thresholds (seconds)")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    parser.add_argument("--rollouts", type=int, default=None, help="rollouts per task and policy")
    parser.add_argument("--gamma", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curves", action="store_true", help="also train: steps to 80%% success")
    parser.add_argument("--seeds", type=int, default=None, help="learning-curve seeds (5, quick 2)")
    parser.add_argument("--iterations", type=int, default=None, help="iterations a run (10, quick 3)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="training runs side by side")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_traj = args.rollouts or (256 if args.quick else 2048)
    if n_traj < GROUP_SIZE or n_traj % GROUP_SIZE:
        parser.error(f"--rollouts must be a positive multiple of {GROUP_SIZE}, got {n_traj}")
    start = time.perf_counter()
    print(f"credit chain {CHAIN}, {n_traj} rollouts per task and policy, gamma {args.gamma}, "
          f"seed {args.seed}")
    rows = accuracy(n_traj, args.gamma, args.seed, args.quick)
    print_accuracy(rows)
    print(f"\naccuracy: {len(rows)} rows in {time.perf_counter() - start:.1f} s")
    rows = [{"kind": "accuracy", **r} for r in rows]
    if args.curves:
        seeds = args.seeds or (2 if args.quick else 5)
        iterations = args.iterations or (3 if args.quick else 10)
        names = ["exact", "similarity@0.75"] if args.quick else list(CURVE_STRATEGIES)
        print(f"\nlearning curves: {len(names)} strategies x 2 tasks x {seeds} seeds x {iterations} "
              "iterations")
        rows += [{"kind": "curve", **r} for r in curves(seeds, iterations, args.workers, names)]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
