"""What a yes-bias run writes besides its manifest: one `Record` per (condition, item) in
records.jsonl, the items (without images) in items.jsonl, and the prompt layout.

Not for: making the records (`vlm_lens.studies.yesbias.measure`) or reading numbers out of
them (`vlm_lens.studies.yesbias.summarize`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

from vlm_lens.data.yesno.items import YesNoItem
from vlm_lens.studies import harness
from vlm_lens.studies.runlog import jsonable, read_jsonl
from vlm_lens.studies.yesbias_options import ITEMS, RECORDS

__all__ = [
    "Record",
    "load_items",
    "load_records",
    "prompt_layout",
    "record_key",
    "write_items",
]


@dataclass(frozen=True)
class Record:
    """One (condition, item) of the sweep: one line of records.jsonl.

    Attributes:
        condition: the condition's id (`Condition.id`).
        item_id, unit_id, label: the item's, copied so analysis needs no data.
        text: the generated answer; answer: its first word as "yes", "no" or "other".
        score: log P(yes) - log P(no) at the first answer step.
        shares: per layer, the answer row's attention share on (system, image, text,
            generated) keys, head mean; None when not recorded (then not written).
    """

    condition: str
    item_id: str
    unit_id: Any
    label: bool
    text: str
    answer: Literal["yes", "no", "other"]
    score: float
    shares: list[list[float]] | None = None
    #: Written only when set (`harness` leaves them out of the log line while None).
    optional: ClassVar[tuple[str, ...]] = ("shares",)


def record_key(row: Mapping[str, Any]) -> tuple[str, str]:
    """A record's key in the log."""
    return (row["condition"], row["item_id"])


#: All records of a run directory: records.jsonl plus any shard log not merged yet.
load_records = partial(harness.load_records, key=record_key, log=RECORDS, shards=True)


def _item_row(item: YesNoItem) -> dict[str, Any]:
    return {
        "benchmark": item.benchmark,
        "item_id": item.item_id,
        "unit_id": item.unit_id,
        "question": item.question,
        "prompt": item.prompt,
        "label": bool(item.label),
        "meta": item.meta,
    }


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples, so meta keys (e.g. HallusionBench groups) stay hashable."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def load_items(run_dir: str | Path) -> list[YesNoItem]:
    """The items of a run (without images), as written by `run_sweep`."""
    rows = read_jsonl(Path(run_dir) / ITEMS)
    if not rows:
        raise FileNotFoundError(f"{Path(run_dir) / ITEMS} is missing or empty")
    return [
        YesNoItem(
            benchmark=r["benchmark"],
            item_id=r["item_id"],
            unit_id=r["unit_id"],
            images=[],
            question=r["question"],
            prompt=r["prompt"],
            label=bool(r["label"]),
            meta=_tuples(r.get("meta") or {}),
        )
        for r in rows
    ]


def write_items(run_dir: Path, items: Sequence[YesNoItem]) -> None:
    """Write items.jsonl, refusing items that changed under an id already in the run (e.g.
    another synthetic seed): their records would be mixed with the new ones."""
    lines = [json.dumps(jsonable(_item_row(item)), default=str) for item in items]
    old = {r["item_id"]: r for r in read_jsonl(run_dir / ITEMS)}
    for line in lines:
        row = json.loads(line)
        before = old.get(row["item_id"])
        if before is not None and before != row:
            raise ValueError(
                f"{run_dir}: item {row['item_id']!r} differs from the one already run "
                "(other data, seed or prompt?); use another --out"
            )
    # Every shard writes the same full list; the atomic replace makes concurrent writes harmless.
    tmp = run_dir / f".{ITEMS}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, run_dir / ITEMS)


#: run.json keys that change what a condition id's records mean, each with the value a


def prompt_layout(inputs: Any, row: int = 0) -> dict[str, Any]:
    """Where the system, image and text tokens of one prepared prompt sit (for run.json).

    `{"prompt_len", "system": [start, end], "images": [[start, end], ...], "text"}`, indices
    into the (left-padded) row, `text` the rendered prompt.
    """
    sample = inputs.segments.samples[row]
    return {
        "prompt_len": int(inputs.segments.prompt_len),
        "system": [sample.system.start, sample.system.end],
        "images": [[span.start, span.end] for span in sample.images],
        "text": inputs.texts[row] if inputs.texts else None,
    }
