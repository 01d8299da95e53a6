"""What the study sub-commands share: model-loading flags, sharding, loading a model.

Not for: a sub-command's own flags, or anything a notebook would also need.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from vlm_lens.studies.runlog import Shard


def add_model_args(p: argparse.ArgumentParser, shard_help: str) -> None:
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu")
    p.add_argument("--device-map", default=None, help="e.g. auto (instead of --device)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto")
    p.add_argument("--shard", default=None, help=shard_help)


def parse_shard(text: str | None) -> Shard | None:
    """`K/N`, or `auto`: RANK / WORLD_SIZE as torchrun and accelerate set them (None if 1 process)."""
    if text is None:
        return None
    if text == "auto":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
        return Shard(rank, world) if world > 1 else None
    return Shard.parse(text)


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
