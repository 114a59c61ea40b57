"""Learning curves on the credit-assignment chain: GAGPO against GiGPO, GRPO, RLOO and PPO, and ablations.

Every run is the trainer itself (``torchrl_gagpo.training.train``) with the same tiny in-process LM,
the ``choose`` policy, the same budget (iterations of ``groups_per_iter x group_size`` episodes) and
the same seeds; only the experiment's overrides differ:

* main: ``gagpo`` (defaults: lambda 0.8, group ``mean_std``), ``gigpo``, ``grpo``, ``rloo``,
  ``ppo`` (a learned critic: a value head on the policy LM, turn-level GAE with the same gamma
  and lambda, ``loss_critic`` weight 0.5, value clip 0.5) (``--estimator``), all with the
  ``shared`` preset (one loss for all: the choose policy's candidate ratio, mean over actions,
  clip 0.2, no KL);
* official: ``gigpo_official``, ``grpo_official``, ``rloo_official``, ``ppo_official``
  (``gamma = lambda = 1``, as verl-agent's PPO): each baseline with the loss
  and estimator options its authors' code runs (``preset="official"``, see
  :mod:`torchrl_gagpo.presets`: token-mean aggregation, dual clip 3, KL 0.01, entropy 0.001,
  the invalid-reply penalty per row, row statistics for GRPO/RLOO);
* ablations of GAGPO: ``gagpo_lambda0`` / ``gagpo_lambda1`` (``lmbda`` 0 and 1), ``gagpo_batch_norm``
  (``normalize_scope="batch"``: standardised over all the iteration's steps instead of per rollout
  group), ``gagpo_episode_term`` (``episode_weight=1``: GiGPO's group-normalised episode return
  added to GAGPO's advantage), ``gagpo_std_floor`` (``std_floor=0.1``, a tenth of the success
  reward), ``gagpo_singleton_backup`` (``singleton_value="backup"``, not the paper's).

Every run trains with the choose policy's true ratio (``ratio="auto"``); the preset, std floor and
singleton options are fields of the training config.

The task is the ``credit`` environment (``envs/credit.py``, 5 rooms, 2 do-nothing commands) with the
horizon ``max_steps`` of ``TASK``: the uniform policy succeeds in a small share of its episodes (the
exact value is printed), so iteration 0 is not solved and every estimator has something to learn.
The curves cost nothing extra: success is the rollout success of each iteration (``success_rate`` of
``metrics.jsonl``), plotted at the cumulative ``env_steps`` after that iteration's collection;
evaluation is reduced to one greedy episode before and after. Per run:

* ``final_success``: mean rollout success of the last 3 iterations;
* ``steps_to_50`` / ``steps_to_80``: environment steps when the trailing 3-iteration mean of the
  success first reaches 0.5 / 0.8 (``null`` if never);
* ``adv_iqr`` / ``adv_share_gt1``: the trainer's ``advantage_iqr`` and ``advantage_abs_gt1``
  (inter-quartile range of the advantages, share of steps with ``|A| > 1``), averaged over iterations;
* ``clip_fraction`` / ``clip_fraction_max``: the loss's share of clipped actions, mean of the
  iteration means and the largest iteration mean.

Outputs (``--out``, default ``benchmarks/out/learning_curves/``): ``<experiment>.png`` (mean +- std
over seeds on a common env-step grid, seeds as thin lines), ``overview.png`` (all means), and with
``--json`` one row per experiment and seed. Runs are independent and seeded by the trainer, so
``--workers`` processes (default: one per core, at most 2) run them side by side, each with
``torch.set_num_threads(--threads)``; ``--check_determinism`` re-runs the first one and compares.

    python benchmarks/learning_curves.py [--quick] [--json PATH] [--out DIR] [--seeds N] [--workers N]
        [--iterations N] [--experiments NAME ...] [--set field=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _runs import DEFAULT_WORKERS, parse_set, print_table, run_jobs, train_quietly, write_rows

from torchrl_gagpo.envs.credit import CreditTask, exact_values, skewed_policy
from torchrl_gagpo.training.config import TrainConfig
from torchrl_gagpo.training.logging import read_metrics

#: name: (kind, TrainConfig overrides of TASK)
EXPERIMENTS = {
    "gagpo": ("main", {}),
    "gigpo": ("main", {"estimator": "gigpo"}),
    "grpo": ("main", {"estimator": "grpo"}),
    "rloo": ("main", {"estimator": "rloo"}),
    "ppo": ("main", {"estimator": "ppo"}),
    "gigpo_official": ("official", {"estimator": "gigpo", "preset": "official"}),
    "grpo_official": ("official", {"estimator": "grpo", "preset": "official"}),
    "rloo_official": ("official", {"estimator": "rloo", "preset": "official"}),
    "ppo_official": ("official", {"estimator": "ppo", "preset": "official"}),
    "gagpo_lambda0": ("ablation", {"lmbda": 0.0}),
    "gagpo_lambda1": ("ablation", {"lmbda": 1.0}),
    "gagpo_batch_norm": ("ablation", {"normalize_scope": "batch"}),
    "gagpo_episode_term": ("ablation", {"episode_weight": 1.0}),
    "gagpo_std_floor": ("ablation", {"std_floor": 0.1}),
    "gagpo_singleton_backup": ("ablation", {"singleton_value": "backup"}),
}
MAIN = [name for name, (kind, _) in EXPERIMENTS.items() if kind == "main"]
#: the shared setting: the credit chain of the `credit` factory (5 rooms, 2 distractors) with horizon 8,
#: 2 groups of 8 rollouts per iteration, no history in the prompt (the room is the state); lr 5e-3 and
#: minibatches of 16 so that the tiny model can learn the task in ~1,000 environment steps
TASK = {
    "env": "credit", "max_steps": 8, "history_length": 0, "groups_per_iter": 2, "group_size": 8,
    "num_workers": 2, "env_processes": False, "minibatch_size": 16, "epochs": 1, "lr": 5e-3, "gamma": 0.95,
    "eval_episodes": 1, "logger": "none", "progress": False, "checkpoint_every": 10**6,
}  # fmt: skip
CREDIT_FACTORY = {"n_states": 5, "n_distractors": 2}  # what torchrl_gagpo.training.envs.credit_env builds
DEFAULT_ITERATIONS, QUICK_ITERATIONS = 10, 3
WINDOW = 3  # iterations in the trailing mean (thresholds) and in the final success
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "learning_curves"


def uniform_success(max_steps: int) -> float:
    """Exact success probability of the uniform policy on the factory's chain (gamma 1)."""
    task = CreditTask(**CREDIT_FACTORY, horizon=max_steps)
    return float(exact_values(task, skewed_policy(task, 1.0 / task.n_actions), gamma=1.0)[0, task.start])


def trailing_mean(x: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean of the last ``window`` values (fewer at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    lo = np.maximum(np.arange(1, len(x) + 1) - window, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(x) + 1) - lo)


def steps_to(steps: np.ndarray, success: np.ndarray, threshold: float) -> int | None:
    """First ``env_steps`` at which the trailing mean success reaches ``threshold`` (None if never)."""
    hit = np.flatnonzero(trailing_mean(success) >= threshold)
    return int(steps[hit[0]]) if hit.size else None


def run_one(name: str, seed: int, iterations: int, base: dict, workdir: Path) -> dict:
    kind, overrides = EXPERIMENTS[name]
    out = workdir / f"{name}_seed{seed}"
    cfg = TrainConfig(**{**base, **overrides, "seed": seed, "iterations": iterations, "out": str(out)})
    _, wall = train_quietly(cfg)
    metrics = read_metrics(out / "metrics.jsonl")
    steps = np.array([m["env_steps"] for m in metrics], dtype=float)
    success = np.array([m["success_rate"] for m in metrics], dtype=float)
    mean_of = lambda key: float(np.nanmean([np.nan if m.get(key) is None else m[key] for m in metrics]))  # noqa: E731
    return {
        "estimator": name, "experiment": name, "kind": kind, "base_estimator": cfg.estimator, "seed": seed,
        "final_success": float(success[-WINDOW:].mean()), "steps_to_50": steps_to(steps, success, 0.5),
        "steps_to_80": steps_to(steps, success, 0.8), "adv_iqr": mean_of("advantage_iqr"),
        "adv_share_gt1": mean_of("advantage_abs_gt1"), "initial_success": float(success[0]),
        "clip_fraction": mean_of("clip_fraction"),
        "clip_fraction_max": float(np.nanmax([m.get("clip_fraction", np.nan) for m in metrics])),
        "iterations": iterations, "total_env_steps": int(steps[-1]), "wall_s": wall,
        "env_steps": steps.astype(int).tolist(), "success": success.tolist(), "overrides": overrides,
    }  # fmt: skip


def grid_curves(rows: list[dict], n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Every seed's success interpolated on a common env-step grid: ``(grid [n], curves [seeds, n])``."""
    lo = max(r["env_steps"][0] for r in rows)
    hi = min(r["env_steps"][-1] for r in rows)
    grid = np.linspace(lo, max(hi, lo), n)
    return grid, np.stack([np.interp(grid, r["env_steps"], r["success"]) for r in rows])


def _ms(values: list, fmt: str = "{:.2f}") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "never"
    text = f"{fmt.format(np.mean(vals))} ± {fmt.format(np.std(vals))}"
    return text if len(vals) == len(values) else f"{text} ({len(vals)}/{len(values)})"


def summary_table(rows: list[dict]) -> list[dict]:
    table = []
    for name in dict.fromkeys(r["experiment"] for r in rows):
        rs = [r for r in rows if r["experiment"] == name]
        table.append({
            "experiment": name, "kind": rs[0]["kind"], "seeds": len(rs),
            "final_success": _ms([r["final_success"] for r in rs]),
            "steps_to_50": _ms([r["steps_to_50"] for r in rs], "{:.0f}"),
            "steps_to_80": _ms([r["steps_to_80"] for r in rs], "{:.0f}"),
            "adv_iqr": _ms([r["adv_iqr"] for r in rs]),
            "adv_share_gt1": _ms([r["adv_share_gt1"] for r in rs]),
            "clip_fraction": _ms([r["clip_fraction"] for r in rs], "{:.3f}"),
            "clip_fraction_max": f"{max(r['clip_fraction_max'] for r in rs):.3f}",
            "initial_success": _ms([r["initial_success"] for r in rs]),
            "run_s": f"{np.mean([r['wall_s'] for r in rs]):.0f}",
        })  # fmt: skip
    return table


def plot(rows: list[dict], out: Path, uniform: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["experiment"] for r in rows))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def decorate(ax, title):
        for level in (0.5, 0.8):
            ax.axhline(level, color="grey", lw=0.6, ls="--")
        ax.axhline(uniform, color="black", lw=0.8, ls=":", label=f"uniform policy ({uniform:.2f})")
        ax.set(xlabel="environment steps", ylabel="rollout success rate", ylim=(-0.02, 1.02), title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")

    fig_all, ax_all = plt.subplots(figsize=(7, 4.5))
    for name in names:
        rs = [r for r in rows if r["experiment"] == name]
        grid, curves = grid_curves(rs)
        mean, std = curves.mean(0), curves.std(0)
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rs:
            ax.plot(r["env_steps"], r["success"], color=colours[name], lw=0.8, alpha=0.5)
        ax.plot(grid, mean, color=colours[name], lw=2, label=f"{name}: mean ± std, {len(rs)} seeds")
        ax.fill_between(grid, mean - std, mean + std, color=colours[name], alpha=0.2)
        decorate(ax, f"credit chain: {name}")
        fig.tight_layout()
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        style = "-" if rs[0]["kind"] == "main" else "--"
        ax_all.plot(grid, mean, color=colours[name], ls=style, lw=1.8, label=name)
        ax_all.fill_between(grid, mean - std, mean + std, color=colours[name], alpha=0.08)
    decorate(ax_all, "credit chain: mean rollout success over seeds")
    fig_all.tight_layout()
    paths.append(out / "overview.png")
    fig_all.savefig(paths[-1], dpi=110)
    plt.close(fig_all)
    return paths


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"2 seeds, the 5 main estimators, {QUICK_ITERATIONS} iterations (under 4 min)")
    parser.add_argument("--json", default=None, help="write one row per experiment and seed here")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="directory of the PNGs ('' for none)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5, quick 2)")
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"iterations per run (default {DEFAULT_ITERATIONS}, quick {QUICK_ITERATIONS})")
    parser.add_argument("--experiments", nargs="+", choices=list(EXPERIMENTS), default=None,
                        help="default: all (quick: the 5 main estimators)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override TASK's TrainConfig fields, e.g. --set max_steps=10 lr=1e-3")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the model is tiny)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="runs side by side in separate processes (default: one per core, at most 2)")
    parser.add_argument("--keep_runs", default=None, help="keep the run directories here (default: none)")
    parser.add_argument("--check_determinism", action="store_true", help="re-run the first run and compare")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    seeds = list(range(args.seeds if args.seeds is not None else (2 if args.quick else 5)))
    iterations = args.iterations or (QUICK_ITERATIONS if args.quick else DEFAULT_ITERATIONS)
    names = args.experiments or (MAIN if args.quick else list(EXPERIMENTS))
    base = {**TASK, **parse_set(args.set)}
    uniform = uniform_success(base["max_steps"])
    episodes = base["groups_per_iter"] * base["group_size"]
    print(f"credit chain {CREDIT_FACTORY}, horizon {base['max_steps']}: uniform-policy success "
          f"{uniform:.3f}; {len(names)} experiments x {len(seeds)} seeds x {iterations} iterations of "
          f"{episodes} episodes, {args.workers} worker(s)")
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="learning_curves_") as tmp:
        workdir = Path(args.keep_runs or tmp)
        jobs = [(name, seed) for name in names for seed in seeds]
        jobs += [(names[0], seeds[0])] if args.check_determinism else []
        results = run_jobs(run_one, [(name, seed, iterations, base, workdir / f"run{k}")
                                     for k, (name, seed) in enumerate(jobs)], workers=args.workers,
                           threads=args.threads)
        for k, ((name, seed), row) in enumerate(zip(jobs, results, strict=True)):
            if args.check_determinism and k == len(jobs) - 1:
                again = row
                break
            rows.append(row)
            print(f"  {name:<18} seed {seed}: success {row['initial_success']:.2f} -> "
                  f"{row['final_success']:.2f}, to 50% {row['steps_to_50']}, to 80% "
                  f"{row['steps_to_80']}, {row['total_env_steps']} steps, {row['wall_s']:.1f} s",
                  flush=True)
        if args.check_determinism:
            same = again["success"] == rows[0]["success"] and again["env_steps"] == rows[0]["env_steps"]
            print(f"determinism: re-running {names[0]} seed {seeds[0]} gives "
                  f"{'the same' if same else 'DIFFERENT'} curve")
    per_run = np.mean([r["wall_s"] for r in rows])
    print(f"\n{len(rows)} runs in {time.perf_counter() - start:.0f} s ({per_run:.1f} s a run); "
          "mean ± std over seeds, (k/n): seeds that reached the level (mean and std over those)\n")
    print_table(summary_table(rows), text_columns=("experiment", "kind"))
    if args.out:
        for path in plot(rows, Path(args.out), uniform):
            print(f"wrote {path}")
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
