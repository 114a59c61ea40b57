"""The environment workers' wire format: tensors travel as numpy arrays, and nothing is lost."""

from __future__ import annotations

import pickle
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict, lazy_stack
from torchrl.data.llm import History

from torchrl_gagpo.collectors.env_process import _NUMPY_DTYPES, EnvProcess, EnvWorkerError, encode_message


def roundtrip(obj):
    return pickle.loads(encode_message(obj))


def torch_reduced(obj) -> bool:
    """Whether torch's own tensor reducer wrote ``obj`` (no numpy array in the record)."""
    return b"from_numpy" not in encode_message(obj)


@pytest.mark.parametrize("dtype", sorted(_NUMPY_DTYPES, key=str))
def test_numpy_dtypes_travel_as_arrays_and_come_back_equal(dtype):
    x = (torch.arange(12) % 3).reshape(3, 4).to(dtype)
    y = roundtrip(x)
    assert type(y) is torch.Tensor and y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, x)
    assert not torch_reduced(x)
    y.zero_()  # a received tensor is writable
    assert y.is_contiguous()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("make", [
    lambda: torch.ones(3, dtype=torch.bfloat16),
    lambda: torch.ones(3, requires_grad=True),
    lambda: torch.ones(3, dtype=torch.complex64).conj(),
    lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
    lambda: torch.tensor(2.0).expand(1000, 1000),
], ids=["bfloat16", "requires_grad", "conj", "nested", "expanded"])
def test_other_tensors_keep_torch_reducer(make):
    x = make()
    assert torch_reduced(x) or x.is_nested  # a nested tensor's reducer holds plain buffers, sent as arrays
    y = roundtrip(x)
    assert type(y) is type(x) and y.dtype == x.dtype and y.requires_grad == x.requires_grad
    if x.is_nested:
        assert all(torch.equal(a, b) for a, b in zip(y.unbind(), x.unbind(), strict=True))
    else:
        assert torch.equal(y.resolve_conj().detach(), x.resolve_conj().detach())
    if not x.is_nested and 0 in x.stride():
        assert len(encode_message(x)) < 10_000  # the expanded scalar, not a million copies


def test_parameters_and_sparse_tensors_come_back_whole():
    x = torch.nn.Parameter(torch.arange(3.0))
    y = roundtrip(x)
    assert isinstance(y, torch.nn.Parameter) and y.requires_grad and torch.equal(y.detach(), x.detach())
    sparse = torch.eye(3).to_sparse()
    back = roundtrip(sparse)
    assert back.is_sparse and torch.equal(back.to_dense(), torch.eye(3))


def test_a_view_sends_only_its_elements():
    base = torch.arange(1_000_000, dtype=torch.float64)
    view = base[10:20]
    message = encode_message(view)
    assert len(message) < 1_000  # torch's reducer would send the whole 8 MB storage
    assert torch.equal(pickle.loads(message), view)
    strided = base[:40].reshape(4, 10).t()  # not contiguous
    assert torch.equal(roundtrip(strided), strided)


def test_a_step_tensordict_round_trips():
    prompt = History(role=["system", "user"], content=["be brief", "go"], batch_size=(2,))
    row = TensorDict({"observation": "You are in a room.", "done": torch.tensor([False]),
                      "reward": torch.tensor([0.5]), "state_key": torch.tensor([2 ** 62 + 7]),
                      "admissible_actions": ["look", "go north"], "history": {"prompt": prompt}}, batch_size=())
    td = lazy_stack([row, row.clone()])
    back = roundtrip(("ok", td))[1]
    assert sorted(back.keys(True, True)) == sorted(td.keys(True, True))
    for key in ("done", "reward", "state_key"):
        assert torch.equal(back[key], td[key])
    assert back[0]["observation"] == "You are in a room."
    assert back[1]["admissible_actions"] == ["look", "go north"]
    assert back[0]["history", "prompt"].content == ["be brief", "go"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), min_size=0, max_size=20),
       st.sampled_from([torch.int64, torch.float64, torch.float32, torch.bool]))
def test_values_survive_exactly(values, dtype):
    x = torch.tensor(values, dtype=torch.int64).to(dtype)
    assert torch.equal(roundtrip(x), x)


class _Replies:
    """An environment whose ``call`` answers can be made unpicklable (a lock)."""

    num_tasks = 1

    def answer(self, picklable: bool):
        return 42 if picklable else threading.Lock()

    def close(self):
        pass


def test_what_does_not_pickle_fails_clearly_and_the_worker_survives():
    worker = EnvProcess(_Replies, timeout=120, start_timeout=300)
    try:
        worker.start()
        with pytest.raises(TypeError, match="do not pickle"):
            worker.call("answer", threading.Lock())  # a request that does not pickle: nothing is sent
        with pytest.raises(EnvWorkerError, match="environment raised during call"):
            worker.call("answer", False)  # a reply that does not pickle: reported as the env's error
        assert worker.alive and worker.call("answer", True) == 42  # the pipe is still in step
    finally:
        worker.close()
