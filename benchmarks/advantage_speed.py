"""Speed of every advantage kernel against the plain-Python loop reference, in the same run.

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


KERNELS: dict[str, tuple[Callable, Callable, tuple[str, ...]]] = {
    "discounted_returns": (
        lambda b: F.discounted_returns(b["reward"], b["done"], 0.95),
        lambda b: R.discounted_returns_loop(b["reward"], b["done"], 0.95),
        ("reward", "done"),
    ),
    "grouped_value_proxy": (
        lambda b: F.grouped_value_proxy(b["reward"], b["state_key"], b["group_id"]),
        lambda b: R.grouped_value_proxy_loop(b["reward"], b["state_key"], b["group_id"]),
        ("reward", "state_key", "group_id"),
    ),
    "gagpo_advantage": (
        lambda b: F.gagpo_advantage(b["reward"], b["done"], b["state_key"], b["group_id"]),
        lambda b: R.gagpo_advantage_loop(b["reward"], b["done"], b["state_key"], b["group_id"]),
        ("reward", "done", "state_key", "group_id"),
    ),
    "gigpo_advantage": (
        lambda b: F.gigpo_advantage(b["reward"], b["done"], b["state_key"], b["group_id"]),
        lambda b: R.gigpo_advantage_loop(b["reward"], b["done"], b["state_key"], b["group_id"]),
        ("reward", "done", "state_key", "group_id"),
    ),
    "grpo_advantage": (
        lambda b: F.grpo_advantage(b["reward"], b["done"], b["group_id"]),
        lambda b: R.grpo_advantage_loop(b["reward"], b["done"], b["group_id"]),
        ("reward", "done", "group_id"),
    ),
    "rloo_advantage": (
        lambda b: F.rloo_advantage(b["reward"], b["done"], b["group_id"]),
        lambda b: R.rloo_advantage_loop(b["reward"], b["done"], b["group_id"]),
        ("reward", "done", "group_id"),
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
        as_lists = {k: v.cpu().tolist() for k, v in batch.items()}
        steps = batch["reward"].numel()
        for name, (vectorized, loop, _) in KERNELS.items():
            vec_s = timeit(lambda: vectorized(batch), repeats, device)
            loop_s = None
            if n_groups in loop_sizes:
                loop_s = timeit(lambda: loop(as_lists), 1 if steps > 10**5 else 3, "cpu")
                check = torch.tensor(loop(as_lists), dtype=batch["reward"].dtype)
                torch.testing.assert_close(vectorized(batch).cpu(), check, atol=1e-4, rtol=1e-4)
            rows.append(
                {
                    "kernel": name,
                    "steps": steps,
                    "device": device,
                    "vectorized_s": vec_s,
                    "loop_s": loop_s,
                    "speedup": None if loop_s is None else loop_s / vec_s,
                }
            )
            speed = "" if loop_s is None else f"{loop_s * 1e3:>10.2f} {loop_s / vec_s:>8.0f}x"
            print(f"{name:<20} {steps:>9,} {vec_s * 1e3:>12.3f} {speed}", flush=True)
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
    loop_sizes = {paper} if args.quick else {paper, big[0]}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"{'kernel':<20} {'steps':>9} {'vectorized ms':>12} {'loop ms':>10} {'speedup':>9}")
    rows = run(sizes, loop_sizes, repeats=5 if args.quick else 10, device=args.device)
    if not args.quick:
        growth(rows, big[0] * per_group, big[1] * per_group)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
