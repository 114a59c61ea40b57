"""Speed of ``GAGPOLoss`` against torchrl's ``GRPOLoss``: forward + backward on the same batches.

Both losses wrap the same actor (the tiny Qwen2 model of ``torchrl_gagpo.policies``
in a ``TransformersWrapper``: ``input_mode="tokens"``, ``generate=False``,
``return_log_probs=True``) and read the same batch: ragged ``("tokens", "full")``
(prompt + response), ``("tokens", "prompt")``, behaviour log-probs
``("log_probs", "full")`` aligned with the tokens (NaN on prompt positions, the
response scored by the model plus a little noise, so ratios differ from 1 and some
clip), and one advantage per action of shape ``[B, 1, 1]``, which ``GRPOLoss``
broadcasts over the tokens and ``GAGPOLoss`` reads as one value per action.

One timed call is ``zero_grad``, ``loss(batch)`` and ``loss_objective.backward()``.
Configurations, each against the same ``GRPOLoss(entropy_bonus=False,
aggregation="token_mean")``:

* ``token/token_mean``: ``GAGPOLoss(ratio="token", aggregation="token_mean")``, the
  same objective as GRPO (apples to apples; the run first checks that both give
  the same loss value);
* ``action_mean (default)``: ``GAGPOLoss()``, one length-normalised ratio per action,
  averaged over actions.

After warm-up calls the two losses are timed alternately (the order flips every
repeat) so that drift from other jobs hits both. The table gives the median time
of each with its spread (interquartile range) over repeats, and ``ratio``, the
median over repeats of the paired ratio GAGPO time / GRPO time (each pair runs back
to back, so load from other jobs largely cancels), with its interquartile range;
the target is ``ratio <= 1.10``. The JSON rows also hold the ratio of the medians
and of the minima.

Scoring the tokens with the model (shared by both losses: torchrl's ``_log_weight``)
and its backward are nearly all of a call, so the ``head`` columns time the losses'
own work: the same call with the actor's log-probs replaced by a cached leaf tensor
(``_get_cur_log_prob`` returns it), many repeats, forward + backward to that leaf.

    python benchmarks/loss_speed.py [--quick] [--json PATH] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase, lazy_stack
from torchrl.modules.llm import TransformersWrapper
from torchrl.objectives.llm import GRPOLoss

from torchrl_gagpo import GAGPOLoss
from torchrl_gagpo.policies import make_tiny_model, make_tiny_tokenizer

TARGET = 1.10
CONFIGS: dict[str, dict] = {
    "token/token_mean": {"ratio": "token", "aggregation": "token_mean"},
    "action_mean (default)": {},
}


def make_batch(
    model: torch.nn.Module,
    n_actions: int,
    prompt_len: tuple[int, int],
    response_len: tuple[int, int],
    device: str,
    seed: int = 0,
) -> TensorDictBase:
    """``n_actions`` ragged actions with behaviour log-probs and one advantage each."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    rows = []
    with torch.no_grad():
        for _ in range(n_actions):
            n_p = int(torch.randint(prompt_len[0], prompt_len[1] + 1, (1,), generator=g))
            n_r = int(torch.randint(response_len[0], response_len[1] + 1, (1,), generator=g))
            full = torch.randint(3, vocab, (n_p + n_r,), generator=g)
            logits = model(input_ids=full[None].to(device)).logits[0].float().cpu()
            lp = torch.log_softmax(logits[:-1], -1).gather(-1, full[1:, None]).squeeze(-1)
            lp = torch.cat([torch.full((1,), float("nan")), lp])
            lp[:n_p] = float("nan")  # prompt positions: not an action
            lp[n_p:] += 0.1 * torch.randn(n_r, generator=g)  # the behaviour policy differs a little
            rows.append(
                TensorDict(
                    tokens=TensorDict(prompt=full[:n_p], response=full[n_p:], full=full),
                    log_probs=TensorDict(full=lp),
                    advantage=torch.randn(1, 1, generator=g),  # [B, 1, 1] once stacked
                )
            )
    return lazy_stack(rows).to(device)


def make_grpo(actor: TransformersWrapper) -> GRPOLoss:
    """torchrl's GRPO loss, no entropy bonus (GAGPOLoss has none by default), token mean."""
    return GRPOLoss(
        actor, clip_epsilon=0.2, entropy_bonus=False, aggregation="token_mean", masking_strategy="sft"
    )


def step(loss: torch.nn.Module, model: torch.nn.Module, batch: TensorDictBase) -> None:
    model.zero_grad(set_to_none=True)
    loss(batch).loss_objective.backward()


def cached_scoring(loss: torch.nn.Module, batch: TensorDictBase) -> torch.nn.Module:
    """``loss`` with the model's scoring replaced by cached log-probs (a leaf requiring grad)."""
    with torch.no_grad():
        cur, dist, composite = loss._get_cur_log_prob(batch.copy())
    leaf = cur.detach().requires_grad_()
    loss._get_cur_log_prob = lambda td: (leaf, dist, composite)  # instance attribute: only this object
    loss._cached_leaf = leaf
    return loss


def head_step(loss: torch.nn.Module, batch: TensorDictBase) -> None:
    loss._cached_leaf.grad = None
    loss(batch).loss_objective.backward()


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def time_pair(fa: Callable[[], None], fb: Callable[[], None], repeats: int, warmup: int, device: str):
    """Times of ``fa`` and ``fb`` over ``repeats`` alternating calls (order flips each repeat)."""

    def one(fn: Callable[[], None]) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ta.append(one(fa))
            tb.append(one(fb))
        else:
            tb.append(one(fb))
            ta.append(one(fa))
    return ta, tb


def time_config(
    config: str,
    kwargs: dict,
    actor: TransformersWrapper,
    batch: TensorDictBase,
    args: argparse.Namespace,
    device: str,
) -> dict:
    """One table row: end-to-end and head-only times of GAGPOLoss(**kwargs) against GRPOLoss."""
    model = actor.model
    gagpo, grpo = GAGPOLoss(actor, clip_epsilon=0.2, **kwargs), make_grpo(actor)
    if config.startswith("token/"):  # the same objective: the same value
        expected = grpo(batch).loss_objective
        torch.testing.assert_close(gagpo(batch).loss_objective, expected, rtol=1e-5, atol=1e-6)
    ta, tb = time_pair(
        lambda: step(gagpo, model, batch), lambda: step(grpo, model, batch), args.repeats, args.warmup, device
    )
    head_gagpo = cached_scoring(GAGPOLoss(actor, clip_epsilon=0.2, **kwargs), batch)
    head_grpo = cached_scoring(make_grpo(actor), batch)
    ha, hb = time_pair(
        lambda: head_step(head_gagpo, batch),
        lambda: head_step(head_grpo, batch),
        args.head_repeats,
        args.warmup,
        device,
    )
    paired = [a / b for a, b in zip(ta, tb, strict=True)]
    ratio = statistics.median(paired)
    return {
        "device": device,
        "config": config,
        "repeats": args.repeats,
        "gagpo_s": statistics.median(ta),
        "grpo_s": statistics.median(tb),
        "ratio": ratio,
        "gagpo_iqr_s": list(quartiles(ta)),
        "grpo_iqr_s": list(quartiles(tb)),
        "ratio_iqr": list(quartiles(paired)),
        "gagpo_min_max_s": [min(ta), max(ta)],
        "grpo_min_max_s": [min(tb), max(tb)],
        "ratio_of_medians": statistics.median(ta) / statistics.median(tb),
        "ratio_of_mins": min(ta) / min(tb),
        "head_repeats": args.head_repeats,
        "gagpo_head_s": statistics.median(ha),
        "grpo_head_s": statistics.median(hb),
        "gagpo_head_iqr_s": list(quartiles(ha)),
        "grpo_head_iqr_s": list(quartiles(hb)),
        "head_ratio": statistics.median([a / b for a, b in zip(ha, hb, strict=True)]),
        "target": TARGET,
        "pass": ratio <= TARGET,
    }


def print_row(row: dict) -> None:
    (a_lo, a_hi), (b_lo, b_hi), (r_lo, r_hi) = row["gagpo_iqr_s"], row["grpo_iqr_s"], row["ratio_iqr"]
    print(
        f"{row['device']:<6} {row['config']:<22} "
        f"{row['gagpo_s'] * 1e3:>7.1f} [{a_lo * 1e3:6.1f}-{a_hi * 1e3:6.1f}] "
        f"{row['grpo_s'] * 1e3:>7.1f} [{b_lo * 1e3:6.1f}-{b_hi * 1e3:6.1f}] "
        f"{row['ratio']:>6.3f} [{r_lo:5.3f}-{r_hi:5.3f}] "
        f"{row['gagpo_head_s'] * 1e3:>6.2f} {row['grpo_head_s'] * 1e3:>6.2f} {row['head_ratio']:>6.2f}  "
        f"{'PASS' if row['pass'] else 'FAIL'} (ratio <= {TARGET:.2f})",
        flush=True,
    )


def run(args: argparse.Namespace, device: str) -> list[dict]:
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok, seed=0).to(device)
    actor = TransformersWrapper(
        model, tokenizer=tok, input_mode="tokens", generate=False, return_log_probs=True, pad_output=False
    )
    batch = make_batch(model, args.actions, args.prompt_len, args.response_len, device)
    sizes = {
        "actions": args.actions,
        "prompt_len": list(args.prompt_len),
        "response_len": list(args.response_len),
        "tokens": sum(t.numel() for t in batch.get(("tokens", "full"), as_list=True)),
        "action_tokens": sum(t.numel() for t in batch.get(("tokens", "response"), as_list=True)),
        "threads": torch.get_num_threads(),
    }
    rows = []
    for config, kwargs in CONFIGS.items():
        row = time_config(config, kwargs, actor, batch, args, device)
        row.update(sizes)
        print_row(row)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smaller batch, fewer repeats (under 30 s)")
    parser.add_argument("--json", type=str, default=None, help="write the table rows as JSON here")
    parser.add_argument(
        "--device", default=None, choices=["cpu", "cuda"], help="default: cpu, plus cuda when available"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per loss (20; quick 6)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        args.actions, args.prompt_len, args.response_len, args.warmup = 16, (64, 128), (8, 32), 2
        args.repeats = args.repeats or 6
        args.head_repeats = 20
    else:
        args.actions, args.prompt_len, args.response_len, args.warmup = 32, (64, 256), (8, 32), 3
        args.repeats = args.repeats or 20
        args.head_repeats = 100
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {args.repeats}")
    print("one call: zero_grad + loss(batch) + loss_objective.backward(); times in ms, [IQR]")
    print(
        f"{'device':<6} {'config':<22} {'GAGPO':>7} {'[IQR]':>15} {'GRPO':>7} {'[IQR]':>15} "
        f"{'ratio':>6} {'[IQR]':>13} {'head':>6} {'head':>6} {'head':>6}  target"
    )
    print(
        f"{'':<6} {'':<22} {'ms':>7} {'':>15} {'ms':>7} {'':>15} {'':>6} {'':>13} "
        f"{'GAGPO':>6} {'GRPO':>6} {'ratio':>6}"
    )
    rows = []
    for device in devices:
        rows += run(args, device)
    r = rows[0]
    print(
        f"batch: {r['actions']} actions, prompts of {r['prompt_len'][0]}-{r['prompt_len'][1]} tokens, "
        f"responses of {r['response_len'][0]}-{r['response_len'][1]} ({r['tokens']} tokens, "
        f"{r['action_tokens']} action tokens)"
    )
    print(
        "ratio: median of paired GAGPO/GRPO times; head: the losses' own work, model scoring cached "
        f"({args.head_repeats} repeats)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
