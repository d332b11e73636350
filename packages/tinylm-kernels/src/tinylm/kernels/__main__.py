"""Command line of tinylm.kernels.

``python -m tinylm.kernels info`` prints the ops, their backends and the choice here;
``python -m tinylm.kernels build [--arch 9.0] [--verbose]`` compiles the CUDA extension ahead of time and
prints the cache directory it lives in (machines sharing that cache then need neither nvcc nor ninja).
"""

from __future__ import annotations

import argparse

from tinylm.kernels import info_table


def _info() -> int:
    rows = info_table()
    cols = ["op", "backend", "available", "chosen", "note"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))
    return 0


def _build(arch: str | None, verbose: bool) -> int:
    from tinylm.kernels import build

    try:
        build.build(verbose=verbose, arch_list=arch)
        directory = build.build_dir(arch)
    except (RuntimeError, ValueError) as e:
        print(f"build failed: {e}")
        return 1
    print(f"built the CUDA extension; cached in {directory}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tinylm.kernels``."""
    parser = argparse.ArgumentParser(prog="python -m tinylm.kernels")
    parser.add_argument(
        "command",
        choices=["info", "build"],
        help="info: table of ops, backends and the choice; build: compile the CUDA extension ahead of time",
    )
    parser.add_argument(
        "--arch",
        default=None,
        help="build: CUDA arch list such as '9.0' or '8.0;9.0' (default: the GPUs here)",
    )
    parser.add_argument("--verbose", action="store_true", help="build: show the compiler's output")
    args = parser.parse_args(argv)
    if args.command == "build":
        return _build(args.arch, args.verbose)
    return _info()


if __name__ == "__main__":
    raise SystemExit(main())
