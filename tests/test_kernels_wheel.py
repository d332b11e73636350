"""tinylm-kernels installed alone: its wheel in a fresh virtual environment with torch and nothing of ours."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
UV = os.environ.get("UV") or shutil.which("uv")

SCRIPT = """
import importlib.util, torch
from tinylm.kernels import choose, rms_norm, rms_norm_reference
assert importlib.util.find_spec("tinylm.core") is None, "tinylm-core leaked into the venv"
x, w = torch.randn(3, 7), torch.rand(7) + 0.5
torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))
print("backend", choose("rms_norm", device="cpu").name)
"""


@pytest.mark.slow
@pytest.mark.skipif(UV is None, reason="uv is not on PATH")
def test_wheel_installs_and_runs_alone(tmp_path):
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    dist = tmp_path / "dist"
    subprocess.run(
        [UV, "build", "--package", "tinylm-kernels", "--wheel", "-o", str(dist), "-q"],
        cwd=ROOT,
        check=True,
        env=env,
    )
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("csrc/rms_norm.cu") for n in names), "the wheel must carry the CUDA sources"
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    torch_version = re.match(r"[\d.]+", torch.__version__).group(0)  # the locked one: served from uv's cache
    subprocess.run(
        [UV, "pip", "install", "-q", "--python", str(python), str(wheel), f"torch=={torch_version}"],
        check=True, env=env, timeout=900,
    )  # fmt: skip
    out = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "backend torch" in out.stdout  # no GPU here: the reference serves, nothing breaks
