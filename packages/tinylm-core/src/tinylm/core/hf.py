"""Hugging Face interop: ``from_hf`` / ``to_hf`` for ``LlamaForCausalLM`` and ``GPT2LMHeadModel``.

Weights are copied, not downloaded: pass a transformers model you built or loaded yourself. transformers
is an optional dependency (``pip install tinylm-core[hf]``), imported only here and only when called.
GPT-2 stores its linear layers as ``Conv1D`` (weight ``(in, out)``) with q, k, v fused in ``c_attn``;
they are transposed and split on the way in, and fused back on the way out.
"""

from __future__ import annotations

from typing import Any

import torch

from tinylm.core.config import ModelConfig
from tinylm.core.model.transformer import TinyLM
from tinylm.core.registry import ATTENTION_BACKENDS

LLAMA_COMPONENTS = dict(norm="rmsnorm", positional="rope", mlp="gated", activation="silu", block="prenorm")
GPT2_COMPONENTS = dict(
    norm="layernorm", positional="learned", mlp="standard", activation="gelu_tanh", block="prenorm", bias=True
)


def _rope_theta(hf_config: Any) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ValueError(f"rope scaling {kind!r} is not supported by TinyLM; only default RoPE is")
    return float(getattr(hf_config, "rope_theta", None) or params.get("rope_theta", 10000.0))


def _llama_pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(tinylm name, transformers name) for every Llama tensor; all copied as they are."""
    pairs = [("tok_emb.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight")]
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        pairs += [
            (ours + "attn_norm.weight", theirs + "input_layernorm.weight"),
            (ours + "mlp_norm.weight", theirs + "post_attention_layernorm.weight"),
        ]
        names = [f"attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
        hf_names = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
        for n, h in zip(names, hf_names, strict=True):
            pairs.append((ours + n + ".weight", theirs + h + ".weight"))
            if cfg.bias:
                pairs.append((ours + n + ".bias", theirs + h + ".bias"))
    if not cfg.tie_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight"))
    return pairs


def _gpt2_to_ours(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {
        "tok_emb.weight": sd["transformer.wte.weight"],
        "pos.weight": sd["transformer.wpe.weight"],
        "norm.weight": sd["transformer.ln_f.weight"],
        "norm.bias": sd["transformer.ln_f.bias"],
    }
    for i in range(cfg.n_layers):
        o, h = f"layers.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[f"{o}{ours}.weight"] = sd[f"{h}{theirs}.weight"]
            out[f"{o}{ours}.bias"] = sd[f"{h}{theirs}.bias"]
        qkv_w = sd[f"{h}attn.c_attn.weight"].t()  # Conv1D (in, 3*dim) -> Linear (3*dim, in)
        qkv_b = sd[f"{h}attn.c_attn.bias"]
        for name, w, b in zip("qkv", qkv_w.chunk(3, 0), qkv_b.chunk(3, 0), strict=True):
            out[f"{o}attn.{name}_proj.weight"], out[f"{o}attn.{name}_proj.bias"] = w, b
        for ours, theirs in (
            ("attn.o_proj", "attn.c_proj"),
            ("mlp.up_proj", "mlp.c_fc"),
            ("mlp.down_proj", "mlp.c_proj"),
        ):
            out[f"{o}{ours}.weight"] = sd[f"{h}{theirs}.weight"].t()
            out[f"{o}{ours}.bias"] = sd[f"{h}{theirs}.bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _gpt2_from_ours(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["pos.weight"],
        "transformer.ln_f.weight": sd["norm.weight"],
        "transformer.ln_f.bias": sd["norm.bias"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i in range(cfg.n_layers):
        o, h = f"layers.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[f"{h}{theirs}.weight"] = sd[f"{o}{ours}.weight"]
            out[f"{h}{theirs}.bias"] = sd[f"{o}{ours}.bias"]
        out[f"{h}attn.c_attn.weight"] = torch.cat([sd[f"{o}attn.{n}_proj.weight"] for n in "qkv"]).t()
        out[f"{h}attn.c_attn.bias"] = torch.cat([sd[f"{o}attn.{n}_proj.bias"] for n in "qkv"])
        for ours, theirs in (
            ("attn.o_proj", "attn.c_proj"),
            ("mlp.up_proj", "mlp.c_fc"),
            ("mlp.down_proj", "mlp.c_proj"),
        ):
            out[f"{h}{theirs}.weight"] = sd[f"{o}{ours}.weight"].t()
            out[f"{h}{theirs}.bias"] = sd[f"{o}{ours}.bias"]
    return out


def from_hf(hf_model: Any) -> TinyLM:
    """A TinyLM with the weights of a transformers ``LlamaForCausalLM`` or ``GPT2LMHeadModel``."""
    c = hf_model.config
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    if c.model_type == "llama":
        if c.attention_bias != getattr(c, "mlp_bias", False):
            raise ValueError("Llama configs with attention_bias != mlp_bias are not supported by TinyLM")
        cfg = ModelConfig(
            architecture="llama",
            vocab_size=c.vocab_size,
            dim=c.hidden_size,
            n_layers=c.num_hidden_layers,
            n_heads=c.num_attention_heads,
            n_kv_heads=c.num_key_value_heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
            hidden_dim=c.intermediate_size,
            max_seq_len=c.max_position_embeddings,
            norm_eps=c.rms_norm_eps,
            rope_theta=_rope_theta(c),
            bias=bool(c.attention_bias),
            tie_embeddings=bool(c.tie_word_embeddings),
            activation={"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}[
                c.hidden_act
            ],
            **{k: v for k, v in LLAMA_COMPONENTS.items() if k != "activation"},
        )
        state = {ours: sd[theirs] for ours, theirs in _llama_pairs(cfg)}
    elif c.model_type == "gpt2":
        if c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn:
            raise ValueError(
                "GPT-2 with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn is not supported"
            )
        cfg = ModelConfig(
            architecture="gpt",
            vocab_size=c.vocab_size,
            dim=c.n_embd,
            n_layers=c.n_layer,
            n_heads=c.n_head,
            hidden_dim=c.n_inner or 4 * c.n_embd,
            max_seq_len=c.n_positions,
            norm_eps=c.layer_norm_epsilon,
            tie_embeddings=bool(c.tie_word_embeddings),
            activation={"gelu_new": "gelu_tanh", "gelu": "gelu", "relu": "relu", "silu": "silu"}[
                c.activation_function
            ],
            **{k: v for k, v in GPT2_COMPONENTS.items() if k != "activation"},
        )
        state = _gpt2_to_ours(cfg, sd)
    else:
        raise ValueError(f"from_hf supports model_type 'llama' and 'gpt2', got {c.model_type!r}")
    model = TinyLM(cfg)
    model.load_state_dict(state, strict=not cfg.tie_embeddings)
    return model.to(dtype=next(hf_model.parameters()).dtype)


def _matches(cfg: ModelConfig, components: dict[str, Any]) -> bool:
    return all(getattr(cfg, k) == v for k, v in components.items() if k != "activation")


def to_hf(model: TinyLM) -> Any:
    """The transformers model (``LlamaForCausalLM`` or ``GPT2LMHeadModel``) with ``model``'s weights."""
    import transformers

    cfg = model.config
    if cfg.router != "none" or isinstance(ATTENTION_BACKENDS.get(cfg.attention), type):
        raise ValueError(
            f"to_hf exports plain attention without routers; this model has attention={cfg.attention!r}, "
            f"router={cfg.router!r} (transformers' Llama/GPT-2 would silently compute something else)"
        )
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    act_to_hf = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
    if _matches(cfg, LLAMA_COMPONENTS) and cfg.activation in act_to_hf:
        hf_cfg = transformers.LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.dim,
            intermediate_size=cfg.hidden_dim,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim,
            max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            attention_bias=cfg.bias,
            mlp_bias=cfg.bias,
            tie_word_embeddings=cfg.tie_embeddings,
            hidden_act=act_to_hf[cfg.activation],
        )
        hf = transformers.LlamaForCausalLM(hf_cfg)
        state = {theirs: sd[ours] for ours, theirs in _llama_pairs(cfg)}
    elif (
        _matches(cfg, GPT2_COMPONENTS)
        and cfg.n_kv_heads == cfg.n_heads
        and cfg.head_dim * cfg.n_heads == cfg.dim
    ):
        hf_cfg = transformers.GPT2Config(
            vocab_size=cfg.vocab_size,
            n_embd=cfg.dim,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.hidden_dim,
            n_positions=cfg.max_seq_len,
            layer_norm_epsilon=cfg.norm_eps,
            activation_function={"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[
                cfg.activation
            ],
            tie_word_embeddings=cfg.tie_embeddings,
            bos_token_id=None,
            eos_token_id=None,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        hf = transformers.GPT2LMHeadModel(hf_cfg)
        state = _gpt2_from_ours(cfg, sd)
    else:
        raise ValueError(
            "to_hf needs a LLaMA-like (rmsnorm, rope, gated MLP, prenorm) or GPT-2-like (layernorm, learned "
            f"positions, standard MLP with biases, prenorm, no GQA) model; this one has {cfg.to_dict()}"
        )
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [
        k
        for k in missing
        if not (cfg.tie_embeddings and k == "lm_head.weight") and not k.endswith("attn.bias")
    ]
    if missing or unexpected:
        raise RuntimeError(f"to_hf: weights did not map cleanly: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        hf.tie_weights()
    return hf.to(dtype=next(model.parameters()).dtype).eval()
