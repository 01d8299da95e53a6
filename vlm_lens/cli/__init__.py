"""The `vlm-lens` console script: a thin layer over the library's functions.

Sub-commands live in their own modules, each exposing `add_parser(subparsers)` (which sets
`func` on its parser). `main` imports only the module of the sub-command it runs, so
`vlm-lens --help` lists the sub-commands from `COMMANDS` without importing torch,
transformers or a study.

Errors: a bad argument is refused before anything is loaded or written, with one line on
stderr and exit status 2 (argparse's own errors too); a failure of the run itself (an empty
measurement, a run folder held by another process) is one line and status 1. `--debug` (on
every sub-command) lets the exception through with its traceback.

Not for: logic a notebook would also need (that belongs in the library).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection

from vlm_lens.cli._common import UsageError

# Sub-command -> the one-line help `vlm-lens --help` shows (each module's parser says the same;
# tests/test_cli.py checks that they agree).
COMMANDS = {
    "demo": "print hook names and an attention map summary of a model",
    "count": "counting study: accuracy, per-digit visual sparsity/entropy, Halo metrics",
    "yesbias": "yes-bias study: redistribute attention between system/image/text tokens",
}
SUBCOMMANDS = tuple(COMMANDS)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`vlm-lens count: error: argument --n: ...`)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Errors that mean "the input is wrong" (exit 2); any other exception is a failed run (exit 1).
_INPUT_ERRORS = (ValueError, TypeError, KeyError, LookupError, OSError)


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `vlm-lens` parser.

    `commands`: the sub-commands whose full parsers to build, importing their modules (and
    whatever those import); the others are listed by name and help only. None builds all.
    """
    parser = _Parser(
        prog="vlm-lens", description="Read and patch per-head attention of vision-language models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if commands is None or name in commands:
            importlib.import_module(f"vlm_lens.cli.{name}").add_parser(sub)
            sub.choices[name].add_argument(
                "--debug", action="store_true", help="on an error, show the full traceback"
            )
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top-level parser has no options but --help, so a sub-command is the first argument.
    parser = build_parser(argv[:1])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except Exception as err:
        if args.debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        if not isinstance(err, UsageError):
            message = f"{type(err).__name__}: {message}"
        print(f"vlm-lens {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, (UsageError, *_INPUT_ERRORS)) else 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
