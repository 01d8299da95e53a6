"""Reproduce the counting paper's figure set on real checkpoints (needs a GPU and the hub).

    python benchmarks/run_counting.py --out runs/counting-paper --device cuda --dtype bfloat16
    python benchmarks/run_counting.py --models Qwen/Qwen3-VL-2B-Instruct --n 64   # quick look
    python benchmarks/run_counting.py --causal     # + re-grounding, CoT and 3-digit variants

Runs `vlm-lens count` with the paper's settings (256 images of 1024x1024 px, 10-16 dots
of radius 10, the direct-answer prompt, greedy decoding, layers -1, 8, 16, 24) on the
paper's models, compared side by side, and writes to `--out`:

- `report.html`: Fig. 2 (accuracy and MBE per model), Fig. 3 (sparsity of the 1st vs 2nd
  digit), Fig. 5 (entropy across steps), Fig. 1 (heatmaps over the image for layers x
  digit steps, dot centres marked), Halo metrics, and the paired sparsity-drop tests;
- `summary.csv` / `summary.json`, `samples.csv`, `attention.csv`; `figures/*.png` when
  kaleido finds a Chrome.

Cost (not measured here: this machine has no GPU): each sample is one greedy generation
of at most 8 new tokens with per-step attention recording of 4 layers, plus a second
generation per sample with `--causal` re-grounding and up to 256 new tokens for CoT.
Runs resume: re-run the same command after an interruption. To split a model over
GPUs use `--shard` with torchrun / accelerate (see `vlm_lens/cli/count.py`), then
`vlm-lens count merge --out DIR`.

This script is not run by the test-suite (no GPU, no hub access there); its logic is the
CLI's, which is tested on tiny models.
"""

from __future__ import annotations

import argparse
import sys

from _runner import add_placement_args, placement_argv

from vlm_lens.cli import main as vlm_lens_main

PAPER_MODELS = (
    "Qwen/Qwen3-VL-2B-Instruct",
    "Qwen/Qwen3-VL-4B-Instruct",
    "Qwen/Qwen3-VL-8B-Instruct",
    "google/gemma-3-4b-it",
    "google/gemma-3-12b-it",
)


def build_argv(args: argparse.Namespace) -> list[str]:
    argv = ["count", "--model", *args.models, "--n", str(args.n), "--seed", str(args.seed)]
    argv += ["--layers", *args.layers, "--out", args.out]
    argv += placement_argv(args)
    if args.causal:
        argv += ["--regrounding", args.regrounding, "--cot", "--three-digit"]
    return argv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(PAPER_MODELS))
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", nargs="+", default=["paper"])
    p.add_argument("--out", default="runs/counting-paper")
    add_placement_args(p, "bfloat16", "e.g. auto for 12B on small GPUs")
    p.add_argument("--causal", action="store_true", help="add re-grounding, CoT and 3-digit runs")
    p.add_argument("--regrounding", default="restore", help="restore | restore-mass | scale:A")
    args = p.parse_args(argv)
    return vlm_lens_main(build_argv(args))


if __name__ == "__main__":
    sys.exit(main())
