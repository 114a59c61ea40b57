"""Speed of every advantage kernel against loop references, measured in the same run.

Two baselines: ``loop`` computes the way verl-agent's official GiGPO code does
(dictionaries, per-element tensor indexing, ``np.where`` per trajectory; see
``_official_style.py``), and ``float loop`` is this library's plain-Python oracle over
lists of floats (``torchrl_gagpo.reference``), the fastest a Python loop gets.

Batches look like training data: groups of G rollouts of T steps, states drawn from a
small pool per group so that they repeat within and across rollouts, a sparse terminal
reward. The paper setting is 16 groups x 8 rollouts x 50 steps = 6,400 steps; the
vectorised kernels are also timed at 10^5 and 10^6 steps to show linear growth.

    python benchmarks/advantage_speed.py [--quick] [--json PATH] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from _official_style import gagpo, gigpo, grpo, returns, rloo, value_proxy

from torchrl_gagpo import functional as F
from torchrl_gagpo import reference as R

GROUP_SIZE, STEPS = 8, 50


def make_batch(n_groups: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n_groups`` x 8 rollouts x 50 steps; half the rollouts succeed on their last step."""
    g = torch.Generator().manual_seed(seed)
    n_traj = n_groups * GROUP_SIZE
    n = n_traj * STEPS
    group_id = torch.arange(n_groups).repeat_interleave(GROUP_SIZE * STEPS)
    state_key = group_id * 1000 + torch.randint(0, 20, (n,), generator=g)  # 20 states per group
    done = torch.zeros(n, dtype=torch.bool)
    done[STEPS - 1 :: STEPS] = True
    reward = torch.zeros(n)
    reward[done] = 10.0 * (torch.rand(n_traj, generator=g) < 0.5).float()
    batch = {"reward": reward, "done": done, "state_key": state_key, "group_id": group_id}
    return {k: v.to(device) for k, v in batch.items()}


# name: (vectorised on tensors, official-style loop on CPU tensors, float loop on lists)
KERNELS: dict[str, tuple[Callable, Callable, Callable]] = {
    "discounted_returns": (
        lambda b: F.discounted_returns(b["reward"], b["done"], 0.95),
        lambda b: returns(b["reward"], b["done"], 0.95),
        lambda b: R.discounted_returns_loop(b["reward"], b["done"], 0.95),
    ),
    "grouped_value_proxy": (
        lambda b: F.grouped_value_proxy(b["reward"], b["state_key"], b["group_id"]),
        lambda b: value_proxy(b["reward"], b["state_key"], b["group_id"]),
        lambda b: R.grouped_value_proxy_loop(b["reward"], b["state_key"], b["group_id"]),
    ),
    "gagpo_advantage": (
        lambda b: F.gagpo_advantage(b["reward"], b["done"], b["state_key"], b["group_id"]),
        lambda b: gagpo(b["reward"], b["done"], b["state_key"], b["group_id"]),
        lambda b: R.gagpo_advantage_loop(b["reward"], b["done"], b["state_key"], b["group_id"]),
    ),
    "gigpo_advantage": (
        lambda b: F.gigpo_advantage(b["reward"], b["done"], b["state_key"], b["group_id"]),
        lambda b: gigpo(b["reward"], b["done"], b["state_key"], b["group_id"]),
        lambda b: R.gigpo_advantage_loop(b["reward"], b["done"], b["state_key"], b["group_id"]),
    ),
    "grpo_advantage": (
        lambda b: F.grpo_advantage(b["reward"], b["done"], b["group_id"]),
        lambda b: grpo(b["reward"], b["done"], b["group_id"]),
        lambda b: R.grpo_advantage_loop(b["reward"], b["done"], b["group_id"]),
    ),
    "rloo_advantage": (
        lambda b: F.rloo_advantage(b["reward"], b["done"], b["group_id"]),
        lambda b: rloo(b["reward"], b["done"], b["group_id"]),
        lambda b: R.rloo_advantage_loop(b["reward"], b["done"], b["group_id"]),
    ),
}


def timeit(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(sizes: list[int], loop_sizes: set[int], repeats: int, device: str) -> list[dict]:
    rows = []
    for n_groups in sizes:
        batch = make_batch(n_groups, device)
        on_cpu = {k: v.cpu() for k, v in batch.items()}
        as_lists = {k: v.tolist() for k, v in on_cpu.items()}
        steps = batch["reward"].numel()
        for name, (vectorized, official, float_loop) in KERNELS.items():
            vec_s = timeit(lambda: vectorized(batch), repeats, device)
            row = {"kernel": name, "steps": steps, "device": device, "vectorized_s": vec_s,
                   "loop_s": None, "speedup": None, "float_loop_s": None, "float_speedup": None}
            if n_groups in loop_sizes:
                result = vectorized(batch).cpu()
                torch.testing.assert_close(official(on_cpu), result, atol=1e-3, rtol=1e-3)
                torch.testing.assert_close(torch.tensor(float_loop(as_lists), dtype=result.dtype), result, atol=1e-4, rtol=1e-4)
                row["loop_s"] = timeit(lambda: official(on_cpu), 1, "cpu")
                row["float_loop_s"] = timeit(lambda: float_loop(as_lists), 3, "cpu")
                row["speedup"] = row["loop_s"] / vec_s
                row["float_speedup"] = row["float_loop_s"] / vec_s
            rows.append(row)
            loops = ""
            if row["loop_s"] is not None:
                loops = (f"{row['loop_s'] * 1e3:>10.1f} {row['speedup']:>8.0f}x "
                         f"{row['float_loop_s'] * 1e3:>10.2f} {row['float_speedup']:>8.1f}x")
            print(f"{name:<20} {steps:>9,} {vec_s * 1e3:>12.3f} {loops}", flush=True)
    return rows


def growth(rows: list[dict], small: int, large: int) -> None:
    print(f"\ntime ratio {large:,} / {small:,} steps (linear = {large / small:.0f}):")
    for name in KERNELS:
        t = {r["steps"]: r["vectorized_s"] for r in rows if r["kernel"] == name}
        if small in t and large in t:
            print(f"  {name:<20} {t[large] / t[small]:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, finishes in well under a minute")
    parser.add_argument("--json", type=str, default=None, help="write the table rows as JSON here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    per_group = GROUP_SIZE * STEPS
    paper = 16  # 16 groups x 8 rollouts x 50 steps = 6,400 steps
    big = [10**5 // per_group, 10**6 // per_group]  # 250 and 2,500 groups
    sizes = [paper, big[0]] if args.quick else [paper, *big]
    loop_sizes = {paper}  # the official-style loop is quadratic in the batch: 10^5 steps take minutes
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"{'kernel':<20} {'steps':>9} {'vectorized ms':>12} {'loop ms':>10} {'speedup':>9} "
          f"{'float ms':>10} {'speedup':>9}")
    rows = run(sizes, loop_sizes, repeats=5 if args.quick else 10, device=args.device)
    if not args.quick:
        growth(rows, big[0] * per_group, big[1] * per_group)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
