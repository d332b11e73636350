"""apps/infer.py + tinylm-cache: --cache NAME matches the standard greedy text, --engine serves a file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_infer():
    spec = importlib.util.spec_from_file_location("infer_app", ROOT / "apps" / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GREEDY = ["--device", "cpu", "--temperature", "0", "--max-new-tokens", "24"]


def test_every_exact_cache_gives_the_standard_greedy_text(capsys):
    infer = load_infer()
    outputs = {}
    for name in ("standard", "static", "paged", "sliding_window"):
        assert infer.main([*GREEDY, "--cache", name]) == 0
        outputs[name] = capsys.readouterr().out
    assert len(set(outputs.values())) == 1, outputs
    assert outputs["standard"].startswith("Once upon a time") and len(outputs["standard"]) > 40


def test_engine_serves_each_prompt_like_a_single_greedy_run(tmp_path, capsys):
    infer = load_infer()
    assert infer.main([*GREEDY, "--prompt", "The little dog"]) == 0
    alone = capsys.readouterr().out.strip()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n\nThe little dog\n")
    assert infer.main([*GREEDY, "--engine", str(prompts)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sorted(line[:3] for line in lines) == ["[0]", "[2]"]  # the empty line is skipped
    assert f"[2] {alone}" in lines


def test_unknown_cache_lists_the_known_ones(capsys):
    assert load_infer().main([*GREEDY, "--cache", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown cache 'nope'" in err and "paged" in err and "sliding_window" in err


def test_engine_file_missing_is_a_one_line_error(capsys):
    assert load_infer().main([*GREEDY, "--engine", "missing_prompts.txt"]) == 2
    assert "missing_prompts.txt" in capsys.readouterr().err


def test_fast_decoding_gives_the_standard_greedy_text(capsys):
    infer = load_infer()
    assert infer.main(GREEDY) == 0
    standard = capsys.readouterr().out
    assert infer.main([*GREEDY, "--fast"]) == 0
    assert capsys.readouterr().out == standard
    assert infer.main([*GREEDY, "--temperature", "0.8", "--fast"]) == 2
    assert "--fast decodes greedily" in capsys.readouterr().err


def test_fast_int8_decoding_folds_the_norms_and_matches_the_standard_int8_text(capsys, monkeypatch):
    infer = load_infer()
    int8 = [*GREEDY, "--quant", "int8_weight_only_gemv"]
    assert infer.main(int8) == 0
    standard = capsys.readouterr().out
    prepared = []
    real = infer.prepare_int8_decode
    monkeypatch.setattr(infer, "prepare_int8_decode", lambda m: prepared.append(real(m)) or prepared[-1])
    assert infer.main([*int8, "--fast"]) == 0
    assert capsys.readouterr().out == standard
    assert prepared and prepared[0]["folded"] > 0 and prepared[0]["fused"] == prepared[0]["folded"]


def test_fast_int4_decoding_matches_the_standard_int4_text(capsys):
    """The packed int4 model decodes the same greedy text eagerly and through the compiled step (where
    ``int4_linear`` is Inductor's reduction over the packed bytes)."""
    infer = load_infer()
    int4 = [*GREEDY, "--quant", "int4_weight_only_gemv"]
    assert infer.main(int4) == 0
    standard = capsys.readouterr().out
    assert infer.main([*int4, "--fast"]) == 0
    assert capsys.readouterr().out == standard


def test_fast_decoding_options(capsys):
    infer = load_infer()
    assert infer.main(GREEDY) == 0
    standard = capsys.readouterr().out
    assert (
        infer.main([*GREEDY, "--fast", "--steps-per-graph", "5", "--inductor-option", "combo_kernels=True"])
        == 0
    )
    assert capsys.readouterr().out == standard
    assert infer.main([*GREEDY, "--fast", "--decode-attention", "kernel"]) == 0
    assert capsys.readouterr().out == standard
    assert infer.main([*GREEDY, "--fast", "--decode-attention", "kernel_rope"]) == 0
    assert capsys.readouterr().out == standard
    for folds in ("epilogue", "prologue"):  # decode blocks: the same greedy text
        assert (
            infer.main([*GREEDY, "--fast", "--decode-blocks", folds, "--decode-attention", "kernel_rope"])
            == 0
        )
        assert capsys.readouterr().out == standard, folds
    for bad, says in [
        (["--steps-per-graph", "4"], "need --fast"),
        (["--decode-attention", "kernel"], "need --fast"),
        (["--decode-blocks", "epilogue"], "need --fast"),
        (["--fast", "--decode-attention", "flash"], "decode_attention must be one of"),
        (["--fast", "--steps-per-graph", "0"], "steps_per_graph must be >= 1"),
        (["--fast", "--inductor-option", "combo_kernels"], "is KEY=VALUE, got 'combo_kernels'"),
        (["--fast", "--inductor-option", "combo_kernels=yes please"], "is not a Python literal"),
        (["--fast", "--inductor-option", "no_such_setting=1"], "unknown Inductor setting 'no_such_setting'"),
    ]:
        assert infer.main([*GREEDY, *bad]) == 2, bad
        assert says in capsys.readouterr().err, bad
