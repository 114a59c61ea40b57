"""WebShop engine and WebShopEnv: scripted episodes, pagination, invalid actions, the TorchRL contract."""

from __future__ import annotations

import pytest
import torch
from helpers import force, step, tagged
from torchrl.envs.utils import check_env_specs

from torchrl_gagpo import state_digest
from torchrl_gagpo.envs.webshop import WebShopData, WebShopEngine, WebShopEnv, score_purchase, search_query
from torchrl_gagpo.envs.webshop.pages import RESULTS_PER_PAGE, page_text, state_text


@pytest.fixture(scope="module")
def data():
    return WebShopData.load()


def findable_goal(data) -> int:
    """A goal whose product the instruction's search finds on the first results page, with options."""
    engine = WebShopEngine(data)
    for index, goal in enumerate(data.goals):
        if not goal["goal_options"]:
            continue
        page = engine.reset(index)
        page = engine.step(f"search[{search_query(page.instruction)}]").page
        if goal["asin"] in [p["asin"] for p in page.results]:
            return index
    raise AssertionError("no findable goal with options in the shipped catalog")


def goal_values(goal) -> list[str]:
    options = goal["goal_options"]
    return list(options.values() if isinstance(options, dict) else options)


class TestEngine:
    def test_scripted_episode_scores_one(self, data):
        index = findable_goal(data)
        goal = data.goals[index]
        engine = WebShopEngine(data)
        start = engine.reset(index)
        assert start.kind == "start"
        assert engine.available_actions() == {"has_search_bar": True, "clickables": ["search"]}
        results = engine.step(f"search[{search_query(start.instruction)}]")
        assert results.valid and results.page.kind == "results" and results.page.page == 1
        item = engine.step(f"click[{goal['asin'].lower()}]").page
        assert item.kind == "item" and item.asin == goal["asin"]
        for value in goal_values(goal):
            step = engine.step(f"click[{value}]")
            assert step.valid, value
        chosen = step.page.selected
        description = engine.step("click[description]").page
        assert description.kind == "description" and goal["instruction_text"] in page_text(description)
        back = engine.step("click[< prev]").page
        assert back.kind == "item" and back.selected == chosen, "options survive a sub-page visit"
        done = engine.step("click[buy now]")
        assert done.done and done.page.kind == "done"
        assert done.score == pytest.approx(1.0), done.details
        assert "Your score (min 0.0, max 1.0) [SEP] 1.0" in page_text(done.page)
        with pytest.raises(RuntimeError, match="reset"):
            engine.step("click[back to search]")

    def test_pagination(self, data):
        engine = WebShopEngine(data)
        engine.reset(0)
        page1 = engine.step("search[shoes bag mug shirt lamp tea]").page
        assert page1.total > RESULTS_PER_PAGE, "a broad query fills more than one page"
        assert len(page1.results) == RESULTS_PER_PAGE
        assert engine.available_actions()["clickables"][:2] == ["back to search", "next >"]
        page2 = engine.step("click[next >]").page
        assert page2.page == 2 and "< Prev [SEP] Next >" in page_text(page2)
        assert {p["asin"] for p in page2.results}.isdisjoint({p["asin"] for p in page1.results})
        assert engine.step("click[< prev]").page == page1
        # past the last result: an empty page, as the original shows
        last = (page1.total - 1) // RESULTS_PER_PAGE + 1
        for _ in range(last):
            page = engine.step("click[next >]").page
        assert page.page == last + 1 and page.results == () and f"Total results: {page1.total}" in page_text(page)
        assert engine.step("click[back to search]").page.kind == "start"

    @pytest.mark.parametrize(
        "command",
        [
            "click[search]", "click[buy now]", "click[b000000000]", "search[]", "buy[now]", "search red mug", "",
            "x" * 10_000,
        ],
    )
    def test_invalid_commands_are_noops_on_the_start_page(self, data, command):
        engine = WebShopEngine(data)
        start = engine.reset(0)
        result = engine.step(command)
        assert not result.valid and result.page == start and not result.done and result.score == 0

    def test_search_without_a_search_bar_is_a_noop(self, data):
        engine = WebShopEngine(data)
        engine.reset(0)
        results = engine.step("search[mug]").page
        assert engine.step("search[tea]").page == results
        assert not engine.is_valid("search[tea]")

    def test_reset_checks_the_goal_index(self, data):
        with pytest.raises(IndexError, match="out of range"):
            WebShopEngine(data).reset(len(data.goals))
        with pytest.raises(RuntimeError, match="reset"):
            WebShopEngine(data).step("search[mug]")


class TestEnv:
    def test_specs_and_contract(self, data):
        env = WebShopEnv(data=data, group_size=2, seed=3)
        check_env_specs(env)
        td = env.reset()
        actions = td["admissible_actions"][0]
        assert len(actions) == 1 and actions[0].startswith("search[")
        prompt = td["history"].prompt[0, -1].content
        assert "'search[<your query>]'" in prompt and "WebShop" in prompt
        assert env.task_description(int(td["task_id"])) in prompt
        assert td["task_score"].item() == 0.0

    def test_demonstration_wins_with_reward_ten(self, data):
        env = WebShopEnv(data=data, split="train", group_size=2, seed=0)
        task = next(t for t in range(env.num_tasks) if env.demonstration(t))
        td = env.reset(force(task, 7))
        rewards = []
        for command in env.demonstration(task):
            assert command in td["admissible_actions"][0], (command, td["admissible_actions"][0])
            td = step(env, td, tagged(command))
            rewards.append(td["reward"].item())
            assert not td["invalid_action"].item()
        assert td["done"].item() and td["terminated"].item()
        score = td["task_score"].item()
        assert rewards[-1] == (10.0 if score == 1.0 else 0.0) and sum(rewards[:-1]) == 0.0
        assert td["won"].item() == (score == 1.0)

    def test_a_wrong_purchase_ends_the_episode_without_reward(self, data):
        env = WebShopEnv(data=data, seed=0)
        td = env.reset(force(0))
        goal = env.goal(0)
        td = step(env, td, tagged(td["admissible_actions"][0][0]))
        other = next(  # a product that does not fully satisfy the goal (some rivals do)
            p["asin"] for p in env.engine.page.results
            if score_purchase(p, goal, {}, data.prices[p["asin"]])["total"] < 1.0
        )
        td = step(env, td, tagged(f"click[{other.lower()}]"))
        td = step(env, td, tagged("click[buy now]"))
        score = td["task_score"].item()
        assert td["terminated"].item() and td["done"].item() and 0.0 <= score < 1.0
        assert td["reward"].item() == 0.0 and not td["won"].item()

    def test_score_reward_pays_partial_credit(self, data):
        # the same wrong purchase with reward="score": 10 x its score, still not a success
        env = WebShopEnv(data=data, seed=0, reward="score")
        td = env.reset(force(0))
        goal = env.goal(0)
        td = step(env, td, tagged(td["admissible_actions"][0][0]))
        assert td["reward"].item() == 0.0  # nothing pays before the purchase
        other = next(p["asin"] for p in env.engine.page.results
                     if 0 < score_purchase(p, goal, {}, data.prices[p["asin"]])["total"] < 1.0)
        td = step(env, td, tagged(f"click[{other.lower()}]"))
        td = step(env, td, tagged("click[buy now]"))
        score = td["task_score"].item()
        assert 0 < score < 1 and not td["won"].item()
        assert td["reward"].item() == pytest.approx(10 * score)
        # an invalid reply still costs the penalty on top
        td = step(env, env.reset(force(0)), "no tags")
        assert td["reward"].item() == pytest.approx(-0.1)

    def test_score_reward_of_a_won_episode_is_the_success_reward(self, data):
        env = WebShopEnv(data=data, group_size=2, seed=0, reward="score")
        task = next(t for t in range(env.num_tasks) if env.demonstration(t))
        td = env.reset(force(task, 7))
        for command in env.demonstration(task):
            td = step(env, td, tagged(command))
        assert td["reward"].item() == pytest.approx(10 * td["task_score"].item())
        assert td["won"].item() == (td["task_score"].item() == 1.0)

    def test_invalid_replies_get_the_penalty_and_change_nothing(self, data):
        env = WebShopEnv(data=data, seed=0)
        td = env.reset()
        key = td["state_key"].item()
        long_action = "<action>" + "y" * 10_000 + "</action>"
        for text in ["no tags", tagged("click[buy now]"), tagged("click[search]"), long_action]:
            td = step(env, td, text)
            assert td["invalid_action"].item() and td["reward"].item() == pytest.approx(-0.1)
            assert td["state_key"].item() == key and not td["done"].item()

    def test_a_malformed_reply_around_a_valid_search_acts(self, data):
        env = WebShopEnv(data=data, seed=0)
        td = env.reset()
        td = step(env, td, "<action>search[red shoes]</action><action>search[red shoes]</action>")
        assert td["invalid_action"].item() and td["admissible_actions"][0][0] == "click[back to search]"
        assert td["state_key"].item() != env.reset()["state_key"].item()  # the results page, not a self-loop

    def test_any_nonempty_search_is_valid_on_the_start_page(self, data):
        env = WebShopEnv(data=data, seed=0)
        td = step(env, env.reset(), tagged("search[something the list does not offer]"))
        assert not td["invalid_action"].item() and td["admissible_actions"][0][0] == "click[back to search]"

    def test_truncation_after_max_steps(self, data):
        env = WebShopEnv(data=data, max_steps=3, seed=0)
        td = env.reset()
        for _ in range(3):
            td = step(env, td, tagged("click[nothing]"))
        assert td["truncated"].item() and not td["terminated"].item() and td["done"].item()

    def test_state_key_ignores_the_instruction(self, data):
        env_a = WebShopEnv(data=data, seed=0)
        env_b = WebShopEnv(data=data, seed=1)
        td_a, td_b = env_a.reset(), env_b.reset()
        # the start page is the same state whatever the goal; a results page depends on the query only
        assert td_a["state_key"].item() == td_b["state_key"].item()
        a = step(env_a, td_a, tagged("search[red mug]"))
        b = step(env_b, td_b, tagged("search[red mug]"))
        assert a["state_key"].item() == b["state_key"].item()
        assert a["state_key"].item() == state_digest(state_text(env_a.engine.page))

    def test_group_members_share_the_goal(self, data):
        env = WebShopEnv(data=data, group_size=2, max_steps=1, seed=5)
        tasks, groups = [], []
        for _ in range(4):
            td = env.reset()
            tasks.append(int(td["task_id"]))
            groups.append(int(td["group_id"]))
            step(env, td, tagged("click[x]"))
        assert tasks[0] == tasks[1] and groups[0] == groups[1] and groups[1] != groups[2] and tasks[2] == tasks[3]

    def test_bad_arguments(self, data):
        with pytest.raises(ValueError, match="split"):
            WebShopEnv(data=data, split="valid")
        with pytest.raises(ValueError, match="num_goals"):
            WebShopEnv(data=data, num_goals=0)
        with pytest.raises(ValueError, match="either data"):
            WebShopEnv(data=data, data_path="/nowhere")
        with pytest.raises(ValueError, match="reward must be one of"):
            WebShopEnv(data=data, reward="dense")

    def test_collector_with_the_choose_policy(self, data, tokenizer):
        from torchrl.collectors.llm import LLMCollector

        from torchrl_gagpo.policies import AdmissibleActionPolicy, make_tiny_model

        env = WebShopEnv(data=data, group_size=2, max_steps=4, seed=0)
        generator = torch.Generator().manual_seed(0)
        policy = AdmissibleActionPolicy(make_tiny_model(tokenizer), tokenizer, generator=generator)
        collector = LLMCollector(env, policy=policy, yield_completed_trajectories=True, total_dialog_turns=8)
        trajectories = list(collector)
        collector.shutdown()
        steps = torch.cat([t.reshape(-1) for t in trajectories])
        assert steps["next", "done"].sum() == len(trajectories) >= 2
        assert not steps["next", "invalid_action"].any(), "the choose policy only picks admissible actions"
        for group in steps["group_id"].unique():
            assert steps["task_id"][steps["group_id"] == group].unique().numel() == 1, "a group shops for one goal"


def test_exported_from_the_envs_package():
    import torchrl_gagpo.envs as envs

    assert envs.WebShopEnv is WebShopEnv and "WebShopEnv" in envs.__all__
    with pytest.raises(AttributeError, match="no attribute"):
        envs.NoSuchEnv  # noqa: B018
