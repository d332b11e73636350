"""The baseline of issue 6: a plain PyTorch decode loop in the style of gpt-fast (pytorch-labs/gpt-fast
``generate.py``/``model.py``): static KV buffers registered as module buffers, one pair per layer (as
gpt-fast's per-layer ``KVCache``: a write into a slice of one stacked buffer makes Inductor copy the whole
buffer back every step, 4 x ~0.33 ms per step at 110M batch 32 on an H100), SDPA, RoPE and RMSNorm written
out, ``torch.compile(mode="reduce-overhead")`` around the one-token step (CUDA graphs).

It reads the weights of a LLaMA-style ``TinyLM`` (rmsnorm, rope, gated SiLU MLP, pre-norm, no biases), so
``gpu_bench.py`` times it on the very model the caches run, and checks its greedy tokens against TinyLM's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PlainLlamaDecoder(nn.Module):
    """One forward = embed -> n x (attention over static KV, gated MLP) -> norm -> head."""

    def __init__(self, model: nn.Module, batch_size: int, max_seq_len: int) -> None:
        super().__init__()
        cfg, p = model.config, next(model.parameters())
        if (cfg.norm, cfg.positional, cfg.mlp, cfg.block, cfg.bias) != (
            "rmsnorm",
            "rope",
            "gated",
            "prenorm",
            False,
        ):
            raise ValueError(
                "the plain loop reads LLaMA-style TinyLMs only (rmsnorm, rope, gated MLP, prenorm)"
            )
        self.model, self.eps = model, cfg.norm_eps
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        shape = (batch_size, cfg.n_kv_heads, max_seq_len, cfg.head_dim)
        for i in range(cfg.n_layers):
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape, device=p.device, dtype=p.dtype))
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape, device=p.device, dtype=p.dtype))
        exponent = torch.arange(0, cfg.head_dim, 2, device=p.device).float() / cfg.head_dim
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta**exponent)
        self.register_buffer("slots", torch.arange(max_seq_len, device=p.device))

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``(B, T)`` at positions ``input_pos`` ``(T,)`` -> logits ``(B, T, vocab)``."""
        m, (b, t) = self.model, tokens.shape
        x = m.tok_emb(tokens)
        freqs = input_pos[:, None].float() * self.inv_freq  # (T, hd/2)
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)  # (T, hd)
        mask = (self.slots[None, :] <= input_pos[:, None])[None, None]  # (1, 1, T, S)

        def rope(z: torch.Tensor) -> torch.Tensor:
            z1, z2 = z.chunk(2, dim=-1)
            return z * cos + torch.cat([-z2, z1], -1) * sin

        for i, layer in enumerate(m.layers):
            a, mlp = layer.attn, layer.mlp
            h = self.rms(x, layer.attn_norm.weight)
            q = rope(F.linear(h, a.q_proj.weight).view(b, t, self.n_heads, self.hd).transpose(1, 2))
            k = rope(F.linear(h, a.k_proj.weight).view(b, t, self.n_kv, self.hd).transpose(1, 2))
            v = F.linear(h, a.v_proj.weight).view(b, t, self.n_kv, self.hd).transpose(1, 2)
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            k_cache.index_copy_(2, input_pos, k)
            v_cache.index_copy_(2, input_pos, v)
            rep = self.n_heads // self.n_kv
            kk = k_cache.repeat_interleave(rep, 1) if rep > 1 else k_cache
            vv = v_cache.repeat_interleave(rep, 1) if rep > 1 else v_cache
            o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)  # (B, H, T, hd)
            x = x + F.linear(o.transpose(1, 2).reshape(b, t, -1), a.o_proj.weight)
            h = self.rms(x, layer.mlp_norm.weight)
            gate, up = F.linear(h, mlp.gate_proj.weight), F.linear(h, mlp.up_proj.weight)
            x = x + F.linear(F.silu(gate) * up, mlp.down_proj.weight)
        return F.linear(self.rms(x, m.norm.weight), m.lm_head.weight)


@torch.no_grad()
def plain_greedy_generate(
    dec: PlainLlamaDecoder, step: object, ids: torch.Tensor, max_new_tokens: int
) -> torch.Tensor:
    """Eager prefill, then ``step(dec, token, pos)`` (``decode_one``, compiled or not) per new token."""
    p = ids.size(1)
    nxt = dec(ids, torch.arange(p, device=ids.device))[:, -1].argmax(-1, keepdim=True)
    out, pos = [nxt], torch.tensor([p], device=ids.device)
    for _ in range(max_new_tokens - 1):
        nxt = step(dec, nxt, pos).clone()  # a CUDA-graph output is overwritten by the next replay
        pos = pos + 1
        out.append(nxt)
    return torch.cat([ids, *out], dim=1)


def decode_one(dec: PlainLlamaDecoder, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One greedy step: ``(B, 1)`` token -> ``(B, 1)`` next token."""
    return dec(token, pos)[:, -1].argmax(-1, keepdim=True)


def plain_loop_row(model: nn.Module, ids: torch.Tensor, new_tokens: int, rate: object) -> dict:
    """Compile the step (CUDA graphs on a GPU), check its tokens against TinyLM's, time it with ``rate``."""
    import time

    from tinylm.core.generate import generate

    torch._dynamo.reset()
    dec = PlainLlamaDecoder(model, ids.size(0), ids.size(1) + new_tokens)
    mode = "reduce-overhead" if ids.is_cuda else "default"
    step = torch.compile(decode_one, mode=mode, fullgraph=True)
    t0 = time.perf_counter()
    out = plain_greedy_generate(dec, step, ids, new_tokens)
    compile_s = time.perf_counter() - t0
    ref = generate(model, ids, new_tokens, temperature=0.0)
    row = rate(lambda n: lambda: plain_greedy_generate(dec, step, ids, n))
    return {**row, "compile_s": compile_s, "agreement_vs_tinylm": (out == ref).float().mean().item()}
