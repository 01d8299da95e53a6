"""`vlm-lens yesbias`: the yes-bias study (attention redistribution sweep) from the shell.

A thin layer over `vlm_lens.studies.yesbias`::

    vlm-lens yesbias --model llava-hf/llava-1.5-7b-hf --device cuda --dtype float16 \\
        --benchmark pope=/data/POPE --benchmark winoground=/data/winoground \\
        --sweep quarters --fractions 0.25 0.5 0.75 1.0 --out runs/yesbias
    vlm-lens yesbias --benchmark synthetic --sweep paper --limit 32   # offline, tiny model
    vlm-lens yesbias report --out runs/yesbias     # rebuild tables, figures and report.html
    vlm-lens yesbias merge --out runs/yesbias      # after a sharded run

`--benchmark NAME=PATH` (repeatable) reads a benchmark from its released layout
(mme, pope, hallusionbench, naturalbench, winoground, sugarcrepe, beaf); plain
`synthetic` generates the offline paired set (the default). `--limit N` keeps the first N
pairing units of each benchmark (default 16 for synthetic, all otherwise).

Sweeps: `quarters` (baseline; system->text, system->image, system->image+text,
text->system, image->system × Q1..Q4 × `--fractions`; image ×2 per quarter), `paper`
(baseline; the three system redistributions in Q4 at fraction 1; image ×2 in Q4 and in all
layers), `none` (baseline only). `--knockout` adds system knockout.

Edit semantics (kept in each run's run.json; a run is not resumed with other ones):
`--mode proportional` (default, the paper's stated rule) or `uniform` (evenly within each
recipient modality, the paper's released code); `--rows answer` (default: last prompt row
and decoding rows) or `all` (every row, still causal); `--system none` (default: no system
message, the chat template decides), `paper` (the vicuna_v1 prompt of the paper's LLaVA-1.5
runs) or literal text. The paper's LLaVA-1.5 setup as its released code runs it::

    vlm-lens yesbias --model llava-hf/llava-1.5-7b-hf --system paper --mode uniform \\
        --rows all --sweep paper --benchmark winoground=/data/winoground

Every argument is checked, and every benchmark read, before a model is loaded or anything
is written; a bad one is one line on stderr, exit status 2. A generation whose hooks saw no
decoding step, or a run without records, stops with an error (exit status 1) instead of
writing a report.

With no `--model`, the trained organism (`vlm_lens.zoo.organism()`) is used if it exists,
otherwise a tiny random-weight qwen3_vl zoo model, with a printed notice: its numbers only
show that the pipeline runs.

Every (condition, item) is appended to `<out>/<model slug>/<benchmark>/records.jsonl` as
soon as it is done: running the same command again resumes. Sharding: `--shard K/N`
(0-based K; `auto` reads RANK / WORLD_SIZE as torchrun and accelerate set them) takes the
pairing units with index % N == K and writes `records.shard-K-of-N.jsonl`; `merge` folds
the shards together and writes the report::

    for k in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$k vlm-lens yesbias --shard $k/4 \\
        --model Qwen/Qwen3-VL-2B-Instruct --device cuda --dtype bfloat16 \\
        --benchmark pope=/data/POPE --out runs/yesbias & done; wait
    vlm-lens yesbias merge --out runs/yesbias

Not for: the study itself (`vlm_lens.studies.yesbias`, usable from a notebook).
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

from vlm_lens.cli._common import (
    COUNT,
    FRACTION,
    INDEX,
    UsageError,
    add_model_args,
    check_run_args,
    load_model,
    model_depth,
    real,
)
from vlm_lens.studies import yesbias_options as options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "yesbias",
        help="yes-bias study: redistribute attention between system/image/text tokens",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "merge", "report"),
        help="run the sweep (default), merge shard logs, or rebuild the report",
    )
    p.add_argument("--model", metavar="ID_OR_PATH", help="hub id or local checkpoint")
    p.add_argument("--tag", help="output folder name of the model (default: from --model)")
    p.add_argument(
        "--benchmark",
        nargs="+",
        action="extend",
        metavar="NAME=PATH",
        help="benchmarks to run: NAME=PATH (repeatable), or 'synthetic' (the default)",
    )
    n_dir, n_q, n_f = len(options.DIRECTIONS), len(options.QUARTERS), len(options.FRACTIONS)
    p.add_argument(
        "--sweep",
        default="quarters",
        choices=("quarters", "paper", "none"),
        help=f"default quarters: baseline + {n_dir} directions x {n_q} quarters x {n_f} "
        f"fractions + image x2 per quarter = {1 + n_dir * n_q * n_f + n_q} conditions per "
        "item (--directions, --fractions, --image-alpha 0 shrink it); paper: baseline + 5 "
        "arms in Q4/all; none: baseline only",
    )
    p.add_argument(
        "--fractions",
        nargs="+",
        type=FRACTION,
        default=list(options.FRACTIONS),
        help="fractions moved (dose-response; default 0.25 0.5 0.75 1.0)",
    )
    p.add_argument(
        "--directions",
        nargs="+",
        default=list(options.DIRECTIONS),
        choices=list(options.DIRECTIONS),
        metavar="DIRECTION",
        help=f"directions of the quarters sweep (default: all of {', '.join(options.DIRECTIONS)})",
    )
    p.add_argument(
        "--image-alpha", type=real(0.0), default=2.0, help="image scaling factor (0: none)"
    )
    p.add_argument("--knockout", action="store_true", help="add system knockout per quarter")
    p.add_argument("--limit", type=COUNT, default=None, help="first N pairing units per benchmark")
    p.add_argument("--seed", type=INDEX, default=0, help="seed of the synthetic set")
    p.add_argument(
        "--system",
        default="none",
        metavar="none|paper|TEXT",
        help="system prompt: 'none' (default: the chat template decides), 'paper' (the "
        "vicuna_v1 prompt of the paper's LLaVA runs) or literal text",
    )
    p.add_argument(
        "--mode",
        default="proportional",
        choices=options.MODES,
        help="spread moved attention in proportion to each key (default) or evenly per modality",
    )
    p.add_argument(
        "--rows",
        default="answer",
        choices=options.ROWS,
        help="edit the answer rows (default: last prompt row and decoding rows) or all rows",
    )
    p.add_argument("--max-new-tokens", type=COUNT, default=4)
    p.add_argument("--batch-size", type=COUNT, default=1)
    p.add_argument("--out", default="runs/yesbias", help="output directory")
    add_model_args(p, "K/N: pairing units with index %% N == K; or auto")
    p.add_argument("--n-boot", type=COUNT, default=1000, help="bootstrap resamples")
    p.add_argument(
        "--no-shares",
        action="store_true",
        help="do not record per-layer attention shares (keeps every layer on the fast path)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def parse_benchmark(spec: str) -> tuple[str, str | None]:
    """`"pope=/data/POPE"` -> ("pope", "/data/POPE"); `"synthetic"` -> ("synthetic", None)."""
    name, sep, path = spec.partition("=")
    name = name.strip()
    if not name:
        raise UsageError(f"--benchmark: expected NAME=PATH or 'synthetic', got {spec!r}")
    if name.lower() == "synthetic":
        return "synthetic", None
    if not sep or not path:
        raise UsageError(f"--benchmark {spec!r}: give a local path, e.g. {name}=/data/{name}")
    return name, path


def load_items(name: str, path: str | None, limit: int | None, seed: int = 0) -> list:
    from vlm_lens.data.yesno import load_benchmark, synthetic

    if path is None:
        return synthetic.generate(16 if limit is None else limit, seed=seed)
    return load_benchmark(name, path, limit=limit)


def _check_tag(tag: str) -> str:
    """`--tag` names one folder under `--out`."""
    if not tag.strip() or tag in (".", "..") or "/" in tag or "\\" in tag:
        raise UsageError(f"--tag {tag!r}: must be one folder name (no '/', not '.' or '..')")
    return tag


def run(args: argparse.Namespace) -> int:
    from vlm_lens.studies import harness, yesbias

    out = Path(args.out)
    if args.action in ("merge", "report"):
        if not harness.run_dirs(out):
            print(f"nothing under {out} (no */*/run.json)")
            return 1
        complete = True
        if args.action == "merge":
            for name, r in yesbias.merge(out).items():
                status = "complete" if r["complete"] else f"MISSING {len(r['missing'])} records"
                print(
                    f"{name}: {r['rows']} records, {r['duplicates']} duplicates dropped, {status}"
                )
                complete &= r["complete"]
        _report(out, args.n_boot)
        return 0 if complete else 1

    # Everything is checked (and every benchmark read) before a model is loaded or anything
    # is written.
    shard = check_run_args(args)
    benchmarks = [parse_benchmark(s) for s in (args.benchmark or ["synthetic"])]
    conditions = yesbias.sweep_conditions(
        args.sweep,
        fractions=args.fractions,
        directions=args.directions,
        image_alpha=args.image_alpha or None,
        knockout=args.knockout,
    )
    if args.model:
        ref, name, note = args.model, args.model, None
    else:
        ref, name, note = yesbias.default_model()  # prints the note of a stand-in model
        if note is None:
            print(f"no --model given: using {name}")
    tag = _check_tag(args.tag) if args.tag else name
    model_depth(ref)  # its config.json is readable (no weights read yet)
    loaded = [(bench, load_items(bench, path, args.limit, args.seed)) for bench, path in benchmarks]
    model = load_model(ref, args)
    for bench, items in loaded:
        if not items:
            print(f"{bench}: no items")
            continue
        run_dir = harness.run_dir(out, tag, items[0].benchmark)
        print(f"{bench}: {len(items)} items x {len(conditions)} conditions -> {run_dir}")
        yesbias.run_sweep(
            model,
            items,
            conditions,
            run_dir,
            model_name=name,
            max_new_tokens=args.max_new_tokens,
            system=args.system,
            mode=args.mode,
            rows=args.rows,
            batch_size=args.batch_size,
            shard=shard,
            record_shares=not args.no_shares,
            progress=not args.no_progress,
            note=note,
        )
    del model
    gc.collect()
    if shard is not None:
        print(
            f"shard {shard.k}/{shard.n} done; when all shards are: vlm-lens yesbias merge --out {out}"
        )
        return 0
    _report(out, args.n_boot)
    return 0


def _report(out: Path, n_boot: int) -> None:
    """Write every model's report and print its headline grid."""
    from vlm_lens.reports.yesbias import HEADLINE_FILE
    from vlm_lens.studies import harness, yesbias

    for page in harness.report(yesbias.STUDY, out, n_boot=n_boot):
        print(page.with_name(HEADLINE_FILE).read_text(encoding="utf-8"), end="")
        print(f"report: {page}")
