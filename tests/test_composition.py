"""The pieces composed with TorchRL: collector, replay buffer, GAGPOLoss, GRPOLoss and ClipPPOLoss."""

from __future__ import annotations

import pytest
import torch
from helpers import trajectory
from tensordict.nn import TensorDictModule
from torch.distributions import Categorical
from torchrl.collectors.llm import LLMCollector
from torchrl.data import LazyStackStorage, LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.modules import ProbabilisticActor
from torchrl.modules.llm import TransformersWrapper
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.llm import GRPOLoss

from torchrl_gagpo import GAGPOLoss, GiGPOEstimator, GroupedGAE, GRPOEstimator, StateKeyGrouping
from torchrl_gagpo import functional as F
from torchrl_gagpo.envs import ToyTextEnv
from torchrl_gagpo.policies import AdmissibleActionPolicy, make_tiny_model, make_tiny_tokenizer

G, GROUPS = 3, 2


def gagpo_of(data, **options):
    """GAGPO advantages of a collected batch, straight from the kernel (not through an estimator)."""
    r, d = data["next", "reward"].reshape(-1), data["next", "done"].reshape(-1)
    return F.gagpo_advantage(r, d, data["state_key"].reshape(-1), data["group_id"].reshape(-1), **options)


@pytest.fixture(scope="module")
def rollout():
    """Two complete groups of three rollouts collected by torchrl's LLMCollector."""
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok, seed=0)
    env = ToyTextEnv(group_size=G, max_steps=8, history_length=1, seed=0)
    policy = AdmissibleActionPolicy(model, tok, score="mean", generator=torch.Generator().manual_seed(0))
    grouping = StateKeyGrouping(G)
    rb = ReplayBuffer(storage=LazyStackStorage(1000), transform=grouping)
    collector = LLMCollector(env, policy=policy, replay_buffer=rb, yield_completed_trajectories=True)
    it = iter(collector)
    while grouping.released_groups < GROUPS:
        next(it)
    collector.shutdown()
    actor = TransformersWrapper(
        model, tokenizer=tok, input_mode="tokens", generate=False, return_log_probs=True, pad_output=False
    )
    return model, actor, rb[:]


def test_collected_groups_are_whole(rollout):
    _, _, data = rollout
    done = data["next", "done"].reshape(-1)
    gid = data["group_id"].reshape(-1)
    assert int(done.sum()) == G * GROUPS
    for g in gid.unique():
        assert int(done[gid == g].sum()) == G
        first = torch.cat([torch.tensor([True]), done[:-1]])[gid == g]  # first step of each trajectory
        assert data["state_key"].reshape(-1)[gid == g][first].unique().numel() == 1  # identical initial state
    assert (data["group_size"] == G).all()


def test_gagpo_loss_through_the_buffer(rollout):
    model, actor, data = rollout
    batch = GroupedGAE(gamma=0.95, lmbda=0.8)(data.copy())
    assert batch["advantage"].abs().sum() > 0  # some rollouts succeeded, others did not
    out = GAGPOLoss(actor)(batch)
    # behaviour log-probs come from the chooser's own scoring pass: ratio 1 up to float noise
    assert out.ESS.item() == pytest.approx(1.0, abs=1e-4)
    assert out.clip_fraction.item() == 0.0
    before = [p.detach().clone() for p in model.parameters()]
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    optim.zero_grad()
    out.loss_objective.backward()
    optim.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with torch.no_grad():
        for p, b in zip(model.parameters(), before, strict=True):
            p.copy_(b)


def token_mean_objective(batch, advantage) -> float:
    """GRPOLoss's objective at ratio 1 (token_mean): minus the token-weighted mean advantage."""
    lengths = torch.tensor([r.numel() for r in batch.get(("tokens", "response"), as_list=True)], dtype=torch.float64)
    return -float((advantage.reshape(-1).double() * lengths).sum() / lengths.sum())


def test_torchrl_grpo_loss(rollout):
    _, actor, data = rollout
    batch = GRPOEstimator(advantage_shape="token")(data.copy())
    loss = GRPOLoss(actor, masking_strategy="sft", entropy_bonus=False)
    out = loss(batch)
    assert out.ESS.item() == pytest.approx(1.0, abs=1e-4)
    r, d = data["next", "reward"].reshape(-1), data["next", "done"].reshape(-1)
    advantage = F.grpo_advantage(r, d, data["group_id"].reshape(-1))
    assert out.loss_objective.item() == pytest.approx(token_mean_objective(data, advantage), abs=1e-3)


def test_torchrl_grpo_loss_with_grouped_gae(rollout):
    """docs/composition.md: GroupedGAE(advantage_shape="token") feeds torchrl's GRPOLoss (LLM actor)."""
    model, actor, data = rollout
    batch = GroupedGAE(gamma=0.95, lmbda=0.8, advantage_shape="token")(data.copy())
    out = GRPOLoss(actor, masking_strategy="sft", entropy_bonus=False)(batch)
    assert out.ESS.item() == pytest.approx(1.0, abs=1e-4)
    advantage = gagpo_of(data, gamma=0.95, lmbda=0.8)
    assert out.loss_objective.item() == pytest.approx(token_mean_objective(data, advantage), abs=1e-3)
    out.loss_objective.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


@pytest.mark.xfail(strict=True, raises=RuntimeError, reason="torchrl 0.14: ClipPPOLoss cannot stack ragged log-probs")
def test_canary_clip_ppo_loss_takes_an_llm_actor(rollout):
    """docs/composition.md: torchrl's ClipPPOLoss needs dense action log-probs; the README's
    TransformersWrapper actor has ragged per-token ones, which it cannot stack (torchrl 0.14).
    XPASS (a failure in strict mode) means torchrl learnt it: widen the claim in docs/composition.md."""
    _, actor, data = rollout
    batch = GroupedGAE()(data.copy())
    out = ClipPPOLoss(actor, critic_network=None, entropy_bonus=False)(batch)
    assert torch.isfinite(out["loss_objective"])


def test_estimator_swap_in_grouping():
    t = StateKeyGrouping(2, estimator=GiGPOEstimator(normalize="mean"))
    out = t.inv(torch.cat([trajectory(0, [0, 1], [0, 1]), trajectory(0, [0, 2], [0, 0])]))
    # episode term +-0.5; step term of the shared first state +-(0.95 - 0) / 2 (gamma = 0.95)
    assert out["advantage"].reshape(-1).tolist() == pytest.approx([0.975, 0.5, -0.975, -0.5])


def test_clip_ppo_loss_with_grouped_advantages():
    """docs/composition.md: StateKeyGrouping + GroupedGAE feeding torchrl's ClipPPOLoss with a
    ProbabilisticActor over fixed-shape actions (an MLP policy, no critic)."""
    torch.manual_seed(0)
    net = TensorDictModule(torch.nn.Linear(4, 3), in_keys=["observation"], out_keys=["logits"])
    actor = ProbabilisticActor(
        net, in_keys=["logits"], out_keys=["action"], distribution_class=Categorical, return_log_prob=True
    )
    rb = ReplayBuffer(
        storage=LazyTensorStorage(100),
        sampler=SamplerWithoutReplacement(),
        batch_size=4,
        transform=StateKeyGrouping(2, estimator=GroupedGAE()),
    )
    for states, rewards in (([0, 1, 2], [0, 0, 1]), ([0, 3], [0, 0])):
        # distinct observations: equal and opposite advantages at one shared input would cancel
        traj = trajectory(0, states, rewards, observation=torch.randn(len(states), 4))
        with torch.no_grad():
            actor(traj)
        rb.extend(traj)
    assert len(rb) == 5
    loss = ClipPPOLoss(actor, critic_network=None, entropy_bonus=False)
    out = loss(rb.sample())
    out["loss_objective"].backward()
    assert net.module.weight.grad.abs().sum() > 0


def test_loss_estimates_whole_groups_itself(rollout):
    """Without an advantage the loss runs its estimator on the batch; minibatches that split groups fail."""
    _, actor, data = rollout
    loss = GAGPOLoss(actor)
    loss.make_value_estimator(gamma=0.9, lmbda=0.5)
    # ratio 1 (the chooser's own log-probs): minus the mean advantage over actions, from the kernel itself
    expected = -float(gagpo_of(data, gamma=0.9, lmbda=0.5).mean())
    assert loss(data.copy()).loss_objective.item() == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="splits rollout group"):
        loss(data[:5].copy())


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
