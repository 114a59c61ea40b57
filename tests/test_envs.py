"""Text environments: the corridor engine, ToyTextEnv's data contract, rollout groups,
prompts, state keys and AdmissibleActionPolicy (replies: ``test_env_replies.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import act, obs, play_episode, prompt_text, scalar, step, with_reply
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

import torchrl_gagpo
from torchrl_gagpo.envs import GameState, ToyGame, ToyTask, ToyTextEnv
from torchrl_gagpo.envs.toy import DISTRACTORS, make_tasks
from torchrl_gagpo.policies import AdmissibleActionPolicy

TASK = ToyTask(0, ("hall", "kitchen", "cellar", "garden"))
ADMISSIBLE = ["go forward", "go back", "look around", "check inventory"]

PROBE = (
    "import torchrl_gagpo\n"
    "from torchrl_gagpo.envs import ToyTextEnv\n"
    "td = ToyTextEnv(seed=3).reset()\n"
    "print(td['state_key'].item(), td['task_id'].item(), td['group_id'].item())\n"
)


@pytest.fixture(scope="module", autouse=True)
def probe_process():
    """A fresh interpreter that builds ``ToyTextEnv(seed=3)``; started early so that its
    import time overlaps the other tests, read by ``test_determinism_across_processes``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


# -- helpers ---------------------------------------------------------------------------


# -- ToyGame ---------------------------------------------------------------------------


class TestToyGame:
    def test_forward_back_and_win(self):
        game = ToyGame(TASK)
        s = game.reset()
        assert s.observation == "You are in the hall. The goal is the garden."
        assert not s.won and s.admissible_actions == ADMISSIBLE
        assert game.step("go back").observation == s.observation  # not below room 0
        assert game.step("go forward").observation.startswith("You are in the kitchen")
        assert game.step("go back").observation == s.observation
        for room in ("kitchen", "cellar"):
            st_ = game.step("go forward")
            assert room in st_.observation and not st_.won
        final = game.step("go forward")
        assert final.won and "You are in the garden" in final.observation
        # forward in the last room stays there (and stays won)
        again = game.step("go forward")
        assert again.won and again.observation == final.observation

    @pytest.mark.parametrize(
        "command", [*DISTRACTORS, "fly", "", "GO FORWARD", "go  forward", "go forward please"]
    )
    def test_distractors_and_unknown_commands_change_nothing(self, command):
        game = ToyGame(TASK, distractors=len(DISTRACTORS))
        game.reset()
        before = game.step("go forward")
        after = game.step(command)
        assert after.observation == before.observation and after.won == before.won
        assert after.admissible_actions == before.admissible_actions

    def test_observation_depends_only_on_room(self):
        game = ToyGame(TASK, distractors=4, seed=1)
        seen: dict[int, str] = {}
        game.reset()
        for command in ["look around", "go forward", "wait", "go back", "go forward", "go forward", "go back",
                        "check inventory", "go forward", "go forward", "examine the walls"]:
            s = game.step(command)
            seen.setdefault(game.position, s.observation)
            assert seen[game.position] == s.observation
            assert s.won == (game.position == len(TASK.rooms) - 1)
        assert len(set(seen.values())) == len(seen)

    @pytest.mark.parametrize("n", [0, 1, 2, 4])
    def test_distractor_count(self, n):
        s = ToyGame(TASK, distractors=n).reset()
        assert s.admissible_actions == ["go forward", "go back", *DISTRACTORS[:n]]

    def test_slip_is_seeded_and_has_the_right_rate(self):
        def positions(seed):
            task = ToyTask(0, tuple(f"r{i}" for i in range(400)))
            game = ToyGame(task, slip=0.3, seed=seed)
            game.reset()
            out = []
            for _ in range(300):
                game.step("go forward")
                out.append(game.position)
            return out

        a, b, c = positions(5), positions(5), positions(6)
        assert a == b and a != c
        assert 0.6 < a[-1] / 300 < 0.8  # ~70% of forward moves succeed
        assert ToyGame(TASK, slip=0.0).reset() is not None

    @pytest.mark.parametrize("kwargs", [{"slip": 1.0}, {"slip": -0.1}, {"slip": 1.5},
                                        {"distractors": -1}, {"distractors": len(DISTRACTORS) + 1}])
    def test_bad_args(self, kwargs):
        with pytest.raises(ValueError):
            ToyGame(TASK, **kwargs)

    def test_make_tasks(self):
        tasks = make_tasks(6, 2, 5, seed=1)
        assert tasks == make_tasks(6, 2, 5, seed=1)
        assert [t.task_id for t in tasks] == list(range(6))
        assert all(2 <= len(t.rooms) <= 5 and len(set(t.rooms)) == len(t.rooms) for t in tasks)
        with pytest.raises(ValueError):
            make_tasks(3, 1, 3)
        with pytest.raises(ValueError):
            make_tasks(3, 4, 3)


# -- ToyTextEnv: contract ------------------------------------------------------------------

TENSOR_KEYS = ["state_key", "task_id", "group_id", "turn", "won", "invalid_action", "reward", "done",
               "terminated", "truncated"]


class TestContract:
    def test_check_env_specs(self):
        check_env_specs(ToyTextEnv(seed=0))
        check_env_specs(ToyTextEnv(seed=1, group_size=3, history_length=0, system_prompt="Be brief."))

    def test_step_writes_every_key(self):
        env = ToyTextEnv(seed=0)
        td = env.reset()
        for key in TENSOR_KEYS:
            if key != "reward":
                assert td[key].shape == (1, 1), key
        nxt = step(env, td, act("look around"))
        assert nxt.batch_size == (1,)
        for key in TENSOR_KEYS:
            assert scalar(nxt, key) is not None
        assert nxt["reward"].dtype == torch.float32
        for key in ("won", "invalid_action", "done", "terminated", "truncated"):
            assert nxt[key].dtype == torch.bool, key
        for key in ("state_key", "task_id", "group_id", "turn"):
            assert nxt[key].dtype == torch.int64, key
        assert isinstance(obs(nxt), str) and obs(nxt).startswith("You are in the")
        assert list(nxt["admissible_actions"][0]) == ADMISSIBLE
        assert isinstance(prompt_text(nxt), str)
        assert scalar(nxt, "turn") == 1 and scalar(td, "turn") == 0
        assert scalar(nxt, "task_id") == scalar(td, "task_id")
        assert scalar(nxt, "group_id") == scalar(td, "group_id")
        assert not scalar(nxt, "invalid_action") and scalar(nxt, "reward") == 0.0

    def test_success_reward_and_termination(self):
        env = ToyTextEnv(seed=0, min_rooms=3, max_rooms=3, max_steps=8, success_reward=2.5)
        steps = play_episode(env, ["go forward"])
        assert len(steps) == 3  # reset + 2 moves through 3 rooms
        mid, last = steps[1], steps[2]
        assert scalar(mid, "reward") == 0.0 and not scalar(mid, "done") and not scalar(mid, "won")
        assert scalar(last, "reward") == 2.5
        assert scalar(last, "won") and scalar(last, "terminated") and scalar(last, "done")
        assert not scalar(last, "truncated")

    def test_truncation_at_max_steps(self):
        env = ToyTextEnv(seed=0, max_steps=5)
        steps = play_episode(env, ["look around", "go back"])
        assert len(steps) == 6
        for td in steps[1:-1]:
            assert not scalar(td, "done") and not scalar(td, "truncated")
        last = steps[-1]
        assert scalar(last, "turn") == 5
        assert scalar(last, "truncated") and scalar(last, "done") and not scalar(last, "terminated")
        assert scalar(last, "reward") == 0.0 and not scalar(last, "won")

    def test_win_on_the_last_step_is_terminated_not_truncated(self):
        env = ToyTextEnv(seed=0, min_rooms=3, max_rooms=3, max_steps=2)
        last = play_episode(env, ["go forward"])[-1]
        assert scalar(last, "terminated") and not scalar(last, "truncated") and scalar(last, "done")

    def test_done_is_terminated_or_truncated(self):
        env = ToyTextEnv(seed=2, max_steps=4, group_size=2)
        for actions in (["go forward"], ["look around"], ["go forward", "go back"], ["fly", "go forward"]):
            for td in play_episode(env, actions)[1:]:
                assert scalar(td, "done") == (scalar(td, "terminated") or scalar(td, "truncated"))

    def test_step_before_reset_raises(self):
        env = ToyTextEnv(seed=0)
        td = ToyTextEnv(seed=0).reset()
        with pytest.raises(RuntimeError):
            env.step(with_reply(td, act("go forward")))

    def test_step_and_maybe_reset_starts_a_new_episode(self):
        env = ToyTextEnv(seed=0, min_rooms=3, max_rooms=3, group_size=2)
        td = env.reset()
        turns, groups = [], [(scalar(td, "task_id"), scalar(td, "group_id"))]
        for _ in range(8):
            out, td = env.step_and_maybe_reset(with_reply(td, act("go forward")))
            turns.append((scalar(out["next"], "turn"), scalar(out["next"], "done"), scalar(td, "turn")))
            if scalar(out["next"], "done"):
                groups.append((scalar(td, "task_id"), scalar(td, "group_id")))
        assert turns == [(1, False, 1), (2, True, 0)] * 4
        # the automatic resets follow the groups: 2 episodes per group, then a fresh draw
        assert groups[0] == groups[1] and groups[2] == groups[3] and groups[4] != groups[3]
        assert groups[1][1] != groups[2][1]


@pytest.mark.parametrize(
    "kwargs",
    [{"group_size": 0}, {"max_steps": 0}, {"history_length": -1}, {"invalid_action_penalty": -0.1},
     {"group_size": 1.5}, {"group_size": True}],
)
def test_constructor_validation(kwargs):
    with pytest.raises(ValueError):
        ToyTextEnv(seed=0, **kwargs)


@pytest.mark.parametrize("kwargs", [{"slip": 1.5}, {"distractors": 9}, {"min_rooms": 1}, {"num_tasks": 0}])
def test_bad_game_args_raise_by_the_first_reset(kwargs):
    # ToyTextEnv hands slip/distractors to ToyGame at reset time: accept either point of failure
    with pytest.raises(ValueError):
        ToyTextEnv(seed=0, **kwargs).reset()


# -- groups ----------------------------------------------------------------------------


def group_signature(steps):
    first = steps[0]
    return scalar(first, "task_id"), scalar(first, "group_id"), obs(first), scalar(first, "state_key")


class TestGroups:
    @pytest.mark.parametrize("group_size", [1, 3])
    def test_consecutive_completed_episodes_share_a_group(self, group_size):
        env = ToyTextEnv(seed=0, group_size=group_size, num_tasks=8, min_rooms=2, max_rooms=5)
        policy = ["go forward", "look around"]
        sigs = [group_signature(play_episode(env, policy)) for _ in range(3 * group_size)]
        groups = [sigs[i : i + group_size] for i in range(0, len(sigs), group_size)]
        for members in groups:
            assert len(set(members)) == 1  # task_id, group_id, initial observation and key identical
        assert len({g[0][1] for g in groups}) == 3  # a fresh group_id per group
        # a new group draws a new task (tasks are drawn without replacement within a pass)
        assert len({g[0][0] for g in groups}) == 3

    def test_unstepped_resets_do_not_use_up_a_member(self):
        env = ToyTextEnv(seed=0, group_size=3)
        first = env.reset()
        env.reset()  # e.g. a collector's priming reset, never stepped
        sigs = [group_signature(play_episode(env, ["go forward"])) for _ in range(3)]
        assert len(set(sigs)) == 1
        assert sigs[0][:2] == (scalar(first, "task_id"), scalar(first, "group_id"))
        nxt = group_signature(play_episode(env, ["go forward"]))
        assert nxt[1] != sigs[0][1]

    def test_unfinished_episode_does_not_use_up_a_member(self):
        env = ToyTextEnv(seed=0, group_size=2, max_steps=6)
        td = env.reset()
        step(env, td, act("look around"))  # abandoned mid-episode
        sigs = [group_signature(play_episode(env, ["go forward"])) for _ in range(2)]
        assert sigs[0] == sigs[1] and sigs[0][1] == scalar(td, "group_id")
        assert group_signature(play_episode(env, ["go forward"]))[1] != sigs[0][1]

    def test_group_members_replay_identically_with_slip(self):
        env = ToyTextEnv(seed=4, group_size=2, slip=0.5, min_rooms=5, max_rooms=5, max_steps=12)
        runs = [[(obs(td), scalar(td, "won")) for td in play_episode(env, ["go forward"])] for _ in range(2)]
        assert runs[0] == runs[1]
        assert len(runs[0]) > 5  # some moves slipped: 4 moves would have reached the goal

    def test_reset_tensordict_overrides_the_draw(self):
        env = ToyTextEnv(seed=0, group_size=2)
        drawn = env.reset()
        forced = TensorDict(task_id=torch.tensor([[5]]), group_id=torch.tensor([[12345]]), batch_size=(1,))
        td = env.reset(forced)
        assert scalar(td, "task_id") == 5 and scalar(td, "group_id") == 12345
        assert obs(td) == ToyGame(env.tasks[5]).reset().observation
        assert env.tasks[5].goal in prompt_text(td)
        nxt = step(env, td, act("look around"))
        assert scalar(nxt, "task_id") == 5 and scalar(nxt, "group_id") == 12345
        # the forced episode does not disturb the drawn group
        sigs = [group_signature(play_episode(env, ["go forward"])) for _ in range(2)]
        assert sigs[0] == sigs[1] and sigs[0][:2] == (scalar(drawn, "task_id"), scalar(drawn, "group_id"))

    def test_forced_episodes_do_not_use_up_drawn_members(self):
        env = ToyTextEnv(seed=0, group_size=2)
        drawn = env.reset()
        forced = TensorDict(task_id=torch.tensor([[2]]), group_id=torch.tensor([[999]]), batch_size=(1,))
        play_episode(env, ["go forward"], td=env.reset(forced))  # completed
        sigs = [group_signature(play_episode(env, ["go forward"])) for _ in range(2)]
        assert sigs[0][:2] == sigs[1][:2] == (scalar(drawn, "task_id"), scalar(drawn, "group_id"))

    def test_task_draws_are_deterministic_per_seed(self):
        def task_ids(seed, n=9):
            env = ToyTextEnv(seed=seed, num_tasks=8)
            return [group_signature(play_episode(env, ["go forward"]))[0] for _ in range(n)]

        a = task_ids(0)
        assert a == task_ids(0)
        assert a != task_ids(1)
        assert sorted(a[:8]) == list(range(8))  # one pass over the tasks before repeating

    def test_set_seed_restarts_the_draw(self):
        env = ToyTextEnv(seed=3, num_tasks=8)
        a = [group_signature(play_episode(env, ["go forward"])) for _ in range(3)]
        env.set_seed(3)
        b = [group_signature(play_episode(env, ["go forward"])) for _ in range(3)]
        assert a == b


# -- prompt ----------------------------------------------------------------------------


class TestPrompt:
    def test_prompt_contents(self):
        env = ToyTextEnv(seed=0, distractors=3)
        td = env.reset()
        text = prompt_text(td)
        task = env.tasks[scalar(td, "task_id")]
        assert f"reach the {task.goal}" in text
        assert obs(td) in text
        assert "[go forward, go back, look around, check inventory, wait]" in text
        assert "<think>" in text and "</think>" in text and "<action>" in text and "</action>" in text
        assert "step 1" in text

    def test_history_window(self):
        env = ToyTextEnv(seed=0, min_rooms=4, max_rooms=4, history_length=2, max_steps=20)
        td = env.reset()
        obs0 = obs(td)
        td = step(env, td, act("go forward"))
        text = prompt_text(td)
        assert f"[Observation 1: '{obs0}', Action 1: 'go forward']" in text
        obs1 = obs(td)
        td = step(env, td, act("look around"))
        obs2 = obs(td)
        td = step(env, td, act("wait"))  # invalid: the engine gets the tag content
        text = prompt_text(td)
        assert "Observation 1" not in text  # only the last 2 pairs are shown
        assert f"[Observation 2: '{obs1}', Action 2: 'look around']" in text
        assert f"[Observation 3: '{obs2}', Action 3: 'wait']" in text
        assert "step 4" in text

    def test_prompt_length_stays_bounded(self):
        env = ToyTextEnv(seed=0, history_length=2, max_steps=50)
        td = env.reset()
        lengths = {}
        for t in range(1, 8):
            td = step(env, td, act("look around"))
            lengths[t] = len(prompt_text(td))
        # the same pairs are shown, only the step numbers differ
        assert lengths[7] == lengths[3]
        assert lengths[3] > lengths[1]

    def test_history_length_zero(self):
        env = ToyTextEnv(seed=0, history_length=0, max_steps=50)
        td = env.reset()
        lengths = [len(prompt_text(td))]
        for _ in range(4):
            td = step(env, td, act("look around"))
            lengths.append(len(prompt_text(td)))
            assert "Observation" not in prompt_text(td)
        assert len(set(lengths)) == 1

    def test_system_prompt_and_template(self):
        template = "T={task} O={observation} A={actions}{history}{step}{env_name}"
        env = ToyTextEnv(seed=0, system_prompt="SYS", prompt_template=template)
        td = env.reset()
        prompt = td["history"].prompt
        assert prompt[0, 0].role == "system" and prompt[0, 0].content == "SYS"
        goal = env.tasks[scalar(td, "task_id")].goal
        expected = f"T=reach the {goal}. O={obs(td)} A={', '.join(ADMISSIBLE)}1a corridor of rooms"
        assert prompt_text(td) == expected


# -- state keys ------------------------------------------------------------------------


class TestStateKey:
    def test_default_key_is_the_observation_digest(self):
        env = ToyTextEnv(seed=0, max_steps=6)
        for td in play_episode(env, ["look around", "go forward", "go back", "go forward", "go forward"]):
            assert scalar(td, "state_key") == torchrl_gagpo.state_digest(obs(td))
            assert 0 <= scalar(td, "state_key") < 2**63

    def test_same_room_same_key_within_and_across_episodes(self):
        env = ToyTextEnv(seed=0, group_size=2, min_rooms=4, max_rooms=4, max_steps=8)
        keys: dict[str, set[int]] = {}
        for actions in (["look around", "go forward", "go back", "go forward", "go forward"], ["go forward"]):
            for td in play_episode(env, actions):
                keys.setdefault(obs(td), set()).add(scalar(td, "state_key"))
        assert all(len(k) == 1 for k in keys.values())
        assert len(keys) == 4  # four rooms, four distinct keys
        assert len(set().union(*keys.values())) == 4

    def test_state_key_fn(self):
        def room_only(state: GameState) -> str:
            assert isinstance(state, GameState)
            return state.observation.split(".")[0]

        env = ToyTextEnv(seed=0, state_key_fn=room_only)
        td = env.reset()
        assert scalar(td, "state_key") == torchrl_gagpo.state_digest(room_only(GameState(obs(td), [])))
        assert scalar(td, "state_key") != torchrl_gagpo.state_digest(obs(td))
        const = ToyTextEnv(seed=0, state_key_fn=lambda state: "same")
        t0 = const.reset()
        t1 = step(const, t0, act("go forward"))
        assert obs(t0) != obs(t1)
        assert scalar(t0, "state_key") == scalar(t1, "state_key") == torchrl_gagpo.state_digest("same")


# -- AdmissibleActionPolicy ----------------------------------------------------------------


class TestAdmissibleActionPolicy:
    def test_rollout_is_always_valid(self, model, tokenizer):
        env = ToyTextEnv(seed=0, group_size=2, max_steps=6, distractors=3)
        policy = AdmissibleActionPolicy(model, tokenizer, generator=torch.Generator().manual_seed(0))
        td = env.reset()
        n_done = 0
        for _ in range(20):
            admissible = list(td["admissible_actions"][0])
            td = policy(td)
            reply = td["history"].full[0, -1]
            assert reply.role == "assistant"
            assert reply.content in [f"<action>{a}</action>" for a in admissible]
            out, td = env.step_and_maybe_reset(td)
            nxt = out["next"]
            assert not scalar(nxt, "invalid_action")
            assert scalar(nxt, "reward") >= 0.0
            n_done += scalar(nxt, "done")
        assert n_done >= 2

    def test_tokens_and_log_probs(self, model, tokenizer):
        env = ToyTextEnv(seed=1)
        gen = torch.Generator().manual_seed(1)
        policy = AdmissibleActionPolicy(model, tokenizer, score="mean", generator=gen)
        td = env.reset()
        out = policy(td)
        assert out.batch_size == (1,)
        row = out[0]
        prompt, response, full = row["tokens", "prompt"], row["tokens", "response"], row["tokens", "full"]
        assert torch.equal(full, torch.cat([prompt, response]))
        assert response[-1].item() == tokenizer.eos_token_id
        lp = row["log_probs", "full"]
        assert lp.shape == full.shape
        assert torch.isnan(lp[: prompt.numel()]).all()
        resp_lp = lp[prompt.numel() :]
        assert torch.isfinite(resp_lp).all() and (resp_lp < 0).all()
        # the response decodes to the chosen action's reply
        content = row["history"].full[-1].content
        assert tokenizer.decode(response[:-1]) == content
        # the prompt tokens are the chat-templated prompt
        messages = [{"role": "user", "content": prompt_text(td)}]
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert prompt.tolist() == list(expected)
        # the log-probs are the model's own
        with torch.no_grad():
            logits = model(input_ids=full[None]).logits[0].float()
        ref = torch.log_softmax(logits[:-1], -1).gather(-1, full[1:, None]).squeeze(-1)[prompt.numel() - 1 :]
        torch.testing.assert_close(resp_lp, ref, atol=1e-4, rtol=1e-4)

    def test_greedy_is_deterministic(self, model, tokenizer):
        env = ToyTextEnv(seed=0, distractors=4)
        td = env.reset()
        policy = AdmissibleActionPolicy(model, tokenizer, greedy=True)
        picks = set()
        for s in range(4):
            torch.manual_seed(s)
            picks.add(policy(td)["history"].full[0, -1].content)
        assert len(picks) == 1

    def test_seeded_generator_is_reproducible(self, model, tokenizer):
        env = ToyTextEnv(seed=0, distractors=4)
        td = env.reset()

        def picks(seed):
            gen = torch.Generator().manual_seed(seed)
            policy = AdmissibleActionPolicy(model, tokenizer, temperature=5.0, generator=gen)
            return [policy(td)["history"].full[0, -1].content for _ in range(6)]

        a = picks(7)
        assert a == picks(7)
        assert len(set(a)) > 1  # high temperature: it does sample

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"temperature": 0.0},
            {"temperature": -1.0},
            {"score": "max"},
            {"action_template": "<action></action>"},
        ],
    )
    def test_bad_args(self, model, tokenizer, kwargs):
        with pytest.raises(ValueError):
            AdmissibleActionPolicy(model, tokenizer, **kwargs)

    def test_empty_admissible_list(self, model, tokenizer):
        env = ToyTextEnv(seed=0)
        td = env.reset()
        td["admissible_actions"] = [[]]
        assert list(td["admissible_actions"][0]) == []
        policy = AdmissibleActionPolicy(model, tokenizer)
        with pytest.raises(ValueError, match="no admissible actions"):
            policy(td)


# -- across processes ----------------------------------------------------------------------


def test_determinism_across_processes(probe_process):
    """Same state_key / task_id / group_id in a fresh interpreter (last, so the probe has finished)."""
    env = ToyTextEnv(seed=3)
    td = env.reset()
    out, err = probe_process.communicate(timeout=120)
    assert probe_process.returncode == 0, err[-2000:]
    got = [int(x) for x in out.split()[-3:]]
    assert got == [scalar(td, "state_key"), scalar(td, "task_id"), scalar(td, "group_id")]


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
