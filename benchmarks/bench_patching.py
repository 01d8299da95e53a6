"""How fast is a patching sweep: resumed at the patched layer, from the embeddings, or a loop?

Three methods patch the same cells of one counterfactual dots pair (clean image with one dot
more than the corrupted one) at the first decoding step where the two counts differ, and
measure the same raw logit difference:

- ``resume``: `vlm_lens.patching.patch_sweep` (the default, `resume=True`): the clean run
  cached once (only the hook points swept), the corrupted run once in full, then batches of
  `--batch-size` rows, one cell per row, each batch started at its first patched layer from
  the corrupted run's residual stream (no vision tower, no embeddings, no layers below);
- ``full``: `patch_sweep(..., resume=False)`: the same batches, each run from the inputs
  (the image encoded once per batch), the corrupted baseline riding in the first batch;
- ``naive`` (skip with `--no-naive`): `model.run_with_cache` on the clean input, one
  unpatched corrupted run, then one `model.run_with_hooks` call per cell.

Sweeps timed (each one a row of the table): residual stream before every layer at every
image patch, every head's `hook_z`, every head's `hook_pattern` and (not in `--config
medium`) the residual stream at every single position. Printed per sweep: cells, forward
passes and their cost in decoder layers x rows x positions (`PatchingResult.n_layer_tokens`), seconds (median of `--repeats`
interleaved repeats, after a warm-up), cells per second, the speed-ups of ``resume`` over
``full`` and over ``naive``, and the largest difference between their values.

Configs:
- ``tiny`` (for the test-suite): the zoo's default tiny Qwen3-VL, 64x64 image (4x4 image
  tokens), layer 0 only, 1 repeat.
- ``small`` (default): the same tiny model, all 4 layers.
- ``medium``: Qwen3-VL at scaled real proportions (text 8 x 256, 8 heads / 4 KV heads of 32,
  MLP 768; vision 6 x 128), a 224x224 image (7 x 7 = 49 image tokens).

    python benchmarks/bench_patching.py [--config small] [--batch-size 32] [--repeats 3]
        [--no-naive] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from vlm_lens import HookedVLM, zoo  # noqa: E402
from vlm_lens.data.dots import counterfactual_pairs  # noqa: E402
from vlm_lens.patching import (  # noqa: E402
    AnswerStep,
    counting_pair,
    logit_diff,
    patch_sweep,
    with_answer_prefix,
)
from vlm_lens.reports.machine import machine_info

MEDIUM: dict[str, Any] = {
    "text_config": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 32,
    },
    "vision_config": {"depth": 6, "hidden_size": 128, "intermediate_size": 512, "num_heads": 4},
    "image_processor": {"size": {"shortest_edge": 224 * 224, "longest_edge": 224 * 224}},
}

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"overrides": {}, "image": 64, "layers": [0], "each": True},
    "small": {"overrides": {}, "image": 64, "layers": None, "each": True},
    "medium": {"overrides": MEDIUM, "image": 224, "layers": None, "each": False},
}

HOOKS = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "z": "blocks.{}.attn.hook_z",
    "pattern": "blocks.{}.attn.hook_pattern",
}


def naive_loop(
    model, clean, corrupted, step: AnswerStep, family: str, result
) -> tuple[torch.Tensor, int]:
    """One `run_with_hooks` call per cell of `result` (same cells). Returns raw values
    `[cells]` (in `result.values` order) and the forward passes made."""
    c, x = with_answer_prefix(clean, step.prefix), with_answer_prefix(corrupted, step.prefix)
    names = [HOOKS[family].format(layer) for layer in result.layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(c, names_filter=names)
        model(x)  # the corrupted baseline
    passes = 2
    heads = result.heads if result.heads is not None else [None]
    values = []
    for name in names:
        for head in heads:
            for group in result.groups:
                pos = list(group.positions)

                def hook(act, hook, name=name, head=head, pos=pos):
                    act = act.clone()
                    src = cache[name]
                    if family == "resid_pre":  # [batch, pos, d_model]
                        act[:, pos] = src[:, pos]
                    elif family == "z":  # [batch, pos, head, d_head]
                        act[:, pos, head] = src[:, pos, head]
                    else:  # [batch, head, query, key]
                        act[:, head, pos] = src[:, head, pos]
                    return act

                with torch.no_grad():
                    logits = model.run_with_hooks(x, fwd_hooks=[(name, hook)])
                passes += 1
                values.append(float(logit_diff(logits[:, -1].double(), step)[0]))
    return torch.tensor(values, dtype=torch.float64), passes


def run(
    config: str,
    batch_size: int,
    repeats: int,
    directory: str | None = None,
    naive: bool = True,
) -> dict[str, Any]:
    spec = CONFIGS[config]
    directory = directory or tempfile.mkdtemp(prefix="bench_patching_")
    path = zoo.tiny_checkpoint("qwen3_vl", directory, **spec["overrides"])
    model = HookedVLM.from_pretrained(path)
    size = spec["image"]
    dots = counterfactual_pairs(
        1, seed=0, size=size, radius=max(2, size / 24), count_range=(10, 16), min_separation=1
    )[0]
    pair = counting_pair(model, dots)
    step = pair.first_step
    image = pair.clean.segments.samples[0].images[0]
    info = {
        "config": config,
        "parameters": sum(p.numel() for p in model.hf_model.parameters()),
        "n_layers": model.cfg.n_layers,
        "n_heads": model.cfg.n_heads,
        "prompt_tokens": int(pair.clean.input_ids.shape[1]) + step.step,
        "image_grid": list(image.grid),
        "counts": [dots.clean.count, dots.corrupted.count],
        "step": step.step,
        "batch_size": batch_size,
        "repeats": repeats,
    }
    sweeps = [
        ("resid_pre", "image_patch"),
        ("z", "all"),
        ("pattern", "all"),
    ] + ([("resid_pre", "each")] if spec["each"] else [])
    rows = []
    for family, positions in sweeps:
        kwargs = dict(answer=step, positions=positions, layers=spec["layers"], normalize=False)

        def sweep(resume: bool, kwargs=kwargs, family=family):
            return patch_sweep(
                model,
                pair.clean,
                pair.corrupted,
                family,
                batch_size=batch_size,
                resume=resume,
                **kwargs,
            )

        sweep(True), sweep(False)  # warm-up
        times: dict[str, list[float]] = {"resume": [], "full": [], "naive": []}
        for _ in range(repeats):  # interleaved, so load on the machine hits every method alike
            t0 = time.perf_counter()
            fast = sweep(True)
            times["resume"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            full = sweep(False)
            times["full"].append(time.perf_counter() - t0)
            if naive:
                t0 = time.perf_counter()
                loop, naive_passes = naive_loop(
                    model, pair.clean, pair.corrupted, step, family, fast
                )
                times["naive"].append(time.perf_counter() - t0)
        sec = {k: statistics.median(v) if v else None for k, v in times.items()}
        cells = fast.n_cells
        row = {
            "sweep": f"{family} x {positions}",
            "shape": dict(zip(fast.dims, fast.values.shape)),
            "cells": cells,
            "resume_forward_passes": fast.n_forward_passes,
            "full_forward_passes": full.n_forward_passes,
            "resume_layer_tokens": fast.n_layer_tokens,
            "full_layer_tokens": full.n_layer_tokens,
            "resume_s": sec["resume"],
            "full_s": sec["full"],
            "resume_cells_per_s": cells / sec["resume"],
            "full_cells_per_s": cells / sec["full"],
            "speedup_vs_full": sec["full"] / sec["resume"],
            "max_abs_diff_vs_full": float((fast.values - full.values).abs().max()),
        }
        if naive:
            row.update(
                naive_forward_passes=naive_passes,
                naive_s=sec["naive"],
                naive_cells_per_s=cells / sec["naive"],
                speedup_vs_naive=sec["naive"] / sec["resume"],
                max_abs_diff_vs_naive=float((fast.values.flatten() - loop).abs().max()),
            )
        rows.append(row)
    return {"machine": machine_info(), "model": info, "results": rows}


def print_table(report: dict[str, Any]) -> None:
    m, info = report["machine"], report["model"]
    print(
        f"# {m['cpu']} ({m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}), "
        f"torch {m['torch']}, transformers {m['transformers']}, load {m['load_average']}"
    )
    print(
        f"# config {info['config']}: {info['parameters'] / 1e6:.2f} M params, "
        f"{info['n_layers']} layers x {info['n_heads']} heads, {info['prompt_tokens']} tokens, "
        f"image grid {info['image_grid']}, counts {info['counts']}, step {info['step']}, "
        f"batch {info['batch_size']}, median of {info['repeats']}"
    )
    naive = "naive_s" in report["results"][0]
    methods = ["resume", "full"] + (["naive"] if naive else [])
    print("# passes, seconds, cells/s: " + " / ".join(methods) + "; layer-tokens: resume / full")
    header = (
        f"{'sweep':<24}{'cells':>6}{'passes':>14}{'layer-tokens':>14}{'seconds':>20}"
        f"{'cells/s':>20}{'x full':>8}{'|diff| full':>12}"
        + (f"{'x naive':>9}{'|diff| naive':>13}" if naive else "")
    )
    print(header)
    for r in report["results"]:
        passes = "/".join(str(r[f"{m}_forward_passes"]) for m in methods)
        layer_tokens = f"{r['resume_layer_tokens'] / 1e3:.0f}k/{r['full_layer_tokens'] / 1e3:.0f}k"
        seconds = "/".join(f"{r[f'{m}_s']:.2f}" for m in methods)
        rate = "/".join(f"{r[f'{m}_cells_per_s']:.1f}" for m in methods)
        line = (
            f"{r['sweep']:<24}{r['cells']:>6}{passes:>14}{layer_tokens:>14}{seconds:>20}{rate:>20}"
            f"{r['speedup_vs_full']:>7.2f}x{r['max_abs_diff_vs_full']:>12.1e}"
        )
        if naive:
            line += f"{r['speedup_vs_naive']:>8.2f}x{r['max_abs_diff_vs_naive']:>13.1e}"
        print(line)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=list(CONFIGS), default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--dir", default=None, help="where to build the checkpoint (default: a temp dir)"
    )
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument(
        "--no-naive", action="store_true", help="time only the two sweep paths, not the loop"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.config == "tiny" else args.repeats
    report = run(args.config, args.batch_size, repeats, args.dir, naive=not args.no_naive)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
