"""Run the yes-bias study on real checkpoints and the released benchmarks (needs a GPU).

    python benchmarks/run_yesbias.py --data-root /data/yesno --out runs/yesbias-paper
    python benchmarks/run_yesbias.py --models llava-hf/llava-1.5-7b-hf --sweep paper   # full sets
    python benchmarks/run_yesbias.py --benchmark pope=/data/POPE --limit 50   # quick look

For each model (default: LLaVA-1.5-7B, the paper's model, then Qwen3-VL-2B and
Gemma3-4B) this runs `vlm-lens yesbias` on every benchmark found under `--data-root`
(sub-folders named mme, pope, hallusionbench, naturalbench, winoground, sugarcrepe,
beaf, in their released layouts: shared/benchmarks.md) plus the synthetic set, and
writes under `--out/<model>/`:

- `<benchmark>/records.jsonl`: one line per (condition, item): generated text, parsed
  answer, log P(yes) - log P(no) at the first answer step, per-layer attention shares;
- `<benchmark>/table.csv|json`: Δ paired accuracy / accuracy / yes-rate / mean score
  against the baseline per condition, paired bootstrap 95% intervals over pairing units;
  `metrics.json`: every benchmark's official metrics per condition;
- `report.html`: metrics tables, heatmaps quarter × intervention, dose-response curves,
  per-layer attention shares (the paper's ~70% system share).

Cost (not measured here: this machine has no GPU). One condition costs one greedy
generation of `--max-new-tokens` (4) tokens per item. The `quarters` sweep has 85
conditions (5 directions × 4 quarters × 4 fractions, image ×2 per quarter, baseline), so
it is run on the first `--limit` pairing units (default 100) of each benchmark; the
`paper` sweep (6 conditions) is cheap enough for whole benchmarks (`--limit 0`). Runs
resume: re-run the same command after an interruption. To spread a model over GPUs use
`--shard K/N` per process (or `auto` under torchrun / accelerate), then
`vlm-lens yesbias merge --out DIR`.

This script is not run by the test-suite (no GPU, no hub access there); its logic is the
CLI's, which is tested on tiny models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _runner import add_placement_args, placement_argv

from vlm_lens.cli import main as vlm_lens_main

MODELS = (
    "llava-hf/llava-1.5-7b-hf",
    "Qwen/Qwen3-VL-2B-Instruct",
    "google/gemma-3-4b-it",
)
BENCHMARKS = (
    "mme",
    "pope",
    "hallusionbench",
    "naturalbench",
    "winoground",
    "sugarcrepe",
    "beaf",
)


def benchmark_specs(args: argparse.Namespace) -> list[str]:
    specs = list(args.benchmark or [])
    if args.data_root:
        root = Path(args.data_root)
        for name in BENCHMARKS:
            if (root / name).exists():
                specs.append(f"{name}={root / name}")
    if not args.no_synthetic:
        specs.append("synthetic")
    return specs


def build_argv(model: str, args: argparse.Namespace) -> list[str]:
    argv = ["yesbias", "--model", model, "--sweep", args.sweep, "--out", args.out]
    argv += ["--fractions", *[str(f) for f in args.fractions]]
    argv += ["--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)]
    for spec in benchmark_specs(args):
        argv += ["--benchmark", spec]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    if args.knockout:
        argv.append("--knockout")
    argv += placement_argv(args)
    return argv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--data-root", default=None, help="folder with one sub-folder per benchmark")
    p.add_argument("--benchmark", action="append", metavar="NAME=PATH", help="extra benchmark")
    p.add_argument("--no-synthetic", action="store_true", help="skip the synthetic set")
    p.add_argument("--sweep", default="quarters", choices=("quarters", "paper", "none"))
    p.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 0.75, 1.0])
    p.add_argument("--knockout", action="store_true")
    p.add_argument("--limit", type=int, default=100, help="pairing units per benchmark; 0: all")
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", default="runs/yesbias-paper")
    add_placement_args(p, "auto", "e.g. auto for models larger than a GPU")
    args = p.parse_args(argv)
    status = 0
    for model in args.models:
        status |= vlm_lens_main(build_argv(model, args))
    return status


if __name__ == "__main__":
    sys.exit(main())
