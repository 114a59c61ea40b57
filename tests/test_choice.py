"""The choose policy's true ratio: candidate scoring, its data, the learner's scoring pass and the loss."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import make_actions, token_log_probs
from tensordict import lazy_stack
from torchrl.modules.llm import TransformersWrapper

from torchrl_gagpo import GAGPOLoss
from torchrl_gagpo.choice import (
    CHOICE_KEYS,
    candidate_token_log_probs,
    choice_log_probs,
    read_choices,
    score_choices,
)
from torchrl_gagpo.envs import ToyTextEnv
from torchrl_gagpo.policies import AdmissibleActionPolicy, make_tiny_model

ADV = [1.0, -0.5, 2.0, -1.5, 0.3, 0.7]


def scoring_actor(model, tokenizer):
    return TransformersWrapper(
        model, tokenizer=tokenizer, input_mode="tokens", generate=False, return_log_probs=True,
        pad_output=False,
    )


def choose_rows(model, tokenizer, *, score="mean", temperature=1.0, n=6, seed=0):
    """``n`` turns of the choose policy on toy corridors with 2 to 6 admissible actions, with advantages."""
    envs = [ToyTextEnv(distractors=(i + 2) % 5, seed=seed + i, num_tasks=3) for i in range(n)]
    starts = lazy_stack([env.reset()[0] for env in envs])
    policy = AdmissibleActionPolicy(model, tokenizer, score=score, temperature=temperature,
                                    generator=torch.Generator().manual_seed(seed))
    rows = list(policy(starts).unbind(0))
    for row, a in zip(rows, ADV, strict=False):
        row["advantage"] = torch.tensor([a])
    return rows


def reference_log_mu(model, row) -> torch.Tensor:
    """log mu(chosen | s) of one stored turn by a plain loop: one full forward per candidate."""
    prompt = row["tokens", "prompt"]
    scores = []
    for ids, n in zip(row["choice", "tokens"], row["choice", "lengths"].tolist(), strict=True):
        lp = token_log_probs(model, torch.cat([prompt, ids[:n]]))[-n:]
        scores.append(lp.mean() if row["choice", "score"] == "mean" else lp.sum())
    log_mu = torch.log_softmax(torch.stack(scores) / row["choice", "temperature"].item(), 0)
    return log_mu[int(row["choice", "index"])]


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


class TestCandidateScoring:
    def test_cache_path_equals_full_forward_loop(self, model):
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, 800, (n,), generator=g) for n in (5, 12, 1)]
        cands = [torch.randint(3, 800, (k, w), generator=g) for k, w in ((3, 4), (2, 6), (4, 2))]
        lengths = [torch.tensor([4, 1, 3]), torch.tensor([6, 2]), torch.tensor([2, 2, 1, 1])]
        with torch.no_grad():
            cached, n, row = candidate_token_log_probs(model, prompts, cands, lengths)
            full, _, _ = candidate_token_log_probs(model, prompts, cands, lengths, use_cache=False)
        assert row.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2] and n.tolist() == [4, 1, 3, 6, 2, 2, 2, 1, 1]
        expected = torch.zeros_like(cached)
        k = 0
        with torch.no_grad():
            for p, c, lens in zip(prompts, cands, lengths, strict=True):
                for ids, m in zip(c, lens.tolist(), strict=True):
                    expected[k, :m] = token_log_probs(model, torch.cat([p, ids[:m]]))[-m:]
                    k += 1
        torch.testing.assert_close(cached, expected, atol=2e-6, rtol=0)
        torch.testing.assert_close(full, expected, atol=2e-6, rtol=0)

    def test_gradients_of_cache_path_equal_full_forward(self, tokenizer):
        model = make_tiny_model(tokenizer, seed=2).double()
        prompts = [torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10])]
        cands = [torch.tensor([[11, 12, 13], [14, 15, 0]]), torch.tensor([[16, 17, 18]])]
        lengths = [torch.tensor([3, 2]), torch.tensor([3])]
        weights = torch.randn(3, 3, dtype=torch.float64)
        a = grads(model, (candidate_token_log_probs(model, prompts, cands, lengths)[0] * weights).sum())
        b = grads(model, (candidate_token_log_probs(model, prompts, cands, lengths, use_cache=False)[0]
                          * weights).sum())
        # float64 model: the paths agree to float32 rounding (the shared cache's backward sums otherwise)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)

    def test_no_cache_falls_back_to_full_forwards(self, model):
        """Gradient checkpointing in train mode disables the cache: the full path runs instead."""
        prompts, cands = [torch.tensor([5, 6, 7])], [torch.tensor([[8, 9], [10, 0]])]
        lengths = [torch.tensor([2, 1])]
        with torch.no_grad():
            expected, _, _ = candidate_token_log_probs(model, prompts, cands, lengths, use_cache=False)
        enable = getattr(model, "activation_checkpointing_enable", None)  # the transformers 5 name
        (enable or model.gradient_checkpointing_enable)()
        model.train()
        got, _, _ = candidate_token_log_probs(model, prompts, cands, lengths)
        got.sum().backward()
        torch.testing.assert_close(got.detach(), expected, atol=1e-6, rtol=0)

    def test_bad_input(self, model):
        p, c = [torch.tensor([5, 6])], [torch.tensor([[7, 8]])]
        with pytest.raises(ValueError, match="one prompt"):
            candidate_token_log_probs(model, p, c, [])
        with pytest.raises(ValueError, match="length between 1"):
            candidate_token_log_probs(model, p, c, [torch.tensor([3])])
        with pytest.raises(ValueError, match="non-empty prompt"):
            candidate_token_log_probs(model, [torch.tensor([], dtype=torch.long)], c, [torch.tensor([2])])


class TestPolicyData:
    @pytest.mark.parametrize("score", ["mean", "sum"])
    def test_stored_log_prob_is_the_candidate_softmax(self, model, tokenizer, score):
        rows = choose_rows(model, tokenizer, score=score, temperature=0.7)
        for row in rows:
            k = len(row["admissible_actions"])
            assert row["choice", "tokens"].shape[0] == k and row["choice", "lengths"].shape == (k,)
            assert row["choice", "score"] == score
            assert row["choice", "temperature"].item() == pytest.approx(0.7)
            chosen = int(row["choice", "index"])
            n = int(row["choice", "lengths"][chosen])
            assert torch.equal(row["choice", "tokens"][chosen, :n], row["tokens", "response"])
            with torch.no_grad():
                expected = reference_log_mu(model, row).item()
                assert row["choice", "log_prob"].item() == pytest.approx(expected, abs=1e-5)

    def test_rows_scored_together_equal_rows_scored_alone(self, model, tokenizer):
        rows = choose_rows(model, tokenizer)
        together = lazy_stack(rows)
        with torch.no_grad():
            batched = choice_log_probs(model, read_choices(together))["chosen"]
            alone = torch.cat([choice_log_probs(model, read_choices(lazy_stack([r])))["chosen"]
                               for r in rows])
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)

    def test_no_deprecated_cache_keyword(self, model, tokenizer):
        """Issue 15 item 10: the cache is passed by the keyword the model's forward declares."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            choose_rows(model, tokenizer, n=2)
        assert not [w for w in caught if "past_key_values" in str(w.message)]

    def test_sampling_follows_the_stored_distribution(self, model, tokenizer):
        env = ToyTextEnv(distractors=2, seed=0)
        start = lazy_stack([env.reset()[0]] * 400)
        policy = AdmissibleActionPolicy(model, tokenizer, score="mean", temperature=0.05,
                                        generator=torch.Generator().manual_seed(1))
        out = policy(start)
        counts = torch.bincount(out["choice", "index"].reshape(-1), minlength=4).float() / 400
        with torch.no_grad():
            mu = choice_log_probs(model, read_choices(out[:1]))["all"].exp()
        assert (counts - mu).abs().max() < 0.08  # 400 draws: a few standard errors


class TestLearnerScoringAndLoss:
    def test_ratio_is_one_at_the_first_minibatch(self, model, tokenizer):
        rows = choose_rows(model, tokenizer)
        for row in rows:  # the rollout's value is replaced by the learner's
            row[CHOICE_KEYS["log_prob"]] = torch.tensor([123.0])
        score_choices(model, rows, chunk_size=4)  # chunks of another composition than the minibatch
        loss = GAGPOLoss(scoring_actor(model, tokenizer))
        out = loss(lazy_stack(rows[::-1]))
        assert loss.ratio_mode(lazy_stack(rows)) == "choice"
        assert out.ratio_mean.item() == pytest.approx(1.0, abs=1e-6)
        assert out.clip_fraction.item() == 0.0 and out.ESS.item() == pytest.approx(1.0, abs=1e-6)
        assert out.loss_objective.item() == pytest.approx(-sum(ADV) / len(ADV), abs=1e-5)

    @pytest.mark.parametrize("score, aggregation", [("mean", "action_mean"), ("sum", "action_mean"),
                                                    ("mean", "token_mean")])
    def test_gradient_is_the_exact_policy_gradient(self, tokenizer, score, aggregation):
        """At theta = theta_old the surrogate's gradient is that of sum A log mu_theta(a|s) (the softmax)."""
        model = make_tiny_model(tokenizer, seed=3)
        rows = choose_rows(model, tokenizer, score=score, temperature=0.8, n=4)
        score_choices(model, rows)
        loss = GAGPOLoss(scoring_actor(model, tokenizer), ratio="choice", aggregation=aggregation)
        g_loss = grads(model, loss(lazy_stack(rows)).loss_objective)
        adv = torch.tensor(ADV[:4])
        log_mu = torch.stack([reference_log_mu(model, row) for row in rows])
        n = torch.stack([row["choice", "lengths"][int(row["choice", "index"])] for row in rows]).float()
        weights = torch.ones_like(adv) / len(adv) if aggregation == "action_mean" else n / n.sum()
        g_ref = grads(model, -(weights * adv * log_mu).sum())
        torch.testing.assert_close(g_loss, g_ref, atol=1e-5, rtol=0)
        assert g_ref.abs().max() > 1e-3  # not a vacuous comparison

    def test_token_ratio_gradient_is_not_the_policy_gradient(self, tokenizer):
        """What the fix is for: the token ratio drops the candidates' normaliser."""
        model = make_tiny_model(tokenizer, seed=3)
        rows = choose_rows(model, tokenizer, n=4)
        score_choices(model, rows)
        choice = grads(model, GAGPOLoss(scoring_actor(model, tokenizer))(lazy_stack(rows)).loss_objective)
        plain = lazy_stack([row.exclude("choice") for row in rows])  # the same turns without the candidates
        token_loss = GAGPOLoss(scoring_actor(model, tokenizer), ratio="action_mean")
        token = grads(model, token_loss(plain).loss_objective)
        assert torch.nn.functional.cosine_similarity(choice, token, dim=0) < 0.999

    def test_entropy_and_kl_terms(self, model, tokenizer):
        rows = choose_rows(model, tokenizer)
        score_choices(model, rows)
        for row in rows:  # reference = the current model: KL 0
            full = row["tokens", "full"]
            with torch.no_grad():
                row["ref_log_probs"] = {"full": token_log_probs(model, full)}
        loss = GAGPOLoss(scoring_actor(model, tokenizer), kl_coef=0.1, entropy_coef=0.01)
        out = loss(lazy_stack(rows))
        assert out.kl_to_ref.item() == pytest.approx(0.0, abs=1e-6)
        k = torch.tensor([len(r["admissible_actions"]) for r in rows], dtype=torch.float)
        assert 0 < out.entropy.item() <= math.log(k.max())
        (out.loss_objective + out.loss_kl + out.loss_entropy).backward()

    def test_pairing_cannot_be_wrong(self, model, tokenizer):
        rows = choose_rows(model, tokenizer)
        score_choices(model, rows)
        batch = lazy_stack(rows)
        for ratio in ("action_mean", "action_sum", "token"):
            with pytest.raises(ValueError, match="AdmissibleActionPolicy"):
                GAGPOLoss(scoring_actor(model, tokenizer), ratio=ratio)(batch)
        plain = make_actions(model, ADV)
        with pytest.raises(ValueError, match="ratio='choice' needs"):
            GAGPOLoss(scoring_actor(model, tokenizer), ratio="choice")(plain)
        assert GAGPOLoss(scoring_actor(model, tokenizer)).ratio_mode(plain) == "action_mean"
        # the score mode comes from the data: a "sum" policy's turns are scored by the sum
        summed = choose_rows(model, tokenizer, score="sum")
        score_choices(model, summed)
        with torch.no_grad():
            expected = torch.stack([reference_log_mu(model, r) for r in summed])
            got = choice_log_probs(model, read_choices(lazy_stack(summed)))["chosen"]
        torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=0)

    def test_overflow_is_clamped(self, model, tokenizer):
        rows = choose_rows(model, tokenizer, n=4)
        for row in rows:  # behaviour log-probs of -200 per token
            row[CHOICE_KEYS["log_prob"]] = torch.tensor([-200.0 * row["tokens", "response"].numel()])
            row["ref_log_probs"] = {"full": torch.full((row["tokens", "full"].numel(),), -200.0)}
        out = GAGPOLoss(scoring_actor(model, tokenizer), kl_coef=0.01)(lazy_stack(rows))
        assert torch.isfinite(out.loss_objective) and torch.isfinite(out.loss_kl)
        assert out.ratio_mean.item() == pytest.approx(math.exp(20.0), rel=1e-4)
        g = grads(model, out.loss_objective + out.loss_kl)
        assert torch.isfinite(g).all()  # clamped log-ratios: zero, never NaN (was NaN before the clamp)

    def test_missing_behaviour_log_prob(self, model, tokenizer):
        rows = [row.exclude(CHOICE_KEYS["log_prob"]) for row in choose_rows(model, tokenizer)]
        with pytest.raises(ValueError, match="score_choices"):
            GAGPOLoss(scoring_actor(model, tokenizer))(lazy_stack(rows))

    def test_bad_choice_data(self, model, tokenizer):
        rows = choose_rows(model, tokenizer, n=2)
        rows[0][CHOICE_KEYS["index"]] = torch.tensor([99])
        with pytest.raises(ValueError, match="out of range"):
            choice_log_probs(model, read_choices(lazy_stack(rows)))
        rows = choose_rows(model, tokenizer, n=2)
        rows[1]["choice", "score"] = "max"
        with pytest.raises(ValueError, match="'sum' or 'mean'"):
            read_choices(lazy_stack(rows))
