"""The public kernel API that the modules build on: values against the kernels and hand oracles,
bad input, and no module reaching into ``functional``'s private helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from torchrl_gagpo import GAGPOEstimator, GroupedEstimatorBase, GroupedGAE
from torchrl_gagpo import functional as F

ROOT = Path(__file__).resolve().parent.parent
R = torch.tensor([0.0, 10.0, 0.0, 0.0, 1.0])
D = torch.tensor([False, True, False, True, True])
S = torch.tensor([0, 1, 0, 2, 0])
G = torch.tensor([0, 0, 0, 0, 1])


def test_gagpo_terms_by_hand():
    # group 0: returns 9.5, 10, 0, 0 (gamma 0.95); V(s0) = (9.5 + 0) / 2 = 4.75
    t = F.gagpo_terms(R, D, S, G, gamma=0.95, lmbda=1.0, normalize="none")
    assert t.value.tolist() == pytest.approx([4.75, 10.0, 4.75, 0.0, 1.0])
    assert t.next_value.tolist() == pytest.approx([10.0, 0.0, 0.0, 0.0, 0.0])
    # lmbda = 1: A = G - V
    assert t.raw_advantage.tolist() == pytest.approx([4.75, 0.0, -4.75, 0.0, 0.0])
    assert torch.equal(t.advantage, t.raw_advantage)


@pytest.mark.parametrize(
    "kwargs", [{}, {"singleton_value": "backup"}, {"std_floor": 0.5}, {"normalize": "mean"}]
)
def test_gagpo_terms_advantage_is_gagpo_advantage(kwargs):
    t = F.gagpo_terms(R, D, S, G, **kwargs)
    assert torch.equal(t.advantage, F.gagpo_advantage(R, D, S, G, **kwargs))


def test_gagpo_terms_batch_scope_standardises_over_every_step():
    raw = F.gagpo_terms(R, D, S, G, normalize="none").raw_advantage
    batch = F.gagpo_terms(R, D, S, G, normalize="mean_std", normalize_scope="batch").advantage
    assert batch.tolist() == pytest.approx(((raw - raw.mean()) / (raw.std() + 1e-6)).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="normalize_scope"):
        F.gagpo_terms(R, D, S, G, normalize_scope="world")


def test_gagpo_terms_keep_reward_dtype_and_shape():
    t = F.gagpo_terms(R.reshape(-1, 1).double(), D.reshape(-1, 1), S, G)
    assert all(x.shape == (5, 1) and x.dtype == torch.float64 for x in t)


def test_group_and_state_group_index():
    index, n = F.group_index(torch.tensor([9, 9, -3, 9]))
    assert (index.tolist(), n) == ([1, 1, 0, 1], 2)
    index, n = F.state_group_index(S, G)
    assert n == 4  # (0,0), (0,1), (0,2), (1,0)
    assert index[0] == index[2] and len({int(index[i]) for i in (0, 1, 3, 4)}) == 4
    with pytest.raises(ValueError, match="integer"):
        F.state_group_index(S.float(), G)
    with pytest.raises(ValueError, match="steps"):
        F.state_group_index(S[:3], G)


def test_check_group_structure():
    F.check_group_structure(G, D)
    with pytest.raises(ValueError, match="inside a trajectory"):
        F.check_group_structure(torch.tensor([0, 1, 1]), torch.tensor([False, True, True]))
    with pytest.raises(ValueError, match="bool"):
        F.check_group_structure(G, D.float())


def test_next_in_trajectory():
    assert F.next_in_trajectory(torch.tensor([1.0, 2.0, 3.0, 4.0]), D[:4]).tolist() == [2.0, 0.0, 4.0, 0.0]
    with pytest.raises(ValueError, match="NaN"):
        F.next_in_trajectory(torch.tensor([float("nan"), 1.0]), torch.tensor([False, True]))


@pytest.mark.parametrize("bad, match", [
    ({"gamma": 1.5}, "gamma"), ({"lmbda": -0.1}, "lmbda"), ({"normalize": "z"}, "normalize"),
    ({"normalize": "mean", "eps": 0.0}, "eps"), ({"std_floor": float("nan")}, "std_floor"),
    ({"singleton_value": "mc"}, "singleton_value"), ({"episode_stats": "token"}, "episode_stats"),
])
def test_validate_options_names_the_option(bad, match):
    with pytest.raises(ValueError, match=match):
        F.validate_options(**bad)


def test_estimator_names_and_base_class():
    assert GAGPOEstimator is GroupedGAE and issubclass(GroupedGAE, GroupedEstimatorBase)


def _private_functional_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for a in node.names if a.name == "functional"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("functional"):
            found += [f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}" for a in node.names
                      if a.name.startswith("_")]
    return found


def test_no_private_kernel_import_outside_functional():
    files = [p for d in ("torchrl_gagpo", "examples", "benchmarks") for p in (ROOT / d).rglob("*.py")
             if p.name != "functional.py"]
    assert len(files) > 20
    assert [u for p in files for u in _private_functional_uses(p)] == []
