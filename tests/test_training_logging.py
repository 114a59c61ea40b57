"""RunLogger (JSONL, resume, torchrl backends), plot_curves and format_table."""

from __future__ import annotations

import importlib.util
import json
import math
import random

import numpy as np
import pytest
import torch

from torchrl_gagpo.training import logging as run_logging
from torchrl_gagpo.training.logging import RunLogger, format_table, plot_curves, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def full_metrics(n: int = 40, seed: int = 0) -> list[dict]:
    """Plausible rows with every key plot_curves draws."""
    rng = random.Random(seed)
    rows, env_steps = [], 0
    for i in range(n):
        env_steps += rng.randint(150, 250)
        progress = i / (n - 1)
        row = {
            "iteration": i,
            "env_steps": env_steps,
            "success_rate": min(1.0, 0.1 + 0.8 * progress + rng.uniform(-0.05, 0.05)),
            "return_mean": 10 * progress + rng.uniform(-1, 1),
            "episode_length": 30 - 15 * progress + rng.uniform(-2, 2),
            "invalid_action_rate": 0.3 * (1 - progress) + rng.uniform(0, 0.03),
            "advantage_iqr": 1.2 - 0.4 * progress + rng.uniform(-0.05, 0.05),
            "advantage_abs_gt1": 0.3 - 0.1 * progress + rng.uniform(-0.02, 0.02),
            "singleton_share": 0.6 - 0.3 * progress + rng.uniform(-0.03, 0.03),
            "state_group_size_hist": [rng.randint(50, 400)] + [rng.randint(0, 60) // k for k in range(2, 13)],
        }
        if i % 10 == 9:
            row["eval_success"] = row["success_rate"] - 0.05
        rows.append(row)
    return rows


def assert_png(path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes


# ----------------------------------------------------------------------------- RunLogger


def test_jsonl_written_and_read_back(tmp_path):
    with RunLogger(tmp_path, backend="none") as logger:
        for i in range(3):
            logger.log(i, {"return_mean": 0.5 * i, "episodes": 8, "note": "ok", "loss": None})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [{"iteration": i, "return_mean": 0.5 * i, "episodes": 8, "note": "ok", "loss": None}
                    for i in range(3)]
    assert read_metrics(tmp_path) == rows  # a run directory works too
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["iteration"] == i for i, line in enumerate(lines))


def test_fresh_start_replaces_an_old_file(tmp_path):
    with RunLogger(tmp_path, backend="none") as logger:
        logger.log(0, {"a": 1})
    with RunLogger(tmp_path, backend="none") as logger:
        logger.log(0, {"a": 2})
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"iteration": 0, "a": 2}]


@pytest.mark.parametrize("backend", ["none", "csv"])
def test_resume_truncates_to_start_iteration(tmp_path, backend):
    with RunLogger(tmp_path, backend=backend) as logger:
        for i in range(5):
            logger.log(i, {"value": float(i)})
    with RunLogger(tmp_path, backend=backend, start_iteration=3) as logger:
        for i in (3, 4):
            logger.log(i, {"value": 100.0 + i})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["value"] for r in rows] == [0.0, 1.0, 2.0, 103.0, 104.0]
    if backend == "csv":  # torchrl's CSV files are cut the same way
        lines = (tmp_path / "csv" / "gagpo" / "scalars" / "value.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in lines] == ["0", "1", "2", "3", "4"]
        assert float(lines[-1].split(",")[1]) == 104.0


def test_resume_ignores_a_line_cut_short_by_a_crash(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 0, "a": 1}\n{"iteration": 1, "a": 2}\n{"iteration": 2, "a"')
    assert read_metrics(path) == [{"iteration": 0, "a": 1}, {"iteration": 1, "a": 2}]
    with RunLogger(tmp_path, backend="none", start_iteration=2) as logger:
        logger.log(2, {"a": 3})
    assert [r["a"] for r in read_metrics(path)] == [1, 2, 3]
    path.write_text('{"iteration": 0}\nnot json\n{"iteration": 1}\n')
    with pytest.raises(ValueError, match="not a JSON line"):
        read_metrics(path)
    with pytest.raises(ValueError, match="not a JSON line"):  # resuming never drops real rows
        RunLogger(tmp_path, backend="csv", start_iteration=1)
    assert path.read_text() == '{"iteration": 0}\nnot json\n{"iteration": 1}\n'


def test_tensors_and_numpy_values_are_serialised(tmp_path):
    with RunLogger(tmp_path, backend="none") as logger:
        logger.log(
            torch.tensor(0),
            {
                "t_scalar": torch.tensor(0.25),
                "t_int": torch.tensor(7),
                "t_vec": torch.tensor([1, 2, 3]),
                "np_float": np.float32(0.5),
                "np_int": np.int64(3),
                "np_vec": np.array([4, 5]),
                "np_bool": np.bool_(True),
                "nan": float("nan"),
                "inf": torch.tensor(float("inf")),
                "flag": True,
            },
        )
    (row,) = read_metrics(tmp_path / "metrics.jsonl")
    assert row == {
        "iteration": 0,
        "t_scalar": 0.25,
        "t_int": 7,
        "t_vec": [1, 2, 3],
        "np_float": 0.5,
        "np_int": 3,
        "np_vec": [4, 5],
        "np_bool": True,
        "nan": None,  # strict JSON: non-finite floats are written as null
        "inf": None,
        "flag": True,
    }
    with RunLogger(tmp_path / "b", backend="none") as logger, pytest.raises(TypeError, match="cannot log"):
        logger.log(0, {"bad": object()})


class _RecordingLogger:
    def __init__(self):
        self.calls = []

    def log_scalar(self, name, value, step=None):
        self.calls.append((name, value, step))

    def flush(self):
        pass

    def close(self):
        pass


def test_only_scalars_go_to_the_backend(tmp_path):
    logger = RunLogger(tmp_path, backend="none")
    logger.logger = recorder = _RecordingLogger()
    logger.log(
        4,
        {
            "loss": torch.tensor(0.5),
            "count": np.int64(3),
            "won": True,
            "hist": [1, 2, 3],
            "t_vec": torch.ones(3),
            "note": "text",
            "missing": None,
        },
    )
    logger.close()
    assert recorder.calls == [("loss", 0.5, 4), ("count", 3, 4), ("won", 1, 4)]
    assert all(type(v) in (int, float) for _, v, _ in recorder.calls)
    (row,) = read_metrics(tmp_path / "metrics.jsonl")
    assert row["hist"] == [1, 2, 3] and row["t_vec"] == [1.0, 1.0, 1.0] and row["note"] == "text"


def test_tensorboard_backend_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    with RunLogger(tmp_path, backend="tensorboard", exp_name="exp") as logger:
        for i in range(3):
            logger.log(i, {"success_rate": 0.1 * i, "hist": [1, 2]})
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents*"))
    assert events and all(e.stat().st_size > 0 for e in events)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["success_rate"]  # the list is not a scalar
    assert [e.step for e in acc.Scalars("success_rate")] == [0, 1, 2]


def test_tensorboard_resume_drops_the_stale_points(tmp_path):
    pytest.importorskip("tensorboard")
    with RunLogger(tmp_path, backend="tensorboard") as logger:
        for i in range(5):
            logger.log(i, {"value": float(i)})
    with RunLogger(tmp_path, backend="tensorboard", start_iteration=3) as logger:
        for i in (3, 4):
            logger.log(i, {"value": 100.0 + i})
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard" / "gagpo"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("value")] == [(0, 0), (1, 1), (2, 2), (3, 103), (4, 104)]


def test_csv_backend_writes_files(tmp_path):
    with RunLogger(tmp_path, backend="csv", exp_name="exp") as logger:
        logger.log(0, {"success_rate": 0.5, "hist": [1, 2]})
        logger.log(1, {"success_rate": 0.75})
    files = sorted(p.name for p in (tmp_path / "csv").rglob("*.csv"))
    assert files == ["success_rate.csv"]
    text = (tmp_path / "csv" / "exp" / "scalars" / "success_rate.csv").read_text()
    assert text.splitlines() == ["0,0.5", "1,0.75"]


def test_unknown_backend_raises(tmp_path):
    with pytest.raises(ValueError, match="tensorboard, csv, wandb, none"):
        RunLogger(tmp_path, backend="mlflow")


def test_missing_wandb_says_how_to_install(tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    with pytest.raises(ImportError, match="pip install wandb"):
        RunLogger(tmp_path, backend="wandb")


def test_missing_tensorboard_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(run_logging, "_module_available", lambda name: name != "tensorboard")
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 0}\n')
    with pytest.raises(ImportError, match=r"pip install tensorboard.*--logger csv"):
        RunLogger(tmp_path, backend="tensorboard", start_iteration=1)
    assert read_metrics(tmp_path) == [{"iteration": 0}]  # the failed start kept the old file


def test_closed_logger_refuses_to_log(tmp_path):
    logger = RunLogger(tmp_path, backend="none")
    logger.close()
    logger.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        logger.log(0, {})


# ----------------------------------------------------------------------------- plot_curves


def test_plot_full_metrics(tmp_path):
    out = plot_curves(full_metrics(), tmp_path / "sub" / "curves.png", title="toy: GAGPO")
    assert out == tmp_path / "sub" / "curves.png"
    assert_png(out, 30_000)


def test_plot_from_a_jsonl_file(tmp_path):
    with RunLogger(tmp_path, backend="none") as logger:
        for row in full_metrics(12):
            logger.log(row.pop("iteration"), row)
    assert_png(plot_curves(str(tmp_path), tmp_path / "curves.png"))  # the run directory, as a str


def test_plot_with_most_keys_missing(tmp_path):
    rows = [{"iteration": i, "return_mean": float(i)} for i in range(5)]
    assert_png(plot_curves(rows, tmp_path / "sparse.png"))
    assert_png(plot_curves([], tmp_path / "empty.png"))
    assert_png(plot_curves([{"iteration": 0}], tmp_path / "one.png"))


def test_plot_with_none_and_nan_values(tmp_path):
    rows = full_metrics(20)
    for i, row in enumerate(rows):
        for key in ("success_rate", "advantage_iqr", "singleton_share", "env_steps"):
            if i % 3 == 0:
                row[key] = None if i % 2 else math.nan
    rows[-1]["state_group_size_hist"] = [None, 3, float("nan"), 0]
    rows[5]["return_mean"] = "not a number"
    assert_png(plot_curves(rows, tmp_path / "holes.png"))
    all_nan = [{"iteration": i, "success_rate": math.nan, "state_group_size_hist": [0, 0]} for i in range(3)]
    assert_png(plot_curves(all_nan, tmp_path / "all_nan.png"))


# ----------------------------------------------------------------------------- format_table


def test_format_table():
    table = format_table(
        [["GAGPO", 81.25, 12, None], ["GRPO|v2", 70, torch.tensor(3), float("nan")]],
        ["method", "success %", "n", "score"],
    )
    assert table.splitlines() == [
        "| method   | success % | n   | score |",
        "| -------- | --------- | --- | ----- |",
        "| GAGPO    | 81.2      | 12  | -     |",
        "| GRPO\\|v2 | 70        | 3   | -     |",
    ]
    with pytest.raises(ValueError, match="row 0"):
        format_table([[1, 2]], ["a"])
