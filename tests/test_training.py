"""The training layer: configs, the loop, resume, Ctrl-C, evaluation and the example scripts."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from torchrl_gagpo.training import train
from torchrl_gagpo.training.config import TrainConfig, parse_config
from torchrl_gagpo.training.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--env", "toy", "--max_steps", "6", "--num_workers", "2", "--groups_per_iter", "4", "--group_size", "2",
       "--eval_episodes", "16", "--eval_greedy", "false", "--minibatch_size", "16", "--lr", "1e-2", "--logger", "csv",
       "--progress", "false", "--choose_score", "mean"]


def toy_config(out, **overrides) -> TrainConfig:
    argv = TOY + ["--out", str(out)] + [x for k, v in overrides.items() for x in (f"--{k}", str(v))]
    return parse_config(TrainConfig, argv)


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


class TestConfig:
    def test_overrides_and_yaml(self, tmp_path):
        (tmp_path / "c.yaml").write_text("lr: 0.5\ngroup_size: 3\n")
        cfg = parse_config(TrainConfig, ["--config", str(tmp_path / "c.yaml"), "--lr", "0.25", "--eval_greedy",
                                         "--out", str(tmp_path / "run")])
        assert cfg.lr == 0.25 and cfg.group_size == 3 and cfg.eval_greedy is True

    def test_normalize_scope_reaches_the_estimator(self):
        from torchrl_gagpo.training.components import make_estimator

        batch = parse_config(TrainConfig, ["--normalize_scope", "batch"])
        assert make_estimator(batch).normalize_scope == "batch"
        assert make_estimator(parse_config(TrainConfig, [])).normalize_scope == "group"

    def test_bad_config_through_the_example(self):
        out = subprocess.run([sys.executable, "examples/alfworld_gagpo.py", "--estimator", "bogus"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "estimator must be one of" in out.stderr


class TestLoop:
    def test_learns_the_toy_task(self, tmp_path, caplog):
        filters = list(warnings.filters)
        with caplog.at_level(logging.INFO, logger="torchrl_gagpo.training"):
            summary = train(toy_config(tmp_path / "run", iterations=5))
        assert summary["success_after"] > summary["success_before"]
        assert warnings.filters == filters  # train() scopes its warning filters
        logged = [r.getMessage() for r in caplog.records if r.name == "torchrl_gagpo.training.trainer"]
        assert [m.split(" (")[0] for m in logged] == ["evaluation before training", "evaluation after training"]
        rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
        assert len(rows) == 5 and rows[-1]["env_steps"] == summary["env_steps"]
        for key in ("success_rate", "advantage_iqr", "advantage_abs_gt1", "singleton_share", "clip_fraction",
                    "time_advantage_s", "time_update_s", "state_group_size_hist"):
            assert key in rows[0], key
        for name in ("summary.json", "curves.png", "eval/before.md", "eval/after.json", "config.json"):
            assert (tmp_path / "run" / name).is_file(), name

    def test_resume_equals_an_uninterrupted_run(self, tmp_path):
        train(toy_config(tmp_path / "full", iterations=4, checkpoint_every=2))
        train(toy_config(tmp_path / "split", iterations=2, checkpoint_every=2))
        train(toy_config(tmp_path / "split", iterations=4, checkpoint_every=2, resume=True))
        full = comparable(read_metrics(tmp_path / "full" / "metrics.jsonl"))
        split = comparable(read_metrics(tmp_path / "split" / "metrics.jsonl"))
        assert [r["iteration"] for r in split] == [0, 1, 2, 3]
        assert split == full
        a = json.loads((tmp_path / "full" / "summary.json").read_text())
        b = json.loads((tmp_path / "split" / "summary.json").read_text())
        keys = ("success_before", "success_after", "env_steps")
        assert [a[k] for k in keys] == [b[k] for k in keys]

    @pytest.mark.slow
    def test_ctrl_c_saves_a_checkpoint(self, tmp_path):
        out = tmp_path / "run"
        cmd = [sys.executable, "-m", "torchrl_gagpo.training", *TOY, "--out", str(out), "--iterations", "200",
               "--checkpoint_every", "1000"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and len(read_metrics(out) if (out / "metrics.jsonl").exists() else []) < 2:
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=240)
        assert proc.returncode != 0 and "checkpoint saved" in stdout, stdout[-2000:]
        from torchrl_gagpo.training.checkpoint import latest_checkpoint, load_checkpoint

        state = load_checkpoint(latest_checkpoint(out))["state"]
        done = state["iteration"]
        assert done >= 2 and len(read_metrics(out)) == done
        resumed = subprocess.run(cmd[:-4] + ["--iterations", str(done + 1), "--resume"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert len(read_metrics(out)) == done + 1 and (out / "summary.json").is_file()


class TestBackendsAndParts:
    @pytest.mark.slow
    def test_ray_and_local_collectors_write_equal_metrics(self, tmp_path):
        pytest.importorskip("ray")
        for collector in ("local", "ray"):
            train(toy_config(tmp_path / collector, collector=collector, iterations=2, seed=7, group_size=3))
        local = comparable(read_metrics(tmp_path / "local" / "metrics.jsonl"))
        remote = comparable(read_metrics(tmp_path / "ray" / "metrics.jsonl"))
        assert local == remote and len(local) == 2

    def test_an_exception_closes_every_worker(self, tmp_path):
        from torchrl_gagpo.training import build_trainer

        trainer = build_trainer(toy_config(tmp_path / "run", iterations=2))
        pids = [handle.pid for handle in trainer.collector._handles]
        assert all(pids)

        def broken_update(data):
            raise RuntimeError("the optimiser exploded")

        trainer.update = broken_update
        with pytest.raises(RuntimeError, match="exploded"), trainer:
            trainer.fit()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

    def test_registered_env_and_estimator_train_by_name(self, tmp_path):
        from torchrl_gagpo import GroupedGAE
        from torchrl_gagpo.envs import ToyTextEnv
        from torchrl_gagpo.training import ENVS, ESTIMATORS, register_env, register_estimator

        made = []

        def corridor(cfg, split, seed):
            made.append(split)
            return ToyTextEnv(num_tasks=3, min_rooms=2, max_rooms=2, max_steps=cfg.max_steps, seed=seed)

        register_env("corridor", corridor, summarize=lambda records: (["Won"], [[len(records)]], {"success": 0.5}))
        register_estimator("gae_lambda0", lambda cfg: GroupedGAE(gamma=cfg.gamma, lmbda=0.0))
        try:
            summary = train(toy_config(tmp_path / "run", iterations=1, env="corridor", estimator="gae_lambda0",
                                       env_processes="false"))
            assert summary["success_after"] == 0.5 and made  # the registered table and factory were used
            with pytest.raises(ValueError, match="registered already"):
                register_env("corridor", corridor)
        finally:
            ENVS._entries.pop("corridor")
            ESTIMATORS._entries.pop("gae_lambda0")
        with pytest.raises(SystemExit):
            toy_config(tmp_path / "bad", env="corridor")


def test_choose_log_prob_equals_a_fresh_scoring():
    """The chooser's stored log-prob of the chosen action equals the scorer's (the loss's) log-prob."""

    from torchrl_gagpo.envs import ToyTextEnv
    from torchrl_gagpo.policies import AdmissibleActionPolicy, make_tiny_model, make_tiny_tokenizer
    from torchrl_gagpo.training.models import make_scorer, score_tokens

    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    policy = AdmissibleActionPolicy(model, tok, score="sum", generator=torch.Generator().manual_seed(0))
    row = policy(ToyTextEnv(seed=0).reset())[0]
    stored = row.get(("log_probs", "full"))
    fresh = row.copy()
    score_tokens(make_scorer(model, tok), [fresh], out_key=("rescored", "full"))
    n = row.get(("tokens", "response")).numel()
    torch.testing.assert_close(stored[-n:], fresh.get(("rescored", "full"))[-n:], atol=1e-4, rtol=1e-4)
    assert torch.isnan(stored[:-n]).all()


@pytest.fixture(scope="module")
def alfworld_games(tmp_path_factory):
    from torchrl_gagpo.envs.alfworld import generate_games

    root = tmp_path_factory.mktemp("alfworld_train")
    generate_games(root, per_type=1, splits=["train"], progress=False)
    return root


@pytest.mark.slow
def test_alfworld_example_smoke_and_evaluate(alfworld_games, tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "ALFWORLD_DATA"}
    cmd = [sys.executable, "examples/alfworld_gagpo.py", "--data_path", str(alfworld_games), "--out", str(out),
           "--iterations", "1", "--warmup_steps", "2", "--games_per_type", "1", "--groups_per_iter", "2",
           "--group_size", "2", "--max_steps", "3", "--eval_episodes", "2", "--num_workers", "1",
           "--minibatch_size", "8", "--logger", "csv", "--progress", "false"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("success_before", "success_after", "iterations", "env_steps", "wall_time_s"):
        assert key in summary
    assert "| Pick | Look | Clean | Heat | Cool | Pick2 | All |" in done.stdout
    assert (out / "curves.png").stat().st_size > 5000
    evaluated = subprocess.run([sys.executable, "examples/evaluate.py", "--run", str(out), "--eval_episodes", "2"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "| Pick | Look | Clean | Heat | Cool | Pick2 | All |" in evaluated.stdout
    table = json.loads((out / "eval" / "evaluate.json").read_text())
    assert table["summary"]["episodes"] == 2


@pytest.mark.slow
def test_webshop_example_smoke_and_evaluate(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "WEBSHOP_DATA"}
    cmd = [sys.executable, "examples/webshop_gagpo.py", "--out", str(out), "--iterations", "1", "--warmup_steps", "2",
           "--num_goals", "2", "--groups_per_iter", "2", "--group_size", "2", "--max_steps", "3",
           "--eval_episodes", "2", "--num_workers", "1", "--minibatch_size", "8", "--logger", "csv",
           "--progress", "false"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 1 and summary["env_steps"] == 12 and 0 <= summary["success_after"] <= 1
    assert "| Score | Success |" in done.stdout
    evaluated = subprocess.run([sys.executable, "examples/evaluate.py", "--run", str(out), "--eval_episodes", "2"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "| Score | Success |" in evaluated.stdout


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
