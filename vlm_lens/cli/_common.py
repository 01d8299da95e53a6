"""What the study sub-commands share: checking arguments, model flags, sharding, loading a model.

Every argument is checked before anything is loaded or written: value ranges by the argparse
`type` functions here (so a bad value is a usage error naming the flag), the rest (layers
against the checkpoint's depth read from its config.json, device flags, the output folder) by
the `check_*` functions, which raise `UsageError`. `vlm_lens.cli.main` prints a `UsageError`
(or any other error) as one line and exits with status 2 (1 for a failure of the run itself).

Not for: a sub-command's own flags, or anything a notebook would also need.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm_lens.studies.runlog import Shard


class UsageError(Exception):
    """Bad command-line input, found before any side effect (exit status 2)."""


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def real(low: float, high: float = math.inf, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse `type`: a finite number in [low, high] (or (low, high] with `open_low`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if open_low else value < low
        if not math.isfinite(value) or below or value > high:
            if high == math.inf:
                bounds = f"{'>' if open_low else '>='} {low:g}"
            else:
                bounds = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


COUNT = at_least(1)
INDEX = at_least(0)
FRACTION = real(0.0, 1.0, open_low=True)


def add_model_args(p: argparse.ArgumentParser, shard_help: str) -> None:
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu")
    p.add_argument("--device-map", default=None, help="e.g. auto (instead of --device)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto")
    p.add_argument("--shard", default=None, help=shard_help)


def parse_shard(text: str | None) -> Shard | None:
    """`K/N`, or `auto`: RANK / WORLD_SIZE as torchrun and accelerate set them (None if 1 process)."""
    if text is None:
        return None
    try:
        if text == "auto":
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
            return Shard(rank, world) if world > 1 else None
        return Shard.parse(text)
    except ValueError as err:
        source = " (from RANK / WORLD_SIZE)" if text == "auto" else ""
        raise UsageError(f"--shard {text}{source}: {err}") from None


def check_out(out: Path) -> None:
    """`--out` must be a folder (or not exist yet)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")


def check_device_args(args: argparse.Namespace) -> None:
    """`--device`, `--device-map` and `--dtype` as transformers and torch will take them."""
    import torch

    from vlm_lens.core.hooked_vlm import resolve_dtype

    if args.device is not None and args.device_map is not None:
        raise UsageError("give --device or --device-map, not both")
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError as err:
            raise UsageError(f"--device {args.device!r}: {err}") from None
    try:
        dtype = resolve_dtype(args.dtype)
    except ValueError as err:
        raise UsageError(f"--dtype: {err}") from None
    if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
        raise UsageError(f"--dtype {args.dtype}: not a floating-point type (e.g. bfloat16)")


def check_run_args(args: argparse.Namespace) -> Shard | None:
    """The flags every study run shares (`--out`, device flags, `--shard`); returns the shard."""
    check_out(Path(args.out))
    check_device_args(args)
    return parse_shard(args.shard)


def model_depth(ref: Any) -> int:
    """Number of decoder layers of the model `ref` names (a `HookedVLM`, hub id or checkpoint
    folder), read from its config.json without loading weights."""
    from vlm_lens.core.hooked_vlm import checkpoint_config

    cfg = getattr(ref, "cfg", None)
    if cfg is not None:
        return cfg.n_layers
    try:
        config = checkpoint_config(ref)
    except (OSError, ValueError) as err:
        raise UsageError(f"--model: {err}") from None
    return int(config.get_text_config().num_hidden_layers)


def load_model(ref: Any, args: argparse.Namespace):
    """A `HookedVLM` from a hub id / path (or `ref` itself); `--shard auto` picks cuda:LOCAL_RANK."""
    from vlm_lens import HookedVLM

    if isinstance(ref, HookedVLM):
        return ref
    device = args.device
    if args.shard == "auto" and device is None and args.device_map is None:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return HookedVLM.from_pretrained(
        ref, device=device, dtype=args.dtype, device_map=args.device_map
    )
