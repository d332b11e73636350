"""tinylm.quant.eval: perplexity against a direct computation, the table, the CLI end to end."""

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tinylm.core import save_checkpoint
from tinylm.quant import quantize, save_quantized
from tinylm.quant.eval import evaluate, main, perplexity, to_markdown


def test_perplexity_matches_direct_cross_entropy(tiny):
    model = tiny()
    tokens = np.random.default_rng(0).integers(0, 97, size=3 * 16 + 5).astype(np.uint16)
    loss, ppl = perplexity(model, tokens, block_size=16, batch_size=2)
    t = torch.from_numpy(tokens.astype(np.int64))
    x, y = t[:48].view(3, 16), t[1:49].view(3, 16)
    with torch.no_grad():
        ref = F.cross_entropy(model(x).logits.reshape(-1, 97), y.reshape(-1))
    assert loss == pytest.approx(float(ref), rel=1e-5) and ppl == pytest.approx(
        math.exp(float(ref)), rel=1e-5
    )
    with pytest.raises(ValueError, match="fewer than one block"):
        perplexity(model, tokens[:10], block_size=16)


def test_evaluate_rows_and_extra_checkpoint(tiny, tmp_path):
    model = tiny()
    save_checkpoint(model, tmp_path / "float")
    save_quantized(quantize(tiny(), "int8_weight_only"), tmp_path / "q")
    tokens = np.random.default_rng(0).integers(0, 97, size=200)
    rows = evaluate(
        tmp_path / "float", ["int8_weight_only", "int4_weight_only"], tokens, block_size=32,
        extra={"saved int8": str(tmp_path / "q")}, new_tokens=4,
    )  # fmt: skip
    names = [r["scheme"] for r in rows]
    assert names == ["float (float32)", "int8_weight_only", "saved int8"]  # int4 needs CUDA: skipped
    assert rows[0]["perplexity_delta_pct"] == 0 and rows[0]["linear_bytes_vs_bf16"] == pytest.approx(2.0)
    assert rows[1]["perplexity"] == pytest.approx(rows[2]["perplexity"])  # same weights, same numbers
    assert 0.5 < rows[1]["linear_bytes_vs_bf16"] < 0.7  # int8 + per-row scales; the fp32 lm head is kept
    assert rows[1]["decode_tokens_per_s"] > 0
    assert "| int8_weight_only |" in to_markdown(rows)


def test_cli_bad_scheme_and_json(tiny, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tokenizers")
    from tinylm.core import build_tokenizer

    text = "the cat sat on the mat. " * 200
    data = tmp_path / "t.txt"
    data.write_text(text)
    tok = build_tokenizer("char", [text])
    model = tiny(vocab_size=tok.vocab_size)
    save_checkpoint(model, tmp_path / "ck")
    tok.save(tmp_path / "ck")
    monkeypatch.setenv("TINYLM_DATA_CACHE", str(tmp_path / "cache"))
    common = [
        "--ckpt",
        str(tmp_path / "ck"),
        "--data",
        "text",
        "--data-path",
        str(data),
        "--val-split",
        "end",
    ]
    assert main([*common, "--schemes", "int3_magic"]) == 2
    assert "int8_weight_only" in capsys.readouterr().err
    out = tmp_path / "rows.json"
    args = ["--schemes", "int8_dynamic", "--block-size", "16", "--new-tokens", "1", "--out", str(out)]
    assert main([*common, *args]) == 0
    assert "| int8_dynamic |" in capsys.readouterr().out
    assert [r["scheme"] for r in json.loads(out.read_text())] == ["float (float32)", "int8_dynamic"]
