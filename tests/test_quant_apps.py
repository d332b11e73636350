"""apps with tinylm-quant: QAT training end to end, inference on the saved quantized model, bench quant."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocess training runs
ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "training=quick_test", "training.max_steps=6", "training.eval_interval=6", "block_size=64",
    "data.num_documents=400", "training.progress=false", "training.sample_prompts=[]",
]  # fmt: skip


def run_app(app: str, *args: str, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINYLM_DATA_CACHE": str(cache), "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "apps" / app), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_qat_training_saves_a_quantized_model_that_infer_runs(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    proc = run_app("train.py", *QUICK, "quant=qat_int4", f"hydra.run.dir={run_dir}", cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    quantized = run_dir / "quantized"
    record = json.loads((quantized / "quantization.json").read_text())
    assert record["scheme"] == "intx4_weight_only" and record["quantized"]
    assert (run_dir / "checkpoints" / "last" / "model.safetensors").is_file()  # float checkpoints as usual
    args = ["--ckpt", str(quantized), "--prompt", "Once upon", "--max-new-tokens", "8", "--temperature", "0"]
    out = run_app("infer.py", *args, cache=cache)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Once upon") and len(out.stdout.strip()) > len("Once upon")
    bad = run_app("infer.py", *args, "--quant", "int8_dynamic", cache=cache)
    assert bad.returncode == 2 and "already quantized with intx4_weight_only" in bad.stderr


def test_train_unknown_quant_and_float8_on_cpu(tmp_path):
    proc = run_app("train.py", *QUICK, "quant.scheme=qat_int2", "training.device=cpu", cache=tmp_path)
    assert proc.returncode == 2 and "qat_int4" in proc.stderr
    proc = run_app("train.py", *QUICK, "quant=float8", "training.device=cpu", cache=tmp_path)
    assert proc.returncode != 0 and "float8 training needs a CUDA GPU" in proc.stderr
