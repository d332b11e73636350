"""Each package builds a wheel whose metadata carries its sibling dependencies with version ranges."""

import os
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
UV = os.environ.get("UV") or shutil.which("uv")


def project(member: str) -> dict:
    return tomllib.loads((ROOT / "packages" / member / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("member", MEMBERS)
def test_member_layout(member):
    pkg = ROOT / "packages" / member
    meta = project(member)
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]) and meta["description"]
    for name in ("README.md", "CHANGELOG.md"):
        assert (pkg / name).read_text().strip(), f"{member}/{name} is empty"
    assert meta["version"] in (pkg / "CHANGELOG.md").read_text()
    assert (pkg / "src" / "tinylm" / member.removeprefix("tinylm-")).is_dir()


@pytest.mark.slow
@pytest.mark.skipif(UV is None, reason="uv is not on PATH")
@pytest.mark.parametrize("member", MEMBERS)
def test_wheel_requires_siblings_with_ranges(member, tmp_path):
    subprocess.run(
        [UV, "build", "--package", member, "--wheel", "--out-dir", str(tmp_path), "--quiet"],
        cwd=ROOT,
        check=True,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        names = z.namelist()
    assert not any(n == "tinylm/__init__.py" for n in names), "tinylm must stay a namespace package"
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    siblings = [d for d in project(member)["dependencies"] if d.startswith("tinylm-")]
    for dep in siblings:
        name = re.match(r"[\w-]+", dep).group(0)
        matching = [r for r in requires if r.startswith(name)]
        assert matching and re.search(r"[<>=]", matching[0]), f"{name} has no version range in {requires}"
