"""Stream a continuation from a trained checkpoint: ``uv run apps/infer.py --ckpt DIR --prompt "Once upon"``.

The checkpoint directory holds model.safetensors + config.json (tinylm-core) and tokenizer.json. Without
``--ckpt`` the shipped demo story model (models/stories) is used; ``--ckpt shakespeare`` names the other.
``--temperature 0`` is greedy. ``--cache NAME`` picks a KV cache from ``CACHES`` (tinylm-cache: static, paged,
quantized, sliding_window, ...); ``--engine FILE`` serves every line of FILE as a prompt through the
continuous-batching engine. ``--quant SCHEME`` quantizes the model (tinylm-quant; a directory written by
``save_quantized`` loads as saved). ``--fast`` decodes greedily with fused projections, a static cache and
one CUDA graph per token (tinylm.cache.fast_decode; int8 GEMV: prepare_int8_decode). Errors: one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tinylm.cache import serve_prompts
from tinylm.cache.decode_blocks import FOLDS
from tinylm.cache.fast_decode import fast_greedy, parse_inductor_options
from tinylm.core import CACHES, CheckpointError
from tinylm.core.data import load_tokenizer
from tinylm.core.generate import stream
from tinylm.mm import caption_file
from tinylm.quant import SCHEMES, load_model
from tinylm.quant.gemv import prepare_int8_decode

SHIPPED = Path(__file__).resolve().parents[1] / "models"
FAST_DEFAULTS = {"steps_per_graph": 1, "decode_attention": "sdpa", "decode_blocks": None}  # without --fast


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--ckpt", default="stories", help="checkpoint directory, or a shipped model: stories, shakespeare"
    )
    p.add_argument("--prompt", default="Once upon a time", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--cache", default="standard", help=f"KV cache: {', '.join(CACHES.names())}")
    p.add_argument("--quant", default="none", help=f"quantization scheme: {', '.join(SCHEMES)}")
    p.add_argument("--engine", metavar="FILE", help="serve each line of FILE through the batching engine")
    p.add_argument("--fast", action="store_true", help="fast greedy decoding (with --temperature 0)")
    p.add_argument("--steps-per-graph", type=int, default=1, help="--fast: greedy steps per graph replay")
    p.add_argument(
        "--inductor-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--fast: a torch._inductor.config setting, e.g. combo_kernels=True (repeatable)",
    )
    p.add_argument("--decode-attention", default="sdpa", help="--fast: sdpa, math, kernel, kernel_rope")
    p.add_argument("--decode-blocks", choices=FOLDS, help="--fast: fold small ops into each block's products")
    media = p.add_mutually_exclusive_group()  # captioners (tinylm-mm): --ckpt <train run dir>/captioner
    media.add_argument("--image", help="caption this image file (greedy) with a tinylm-mm captioner")
    media.add_argument("--audio", help="caption this WAV file (greedy) with a tinylm-mm captioner")
    return p.parse_args(argv)


def resolve_checkpoint(name: str) -> Path:
    """A directory as given, else the shipped model of that name (models/<name>)."""
    path = Path(name)
    if not path.exists() and (SHIPPED / name).is_dir():
        return SHIPPED / name
    return path


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.image or args.audio:
            modality, path = ("image", args.image) if args.image else ("audio", args.audio)
            print(caption_file(resolve_checkpoint(args.ckpt), path, modality, args.device, seed=args.seed))
            return 0
        if not args.prompt:
            raise ValueError("empty prompt: pass some text with --prompt")
        device = pick_device(args.device)
        ckpt = resolve_checkpoint(args.ckpt)
        model = load_model(ckpt, device=device, scheme=args.quant)  # a saved quantized checkpoint as is
        if args.fast and args.quant == "int8_weight_only_gemv":
            prepare_int8_decode(model)  # fused int8 q/k/v and gate/up with the RMSNorms folded in
        tok = load_tokenizer(ckpt)
        if args.engine:
            prompts = Path(args.engine).read_text(encoding="utf-8").splitlines()
            sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
            for i, text in serve_prompts(model, tok, prompts, args.max_new_tokens, **sampling):
                print(f"[{i}] {prompts[i]}{text}", flush=True)
            return 0
        ids = tok.encode(args.prompt, add_bos=True)
        limit = model.pos.max_positions or model.config.max_seq_len
        if limit is not None and len(ids) + args.max_new_tokens > limit:
            if len(ids) >= limit:
                raise ValueError(
                    f"prompt is {len(ids)} tokens but the model's context is {limit}; shorten the prompt"
                )
            args.max_new_tokens = limit - len(ids)
            print(f"warning: --max-new-tokens lowered to {args.max_new_tokens} (context)", file=sys.stderr)
        generator = torch.Generator(device=device).manual_seed(args.seed)
        if args.fast and (args.temperature != 0 or args.cache != "standard"):
            raise ValueError(
                "--fast decodes greedily with its own static cache: pass --temperature 0, no --cache"
            )
        cache = None if args.fast else CACHES.build(
            args.cache, config=model.config, batch_size=1, max_seq_len=len(ids) + args.max_new_tokens,
            device=device, dtype=next(model.parameters()).dtype,
        )  # fmt: skip
        fast = {k: getattr(args, k) for k in ("steps_per_graph", "decode_attention", "decode_blocks")}
        if (fast != FAST_DEFAULTS or args.inductor_option) and not args.fast:
            raise ValueError("--steps-per-graph, --inductor-option and --decode-* need --fast")
        fast["inductor_options"] = parse_inductor_options(args.inductor_option)
        steps = fast_greedy(model, torch.tensor([ids]), args.max_new_tokens, **fast) if args.fast else stream(
            model, torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop_tokens=[tok.eos_id],
            pad_id=tok.pad_id, generator=generator, cache=cache,
        )  # fmt: skip
        print(args.prompt, end="", flush=True)
        new: list[int] = []
        shown = ""
        for token in steps:
            if int(token[0]) == tok.eos_id:
                break
            new.append(int(token[0]))
            text = tok.decode(new)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                print(text[len(shown) :], end="", flush=True)
                shown = text
        print()
    except (CheckpointError, ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
