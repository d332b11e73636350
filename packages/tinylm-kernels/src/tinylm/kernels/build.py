"""Just-in-time build of the CUDA sources in ``csrc/`` (after NVlabs/stylegan3 ``torch_utils/custom_ops.py``).

The wheel ships the sources, not binaries. On first use ``build()`` compiles them with
``torch.utils.cpp_extension.load`` (nvcc + ninja) into a cache directory whose name carries everything the
binary depends on: Python, torch and CUDA versions, the GPU architectures and a hash of the sources and
flags. A build directory is never shared across torch versions (torch's lock file in a stale shared
directory can hang a build), and a directory that already holds a finished build is loaded directly, so
``python -m tinylm.kernels build`` ahead of time leaves machines without nvcc or ninja able to use it.

Cache root: ``$TINYLM_KERNELS_CACHE``, else ``$XDG_CACHE_HOME/tinylm/kernels`` (``~/.cache/tinylm/kernels``).
Architectures: the ``arch_list`` argument, else ``$TORCH_CUDA_ARCH_LIST``, else those of the visible GPUs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger("tinylm.kernels")

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("rms_norm.cu", "rms_norm_binding.cpp")  # compiled
HEADERS = ("rms_norm_utils.cuh",)  # included: part of the hash
CACHE_ENV = "TINYLM_KERNELS_CACHE"
EXT_NAME = "tinylm_kernels_cuda"
CXX_FLAGS = ("-O3",)
CUDA_FLAGS = ("-O3", "--expt-relaxed-constexpr")
DONE_MARKER = "build.done"
STALE_LOCK_S = 600.0  # a torch build lock older than this is left over from a killed build

_lock = threading.Lock()
_loaded: dict[Path, ModuleType] = {}


def find_cuda_home() -> Path | None:
    """The CUDA toolkit with nvcc and headers: ``$CUDA_HOME``, ``$CUDA_PATH``, nvcc on PATH, /usr/local/cuda.

    Unlike torch's guess, a directory counts only if it has both ``bin/nvcc`` and ``include/cuda_runtime.h``
    (an ``nvcc`` wrapper script in /usr/local/bin does not make /usr/local a CUDA home).
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if nvcc := shutil.which("nvcc"):
        candidates += [str(Path(nvcc).parent.parent), str(Path(nvcc).resolve().parent.parent)]
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and (Path(c) / "bin" / "nvcc").exists() and (Path(c) / "include" / "cuda_runtime.h").exists():
            return Path(c)
    return None


def find_ninja() -> str | None:
    """Path of the ninja executable, from PATH or from the ``ninja`` Python package."""
    if path := shutil.which("ninja"):
        return path
    try:
        import ninja  # type: ignore[import-not-found]
    except ImportError:
        return None
    exe = Path(ninja.BIN_DIR) / "ninja"
    return str(exe) if exe.exists() else None


def default_arch_list() -> str:
    """``$TORCH_CUDA_ARCH_LIST`` or the compute capabilities of the visible GPUs, e.g. ``"9.0"``."""
    if env := os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return env
    if not torch.cuda.is_available():
        raise RuntimeError(
            "no CUDA device to build for: name the arch (python -m tinylm.kernels build --arch 9.0, "
            "build(arch_list='9.0')) or set TORCH_CUDA_ARCH_LIST"
        )
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps)


def gencode_flags(arch_list: str) -> list[str]:
    """nvcc ``-gencode`` flags for an arch list such as ``"8.0;9.0+PTX"`` or ``"9.0a"``."""
    flags = []
    for arch in re.split(r"[;,\s]+", arch_list.strip()):
        if not arch:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", arch)
        if m is None:
            raise ValueError(f"bad CUDA arch {arch!r} in {arch_list!r}; expected e.g. '9.0' or '8.6+PTX'")
        num = f"{m[1]}{m[2]}{m[3]}"
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if m[4]:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    if not flags:
        raise ValueError(f"empty CUDA arch list {arch_list!r}")
    return flags


def source_hash(arch_list: str) -> str:
    """Hash of the sources, the flags and the target architectures."""
    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    h.update(repr((CXX_FLAGS, CUDA_FLAGS, gencode_flags(arch_list), EXT_NAME)).encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    """Where build directories live (see the module docstring)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "tinylm" / "kernels"


def build_dir(arch_list: str | None = None, root: Path | str | None = None) -> Path:
    """The cache directory for this Python, torch, CUDA, arch list and source hash."""
    arch_list = arch_list or default_arch_list()
    arch_tag = re.sub(r"[^0-9A-Za-z.]+", "_", arch_list.replace("+PTX", "ptx"))
    key = (
        f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
        f"-cuda{torch.version.cuda}-sm{arch_tag}-{source_hash(arch_list)}"
    )
    return Path(root).expanduser() if root is not None else cache_root() / re.sub(r"[^\w.+-]", "_", key)


def is_built(arch_list: str | None = None, root: Path | str | None = None) -> bool:
    """Whether a finished build for this configuration is in the cache."""
    try:
        d = build_dir(arch_list, root)
    except RuntimeError:
        return False
    return (d / DONE_MARKER).exists() and (d / f"{EXT_NAME}.so").exists()


def unavailable_reason() -> str:
    """Empty if the CUDA extension can run here, else why not (no CUDA device, no nvcc, no ninja)."""
    if torch.version.cuda is None:
        return "torch was built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if is_built():
        return ""
    if find_cuda_home() is None:
        return "nvcc not found (set CUDA_HOME) and no prebuilt extension in the cache"
    if find_ninja() is None:
        return "ninja not found (pip install ninja) and no prebuilt extension in the cache"
    return ""


def _import_from(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(EXT_NAME, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clear_stale_lock(directory: Path) -> None:
    lock = directory / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        log.warning("tinylm.kernels: removing stale build lock %s (left by a killed build)", lock)
        lock.unlink(missing_ok=True)


def build(verbose: bool = False, arch_list: str | None = None, root: Path | str | None = None) -> ModuleType:
    """Compile (or load from the cache) the CUDA extension and return its module.

    ``root`` replaces the whole cache directory (tests build into a temporary one). Raises ``RuntimeError``
    with the compiler's message if the build fails.
    """
    arch_list = arch_list or default_arch_list()
    directory = build_dir(arch_list, root)
    with _lock:
        if directory in _loaded:
            return _loaded[directory]
        so = directory / f"{EXT_NAME}.so"
        if (directory / DONE_MARKER).exists() and so.exists():
            module = _import_from(so)
        else:
            module = _compile(directory, arch_list, verbose)
            (directory / DONE_MARKER).write_text(f"{torch.__version__} {torch.version.cuda} {arch_list}\n")
        _loaded[directory] = module
        log.info("tinylm.kernels: CUDA extension loaded from %s", directory)
        return module


def _compile(directory: Path, arch_list: str, verbose: bool) -> ModuleType:
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("tinylm.kernels: cannot build the CUDA extension: nvcc not found (set CUDA_HOME)")
    ninja = find_ninja()
    if ninja is None:
        raise RuntimeError(
            "tinylm.kernels: cannot build the CUDA extension: ninja not found (pip install ninja)"
        )
    # torch guesses CUDA_HOME when cpp_extension is first imported and runs `ninja` from PATH.
    os.environ.setdefault("CUDA_HOME", str(cuda_home))
    if str(Path(ninja).parent) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = str(Path(ninja).parent) + os.pathsep + os.environ.get("PATH", "")
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = str(cuda_home)
    directory.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(directory)
    t0 = time.perf_counter()
    log.info("tinylm.kernels: building the CUDA extension for sm %s in %s", arch_list, directory)
    try:
        module = cpp_extension.load(
            name=EXT_NAME,
            sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=list(CXX_FLAGS),
            extra_cuda_cflags=[*CUDA_FLAGS, *gencode_flags(arch_list)],
            build_directory=str(directory),
            verbose=verbose,
        )
    except Exception as e:  # compiler errors arrive as RuntimeError/CalledProcessError with the log
        raise RuntimeError(
            f"tinylm.kernels: building the CUDA extension in {directory} failed "
            f"(rerun with `python -m tinylm.kernels build --verbose` for the full log): {e}"
        ) from e
    log.info("tinylm.kernels: built in %.0f s", time.perf_counter() - t0)
    return module
