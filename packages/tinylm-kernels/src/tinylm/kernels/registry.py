"""Kernel registry: each op name maps to backends (``cuda``, ``triton``, ``torch``), best available first.

A backend is a function plus an availability check. ``dispatch(op, backend=None)`` returns the function to
call: the forced backend if one is given (argument, then ``TINYLM_KERNELS_BACKEND``), else the first
available backend in priority order. The plain-PyTorch ``torch`` backend is always available and is the
oracle the other backends are tested against.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

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


_OPS: dict[str, dict[str, Backend]] = {}
_logged: set[tuple[str, str]] = set()


def register_backend(
    op: str,
    backend: str,
    available: Callable[[], bool] = lambda: True,
    why_unavailable: Callable[[], str] = lambda: "",
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the ``backend`` implementation of ``op``."""
    if backend not in BACKEND_PRIORITY:
        raise ValueError(f"unknown kernel backend {backend!r}; allowed: {', '.join(BACKEND_PRIORITY)}")

    def wrap(fn: Callable) -> Callable:
        backends = _OPS.setdefault(op, {})
        if backend in backends:
            raise KeyError(f"kernel op {op!r} already has a {backend!r} backend")
        backends[backend] = Backend(backend, fn, available, why_unavailable)
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


def choose(op: str, backend: str | None = None) -> Backend:
    """The backend that ``op`` runs on: forced by argument or environment, else the best available."""
    impls = backends(op)
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
        return chosen
    for name in BACKEND_PRIORITY:
        impl = impls.get(name)
        if impl is None:
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


def dispatch(op: str, backend: str | None = None) -> Callable:
    """The function implementing ``op`` on the chosen backend."""
    return choose(op, backend).fn


def info_table() -> list[dict[str, str]]:
    """One row per (op, backend): availability, reason when unavailable, and whether it is the choice."""
    rows = []
    for op in ops():
        chosen = choose(op).name
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
