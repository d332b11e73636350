"""Kernel registry: each op name maps to backends (``cuda``, ``triton``, ``torch``), best available first.

A backend is a function plus an availability check. ``dispatch(op, backend=None)`` returns the function to
call: the forced backend if one is given (argument, then a preference set with ``preferring``, then
``TINYLM_KERNELS_BACKEND``), else the first available backend in priority order that runs on the inputs'
device type (``device_types``; a CUDA or Triton kernel never receives CPU tensors unless it says it can).
The plain-PyTorch ``torch`` backend is always available, on every device, and is the oracle the other
backends are tested against.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

log = logging.getLogger("tinylm.kernels")

BACKEND_PRIORITY = ("cuda", "triton", "torch")
ENV_VAR = "TINYLM_KERNELS_BACKEND"


@dataclass(frozen=True)
class Backend:
    """One implementation of an op: the callable and a check that says whether it can run here."""

    name: str
    fn: Callable
    available: Callable[[], bool]
    why_unavailable: Callable[[], str] = lambda: ""
    device_types: tuple[str, ...] | None = None  # None: any device

    def runs_on(self, device: torch.device | str | None) -> bool:
        """Whether this backend takes tensors on ``device`` (None: no device given, assume yes)."""
        if device is None or self.device_types is None:
            return True
        return torch.device(device).type in self.device_types


_OPS: dict[str, dict[str, Backend]] = {}
_logged: set[tuple[str, str]] = set()
_preferred: dict[str, str] = {}


@contextlib.contextmanager
def preferring(choices: dict[str, str]) -> Iterator[None]:
    """Within the block, run each op in ``choices`` (op -> backend) on that backend when it can.

    For ``torch.compile``: the plain-PyTorch backends are visible to Inductor, which fuses them with their
    neighbours (a residual add into RMSNorm, RoPE into the KV-cache write), where a hand-written kernel is
    one opaque launch. The choice is made when a function is traced, so wrap the calls that compile.
    """
    for op, backend in choices.items():
        if backend not in backends(op):
            raise ValueError(f"op {op!r} has no {backend!r} backend; it has: {', '.join(backends(op))}")
    saved = dict(_preferred)
    _preferred.update(choices)
    try:
        yield
    finally:
        _preferred.clear()
        _preferred.update(saved)


def register_backend(
    op: str,
    backend: str,
    available: Callable[[], bool] = lambda: True,
    why_unavailable: Callable[[], str] = lambda: "",
    device_types: tuple[str, ...] | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the ``backend`` implementation of ``op``.

    ``available`` says whether it can run on this machine at all (and ``why_unavailable`` why not);
    ``device_types`` lists the tensor device types it accepts (None: any).
    """
    if backend not in BACKEND_PRIORITY:
        raise ValueError(f"unknown kernel backend {backend!r}; allowed: {', '.join(BACKEND_PRIORITY)}")

    def wrap(fn: Callable) -> Callable:
        backends = _OPS.setdefault(op, {})
        if backend in backends:
            raise KeyError(f"kernel op {op!r} already has a {backend!r} backend")
        backends[backend] = Backend(backend, fn, available, why_unavailable, device_types)
        return fn

    return wrap


def ops() -> list[str]:
    """Names of the registered ops."""
    return sorted(_OPS)


def backends(op: str) -> dict[str, Backend]:
    """The registered backends of ``op`` (raises with the known op names on a miss)."""
    if op not in _OPS:
        raise KeyError(f"unknown kernel op {op!r}; known ops: {', '.join(ops()) or '(none)'}")
    return _OPS[op]


def choose(op: str, backend: str | None = None, device: torch.device | str | None = None) -> Backend:
    """The backend that ``op`` runs on for tensors on ``device``: forced by argument or environment,
    else the best available one that runs on that device type."""
    impls = backends(op)
    preferred = _preferred.get(op)
    if backend is None and preferred is not None and impls[preferred].available():
        if impls[preferred].runs_on(device):
            return impls[preferred]
    forced = backend or os.environ.get(ENV_VAR) or None
    if forced is not None:
        if forced not in BACKEND_PRIORITY:
            raise ValueError(
                f"unknown kernel backend {forced!r} for op {op!r}; allowed: {', '.join(BACKEND_PRIORITY)}"
            )
        if forced not in impls:
            raise ValueError(f"op {op!r} has no {forced!r} backend; it has: {', '.join(impls)}")
        chosen = impls[forced]
        if not chosen.available():
            raise RuntimeError(
                f"backend {forced!r} for op {op!r} is not available: {chosen.why_unavailable()}"
            )
        if not chosen.runs_on(device):
            raise RuntimeError(
                f"backend {forced!r} for op {op!r} takes {'/'.join(chosen.device_types or ())} tensors, "
                f"got {torch.device(device).type} tensors; move them or choose another backend"
            )
        return chosen
    for name in BACKEND_PRIORITY:
        impl = impls.get(name)
        if impl is None or not impl.runs_on(device):
            continue
        if impl.available():
            if (op, name) not in _logged:
                _logged.add((op, name))
                log.info("tinylm.kernels: %s uses the %s backend", op, name)
            return impl
        if (op, name) not in _logged:
            _logged.add((op, name))
            log.info("tinylm.kernels: %s skips the %s backend: %s", op, name, impl.why_unavailable())
    raise RuntimeError(f"no available backend for op {op!r}")


def _chosen(op: str, backend: str | None, device_type: str | None, preferred: str | None = None) -> str:
    return choose(op, backend, device_type).name


# Run, not traced, under torch.compile (availability checks hash files and probe builds: graph breaks);
# the compiled code keeps the backend chosen when it was compiled. This is what the decorator
# torch.compiler.assume_constant_result does, without importing torch._dynamo (seconds) at import time.
_chosen._dynamo_marked_constant = True  # type: ignore[attr-defined]


def dispatch(op: str, backend: str | None = None, device: torch.device | str | None = None) -> Callable:
    """The function implementing ``op`` on the chosen backend for tensors on ``device``."""
    device_type = None if device is None else torch.device(device).type
    # the preference is an argument, so a compiled function guards on it (a constant per trace)
    return backends(op)[_chosen(op, backend, device_type, _preferred.get(op))].fn


def info_table() -> list[dict[str, str]]:
    """One row per (op, backend): availability, reason when unavailable, and whether it is the choice."""
    rows = []
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    for op in ops():
        chosen = choose(op, device=default_device).name
        for name, impl in sorted(backends(op).items(), key=lambda kv: BACKEND_PRIORITY.index(kv[0])):
            ok = impl.available()
            rows.append(
                {
                    "op": op,
                    "backend": name,
                    "available": "yes" if ok else "no",
                    "chosen": "*" if name == chosen else "",
                    "note": "" if ok else impl.why_unavailable(),
                }
            )
    return rows
