"""Quickstart: GAGPO on the toy corridor task with a tiny in-process LM (CPU, about a minute).

The pipeline is plain TorchRL:

    ToyTextEnv --GroupCollector--> ReplayBuffer[StateKeyGrouping(GroupedGAE)] --> GAGPOLoss --> Adam

* ``GroupCollector`` (a torchrl collector) plays whole rollout groups (G episodes of one
  task from one initial state) with the current weights; ``ToyTextEnv`` writes
  ``state_key``/``group_id`` on every turn.
* ``AdmissibleActionPolicy`` lets the LM score the admissible actions and samples one.
* ``StateKeyGrouping`` holds trajectories until their group is complete, then
  ``GroupedGAE`` writes the GAGPO advantage.
* ``GAGPOLoss`` runs PPO-clip with one importance ratio per action.

Run:  python examples/quickstart.py [--iterations 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchrl.data import LazyStackStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.modules.llm import TransformersWrapper

from torchrl_gagpo import GAGPOLoss, GroupedGAE, StateKeyGrouping
from torchrl_gagpo.collectors import GroupCollector
from torchrl_gagpo.envs import ToyTextEnv
from torchrl_gagpo.policies import AdmissibleActionPolicy, make_tiny_model, make_tiny_tokenizer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=8, help="collect/update iterations")
    parser.add_argument("--groups-per-iter", type=int, default=8, help="tasks per iteration")
    parser.add_argument("--group-size", type=int, default=4, help="rollouts per task (G)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over each iteration's data")
    parser.add_argument("--minibatch", type=int, default=64, help="actions per minibatch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--gamma", type=float, default=0.95)
    parser.add_argument("--lmbda", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    start = time.time()

    # Model: a tiny Qwen2-architecture LM and a BPE tokenizer, both built in-process.
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, seed=args.seed)
    policy = AdmissibleActionPolicy(model, tokenizer, score="mean")
    # The loss scores the stored tokens with a tokens-mode wrapper sharing the same weights.
    actor = TransformersWrapper(
        model, tokenizer=tokenizer, input_mode="tokens", generate=False, return_log_probs=True, pad_output=False
    )

    # Environment: corridors of 3-4 rooms.
    def make_env():
        return ToyTextEnv(num_tasks=16, min_rooms=3, max_rooms=4, max_steps=8, history_length=1, seed=args.seed)

    # Buffer: trajectories wait for their whole group, then get GAGPO advantages.
    grouping = StateKeyGrouping(args.group_size, estimator=GroupedGAE(gamma=args.gamma, lmbda=args.lmbda))
    buffer = ReplayBuffer(
        storage=LazyStackStorage(100_000),
        sampler=SamplerWithoutReplacement(),
        batch_size=args.minibatch,
        transform=grouping,
    )
    # Collector: groups_per_iter whole groups per batch, written into the buffer; two environments
    # stepped concurrently (threads here: the toy is light; the default is one process each).
    collector = GroupCollector(make_env, policy, group_size=args.group_size, groups_per_batch=args.groups_per_iter,
                               num_workers=2, env_processes=False, seed=args.seed, replay_buffer=buffer)

    loss_fn = GAGPOLoss(actor, clip_epsilon=0.2)  # ratio "auto": the choose policy's candidate ratio
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    print(f"{'iter':>4} {'success':>8} {'return':>7} {'turns':>6} {'loss':>8} {'clip':>6} {'time':>6}")
    for iteration in range(args.iterations):
        # 1. Collect groups_per_iter complete groups with the current weights.
        with torch.no_grad():
            collector.next()
        data = buffer[:]
        done = data["next", "done"].reshape(-1)
        success = data["next", "won"].reshape(-1)[done].float().mean().item()
        episode_return = data["next", "reward"].sum().item() / int(done.sum())
        turns = len(data) / int(done.sum())

        # 2. A few epochs of minibatch updates on this iteration's data.
        losses, clipped = [], []
        for _ in range(args.epochs):
            for batch in buffer:
                out = loss_fn(batch)
                optimizer.zero_grad()
                out.loss_objective.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(out.loss_objective.item())
                clipped.append(out.clip_fraction.item())
        buffer.empty()
        collector.update_policy_weights_()  # the next groups come from the new weights
        print(
            f"{iteration:>4} {success:>8.2f} {episode_return:>7.3f} {turns:>6.2f} "
            f"{sum(losses) / len(losses):>8.4f} {sum(clipped) / len(clipped):>6.2f} {time.time() - start:>5.0f}s",
            flush=True,
        )
    collector.shutdown()


if __name__ == "__main__":
    main()
