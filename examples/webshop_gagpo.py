"""Train a WebShop agent with GAGPO (CPU, offline, minutes) -- or the paper's setting on a GPU.

    python examples/webshop_gagpo.py                       # the CPU default below
    python examples/webshop_gagpo.py --estimator gigpo     # a baseline on the same data contract
    python examples/webshop_gagpo.py --config examples/configs/webshop_paper.yaml \\
        --model_path /path/to/Qwen2.5-1.5B-Instruct --device cuda

The CPU default shops on the shipped synthetic catalog (or the original's files via
``--data_path`` / ``WEBSHOP_DATA``) with the tiny in-process LM and the
admissible-action (``choose``) policy, on the first ``num_goals`` training goals. As
in the ALFWorld example, a short behaviour-cloning pass on scripted purchases
(search, click the goal's product, pick its options, buy) warm-starts the random
tiny LM, ``success_before`` is measured, GAGPO trains, and ``success_after`` is
measured on the same episodes. WebShop's table is the paper's: average score and
success rate (score 1.0). Everything lands in ``--out``: metrics.jsonl,
TensorBoard, curves.png, eval/*.md|json, checkpoints, summary.json.

Two defaults differ from the ALFWorld example, both measured: actions are scored by
the *mean* of their token log-probs (under the sum, ``click[buy now]`` took 95-100%
of an item page's probability after the warm start, every rollout bought at once and
the groups carried no signal), and the reward is 10 x the purchase's score (partial
credit; ``--webshop_reward success`` is the paper's 10 iff the score is 1.0). Measured
on 2 idle cores: success 20.8% -> 37.5%, score 51.7 -> 79.7, in 9.4 minutes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torchrl_gagpo.training.cli import main
from torchrl_gagpo.training.config import TrainConfig, _doc


@dataclass
class WebShopConfig(TrainConfig):
    """GAGPO on WebShop; the defaults are the CPU demo (examples/configs/ has the paper's setting)."""

    out: str = _doc("run directory", "runs/webshop_gagpo")
    env: str = _doc("environment", "webshop")
    iterations: int = _doc("collect/update iterations", 8)
    num_goals: int | None = _doc("keep the first N training goals (None: all)", 6)
    max_steps: int = _doc("turns before truncation (paper: 15)", 8)
    history_length: int = _doc("past observation/action pairs in the prompt (paper: 2)", 1)
    groups_per_iter: int = _doc("tasks per iteration (paper: 16)", 6)
    group_size: int = _doc("rollouts per task (paper: 8)", 4)
    choose_score: str = _doc("score an action by the 'sum' (its LM probability) or 'mean' of its log-probs", "mean")
    webshop_reward: str = _doc("'score' (10 x the purchase's score) or 'success' (10 iff score 1.0, the paper's)",
                               "score")
    warmup_steps: int = _doc("behaviour-cloning steps on scripted purchases before RL", 100)
    warmup_lr: float = _doc("learning rate of the warm start", 5e-3)
    minibatch_size: int = _doc("actions per minibatch", 16)
    lr: float = _doc("AdamW learning rate of the RL updates (paper: 1e-6 for a 1.5B model)", 1e-3)
    eval_episodes: int = _doc("evaluation episodes (4 per goal, seeded sampling)", 24)
    eval_greedy: bool = _doc("evaluate the arg-max action instead of seeded sampling", False)
    checkpoint_every: int = _doc("checkpoint period", 4)


if __name__ == "__main__":
    sys.exit(main(WebShopConfig))
