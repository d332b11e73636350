"""The Trainer: exact gradient accumulation, AdamW + LR schedule, AMP, eval, samples, resumable checkpoints.

One optimizer step pulls all ``grad_accum_steps`` micro-batches first, counts their target tokens
(labels != -100) and backpropagates each micro-batch's *summed* loss divided by that total, so the gradient
is exactly the one of the whole batch, even when micro-batches hold different numbers of targets
(averaging per-micro-batch means would weight a token in a short micro-batch more).
Where the model runs and how processes cooperate is the ``Strategy``'s business (``SingleDevice`` here;
DDP/FSDP2 plug in through the same methods). Layout of ``out_dir``:

    metrics.jsonl   train / eval / samples records (tinylm.dist.metrics)
    loss.png        train and val loss against step
    checkpoints/last, checkpoints/best   training checkpoints (tinylm.dist.train_state)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from tinylm.core.model.transformer import IGNORE_INDEX
from tinylm.dist.config import TrainConfig
from tinylm.dist.cuda_graph import CUDAGraphTrainModel, check_cuda_graph_config
from tinylm.dist.metrics import MetricsLogger, format_summary, plot_loss_curve, read_metrics
from tinylm.dist.optim import build_optimizer
from tinylm.dist.schedules import lr_at
from tinylm.dist.strategy import SingleDevice, Strategy
from tinylm.dist.train_state import capture_rng_state, restore_rng_state, seed_everything

log = logging.getLogger(__name__)
AMP_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingDivergedError(RuntimeError):
    """The loss, gradient norm or a weight became NaN/inf; the last good checkpoint was left untouched."""

    def __init__(self, step: int, what: str, value: float | str, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = (
            f"the last good checkpoint is {checkpoint} (not overwritten)"
            if checkpoint is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"training diverged at step {step}: {what} is {value}; {where}. Try a lower train.lr, "
            "train.grad_clip > 0, more warmup, or bfloat16 instead of float16."
        )


class Trainer:
    """Trains a ``TinyLM`` on ``(x, y)`` batches; ``fit()`` runs to ``config.max_steps``, returns a summary.

    ``train_data`` / ``val_data`` are endless iterators of ``(B, T)`` LongTensor pairs with ``state_dict()``
    and ``load_state_dict()`` (``tinylm.core.data.BatchIterator``). ``tokenizer`` (optional; ``encode``,
    ``decode``, ``save``) enables samples at each eval and is saved with every checkpoint. With
    ``config.resume`` and an existing ``out_dir/checkpoints/last``, construction restores the run there.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: Iterator[Batch],
        val_data: Iterator[Batch] | None = None,
        out_dir: str | Path = "out",
        tokenizer: Any = None,
        strategy: Strategy | None = None,
    ) -> None:
        self.config = cfg = config
        self.strategy = strategy if strategy is not None else SingleDevice(cfg.device)
        self.device = self.strategy.device
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.train_data, self.val_data, self.tokenizer = train_data, val_data, tokenizer
        self._decodable = getattr(tokenizer, "vocab_size", None)  # a padded model vocab may sample more
        seed_everything(cfg.seed + self.strategy.rank)  # dropout masks differ across ranks

        self.train_model = self.strategy.setup(model, compile=cfg.compile)
        self.model = self.strategy.unwrap(self.train_model)  # the plain TinyLM: saving and sampling
        self.step_model: nn.Module = self.train_model  # what the training forward calls
        if cfg.cuda_graph:
            check_cuda_graph_config(self.device, cfg.compile, self.strategy.world_size)
            self.step_model = CUDAGraphTrainModel(self.train_model, AMP_DTYPES[cfg.dtype])
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if self._decodable is not None and vocab is not None and self._decodable > vocab:
            raise ValueError(
                f"the tokenizer has {self._decodable} tokens, more than the model's vocab_size={vocab}"
            )
        self.optimizer = build_optimizer(
            self.model, cfg.lr, cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
        )
        self.amp_dtype = AMP_DTYPES[cfg.dtype]
        use_scaler = self.amp_dtype is torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

        self.step = 0  # optimizer steps done
        self.tokens_seen = 0
        self.best_val_loss: float | None = None
        self.last_checkpoint: Path | None = None
        self._elapsed_before, self._t0 = 0.0, time.perf_counter()
        resumed = cfg.resume and (self.checkpoint_dir / "last").is_dir()
        if resumed:
            self.load_checkpoint(self.checkpoint_dir / "last")
        elif cfg.resume:
            self._say(f"resume: no checkpoint at {self.checkpoint_dir / 'last'}; starting from step 0")
        self._val_start = val_data.state_dict() if val_data is not None else None
        self.metrics = MetricsLogger(
            self.out_dir / "metrics.jsonl",
            keep_until_step=self.step if resumed else None,
            enabled=self.strategy.is_main,
        )

    # ---- one optimizer step -------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def accumulate_gradients(self, micro_batches: Sequence[Batch]) -> torch.Tensor:
        """Backpropagate ``micro_batches`` so the summed gradients equal those of one batch of all of them.

        Each micro-batch's summed loss is divided by the target-token count of *all* micro-batches (over all
        processes). Returns the mean loss per target token (detached). Does not step or zero anything.
        """
        if not micro_batches:
            raise ValueError("accumulate_gradients needs at least one (x, y) micro-batch")
        n_targets = sum(int((y != IGNORE_INDEX).sum()) for _, y in micro_batches)
        targets: float | torch.Tensor = float(n_targets)  # one process: a number, no device round trip
        if self.strategy.world_size > 1:
            targets = self.strategy.reduce_mean(torch.tensor(targets, device=self.device))
        if float(targets) == 0:
            raise ValueError("these micro-batches have no target tokens (every label is -100)")
        total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro_batches):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if last else self.strategy.no_sync(self.train_model):
                with self._autocast():
                    loss_sum = self.step_model(x, labels=y, loss_reduction="sum").loss
                scaled = loss_sum / targets
                self.strategy.backward(self.scaler.scale(scaled) if self.scaler is not None else scaled)
            total += loss_sum.detach().float()
        return self.strategy.reduce_mean(total) / targets

    def train_step(self) -> dict[str, float]:
        """One optimizer step: schedule, accumulate, clip, check for divergence, update."""
        cfg = self.config
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [next(self.train_data) for _ in range(cfg.grad_accum_steps)]
        loss_t = self.accumulate_gradients(micro_batches)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")  # inf: measure, don't clip
        norm_t = self.strategy.clip_grad_norm(self.model, max_norm)
        # A fused (CUDA) optimizer is queued before the loss and norm are read, with found_inf set when
        # either is not finite, so its kernel skips that update on the device: one host sync per step,
        # after the GPU has the whole step, instead of one before the update (small models wait on these).
        guarded = self.scaler is None and bool(self.optimizer.defaults.get("fused"))
        if guarded:
            finite = torch.isfinite(loss_t.detach()) & torch.isfinite(norm_t.detach())
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
            del self.optimizer.found_inf
        loss, grad_norm = torch.stack([loss_t.detach().float(), norm_t.detach().float()]).tolist()
        bad = None
        if not math.isfinite(loss):
            bad = ("the loss", loss)
        elif self.scaler is None and not math.isfinite(grad_norm):  # fp16 scaler skips such steps itself
            bad = ("the gradient norm", grad_norm)
        if bad is not None:
            self.optimizer.zero_grad(set_to_none=not self.config.cuda_graph)
            raise TrainingDivergedError(self.step + 1, bad[0], bad[1], self.last_checkpoint)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif not guarded:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=not self.config.cuda_graph)
        self.step += 1
        tokens = sum(x.numel() for x, _ in micro_batches) * self.strategy.world_size
        self.tokens_seen += tokens
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}

    # ---- evaluation and samples ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss per target token over ``eval_batches`` val batches, always the same ones.

        The val iterator is rewound to where it started and put back afterwards, and the model is in eval
        mode (no dropout draws), so evaluating changes nothing that training sees.
        """
        if self.val_data is None:
            raise ValueError("evaluate() needs val_data")
        saved = self.val_data.state_dict()
        self.val_data.load_state_dict(self._val_start)
        self.train_model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        targets = torch.zeros((), device=self.device, dtype=torch.float64)
        try:
            for _ in range(self.config.eval_batches):
                x, y = (t.to(self.device) for t in next(self.val_data))
                with self._autocast():
                    loss_sum += self.train_model(x, labels=y, loss_reduction="sum").loss.double()
                targets += (y != IGNORE_INDEX).sum()
        finally:
            self.val_data.load_state_dict(saved)
            self.train_model.train()
        return float(self.strategy.reduce_mean(loss_sum) / self.strategy.reduce_mean(targets).clamp(min=1))

    @torch.no_grad()
    def sample(self, prompts: Sequence[str] | None = None) -> list[dict[str, str]]:
        """Continue each prompt with ``tinylm.core.generate`` (seeded: same prompts, same draws each time)."""
        cfg = self.config
        prompts = cfg.sample_prompts if prompts is None else prompts
        if self.tokenizer is None or not prompts or cfg.sample_tokens == 0:
            return []
        from tinylm.core.generate import generate  # lazily: only runs that sample need it

        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        options = dict(temperature=cfg.sample_temperature, top_k=cfg.sample_top_k, generator=generator)
        limit = getattr(getattr(self.model, "pos", None), "max_positions", None)
        samples = []
        for prompt in prompts:
            ids = self.tokenizer.encode(prompt) or self.tokenizer.encode(prompt, add_bos=True)
            if not ids:
                raise ValueError(f"the tokenizer encodes sample prompt {prompt!r} to no tokens")
            new = cfg.sample_tokens
            if limit is not None:  # learned positions: keep prompt + continuation inside the context
                new = min(new, limit - 1)
                ids = ids[-(limit - new) :]
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            with self._autocast():
                out = generate(self.model, x, new, **options)
            new_ids = [
                i for i in out[0, len(ids) :].tolist() if self._decodable is None or i < self._decodable
            ]
            samples.append({"prompt": prompt, "text": self.tokenizer.decode(new_ids)})
        return samples

    def _evaluate_and_sample(self, bar: tqdm) -> None:
        if self.val_data is not None:
            val_loss = self.evaluate()
            val_ppl = math.exp(min(val_loss, 700.0))
            self.metrics.log("eval", step=self.step, val_loss=val_loss, val_ppl=val_ppl)
            self._say(f"step {self.step}: val loss {val_loss:.4f}, ppl {val_ppl:.2f}")
            self._bar_info["val"] = f"{val_loss:.4f}"
            bar.set_postfix(self._bar_info, refresh=False)
            if self.best_val_loss is None or val_loss < self.best_val_loss:
                self.best_val_loss = val_loss
                self.save_checkpoint("best")
        samples = self.sample()
        if samples:
            self.metrics.log("samples", step=self.step, samples=samples)
            for s in samples:
                self._say(f"step {self.step} sample: {s['prompt']!r} -> {s['text']!r}")

    # ---- checkpoints --------------------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides model and optimizer: step, counters, scaler, RNG, data."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed": self._elapsed(),
            "best_val_loss": self.best_val_loss,
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": capture_rng_state(self.device),
            "data": {
                "train": self.train_data.state_dict(),
                "val": self.val_data.state_dict() if self.val_data is not None else None,
            },
        }

    def save_checkpoint(self, name: str = "last") -> Path:
        """Write ``out_dir/checkpoints/<name>`` atomically (model, tokenizer, trainer.json, train_state)."""
        path = self.checkpoint_dir / name
        bad = self.strategy.all_finite(self.model)
        if bad is not None:  # never replace a good checkpoint with broken weights
            raise TrainingDivergedError(self.step, f"the weight {bad}", "not finite", self.last_checkpoint)
        state = self.training_state()
        self.strategy.save_checkpoint(
            path, self.train_model, self.optimizer, state, self.config.to_dict(), self.tokenizer
        )
        if name == "last":
            self.last_checkpoint = path
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimizer, scaler, step, counters, data positions and RNG from a checkpoint."""
        path = Path(path)
        state = self.strategy.load_checkpoint(path, self.train_model, self.optimizer)
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.train_data.load_state_dict(state["data"]["train"])
        if self.val_data is not None and state["data"]["val"] is not None:
            self.val_data.load_state_dict(state["data"]["val"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.best_val_loss = state["best_val_loss"]
        self._elapsed_before, self._t0 = float(state["elapsed"]), time.perf_counter()
        if state["rng"] is not None:
            restore_rng_state(state["rng"])
        else:  # saved on another number of processes: fresh per-rank streams
            seed_everything(self.config.seed + self.strategy.rank + 1_000_003 * self.step)
        self.last_checkpoint = path
        self._say(f"resumed from {path} at step {self.step}")

    # ---- the loop -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``config.max_steps`` (logging, evaluating, sampling, checkpointing); return a summary.

        ``tokens_per_s`` counts input tokens over the time spent in training steps only; ``wall_time_s`` in
        the summary includes the earlier runs of a resumed training.
        """
        cfg, main = self.config, self.strategy.is_main
        self._t0 = time.perf_counter()
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (cfg.progress and main),
            dynamic_ncols=True,
        )
        window_tokens, window_time, last_loss = 0, 0.0, None
        self._bar_info: dict[str, str] = {}
        self.train_model.train()
        try:
            while self.step < cfg.max_steps:
                t = time.perf_counter()
                stats = self.train_step()
                window_time += time.perf_counter() - t
                window_tokens += stats["tokens"]
                last_loss = stats["loss"]
                bar.update(1)
                done = self.step == cfg.max_steps
                if self.step % cfg.log_interval == 0 or done:
                    tokens_per_s = window_tokens / max(window_time, 1e-9)
                    window_tokens, window_time = 0, 0.0
                    self.metrics.log(
                        "train",
                        step=self.step,
                        loss=stats["loss"],
                        lr=stats["lr"],
                        grad_norm=stats["grad_norm"],
                        tokens_per_s=tokens_per_s,
                        elapsed=self._elapsed(),
                    )
                    self._bar_info.update(loss=f"{stats['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
                    bar.set_postfix(self._bar_info, refresh=False)
                if self.step % cfg.eval_interval == 0 or done:
                    self._evaluate_and_sample(bar)
                if self.step % cfg.checkpoint_interval == 0 or done:
                    self.save_checkpoint("last")
        finally:
            bar.close()
        return self._finish(last_loss)

    def _finish(self, last_loss: float | None) -> dict[str, Any]:
        metrics_path, plot_path = self.metrics.path, self.out_dir / "loss.png"
        records = read_metrics(metrics_path) if self.strategy.is_main and metrics_path.exists() else []
        if self.strategy.is_main:
            plot_loss_curve(records, plot_path, title=f"loss ({self.out_dir.name})")
        if last_loss is None:  # nothing left to train (resumed at max_steps): report the logged one
            last_loss = next((r["loss"] for r in reversed(records) if r["kind"] == "train"), None)
        best = self.checkpoint_dir / "best"
        summary = {
            "params": sum(p.numel() for p in dict(self.model.named_parameters()).values()),
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "final_train_loss": last_loss,
            "best_val_loss": self.best_val_loss,
            "wall_time_s": self._elapsed(),
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "best_checkpoint": str(best) if self.best_val_loss is not None and best.is_dir() else None,
            "metrics": str(metrics_path),
            "plot": str(plot_path),
        }
        if self.strategy.is_main:
            print(format_summary(summary))
        return summary

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._t0

    def _say(self, message: str) -> None:
        if self.strategy.is_main:
            log.info(message)
