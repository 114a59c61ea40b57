"""Evaluation: run fixed episodes and print the paper's table layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tensordict import TensorDictBase

from .logging import format_table

__all__ = ["ALFWORLD_COLUMNS", "episode_records", "evaluate", "evaluate_checkpoint", "summarize"]

#: The paper's ALFWorld columns and the task type behind each.
ALFWORLD_COLUMNS = (
    ("Pick", "pick_and_place_simple"),
    ("Look", "look_at_obj_in_light"),
    ("Clean", "pick_clean_then_place_in_recep"),
    ("Heat", "pick_heat_then_place_in_recep"),
    ("Cool", "pick_cool_then_place_in_recep"),
    ("Pick2", "pick_two_obj_and_place"),
)


def _first(td: TensorDictBase, key, default=None):
    value = td.get(key, None)
    if value is None:
        return default
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)[0].item()
    leaf = value.tolist() if hasattr(value, "tolist") else value
    while isinstance(leaf, list):
        leaf = leaf[0]
    return leaf


def episode_records(trajectories: list[TensorDictBase]) -> list[dict]:
    """One record per trajectory: task, outcome, return, length, invalid replies."""
    records = []
    for traj in trajectories:
        last = traj[-1]
        nxt = last["next"]
        records.append({
            "task_id": int(_first(last, "task_id")),
            "task_type": _first(last, "task_type", "all"),
            "won": bool(_first(nxt, "won")),
            "return": float(traj["next", "reward"].sum()),
            "length": int(traj.numel()),
            "invalid": int(traj["next", "invalid_action"].sum()),
            "task_score": _first(nxt, "task_score"),
            "engine_error": bool(_first(nxt, "engine_error", False)),
        })
    return records


def summarize(records: list[dict], env: str) -> tuple[list[str], list[list], dict]:
    """``(header, rows, summary)``: success % per task type and overall (WebShop: score and success)."""
    n = max(len(records), 1)
    success = sum(r["won"] for r in records) / n
    summary = {"success": success, "episodes": len(records),
               "return_mean": sum(r["return"] for r in records) / n,
               "episode_length": sum(r["length"] for r in records) / n}
    if env == "alfworld":
        header, row = [name for name, _ in ALFWORLD_COLUMNS] + ["All"], []
        for name, task_type in ALFWORLD_COLUMNS:
            subset = [r for r in records if r["task_type"] == task_type]
            rate = 100 * sum(r["won"] for r in subset) / len(subset) if subset else float("nan")
            summary[f"success_{name.lower()}"] = rate / 100
            row.append(rate)
        row.append(100 * success)
        return header, [row], summary
    if env == "webshop":
        scores = [r["task_score"] or 0.0 for r in records]
        summary["score"] = sum(scores) / n
        return ["Score", "Success"], [[100 * summary["score"], 100 * success]], summary
    return ["Success"], [[100 * success]], summary


def evaluate(rollout, task_ids: list[int], policy, env: str, out_dir: str | Path | None = None,
             name: str = "eval") -> dict:
    """Play one episode per task id with ``policy``; write ``<name>.json`` and ``<name>.md`` in ``out_dir``."""
    trajectories, _ = rollout.run_episodes(task_ids, policy=policy)
    records = episode_records(trajectories)
    header, rows, summary = summarize(records, env)
    table = format_table(rows, header)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps({"summary": summary, "episodes": records}, indent=1))
        (out / f"{name}.md").write_text(table + "\n")
    return {"summary": summary, "table": table, "records": records}


def evaluate_checkpoint(cfg, env_factory, *, checkpoint: str | Path | None = None, out_dir: str | Path | None = None,
                        name: str = "eval") -> dict:
    """Evaluate a checkpoint (or the base model when ``checkpoint`` is None) the way training does.

    ``cfg`` sets the model (``model_path`` or the tiny model), the policy, the split
    (``eval_split``), the episodes (``eval_episodes``) and greedy or seeded sampling.
    """
    from .checkpoint import load_checkpoint
    from .components import make_policy
    from .models import build_model
    from .rollout import GroupRollout

    model, tokenizer = build_model(cfg)
    if checkpoint is not None:
        load_checkpoint(checkpoint, model=model)
    envs = [env_factory(cfg, cfg.eval_split, 10**6 + i) for i in range(cfg.num_envs)]
    policy = make_policy(cfg, model, tokenizer, greedy=cfg.eval_greedy, seed=cfg.eval_seed)
    rollout = GroupRollout(envs, policy)
    try:
        tasks = [k % envs[0].num_tasks for k in range(cfg.eval_episodes)]
        with torch.no_grad():
            return evaluate(rollout, tasks, policy, cfg.env, out_dir, name)
    finally:
        rollout.close()
        for env in envs:
            env.close()
