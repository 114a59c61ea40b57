"""GeneratePolicy: free-form replies from the tiny model on the policy output contract."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import token_log_probs
from tensordict import lazy_stack
from torchrl.collectors.llm import LLMCollector
from torchrl.modules.llm import TransformersWrapper
from transformers import Qwen2ForCausalLM

from torchrl_gagpo import GAGPOLoss
from torchrl_gagpo.envs import ToyTextEnv
from torchrl_gagpo.policies import AdmissibleActionPolicy, make_tiny_tokenizer
from torchrl_gagpo.policies.generate import GeneratePolicy, make_policy
from torchrl_gagpo.policies.vllm import make_vllm_policy

MAX_NEW = 12


pytestmark = pytest.mark.usefixtures("quiet_warnings")


@pytest.fixture(scope="module")
def batch():
    """Three environments with prompts of different lengths (exercises the left padding)."""
    rows = lazy_stack([ToyTextEnv(seed=s).reset()[0] for s in range(3)])
    lengths = {len(row["history"].prompt[-1].content) for row in rows.unbind(0)}
    assert len(lengths) > 1
    return rows


def eos_bias(model, token_ids, value=12.0):
    """Make ``token_ids`` likely by adding ``value`` to their logits (generation and scoring alike)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[list(token_ids)] = value
    return model.lm_head.register_forward_hook(lambda mod, args, out: out + bias)


def rows(td):
    return list(td.unbind(0))


def test_contract(model, tokenizer, batch):
    policy = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, seed=0)
    out = policy(batch.copy())
    assert out.batch_size == batch.batch_size
    for row, src in zip(rows(out), rows(batch), strict=True):
        prompt, response, full = (row["tokens", k] for k in ("prompt", "response", "full"))
        assert torch.equal(prompt, policy.prompt_ids(src["history"].prompt))
        assert torch.equal(full, torch.cat([prompt, response]))
        assert 0 < response.numel() <= MAX_NEW
        assert not (response == tokenizer.pad_token_id).any()
        history = row["history"].full
        assert history.shape[-1] == src["history"].prompt.shape[-1] + 1
        assert list(history.role[:-1]) == list(src["history"].prompt.role)
        assert history[-1].role == "assistant"
        complete = int(response[-1]) == tokenizer.eos_token_id
        body = response[:-1] if complete else response
        assert history[-1].content == tokenizer.decode(body.tolist(), skip_special_tokens=False)
        assert bool(history[-1].is_complete) == complete
    # behaviour log-probs come from a scoring pass, never from the generate path
    assert out.get("log_probs", None) is None


def test_eos_is_kept_and_ends_the_reply(model, tokenizer, batch):
    eos = tokenizer.eos_token_id
    handle = eos_bias(model, [eos], value=8.0)
    try:
        out = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, seed=0)(batch.copy())
    finally:
        handle.remove()
    for row in rows(out):
        response = row["tokens", "response"]
        assert int(response[-1]) == eos and int((response == eos).sum()) == 1
        assert not (response == tokenizer.pad_token_id).any()
        assert bool(row["history"].full[-1].is_complete)
        assert "<|im_end|>" not in row["history"].full[-1].content


def test_role_tokens_blocked(model, tokenizer, batch):
    """A model that loves <|im_start|> and pad never emits them when blocked; pad stays blocked always."""
    im_start, pad = tokenizer.convert_tokens_to_ids("<|im_start|>"), tokenizer.pad_token_id
    assert GeneratePolicy(model, tokenizer).blocked_ids == sorted([im_start, pad])
    handle = eos_bias(model, [im_start, pad], value=10.0)
    try:
        blocked = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, seed=0)(batch.copy())
        open_ = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, seed=0, block_role_tokens=False)
        open_ = open_(batch.copy())
    finally:
        handle.remove()
    for row in rows(blocked):
        assert not torch.isin(row["tokens", "response"], torch.tensor([im_start, pad])).any()
    responses = [row["tokens", "response"] for row in rows(open_)]
    assert any((r == im_start).any() for r in responses)
    assert not any((r == pad).any() for r in responses)


def test_sampled_distribution_is_the_scored_one(model, tokenizer, batch):
    """Left-padded batched sampling uses the logits of an unpadded scoring pass; the blocked mass is small."""
    policy = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, seed=0)
    prompts = [policy.prompt_ids(row["history"].prompt) for row in rows(batch)]
    responses, logits = policy.generate_tokens(prompts, return_logits=True)
    for prompt, response, raw in zip(prompts, responses, logits, strict=True):
        assert raw.shape == (response.numel(), model.config.vocab_size)
        sampled = torch.log_softmax(raw, -1).gather(-1, response[:, None]).squeeze(-1)
        with torch.no_grad():
            scored = token_log_probs(model, torch.cat([prompt, response]))[prompt.numel() :]
        torch.testing.assert_close(sampled, scored, atol=1e-5, rtol=0)
        # measured trade-off of blocking pad + <|im_start|> on the random tiny model: ~2/512 per token
        mass = policy.blocked_mass(raw)
        assert mass.shape == (response.numel(),)
        assert 0 < float(mass.max()) < 0.01


def test_env_accepts_the_reply(model, tokenizer):
    env = ToyTextEnv(seed=0, invalid_action_penalty=0.1)
    policy = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, seed=0)
    td = env.step(policy(env.reset()))
    nxt = td["next"]
    # a random model's reply is (almost surely) not a valid <action>: flagged and penalised
    assert bool(nxt["invalid_action"].all())
    torch.testing.assert_close(nxt["reward"], torch.full((1, 1), -0.1))
    assert not bool(nxt["done"].any())
    assert nxt["history"].prompt[0, -1].role == "user"


def test_runs_in_llm_collector(model, tokenizer):
    env = ToyTextEnv(seed=0, max_steps=2)
    policy = GeneratePolicy(model, tokenizer, max_new_tokens=4, seed=0)
    collector = LLMCollector(env, policy=policy, dialog_turns_per_batch=1, yield_completed_trajectories=True)
    traj = next(iter(collector))
    collector.shutdown()
    assert traj.batch_size == (2,)
    assert traj["next", "done"].view(-1).tolist() == [False, True]
    for step in traj.unbind(0):
        tokens = step["tokens"]
        assert torch.equal(tokens["full"], torch.cat([tokens["prompt"], tokens["response"]]))


def test_seeded_sampling_is_reproducible(model, tokenizer, batch):
    state = torch.get_rng_state()
    a = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, seed=7)(batch.copy())
    generator = torch.Generator().manual_seed(7)
    b = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, generator=generator)(batch.copy())
    c = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, seed=8)(batch.copy())
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    full = {name: [r["tokens", "full"] for r in rows(td)] for name, td in (("a", a), ("b", b), ("c", c))}
    assert all(torch.equal(x, y) for x, y in zip(full["a"], full["b"], strict=True))
    same = [x.shape == y.shape and torch.equal(x, y) for x, y in zip(full["a"], full["c"], strict=True)]
    assert not all(same)
    replies = [[r["history"].full[-1].content for r in rows(td)] for td in (a, b)]
    assert replies[0] == replies[1]


def test_greedy_is_deterministic(model, tokenizer, batch):
    policy = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, greedy=True, temperature=0.5)
    first = [r["tokens", "response"] for r in rows(policy(batch.copy()))]
    torch.manual_seed(123)
    second = [r["tokens", "response"] for r in rows(policy(batch.copy()))]
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_generation_config_is_fixed(tokenizer, model):
    """A fresh model has top_k unset (transformers would sample with top-k 50); the policy disables it."""
    fresh = Qwen2ForCausalLM(model.config).eval()
    assert fresh.generation_config.top_k is None
    GeneratePolicy(fresh, tokenizer)
    gc = fresh.generation_config
    assert (gc.top_k, gc.top_p, gc.temperature) == (0, 1.0, 1.0)
    assert (gc.pad_token_id, gc.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_bad_arguments(model, tokenizer):
    with pytest.raises(ValueError, match="temperature"):
        GeneratePolicy(model, tokenizer, temperature=0.7)
    # evaluation may use any temperature
    GeneratePolicy(model, tokenizer, temperature=0.7, for_training=False)
    with pytest.raises(ValueError, match="temperature"):
        GeneratePolicy(model, tokenizer, temperature=0.0, for_training=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GeneratePolicy(model, tokenizer, max_new_tokens=0)
    with pytest.raises(ValueError, match="generator or seed"):
        GeneratePolicy(model, tokenizer, seed=0, generator=torch.Generator())
    same = make_tiny_tokenizer()
    same.pad_token = same.eos_token
    with pytest.raises(ValueError, match="pad"):
        GeneratePolicy(model, same)
    policy = GeneratePolicy(model, tokenizer)
    with pytest.raises(ValueError, match="1-D batch"):
        policy(lazy_stack([ToyTextEnv(seed=0).reset()]))


def test_output_scores_with_gagpo_loss(model, tokenizer, batch):
    """The stored tokens score with a tokens-mode actor; at theta == theta_old the ratio is exactly 1."""
    out = GeneratePolicy(model, tokenizer, max_new_tokens=MAX_NEW, seed=0)(batch.copy())
    actor = TransformersWrapper(
        model,
        tokenizer=tokenizer,
        input_mode="tokens",
        generate=False,
        return_log_probs=True,
        pad_output=False,
    )
    with torch.no_grad():
        scored = actor(out.select("tokens").copy())
    lp = scored.get(("log_probs", "full"), as_list=True)
    for row, full_lp in zip(rows(out), lp, strict=True):
        assert full_lp.shape == row["tokens", "full"].shape
    out["log_probs"] = scored["log_probs"]
    out["advantage"] = torch.tensor([[1.0], [-1.0], [0.5]])
    result = GAGPOLoss(actor)(out)
    assert float(result.ESS) == pytest.approx(1.0, abs=1e-5)
    assert float(result.clip_fraction) == 0.0
    assert float(result.ratio_mean) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_policy_needs_vllm(tokenizer):
    with pytest.raises(ImportError, match=r"torchrl-gagpo\[vllm\]"):
        make_vllm_policy("Qwen/Qwen2.5-0.5B-Instruct", tokenizer)


def test_make_policy(model, tokenizer):
    assert isinstance(make_policy("generate", model, tokenizer, max_new_tokens=4), GeneratePolicy)
    assert isinstance(make_policy("choose", model, tokenizer), AdmissibleActionPolicy)
    with pytest.raises(ValueError, match="'generate', 'choose'"):
        make_policy("beam", model, tokenizer)


@pytest.mark.gpu
def test_cuda_generation(model, tokenizer, batch):
    """On a GPU the policy samples on the model's device and writes CPU tokens, seeded reproducibly."""
    cuda = model.to("cuda")
    a = GeneratePolicy(cuda, tokenizer, max_new_tokens=MAX_NEW, seed=3)(batch.copy())
    b = GeneratePolicy(cuda, tokenizer, max_new_tokens=MAX_NEW, seed=3)(batch.copy())
    for x, y in zip(rows(a), rows(b), strict=True):
        assert x["tokens", "full"].device.type == "cpu"
        assert torch.equal(x["tokens", "full"], y["tokens", "full"])
        assert torch.equal(x["tokens", "full"], torch.cat([x["tokens", "prompt"], x["tokens", "response"]]))
