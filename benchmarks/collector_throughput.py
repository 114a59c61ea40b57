"""Collector throughput on ALFWorld: env steps/s with 1 and 2 workers per backend, and the collector's overhead.

    python benchmarks/collector_throughput.py [--quick] [--json PATH] [--policy random lm] [--interleave N]

Every measurement plays the same episodes (the same groups, tasks and per-turn sampling
seeds) on the embedded ALFWorld games, after one warm-up batch that is not timed:

* ``backend="direct"``: one ``ALFWorldEnv`` driven by a plain loop in this process
  (reset, policy, step), the reference for the collector's overhead;
* ``backend="local"``: ``GroupCollector`` with environments in worker processes and the
  policy in this process (batched over the workers);
* ``backend="threads"``: the same collector with ``env_processes=False``: each environment
  in a thread of this process (``ALFWorldEnv`` already runs its engine in a process of its own);
* ``backend="ray"``: ``GroupCollector`` with Ray actors (one CPU each), each with one
  environment and a policy replica.

Policies: ``random`` (a seeded random admissible action: the environments' own
throughput) and ``lm`` (the tiny in-process LM scoring every admissible action, the
training default). Rows: ``{policy, backend, workers, steps, seconds, steps_per_s,
speedup_vs_1_worker, overhead_vs_direct}``; ``overhead_vs_direct`` is ``1 - rate /
direct rate`` for one worker (positive: slower than the plain loop).

``--interleave N`` measures the one-worker overhead the robust way instead: the plain loop,
``local`` and ``threads`` stay built side by side and play the same groups round after round
(N rounds, one batch each), so that drift of the machine's speed hits all three alike. Rows:
``{policy, backend, rounds, steps_per_s_median, paired_overhead_median, paired_overhead_mean,
paired_overhead_min, paired_overhead_max}``, where a round's overhead is ``1 - rate / direct rate``
of that round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from _runs import print_table, write_rows
from tensordict import lazy_stack
from tensordict.nn import TensorDictModuleBase
from torchrl.data.llm import History
from torchrl.modules.llm.policies import ChatHistory

from torchrl_gagpo.collectors import GroupCollector
from torchrl_gagpo.policies import AdmissibleActionPolicy, make_tiny_model, make_tiny_tokenizer, row_generator


class RandomAdmissiblePolicy(TensorDictModuleBase):
    """Replies with a random admissible action, drawn with the row's ``sample_seed``."""

    in_keys = [("history", "prompt"), "admissible_actions"]
    out_keys = [("history", "full")]

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Linear(1, 1)  # nothing to learn; present so weight broadcasts have a target

    def forward(self, tensordict):
        rows = []
        for row in tensordict.unbind(0):
            actions = list(row["admissible_actions"])
            choice = int(torch.randint(len(actions), (1,), generator=row_generator(row, None)))
            prompt = row["history"].prompt
            reply = History(role="assistant", content=f"<action>{actions[choice]}</action>", batch_size=())
            row = row.copy()
            row["history"] = ChatHistory(prompt=prompt, full=prompt.append(reply, inplace=False), batch_size=())
            rows.append(row)
        return lazy_stack(rows)


def make_policy(kind: str):
    if kind == "random":
        return RandomAdmissiblePolicy()
    tokenizer = make_tiny_tokenizer()
    return AdmissibleActionPolicy(make_tiny_model(tokenizer, seed=0), tokenizer, score="mean")


def make_env(max_steps: int):
    from torchrl_gagpo.envs.alfworld import ALFWorldEnv

    return ALFWorldEnv(split="train", max_steps=max_steps, history_length=1)


def play_direct(env, policy, units) -> int:
    """The plain loop: every episode of ``units`` on one environment, in this process."""
    steps = 0
    for unit in units:
        for episode in unit:
            td = env.reset(episode.reset_td())
            turn = 0
            while True:
                row = td[0]
                row.set("sample_seed", torch.tensor([episode.turn_seed(turn)]))
                acted = policy(lazy_stack([row]))
                td = env.step(acted)["next"]
                steps, turn = steps + 1, turn + 1
                if bool(td["done"].reshape(-1)[0]):
                    break
    return steps


def measure(kind: str, backend: str, workers: int, groups: int, group_size: int, max_steps: int,
            repeats: int) -> dict:
    env_fn = partial(make_env, max_steps)
    policy = make_policy(kind)
    times, steps = [], 0
    with torch.no_grad():
        if backend == "direct":
            env = env_fn()
            collector = GroupCollector(env_fn, policy, group_size=group_size, groups_per_batch=groups,
                                       env_processes=False)  # only to draw the same groups as the others
            try:
                play_direct(env, policy, collector.next_groups(1))  # warm-up
                for _ in range(repeats):
                    units = collector.next_groups(groups)
                    start = time.perf_counter()
                    steps = play_direct(env, policy, units)
                    times.append(time.perf_counter() - start)
            finally:
                env.close()
                collector.shutdown()
        else:
            extra = {"policy_factory": partial(make_policy, kind), "policy_weights": policy.model} \
                if backend == "ray" else {"policy": policy, "env_processes": backend == "local"}
            with GroupCollector(env_fn, group_size=group_size, groups_per_batch=groups,
                                backend="ray" if backend == "ray" else "local",
                                num_workers=workers, **extra) as collector:
                collector.collect_groups(1)  # warm-up
                for _ in range(repeats):
                    start = time.perf_counter()
                    collector.collect_groups()
                    times.append(time.perf_counter() - start)
                    steps = collector.last_stats.steps
    seconds = sorted(times)[len(times) // 2]
    return {"policy": kind, "backend": backend, "workers": workers, "steps": steps, "seconds": round(seconds, 2),
            "steps_per_s": round(steps / seconds, 2)}


def interleave(kind: str, rounds: int, groups: int, group_size: int, max_steps: int) -> list[dict]:
    """Paired one-worker overheads: direct, local and threads play the same groups each round."""
    env_fn = partial(make_env, max_steps)
    policy = make_policy(kind)
    rates: dict[str, list[float]] = {"direct": [], "local": [], "threads": []}
    env = env_fn()
    made = dict(group_size=group_size, groups_per_batch=groups)
    drawer = GroupCollector(env_fn, policy, env_processes=False, **made)  # draws the direct loop's groups
    collectors = {"local": GroupCollector(env_fn, policy, env_processes=True, **made),
                  "threads": GroupCollector(env_fn, policy, env_processes=False, **made)}
    try:
        with torch.no_grad():
            play_direct(env, policy, drawer.next_groups(1))  # warm-up, as every collector below
            for collector in collectors.values():
                collector.collect_groups(1)
            for r in range(rounds):
                units = drawer.next_groups(groups)
                start = time.perf_counter()
                steps = play_direct(env, policy, units)
                rates["direct"].append(steps / (time.perf_counter() - start))
                for name, collector in collectors.items():
                    start = time.perf_counter()
                    collector.collect_groups()
                    rates[name].append(collector.last_stats.steps / (time.perf_counter() - start))
                print(f"{kind} round {r}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items()), flush=True)
    finally:
        env.close()
        for collector in (drawer, *collectors.values()):
            collector.shutdown()
    rows = []
    for name, values in rates.items():
        overhead = [1 - v / d for v, d in zip(values, rates["direct"], strict=True)]
        rows.append({"policy": kind, "backend": name, "rounds": rounds,
                     "steps_per_s_median": round(statistics.median(values), 2),
                     "paired_overhead_median": round(statistics.median(overhead), 3),
                     "paired_overhead_mean": round(statistics.mean(overhead), 3),
                     "paired_overhead_min": round(min(overhead), 3), "paired_overhead_max": round(max(overhead), 3)})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few short episodes (smoke test)")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    parser.add_argument("--policy", nargs="+", choices=["random", "lm"], default=["random", "lm"])
    parser.add_argument("--repeats", type=int, default=None, help="timed batches per row (median; default 3)")
    parser.add_argument("--interleave", type=int, default=None, metavar="N",
                        help="paired one-worker overheads over N interleaved rounds (direct, local, threads)")
    args = parser.parse_args(argv)
    groups, group_size, max_steps = (2, 2, 4) if args.quick else (4, 4, 15)
    if args.interleave is not None:
        if args.interleave < 1:
            parser.error("--interleave needs at least 1 round")
        rows = [row for kind in args.policy for row in interleave(kind, args.interleave, groups, group_size, max_steps)]
        print_table(rows, text_columns=("policy", "backend"))
        write_rows(args.json, rows)
        return rows
    repeats = args.repeats or (1 if args.quick else 3)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for kind in args.policy:
            for backend, workers in (("direct", 1), ("local", 1), ("local", 2), ("threads", 1), ("threads", 2),
                                     ("ray", 1), ("ray", 2)):
                row = measure(kind, backend, workers, groups, group_size, max_steps, repeats)
                rows.append(row)
                print(f"{kind:6s} {backend:6s} workers={workers}: {row['steps_per_s']} steps/s", flush=True)
    finally:
        ray.shutdown()
    for row in rows:
        one = next(r for r in rows if r["policy"] == row["policy"] and r["backend"] == row["backend"]
                   and r["workers"] == 1)
        direct = next(r for r in rows if r["policy"] == row["policy"] and r["backend"] == "direct")
        row["speedup_vs_1_worker"] = round(row["steps_per_s"] / one["steps_per_s"], 2)
        row["overhead_vs_direct"] = round(1 - row["steps_per_s"] / direct["steps_per_s"], 3) \
            if row["workers"] == 1 else None
    print_table(rows, text_columns=("policy", "backend"))
    write_rows(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
