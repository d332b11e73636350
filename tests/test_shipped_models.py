"""The demo models shipped in models/ load, match their cards, and generate offline on CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinylm.core import load_checkpoint
from tinylm.core.data import load_tokenizer
from tinylm.core.generate import generate

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.mark.parametrize(
    ("name", "prompt", "expect"), [("stories", "Once upon a time", "named"), ("shakespeare", "ROMEO:", "\n")]
)
def test_shipped_model_generates(name, prompt, expect):
    path = MODELS / name
    assert (path / "README.md").read_text().strip()
    assert (path / "model.safetensors").stat().st_size < 8_000_000  # small enough for git without LFS
    model = load_checkpoint(path).eval()
    tok = load_tokenizer(path)
    assert model.config.vocab_size == tok.vocab_size
    ids = torch.tensor([tok.encode(prompt, add_bos=True)])
    out = tok.decode(generate(model, ids, 60, temperature=0)[0, ids.shape[1] :].tolist())
    assert expect in out and len(out) > 20  # trained: it continues with words, not noise


def test_stories_model_is_better_than_chance():
    path = MODELS / "stories"
    model, tok = load_checkpoint(path).eval(), load_tokenizer(path)
    text = "Once upon a time, there was a little girl named Lily. She loved to play in the park."
    ids = torch.tensor([tok.encode(text, add_bos=True)])
    with torch.no_grad():
        loss = model(ids[:, :-1], labels=ids[:, 1:]).loss.item()
    assert loss < 0.5 * torch.log(torch.tensor(float(tok.vocab_size))).item()
    assert json.loads((path / "config.json").read_text())["architecture"] == "llama"


def test_infer_without_ckpt_uses_the_story_model():
    root = MODELS.parent
    proc = subprocess.run(
        [sys.executable, str(root / "apps" / "infer.py"), "--max-new-tokens", "30", "--temperature", "0"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Once upon a time") and len(proc.stdout) > 60
