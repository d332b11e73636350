"""One rank of a multi-process test run (launched by torchrun from test_parallel.py; not a test module).

argv[1] is a JSON spec: strategy name and options, out_dir, per-rank batch size, TrainConfig overrides,
and optionally ``crash_before_step`` + ``crash_marker``: rank 1 dies (``os._exit``) as that step would
start, once (the marker file records that it happened), as a killed process or a lost node would.
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import BLOCK, ByteTokenizer, _tiny_model, _tokens, _train_config

from tinylm.core.data import BatchIterator, PackedBlocks
from tinylm.dist import Trainer, build_strategy


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    strategy = build_strategy(spec["strategy"], "cpu", **spec.get("options", {}))
    rank, world = strategy.rank, strategy.world_size
    batch = spec["batch"]
    train = BatchIterator(PackedBlocks(_tokens(6000, 0), BLOCK), batch, seed=1, rank=rank, world_size=world)
    val = BatchIterator(PackedBlocks(_tokens(2000, 1), BLOCK), batch, seed=2, rank=rank, world_size=world)
    trainer = Trainer(
        _tiny_model(seed=0),
        _train_config(**spec["train"]),
        train,
        val,
        out_dir=spec["out"],
        tokenizer=ByteTokenizer(),
        strategy=strategy,
    )
    crash, marker = spec.get("crash_before_step"), spec.get("crash_marker")
    if crash is not None and rank == 1 and not Path(marker).exists():
        step = trainer.train_step

        def dying_step():
            if trainer.step == crash - 1:
                Path(marker).write_text(f"rank 1 died before step {crash}")
                os._exit(3)
            return step()

        trainer.train_step = dying_step
    trainer.fit()
    strategy.close()  # only after success: on an error the process exits and torchrun stops the others


if __name__ == "__main__":
    main()
