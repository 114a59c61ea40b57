"""Checkpoints: model, tokenizer, optimiser, every RNG and the environments' samplers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

__all__ = ["latest_checkpoint", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]


def save_checkpoint(run_dir: str | Path, iteration: int, *, model, tokenizer, optimizer, state: dict) -> Path:
    """Write ``checkpoints/iter_XXXXX`` (atomically) and point ``checkpoints/latest`` at it.

    ``iteration`` is the number of completed iterations; ``state`` holds the caller's
    extra state captured at that iteration boundary (RNG states, environment samplers,
    grouping counters, generator states, metrics).
    """
    root = Path(run_dir) / "checkpoints"
    target = root / f"iter_{iteration:05d}"
    tmp = root / f".tmp_iter_{iteration:05d}"
    tmp.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(tmp / "tokenizer")
    torch.save(
        {
            "iteration": iteration,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "state": state,
        },
        tmp / "state.pt",
    )
    if target.exists():
        for path in sorted(target.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        target.rmdir()
    tmp.rename(target)
    (root / "latest").write_text(target.name + "\n")
    return target


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names, or ``None``."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.pt").is_file() else None


def load_checkpoint(path: str | Path, *, model=None, optimizer=None) -> dict:
    """Load a checkpoint into ``model``/``optimizer``; returns its dict (``state`` included)."""
    data = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    if model is not None:
        model.load_state_dict(data["model"])
    if optimizer is not None and data.get("optimizer") is not None:
        optimizer.load_state_dict(data["optimizer"])
    return data


def rng_state() -> dict:
    """The global RNG states (torch, CUDA, Python)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


def read_config(run_dir: str | Path) -> dict:
    """The ``config.json`` a run wrote."""
    return json.loads((Path(run_dir) / "config.json").read_text())
