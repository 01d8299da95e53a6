"""What the paper-reproduction runners share: where the model goes, and the CLI argv for it."""

from __future__ import annotations

import argparse


def add_placement_args(p: argparse.ArgumentParser, dtype: str, device_map_help: str) -> None:
    """``--device``, ``--device-map``, ``--dtype``, ``--shard`` (the CLI's own flags)."""
    p.add_argument("--device", default="cuda")
    p.add_argument("--device-map", default=None, help=device_map_help)
    p.add_argument("--dtype", default=dtype, help="auto: the checkpoint's own dtype")
    p.add_argument("--shard", default=None, help="K/N or auto (torchrun / accelerate)")


def placement_argv(args: argparse.Namespace) -> list[str]:
    """The CLI flags for ``args``' placement; ``--device-map`` replaces ``--device``."""
    argv: list[str] = []
    if args.device_map:
        argv += ["--device-map", args.device_map]
    elif args.device:
        argv += ["--device", args.device]
    if args.dtype:
        argv += ["--dtype", args.dtype]
    if args.shard:
        argv += ["--shard", args.shard]
    return argv
