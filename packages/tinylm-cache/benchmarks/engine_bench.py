"""Continuous batching vs padded static batching at equal KV memory, and paged memory waste per block size.

One mixed-length request set (prompts 8..max_prompt, 16..max_new new tokens, greedy) served four ways:
- ``HF static batching``: transformers ``generate`` on ``to_hf(model)`` (same weights), batches of
  ``static_batch`` requests left-padded to the batch's longest prompt, run to the batch's largest
  ``max_new_tokens`` (no EOS) and each request's output truncated to its own limit;
- ``TinyLM static batching``: the same batches through TinyLM's ``generate`` with the padding mask;
- ``engine (block B)``: the continuous-batching ``Engine`` over a paged pool with the same KV slots as one
  padded batch reserves (``static_batch * (max_prompt + max_new)``), for each block size in ``blocks``.
Useful tokens = the sum of the requests' limits (the same for every row). Paged waste = allocated but empty
KV slots over allocated slots, sampled after every engine step: ``waste`` weights each step by its
allocated slots, ``waste_step_mean`` is the plain mean over steps. ``paged_waste`` repeats the waste
measurement alone (any device, any model: it depends only on lengths and scheduling).
``paged_kernel_speed`` times the paged decode kernel against the gather + SDPA reference. Only these parts
(the engine part took ~150 s on an H200, BENCHMARKS 7c), from the repository root::

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \
        python3 packages/tinylm-cache/benchmarks/gpu_bench.py --skip decode quant c2c --out $OUT
"""

from __future__ import annotations

import random
from typing import Any

import torch

from tinylm.cache import Engine
from tinylm.core.bench.timing import measure
from tinylm.core.generate import generate, pad_prompts

ENGINE_COLS = (
    "system block_size tokens_per_s speedup_vs_hf speedup_vs_tinylm_static waste waste_step_mean "
    "waste_max preemptions peak_running agreement_vs_first_engine error"
).split()

WASTE_COLS = "block_size waste waste_step_mean waste_max preemptions peak_running".split()


def mixed_requests(
    n: int, max_prompt: int, max_new: int, vocab: int, seed: int = 0
) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [
        ([rng.randrange(vocab) for _ in range(rng.randint(8, max_prompt))], rng.randint(16, max_new))
        for _ in range(n)
    ]


def run_engine(
    model: Any,
    reqs: list,
    slots: int,
    block_size: int,
    max_batch: int,
    waste: bool = True,
    attention_kernel: str = "auto",
) -> tuple[Engine, dict]:
    """Serve ``reqs`` through an engine whose pool holds ``slots`` KV slots; its waste statistics (after
    every step: host-side work, so timed runs pass ``waste=False``)."""
    eng = Engine(model, num_blocks=slots // block_size, block_size=block_size, max_batch=max_batch,
                 token_budget=4096, attention_kernel=attention_kernel)  # fmt: skip
    for p, n in reqs:
        eng.add_request(p, n)
    empty = allocated = 0
    per_step: list[float] = []
    while eng.has_work:
        eng.step()
        if not waste:
            continue
        filled, alloc = eng.cache.used_slots()
        if alloc:
            empty, allocated = empty + alloc - filled, allocated + alloc
            per_step.append(1 - filled / alloc)
    stats = {"preemptions": eng.stats.preemptions, "peak_running": eng.stats.peak_running}
    if per_step:
        stats.update(waste=empty / allocated, waste_step_mean=sum(per_step) / len(per_step),
                     waste_max=max(per_step))  # fmt: skip
    return eng, stats


def paged_waste(model: Any, args: Any, blocks: tuple[int, ...] = (8, 16)) -> list[dict]:
    """Waste of the engine request set per block size (not a timing: run it anywhere)."""
    reqs = mixed_requests(args.requests, args.max_prompt, args.max_new, model.config.vocab_size)
    slots = args.static_batch * (args.max_prompt + args.max_new)
    return [{"block_size": b, **run_engine(model, reqs, slots, b, 4 * args.static_batch)[1]} for b in blocks]


def _agreement(a: dict[int, list[int]], b: dict[int, list[int]]) -> float:
    same = sum(x == y for i in a for x, y in zip(a[i], b[i], strict=True))
    return same / sum(len(v) for v in a.values())


@torch.no_grad()
def engine_vs_static_batching(
    model: Any, args: Any, device: torch.device, blocks: tuple[int, ...] = (8, 16)
) -> list[dict]:
    """Rows: HF static batching, TinyLM static batching, the engine per block size, and (where the decode
    kernel runs) the engine with the gather path at the first block size; same requests, same KV slots,
    each timed as the median of ``args.repeats`` runs after one warm-up."""
    reqs = mixed_requests(args.requests, args.max_prompt, args.max_new, model.config.vocab_size)
    useful = sum(n for _, n in reqs)
    group = args.static_batch
    slots = group * (args.max_prompt + args.max_new)  # what a padded batch of `group` reserves
    chunks = [reqs[i : i + group] for i in range(0, len(reqs), group)]
    padded = [pad_prompts([p for p, _ in c], 0) for c in chunks]
    rows: list[dict] = []

    def timed(name: str, fn, **extra) -> dict:
        try:
            ms = measure(fn, 1, args.repeats, device).median
            row = {"system": name, "tokens_per_s": useful / ms * 1e3, **extra}
        except Exception as e:  # a missing baseline must not hide the other rows
            row = {"system": name, "error": repr(e)[:200], **extra}
        rows.append(row)
        return row

    outputs: dict[str, dict[int, list[int]]] = {}

    def hf_static():
        got = {}
        for c, (ids, mask) in zip(chunks, padded, strict=True):
            n = max(k for _, k in c)
            out = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)  # fmt: skip
            for r, (_, k) in enumerate(c):
                got[len(got)] = out[r, ids.size(1) : ids.size(1) + k].tolist()
        outputs["hf"] = got

    def tinylm_static():
        got = {}
        for c, (ids, mask) in zip(chunks, padded, strict=True):
            n = max(k for _, k in c)
            out = generate(model, ids.to(device), n, temperature=0.0, attention_mask=mask.to(device))
            for r, (_, k) in enumerate(c):
                got[len(got)] = out[r, ids.size(1) : ids.size(1) + k].tolist()
        outputs["tinylm_static"] = got

    try:
        from tinylm.core.hf import to_hf

        hf = to_hf(model).to(device=device, dtype=next(model.parameters()).dtype).eval()
        hf.generation_config.eos_token_id = None  # never stop early
        timed("HF static batching (generate)", hf_static, kv_slots=slots)
    except Exception as e:
        rows.append({"system": "HF static batching (generate)", "error": repr(e)[:200]})
    timed("TinyLM static batching (generate)", tinylm_static, kv_slots=slots)
    kernel = Engine(model, num_blocks=1).cache.uses_decode_kernel(device)
    configs = [(b, "auto") for b in blocks] + ([(blocks[0], "never")] if kernel else [])
    for b, mode in configs:
        key = f"engine{b}{mode}"

        def engine_run(b=b, mode=mode, key=key):
            eng, _ = run_engine(model, reqs, slots, b, 4 * group, waste=False, attention_kernel=mode)
            outputs.setdefault(key, {i: r.output for i, r in eng.finished.items()})

        path = "decode kernel" if kernel and mode == "auto" else "gather"
        row = timed(f"engine (paged, block {b}, {path})", engine_run, block_size=b, kv_slots=slots)
        row.update(run_engine(model, reqs, slots, b, 4 * group)[1])  # waste: one more, untimed run
    first = next((k for k in outputs if k.startswith("engine")), None)
    hf_tps = next((r.get("tokens_per_s") for r in rows if r["system"].startswith("HF")), None)
    static_tps = next((r.get("tokens_per_s") for r in rows if r["system"].startswith("TinyLM")), None)
    for r, key in zip(rows, ["hf", "tinylm_static", *[f"engine{b}{m}" for b, m in configs]], strict=False):
        if "tokens_per_s" in r:
            r["speedup_vs_hf"] = r["tokens_per_s"] / hf_tps if hf_tps else None
            r["speedup_vs_tinylm_static"] = r["tokens_per_s"] / static_tps if static_tps else None
        if first and key in outputs:
            r["agreement_vs_first_engine"] = _agreement(outputs[first], outputs[key])
    return rows


KERNEL_COLS = (
    "batch heads kv_heads head_dim block_size mean_length kernel_us gather_sdpa_us speedup max_abs_err error"
).split()
KERNEL_SHAPES = (  # (batch, heads, kv heads, head_dim, block size, max length)
    (1, 6, 6, 64, 8, 512),
    (48, 6, 6, 64, 8, 512),
    (48, 6, 6, 64, 16, 512),
    (32, 12, 12, 64, 16, 1024),
    (32, 12, 4, 128, 8, 1024),
    (8, 8, 8, 256, 32, 2048),
)


@torch.no_grad()
def paged_kernel_speed(device: torch.device, repeats: int, calls: int = 20) -> list[dict]:
    """``paged_decode_attention``: the Triton kernel vs the gather + SDPA reference on the same bf16 pool,
    ragged lengths in [max/2, max]; microseconds per call (``calls`` per timed run, median of runs)."""
    from tinylm.kernels import choose
    from tinylm.kernels.paged_attention import paged_decode_attention

    if choose("paged_decode_attention", device=device).name == "torch":
        return [
            {"error": f"no paged_decode_attention kernel on {device} (the reference is the only backend)"}
        ]
    rows = []
    for b, h, hkv, hd, bs, max_len in KERNEL_SHAPES:
        g = torch.Generator().manual_seed(b + hd)
        lengths = torch.randint(max_len // 2, max_len + 1, (b,), generator=g)
        width = -(-max_len // bs)
        table = torch.randperm(b * width, generator=g).view(b, width).to(device, torch.int32)
        q = torch.randn(b, h, hd, generator=g).to(device, torch.bfloat16)
        k = torch.randn(b * width * bs, hkv, hd, generator=g).to(device, torch.bfloat16)
        v = torch.randn(b * width * bs, hkv, hd, generator=g).to(device, torch.bfloat16)
        lens = lengths.to(device, torch.int32)
        args = (q, k, v, table, lens, bs)

        def run(backend, args=args):
            return lambda: [paged_decode_attention(*args, backend=backend) for _ in range(calls)]

        err = (paged_decode_attention(*args, backend="triton").float()
               - paged_decode_attention(*args, backend="torch").float()).abs().max().item()  # fmt: skip
        t_k = measure(run("triton"), 2, repeats, device).median * 1e3 / calls
        t_r = measure(run("torch"), 2, repeats, device).median * 1e3 / calls
        rows.append(dict(batch=b, heads=h, kv_heads=hkv, head_dim=hd, block_size=bs,
                         mean_length=float(lengths.float().mean()), kernel_us=t_k, gather_sdpa_us=t_r,
                         speedup=t_r / t_k, max_abs_err=err))  # fmt: skip
    return rows
