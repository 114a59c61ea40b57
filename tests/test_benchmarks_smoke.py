"""Smoke test of the loss benchmark through subprocess: it runs and writes the documented rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_loss_speed_quick_json(tmp_path):
    path = tmp_path / "rows.json"
    out = subprocess.run(
        [sys.executable, "benchmarks/loss_speed.py", "--quick", "--device", "cpu", "--json", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(path.read_text())
    assert {r["config"] for r in rows} == {"token/token_mean", "action_mean (default)"}
    for row in rows:
        assert {"device", "config", "repeats", "gagpo_s", "grpo_s", "ratio", "gagpo_iqr_s", "grpo_iqr_s",
                "ratio_iqr", "gagpo_head_s", "grpo_head_s", "head_ratio", "pass"} <= set(row)
        assert row["device"] == "cpu" and row["gagpo_s"] > 0 and row["grpo_s"] > 0 and row["ratio"] > 0
    assert "PASS" in out.stdout or "FAIL" in out.stdout  # the verdict is printed, never asserted


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
