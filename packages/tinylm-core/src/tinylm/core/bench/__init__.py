"""tinylm.core.bench: timed, reproducible measurements of TinyLM, saved as JSON + markdown + PNG.

from tinylm.core.bench import BenchConfig, run_bench
result = run_bench(BenchConfig(mode="decode", batch_sizes=[1, 8], baseline="hf"))
result.save("bench_out")      # decode.json, decode.md, decode.png
print(result.to_markdown())

Modes (``BENCH_MODES``): train_step, prefill, decode, memory, kernels, quant, compare, time_to_target.
Another package adds a mode with ``@BENCH_MODES.register("name")`` on a ``(BenchConfig) -> BenchResult``
function, a cache with ``tinylm.core.CACHES``, a quantization scheme with ``tinylm.core.QUANT_SCHEMES``.
matplotlib (the PNG) and transformers (``baseline=hf``) are optional and imported only when used.
"""

from tinylm.core.bench import (  # noqa: F401  (each mode module registers its modes in BENCH_MODES)
    comparison,
    convergence,
    inference,
    kernels,
    memory,
    quant,
    train_step,
)
from tinylm.core.bench.comparison import compare, compare_results, result_labels
from tinylm.core.bench.config import BENCH_MODES, DTYPES, BenchConfig, resolve_device
from tinylm.core.bench.convergence import time_to_target
from tinylm.core.bench.environment import collect_environment, describe_environment, git_commit
from tinylm.core.bench.flops import (
    flops_per_token,
    matmul_parameters,
    measure_matmul_tflops,
    mfu,
    spec_peak_tflops,
)
from tinylm.core.bench.results import SCHEMA, BenchResult, load_result, markdown_table
from tinylm.core.bench.run import run_bench
from tinylm.core.bench.timing import Stopwatch, TimingStats, measure, percentile

__all__ = [
    "BENCH_MODES",
    "DTYPES",
    "SCHEMA",
    "BenchConfig",
    "BenchResult",
    "Stopwatch",
    "TimingStats",
    "collect_environment",
    "compare",
    "compare_results",
    "describe_environment",
    "flops_per_token",
    "git_commit",
    "load_result",
    "markdown_table",
    "matmul_parameters",
    "measure",
    "measure_matmul_tflops",
    "mfu",
    "percentile",
    "resolve_device",
    "result_labels",
    "run_bench",
    "spec_peak_tflops",
    "time_to_target",
]
