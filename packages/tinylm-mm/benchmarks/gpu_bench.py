"""tinylm-mm on a GPU: log-mel front end, cached captioning, captioner training; checked, then timed.

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) \
        python packages/tinylm-mm/benchmarks/gpu_bench.py --out $OUT

1. Correctness: ``LogMel`` (CUDA, float32 and float64) vs an independent float64 numpy reference (framed
   rfft, hand-written mel triangles); cached ``MultimodalLM.generate`` vs greedy full recomputation.
2. Timing (CUDA events, warm-up, median of repeats; CPU baselines by wall clock in the same run):
   log-mel of a batch of 1 s 16 kHz clips (Whisper settings) on GPU vs CPU; caption generation with the
   KV cache vs recomputing the whole sequence each step; captioner training steps/s.
3. Training: the digits captioner (or the synthetic-audio one when scikit-learn is missing) to held-out
   accuracy, with chance/majority baselines.
Writes results.json, a markdown table (printed too) and gpu_bench.png (if matplotlib imports) to --out.
Runs on CPU with --quick (tiny sizes) for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tinylm.mm import MM_DATASETS, CaptionTrainConfig, LogMel, MelConfig, build_captioner, train_captioner


def reference_log_mel(x: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """Independent float64 log-mel: framed numpy rfft, periodic Hann, HTK-mel Slaney triangles."""
    n_fft, hop, sr = cfg.n_fft, cfg.hop_length, cfg.sample_rate
    padded = np.pad(x, n_fft // 2, mode="reflect")
    n = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(np.stack([padded[i * hop : i * hop + n_fft] * window for i in range(n)]))) ** 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    pts = 700.0 * (10.0 ** (np.linspace(mel(0.0), mel(sr / 2), cfg.n_mels + 2) / 2595.0) - 1.0)
    f = np.arange(n_fft // 2 + 1) * sr / n_fft
    lo, c, hi = pts[:-2], pts[1:-1], pts[2:]
    fb = (
        np.clip(np.minimum((f[:, None] - lo) / (c - lo), (hi - f[:, None]) / (hi - c)), 0, None)
        * 2
        / (hi - lo)
    )
    log_mel = np.log10(np.maximum(power @ fb, 1e-10)).T
    return (np.maximum(log_mel, log_mel.max() - 8.0) + 4.0) / 4.0


def cuda_time(fn, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of ``fn()`` by CUDA events (wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_time(fn, warmup: int = 1, repeats: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def generate_uncached(model, modality: str, media: torch.Tensor, max_new: int) -> list[list[int]]:
    """Greedy captions by rerunning the whole sequence every step (the baseline for the KV cache)."""
    x = model.prefix_embeddings(modality, media)
    out = [[] for _ in range(media.size(0))]
    done = torch.zeros(media.size(0), dtype=torch.bool, device=media.device)
    for _ in range(max_new):
        logits = model.lm(None, inputs_embeds=x).logits[:, -1]
        logits[:, model.config.text_vocab_size :] = float("-inf")
        nxt = logits.argmax(-1)
        done |= nxt == model.config.eos_id
        for i in (~done).nonzero().flatten().tolist():
            out[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        x = torch.cat([x, model.lm.tok_emb(nxt[:, None])], dim=1)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_bench_out"))
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    torch.manual_seed(0)
    results: dict = {"device": name, "torch": torch.__version__, "rows": []}
    rows = results["rows"]

    # 1. log-mel correctness and speed (Whisper settings: 16 kHz, n_fft 400, hop 160, 80 mels)
    cfg = MelConfig(sample_rate=16000, n_fft=400, hop_length=160, n_mels=80)
    rng = np.random.default_rng(0)
    clip = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) + 0.1 * rng.standard_normal(16000)
    ref = reference_log_mel(clip, cfg)
    front = LogMel(cfg).to(dev)
    err64 = float(np.abs(front(torch.tensor(clip, device=dev))[0].cpu().numpy() - ref).max())
    err32 = float(
        np.abs(
            front(torch.tensor(clip, dtype=torch.float32, device=dev))[0].double().cpu().numpy() - ref
        ).max()
    )
    results["log_mel_max_abs_err"] = {"float64": err64, "float32": err32}
    assert err64 < 1e-8 and err32 < 1e-3, (err64, err32)
    batch = 8 if args.quick else 256
    waves = torch.randn(batch, 16000)
    gpu_ms = cuda_time(lambda: front(waves.to(dev, non_blocking=True)))
    cpu_front = LogMel(cfg)
    cpu_ms = cpu_time(lambda: cpu_front(waves))
    rows.append({"what": f"log-mel, {batch} x 1 s @16 kHz", "baseline": "CPU torch (same code)",
                 "baseline_ms": cpu_ms, "ms": gpu_ms, "speedup": cpu_ms / gpu_ms})  # fmt: skip

    # 2. train a captioner (digits if scikit-learn is there, else synthetic audio) and time its steps
    try:
        import sklearn  # noqa: F401

        data_name, encoders = "mm_digits", {"image": {"name": "patch", "patch_size": 2, "width": 64}}
        options = {}
    except ImportError:
        data_name, encoders = "mm_audio", {"audio": {"name": "whisper_conv", "width": 64}}
        options = {"num_clips": 200 if args.quick else 1200}
    train, test = MM_DATASETS.build(data_name, **options)
    lm = dict(dim=64, n_layers=2, n_heads=4, max_seq_len=64)
    model, tok = build_captioner(train, lm, encoders)
    steps = 20 if args.quick else 1000
    tcfg = CaptionTrainConfig(steps=steps, batch_size=32, eval_interval=max(1, steps // 4), device=dev.type)
    t0 = time.perf_counter()
    summary = train_captioner(model, tok, train, test, tcfg, out_dir=out / "captioner_run")
    train_s = time.perf_counter() - t0
    results["training"] = {
        "data": data_name, "steps": steps, "wall_s_incl_eval": train_s,
        "held_out_accuracy": summary["test"]["accuracy"], "baselines": summary["baselines"],
        "test_loss": [summary["initial_test_loss"], summary["final_test_loss"]],
    }  # fmt: skip

    # 3. cached generation vs full recomputation: same captions, then timed
    model.eval()
    media = test.media[: (8 if args.quick else 256)].to(dev)
    cached = model.generate(test.modality, media, 12)
    full = generate_uncached(model, test.modality, media, 12)
    assert cached == full, "cached generation differs from full recomputation"
    gen_ms = cuda_time(lambda: model.generate(test.modality, media, 12), repeats=5)
    full_ms = cuda_time(lambda: generate_uncached(model, test.modality, media, 12), repeats=5)
    rows.append({"what": f"caption {media.size(0)} {test.modality}s (greedy, <=12 tokens)",
                 "baseline": "recompute whole sequence each step", "baseline_ms": full_ms, "ms": gen_ms,
                 "speedup": full_ms / gen_ms})  # fmt: skip
    from tinylm.mm.data import batches

    stream = batches(train, 32, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        loss = model(next(stream).to(dev)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_ms = cuda_time(step, repeats=20)
    rows.append({"what": "captioner train step (batch 32)", "baseline": "-", "baseline_ms": float("nan"),
                 "ms": step_ms, "speedup": float("nan")})  # fmt: skip

    table = ["| what | baseline | baseline ms | ms | speedup |", "|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['what']} | {r['baseline']} | {r['baseline_ms']:.2f} | {r['ms']:.2f} | "
                     f"{r['speedup']:.2f}x |")  # fmt: skip
    tr = results["training"]
    table += ["", f"device: {name}; log-mel max abs error vs float64 numpy: float64 {err64:.2e}, float32 "
              f"{err32:.2e}; {tr['data']} captioner, {steps} steps: held-out accuracy "
              f"{tr['held_out_accuracy']:.1%} (chance {tr['baselines']['chance']:.1%}, majority "
              f"{tr['baselines']['majority']:.1%}), {tr['wall_s_incl_eval']:.1f} s incl. evals"]  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text("\n".join(table) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        timed = [r for r in rows if r["baseline_ms"] == r["baseline_ms"]]
        y = np.arange(len(timed))
        ax.barh(y - 0.2, [r["baseline_ms"] for r in timed], 0.4, label="baseline")
        ax.barh(y + 0.2, [r["ms"] for r in timed], 0.4, label=name)
        ax.set(yticks=y, yticklabels=[r["what"] for r in timed], xlabel="ms (median)", xscale="log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "gpu_bench.png", dpi=100)
    except ImportError:
        pass
    print("\n".join(table))


if __name__ == "__main__":
    main()
