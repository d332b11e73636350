"""Shared fixtures of the kernel tests: which backends run here, on which device, and the interpreter run.

The Triton kernels run compiled on a CUDA device, or on CPU under Triton's interpreter. The interpreter
is switched on by ``TRITON_INTERPRET=1`` *before* the kernels are defined (at import), and switching it
on for the whole test session would also make ``triton`` the default backend of every op. So on a
machine without CUDA the ``triton``-marked tests of this directory run once more in a fresh ``pytest``
process with the interpreter on (``interpreter_session``), and each Triton test file has one test that
checks its own results there (``run_triton_tests_under_interpreter``).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinylm.kernels.registry import ENV_VAR
from tinylm.kernels.triton_support import HAS_TRITON, INTERPRETED, triton_available

CUDA = torch.cuda.is_available()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "triton: runs a Triton backend (compiled on CUDA, else interpreted)")


@pytest.fixture(params=["torch", pytest.param("triton", marks=pytest.mark.triton)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend of the op under test; ``triton`` is skipped where it cannot run in this process."""
    if request.param == "triton" and not triton_available():
        pytest.skip(
            "triton backend not runnable in this process (covered by the interpreter subprocess test)"
        )
    return request.param


@pytest.fixture
def device() -> str:
    """Where the tensors go: CUDA when there is one, CPU without one or under the interpreter."""
    return "cuda" if CUDA and not INTERPRETED else "cpu"


@pytest.fixture(scope="session")
def interpreter_session() -> subprocess.CompletedProcess:
    """One ``pytest -m 'triton and not gpu'`` run of this directory with ``TRITON_INTERPRET=1``.

    Shared by the test files (one process start, torch import included, instead of one per file).
    """
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if INTERPRETED:
        pytest.skip("already running under the interpreter")
    if CUDA:
        pytest.skip("CUDA device here: the triton tests ran compiled in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop(ENV_VAR, None)
    here = Path(__file__).parent
    cmd = [sys.executable, "-m", "pytest", str(here), "-q", "-rA", "--tb=short", "-p", "no:cacheprovider"]
    cmd += ["-m", "triton and not gpu"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=here)


@pytest.fixture
def run_triton_tests_under_interpreter(interpreter_session):
    """Assert that the interpreted run passed every ``triton`` test of ``test_file``, skipping none."""

    def check(test_file: str) -> None:
        proc = interpreter_session
        name = f"{Path(test_file).name}:"  # matches "<file>::test" and "<file>:<line>: reason"
        lines = [ln for ln in proc.stdout.splitlines() if name in ln and ln.split(" ")[0].isupper()]
        report = f"exit {proc.returncode}; this file's results:\n" + "\n".join(lines)
        report += f"\n--- output tail ---\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
        assert any(ln.startswith("PASSED") for ln in lines), report
        assert not [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))], report
        assert not [ln for ln in lines if "not runnable" in ln], report  # the triton backend really ran
        assert proc.returncode in (0, 1), report  # 1: some test failed (maybe in another file); else a crash

    return check


def assert_close_f64(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """Compare with a float64 oracle: elementwise ``|a - e| <= tol * (|e| + max(max|e|, 1))``.

    The absolute part scales with the largest value (sums over many rows grow) but not below ``tol``:
    a result that cancels to ~0 (the RMSNorm dx of a one-element row) carries the rounding error of its
    O(1) terms.
    """
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        rtol=tol,
        atol=tol * max(scale, 1.0),
        msg=lambda m: f"{what}: {m}",
    )


@pytest.fixture(name="assert_close_f64")
def assert_close_f64_fixture():
    """``assert_close_f64(actual, expected, tol)`` for the test modules (they cannot import conftest)."""
    return assert_close_f64
