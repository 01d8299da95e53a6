"""`vlm-lens count`: the counting study (Halo Effect, Language Takeover) from the shell.

A thin layer over `vlm_lens.studies.counting`::

    vlm-lens count --model Qwen/Qwen3-VL-2B-Instruct google/gemma-3-4b-it \\
        --n 256 --layers paper --out runs/counting --device cuda --dtype bfloat16
    vlm-lens count --model Qwen/Qwen3-VL-2B-Instruct --regrounding restore --cot --three-digit
    vlm-lens count report --out runs/counting      # rebuild tables, figures and report.html
    vlm-lens count merge --out runs/counting       # after a sharded run

With no `--model`, the trained counting organism (`vlm_lens.zoo.organism()`) is used if
it exists, otherwise a tiny random-weight qwen3_vl zoo model (answers constrained to
digits), with a printed notice: its numbers only show that the pipeline runs.

Every sample is appended to `<out>/<model>/samples.jsonl` as soon as it is done, so an
interrupted run is resumed by running the same command again. `--limit L` processes at
most L new samples per invocation.

Sharding across processes or GPUs: each process takes the samples with
`index % N == K` and writes `samples.shard-K-of-N.jsonl`; `merge` joins them (and
checks that nothing is missing) and writes the report. `--shard auto` reads `RANK` /
`WORLD_SIZE` (set by torchrun and accelerate) and puts the model on `cuda:$LOCAL_RANK`::

    # torchrun, 4 GPUs on one machine ("--" after the script: torchrun would take an
    # option such as --n for an abbreviation of one of its own)
    torchrun --nproc_per_node 4 --no-python vlm-lens -- count --shard auto --n 256 \\
        --model Qwen/Qwen3-VL-8B-Instruct --dtype bfloat16 --out runs/counting
    # or accelerate
    accelerate launch --num_processes 4 --no_python vlm-lens count --shard auto \\
        --model Qwen/Qwen3-VL-8B-Instruct --dtype bfloat16 --out runs/counting
    # or plain shell processes
    for k in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$k vlm-lens count --shard $k/4 \\
        --model Qwen/Qwen3-VL-8B-Instruct --device cuda --dtype bfloat16 --out runs/counting & done; wait
    # then, once
    vlm-lens count merge --out runs/counting

Every argument is checked before a model is loaded or anything is written (layers against
the depth in the checkpoint's config.json); a bad one is one line on stderr, exit status 2.
A generation whose hooks saw no decoding step, an all-NaN attention map or a condition
whose attention metrics are all missing stops the run with an error (exit status 1)
instead of writing a report.

No process group is created: the shards are independent and only share the output
directory (which must be on a shared file system across machines).

Not for: the study itself (`vlm_lens.studies.counting`, usable from a notebook).
"""

from __future__ import annotations

import argparse
import gc
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlm_lens.cli._common import (
    COUNT,
    INDEX,
    UsageError,
    add_model_args,
    check_run_args,
    load_model,
    model_depth,
    real,
)

_INT = re.compile(r"^-?[0-9]+$")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "count",
        help="counting study: accuracy, per-digit visual sparsity/entropy, Halo metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "merge", "report"),
        help="run the study (default), merge shard logs, or rebuild the report",
    )
    p.add_argument(
        "--model",
        nargs="+",
        action="extend",
        metavar="ID_OR_PATH",
        help="hub ids or local checkpoints, compared side by side (default: organism / tiny)",
    )
    p.add_argument("--n", type=COUNT, default=256, help="samples per condition (default 256)")
    p.add_argument(
        "--batch-size",
        type=COUNT,
        default=8,
        help="images per forward batch (default 8; records match one-by-one up to rounding)",
    )
    p.add_argument("--seed", type=INDEX, default=0)
    p.add_argument(
        "--layers",
        nargs="+",
        default=["last"],
        help="'last' (default, as the paper), 'paper' (-1 8 16 24), layer indices, 'Q1'..'Q4' "
        "or 'a:b' (the layer grammar of vlm_lens.core.layers)",
    )
    p.add_argument("--out", default="runs/counting", help="output directory")
    p.add_argument("--max-new-tokens", type=COUNT, default=8)
    add_model_args(p, "K/N: only samples with index %% N == K; or auto")
    p.add_argument(
        "--regrounding",
        default=None,
        metavar="MODE",
        help="re-ground later digits: restore | restore-mass | scale:ALPHA",
    )
    p.add_argument(
        "--regrounding-layers",
        nargs="+",
        default=None,
        help="layers to re-ground in: indices, 'all', 'Q1'..'Q4', 'a:b' (default: the study layers)",
    )
    p.add_argument("--cot", action="store_true", help="add the chain-of-thought prompt variant")
    p.add_argument("--cot-max-new-tokens", type=COUNT, default=256)
    p.add_argument("--three-digit", action="store_true", help="add counts in [100, 130]")
    p.add_argument(
        "--limit", type=COUNT, default=None, help="process at most this many new samples"
    )
    p.add_argument("--size", type=COUNT, default=1024, help="image side in pixels (paper: 1024)")
    p.add_argument(
        "--radius", type=real(0.0, open_low=True), default=10.0, help="dot radius (paper: 10)"
    )
    p.add_argument("--digits-only", action="store_true", help="allow only digit tokens (debug)")
    p.add_argument("--example-maps", type=INDEX, default=4, help="samples whose maps are stored")
    p.add_argument(
        "--controls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the images with their dots shuffled (condition 'shuffled'): the sink "
        "baseline, halo controls and the paper's claims need it (default on)",
    )
    p.add_argument("--no-png", action="store_true", help="do not try to write PNG figures")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _layers(values: list[str] | None) -> Any:
    """`--layers` words as a layer spec of `vlm_lens.core.layers` (plus the study's "paper"):
    integers stay integers (as run.json has always stored them), other words stay text."""
    if not values:
        return None
    specs = [int(v) if _INT.match(v) else v for v in values]
    if all(isinstance(v, int) for v in specs):
        return tuple(specs)
    return specs[0] if len(specs) == 1 else tuple(specs)


def _resolve(spec: Any, n_layers: int, flag: str) -> list[int]:
    """The layers `spec` names in a depth-`n_layers` model; a bad spec is a usage error."""
    from vlm_lens.studies import counting

    try:
        return counting.study_layers(spec, n_layers)
    except (ValueError, TypeError, IndexError) as err:
        raise UsageError(f"{flag}: {err}") from None


def _configs(args: argparse.Namespace, layers: Any, depth: int, untrained: bool) -> list:
    """The study's conditions for one model of `depth` layers, every flag checked (no model
    loaded: the depth comes from the checkpoint's config.json)."""
    from vlm_lens.studies import counting

    _resolve(layers, depth, "--layers")
    regrounding = None
    if args.regrounding:
        reg_layers = _layers(args.regrounding_layers)
        if reg_layers is not None:
            resolved = _resolve(reg_layers, depth, "--regrounding-layers")
            if not isinstance(reg_layers, tuple) or not all(isinstance(v, int) for v in reg_layers):
                reg_layers = tuple(resolved)
        try:
            regrounding = counting.Regrounding.parse(args.regrounding, reg_layers)
        except ValueError as err:
            raise UsageError(f"--regrounding {args.regrounding}: {err}") from None
    base = counting.CountingConfig(
        n=args.n,
        seed=args.seed,
        layers=layers,
        max_new_tokens=args.max_new_tokens,
        size=args.size,
        radius=args.radius,
        regrounding=regrounding,
        digits_only=args.digits_only or untrained,
        example_maps=args.example_maps,
    )
    configs = counting.conditions(
        base,
        cot=args.cot,
        three_digit=args.three_digit,
        cot_max_new_tokens=args.cot_max_new_tokens,
        controls=args.controls,
    )
    for config in configs:  # image size, radius and counts must fit: draw one image of each
        try:
            replace(config, n=1).dataset()
        except ValueError as err:
            raise UsageError(f"--size/--radius ({config.condition}): {err}") from None
    return configs


def run(args: argparse.Namespace) -> int:
    from vlm_lens.studies import counting

    out = Path(args.out)
    if args.action == "merge":
        results = counting.merge(out)
        if not results:
            print(f"nothing to merge under {out} (no */run.json)")
            return 1
        complete = True
        for name, r in results.items():
            status = "complete" if r["complete"] else f"MISSING {len(r['missing'])} samples"
            print(f"{name}: {r['rows']} rows, {r['duplicates']} duplicates dropped, {status}")
            complete &= r["complete"]
        _report(out, args)
        return 0 if complete else 1
    if args.action == "report":
        _report(out, args)
        return 0

    # Everything is checked before a model is loaded or anything is written.
    shard = check_run_args(args)
    layers = _layers(args.layers) or "last"
    if layers == "all":
        raise UsageError("--layers all is not supported (too many maps); name the layers")
    refs = [(m, m, None) for m in args.model] if args.model else [counting.default_model()]
    plans = [
        (ref, name, note, _configs(args, layers, model_depth(ref), note is not None))
        for ref, name, note in refs
    ]
    for ref, name, note, configs in plans:
        model = load_model(ref, args)
        model_dir = counting.run_counting(
            model,
            configs,
            out,
            model_name=name,
            shard=shard,
            progress=not args.no_progress,
            note=note,
            max_samples=args.limit,
            batch_size=args.batch_size,
        )
        print(f"{name}: samples in {model_dir}")
        del model
        gc.collect()
    if shard is not None:
        print(
            f"shard {shard.k}/{shard.n} done; when all shards are: vlm-lens count merge --out {out}"
        )
        return 0
    _report(out, args)
    return 0


def _report(out: Path, args: argparse.Namespace) -> None:
    """Write tables, figures and the report, and print the headline numbers."""
    from vlm_lens.reports.counting import headline_text
    from vlm_lens.studies import counting, harness

    written = harness.report(counting.STUDY, out, png=not args.no_png)
    print(headline_text(written["summaries"]))
    for summary in written["summaries"]:
        for line in counting.claims_text(summary):
            print(line)
    print(f"report: {written['paths']['report']}")
