"""Train an ALFWorld agent with GAGPO (CPU, offline, minutes) -- or the paper's setting on a GPU.

    python examples/alfworld_gagpo.py                      # the CPU default below
    python examples/alfworld_gagpo.py --estimator grpo     # a baseline on the same data contract
    python examples/alfworld_gagpo.py --config examples/configs/alfworld_paper.yaml \\
        --model_path /path/to/Qwen2.5-1.5B-Instruct --device cuda

The CPU default plays the embedded generated ALFWorld games with the tiny in-process
LM and the admissible-action (``choose``) policy. A random tiny LM almost never
solves an ALFWorld game (0 wins in 72 random episodes on small scenes), so RL alone
has no signal; like LLM-agent pipelines that start RL from an instruct model, the
default first warm-starts the LM with a short behaviour-cloning pass on the planner
walkthroughs (``warmup_steps``), measures ``success_before``, then runs GAGPO and
measures ``success_after`` on the same episodes. Everything lands in ``--out``:
metrics.jsonl, TensorBoard, curves.png, eval/*.md|json, checkpoints, summary.json.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torchrl_gagpo.training.cli import main
from torchrl_gagpo.training.config import TrainConfig, _doc


@dataclass
class ALFWorldConfig(TrainConfig):
    """GAGPO on ALFWorld; the defaults are the CPU demo (examples/configs/ has the paper's setting)."""

    out: str = _doc("run directory", "runs/alfworld_gagpo")
    env: str = _doc("environment", "alfworld")
    iterations: int = _doc("collect/update iterations", 8)
    games_per_type: int | None = _doc("games per task type (None: all 24 training games)", 1)
    max_steps: int = _doc("turns before truncation (paper: 50)", 12)
    history_length: int = _doc("past observation/action pairs in the prompt (paper: 2)", 1)
    groups_per_iter: int = _doc("tasks per iteration (paper: 16)", 6)
    group_size: int = _doc("rollouts per task (paper: 8)", 4)
    choose_score: str = _doc("score an action by the 'sum' (its LM probability) or 'mean' of its log-probs", "sum")
    warmup_steps: int = _doc("behaviour-cloning steps on the planner walkthroughs before RL", 120)
    warmup_lr: float = _doc("learning rate of the warm start", 5e-3)
    minibatch_size: int = _doc("actions per minibatch", 16)
    lr: float = _doc("AdamW learning rate of the RL updates (paper: 1e-6 for a 1.5B model)", 1e-4)
    eval_episodes: int = _doc("evaluation episodes (4 per game, seeded sampling)", 24)
    eval_greedy: bool = _doc("evaluate the arg-max action instead of seeded sampling", False)
    checkpoint_every: int = _doc("checkpoint period", 4)


if __name__ == "__main__":
    sys.exit(main(ALFWorldConfig))
