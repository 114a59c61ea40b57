"""ALFWorld on the real engine: the offline generator, the data layer and ALFWorldEnv."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import force, step, with_reply
from tensordict import lazy_stack
from torchrl.envs import AsyncEnvPool
from torchrl.envs.utils import check_env_specs

from torchrl_gagpo.envs.alfworld import SPLITS, TASK_TYPES, ALFWorldEnv, find_games, generate_games
from torchrl_gagpo.envs.alfworld import data as alf_data

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="session")
def games(tmp_path_factory) -> Path:
    """One game per task type in each split (18 games), generated once per test session."""
    root = tmp_path_factory.mktemp("alfworld")
    generate_games(root, per_type=1, valid_per_type=1, seed=0, progress=False)
    return root


@pytest.fixture(autouse=True)
def _no_user_data(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setenv("TORCHRL_GAGPO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


reply, act = with_reply, step


def walkthrough(env, task_id: int) -> list[str]:
    return json.loads(Path(env.games[task_id].gamefile).read_text())["walkthrough"]


# -- generator ----------------------------------------------------------------------------
class TestGenerator:
    def test_layout_and_all_types(self, games):
        for split in SPLITS:
            records = find_games(games, split)
            assert sorted(r.task_type for r in records) == sorted(TASK_TYPES)
            for record in records:
                trial = Path(record.gamefile).parent
                assert {p.name for p in trial.iterdir()} == {"initial_state.pddl", "traj_data.json", "game.tw-pddl"}
                assert trial.name.startswith("trial_") and trial.parent.name.startswith(record.task_type + "-")
                game = json.loads(Path(record.gamefile).read_text())
                assert game["solvable"] is True and len(game["walkthrough"]) >= 2
                assert "UNKNOWN GOAL" not in game["grammar"]

    def test_unseen_scenes_are_held_out(self, games):
        def scenes(split):
            return {json.loads((Path(r.gamefile).parent / "traj_data.json").read_text())["scene"]["scene_num"]
                    for r in find_games(games, split)}

        assert scenes("valid_unseen").isdisjoint(scenes("train") | scenes("valid_seen"))

    def test_deterministic_across_processes(self, games, tmp_path):
        """The CLI in a fresh process writes byte-identical files for the same seed."""
        cmd = [sys.executable, "-m", "torchrl_gagpo.envs.alfworld.generate", "--out", str(tmp_path / "again"),
               "--per-type", "1", "--seed", "0", "--splits", "train", "--workers", "1",
               "--task-types", "pick_and_place_simple", "look_at_obj_in_light"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        fresh = sorted((tmp_path / "again").rglob("*.*"))
        assert len(fresh) == 6
        for path in fresh:
            assert path.read_bytes() == (games / path.relative_to(tmp_path / "again")).read_bytes(), path

    def test_games_win_in_alfworlds_own_env(self, games):
        """alfworld's AlfredTWEnv loads every generated game and the stored walkthrough wins."""
        from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv
        from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

        config = {
            "dataset": {"data_path": str(games / "train"), "eval_id_data_path": str(games / "valid_seen"),
                        "eval_ood_data_path": str(games / "valid_unseen"), "num_train_games": -1,
                        "num_eval_games": -1},
            "logic": {"domain": ALFRED_PDDL_PATH, "grammar": ALFRED_TWL2_PATH},
            "env": {"type": "AlfredTWEnv", "domain_randomization": False, "task_types": [1, 2, 3, 4, 5, 6],
                    "expert_timeout_steps": 150, "expert_type": "handcoded", "goal_desc_human_anns_prob": 0.0},
            "general": {"training_method": "dqn"},
            "rl": {"training": {"max_nb_steps_per_episode": 50}},
            "dagger": {"training": {"max_nb_steps_per_episode": 50}},
        }
        tw = AlfredTWEnv(config, train_eval="train")
        assert tw.num_games == 6
        env = tw.init_env(batch_size=1)
        won = {}
        try:
            for _ in range(30):
                _, infos = env.reset()
                gamefile = infos["extra.gamefile"][0]
                if gamefile in won:
                    continue
                for command in json.loads(Path(gamefile).read_text())["walkthrough"]:
                    _, _, dones, infos = env.step([command])
                won[gamefile] = bool(infos["won"][0])
                if len(won) == 6:
                    break
        finally:
            env.close()
        assert len(won) == 6 and all(won.values()), won

    def test_floorplan_receptacles(self, tmp_path):
        """--floorplans takes the receptacles of the real ALFRED floor plan: more of them, real ids."""
        types = ["pick_and_place_simple", "pick_heat_then_place_in_recep"]
        compact = generate_games(tmp_path / "c", per_type=1, splits=["train"], task_types=types, progress=False)
        real = generate_games(tmp_path / "f", per_type=1, splits=["train"], task_types=types, floorplans=True,
                              progress=False)
        for small, big in zip(compact, real, strict=True):
            n_small = (small / "initial_state.pddl").read_text().count("- receptacle")
            n_big = (big / "initial_state.pddl").read_text().count("- receptacle")
            assert n_big > n_small
            assert json.loads((big / "game.tw-pddl").read_text())["solvable"]

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="task type"):
            generate_games(tmp_path, task_types=["fly_to_the_moon"])
        with pytest.raises(ValueError, match="split"):
            generate_games(tmp_path, splits=["test"])


# -- data layer ---------------------------------------------------------------------------
class TestData:
    def test_missing_path(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"nowhere.*python -m torchrl_gagpo.envs.alfworld.generate"):
            ALFWorldEnv(data_path=tmp_path / "nowhere")
        with pytest.raises(FileNotFoundError, match=r"no ALFWorld games under data_path=.*json_2.1.1"):
            ALFWorldEnv(data_path=tmp_path)

    def test_environment_variable(self, games, monkeypatch, tmp_path):
        monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
        with pytest.raises(FileNotFoundError, match="ALFWORLD_DATA="):
            ALFWorldEnv()
        official = tmp_path / "json_2.1.1"
        official.mkdir()
        (official / "train").symlink_to(games / "train")
        assert len(ALFWorldEnv().games) == 6  # the official layout <root>/json_2.1.1/<split>

    def test_malformed_game_file(self, games, tmp_path):
        bad = tmp_path / "train" / "pick_and_place_simple-X-None-Y-1" / "trial_0"
        bad.mkdir(parents=True)
        (bad / "traj_data.json").write_text(json.dumps({"task_type": "pick_and_place_simple"}))
        (bad / "game.tw-pddl").write_text("{not json")
        with pytest.raises(ValueError, match=r"malformed ALFWorld game file .*trial_0"):
            ALFWorldEnv(data_path=tmp_path)

    def test_default_set_generated_cached_and_rebuilt(self, monkeypatch, caplog):
        # a two-game default set keeps this test short; the real one has 48 games
        small = {"per_type": 1, "seed": 0, "splits": ["train"], "task_types": TASK_TYPES[:2]}
        monkeypatch.setattr(alf_data, "DEFAULT_GAMES", small)
        root = alf_data.default_data_path()
        env = ALFWorldEnv()  # no arguments: the embedded default set
        assert Path(env.games[0].gamefile).is_relative_to(root) and len(env.games) == 2
        manifest = json.loads((root / "manifest.json").read_text())
        assert len(manifest["files"]) == 2 * 3
        victim = root / next(iter(manifest["files"]))
        victim.write_text("corrupt")
        with caplog.at_level(logging.WARNING, logger="torchrl_gagpo.envs"):
            assert alf_data.default_data_path() == root
        assert "rebuilding" in caplog.text
        assert victim.read_text() != "corrupt"


# -- the environment ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(games):
    env = ALFWorldEnv(data_path=games, group_size=2, seed=0)
    yield env
    env.close()


class TestALFWorldEnv:
    def test_check_env_specs(self, env):
        check_env_specs(env)

    @pytest.mark.parametrize("task_type", TASK_TYPES)
    def test_walkthrough_wins(self, env, task_type):
        task_id = next(i for i, g in enumerate(env.games) if g.task_type == task_type)
        td = env.reset(force(task_id))
        assert td["task_type"][0] == task_type
        for n, command in enumerate(walkthrough(env, task_id), 1):
            assert command in list(td["admissible_actions"][0])
            td = act(env, td, f"<think>step {n}</think>\n<action>{command}</action>")
            assert not td["invalid_action"].item()
        assert td["reward"].item() == 10.0 and td["terminated"].item() and td["won"].item() and td["done"].item()

    @pytest.mark.parametrize(
        "text",
        [
            "go to cabinet 1",  # no tags
            "<action>look",  # unbalanced
            "<action>look</action><action>inventory</action>",  # several actions
            "<action>fly to the moon</action>",  # not admissible
            "<action>   </action>",  # empty
            "<action>look</action>" + "x" * 10_001,  # very long
            "<action>lo\ufffdok</action>",  # undecodable bytes
            "<|im_start|>user\n<action>look</action>",  # injected role marker
            None,  # no text at all
        ],
    )
    def test_invalid_outputs(self, env, text):
        td = env.reset(force(0))
        nxt = act(env, td, text) if text is not None else env.step(td)["next"]
        assert nxt["invalid_action"].item() and nxt["reward"].item() == pytest.approx(-0.1)
        assert not nxt["done"].item()
        assert list(nxt["admissible_actions"][0])  # the episode goes on

    def test_inadmissible_command_gets_nothing_happens(self, env):
        nxt = act(env, env.reset(force(0)), "<action>fly to the moon</action>")
        assert nxt["observation"][0] == "Nothing happens."

    def test_state_keys_of_two_rollouts(self, env):
        task_id = 0
        first = walkthrough(env, task_id)[0]
        a = env.reset(force(task_id, 7))
        a1 = act(env, a, f"<action>{first}</action>")
        b = env.reset(force(task_id, 7))
        assert a["state_key"].item() == b["state_key"].item()  # identical initial state
        b1 = act(env, b, f"<action>{first}</action>")
        assert a1["state_key"].item() == b1["state_key"].item()  # same move, same state
        other = next(c for c in b["admissible_actions"][0] if c.startswith("go to") and c != first)
        c = env.reset(force(task_id, 7))
        c1 = act(env, c, f"<action>{other}</action>")
        assert c1["state_key"].item() != a1["state_key"].item()  # another move, another state

    def test_inventory_state_key(self, games):
        env = ALFWorldEnv(data_path=games, state_key="observation+inventory", engine="inline")
        task_id = next(i for i, g in enumerate(env.games) if g.task_type == "pick_and_place_simple")
        td = env.reset(force(task_id))
        plain = ALFWorldEnv(data_path=games, engine="inline")
        tp = plain.reset(force(task_id))
        for command in walkthrough(env, task_id)[:2]:  # go to X, take Y from X
            td, tp = act(env, td, f"<action>{command}</action>"), act(plain, tp, f"<action>{command}</action>")
        assert td["observation"][0] == tp["observation"][0] and td["state_key"].item() != tp["state_key"].item()
        env.close()
        plain.close()

    def test_invalid_reply_is_a_self_loop(self, env):
        td = env.reset(force(0))
        first = walkthrough(env, 0)[0]
        moved = act(env, td, f"<action>{first}</action>")
        looped = act(env, moved, "<action>fly to the moon</action>")  # "Nothing happens."
        assert looped["invalid_action"].item() and looped["observation"][0] == "Nothing happens."
        assert looped["state_key"].item() == moved["state_key"].item()
        assert looped["penalty"].item() == pytest.approx(0.1)
        assert looped["reward"].item() == pytest.approx(-0.1)
        # from the start, "Nothing happens." gets the start's key, not the same key as above
        start_loop = act(env, env.reset(force(0)), "<action>fly to the moon</action>")
        assert start_loop["state_key"].item() == td["state_key"].item() != looped["state_key"].item()
        # a malformed reply around an admissible command still acts: not a self-loop
        acted = act(env, env.reset(force(0)), f"<action>{first}</action><action>{first}</action>")
        assert acted["invalid_action"].item() and acted["state_key"].item() == moved["state_key"].item()

    def test_facts_state_key(self, games):
        env = ALFWorldEnv(data_path=games, state_key="facts", engine="inline")
        task_id = next(i for i, g in enumerate(env.games) if g.task_type == "pick_and_place_simple")
        steps = walkthrough(env, task_id)
        td = env.reset(force(task_id))
        start = td["state_key"].item()
        for command in ("look", "inventory", "examine " + steps[0].removeprefix("go to ")):
            td = act(env, td, f"<action>{command}</action>")
            assert td["state_key"].item() == start, command  # information commands change no fact
        moved = act(env, td, f"<action>{steps[0]}</action>")
        assert moved["state_key"].item() != start
        took = act(env, moved, f"<action>{steps[1]}</action>")  # the held object changes the world state
        assert took["state_key"].item() not in (start, moved["state_key"].item())
        # the same world state reached by another path has the same key
        again = env.reset(force(task_id))
        for command in ("inventory", steps[0], "look"):
            again = act(env, again, f"<action>{command}</action>")
        assert again["state_key"].item() == moved["state_key"].item()
        env.close()

    def test_prompt_bounded_and_truncation(self, env):
        td = env.reset(force(1))
        lengths = []
        for _ in range(50):
            td = act(env, td, "<think>hm</think><action>look</action>")
            lengths.append(len(td["history"].prompt[0, -1].content))
        assert max(lengths) <= lengths[2] * 1.2  # the window, not the step count, bounds the prompt
        assert td["truncated"].item() and td["done"].item() and not td["terminated"].item()
        assert "You are now at step 51" in td["history"].prompt[0, -1].content

    def test_groups_share_game_and_start(self, games):
        env = ALFWorldEnv(data_path=games, group_size=2, max_steps=2, seed=3, engine="inline")
        starts = []
        for _ in range(4):
            td = env.reset()
            starts.append((td["task_id"].item(), td["group_id"].item(), td["state_key"].item()))
            for _ in range(2):  # truncated after two turns: the episode completes
                td = act(env, td, "<action>look</action>")
            assert td["truncated"].item()
        env.close()
        assert starts[0] == starts[1] and starts[2] == starts[3] and starts[0][1] != starts[2][1]

    def test_engine_crash_ends_the_episode(self, games, caplog):
        env = ALFWorldEnv(data_path=games, seed=0)
        td = env.reset(force(2))
        env._engine._process.kill()  # the worker dies mid-episode
        with caplog.at_level(logging.ERROR, logger="torchrl_gagpo.envs"):
            nxt = act(env, td, "<action>look</action>")
        assert nxt["engine_error"].item() and nxt["truncated"].item() and nxt["done"].item()
        assert env.games[2].gamefile in caplog.text
        td = env.reset(force(2))  # a fresh worker takes over
        assert not act(env, td, "<action>look</action>")["engine_error"].item()
        env.close()

    def test_parallel_instances_in_torchrl_pool(self, games):
        """Two instances (two engine processes) stepped concurrently by torchrl's AsyncEnvPool.

        torchrl 0.14's synchronous ``AsyncEnvPool.step`` writes a ``[N]`` env index that
        does not fit sub-envs of batch size ``(1,)``; the asynchronous API works.
        """
        make = [functools.partial(ALFWorldEnv, data_path=games, seed=s, max_steps=5) for s in range(2)]
        pool = AsyncEnvPool(make, backend="threading", stack="lazy")
        try:
            td = pool.reset()
            assert td.batch_size == (2, 1)
            pool.async_step_send(lazy_stack([reply(row, "<action>look</action>") for row in td.unbind(0)]))
            out = pool.async_step_recv(min_get=2)
            assert out.batch_size == (2, 1) and not out["next", "engine_error"].any()
            assert {int(i[0]) for i in out["env_index"]} == {0, 1}
        finally:
            pool.close()

    def test_llm_collector_with_an_lm_policy(self, games):
        """torchrl's LLMCollector drives ALFWorldEnv with the admissible-action policy of a tiny LM."""
        from torchrl.collectors.llm import LLMCollector

        from torchrl_gagpo.policies import AdmissibleActionPolicy, make_tiny_model, make_tiny_tokenizer

        tok = make_tiny_tokenizer()
        policy = AdmissibleActionPolicy(make_tiny_model(tok), tok, generator=torch.Generator().manual_seed(0))
        env = ALFWorldEnv(data_path=games, group_size=2, max_steps=3, seed=0)
        collector = LLMCollector(env, policy=policy, yield_completed_trajectories=True, total_dialog_turns=6)
        trajectories = list(collector)
        collector.shutdown()
        env.close()
        steps = torch.cat([t.reshape(-1) for t in trajectories])
        assert steps["next", "done"].sum() == len(trajectories) >= 2
        assert not steps["next", "invalid_action"].any()  # the chooser only emits admissible actions
        assert steps["group_id"][0] == steps["group_id"][-1]  # both episodes belong to the first group
        assert all(t in TASK_TYPES for t in steps["task_type"])

    @pytest.mark.slow
    def test_state_aliasing_benchmark(self, games, tmp_path):
        """benchmarks/state_aliasing.py on one game: paired rollouts, the documented rows."""
        path = tmp_path / "rows.json"
        cmd = [sys.executable, "benchmarks/state_aliasing.py", "--games", "1", "--group_size", "2",
               "--max_steps", "5", "--data_path", str(games), "--json", str(path)]
        done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = json.loads(path.read_text())
        assert len(rows) == 9 and {r["state_key"] for r in rows} == {
            "observation (text of invalid turns)", "observation (self-loops)", "facts"}
        for row in rows:
            assert 0 <= row["singleton_share"] <= 1 and 0 <= row["aliased_steps"] <= 1
            assert row["aliased_steps"] == 0.0 if row["state_key"] == "facts" else True

    def test_bad_options(self, games):
        with pytest.raises(ValueError, match="state_key"):
            ALFWorldEnv(data_path=games, state_key="pddl")
        with pytest.raises(ValueError, match="engine"):
            ALFWorldEnv(data_path=games, engine="thread")
        with pytest.raises(ValueError, match="split"):
            ALFWorldEnv(data_path=games, split="test")
        with pytest.raises(ValueError, match="task_id 99 is out of range"):
            ALFWorldEnv(data_path=games, engine="inline").reset(force(99))


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
