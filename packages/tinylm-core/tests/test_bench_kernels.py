"""The kernels mode's script runner: finds bench_*.py, runs each with --json, keeps failures as notes."""

import sys

import pytest

from tinylm.core.bench.kernels import find_kernel_benchmarks, run_kernel_benchmark

WRITES_JSON = """
import json, sys
out = sys.argv[sys.argv.index("--json") + 1]
json.dump({"device": "fake", "rows": [{"method": "m", "fwd_us": 1.5, "extra": sys.argv[3:]}]}, open(out, "w"))
"""


def test_finds_only_bench_scripts_sorted(tmp_path):
    for name in ("bench_b.py", "bench_a.py", "helper.py", "bench_c.txt"):
        (tmp_path / name).write_text("")
    assert [p.name for p in find_kernel_benchmarks(tmp_path)] == ["bench_a.py", "bench_b.py"]
    with pytest.raises(FileNotFoundError, match="no kernel benchmarks directory"):
        find_kernel_benchmarks(tmp_path / "missing")


def test_a_script_that_writes_json_is_collected(tmp_path):
    script = tmp_path / "bench_fake.py"
    script.write_text(WRITES_JSON)
    doc, message = run_kernel_benchmark(script, ["--reps", "3"], timeout=60)
    assert message == "bench_fake.py: ok"
    assert doc == {"device": "fake", "rows": [{"method": "m", "fwd_us": 1.5, "extra": ["--reps", "3"]}]}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import sys; print('boom', file=sys.stderr); sys.exit(3)", "failed (exit 3): boom"),
        ("pass", "exited 0 but wrote no JSON"),
        ("import sys; open(sys.argv[2], 'w').write('{oops')", "wrote invalid JSON"),
        ("import time; time.sleep(30)", "ran over kernels_timeout=1s"),
    ],
)
def test_failures_become_notes(tmp_path, source, message):
    script = tmp_path / "bench_bad.py"
    script.write_text(source)
    doc, note = run_kernel_benchmark(script, [], timeout=1 if "sleep" in source else 60)
    assert doc is None and message in note


def test_the_runner_uses_this_interpreter(tmp_path):
    script = tmp_path / "bench_exe.py"
    script.write_text(
        "import json, sys; json.dump({'rows': [{'exe': sys.executable}]}, open(sys.argv[2], 'w'))"
    )
    doc, _ = run_kernel_benchmark(script, [], timeout=60)
    assert doc["rows"][0]["exe"] == sys.executable
