"""Tests of the pure tensor kernels in :mod:`torchrl_gagpo.functional`.

Four kinds of checks:

* hand-computed oracle tables, written below as literal numbers (worked out by
  hand from the equations, never by calling the library);
* hypothesis property tests against the plain-Python loop references of
  :mod:`torchrl_gagpo.reference` (random batches with repeated states, singleton
  groups, length-1 trajectories, all-zero rewards, interleaved groups, float32
  and float64);
* algebraic properties (``lmbda`` limits, permutation / relabelling / split /
  shift invariance) and shape handling;
* input validation (every bad input raises ``ValueError`` naming the problem)
  and the CUDA path (skipped without a GPU).
"""

from __future__ import annotations

import contextlib
import math
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchrl_gagpo import functional as F
from torchrl_gagpo import reference as ref

torch.manual_seed(0)
random.seed(0)

# Deterministic property tests: the same examples on every run and machine.
PROPS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# fewer examples for the tests that run every kernel several times per example
PROPS_FEW = settings(PROPS, max_examples=25)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GAMMA = 0.95
LMBDA = 0.8
NORMALIZE_MODES = ("mean_std", "mean", "none")


# ---------------------------------------------------------------------------
# batch helpers
# ---------------------------------------------------------------------------
def flatten(trajs):
    """``[(group, [(state, reward), ...]), ...]`` -> flat Python lists (reward, done, state, group)."""
    reward, done, state, group = [], [], [], []
    for g, steps in trajs:
        for i, (s, r) in enumerate(steps):
            reward.append(float(r))
            done.append(i == len(steps) - 1)
            state.append(int(s))
            group.append(int(g))
    return reward, done, state, group


def tensors(reward, done, state, group, dtype=torch.float64, device="cpu"):
    return (
        torch.tensor(reward, dtype=dtype, device=device),
        torch.tensor(done, dtype=torch.bool, device=device),
        torch.tensor(state, dtype=torch.long, device=device),
        torch.tensor(group, dtype=torch.long, device=device),
    )


def batch(trajs, dtype=torch.float64, device="cpu"):
    return tensors(*flatten(trajs), dtype=dtype, device=device)


def close(got: torch.Tensor, expected, atol: float, rtol: float = 0.0) -> None:
    exp = torch.as_tensor(expected, dtype=torch.float64).reshape(-1)
    g = got.detach().cpu().double().reshape(-1)
    assert g.shape == exp.shape, (g.shape, exp.shape)
    assert torch.isfinite(g).all(), g
    torch.testing.assert_close(g, exp, atol=atol, rtol=rtol)


def tolerances(dtype):
    """(atol, rtol, eps) for comparing a kernel in ``dtype`` with the float64 loop reference.

    float32 runs use ``eps=0.1`` in "mean_std": with the default ``eps=1e-6`` a group of
    values that are equal in exact arithmetic but differ by one float32 ulp after
    summation is blown up to O(1) (see ``test_float32_tied_group_is_not_zero``).
    """
    if dtype == torch.float64:
        return 1e-6, 1e-6, 1e-6
    return 2e-3, 1e-4, 0.1


def normalize_oracle(value, values, normalize, eps, singleton_mean_zero=False):
    """The module's normalisation rule for one ``value`` of the set ``values`` (plain Python)."""
    if normalize == "none":
        return value
    if len(values) < 2:
        mean, std = (0.0 if singleton_mean_zero else values[0]), 1.0
    else:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    if normalize == "mean":
        return value - mean
    return (value - mean) / (std + eps)


def random_trajs(rng: random.Random, n_traj, min_len, max_len, n_groups, n_states, grid=False):
    trajs = []
    for _ in range(n_traj):
        g = rng.randrange(n_groups) * 7 - 3
        length = rng.randint(min_len, max_len)
        steps = []
        for _ in range(length):
            r = rng.randint(-8, 8) / 4 if grid else rng.uniform(-5, 5)
            if rng.random() < 0.3:
                r = 0.0
            steps.append((rng.randrange(n_states), r))
        trajs.append((g, steps))
    return trajs


# ---------------------------------------------------------------------------
# the hand-worked example: one group (id 7) of three trajectories, repeated states
# ---------------------------------------------------------------------------
S0, S1, S2, S3, S4 = 11, -4, 2**40, 0, 7  # arbitrary int64 state digests
GROUP_A = 7
TRAJ1 = (GROUP_A, [(S0, 0.0), (S1, 0.0), (S2, 10.0)])
TRAJ2 = (GROUP_A, [(S0, 0.0), (S3, 0.0), (S1, 0.0), (S2, 10.0)])
TRAJ3 = (GROUP_A, [(S0, 0.0), (S3, 0.0), (S4, 0.0)])
HAND = [TRAJ1, TRAJ2, TRAJ3]

# gamma = 0.95
HAND_G = [9.025, 9.5, 10.0, 8.57375, 9.025, 9.5, 10.0, 0.0, 0.0, 0.0]
HAND_G_GAMMA1 = [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0]
# V(s0) = (9.025 + 8.57375 + 0) / 3, V(s1) = 9.5, V(s2) = 10, V(s3) = (9.025 + 0) / 2, V(s4) = 0
HAND_V = [5.86625, 9.5, 10.0, 5.86625, 4.5125, 9.5, 10.0, 5.86625, 4.5125, 0.0]

HAND_GAGPO = {  # (lmbda, normalize) -> A
    (0.8, "none"): [3.15875, 0, 0, 1.850125, 4.5125, 0, 0, -5.008875, -4.5125, 0],
    (0.8, "mean_std"): [1.064715, 0, 0, 0.623619, 1.521021, 0, 0, -1.688333, -1.521021, 0],
    # the raw advantages of this group happen to sum to 0, so "mean" == "none"
    (0.8, "mean"): [3.15875, 0, 0, 1.850125, 4.5125, 0, 0, -5.008875, -4.5125, 0],
    # lmbda = 1: G_t - V(s_t)
    (1.0, "none"): [3.15875, 0, 0, 2.7075, 4.5125, 0, 0, -5.86625, -4.5125, 0],
    (1.0, "mean_std"): [0.985579, 0, 0, 0.844782, 1.407969, 0, 0, -1.830360, -1.407969, 0],
    # lmbda = 0: r_t + gamma V(s_{t+1}) - V(s_t)
    (0.0, "none"): [3.15875, 0, 0, -1.579375, 4.5125, 0, 0, -1.579375, -4.5125, 0],
    (0.0, "mean_std"): [1.269815, 0, 0, -0.634908, 1.814021, 0, 0, -0.634908, -1.814021, 0],
}

# trajectory reward sums R = [10, 10, 0]: mean 20/3, sample std 10/sqrt(3)
HAND_GRPO = {
    "none": [10.0] * 7 + [0.0] * 3,
    "mean": [10 / 3] * 7 + [-20 / 3] * 3,
    "mean_std": [0.57735] * 7 + [-1.154701] * 3,
}
HAND_RLOO = [5.0] * 7 + [-10.0] * 3  # 10 - (10 + 0)/2, 0 - (10 + 10)/2

# GiGPO step term: anchor groups s0 {9.025, 8.57375, 0}, s1 {9.5, 9.5}, s2 {10, 10},
# s3 {9.025, 0}, s4 {0} (singleton -> 0)
HAND_GIGPO_STEP = {
    "mean": [3.15875, 0, 0, 2.7075, 4.5125, 0, 0, -5.86625, -4.5125, 0],
    "mean_std": [0.621149, 0, 0, 0.532414, 0.707107, 0, 0, -1.153563, -0.707107, 0],
}
HAND_GIGPO = {  # (episode_stats, normalize, step_weight) -> A
    ("trajectory", "mean", 1.0): [
        6.492083, 3.333333, 3.333333,
        6.040833, 7.845833, 3.333333, 3.333333,
        -12.532917, -11.179167, -6.666667,
    ],
    ("trajectory", "mean_std", 1.0): [
        1.198500, 0.577350, 0.577350,
        1.109764, 1.284457, 0.577350, 0.577350,
        -2.308264, -1.861807, -1.154700,
    ],
    ("trajectory", "mean_std", 0.5): [
        0.887925, 0.577350, 0.577350,
        0.843557, 0.930904, 0.577350, 0.577350,
        -1.731482, -1.508254, -1.154700,
    ],
    # "step": the episode pool is one value per step row: seven 10s and three 0s,
    # mean 7, sample std sqrt(210 / 9)
    ("step", "mean", 1.0): [
        6.15875, 3.0, 3.0,
        5.7075, 7.5125, 3.0, 3.0,
        -12.86625, -11.5125, -7.0,
    ],
    ("step", "mean_std", 1.0): [
        1.242208, 0.621059, 0.621059,
        1.153473, 1.328166, 0.621059, 0.621059,
        -2.602701, -2.156244, -1.449137,
    ],
    ("step", "mean", 0.5): [
        4.579375, 3.0, 3.0,
        4.35375, 5.25625, 3.0, 3.0,
        -9.933125, -9.25625, -7.0,
    ],
    # "none": R + G
    ("trajectory", "none", 1.0): [19.025, 19.5, 20.0, 18.57375, 19.025, 19.5, 20.0, 0, 0, 0],
    ("step", "none", 1.0): [19.025, 19.5, 20.0, 18.57375, 19.025, 19.5, 20.0, 0, 0, 0],
}

# A second group (id 3) interleaved between TRAJ1 and TRAJ2: one trajectory that reuses
# the state ids S0, S1 of group 7. G = [1 + 0.95 * 2, 2] = [2.9, 2]; its states only
# see its own returns. It must leave group 7's numbers untouched.
GROUP_B = 3
TRAJ_B = (GROUP_B, [(S0, 1.0), (S1, 2.0)])
HAND_MIXED = [TRAJ1, TRAJ_B, TRAJ2, TRAJ3]


def insert_b(values_a, values_b):
    """Expected values of HAND_MIXED from those of HAND (10 steps) and TRAJ_B (2 steps)."""
    return list(values_a[:3]) + list(values_b) + list(values_a[3:])


HAND_DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64])


# ---------------------------------------------------------------------------
# trajectory_index / group_normalize
# ---------------------------------------------------------------------------
class TestTrajectoryIndex:
    def test_docstring_example(self):
        done = torch.tensor([False, True, True, False, True])
        assert F.trajectory_index(done).tolist() == [0, 0, 1, 2, 2]

    def test_hand_batch(self):
        _, d, _, _ = batch(HAND)
        assert F.trajectory_index(d).tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]

    def test_column_input_and_all_done(self):
        d = torch.ones(5, 1, dtype=torch.bool)
        assert F.trajectory_index(d).tolist() == [0, 1, 2, 3, 4]

    def test_empty(self):
        out = F.trajectory_index(torch.zeros(0, dtype=torch.bool))
        assert out.shape == (0,)

    @PROPS
    @given(lengths=st.lists(st.integers(1, 6), max_size=10))
    def test_matches_split_trajectories(self, lengths):
        done = [i == n - 1 for n in lengths for i in range(n)]
        expected = [k for k, traj in enumerate(ref.split_trajectories(done)) for _ in traj]
        assert F.trajectory_index(torch.tensor(done, dtype=torch.bool)).tolist() == expected


class TestGroupNormalize:
    X = [1.0, 3.0, 5.0]
    G = [0, 0, 1]

    @pytest.mark.parametrize(
        "normalize, expected",
        [
            ("mean_std", [-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]),  # std of {1, 3} = sqrt(2)
            ("mean", [-1.0, 1.0, 0.0]),
            ("none", [1.0, 3.0, 5.0]),
        ],
    )
    @HAND_DTYPES
    def test_hand(self, normalize, expected, dtype):
        out = F.group_normalize(torch.tensor(self.X, dtype=dtype), torch.tensor(self.G), normalize, 1e-6)
        assert out.dtype == dtype
        close(out, expected, atol=1e-5)

    def test_column_shape(self):
        x = torch.tensor(self.X).reshape(3, 1)
        out = F.group_normalize(x, torch.tensor(self.G).reshape(3, 1), "mean", 1e-6)
        assert out.shape == (3, 1)
        close(out, [-1.0, 1.0, 0.0], atol=1e-6)

    def test_equal_values_give_zero_not_nan(self):
        x = torch.full((4,), 2.5, dtype=torch.float64)
        out = F.group_normalize(x, torch.zeros(4, dtype=torch.long), "mean_std", 1e-6)
        assert out.tolist() == [0.0] * 4

    @PROPS
    @given(
        values=st.lists(
            st.tuples(st.integers(0, 3), st.floats(-50, 50, allow_subnormal=False)), max_size=20
        ),
        normalize=st.sampled_from(NORMALIZE_MODES),
    )
    def test_matches_reference(self, values, normalize):
        x = [v for _, v in values]
        g = [k for k, _ in values]
        out = F.group_normalize(
            torch.tensor(x, dtype=torch.float64), torch.tensor(g, dtype=torch.long), normalize, 1e-6
        )
        expected = [
            normalize_oracle(v, [w for h, w in values if h == k], normalize, 1e-6) for k, v in values
        ]
        close(out, expected, atol=1e-6, rtol=1e-6)

    def test_bad_arguments(self):
        x, g = torch.tensor(self.X), torch.tensor(self.G)
        with pytest.raises(ValueError, match="normalize must be one of"):
            F.group_normalize(x, g, "zscore", 1e-6)
        with pytest.raises(ValueError, match="eps must be > 0"):
            F.group_normalize(x, g, "mean_std", 0.0)
        with pytest.raises(ValueError, match="group_id must be an integer tensor"):
            F.group_normalize(x, g.float(), "mean_std", 1e-6)
        with pytest.raises(ValueError, match="NaN or inf"):
            F.group_normalize(torch.tensor([1.0, float("nan"), 0.0]), g, "mean", 1e-6)


# ---------------------------------------------------------------------------
# hypothesis strategies
# ---------------------------------------------------------------------------
GROUP_IDS = (0, 1, -3, 2**40)
REWARD64 = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 0.5, 10.0]),
    st.floats(-10, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False),
)
# float32 rewards on a coarse grid: exact in float32, so only the kernels' own rounding
# separates them from the float64 reference.
REWARD32 = st.integers(-16, 16).map(lambda k: k / 4)


@st.composite
def trajectory_batches(draw, dtype=None, max_traj=7, max_len=5, n_states=4, groups=GROUP_IDS, min_traj=0):
    """``(trajs, dtype)``: trajectories ``(group, [(state, reward), ...])`` in shuffled order.

    State ids come from a small range so states repeat inside and across trajectories;
    group ids are drawn per trajectory, so groups interleave, and singleton groups and
    length-1 trajectories are common. Sometimes every reward is zero.
    """
    if dtype is None:
        dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    rewards = REWARD32 if dtype == torch.float32 else REWARD64
    n_groups = draw(st.integers(1, len(groups)))
    traj = st.tuples(
        st.sampled_from(groups[:n_groups]),
        st.lists(st.tuples(st.integers(0, n_states - 1), rewards), min_size=1, max_size=max_len),
    )
    trajs = draw(st.lists(traj, min_size=min_traj, max_size=max_traj))
    if draw(st.integers(0, 4)) == 0:  # all-zero rewards
        trajs = [(g, [(s, 0.0) for s, _ in steps]) for g, steps in trajs]
    order = draw(st.permutations(range(len(trajs))))
    return [trajs[i] for i in order], dtype


UNIT = st.floats(0.0, 1.0, allow_subnormal=False)
UNIT_OR_EDGE = st.one_of(st.sampled_from([0.0, 1.0, 0.95, 0.5]), UNIT)


def assert_matches(out, expected, dtype, reward):
    atol, rtol, _ = tolerances(dtype)
    assert out.dtype == dtype
    assert out.shape == reward.shape
    close(out, expected, atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------
# discounted_returns
# ---------------------------------------------------------------------------
class TestDiscountedReturns:
    @HAND_DTYPES
    def test_hand_table(self, dtype):
        r, d, _, _ = batch(HAND, dtype)
        close(F.discounted_returns(r, d, 0.95), HAND_G, atol=1e-4)
        close(F.discounted_returns(r, d, 1.0), HAND_G_GAMMA1, atol=1e-5)
        close(F.discounted_returns(r, d, 0.0), r, atol=0)

    def test_docstring_example(self):
        r = torch.tensor([0.0, 0.0, 10.0, 1.0])
        d = torch.tensor([False, False, True, True])
        assert F.discounted_returns(r, d, 0.5).tolist() == [2.5, 5.0, 10.0, 1.0]

    def test_mixed_batch(self):
        r, d, _, _ = batch(HAND_MIXED)
        close(F.discounted_returns(r, d, 0.95), insert_b(HAND_G, [2.9, 2.0]), atol=1e-9)

    @PROPS
    @given(data=trajectory_batches(), gamma=UNIT_OR_EDGE)
    def test_matches_reference(self, data, gamma):
        trajs, dtype = data
        reward, done, state, group = flatten(trajs)
        r, d, _, _ = tensors(reward, done, state, group, dtype)
        out = F.discounted_returns(r, d, gamma)
        assert_matches(out, ref.discounted_returns_loop(reward, done, gamma), dtype, r)

    def test_long_trajectories(self):
        rng = random.Random(1)
        trajs = random_trajs(rng, 6, 200, 200, 2, 5) + random_trajs(rng, 20, 1, 5, 2, 5)
        rng.shuffle(trajs)
        reward, done, state, group = flatten(trajs)
        r, d, _, _ = tensors(reward, done, state, group)
        close(F.discounted_returns(r, d, 0.99), ref.discounted_returns_loop(reward, done, 0.99), atol=1e-9)

    def test_empty(self):
        out = F.discounted_returns(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 0.9)
        assert out.shape == (0,) and out.dtype == torch.float32
        out = F.discounted_returns(torch.zeros(0, 1), torch.zeros(0, 1, dtype=torch.bool), 0.9)
        assert out.shape == (0, 1)

    def test_does_not_modify_input(self):
        r, d, _, _ = batch(HAND)
        r0 = r.clone()
        F.discounted_returns(r, d, 0.95)
        assert torch.equal(r, r0)


# ---------------------------------------------------------------------------
# grouped_value_proxy
# ---------------------------------------------------------------------------
class TestGroupedValueProxy:
    @HAND_DTYPES
    def test_hand_table(self, dtype):
        _, _, s, g = batch(HAND)
        returns = torch.tensor(HAND_G, dtype=dtype)
        close(F.grouped_value_proxy(returns, s, g), HAND_V, atol=1e-4)

    def test_docstring_example(self):
        G = torch.tensor([1.0, 3.0, 4.0, 8.0])
        s = torch.tensor([7, 7, 9, 7])
        assert F.grouped_value_proxy(G, s, torch.tensor([0, 0, 0, 1])).tolist() == [2.0, 2.0, 4.0, 8.0]

    def test_groups_do_not_share_states(self):
        # TRAJ_B reuses S0 and S1 in another group: its proxy is its own return only
        _, _, s, g = batch(HAND_MIXED)
        returns = torch.tensor(insert_b(HAND_G, [2.9, 2.0]), dtype=torch.float64)
        close(F.grouped_value_proxy(returns, s, g), insert_b(HAND_V, [2.9, 2.0]), atol=1e-9)

    def test_every_occurrence_counts(self):
        # a state visited twice in one trajectory contributes both returns
        returns = torch.tensor([1.0, 2.0, 6.0])
        s = torch.tensor([5, 5, 5])
        g = torch.zeros(3, dtype=torch.long)
        close(F.grouped_value_proxy(returns, s, g), [3.0, 3.0, 3.0], atol=1e-6)

    @PROPS
    @given(data=trajectory_batches(), gamma=UNIT_OR_EDGE)
    def test_matches_reference(self, data, gamma):
        trajs, dtype = data
        reward, done, state, group = flatten(trajs)
        r, d, s, g = tensors(reward, done, state, group, dtype)
        # raw rewards as "returns" (arbitrary values) and proper discounted returns
        assert_matches(
            F.grouped_value_proxy(r, s, g), ref.grouped_value_proxy_loop(reward, state, group), dtype, r
        )
        ret = ref.discounted_returns_loop(reward, done, gamma)
        out = F.grouped_value_proxy(torch.tensor(ret, dtype=dtype), s, g)
        assert_matches(out, ref.grouped_value_proxy_loop(ret, state, group), dtype, r)

    def test_shapes(self):
        returns = torch.tensor(HAND_G).reshape(-1, 1)
        _, _, s, g = batch(HAND)
        out = F.grouped_value_proxy(returns, s, g)
        assert out.shape == (10, 1)
        close(out, HAND_V, atol=1e-4)
        no_ids = torch.zeros(0, dtype=torch.long)
        empty = F.grouped_value_proxy(torch.zeros(0), no_ids, no_ids)
        assert empty.shape == (0,)

    def test_bad_input(self):
        _, _, s, g = batch(HAND)
        returns = torch.tensor(HAND_G)
        with pytest.raises(ValueError, match="state_key has 9 steps but reward has 10"):
            F.grouped_value_proxy(returns, s[:-1], g)
        with pytest.raises(ValueError, match="state_key must be an integer tensor"):
            F.grouped_value_proxy(returns, s.double(), g)
        with pytest.raises(ValueError, match="group_id must be an integer tensor"):
            F.grouped_value_proxy(returns, s, g.float())
        bad = returns.clone()
        bad[3] = float("inf")
        with pytest.raises(ValueError, match="NaN or inf"):
            F.grouped_value_proxy(bad, s, g)


# ---------------------------------------------------------------------------
# gagpo_advantage
# ---------------------------------------------------------------------------
def gagpo_one_step_td(reward, done, state, group, gamma):
    """r_t + gamma V(s_{t+1}) - V(s_t), V := 0 after the last step (loop oracle)."""
    value = ref.grouped_value_proxy_loop(ref.discounted_returns_loop(reward, done, gamma), state, group)
    return [
        reward[t] + gamma * (0.0 if done[t] else value[t + 1]) - value[t] for t in range(len(reward))
    ]


class TestGAGPOAdvantage:
    @pytest.mark.parametrize("lmbda, normalize", sorted(HAND_GAGPO))
    @HAND_DTYPES
    def test_hand_table(self, lmbda, normalize, dtype):
        r, d, s, g = batch(HAND, dtype)
        out = F.gagpo_advantage(r, d, s, g, gamma=GAMMA, lmbda=lmbda, normalize=normalize)
        assert out.dtype == dtype
        close(out, HAND_GAGPO[(lmbda, normalize)], atol=1e-3)

    def test_docstring_example(self):
        r = torch.tensor([0.0, 10.0, 0.0, 0.0])
        d = torch.tensor([False, True, False, True])
        s = torch.tensor([0, 1, 0, 2])
        A = F.gagpo_advantage(r, d, s, torch.zeros(4, dtype=torch.long), normalize="none")
        close(A, [4.75, 0.0, -4.75, 0.0], atol=1e-5)

    @pytest.mark.parametrize("normalize", NORMALIZE_MODES)
    def test_interleaved_group_leaves_hand_table_unchanged(self, normalize):
        # group 3's trajectory has G = V at every step, so its raw advantage is [0, 0]
        # (and a group of two equal values normalises to 0, not NaN)
        r, d, s, g = batch(HAND_MIXED)
        out = F.gagpo_advantage(r, d, s, g, gamma=GAMMA, lmbda=LMBDA, normalize=normalize)
        close(out, insert_b(HAND_GAGPO[(0.8, normalize)], [0.0, 0.0]), atol=1e-5)

    @PROPS
    @given(
        data=trajectory_batches(),
        gamma=UNIT_OR_EDGE,
        lmbda=UNIT_OR_EDGE,
        normalize=st.sampled_from(NORMALIZE_MODES),
    )
    def test_matches_reference(self, data, gamma, lmbda, normalize):
        trajs, dtype = data
        _, _, eps = tolerances(dtype)
        reward, done, state, group = flatten(trajs)
        r, d, s, g = tensors(reward, done, state, group, dtype)
        out = F.gagpo_advantage(r, d, s, g, gamma=gamma, lmbda=lmbda, normalize=normalize, eps=eps)
        expected = ref.gagpo_advantage_loop(reward, done, state, group, gamma, lmbda, normalize, eps)
        assert_matches(out, expected, dtype, r)

    @PROPS
    @given(data=trajectory_batches(dtype=torch.float64), gamma=UNIT_OR_EDGE)
    def test_lmbda_one_is_monte_carlo(self, data, gamma):
        trajs, _ = data
        reward, done, state, group = flatten(trajs)
        r, d, s, g = tensors(reward, done, state, group)
        G = ref.discounted_returns_loop(reward, done, gamma)
        V = ref.grouped_value_proxy_loop(G, state, group)
        raw = F.gagpo_advantage(r, d, s, g, gamma=gamma, lmbda=1.0, normalize="none")
        close(raw, [gt - vt for gt, vt in zip(G, V)], atol=1e-9, rtol=1e-9)
        # the same through the library's own building blocks
        G_t = F.discounted_returns(r, d, gamma)
        close(raw, G_t - F.grouped_value_proxy(G_t, s, g), atol=1e-9, rtol=1e-9)
        # sum over a group of G_t - V(s_t) is 0, so centring changes nothing
        centred = F.gagpo_advantage(r, d, s, g, gamma=gamma, lmbda=1.0, normalize="mean")
        close(centred, raw, atol=1e-9, rtol=1e-9)

    @PROPS
    @given(data=trajectory_batches(dtype=torch.float64), gamma=UNIT_OR_EDGE)
    def test_lmbda_zero_is_one_step_td(self, data, gamma):
        trajs, _ = data
        reward, done, state, group = flatten(trajs)
        r, d, s, g = tensors(reward, done, state, group)
        raw = F.gagpo_advantage(r, d, s, g, gamma=gamma, lmbda=0.0, normalize="none")
        close(raw, gagpo_one_step_td(reward, done, state, group, gamma), atol=1e-9, rtol=1e-9)

    def test_lmbda_limits_on_random_batch(self):
        rng = random.Random(2)
        trajs = random_trajs(rng, 40, 1, 12, 4, 5)
        reward, done, state, group = flatten(trajs)
        r, d, s, g = tensors(reward, done, state, group)
        G = ref.discounted_returns_loop(reward, done, 0.9)
        V = ref.grouped_value_proxy_loop(G, state, group)
        close(
            F.gagpo_advantage(r, d, s, g, gamma=0.9, lmbda=1.0, normalize="none"),
            [a - b for a, b in zip(G, V)],
            atol=1e-9,
        )
        close(
            F.gagpo_advantage(r, d, s, g, gamma=0.9, lmbda=0.0, normalize="none"),
            gagpo_one_step_td(reward, done, state, group, 0.9),
            atol=1e-9,
        )

    def test_gamma_zero(self):
        # gamma = 0: G = r, V = mean reward of the state, A = r - V(s)
        r, d, s, g = batch(HAND_MIXED)
        out = F.gagpo_advantage(r, d, s, g, gamma=0.0, lmbda=0.5, normalize="none")
        expected = [
            rt - vt
            for rt, vt in zip(
                r.tolist(), ref.grouped_value_proxy_loop(r.tolist(), s.tolist(), g.tolist())
            )
        ]
        close(out, expected, atol=1e-9)


# ---------------------------------------------------------------------------
# gigpo_advantage
# ---------------------------------------------------------------------------
class TestGiGPOAdvantage:
    @pytest.mark.parametrize("episode_stats, normalize, step_weight", sorted(HAND_GIGPO))
    @HAND_DTYPES
    def test_hand_table(self, episode_stats, normalize, step_weight, dtype):
        r, d, s, g = batch(HAND, dtype)
        out = F.gigpo_advantage(
            r, d, s, g, gamma=GAMMA, step_weight=step_weight, normalize=normalize,
            episode_stats=episode_stats,
        )
        assert out.dtype == dtype
        close(out, HAND_GIGPO[(episode_stats, normalize, step_weight)], atol=1e-3)

    @pytest.mark.parametrize("normalize", ["mean", "mean_std"])
    @pytest.mark.parametrize("episode_stats", ["trajectory", "step"])
    def test_step_term_alone(self, normalize, episode_stats):
        # step_weight = 0 leaves the episode term; the difference of weights 1 and 0
        # is the anchor-state step term
        r, d, s, g = batch(HAND)
        kw = dict(gamma=GAMMA, normalize=normalize, episode_stats=episode_stats)
        full = F.gigpo_advantage(r, d, s, g, step_weight=1.0, **kw)
        episode = F.gigpo_advantage(r, d, s, g, step_weight=0.0, **kw)
        close(full - episode, HAND_GIGPO_STEP[normalize], atol=1e-5)

    def test_docstring_example(self):
        r = torch.tensor([0.0, 10.0, 0.0, 0.0])
        d = torch.tensor([False, True, False, True])
        s = torch.tensor([0, 1, 0, 2])
        A = F.gigpo_advantage(r, d, s, torch.zeros(4, dtype=torch.long), normalize="mean")
        close(A, [9.75, 5.0, -9.75, -5.0], atol=1e-5)

    def test_singleton_group_episode_term_passes_return_through(self):
        # group 3 has one trajectory (R = 3), every anchor state a singleton:
        # trajectory stats -> episode term uses mean 0, std 1: A = 3 / (1 + eps);
        # step stats -> the pool holds R once per step row ({3, 3}), mean 3: A = 0.
        r, d, s, g = batch(HAND_MIXED)
        traj = F.gigpo_advantage(r, d, s, g, gamma=GAMMA, normalize="mean_std")
        close(traj, insert_b(HAND_GIGPO[("trajectory", "mean_std", 1.0)], [3.0, 3.0]), atol=1e-5)
        traj_mean = F.gigpo_advantage(r, d, s, g, gamma=GAMMA, normalize="mean")
        close(traj_mean, insert_b(HAND_GIGPO[("trajectory", "mean", 1.0)], [3.0, 3.0]), atol=1e-5)
        step = F.gigpo_advantage(r, d, s, g, gamma=GAMMA, normalize="mean_std", episode_stats="step")
        close(step, insert_b(HAND_GIGPO[("step", "mean_std", 1.0)], [0.0, 0.0]), atol=1e-5)

    def test_single_step_singleton_group(self):
        # a lone one-step trajectory: R passes through under both episode_stats
        r = torch.tensor([2.5], dtype=torch.float64)
        d = torch.tensor([True])
        ids = torch.tensor([0])
        for es in ("trajectory", "step"):
            close(F.gigpo_advantage(r, d, ids, ids, episode_stats=es, normalize="mean"), [2.5], atol=1e-12)

    @PROPS
    @given(
        data=trajectory_batches(),
        gamma=UNIT_OR_EDGE,
        step_weight=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
        normalize=st.sampled_from(NORMALIZE_MODES),
        episode_stats=st.sampled_from(["trajectory", "step"]),
    )
    def test_matches_reference(self, data, gamma, step_weight, normalize, episode_stats):
        trajs, dtype = data
        _, _, eps = tolerances(dtype)
        reward, done, state, group = flatten(trajs)
        r, d, s, g = tensors(reward, done, state, group, dtype)
        out = F.gigpo_advantage(
            r, d, s, g, gamma=gamma, step_weight=step_weight, normalize=normalize,
            episode_stats=episode_stats, eps=eps,
        )
        expected = ref.gigpo_advantage_loop(
            reward, done, state, group, gamma, step_weight, normalize, episode_stats, eps
        )
        assert_matches(out, expected, dtype, r)

    def test_bad_options(self):
        r, d, s, g = batch(HAND)
        with pytest.raises(ValueError, match="episode_stats must be 'trajectory' or 'step'"):
            F.gigpo_advantage(r, d, s, g, episode_stats="group")
        for bad in (-0.5, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="step_weight must be finite and >= 0"):
                F.gigpo_advantage(r, d, s, g, step_weight=bad)


# ---------------------------------------------------------------------------
# grpo_advantage / rloo_advantage
# ---------------------------------------------------------------------------
class TestOverflowAndAliasing:
    def test_huge_float32_rewards_do_not_overflow_silently(self):
        r = torch.tensor([3e38, 3e38, 0.0])
        d = torch.tensor([False, True, True])
        g = torch.zeros(3, dtype=torch.long)
        out = F.grpo_advantage(r, d, g)  # computed in float64: the normalised result fits
        assert torch.isfinite(out).all() and out[0] > 0 > out[2]
        with pytest.raises(ValueError, match="does not fit"):
            F.grpo_advantage(r, d, g, normalize="none")  # 6e38 does not fit in float32
        two = F.grpo_advantage(torch.tensor([1e20, 0.0]), torch.tensor([True, True]), torch.zeros(2, dtype=torch.long))
        assert two.tolist() == pytest.approx([0.7071, -0.7071], abs=1e-4)

    def test_none_normalisation_returns_a_copy(self):
        x = torch.tensor([1.0, 2.0])
        y = F.group_normalize(x, torch.tensor([0, 0]), "none", 1e-6)
        y[0] = 99.0
        assert x.tolist() == [1.0, 2.0]

    def test_errors_name_the_argument(self):
        with pytest.raises(ValueError, match="x contains NaN"):
            F.group_normalize(torch.tensor([float("nan")]), torch.tensor([0]))
        with pytest.raises(ValueError, match="returns contains NaN"):
            F.grouped_value_proxy(torch.tensor([float("inf")]), torch.tensor([0]), torch.tensor([0]))


class TestGRPOAdvantage:
    @pytest.mark.parametrize("normalize", NORMALIZE_MODES)
    @HAND_DTYPES
    def test_hand_table(self, normalize, dtype):
        r, d, _, g = batch(HAND, dtype)
        out = F.grpo_advantage(r, d, g, normalize=normalize)
        assert out.dtype == dtype
        close(out, HAND_GRPO[normalize], atol=1e-4)

    @pytest.mark.parametrize("normalize", ["mean_std", "mean"])
    def test_singleton_group_is_zero(self, normalize):
        r, d, _, g = batch(HAND_MIXED)
        out = F.grpo_advantage(r, d, g, normalize=normalize)
        close(out, insert_b(HAND_GRPO[normalize], [0.0, 0.0]), atol=1e-5)

    def test_docstring_example(self):
        r = torch.tensor([0.0, 1.0, 0.0])
        d = torch.tensor([False, True, True])
        out = F.grpo_advantage(r, d, torch.zeros(3, dtype=torch.long), normalize="mean")
        assert out.tolist() == [0.5, 0.5, -0.5]

    @PROPS
    @given(data=trajectory_batches(), normalize=st.sampled_from(NORMALIZE_MODES))
    def test_matches_reference(self, data, normalize):
        trajs, dtype = data
        _, _, eps = tolerances(dtype)
        reward, done, state, group = flatten(trajs)
        r, d, _, g = tensors(reward, done, state, group, dtype)
        out = F.grpo_advantage(r, d, g, normalize=normalize, eps=eps)
        assert_matches(out, ref.grpo_advantage_loop(reward, done, group, normalize, eps), dtype, r)

    @PROPS_FEW
    @given(
        data=trajectory_batches(dtype=torch.float64, min_traj=1),
        shift=st.floats(-20, 20, allow_subnormal=False),
        normalize=st.sampled_from(["mean_std", "mean"]),
    )
    def test_shift_of_trajectory_totals(self, data, shift, normalize):
        # adding a constant to every trajectory total of a group (here: to each
        # trajectory's last reward) leaves GRPO unchanged, whatever the lengths
        trajs, _ = data
        target = trajs[0][0]
        shifted = [
            (g, steps[:-1] + [(steps[-1][0], steps[-1][1] + shift)]) if g == target else (g, steps)
            for g, steps in trajs
        ]
        r, d, _, g = batch(trajs)
        r2, _, _, _ = batch(shifted)
        close(
            F.grpo_advantage(r2, d, g, normalize=normalize),
            F.grpo_advantage(r, d, g, normalize=normalize),
            atol=1e-6,
        )

    @PROPS_FEW
    @given(
        n_traj=st.integers(1, 5),
        length=st.integers(1, 4),
        rewards=st.lists(st.floats(-5, 5, allow_subnormal=False), min_size=20, max_size=20),
        shift=st.floats(-20, 20, allow_subnormal=False),
        normalize=st.sampled_from(["mean_std", "mean"]),
    )
    def test_shift_every_reward_equal_lengths(self, n_traj, length, rewards, shift, normalize):
        # with equal-length trajectories, adding c to every reward of the group adds
        # c * length to each total: the centred / standardised advantage is unchanged
        it = iter(rewards)
        trajs = [(5, [(0, next(it)) for _ in range(length)]) for _ in range(n_traj)]
        other = (9, [(0, 1.0), (0, 4.0)])  # another group, untouched
        base = trajs + [other, (9, [(1, -2.0)])]
        moved = [(g, [(s, x + shift) for s, x in steps]) for g, steps in trajs] + [other, (9, [(1, -2.0)])]
        r, d, _, g = batch(base)
        r2, _, _, _ = batch(moved)
        close(
            F.grpo_advantage(r2, d, g, normalize=normalize),
            F.grpo_advantage(r, d, g, normalize=normalize),
            atol=1e-6,
        )

    def test_shift_hand(self):
        # the hand group with +3 on every reward of every trajectory: lengths 3, 4, 3 so the
        # totals become 19, 22, 9 and the advantage changes; +3 on each *total* does not
        r, d, _, g = batch(HAND)
        base = F.grpo_advantage(r, d, g, normalize="mean")
        r_total = r.clone()
        r_total[d] += 3.0
        close(F.grpo_advantage(r_total, d, g, normalize="mean"), base, atol=1e-9)
        close(
            F.grpo_advantage(r + 3.0, d, g, normalize="mean"),
            [2.333333] * 3 + [5.333333] * 4 + [-7.666667] * 3,
            atol=1e-5,
        )

    def test_equal_totals_give_zero_not_nan(self):
        r = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.5])
        d = torch.tensor([True, False, True, False, True])
        g = torch.zeros(5, dtype=torch.long)
        out = F.grpo_advantage(r, d, g)
        assert out.tolist() == [0.0] * 5


class TestRLOOAdvantage:
    @HAND_DTYPES
    def test_hand_table(self, dtype):
        r, d, _, g = batch(HAND, dtype)
        out = F.rloo_advantage(r, d, g)
        assert out.dtype == dtype
        close(out, HAND_RLOO, atol=1e-5)

    def test_singleton_group_is_zero(self):
        r, d, _, g = batch(HAND_MIXED)
        close(F.rloo_advantage(r, d, g), insert_b(HAND_RLOO, [0.0, 0.0]), atol=1e-9)

    def test_docstring_example(self):
        r = torch.tensor([0.0, 3.0, 0.0, 6.0])
        d = torch.tensor([False, True, True, True])
        assert F.rloo_advantage(r, d, torch.zeros(4, dtype=torch.long)).tolist() == [0.0, 0.0, -4.5, 4.5]

    def test_is_scaled_grpo_mean(self):
        # R_i - mean_{j != i} R_j = K / (K - 1) * (R_i - mean_j R_j)
        r, d, _, g = batch(HAND)
        close(F.rloo_advantage(r, d, g), 1.5 * F.grpo_advantage(r, d, g, normalize="mean"), atol=1e-9)

    @PROPS
    @given(data=trajectory_batches())
    def test_matches_reference(self, data):
        trajs, dtype = data
        reward, done, state, group = flatten(trajs)
        r, d, _, g = tensors(reward, done, state, group, dtype)
        assert_matches(F.rloo_advantage(r, d, g), ref.rloo_advantage_loop(reward, done, group), dtype, r)

    @PROPS_FEW
    @given(data=trajectory_batches(dtype=torch.float64, min_traj=1), shift=st.floats(-20, 20))
    def test_shift_of_trajectory_totals(self, data, shift):
        trajs, _ = data
        r, d, _, g = batch(trajs)
        r2 = r.clone()
        r2[d] += shift
        close(F.rloo_advantage(r2, d, g), F.rloo_advantage(r, d, g), atol=1e-6)


# ---------------------------------------------------------------------------
# properties shared by every kernel: permutation, relabelling, split, shapes
# ---------------------------------------------------------------------------
def run_all(r, d, s, g):
    """Every kernel on one batch (non-default options included), as a dict of outputs."""
    return {
        "returns": F.discounted_returns(r, d, 0.9),
        "proxy": F.grouped_value_proxy(F.discounted_returns(r, d, 0.9), s, g),
        "gagpo": F.gagpo_advantage(r, d, s, g, gamma=0.9, lmbda=0.7),
        "gagpo_mean": F.gagpo_advantage(r, d, s, g, normalize="mean"),
        "gigpo": F.gigpo_advantage(r, d, s, g, gamma=0.9),
        "gigpo_step": F.gigpo_advantage(r, d, s, g, episode_stats="step", step_weight=0.5),
        "grpo": F.grpo_advantage(r, d, g),
        "grpo_mean": F.grpo_advantage(r, d, g, normalize="mean"),
        "rloo": F.rloo_advantage(r, d, g),
    }


def reference_all(reward, done, state, group):
    G = ref.discounted_returns_loop(reward, done, 0.9)
    return {
        "returns": G,
        "proxy": ref.grouped_value_proxy_loop(G, state, group),
        "gagpo": ref.gagpo_advantage_loop(reward, done, state, group, gamma=0.9, lmbda=0.7),
        "gagpo_mean": ref.gagpo_advantage_loop(reward, done, state, group, normalize="mean"),
        "gigpo": ref.gigpo_advantage_loop(reward, done, state, group, gamma=0.9),
        "gigpo_step": ref.gigpo_advantage_loop(
            reward, done, state, group, episode_stats="step", step_weight=0.5
        ),
        "grpo": ref.grpo_advantage_loop(reward, done, group),
        "grpo_mean": ref.grpo_advantage_loop(reward, done, group, normalize="mean"),
        "rloo": ref.rloo_advantage_loop(reward, done, group),
    }


class TestInvariances:
    @PROPS_FEW
    @given(data=trajectory_batches(dtype=torch.float64, min_traj=1), perm_seed=st.integers(0, 2**16))
    def test_permuting_trajectories_permutes_output(self, data, perm_seed):
        trajs, _ = data
        order = list(range(len(trajs)))
        random.Random(perm_seed).shuffle(order)
        permuted = [trajs[i] for i in order]
        # step positions of every trajectory in the original batch
        starts, pos = [], 0
        for _, steps in trajs:
            starts.append(list(range(pos, pos + len(steps))))
            pos += len(steps)
        gather = torch.tensor([t for i in order for t in starts[i]], dtype=torch.long)
        base = run_all(*batch(trajs))
        moved = run_all(*batch(permuted))
        for name in base:
            close(moved[name], base[name][gather], atol=1e-6, rtol=1e-6)

    @PROPS_FEW
    @given(data=trajectory_batches(dtype=torch.float64), seed=st.integers(0, 2**16))
    def test_relabelling_ids_keeps_output(self, data, seed):
        trajs, _ = data
        rng = random.Random(seed)
        groups = sorted({g for g, _ in trajs})
        new_groups = rng.sample(range(-(2**50), 2**50), len(groups))  # injective
        gmap = dict(zip(groups, new_groups))
        states = sorted({s for _, steps in trajs for s, _ in steps})
        new_states = rng.sample(range(-1000, 1000), len(states))
        smap = dict(zip(states, new_states))
        relabelled = [(gmap[g], [(smap[s], x) for s, x in steps]) for g, steps in trajs]
        base = run_all(*batch(trajs))
        moved = run_all(*batch(relabelled))
        for name in base:
            close(moved[name], base[name], atol=1e-9, rtol=1e-9)

    @PROPS_FEW
    @given(
        a=trajectory_batches(dtype=torch.float64, groups=(0, 1)),
        b=trajectory_batches(dtype=torch.float64, groups=(10, 11, 12)),
        seed=st.integers(0, 2**16),
    )
    def test_split_invariance(self, a, b, seed):
        # groups are independent: a batch with both equals each computed alone, whatever
        # the interleaving of their trajectories
        ta, tb = a[0], b[0]
        tagged = [("a", i, t) for i, t in enumerate(ta)] + [("b", i, t) for i, t in enumerate(tb)]
        random.Random(seed).shuffle(tagged)
        joint = run_all(*batch([t for _, _, t in tagged]))
        alone = {"a": run_all(*batch(ta)), "b": run_all(*batch(tb))}
        offsets = {}
        for key, trajs in (("a", ta), ("b", tb)):
            pos, offsets[key] = 0, []
            for _, steps in trajs:
                offsets[key].append(pos)
                pos += len(steps)
        for name in joint:
            pieces = [
                alone[key][name][offsets[key][i] : offsets[key][i] + len(t[1])] for key, i, t in tagged
            ]
            expected = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)
            close(joint[name], expected, atol=1e-6, rtol=1e-6)

    def test_split_invariance_hand(self):
        # group 7 alone vs. with group 3 interleaved: covered by the insert_b tables, and
        # here for every kernel at once
        joint = run_all(*batch(HAND_MIXED))
        alone_a = run_all(*batch(HAND))
        alone_b = run_all(*batch([TRAJ_B]))
        for name in joint:
            expected = torch.cat([alone_a[name][:3], alone_b[name], alone_a[name][3:]])
            close(joint[name], expected, atol=1e-9)


class TestShapes:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_column_in_column_out(self, dtype):
        r, d, s, g = batch(HAND_MIXED, dtype)
        flat = run_all(r, d, s, g)
        col = run_all(r.reshape(-1, 1), d.reshape(-1, 1), s.reshape(-1, 1), g.reshape(-1, 1))
        for name in flat:
            assert flat[name].shape == (12,), name
            assert flat[name].dtype == dtype, name
            assert col[name].shape == (12, 1), name
            assert col[name].dtype == dtype, name
            torch.testing.assert_close(col[name].reshape(-1), flat[name])

    def test_output_has_reward_shape(self):
        # reward [N, 1] with flat done / ids -> [N, 1]; reward [N] with column others -> [N]
        r, d, s, g = batch(HAND)
        out = F.gagpo_advantage(r.reshape(-1, 1), d, s, g)
        assert out.shape == (10, 1)
        out = F.gigpo_advantage(r, d.reshape(-1, 1), s.reshape(-1, 1), g.reshape(-1, 1))
        assert out.shape == (10,)
        out = F.grpo_advantage(r.reshape(-1, 1), d, g.reshape(-1, 1))
        assert out.shape == (10, 1)
        out = F.rloo_advantage(r, d.reshape(-1, 1), g)
        assert out.shape == (10,)
        out = F.discounted_returns(r.reshape(-1, 1), d, 0.9)
        assert out.shape == (10, 1)

    def test_non_contiguous_input(self):
        r, d, s, g = batch(HAND)
        wide = torch.stack([r, torch.full_like(r, 99.0)], dim=1)  # [N, 2]
        r_col = wide[:, :1]  # [N, 1], stride 2
        assert not r_col.is_contiguous()
        base = run_all(r, d, s, g)
        col = run_all(r_col, d, s, g)
        for name in base:
            torch.testing.assert_close(col[name].reshape(-1), base[name])

    @pytest.mark.parametrize("column", [False, True])
    def test_empty_batch(self, column):
        shape = (0, 1) if column else (0,)
        r = torch.zeros(shape, dtype=torch.float64)
        d = torch.zeros(shape, dtype=torch.bool)
        ids = torch.zeros(shape, dtype=torch.long)
        outs = run_all(r, d, ids, ids)
        outs["gagpo_none"] = F.gagpo_advantage(r, d, ids, ids, normalize="none")
        outs["gigpo_none"] = F.gigpo_advantage(r, d, ids, ids, normalize="none")
        for name, out in outs.items():
            assert out.shape == shape, name
            assert out.dtype == torch.float64, name

    def test_integer_ids_of_other_widths(self):
        r, d, s, g = batch(HAND_MIXED)
        base = run_all(r, d, s, g)
        narrow = run_all(r, d, (s % 1000).int(), g.to(torch.int16))
        wide = run_all(r, d, s % 1000, g)
        for name in base:
            torch.testing.assert_close(narrow[name], wide[name])

    def test_inputs_not_modified(self):
        r, d, s, g = batch(HAND_MIXED)
        copies = [x.clone() for x in (r, d, s, g)]
        run_all(r, d, s, g)
        for x, c in zip((r, d, s, g), copies):
            assert torch.equal(x, c)


# ---------------------------------------------------------------------------
# large inputs: long trajectories and 10^4-step batches against the loop reference
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def level_loop_scan():
    """Force the level-by-level backward recursion instead of the padded-matmul path.

    Patches a private switch of ``functional._reverse_discounted_scan``; where it does
    not exist the patch is harmless and the test still checks the default path.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "_MATMUL_MAX_LEN", -1, raising=False)
        yield


class TestLargeBatches:
    def _check(self, trajs, atol=1e-8):
        reward, done, state, group = flatten(trajs)
        got = run_all(*tensors(reward, done, state, group))
        expected = reference_all(reward, done, state, group)
        for name in got:
            close(got[name], expected[name], atol=atol, rtol=1e-8)

    def test_very_long_trajectory(self):
        # longer than any padded fast path: one 1100-step trajectory among short ones
        rng = random.Random(8)
        trajs = random_trajs(rng, 1, 1100, 1100, 2, 6) + random_trajs(rng, 15, 1, 6, 2, 6)
        rng.shuffle(trajs)
        self._check(trajs, atol=1e-7)

    def test_uneven_lengths(self):
        # one 200-step trajectory and hundreds of one-step ones (padding would dominate)
        rng = random.Random(9)
        trajs = random_trajs(rng, 1, 200, 200, 3, 4) + random_trajs(rng, 400, 1, 1, 3, 4)
        rng.shuffle(trajs)
        self._check(trajs)

    @PROPS_FEW
    @given(data=trajectory_batches(dtype=torch.float64, max_traj=10, max_len=8))
    def test_level_loop_path_matches_reference(self, data):
        trajs, _ = data
        reward, done, state, group = flatten(trajs)
        expected = reference_all(reward, done, state, group)
        with level_loop_scan():
            got = run_all(*tensors(reward, done, state, group))
        for name in got:
            close(got[name], expected[name], atol=1e-6, rtol=1e-6)

    def test_long_trajectories(self):
        rng = random.Random(3)
        trajs = random_trajs(rng, 8, 200, 200, 3, 6) + random_trajs(rng, 30, 1, 20, 3, 6)
        rng.shuffle(trajs)
        self._check(trajs)

    def test_ten_thousand_steps(self):
        rng = random.Random(4)
        trajs = random_trajs(rng, 700, 1, 27, 60, 12) + random_trajs(rng, 2, 200, 200, 60, 12)
        rng.shuffle(trajs)
        assert sum(len(steps) for _, steps in trajs) >= 10_000
        self._check(trajs)

    def test_ten_thousand_steps_float32(self):
        rng = random.Random(5)
        trajs = random_trajs(rng, 950, 1, 21, 80, 10, grid=True)
        reward, done, state, group = flatten(trajs)
        assert len(reward) >= 10_000
        r, d, s, g = tensors(reward, done, state, group, torch.float32)
        eps = 0.1
        close(
            F.gagpo_advantage(r, d, s, g, eps=eps),
            ref.gagpo_advantage_loop(reward, done, state, group, eps=eps),
            atol=2e-3, rtol=1e-4,
        )
        close(
            F.gigpo_advantage(r, d, s, g, eps=eps),
            ref.gigpo_advantage_loop(reward, done, state, group, eps=eps),
            atol=2e-3, rtol=1e-4,
        )
        close(
            F.grpo_advantage(r, d, g, eps=eps),
            ref.grpo_advantage_loop(reward, done, group, eps=eps),
            atol=2e-3, rtol=1e-4,
        )


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
KERNEL_CALLS = {
    "discounted_returns": lambda r, d, s, g, **kw: F.discounted_returns(r, d, kw.get("gamma", 0.9)),
    "gagpo": lambda r, d, s, g, **kw: F.gagpo_advantage(r, d, s, g, **kw),
    "gigpo": lambda r, d, s, g, **kw: F.gigpo_advantage(r, d, s, g, **kw),
    "grpo": lambda r, d, s, g, **kw: F.grpo_advantage(r, d, g, **kw),
    "rloo": lambda r, d, s, g, **kw: F.rloo_advantage(r, d, g, **kw),
}
ALL_KERNELS = pytest.mark.parametrize("kernel", sorted(KERNEL_CALLS))
GROUPED = pytest.mark.parametrize("kernel", ["gagpo", "gigpo", "grpo", "rloo"])
NORMALIZING = pytest.mark.parametrize("kernel", ["gagpo", "gigpo", "grpo"])
WITH_STATE = pytest.mark.parametrize("kernel", ["gagpo", "gigpo"])


def good():
    return batch(HAND_MIXED)


class TestBadInput:
    @ALL_KERNELS
    def test_done_length_mismatch(self, kernel):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="done has 11 steps but reward has 12"):
            KERNEL_CALLS[kernel](r, d[:-1], s, g)

    @GROUPED
    def test_group_id_length_mismatch(self, kernel):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="group_id has 11 steps but reward has 12"):
            KERNEL_CALLS[kernel](r, d, s, g[:-1])

    @WITH_STATE
    def test_state_key_length_mismatch(self, kernel):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="state_key has 13 steps but reward has 12"):
            KERNEL_CALLS[kernel](r, d, torch.cat([s, s[:1]]), g)

    @ALL_KERNELS
    def test_two_column_input(self, kernel):
        r, d, s, g = good()
        with pytest.raises(ValueError, match=r"reward must have shape \[N\] or \[N, 1\].*\(6, 2\)"):
            KERNEL_CALLS[kernel](r.reshape(6, 2), d, s, g)
        with pytest.raises(ValueError, match=r"done must have shape \[N\] or \[N, 1\]"):
            KERNEL_CALLS[kernel](r, torch.stack([d, d], 1), s, g)
        with pytest.raises(ValueError, match=r"reward must have shape"):
            KERNEL_CALLS[kernel](torch.tensor(1.0), torch.tensor(True), s[:1], g[:1])

    @GROUPED
    def test_two_column_ids(self, kernel):
        r, d, s, g = good()
        with pytest.raises(ValueError, match=r"group_id must have shape \[N\] or \[N, 1\]"):
            KERNEL_CALLS[kernel](r, d, s, torch.stack([g, g], 1))

    @ALL_KERNELS
    def test_last_step_not_done(self, kernel):
        r, d, s, g = good()
        d = d.clone()
        d[-1] = False
        with pytest.raises(ValueError, match="last step is not done"):
            KERNEL_CALLS[kernel](r, d, s, g)

    @ALL_KERNELS
    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_reward(self, kernel, bad):
        r, d, s, g = good()
        r = r.clone()
        r[4] = bad
        with pytest.raises(ValueError, match=r"reward contains NaN or inf \(first at step 4\)"):
            KERNEL_CALLS[kernel](r, d, s, g)

    @ALL_KERNELS
    def test_integer_reward(self, kernel):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="reward must be a floating-point tensor"):
            KERNEL_CALLS[kernel](r.long(), d, s, g)

    @GROUPED
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
    def test_non_integer_group_id(self, kernel, dtype):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="group_id must be an integer tensor"):
            KERNEL_CALLS[kernel](r, d, s, g.to(dtype))

    @WITH_STATE
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
    def test_non_integer_state_key(self, kernel, dtype):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="state_key must be an integer tensor"):
            KERNEL_CALLS[kernel](r, d, s.to(dtype), g)

    @ALL_KERNELS
    @pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float32])
    def test_done_must_be_bool(self, kernel, dtype):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="done must be a bool tensor"):
            KERNEL_CALLS[kernel](r, d.to(dtype), s, g)

    @ALL_KERNELS
    def test_not_a_tensor(self, kernel):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="reward must be a torch.Tensor, got list"):
            KERNEL_CALLS[kernel](r.tolist(), d, s, g)

    @pytest.mark.parametrize("kernel", ["discounted_returns", "gagpo", "gigpo"])
    @pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan")])
    def test_gamma_outside_unit_interval(self, kernel, gamma):
        r, d, s, g = good()
        with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
            KERNEL_CALLS[kernel](r, d, s, g, gamma=gamma)

    @pytest.mark.parametrize("lmbda", [-0.01, 1.01, float("nan")])
    def test_lmbda_outside_unit_interval(self, lmbda):
        r, d, s, g = good()
        with pytest.raises(ValueError, match=r"lmbda must lie in \[0, 1\]"):
            F.gagpo_advantage(r, d, s, g, lmbda=lmbda)

    @NORMALIZING
    @pytest.mark.parametrize("normalize", ["zscore", "MEAN", "", None])
    def test_bad_normalize(self, kernel, normalize):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="normalize must be one of"):
            KERNEL_CALLS[kernel](r, d, s, g, normalize=normalize)

    @NORMALIZING
    @pytest.mark.parametrize("eps", [0.0, -1e-6, float("nan")])
    def test_bad_eps(self, kernel, eps):
        r, d, s, g = good()
        with pytest.raises(ValueError, match="eps must be > 0"):
            KERNEL_CALLS[kernel](r, d, s, g, eps=eps)

    @GROUPED
    def test_group_changes_inside_trajectory(self, kernel):
        r = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])
        d = torch.tensor([False, True, False, False, True])
        s = torch.zeros(5, dtype=torch.long)
        g = torch.tensor([0, 0, 1, 2, 2])  # step 3 switches group without a done at step 2
        with pytest.raises(ValueError, match="group_id changes at step 3 inside a trajectory"):
            KERNEL_CALLS[kernel](r, d, s, g)

    @GROUPED
    def test_group_change_at_trajectory_boundary_is_fine(self, kernel):
        r = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])
        d = torch.tensor([False, True, True, False, True])
        s = torch.zeros(5, dtype=torch.long)
        g = torch.tensor([0, 0, 1, 2, 2])
        assert torch.isfinite(KERNEL_CALLS[kernel](r, d, s, g)).all()


# ---------------------------------------------------------------------------
# never NaN
# ---------------------------------------------------------------------------
class TestNoNaN:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("value", [0.0, 1.0, -2.5, 10.0])
    def test_tied_groups_give_zero(self, dtype, value):
        # every trajectory of the group identical: every advantage is 0 (not NaN)
        trajs = [(0, [(1, 0.0), (2, value)])] * 3 + [(4, [(1, value)])] * 5
        r, d, s, g = batch(trajs, dtype)
        zeros = [0.0] * len(r)
        close(F.grpo_advantage(r, d, g), zeros, atol=0)
        close(F.rloo_advantage(r, d, g), zeros, atol=0)
        close(F.gagpo_advantage(r, d, s, g), zeros, atol=1e-6)
        # GiGPO: the episode term is 0 and every anchor group is a set of equal returns
        close(F.gigpo_advantage(r, d, s, g), zeros, atol=1e-6)
        close(F.gigpo_advantage(r, d, s, g, episode_stats="step"), zeros, atol=1e-6)

    def test_all_zero_rewards(self):
        rng = random.Random(6)
        trajs = [(g, [(s, 0.0) for s, _ in steps]) for g, steps in random_trajs(rng, 30, 1, 8, 4, 3)]
        r, d, s, g = batch(trajs)
        for name, out in run_all(r, d, s, g).items():
            assert torch.equal(out, torch.zeros_like(out)), name

    @PROPS_FEW
    @given(data=trajectory_batches())
    def test_outputs_finite(self, data):
        trajs, dtype = data
        for name, out in run_all(*batch(trajs, dtype)).items():
            assert torch.isfinite(out).all(), name

    # Regression: float32 rounding noise in a tied group used to be divided by std + eps
    # (eps = 1e-6) and come out as O(1) advantages; the kernels now compute in float64.

    def test_float32_tied_group_grpo(self):
        # six one-step trajectories with the same reward 9.025: (6 * 9.025) / 6 != 9.025 in
        # float32 and (x - mean) / (std + 1e-6) comes out as -0.466 for every trajectory
        r = torch.full((6,), 9.025, dtype=torch.float32)
        d = torch.ones(6, dtype=torch.bool)
        g = torch.zeros(6, dtype=torch.long)
        out = F.grpo_advantage(r, d, g)
        assert out.abs().max().item() < 1e-3, out.tolist()

    @pytest.mark.parametrize("kernel", ["gagpo", "gigpo"])
    def test_float32_identical_rollouts(self, kernel):
        # six identical rollouts s0 -> s1 -> s2, reward 10 at the end, default float32 and
        # gamma 0.95: every advantage should be 0 (float64 gives exactly 0); float32 gives
        # GiGPO -0.466 at s0 and GAGPO [-0.435, 0.217, 0.217] per trajectory
        r = torch.tensor([0.0, 0.0, 10.0] * 6)
        d = torch.tensor([False, False, True] * 6)
        s = torch.tensor([0, 1, 2] * 6)
        g = torch.zeros(18, dtype=torch.long)
        out = KERNEL_CALLS[kernel](r, d, s, g)
        assert torch.equal(KERNEL_CALLS[kernel](r.double(), d, s, g), torch.zeros(18, dtype=torch.float64))
        assert out.abs().max().item() < 1e-3, out.tolist()


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------
@pytest.mark.gpu
@CUDA
class TestCUDA:
    def test_kernels_match_cpu(self):
        rng = random.Random(7)
        trajs = random_trajs(rng, 200, 1, 30, 10, 6) + random_trajs(rng, 2, 200, 200, 10, 6)
        rng.shuffle(trajs)
        for dtype in (torch.float32, torch.float64):
            cpu = run_all(*batch(trajs, dtype))
            gpu = run_all(*batch(trajs, dtype, device="cuda"))
            for name in cpu:
                assert gpu[name].device.type == "cuda", name
                assert gpu[name].dtype == dtype, name
                atol = 1e-3 if dtype == torch.float32 else 1e-9
                torch.testing.assert_close(gpu[name].cpu(), cpu[name], atol=atol, rtol=1e-4)

    def test_hand_table_on_cuda(self):
        r, d, s, g = batch(HAND, device="cuda")
        close(F.gagpo_advantage(r, d, s, g, normalize="none"), HAND_GAGPO[(0.8, "none")], atol=1e-5)
        close(F.gigpo_advantage(r, d, s, g), HAND_GIGPO[("trajectory", "mean_std", 1.0)], atol=1e-5)
        close(F.grpo_advantage(r, d, g), HAND_GRPO["mean_std"], atol=1e-5)
        close(F.rloo_advantage(r, d, g), HAND_RLOO, atol=1e-5)

    @pytest.mark.parametrize("kernel", sorted(KERNEL_CALLS))
    def test_device_mismatch(self, kernel):
        r, d, s, g = batch(HAND)
        with pytest.raises(ValueError, match="done is on cuda.* but reward is on cpu"):
            KERNEL_CALLS[kernel](r, d.cuda(), s, g)
        if kernel != "discounted_returns":
            with pytest.raises(ValueError, match="group_id is on cuda.* but reward is on cpu"):
                KERNEL_CALLS[kernel](r, d, s, g.cuda())
        if kernel in ("gagpo", "gigpo"):
            with pytest.raises(ValueError, match="state_key is on cuda.* but reward is on cpu"):
                KERNEL_CALLS[kernel](r, d, s.cuda(), g)

    def test_empty_on_cuda(self):
        r = torch.zeros(0, device="cuda")
        d = torch.zeros(0, dtype=torch.bool, device="cuda")
        ids = torch.zeros(0, dtype=torch.long, device="cuda")
        for name, out in run_all(r, d, ids, ids).items():
            assert out.shape == (0,) and out.device.type == "cuda", name


if __name__ == "__main__":
    pytest.main([__file__, "-v"])
