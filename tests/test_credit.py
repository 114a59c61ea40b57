"""The credit-assignment chain: its model, exact finite-horizon values and advantages,
the text environment, the ``credit`` factory and the accuracy benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import step, tagged
from torchrl.envs.utils import check_env_specs

from torchrl_gagpo.envs.credit import (
    CreditGame,
    CreditTask,
    CreditTextEnv,
    exact_advantages,
    exact_q_values,
    exact_values,
    make_credit_tasks,
    policy_matrix,
    sample_episodes,
    skewed_policy,
)
from torchrl_gagpo.training.config import TrainConfig, parse_config
from torchrl_gagpo.training.envs import make_env

ROOT = Path(__file__).resolve().parents[1]
FORWARD, BACK = 0, 1


def returns_to_go(rewards: list[float], gamma: float) -> list[float]:
    out, g = [], 0.0
    for r in reversed(rewards):
        g = r + gamma * g
        out.append(g)
    return out[::-1]


# -- the model ---------------------------------------------------------------------------
class TestModel:
    def test_transitions(self):
        task = CreditTask(n_states=4, n_distractors=2, slip=0.4)
        # the executed action is the chosen one w.p. 0.6 + 0.4/4, each other one w.p. 0.1
        assert np.allclose(task.transitions(1, "go forward"), [(0.1, 0), (0.2, 1), (0.7, 2)])
        assert np.allclose(task.transitions(0, BACK), [(0.9, 0), (0.1, 1)])  # back at the start stays
        assert np.allclose(task.transitions(2, "look around"), [(0.1, 1), (0.8, 2), (0.1, 3)])
        P = task.transition_matrix()
        assert np.allclose(P[:-1].sum(-1), 1.0) and not P[task.goal].any()
        assert task.reward(2, FORWARD, 3) == 1.0 and task.reward(1, FORWARD, 2) == 0.0
        assert task.is_terminal(3) and not task.is_terminal(2)

    def test_engine_follows_the_model(self):
        task = CreditTask(n_states=3, n_distractors=1, slip=0.3)
        counts = {0: 0, 1: 0, 2: 0}
        for seed in range(3000):
            game = CreditGame(task, seed=seed)
            game.reset()
            game.step("go forward")
            counts[game.step("look around").info["position"]] += 1
        # two steps from room 0: forward then look around (both may slip), exact law from the model
        law = {s: 0.0 for s in counts}
        for p1, s1 in task.transitions(0, "go forward"):
            for p2, s2 in task.transitions(s1, "look around") if s1 != task.goal else [(1.0, s1)]:
                law[s2] += p1 * p2
        for s, n in counts.items():
            assert abs(n / 3000 - law[s]) < 4 * np.sqrt(law[s] * (1 - law[s]) / 3000) + 1e-9, (s, n, law)

    def test_unknown_commands_change_nothing(self):
        game = CreditGame(CreditTask(n_states=3, slip=0.5), seed=0)
        game.reset()
        for _ in range(20):
            assert game.step("fly").info["position"] == 0
        assert game.turn == 20

    def test_revisit_sets_how_often_names_repeat(self):
        task = CreditTask(n_states=3, n_distractors=1, horizon=40)
        always = [e.names for e in sample_episodes(task, [[0, 0, 1]] * 3, 2)]  # stays in room 0
        assert {n for names in always for n in names} == {"the hall"}
        wait = [[0, 0, 1]] * 3
        clocked = sample_episodes(CreditTask(n_states=3, n_distractors=1, horizon=40, revisit=0.0), wait, 2)
        assert clocked[0].names == [f"the hall, turn {t}" for t in range(40)] == clocked[1].names
        half = sample_episodes(CreditTask(n_states=3, n_distractors=1, horizon=40, revisit=0.5), wait, 50)
        share = np.mean([name == "the hall" for e in half for name in e.names])
        assert 0.4 < share < 0.6

    def test_noise_changes_the_texts_not_the_play(self):
        clean, noisy = CreditTask(slip=0.2), CreditTask(slip=0.2, noise=0.8)
        pi = skewed_policy(clean, 0.4)
        a, b = sample_episodes(clean, pi, 20, seed=3), sample_episodes(noisy, pi, 20, seed=3)
        assert [e.rooms for e in a] == [e.rooms for e in b]
        assert [e.actions for e in a] == [e.actions for e in b]
        names = [n for e in b for n in e.names]
        for room, name in zip([r for e in b for r in e.rooms], names, strict=True):
            assert name.startswith(f"{noisy.state_name(room)}. {noisy.describe(room)}")
        plain = [n.endswith(noisy.describe(r)) for e in b for n, r in zip(e.names, e.rooms, strict=True)]
        with_clause = 1 - np.mean(plain)
        assert 0.7 < with_clause < 0.9  # noise 0.8
        assert len(set(names)) > 0.6 * len(names)  # exact text matching mostly fails
        np.testing.assert_array_equal(exact_values(clean, pi, 0.9), exact_values(noisy, pi, 0.9))
        assert len({noisy.describe(s) for s in range(noisy.n_states)}) == noisy.n_states

    def test_tasks_differ_only_by_names(self):
        tasks = make_credit_tasks(4, seed=1, n_states=6, slip=0.1)
        assert len({t.rooms for t in tasks}) == 4 and all(t.slip == 0.1 for t in tasks)
        assert tasks == make_credit_tasks(4, seed=1, n_states=6, slip=0.1)


# -- exact values and advantages -----------------------------------------------------------
class TestExact:
    def test_hand_computed_chain(self):
        # Rooms 0, 1, 2 (goal), actions forward/back, no slip, gamma = 0.5, horizon 3,
        # pi = (1/2, 1/2). V[t, s] = value with t turns used; V[3, .] = 0 (truncation).
        #   t=2: V(1) = .5*1 + .5*g*V[3,0] = .5          V(0) = .5*g*V[3,1] + .5*g*V[3,0] = 0
        #   t=1: V(1) = .5*1 + .5*g*V[2,0] = .5          V(0) = .5*g*.5 + .5*g*0 = .125
        #   t=0: V(1) = .5 + .5*g*.125 = .53125          V(0) = .5*g*.5 + .5*g*.125 = .15625
        # A[0, 0, fwd] = g*V[1,1] - V[0,0] = .25 - .15625 = .09375, A[0, 0, back] = .0625 - .15625.
        # At t=2 room 0 cannot reach the goal any more: its advantages are 0 (time-dependence).
        task = CreditTask(n_states=3, n_distractors=0, horizon=3)
        pi = skewed_policy(task, 0.5)
        V = exact_values(task, pi, 0.5)
        assert V.tolist() == [[0.15625, 0.53125, 0.0], [0.125, 0.5, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]
        A = exact_advantages(task, pi, 0.5)
        assert A[0, 0].tolist() == [0.09375, -0.09375]
        assert A[2, 0].tolist() == [0.0, 0.0] and A[2, 1].tolist() == [0.5, -0.5]

    def test_hand_computed_chain_with_slip(self):
        # Same chain, slip 0.5, always forward: forward is executed w.p. .5 + .5/2 = .75, back .25.
        #   t=2: V(1) = .75          V(0) = 0
        #   t=1: V(1) = .75          V(0) = .75*g*.75 = .28125
        #   t=0: V(0) = .75*g*.75 + .25*g*.28125 = .31640625   V(1) = .75 + .25*g*.28125 = .78515625
        # Q[0, 0, back] = .25*g*V[1,1] + .75*g*V[1,0] = .09375 + .10546875 = .19921875
        task = CreditTask(n_states=3, n_distractors=0, horizon=3, slip=0.5)
        Q, V = exact_q_values(task, lambda s: [1.0, 0.0], 0.5)
        assert V[:, 0].tolist() == [0.31640625, 0.28125, 0.0, 0.0] and V[:3, 1].tolist() == [0.78515625, 0.75, 0.75]
        assert Q[0, 0].tolist() == [0.31640625, 0.19921875]

    def test_values_depend_on_the_turns_left(self):
        task = CreditTask(n_states=5, n_distractors=2, horizon=10, slip=0.1)
        pi = skewed_policy(task, 0.4)
        short, longer = exact_values(task, pi, 0.9), exact_values(task, pi, 0.9, max_steps=14)
        assert np.allclose(longer[4:], short)  # only the turns left matter
        assert (np.diff(short[:, 0]) <= 1e-12).all() and short[0, 0] > short[6, 0] > 0 == short[7, 0]

    @pytest.mark.parametrize("seed", range(6))
    def test_advantages_have_zero_mean_under_the_policy(self, seed):
        rng = np.random.default_rng(seed)
        n_states = int(rng.integers(2, 9))
        task = CreditTask(n_states=n_states, n_distractors=int(rng.integers(0, 5)),
                          horizon=int(rng.integers(n_states, 31)), slip=float(rng.uniform(0, 0.5)),
                          revisit=float(rng.uniform()))  # fmt: skip
        pi = rng.dirichlet(np.ones(task.n_actions), size=n_states)
        A = exact_advantages(task, pi, float(rng.uniform(0.5, 1.0)))
        assert A.shape == (task.horizon, n_states, task.n_actions)
        assert np.abs((pi[None] * A).sum(-1)).max() < 1e-12
        assert not A[:, task.goal].any()

    def test_monte_carlo_returns_match_the_exact_values(self):
        task = CreditTask(n_states=4, n_distractors=2, horizon=8, slip=0.2, revisit=0.5)
        pi, gamma = skewed_policy(task, 0.4), 0.9
        Q, V = exact_q_values(task, pi, gamma)
        first, first_action, mid = [], [], []
        for ep in sample_episodes(task, pi, 4000, seed=7):
            g = returns_to_go(ep.rewards, gamma)
            first.append(g[0])
            first_action.append(ep.actions[0])
            mid += [g[t] for t in ep.turns if t == 3 and ep.rooms[t] == 1]
        first, first_action = np.array(first), np.array(first_action)

        def close(samples, exact):
            samples = np.asarray(samples)
            tolerance = 4 * samples.std() / np.sqrt(samples.size) + 1e-9
            assert abs(samples.mean() - exact) < tolerance, (samples.mean(), exact)

        close(first, V[0, 0])
        close(mid, V[3, 1])
        for a in range(task.n_actions):
            close(first[first_action == a], Q[0, 0, a])


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: CreditTask(n_states=1), "n_states must be an int in [2, 32]"),
        (lambda: CreditTask(n_states=40), "n_states must be an int in [2, 32]"),
        (lambda: CreditTask(n_distractors=9), "n_distractors must be an int in [0, 8]"),
        (lambda: CreditTask(n_states=6, horizon=4), "horizon 4 is too short"),
        (lambda: CreditTask(horizon=0), "horizon must be an int >= 1"),
        (lambda: CreditTask(slip=1.0), "slip must lie in [0, 1)"),
        (lambda: CreditTask(revisit=1.5), "revisit must lie in [0, 1]"),
        (lambda: CreditTask(n_states=2, rooms=("a", "a")), "rooms must be 2 distinct names"),
        (lambda: CreditTask(n_states=3).transitions(2, 0), "state must be an int in [0, 1]"),
        (lambda: CreditTask().transitions(0, "fly"), "unknown action 'fly'"),
        (lambda: CreditTask().transitions(0, 7), "action must be an int in [0, 3]"),
        (lambda: policy_matrix(CreditTask(), np.ones((5, 3)) / 3), "policy must have shape (n_states, n_act"),
        (lambda: policy_matrix(CreditTask(), lambda s: [1.0]), "must return 4 probabilities"),
        (lambda: policy_matrix(CreditTask(), np.full((5, 4), 0.3)), "sum to 1"),
        (lambda: policy_matrix(CreditTask(), [[1.5, -0.5, 0, 0]] * 5), "non-negative"),
        (lambda: exact_values(CreditTask(), np.full((5, 4), 0.25), 1.5), "gamma must lie in [0, 1]"),
        (lambda: exact_values(CreditTask(), np.full((5, 4), 0.25), 0.9, 0), "max_steps must be an int >= 1"),
        (lambda: skewed_policy(CreditTask(), 1.2), "p_forward must lie in [0, 1]"),
        (lambda: sample_episodes(CreditTask(), np.full((5, 4), 0.25), -1), "n must be an int >= 0"),
        (lambda: CreditTextEnv(n_states=5, max_steps=3), "horizon 3 is too short"),
        (lambda: CreditTextEnv(num_tasks=0), "num_tasks must be an int >= 1"),
        (lambda: CreditTask(noise=1.5), "noise must lie in [0, 1]"),
    ],
)
def test_bad_inputs_raise(build, message):
    with pytest.raises(ValueError) as err:
        build()
    assert message in str(err.value)


# -- the text environment ------------------------------------------------------------------
class TestEnv:
    def test_check_env_specs(self):
        check_env_specs(CreditTextEnv(seed=0))
        check_env_specs(CreditTextEnv(seed=1, group_size=3, slip=0.2, revisit=0.5, n_distractors=4))

    def test_play_to_the_goal(self):
        env = CreditTextEnv(n_states=3, n_distractors=1, max_steps=5, success_reward=2.0, seed=0)
        td = env.reset()
        task = env.tasks[td["task_id"].item()]
        assert td["observation"][0] == task.state_name(0)
        assert list(td["admissible_actions"][0]) == ["go forward", "go back", "look around"]
        stay = step(env, td, tagged("look around"))
        assert stay["observation"][0] == task.state_name(0)
        assert stay["state_key"].item() == td["state_key"].item()
        mid = step(env, stay, tagged("go forward"))
        last = step(env, mid, tagged("go forward"))
        assert mid["observation"][0] == task.state_name(1) and mid["reward"].item() == 0.0
        assert last["observation"][0] == task.state_name(2) and last["reward"].item() == 2.0
        assert last["won"].item() and last["terminated"].item() and not last["truncated"].item()
        assert env.demonstration(0) == ["go forward"] * 2

    def test_clocked_states_differ_within_an_episode(self):
        env = CreditTextEnv(n_states=3, revisit=0.0, seed=0)
        td = env.reset()
        nxt = step(env, td, tagged("look around"))
        assert nxt["observation"][0].endswith("turn 1") and nxt["state_key"].item() != td["state_key"].item()

    def test_factory(self):
        cfg = parse_config(TrainConfig, ["--env", "credit", "--max_steps", "7", "--group_size", "3"])
        env = make_env(cfg, "train", seed=0)
        assert isinstance(env, CreditTextEnv) and env.group_size == 3
        assert env.max_steps == 7 and {t.horizon for t in env.tasks} == {7}
        noisy = make_env(parse_config(TrainConfig, ["--env", "credit_noisy"]), "train", seed=0)
        assert {t.noise for t in noisy.tasks} == {0.8} and "You see" in noisy.reset()["observation"][0]


@pytest.mark.slow
def test_trains_for_one_iteration(tmp_path):
    cmd = [sys.executable, "-m", "torchrl_gagpo.training", "--env", "credit", "--out", str(tmp_path / "run"),
           "--iterations", "1", "--max_steps", "6", "--num_workers", "1", "--groups_per_iter", "2",
           "--group_size", "2", "--eval_episodes", "2", "--minibatch_size", "8", "--logger", "none",
           "--progress", "false"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["iterations"] == 1 and 0 < summary["env_steps"] <= 24


@pytest.mark.slow
def test_accuracy_benchmark_quick(tmp_path):
    rows_path, plot_path = tmp_path / "rows.json", tmp_path / "acc.png"
    cmd = [sys.executable, "benchmarks/advantage_accuracy.py", "--quick", "--json", str(rows_path),
           "--plot", str(plot_path)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(rows_path.read_text())
    assert plot_path.is_file() and rows
    for row in rows:
        assert {"estimator", "lmbda", "group_size", "corr", "mse", "policy"} <= set(row)
        assert (row["lmbda"] is None) == (row["estimator"] in ("gigpo", "grpo", "rloo"))
    assert {r["group_size"] for r in rows} == {2, 4, 8, 16}
    assert {r["policy"] for r in rows} == {"uniform", "partly_trained"}
    gagpo = {r["lmbda"] for r in rows if r["estimator"] == "gagpo"}
    assert gagpo == {0.0, 0.5, 0.8, 0.95, 1.0}
    # the exact-baseline TD error of a deterministic chain is the exact advantage
    assert all(r["corr"] > 0.999 for r in rows if r["estimator"] == "oracle_gae" and r["lmbda"] == 0.0)


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
