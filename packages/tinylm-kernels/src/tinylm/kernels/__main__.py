"""Command line: ``python -m tinylm.kernels info`` prints the ops, their backends and the choice here."""

from __future__ import annotations

import argparse

from tinylm.kernels import info_table


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tinylm.kernels``."""
    parser = argparse.ArgumentParser(prog="python -m tinylm.kernels")
    parser.add_argument("command", choices=["info"], help="info: table of ops, backends and the choice")
    parser.parse_args(argv)
    rows = info_table()
    cols = ["op", "backend", "available", "chosen", "note"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
