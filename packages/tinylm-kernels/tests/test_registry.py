"""The kernel registry: choice, forcing by argument and environment, errors, and the info command."""

import pytest
import torch

from tinylm.kernels import ENV_VAR, backends, choose, dispatch, info_table, register_backend
from tinylm.kernels import registry as reg
from tinylm.kernels.__main__ import main


@pytest.fixture
def toy_op():
    calls = []

    @register_backend("toy_add", "torch")
    def toy_torch(x):
        calls.append("torch")
        return x + 1

    @register_backend("toy_add", "triton", available=lambda: False, why_unavailable=lambda: "no triton here")
    def toy_triton(x):
        calls.append("triton")
        return x + 1

    yield calls
    del reg._OPS["toy_add"]


def test_best_available_is_chosen(toy_op, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert choose("toy_add").name == "torch"
    assert dispatch("toy_add")(torch.zeros(2)).tolist() == [1.0, 1.0]
    assert toy_op == ["torch"]


def test_forcing_an_unavailable_backend_says_why(toy_op, monkeypatch):
    with pytest.raises(RuntimeError, match="no triton here"):
        choose("toy_add", backend="triton")
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="no triton here"):
        dispatch("toy_add")


def test_device_types_keep_gpu_backends_off_cpu_tensors(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)

    @register_backend("toy_dev", "torch")
    def toy_torch(x):
        return x

    @register_backend("toy_dev", "cuda", device_types=("cuda",))
    def toy_cuda(x):
        return x

    try:
        assert choose("toy_dev", device="cuda").name == "cuda"
        assert choose("toy_dev", device=torch.device("cpu")).name == "torch"
        with pytest.raises(RuntimeError, match="takes cuda tensors, got cpu tensors"):
            choose("toy_dev", backend="cuda", device="cpu")
    finally:
        del reg._OPS["toy_dev"]


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    assert choose("rms_norm").name == "torch"
    monkeypatch.setenv(ENV_VAR, "cuda")
    if torch.cuda.is_available():
        assert choose("rms_norm", device="cuda").name == "cuda"
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        choose("rms_norm", device="cpu")  # a forced CUDA kernel never takes CPU tensors


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(KeyError, match="known ops: .*rms_norm"):
        backends("no_such_op")
    with pytest.raises(ValueError, match="allowed: cuda, triton, torch"):
        choose("rms_norm", backend="fortran")
    with pytest.raises(ValueError, match="allowed"):
        register_backend("x", "opencl")


def test_duplicate_backend_raises(toy_op):
    with pytest.raises(KeyError, match="already has"):
        register_backend("toy_add", "torch")(lambda x: x)


def test_info_lists_every_op_and_the_choice(toy_op, capsys, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    rows = {(r["op"], r["backend"]): r for r in info_table()}
    for op in {op for op, _ in rows}:
        assert sum(r["chosen"] == "*" for (o, _), r in rows.items() if o == op) == 1  # exactly one choice
    if not torch.cuda.is_available():
        assert rows[("rms_norm", "torch")]["chosen"] == "*" or rows[("rms_norm", "triton")]["chosen"] == "*"
    assert rows[("toy_add", "triton")]["available"] == "no"
    assert rows[("toy_add", "triton")]["note"] == "no triton here"
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "rms_norm" in out and "toy_add" in out and "no triton here" in out


def test_preferring_picks_a_backend_for_the_block_only() -> None:
    from tinylm.kernels import registry

    op = "test_preferring_op"
    registry.register_backend(op, "triton")(lambda: "triton")
    registry.register_backend(op, "torch")(lambda: "torch")
    try:
        assert registry.choose(op).name == "triton"
        with registry.preferring({op: "torch"}):
            assert registry.choose(op).name == "torch" and registry.dispatch(op)() == "torch"
            assert registry.choose(op, backend="triton").name == "triton"  # an explicit argument wins
        assert registry.choose(op).name == "triton"
        with pytest.raises(ValueError, match="has no 'cuda' backend; it has: triton, torch"):
            with registry.preferring({op: "cuda"}):
                pass
    finally:
        registry._OPS.pop(op)
