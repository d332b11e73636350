"""save_quantized / load_quantized: exact round trip, quantized bytes on disk, no unpickling, bad files."""

import copy
import json

import pytest
import torch
from safetensors import safe_open

from tinylm.core import CheckpointError, save_checkpoint
from tinylm.quant import convert_qat, load_quantized, prepare_qat, quant_info, quantize, save_quantized
from tinylm.quant.serialization import QUANT_CONFIG_NAME

SCHEMES = ["int8_weight_only", "int8_dynamic", "intx4_weight_only", "int8_dynamic_int4"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_is_exact(scheme, tiny, ids, tmp_path):
    q = quantize(tiny(), scheme)
    save_quantized(q, tmp_path / "ck")
    loaded = load_quantized(tmp_path / "ck")
    assert type(loaded.layers[0].attn.q_proj.weight) is type(q.layers[0].attn.q_proj.weight)
    assert torch.equal(loaded(ids).logits, q(ids).logits)
    assert quant_info(loaded).scheme == scheme
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("layers.0.attn.q_proj._weight_qdata").dtype == torch.int8  # int8 on disk


def test_tied_model_round_trip(tiny, ids, tmp_path):
    q = quantize(tiny(tie_embeddings=True), "int8_weight_only")
    save_quantized(q, tmp_path / "ck")
    loaded = load_quantized(tmp_path / "ck")
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert torch.equal(loaded(ids).logits, q(ids).logits)


def test_bfloat16_model_round_trip(tiny, ids, tmp_path):
    q = quantize(tiny().to(torch.bfloat16), "int8_weight_only")
    save_quantized(q, tmp_path / "ck")
    loaded = load_quantized(tmp_path / "ck")
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(loaded(ids).logits, q(ids).logits)


def test_qat_converted_model_round_trip(tiny, ids, tmp_path):
    q = convert_qat(prepare_qat(tiny(), "qat_int4"))
    save_quantized(q, tmp_path / "ck")
    assert torch.equal(load_quantized(tmp_path / "ck")(ids).logits, q(ids).logits)


def test_refuses_float_and_prepared_models(tiny, tmp_path):
    with pytest.raises(ValueError, match="not quantized"):
        save_quantized(tiny(), tmp_path / "a")
    with pytest.raises(ValueError, match="QAT-prepared"):
        save_quantized(prepare_qat(tiny(), "qat_int4"), tmp_path / "b")


def test_bad_checkpoints_raise_checkpoint_error(tiny, tmp_path):
    save_checkpoint(tiny(), tmp_path / "float")
    with pytest.raises(CheckpointError, match="not a quantized checkpoint"):
        load_quantized(tmp_path / "float")
    q = quantize(tiny(), "int8_weight_only")
    save_quantized(q, tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_quantized(tmp_path / "ck")


def test_metadata_cannot_name_arbitrary_objects(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    save_quantized(quantize(tiny(), "int8_weight_only"), tmp_path / "ck")
    file = tmp_path / "ck" / "model.safetensors"
    with safe_open(str(file), "pt") as f:
        metadata = f.metadata()
    name = "layers.0.attn.q_proj.weight"
    entry = json.loads(metadata[name])
    entry["_type"] = "os.system"
    save_file(load_file(str(file)), str(file), metadata={**metadata, name: json.dumps(entry)})
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        load_quantized(tmp_path / "ck")
    entry["_type"] = "Int8Tensor"
    entry["_data"]["dtype"] = {"_type": "torch.dtype", "_data": "load"}
    save_file(load_file(str(file)), str(file), metadata={**metadata, name: json.dumps(entry)})
    with pytest.raises(CheckpointError, match="not a torch dtype"):
        load_quantized(tmp_path / "ck")


def test_format_version_checked(tiny, tmp_path):
    save_quantized(quantize(tiny(), "int8_weight_only"), tmp_path / "ck")
    record = json.loads((tmp_path / "ck" / QUANT_CONFIG_NAME).read_text())
    (tmp_path / "ck" / QUANT_CONFIG_NAME).write_text(json.dumps({**record, "format": "other/9"}))
    with pytest.raises(CheckpointError, match="format"):
        load_quantized(copy.copy(tmp_path / "ck"))


def test_load_model_quantizes_float_or_loads_saved(tiny, ids, tmp_path):
    from tinylm.quant import load_model

    save_checkpoint(tiny(), tmp_path / "float")
    q = load_model(tmp_path / "float", scheme="int8_weight_only")
    assert quant_info(q).scheme == "int8_weight_only"
    assert quant_info(load_model(tmp_path / "float")).scheme == "none"
    save_quantized(q, tmp_path / "q")
    assert torch.equal(load_model(tmp_path / "q")(ids).logits, q(ids).logits)
    with pytest.raises(ValueError, match="already quantized with int8_weight_only"):
        load_model(tmp_path / "q", scheme="int8_dynamic")
