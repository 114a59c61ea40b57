"""Regression tests for known TorchRL 0.14 LLM bugs and the library's workarounds.

Each bug has two tests:

* a canary, ``xfail(strict=True)``, that asserts the *fixed* behaviour: it fails (xfail) while the
  bug is present in the installed torchrl / transformers, and turns XPASS, which strict mode
  reports as a failure, once an upgrade fixes it: revisit the workaround (it may be removable);
* a test that the workaround used by ``torchrl_gagpo`` gives the right answer.

See ``/work/shared/reference/torchrl-llm.md`` section 5 for the background.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict, lazy_stack
from torchrl.collectors.llm import LLMCollector
from torchrl.data.llm import History
from torchrl.modules.llm import TransformersWrapper
from torchrl.modules.llm.policies import ChatHistory
from transformers import Qwen2ForCausalLM

from torchrl_gagpo import GAGPOLoss
from torchrl_gagpo.envs import ToyTextEnv
from torchrl_gagpo.policies import configure_generation
from torchrl_gagpo.policies.choose import AdmissibleActionPolicy

pytestmark = pytest.mark.usefixtures("quiet_warnings")
#: an upstream-bug canary: asserts the fixed behaviour, so it xfails while the bug lasts and fails once fixed
CANARY = pytest.mark.xfail(strict=True, raises=AssertionError)


@pytest.fixture(scope="module")
def prompts():
    """Two environment rows (ToyTextEnv reset observations) in history mode."""
    return lazy_stack([ToyTextEnv(seed=s).reset()[0] for s in range(2)])


def generate_wrapper(model, tokenizer, max_new_tokens=8):
    """torchrl's own rollout policy: history in, sampled reply out, with generate-path log-probs."""
    return TransformersWrapper(
        model,
        tokenizer=tokenizer,
        input_mode="history",
        generate=True,
        return_log_probs=True,
        pad_output=False,
        generate_kwargs={"max_new_tokens": max_new_tokens, "do_sample": True},
    )


def scoring_wrapper(model, tokenizer, input_mode="tokens"):
    """A fresh scoring wrapper (``get_new_version`` would keep the generate wrapper's input key)."""
    return TransformersWrapper(
        model,
        tokenizer=tokenizer,
        input_mode=input_mode,
        generate=False,
        return_log_probs=True,
        pad_output=False,
    )


def direct_log_probs(model, full: torch.Tensor, n: int) -> torch.Tensor:
    """Log-probs of the last ``n`` tokens of ``full`` from a plain ``model(...)`` forward."""
    with torch.no_grad():
        logits = model(input_ids=full[None]).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, full[1:, None]).squeeze(-1)[-n:]


@CANARY(reason="torchrl 0.14: _log_probs_generate zeroes the first response log-prob")
def test_canary_generate_path_keeps_the_first_response_log_prob(model, tokenizer, prompts):
    out = generate_wrapper(model, tokenizer)(prompts.copy())
    assert all(float(lp[0]) != 0.0 for lp in out.get(("log_probs", "response"), as_list=True))


def test_generate_path_zeroes_first_response_log_prob(model, tokenizer, prompts):
    """Bug: ``TransformersWrapper(generate=True, return_log_probs=True)`` sets the first response
    token's log-prob to 0 (``_log_probs_generate`` runs ``log_probs[:, 0] = 0``, meant for a full
    sequence, on the response-only log-probs), so every turn's first-token ratio would be off by
    ``exp(-log p)`` (about e^6 on the tiny model).

    Workaround: behaviour log-probs are recomputed by a scoring pass,
    ``TransformersWrapper(input_mode="tokens", generate=False)`` over the stored ``("tokens", "full")``
    (the generate policies of this library write no log-probs at all).
    """
    out = generate_wrapper(model, tokenizer)(prompts.copy())
    gen_lp = out.get(("log_probs", "response"), as_list=True)
    responses = out.get(("tokens", "response"), as_list=True)

    with torch.no_grad():
        scored = scoring_wrapper(model, tokenizer)(out.select("tokens").copy())
    stored = out.get(("tokens", "full"), as_list=True)
    recomputed_lp = scored.get(("log_probs", "full"), as_list=True)
    for full, response, generated, full_lp in zip(stored, responses, gen_lp, recomputed_lp, strict=True):
        n = response.numel()
        recomputed = full_lp[-n:]
        assert float(recomputed[0]) < -1.0  # the true first-token log-prob (about -6 on the tiny model)
        torch.testing.assert_close(recomputed, direct_log_probs(model, full, n), atol=1e-5, rtol=0)
        # every other token agrees with the generate path: only the first one is wrong
        torch.testing.assert_close(recomputed[1:], generated[1:], atol=1e-5, rtol=0)


def finite_first_scores(model, tokenizer) -> int:
    """How many tokens ``model.generate`` may sample as its first token (finite scores)."""
    ids = torch.tensor([[1, 87, 85, 271, 201]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, output_scores=True,
                         return_dict_in_generate=True, max_new_tokens=1, pad_token_id=tokenizer.pad_token_id)
    return int(torch.isfinite(out.scores[0]).sum())


@CANARY(reason="transformers 5: an unset generation_config.top_k samples with top-k 50")
def test_canary_unset_top_k_samples_the_whole_vocabulary(model, tokenizer):
    fresh = Qwen2ForCausalLM(model.config).eval()
    assert fresh.generation_config.top_k is None
    assert finite_first_scores(fresh, tokenizer) == fresh.config.vocab_size


def test_implicit_top_k_50(model, tokenizer):
    """Bug/quirk (transformers 5 + TorchRL): with ``generation_config.top_k`` unset, sampling
    silently applies top-k 50, while torchrl scores the raw logits: the behaviour policy is not the
    scored policy.

    Workaround: :func:`torchrl_gagpo.policies.configure_generation` sets ``top_k=0, top_p=1`` (and
    temperature 1) on the generation config (``GeneratePolicy`` calls it), so sampling uses the
    full raw distribution. (``top_k=0`` cannot go through torchrl's ``generate_kwargs``: its
    validation rejects ``top_k <= 0``.)
    """
    fresh = Qwen2ForCausalLM(model.config).eval()
    assert fresh.generation_config.top_k is None
    vocab = fresh.config.vocab_size
    assert vocab > 50
    with pytest.raises(ValueError, match="top_k"):
        TransformersWrapper(fresh, tokenizer=tokenizer, input_mode="history", generate_kwargs={"top_k": 0})
    configure_generation(fresh, tokenizer)
    assert finite_first_scores(fresh, tokenizer) == vocab  # the whole vocabulary, i.e. the raw distribution


class CountingToyEnv(ToyTextEnv):
    def __init__(self, **kwargs):
        self.resets = 0
        super().__init__(**kwargs)

    def _reset(self, tensordict=None, **kwargs):
        self.resets += 1
        return super()._reset(tensordict, **kwargs)


@CANARY(reason="torchrl 0.14: LLMCollector.__init__ resets the env once (_make_carrier)")
def test_canary_collector_does_not_reset_at_construction(model, tokenizer):
    env = CountingToyEnv(group_size=2, max_steps=2, seed=0)
    policy = AdmissibleActionPolicy(model, tokenizer, generator=torch.Generator().manual_seed(0))
    collector = LLMCollector(env, policy=policy, dialog_turns_per_batch=1, yield_completed_trajectories=True)
    collector.shutdown()
    assert env.resets == 0


def test_collector_silently_resets_at_construction(model, tokenizer):
    """Bug: ``LLMCollector.__init__`` calls ``env.reset()`` once (``_make_carrier``) before any
    rollout. A grouping that counts resets (e.g. ``DataLoadingPrimer(repeats=G)``) loses one member
    of the first group to this priming reset.

    Workaround: ``TextAgentEnv`` counts *completed* episodes per group, so an unstepped reset does
    not use up a group member: the first ``group_size`` trajectories still share one ``group_id``.
    """
    env = CountingToyEnv(group_size=2, max_steps=2, seed=0)
    assert env.resets == 0
    policy = AdmissibleActionPolicy(model, tokenizer, generator=torch.Generator().manual_seed(0))
    collector = LLMCollector(env, policy=policy, dialog_turns_per_batch=1, yield_completed_trajectories=True)
    # the priming reset opened an episode of group 0 and completed nothing
    assert env.resets == 1
    assert env._episode["group_id"] == env._group[1] and env._completed_in_group == 0

    group_ids = []
    for traj in collector:
        done = traj["next", "done"].view(-1)
        assert bool(done[-1]) and not bool(done[:-1].any())
        ids = traj["group_id"].view(-1).unique()
        assert ids.numel() == 1
        group_ids.append(int(ids))
        if len(group_ids) == 3:
            break
    collector.shutdown()
    # the priming reset plus two started episodes: a reset counter would have closed group 0 early
    assert env.resets > 3
    assert group_ids[0] == group_ids[1] != group_ids[2]


def three_turn_assistant_mask(model, tokenizer):
    """``(chat, all_assistant_mask)`` of a three-turn history scored by a history-mode (rlhf) actor."""
    chat = [{"role": "user", "content": "You are in the hall."}]
    for i, action in enumerate(["go forward", "look around", "go back"]):
        chat.append({"role": "assistant", "content": f"<think>step {i}</think><action>{action}</action>"})
        if i < 2:
            chat.append({"role": "user", "content": "You are in the kitchen."})
    history = History.from_chats([chat])
    td = TensorDict(history=ChatHistory(full=history, batch_size=(1,)), batch_size=(1,))
    with torch.no_grad():
        out = scoring_wrapper(model, tokenizer, input_mode="history")(td)
    return chat, out.get(("masks", "all_assistant_mask"), as_list=True)[0].long()


@CANARY(reason="torchrl 0.14: the rlhf assistant mask covers every assistant turn")
def test_canary_rlhf_mask_covers_only_the_last_reply(model, tokenizer):
    _, mask = three_turn_assistant_mask(model, tokenizer)
    assert int(mask[0]) + int(((mask[1:] == 1) & (mask[:-1] == 0)).sum()) == 1


def test_rlhf_assistant_mask_spans_earlier_turns(model, tokenizer):
    """Bug: ``masking_strategy="rlhf"`` uses the chat template's assistant mask, which in a multi-turn
    history covers *every* assistant turn of the context, not only the action of this turn: a
    per-turn ratio would mix in earlier turns' tokens (re-tokenised, too).

    Workaround: ``GAGPOLoss`` always uses ``masking_strategy="sft"`` (the prompt-length mask on the
    stored ``("tokens", "full")``) and refuses a history-mode actor.
    """
    chat, mask = three_turn_assistant_mask(model, tokenizer)
    assert len(chat) == 6
    history_actor = scoring_wrapper(model, tokenizer, input_mode="history")
    last_reply = tokenizer(chat[-1]["content"], add_special_tokens=False)["input_ids"]
    n_last = len(last_reply) + 1  # + EOS
    spans = int(mask[0]) + int(((mask[1:] == 1) & (mask[:-1] == 0)).sum())
    # three assistant spans (the canary above fails on this), about three times the last action's tokens
    assert spans == 3
    assert int(mask.sum()) > n_last

    # workaround: the sft mask of a tokens-mode actor covers exactly this turn's response
    tokens_actor = scoring_wrapper(model, tokenizer, input_mode="tokens")
    prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=True)["input_ids"]
    prompt = torch.tensor(prompt)
    response = torch.tensor([*last_reply, tokenizer.eos_token_id])
    stored = lazy_stack(
        [TensorDict(tokens=TensorDict(prompt=prompt, response=response, full=torch.cat([prompt, response])))]
    )
    loss = GAGPOLoss(tokens_actor)
    assert loss.masking_strategy == "sft"
    with torch.no_grad():
        dist = tokens_actor._get_sft_dist(stored)
    assert int(dist.mask.sum()) == n_last
    with pytest.raises(ValueError, match="input_mode='tokens'"):
        GAGPOLoss(history_actor)


@CANARY(reason="torchrl 0.14: History.from_text strips the reply's whitespace")
def test_canary_history_from_text_keeps_the_reply(tokenizer):
    reply = "  <think>go</think><action>look around</action>\n"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}], tokenize=False
    )
    parsed = History.from_text(text, chat_template_name="chatml_format", tokenizer=tokenizer)
    assert parsed[-1].content == reply


def test_retokenisation_drift(model, tokenizer, prompts):
    """Bug: re-tokenising a stored history does not give back the sampled tokens. Triggers seen in
    torchrl 0.14.1 with the ChatML template:

    * ``History.from_text`` (used by the history-mode generate path to build ``history.response``)
      strips the reply, so leading/trailing whitespace is lost;
    * a reply cut by ``max_new_tokens`` (no EOS) is re-rendered with ``<|im_end|>`` appended, and
      the template adds a ``"\\n"`` after every message's ``<|im_end|>``, complete or not;
    * byte-level BPE is not canonical: the sampled ids are rarely the ids of their decoded text.

    So history-mode scoring of ``("history", "full")`` returns other (here: longer) token
    sequences than ``("tokens", "full")``, which breaks the loss's shape check or silently scores
    other tokens.

    Workaround: the loss scores the stored ``("tokens", "full")`` with a tokens-mode actor, which
    reproduces the behaviour log-probs (direct model computation, and torchrl's generate-path
    values past the zeroed first token) exactly.
    """
    # (1) History.from_text strips the reply content
    reply = "  <think>go</think><action>look around</action>\n"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}], tokenize=False
    )
    parsed = History.from_text(text, chat_template_name="chatml_format", tokenizer=tokenizer)
    assert parsed[-1].content == reply.strip() != reply

    # (2) torchrl's own rollout, then both ways of scoring it
    max_new = 8
    out = generate_wrapper(model, tokenizer, max_new_tokens=max_new)(prompts.copy())
    stored = out.get(("tokens", "full"), as_list=True)
    responses = out.get(("tokens", "response"), as_list=True)
    with torch.no_grad():
        retokenised = scoring_wrapper(model, tokenizer, input_mode="history")(out.select("history").copy())
        rescored = scoring_wrapper(model, tokenizer, input_mode="tokens")(out.select("tokens").copy())
    (newline,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    again_full = retokenised.get(("tokens", "full"), as_list=True)
    for full, response, again in zip(stored, responses, again_full, strict=True):
        # bug present: the re-tokenised sequence is not the sampled one
        assert not (full.shape == again.shape and torch.equal(full, again))
        assert again[-2:].tolist() == [eos, newline]  # rendered as a closed turn, plus a newline
        if int(response[-1]) != eos:  # cut by max_new_tokens: the EOS was never sampled
            assert response.numel() == max_new
    generated_lp = out.get(("log_probs", "response"), as_list=True)
    rescored_lp = rescored.get(("log_probs", "full"), as_list=True)
    for full, response, generated, full_lp in zip(stored, responses, generated_lp, rescored_lp, strict=True):
        n = response.numel()
        assert full_lp.shape == full.shape
        torch.testing.assert_close(full_lp[-n:], direct_log_probs(model, full, n), atol=1e-5, rtol=0)
        torch.testing.assert_close(full_lp[-n + 1 :], generated[1:], atol=1e-5, rtol=0)
