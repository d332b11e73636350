"""tinylm.kernels: fused ops for TinyLM-Lab behind a registry of backends (cuda, triton, torch).

Every op has a plain-PyTorch reference, so importing this package needs no GPU, nvcc or Triton.
``python -m tinylm.kernels info`` prints which backend each op uses here.
"""

from tinylm.kernels.registry import (
    BACKEND_PRIORITY,
    ENV_VAR,
    backends,
    choose,
    dispatch,
    info_table,
    ops,
    register_backend,
)
from tinylm.kernels.rms_norm import rms_norm, rms_norm_reference

__all__ = [
    "BACKEND_PRIORITY",
    "ENV_VAR",
    "backends",
    "choose",
    "dispatch",
    "info_table",
    "ops",
    "register_backend",
    "rms_norm",
    "rms_norm_reference",
]
