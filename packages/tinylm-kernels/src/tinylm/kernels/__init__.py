"""tinylm.kernels: fused ops for TinyLM-Lab behind a registry of backends (cuda, triton, torch).

Every op has a plain-PyTorch reference, so importing this package needs no GPU, nvcc or Triton: the
Triton modules import without Triton and then register backends that report themselves unavailable.
``python -m tinylm.kernels info`` prints which backend each op uses here.
"""

from tinylm.kernels.cross_entropy import fused_linear_cross_entropy, fused_linear_cross_entropy_reference
from tinylm.kernels.decode_attention import (
    decode_attention,
    decode_attention_reference,
    rope_decode_attention,
    rope_decode_attention_reference,
)
from tinylm.kernels.linear import KernelLinear, linear, linear_reference, use_kernel_linears
from tinylm.kernels.registry import (
    BACKEND_PRIORITY,
    ENV_VAR,
    backends,
    choose,
    dispatch,
    info_table,
    ops,
    preferring,
    register_backend,
)
from tinylm.kernels.rms_norm import rms_norm, rms_norm_reference
from tinylm.kernels.rope import apply_rope, apply_rope_reference
from tinylm.kernels.swiglu import swiglu, swiglu_reference

# isort: split
# Backends register themselves on import and report themselves unavailable (with a logged reason)
# without Triton, a GPU, nvcc or ninja. The CUDA extension is built on first use.
from tinylm.kernels import (  # noqa: F401
    cross_entropy_triton,
    decode_attention_triton,
    int4_gemv_triton,
    int8_gemv_triton,
    linear_triton,
    rms_norm_cuda,
    rms_norm_triton,
    rope_triton,
    swiglu_triton,
)

__all__ = [
    "BACKEND_PRIORITY",
    "ENV_VAR",
    "KernelLinear",
    "apply_rope",
    "apply_rope_reference",
    "backends",
    "choose",
    "decode_attention",
    "decode_attention_reference",
    "dispatch",
    "fused_linear_cross_entropy",
    "fused_linear_cross_entropy_reference",
    "info_table",
    "linear",
    "linear_reference",
    "ops",
    "preferring",
    "register_backend",
    "rms_norm",
    "rms_norm_reference",
    "rope_decode_attention",
    "rope_decode_attention_reference",
    "swiglu",
    "swiglu_reference",
    "use_kernel_linears",
]
