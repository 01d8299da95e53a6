"""`vlm-lens demo`: load a model, list its hook points, summarise one attention map.

Runs offline on the shipped model organism by default (`vlm_lens.zoo.organism()`, a small
Qwen3-VL trained to count dots), so the answer it prints is a real one; `--tiny ARCH` takes a
tiny random-weight zoo checkpoint of another architecture instead (its answer is noise: it
only shows the hooks working there). Its parser imports nothing heavy; `run` imports the
library when the demo runs.

Not for: studies (`vlm-lens count`, `vlm-lens yesbias`) or anything a notebook would reuse.
"""

from __future__ import annotations

import argparse
import tempfile

from vlm_lens.adapters import SUPPORTED


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="print hook names and an attention map summary of a model")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="hub id or local checkpoint dir (default: the organism)")
    which.add_argument(
        "--tiny",
        metavar="ARCH",
        choices=SUPPORTED,
        help=f"a tiny random-weight zoo checkpoint instead (answers are noise): {', '.join(SUPPORTED)}",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vlm_lens import HookedVLM, zoo
    from vlm_lens.data import dots
    from vlm_lens.data.count_prompt import COUNT_PROMPT
    from vlm_lens.metrics import gini_sparsity, normalized_entropy

    if args.tiny:
        path = zoo.tiny_checkpoint(args.tiny, tempfile.mkdtemp(prefix="vlm_lens_demo_"))
        print(f"a tiny random-weight {args.tiny} checkpoint at {path}: its answer is noise")
    elif args.model:
        path = args.model
    else:
        path = zoo.organism()
        print(f"no --model given: the shipped counting organism at {path}")
    model = HookedVLM.from_pretrained(path, device=args.device, dtype=args.dtype)
    sample = dots.generate(1, seed=0)[0]
    inputs = model.prepare(images=sample.image, prompt=COUNT_PROMPT)
    names = list(model.hook_dict)
    print(
        f"{model.cfg.arch}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, {len(names)} hook points"
    )
    for name in names[:8]:
        print(f"  {name}")
    print(f"  ... {names[-1]}")
    seg = inputs.segments.samples[0]
    print(f"segments: {seg.describe()}")
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter="blocks.-1.attn.hook_pattern")
    pattern = cache["blocks.-1.attn.hook_pattern"][
        0, :, -1
    ]  # [head, key]: the row predicting the answer
    image = seg.images[0]
    to_image = pattern[:, image.as_slice()]  # [head, image_tokens]
    mean_map = to_image.mean(0)
    print(
        f"last layer, answer row: image mass per head {[round(v, 3) for v in to_image.sum(-1).tolist()]}"
    )
    print(
        f"head-mean map over the {image.grid[0]}x{image.grid[1]} image grid: "
        f"Gini (paper Eq. 2) {gini_sparsity(mean_map).item():.3f}, "
        f"normalised entropy {normalized_entropy(mean_map).item():.3f}"
    )
    grid = (mean_map / mean_map.sum()).reshape(image.grid)  # [h, w]
    for row in grid.tolist():
        print("  " + " ".join(f"{v:.2f}" for v in row))
    out = model.generate(inputs, max_new_tokens=4)
    print(f"greedy answer: {out.texts[0]!r} (count in the image: {sample.count})")
    return 0
