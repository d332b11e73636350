"""What a number was measured on: card, library versions, commit and date (no host name).

A benchmark row is only comparable to another with the same card, torch/triton versions and commit, so
every result carries ``collect_environment()``. The git commit is read with ``git rev-parse`` when the
code runs from a checkout and is None otherwise (an installed wheel); ``dirty`` says whether tracked
files had uncommitted changes, i.e. whether the commit alone reproduces the run.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(args: list[str], repo: str | Path | None) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit(repo: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` for the checkout containing ``repo`` (or cwd)."""
    sha = _git(["rev-parse", "HEAD"], repo)
    if sha is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo)
    return {"commit": sha, "dirty": bool(status) if status is not None else None}


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def kernel_backends(device: torch.device) -> dict[str, str]:
    """Which tinylm.kernels backend each op uses on ``device`` (empty when the registry cannot say)."""
    try:
        from tinylm.kernels import registry

        return {op: registry.choose(op, device=device).name for op in registry.ops()}
    except Exception:  # an optional report: a kernel registry mid-change must not break a benchmark
        return {}


def collect_environment(device: torch.device | str = "cpu", repo: str | Path | None = None) -> dict[str, Any]:
    """Card, counts, versions, commit and UTC date for a run on ``device``; ``repo``: where to ask git."""
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    env: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "os": platform.system() + " " + platform.release(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": package_version("triton"),
        "transformers": package_version("transformers"),
        "tinylm_core": package_version("tinylm-core"),
        "tinylm_kernels": package_version("tinylm-kernels"),
    }
    if cuda:
        props = torch.cuda.get_device_properties(device)
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    env.update(git_commit(repo))
    env["kernels"] = kernel_backends(device)
    return env


def describe_environment(env: dict[str, Any]) -> str:
    """One line for a report: card, torch (+triton), commit and date."""
    commit = env.get("commit")
    commit_text = (commit[:10] + ("+dirty" if env.get("dirty") else "")) if commit else "no commit"
    card = str(env.get("card", "?"))
    if not str(env.get("device", "")).startswith("cuda") and env.get("cpu_count"):
        card += f" ({env['cpu_count']} cores)"
    parts = [card, f"torch {env.get('torch', '?')}"]
    if env.get("triton"):
        parts.append(f"triton {env['triton']}")
    parts += [commit_text, str(env.get("date", "?"))[:10]]
    return " · ".join(parts)
