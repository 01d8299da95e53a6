"""Evaluate a counting organism and write its section of ``benchmarks/RESULTS.md``.

``python -m scripts.organism.evaluate [--model DIR] [--results benchmarks/RESULTS.md]``

Everything runs through :class:`vlm_lens.HookedVLM` (``prepare`` + greedy ``generate``), as a
user would, on data from seeds that training never draws (training uses seeds >= 10_000_000 and
validation seed 5_000):

- ``paper``: 256 fresh paper-spec images (``dots.generate(256, 10_000)``: radius 10, intensity
  0-20, counts 10-16): exact accuracy, mean absolute error, mean bias error, parse rate.
- ``control``: 256 images of ``dots.control_set(256, 10_001)``, where total dark area and count
  are independent (same metrics).
- ``yesno``: 256 balanced held-out questions: 128 "Are there exactly N dots?" on paper-spec
  images (seed 10_002; N true or off by 1-3, half each) and 128 "Is there a dot in the top-left
  quarter?" on training-distribution images (seed 10_003, half yes).
- ``diagnostics`` (beside the targets, to tell skills from shortcuts):

  - ``quarter_count_free``: 128 quadrant questions whose label does not follow the count
    (seed 10_004; a "no" image keeps the quarter ink-free at any count), with the yes-rate on
    quarters with and without a dot by count band. In the set above an empty quarter almost
    only occurs with few dots, so a model can score there by counting; here it cannot.
  - ``exact_yes_rate``: how often "Are there exactly N dots?" gets "yes" on paper-spec images
    (seed 10_005) when N is the true count, off by 1-3 ("near"), or 6+ away ("far").

Not for: the studies' benchmarks (`vlm-lens count`, `vlm-lens yesbias`); this script sits beside
the package and is not installed with it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from scripts.organism.train import (
    COUNT_PROMPT,
    QUADRANTS,
    TrainConfig,
    count_free_quarter_sample,
    exact_prompt,
    exact_questions,
    parse_count,
    quarter_prompt,
    quarter_samples,
    wrong_count,
)
from vlm_lens.data import dots
from vlm_lens.data.yesno.items import parse_yes_no
from vlm_lens.reports.machine import describe_machine

PAPER_SEED = 10_000
CONTROL_SEED = 10_001
EXACT_SEED = 10_002
QUARTER_SEED = 10_003
COUNT_FREE_SEED = 10_004
EXACT_RATE_SEED = 10_005
COUNT_BANDS = ((1, 4), (5, 9), (10, 16), (17, 30))
_DEFAULTS = TrainConfig(out="")
#: Quadrant questions are asked on images like the training ones (the trainer's defaults).
TRAIN_LIKE = {
    "count_range": _DEFAULTS.count_range,
    "radius_range": _DEFAULTS.radius_range,
    "intensity_range": _DEFAULTS.intensity_range,
}


def _answers(model, images: Sequence, prompts: Sequence[str], batch: int = 16) -> list[str]:
    texts: list[str] = []
    for start in range(0, len(images), batch):
        inputs = model.prepare(
            images=[[im] for im in images[start : start + batch]],
            prompt=list(prompts[start : start + batch]),
        )
        texts.extend(model.generate(inputs, max_new_tokens=4, keep_logits=False).texts)
    return texts


def count_metrics(model, samples: Sequence[dots.DotsSample]) -> dict:
    texts = _answers(model, [s.image for s in samples], [COUNT_PROMPT] * len(samples))
    values = [parse_count(t) for t in texts]
    pairs = [(v, s.count) for v, s in zip(values, samples) if v is not None]
    n = len(samples)
    errors = [v - c for v, c in pairs]
    return {
        "n": n,
        "exact": sum(e == 0 for e in errors) / n,
        "mae": sum(abs(e) for e in errors) / max(len(errors), 1),
        "mbe": sum(errors) / max(len(errors), 1),
        "parse_rate": len(pairs) / n,
        "within_1": sum(abs(e) <= 1 for e in errors) / n,
    }


def yesno_items(n: int = 256) -> list[tuple[object, str, bool, str]]:
    """``(image, prompt, label, kind)``: half exact-count, half quadrant questions; balanced."""
    half = n // 2
    items = [
        (r.image, r.prompt, r.answer == "yes", "exact")
        for r in exact_questions(dots.generate(half, EXACT_SEED), EXACT_SEED)
    ]
    for i in range(half):
        quadrant, want = i % len(QUADRANTS), (i // len(QUADRANTS)) % 2 == 0
        s = quarter_samples(1, QUARTER_SEED + i, [want], quadrant, **TRAIN_LIKE)[0]
        items.append((s.image, quarter_prompt(quadrant), dots.has_dot_in(s, quadrant), "quarter"))
    return items


def yesno_metrics(model, n: int = 256) -> dict:
    items = yesno_items(n)
    texts = _answers(model, [it[0] for it in items], [it[1] for it in items])
    out: dict = {"n": len(items)}
    answers = [parse_yes_no(t) for t in texts]
    for kind in ("exact", "quarter", None):
        sel = [(a, it[2]) for a, it in zip(answers, items) if kind is None or it[3] == kind]
        right = sum((a == "yes") == label and a != "other" for a, label in sel)
        key = "accuracy" if kind is None else f"accuracy_{kind}"
        out[key] = right / len(sel)
    out["parse_rate"] = sum(a != "other" for a in answers) / len(answers)
    out["yes_rate"] = sum(a == "yes" for a in answers) / len(answers)
    return out


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def quarter_count_free(model, n: int = 128) -> dict:
    """Quadrant questions whose label is independent of the count (see the module doc)."""
    rng = random.Random(COUNT_FREE_SEED)
    rows = []
    for i in range(n):
        quadrant, want = i % len(QUADRANTS), (i // len(QUADRANTS)) % 2 == 0
        s = count_free_quarter_sample(want, quadrant, rng, TRAIN_LIKE)
        rows.append((s.image, quarter_prompt(quadrant), dots.has_dot_in(s, quadrant), s.count))
    said_yes = [
        parse_yes_no(t) == "yes"
        for t in _answers(model, [r[0] for r in rows], [r[1] for r in rows])
    ]
    bands = {}
    for lo, hi in COUNT_BANDS:
        sel = [(y, r[2]) for y, r in zip(said_yes, rows) if lo <= r[3] <= hi]
        bands[f"{lo}-{hi}"] = {
            "n": len(sel),
            "yes_rate_with_dot": _rate([y for y, label in sel if label]),
            "yes_rate_without_dot": _rate([y for y, label in sel if not label]),
        }
    return {
        "n": n,
        "accuracy": sum(y == r[2] for y, r in zip(said_yes, rows)) / n,
        "by_count": bands,
    }


def exact_yes_rates(model, n: int = 64) -> dict:
    """How often "exactly N?" gets "yes" for the true N, a near miss (1-3) and a far one (6+)."""
    samples = dots.generate(n, EXACT_RATE_SEED)
    rng = random.Random(EXACT_RATE_SEED)
    asked = {
        "true": [s.count for s in samples],
        "near": [wrong_count(s.count, rng) for s in samples],  # counts 10-16: never clipped
        "far": [rng.choice([k for k in range(1, 31) if abs(k - s.count) >= 6]) for s in samples],
    }
    images = [s.image for s in samples]
    return {
        kind: _rate(
            [
                parse_yes_no(t) == "yes"
                for t in _answers(model, images, [exact_prompt(k) for k in counts])
            ]
        )
        for kind, counts in asked.items()
    }


def evaluate(path: str | Path, n: int = 256) -> dict:
    from vlm_lens import HookedVLM

    model = HookedVLM.from_pretrained(path)
    start = time.monotonic()
    with torch.no_grad():
        result = {
            "paper": count_metrics(model, dots.generate(n, PAPER_SEED)),
            "control": count_metrics(model, dots.control_set(n, CONTROL_SEED)),
            "yesno": yesno_metrics(model, n),
            "diagnostics": {
                "quarter_count_free": quarter_count_free(model, n // 2),
                "exact_yes_rate": exact_yes_rates(model, n // 4),
            },
        }
    result["eval_seconds"] = round(time.monotonic() - start, 1)
    return result


# ------------------------------------------------------------------------------ report


def _stage(stage: dict) -> str:
    """One training stage: its command and what it ran with."""
    cfg = stage.get("config", {})
    threads = cfg.get("threads")
    return (
        f"`{stage.get('command', '?')}` ({stage.get('steps')} steps, "
        f"{stage.get('seconds', 0) / 60:.1f} min, lr {cfg.get('lr')}, "
        f"yes/no fraction {cfg.get('yesno_fraction')}, exact-count share "
        f"{cfg.get('exact_share', 0.5)}, far negatives {cfg.get('far_share', 0.0)}, "
        f"{threads} torch thread{'' if threads == 1 else 's'}{_options(cfg)})"
    )


def _options(cfg: dict) -> str:
    """The training options a stage turned on (those off by default), as ", a, b"."""
    named = {
        "balanced_quadrants": "count-free quadrant labels",
        "paired_exact": "exact-count minimal pairs",
        "linear_patch_embed": "linear patch embedding",
    }
    on = [text for key, text in named.items() if cfg.get(key)]
    if cfg.get("ema"):
        on.append(f"weight average (EMA {cfg['ema']})")
    return "".join(f", {text}" for text in on)


def section(result: dict, training: dict, path: str | Path) -> str:
    p, c, y = result["paper"], result["control"], result["yesno"]
    stages = training.get("stages") or [training]
    cfg = stages[0].get("config", {})
    size = cfg.get("size")
    grid = f"{size // 32} x {size // 32}" if size else "?"
    minutes = sum(st.get("seconds", 0) for st in stages) / 60
    runs = "; then ".join(_stage(st) for st in stages)
    ok = lambda flag: "met" if flag else "**missed**"  # noqa: E731
    lines = [
        "## Organism",
        "",
        "The shipped model organism (`vlm_lens.zoo.organism()`): a small Qwen3-VL trained from "
        "scratch by `scripts.organism.train`, evaluated by `scripts.organism.evaluate` through "
        "`HookedVLM` on seeds training never used.",
        "",
        f"- Machine: {describe_machine()}.",
        f"- Training: {runs}; batch {cfg.get('batch')}, {minutes:.1f} min wall time in all; "
        f"images {size} px -> {grid} merged image tokens; dot radius {cfg.get('radius_range')}, "
        f"intensity {cfg.get('intensity_range')}, counts {cfg.get('count_range')}.",
        f"- Weights: {Path(path, 'model.safetensors').stat().st_size / 1e6:.1f} MB safetensors.",
        "",
        "| set | n | exact | MAE | MBE | parse rate | within ±1 | target |",
        "|---|---|---|---|---|---|---|---|",
        f"| paper spec (seed {PAPER_SEED}, counts 10-16) | {p['n']} | {p['exact']:.1%} | "
        f"{p['mae']:.3f} | {p['mbe']:+.3f} | {p['parse_rate']:.0%} | {p['within_1']:.1%} | "
        f"exact ≥ 90% {ok(p['exact'] >= 0.9)}, MAE ≤ 0.15 {ok(p['mae'] <= 0.15)}, "
        f"parseable {ok(p['parse_rate'] == 1.0)} |",
        f"| area-decorrelated control (seed {CONTROL_SEED}) | {c['n']} | {c['exact']:.1%} | "
        f"{c['mae']:.3f} | {c['mbe']:+.3f} | {c['parse_rate']:.0%} | {c['within_1']:.1%} | "
        f"exact ≥ 60% {ok(c['exact'] >= 0.6)} |",
        "",
        f"Yes/no (balanced, {y['n']} questions): accuracy {y['accuracy']:.1%} "
        f"(exactly-N {y['accuracy_exact']:.1%}, dot-in-quadrant {y['accuracy_quarter']:.1%}), "
        f"parse rate {y['parse_rate']:.0%}, yes rate {y['yes_rate']:.1%}; target ≥ 90% "
        f"{ok(y['accuracy'] >= 0.9)}.",
        "",
    ]
    if "diagnostics" in result:
        lines += [diagnostics_paragraph(result["diagnostics"]), ""]
    lines += [f"Evaluation took {result['eval_seconds']:.0f} s.", ""]
    if training.get("notes"):
        lines += [training["notes"], ""]
    return "\n".join(lines)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def diagnostics_paragraph(diag: dict) -> str:
    q, e = diag["quarter_count_free"], diag["exact_yes_rate"]
    bands = "; ".join(
        f"{band} dots: {_pct(b['yes_rate_with_dot'])} with a dot, "
        f"{_pct(b['yes_rate_without_dot'])} without"
        for band, b in q["by_count"].items()
    )
    return (
        f"Diagnostics. Quadrant questions whose label does not follow the count (seed "
        f"{COUNT_FREE_SEED}, {q['n']} questions): accuracy {q['accuracy']:.1%}; yes-rate {bands}. "
        f'"Exactly N?" answered "yes" (seed {EXACT_RATE_SEED}): {_pct(e["true"])} for the true '
        f"N, {_pct(e['near'])} for N off by 1-3, {_pct(e['far'])} for N 6 or more away."
    )


def write_section(results: Path, text: str, heading: str = "## Organism") -> None:
    """Replace our own section of ``results`` (or append it); other sections stay untouched."""
    old = results.read_text() if results.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next(
            (j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines)
        )
        new = (
            "".join(lines[:start])
            + text
            + ("\n" if end < len(lines) else "")
            + "".join(lines[end:])
        )
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(new)


def main(argv: Sequence[str] | None = None) -> int:
    from vlm_lens.zoo import organism

    p = argparse.ArgumentParser(prog="python -m scripts.organism.evaluate")
    p.add_argument("--model", help="checkpoint dir (default: the shipped organism)")
    p.add_argument("--results", help="RESULTS.md to write the '## Organism' section into")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--json", help="also write the metrics here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    path = Path(args.model) if args.model else organism()
    result = evaluate(path, args.n)
    print(json.dumps(result, indent=2))
    training_file = path / "training.json"
    training = json.loads(training_file.read_text()) if training_file.exists() else {}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.results:
        write_section(Path(args.results), section(result, training, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
