"""Scaling of tinylm-dist's DDP and FSDP2 over 1..N GPUs of one host, in one call.

    python packages/tinylm-dist/benchmarks/scaling.py --out $OUT            # every GPU count up to all
    python packages/tinylm-dist/benchmarks/scaling.py --gpus 1,2 --presets large

For each preset (``large`` ~110M, ``xl`` ~340M, 16K vocab), strategy (``ddp``, ``fsdp2``) and GPU count N
(1, 2, 4, 8 up to the GPUs present), this script launches ``torchrun --nproc-per-node N`` on itself
(``--worker``). Every run trains the same model from the same seed on the same global batch of
``micro_batch * lcm(Ns) * seq_len`` tokens per step (each rank a micro-batch of ``micro_batch`` sequences,
``lcm(Ns) / N`` accumulation steps; ``--micro-batches M`` puts ``M`` in place of ``lcm(Ns)``), so the
per-GPU work per micro-batch is constant (weak scaling) and the
loss after a fixed number of tokens should agree across N. Steps go through the real ``Trainer.train_step``
(exact accumulation, ``no_sync`` / ``set_requires_gradient_sync``, clipping, AdamW), bf16 autocast (FSDP2:
bf16 ``MixedPrecisionPolicy`` with fp32 reduction), timed with CUDA events after warm-up steps; the median
step time gives tokens/s. Reported per run: tokens/s, scaling efficiency ``tok/s(N) / (N * tok/s(1))``,
per-GPU peak memory (max over ranks), per-GPU bytes of parameters + gradients + AdamW state (measured
from the tensors each rank holds), MFU against this card's measured bf16 matmul rate (8192^3 ``torch.mm``),
and the loss at the last step. Output: a markdown table, ``scaling.json`` and ``scaling.png`` in --out.
``ddp_nosync`` runs DDP with every micro-batch under ``no_sync``: the same processes without the gradient
all-reduce, which tells the communication's cost from the host's (two busy processes, clocks) when the
DDP speedup falls short. The data are a seeded synthetic Markov chain (learnable, no files needed).
``--device cpu`` runs the same thing with Gloo on tiny sizes (a smoke test of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tinylm.core import ModelConfig, TinyLM
from tinylm.core.bench.environment import collect_environment, describe_environment
from tinylm.core.bench.flops import flops_per_token, measure_matmul_tflops
from tinylm.core.data import BatchIterator, PackedBlocks
from tinylm.dist import TrainConfig, Trainer, build_strategy

VOCAB = 16384
NUMA_MODES = ("node", "socket", "exclusive", "core-complex")  # torch.numa.binding.AffinityMode values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "scaling_out"), help="directory for results")
    p.add_argument("--presets", default="large,xl", help="tinylm.core SIZE_PRESETS names")
    p.add_argument(
        "--strategies",
        default="ddp,fsdp2",
        help="ddp, fsdp2, and ddp_nosync: DDP without its gradient all-reduce (a diagnostic)",
    )
    p.add_argument("--gpus", default=None, help="GPU counts, e.g. 1,2,4,8 (default: powers of 2 up to all)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per rank per micro-batch")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (slower start)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: Gloo smoke test")
    p.add_argument("--timeout", type=int, default=150, help="seconds per torchrun launch")
    p.add_argument("--micro-batches", type=int, default=0,
                   help="micro-batches per optimizer step over all GPUs (a multiple of every GPU count; "
                   "default: their lcm). More amortizes the per-step optimizer and all-reduce")  # fmt: skip
    p.add_argument("--launches", type=int, default=1, help="launches per run, in rounds (median kept)")
    p.add_argument("--numa-binding", choices=NUMA_MODES, default=None,
                   help="torchrun's --numa-binding: each rank's CPU threads on the cores near its GPU "
                   "(cuda only; a host-bound step pays for a far core)")  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--strategy", help=argparse.SUPPRESS)
    p.add_argument("--accum", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.numa_binding and args.device != "cuda":
        p.error("--numa-binding binds ranks to the CPUs near their GPU: it needs --device cuda")
    return args


def markov_tokens(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    """A seeded Markov chain: each token has 4 likely successors (p=0.9 together) -- learnable."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab, (vocab, 4))
    choice, noise = rng.integers(0, 4, n), rng.random(n) < 0.1
    random_tokens = rng.integers(0, vocab, n)
    out = np.empty(n, dtype=np.int64)
    out[0] = 0
    for i in range(1, n):  # vectorising a chain is not worth it at this size
        out[i] = random_tokens[i] if noise[i] else successors[out[i - 1], choice[i]]
    return out


def local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def worker(args: argparse.Namespace) -> None:
    """One rank of one run (under torchrun): train, time, measure, and (rank 0) write ``--result``."""
    cuda = args.device == "cuda"
    options = {"activation_checkpointing": args.activation_checkpointing}
    if args.strategy == "fsdp2" and cuda:
        options.update(param_dtype="bfloat16", reduce_dtype="float32")
    # ddp_nosync: DDP replicas that never all-reduce their gradients (every micro-batch under no_sync): the
    # same processes, model and data as ddp minus its communication, to tell that cost from the host's
    nosync = args.strategy == "ddp_nosync"
    strategy = build_strategy("ddp" if nosync else args.strategy, args.device, **options)
    rank, world, device = strategy.rank, strategy.world_size, strategy.device
    matmul_tflops = measure_matmul_tflops(device, torch.bfloat16 if cuda else torch.float32)
    cfg = ModelConfig.from_preset(args.preset, vocab_size=VOCAB if cuda else 512, max_seq_len=args.seq_len)
    torch.manual_seed(0)
    with torch.device(device):
        model = TinyLM(cfg)
    params = model.num_parameters()
    flops_tok = flops_per_token(model, args.seq_len)
    steps = args.warmup + args.steps
    global_seqs = args.micro_batch * args.accum * world
    tokens = markov_tokens(global_seqs * (args.seq_len + 1) * (steps + 2), cfg.vocab_size)
    data = BatchIterator(
        PackedBlocks(tokens, args.seq_len), args.micro_batch, seed=1, rank=rank, world_size=world
    )
    train_cfg = TrainConfig(
        max_steps=steps, batch_size=args.micro_batch, grad_accum_steps=args.accum, lr=6e-4, min_lr=6e-5,
        warmup_steps=2, dtype="bfloat16" if cuda else "float32", device=args.device, compile=args.compile,
        progress=False, seed=0,
    )  # fmt: skip
    trainer = Trainer(model, train_cfg, data, out_dir=tempfile.mkdtemp(), strategy=strategy)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    losses, times, host = [], [], []
    for step in range(steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        with trainer.train_model.no_sync() if nosync and world > 1 else contextlib.nullcontext():
            stats = trainer.train_step()
        if cuda:
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            elapsed = time.perf_counter() - t0
        losses.append(stats["loss"])
        if step >= args.warmup:
            times.append(elapsed)
            host.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else 0
    # what each rank holds for training: parameters, gradients (one more accumulation) and AdamW state
    trainer.accumulate_gradients([next(data) for _ in range(args.accum)])
    held = trainer.model.parameters()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    opt = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    state_bytes = local_bytes(held) + local_bytes(grads) + local_bytes(opt)
    trainer.optimizer.zero_grad(set_to_none=True)
    worst = torch.tensor([float(peak), float(state_bytes)], device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    step_s = statistics.median(times)
    tokens_per_step = global_seqs * args.seq_len
    tps = tokens_per_step / step_s
    if rank == 0:
        result = {
            "preset": args.preset, "strategy": args.strategy, "gpus": world, "params": params,
            "accum": args.accum, "micro_batch": args.micro_batch, "seq_len": args.seq_len,
            "tokens_per_step": tokens_per_step, "step_ms_median": step_s * 1e3,
            "step_ms_all": [t * 1e3 for t in times], "tokens_per_s": tps,
            "host_ms_median": statistics.median(host) * 1e3,
            "peak_mem_gib": float(worst[0]) / 2**30, "state_gib_per_gpu": float(worst[1]) / 2**30,
            "matmul_tflops": matmul_tflops, "mfu": tps / world * flops_tok / (matmul_tflops * 1e12),
            "losses": losses, "final_loss": losses[-1], "tokens_trained": tokens_per_step * steps,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu", "compile": args.compile,
        }  # fmt: skip
        Path(args.result).write_text(json.dumps(result, indent=2))
    strategy.close()


def gpu_counts(spec: str | None, available: int) -> list[int]:
    if spec:
        counts = sorted({int(n) for n in spec.split(",")})
        if not counts or counts[0] < 1 or counts[-1] > available:
            raise SystemExit(f"--gpus {spec}: counts must be in 1..{available} (GPUs available here)")
        return counts
    counts = [n for n in (1, 2, 4, 8) if n <= available]
    return counts + ([available] if available not in counts else [])


def torchrun_command(
    args: argparse.Namespace, preset: str, strategy: str, n: int, accum: int, result: Path
) -> list[str]:
    """``torchrun`` (its own options first) on this script as one ``--worker`` run of ``n`` ranks."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
    cmd += [f"--numa-binding={args.numa_binding}"] if args.numa_binding else []
    cmd += [__file__, "--worker", f"--preset={preset}", f"--strategy={strategy}", f"--accum={accum}"]
    cmd += [f"--result={result}", f"--seq-len={args.seq_len}", f"--micro-batch={args.micro_batch}"]
    cmd += [f"--steps={args.steps}", f"--warmup={args.warmup}", f"--device={args.device}"]
    cmd += ["--compile"] * args.compile + ["--activation-checkpointing"] * args.activation_checkpointing
    return cmd


def launch(args: argparse.Namespace, preset: str, strategy: str, n: int, accum: int, out: Path) -> dict:
    result = out / f"run_{preset}_{strategy}_{n}.json"
    cmd = torchrun_command(args, preset, strategy, n, accum, result)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"preset": preset, "strategy": strategy, "gpus": n, "error": f"timeout {args.timeout}s"}
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {"preset": preset, "strategy": strategy, "gpus": n, "error": f"rc={proc.returncode}: {tail}"}
    row = json.loads(result.read_text())
    row["launch_s"] = time.perf_counter() - t0
    return row


def summarise(rows: list[dict]) -> None:
    """Add efficiency, state-memory ratio and loss difference against the 1-GPU run of the same kind."""
    base = {(r["preset"], r["strategy"]): r for r in rows if r.get("gpus") == 1 and "error" not in r}
    for r in rows:
        b = base.get((r["preset"], r["strategy"]))
        if "error" in r or b is None:
            continue
        r["scaling_efficiency"] = r["tokens_per_s"] / (r["gpus"] * b["tokens_per_s"])
        r["speedup"] = r["tokens_per_s"] / b["tokens_per_s"]
        r["state_vs_1gpu"] = r["state_gib_per_gpu"] / b["state_gib_per_gpu"]
        r["loss_diff_vs_1gpu"] = r["final_loss"] - b["final_loss"]
        # launches of one round ran back to back: their ratio is the speedup least moved by host drift
        pairs = zip(r.get("tokens_per_s_launches", []), b.get("tokens_per_s_launches", []), strict=True)
        r["speedup_rounds"] = [n / one for n, one in pairs if n is not None and one is not None]


def launch_losses(r: dict) -> list[float]:
    """A run's final loss in every launch that finished (the kept launch alone for older results)."""
    return [x for x in r.get("final_loss_launches", [r["final_loss"]]) if x is not None]


def check_losses(rows: list[dict], tolerance: float = 0.02) -> str:
    """The correctness check: the same global batches give the same loss whatever the GPU count.

    Each GPU count's loss is the mean over its launches: on GPUs, launches of one configuration differ by
    their nondeterministic kernels (atomics in the backward), so a single launch's loss carries that noise;
    the largest launch-to-launch spread of one count is printed next to the verdict. DDP (fp32 weights,
    bf16 autocast) and FSDP2 (bf16 compute copies) round differently, so they are compared with each other
    for information only.
    """
    # replicas without gradient sync (ddp_nosync) are not the same training: left out
    ok = [r for r in rows if "error" not in r and r["strategy"] != "ddp_nosync"]
    if not ok:
        return "loss check: no successful runs"
    lines = []
    for preset, strategy in sorted({(r["preset"], r["strategy"]) for r in ok}):
        runs = [launch_losses(r) for r in ok if (r["preset"], r["strategy"]) == (preset, strategy)]
        means = [statistics.fmean(x) for x in runs]
        spread = max(means) - min(means)
        noise = max(max(x) - min(x) for x in runs)
        verdict = "PASS" if spread <= tolerance else "FAIL"
        lines.append(
            f"loss check {preset} {strategy}: spread {spread:.4f} over {len(means)} GPU counts "
            f"(mean of launches; <= {tolerance}): {verdict}; launch-to-launch spread within one count "
            f"up to {noise:.4f}"
        )
    for preset in sorted({r["preset"] for r in ok}):
        losses = [r["final_loss"] for r in ok if r["preset"] == preset]
        lines.append(f"loss {preset} all runs (ddp and fsdp2): {min(losses):.4f} .. {max(losses):.4f}")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = (
        "| model | strategy | GPUs | tok/s | speedup | efficiency | peak mem/GPU GiB "
        "| params+grads+opt/GPU GiB (vs 1 GPU) | MFU | loss @ tokens |\n" + "|---" * 10 + "|"
    )
    lines = [head]
    for r in rows:
        name = f"{r['preset']} ({r['params'] / 1e6:.0f}M)" if "params" in r else r["preset"]
        if "error" in r:
            lines.append(f"| {name} | {r['strategy']} | {r['gpus']} | failed: {r['error'][:80]!r} |")
            continue
        eff = r.get("scaling_efficiency")
        lines.append(
            f"| {name} | {r['strategy']} | {r['gpus']} | {r['tokens_per_s']:,.0f} | "
            f"{r.get('speedup', 0):.2f}x | {eff * 100:.1f}% | {r['peak_mem_gib']:.2f} | "
            f"{r['state_gib_per_gpu']:.2f} "
            f"({r.get('state_vs_1gpu', math.nan):.2f}x) | {r['mfu'] * 100:.1f}% | "
            f"{r['final_loss']:.4f} @ {r['tokens_trained'] / 1e6:.2f}M |"
            if eff is not None
            else f"| {name} | {r['strategy']} | {r['gpus']} | {r['tokens_per_s']:,.0f} | no 1-GPU baseline |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    kinds = sorted({(r["preset"], r["strategy"]) for r in rows if "error" not in r})
    for preset, strategy in kinds:
        pts = sorted((r["gpus"], r["tokens_per_s"]) for r in rows if "error" not in r
                     and (r["preset"], r["strategy"]) == (preset, strategy))  # fmt: skip
        xs, ys = zip(*pts, strict=True)
        (line,) = ax.plot(xs, ys, marker="o", label=f"{preset} {strategy}")
        if xs[0] == 1:
            ax.plot(xs, [ys[0] * x for x in xs], ls=":", color=line.get_color(), alpha=0.6)
    ax.set_xticks(sorted({r["gpus"] for r in rows}))
    ax.set_xlabel("GPUs (one host)")
    ax.set_ylabel("tokens/s")
    ax.set_title("tinylm-dist scaling (dotted: linear from 1 GPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    available = torch.cuda.device_count() if args.device == "cuda" else 2
    if available == 0:
        raise SystemExit("no CUDA device: run with --device cpu for a smoke test")
    counts = gpu_counts(args.gpus, available)
    micro_batches = args.micro_batches or math.lcm(*counts)
    if any(micro_batches % n for n in counts):
        raise SystemExit(f"--micro-batches {micro_batches} must be a multiple of every GPU count {counts}")
    bad = sorted(set(args.strategies.split(",")) - {"ddp", "fsdp2", "ddp_nosync"})
    if bad:
        raise SystemExit(f"--strategies: unknown {bad}; allowed: ddp, fsdp2, ddp_nosync")
    runs = [(p, s, n) for p in args.presets.split(",") for s in args.strategies.split(",") for n in counts]
    global_seqs = args.micro_batch * micro_batches
    print(f"{len(runs)} runs, GPU counts {counts}, global batch {global_seqs} x {args.seq_len}")
    rows = []
    t0 = time.perf_counter()
    # --launches > 1: the runs are repeated in rounds (1, 2, 4, 1, 2, 4, ...) so a slow phase of the host
    # does not land on one GPU count only; each row keeps the launch with the median tokens/s
    tries: dict[tuple[str, str, int], list[dict]] = {}
    for round_ in range(args.launches):
        for i, (preset, strategy, n) in enumerate(runs, 1):
            row = launch(args, preset, strategy, n, micro_batches // n, out)
            tries.setdefault((preset, strategy, n), []).append(row)
            status = row.get("error", f"{row.get('tokens_per_s', 0):,.0f} tok/s")[:200]
            print(f"[{round_ + 1}.{i}/{len(runs)}] {preset} {strategy} x{n}: {status} "
                  f"({time.perf_counter() - t0:.0f}s)")  # fmt: skip
    for key in runs:
        ok = sorted((r for r in tries[key] if "error" not in r), key=lambda r: r["tokens_per_s"])
        if not ok:
            rows.append(tries[key][-1])
            continue
        row = ok[(len(ok) - 1) // 2]
        row["tokens_per_s_launches"] = [r["tokens_per_s"] if "error" not in r else None for r in tries[key]]
        row["final_loss_launches"] = [r["final_loss"] if "error" not in r else None for r in tries[key]]
        rows.append(row)
    summarise(rows)
    env = collect_environment(args.device, repo=Path(__file__).resolve().parent)  # after the runs: no context
    meta = {"command": " ".join(sys.argv), "environment": env, "gpu_counts": counts,
            "global_batch_seqs": global_seqs, "total_s": time.perf_counter() - t0}  # fmt: skip
    (out / "scaling.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
    has_png = plot(rows, out / "scaling.png")
    device = next((r["device"] for r in rows if "device" in r), "?")
    matmul = next((r["matmul_tflops"] for r in rows if "matmul_tflops" in r), math.nan)
    kind = "bf16" if args.device == "cuda" else "fp32"
    print(f"\n## tinylm-dist scaling on {device} (measured {kind} matmul {matmul:.1f} TFLOP/s per device)\n")
    print(describe_environment(env) + f"; command: {meta['command']}\n")
    print(table(rows))
    for r in rows:
        if len(r.get("speedup_rounds", [])) > 1:
            per_round = ", ".join(f"{x:.3f}" for x in r["speedup_rounds"])
            print(f"speedup per round {r['preset']} {r['strategy']} x{r['gpus']}: {per_round} "
                  f"(median {statistics.median(r['speedup_rounds']):.3f}x)")  # fmt: skip
    print(check_losses(rows))
    print(f"\nwrote {out / 'scaling.json'}" + (f" and {out / 'scaling.png'}" if has_png else ""))


if __name__ == "__main__":
    main()
