"""The `vlm-lens` console script: a thin layer over the library's functions.

Sub-commands live in their own modules, each exposing `add_parser(subparsers)` (which
sets `func` on its parser). Not for: logic a notebook would also need.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("demo", "count", "yesbias")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm-lens", description="Read and patch per-head attention of vision-language models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"vlm_lens.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"vlm_lens.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
