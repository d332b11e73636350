"""What the Triton backends share: the lazy ``triton`` import, their availability check, input checks.

Triton is optional. Without it, ``triton`` and ``tl`` below are stand-ins that let the kernel modules be
imported (``@triton.jit`` returns the function untouched, ``tl.constexpr`` is only an annotation), and
every Triton backend registers itself as unavailable, saying why.

Where the kernels run: compiled, on CUDA tensors; or under Triton's interpreter, on CPU tensors, when
``TRITON_INTERPRET=1`` was set *before* these modules were imported (``@triton.jit`` reads it when it
decorates a kernel, so setting it later has no effect; ``INTERPRETED`` records the value seen then).
The backends register with ``device_types=DEVICE_TYPES``, so the registry sends other tensors to another
backend; called directly on such tensors, a backend serves them with its reference (``kernels_take``).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # keep the kernel modules importable; the backends then report themselves unavailable
    HAS_TRITON = False
    triton = SimpleNamespace(jit=lambda fn=None, **_: fn if fn is not None else (lambda f: f))
    tl = SimpleNamespace(constexpr=None)

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The tensor device types the kernels take (the registry dispatches other tensors to another backend).
DEVICE_TYPES = ("cpu",) if INTERPRETED else ("cuda",)


def triton_available() -> bool:
    """True when Triton is installed and can run here: a CUDA device, or the interpreter (CPU tensors)."""
    return HAS_TRITON and (INTERPRETED or torch.cuda.is_available())


def why_triton_unavailable() -> str:
    """The reason ``triton_available()`` is False ('' when it is True)."""
    if not HAS_TRITON:
        return "triton is not installed"
    if not triton_available():
        return "no CUDA device (set TRITON_INTERPRET=1 before importing tinylm.kernels to interpret on CPU)"
    return ""


def accumulator_dtype(dtype: torch.dtype):
    """The Triton type the kernels compute in: float64 for float64 inputs, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def kernels_take(op: str, dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES, **tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels run on these tensors; raises a clear error on inputs they cannot take.

    False for tensors off CUDA when not interpreting (a CPU model on a GPU host, say): the backend then
    serves them with the plain-PyTorch reference, since the registry picks a backend without seeing the
    tensors (the CUDA backend does the same). Raises on a dtype outside ``dtypes``, on tensors spread
    over several devices, and on non-CPU tensors under the interpreter.
    """
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise ValueError(f"{op} (triton backend): tensors on different devices: {sorted(map(str, devices))}")
    device = devices.pop()
    if INTERPRETED and device.type != "cpu":
        raise ValueError(
            f"{op} (triton backend, interpreter): tensors are on {device}; "
            "the interpreter (TRITON_INTERPRET=1) takes cpu tensors"
        )
    if not INTERPRETED and device.type != "cuda":
        return False
    allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
    for name, t in tensors.items():
        if t.dtype not in dtypes:
            raise TypeError(f"{op} (triton backend): {name} has dtype {t.dtype}; allowed: {allowed}")
    return True


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (at least 1): Triton block sizes must be powers of two."""
    return 1 << max(0, int(n) - 1).bit_length()


def launchable(kernel):
    """``kernel`` as ``torch.compile`` should see it, through ``torch.library.wrap_triton`` (so a
    ``triton_op`` launching it stays inside a compiled graph); the kernel itself under the interpreter or
    without Triton."""
    if INTERPRETED or not HAS_TRITON:
        return kernel
    from torch.library import wrap_triton

    return wrap_triton(kernel)
