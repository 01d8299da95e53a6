"""The yes-bias study as the harness runs it: `STUDY`, `run_sweep`, `merge`, `default_model`.

Not for: what a record holds (`vlm_lens.studies.yesbias.records`), how it is measured
(`vlm_lens.studies.yesbias.measure`) or summarised (`vlm_lens.studies.yesbias.summarize`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from vlm_lens.data.yesno.items import YesNoItem
from vlm_lens.interventions.hooks import Rows
from vlm_lens.interventions.patterns import Mode
from vlm_lens.studies import fallback, harness
from vlm_lens.studies.runlog import Shard
from vlm_lens.studies.yesbias.conditions import Condition
from vlm_lens.studies.yesbias.config import SEMANTICS, SweepConfig
from vlm_lens.studies.yesbias.measure import measure, plan
from vlm_lens.studies.yesbias.records import load_items, record_key
from vlm_lens.studies.yesbias.summarize import analyze
from vlm_lens.studies.yesbias_options import RECORDS

__all__ = ["STUDY", "UNTRAINED_NOTE", "default_model", "merge", "run_sweep"]


def _expected(
    run_dir: Path, manifest: Mapping[str, Any]
) -> tuple[list[Hashable], Callable[[dict], Any]]:
    """Every (condition, item) of the run, and the merged log's order (condition order of
    run.json, item order of items.jsonl), so a merged sharded run equals an unsharded one."""
    conditions = manifest["conditions"]
    item_ids = [it.item_id for it in load_items(run_dir)]
    c_rank = {c: i for i, c in enumerate(conditions)}
    i_rank = {i: n for n, i in enumerate(item_ids)}
    expected = [(c, i) for c in conditions for i in item_ids]
    return expected, lambda r: (
        c_rank.get(r["condition"], len(c_rank)),
        r["condition"],
        i_rank.get(r["item_id"], len(i_rank)),
    )


STUDY = harness.Study(
    name="yesbias",
    config=SweepConfig,
    measure=measure,
    summarize=analyze,
    report="vlm_lens.reports.yesbias:write_outputs",
    plan=plan,
    key=record_key,
    expected=_expected,
    log=RECORDS,
    check={
        "fixed": SEMANTICS,
        # A layer spec is part of the condition ids: it must still name the same layers.
        "entries": ("layers",),
        "accumulate": {
            "conditions": lambda old, new: list(dict.fromkeys((old or []) + new)),
            "fractions": lambda old, new: sorted(set(old or []) | set(new)),
        },
    },
)

#: Fold the shard logs of every run at or below a folder into its records.jsonl.
merge = partial(harness.merge, STUDY)

UNTRAINED_NOTE = (
    "No model given and no trained organism available: this is a tiny UNTRAINED "
    "random-weight qwen3_vl zoo model. Its answers are noise; the run only shows that the "
    "pipeline works."
)

#: `(model_or_path, name, note)` for a run that names no model (`fallback.default_model`).
default_model = partial(fallback.default_model, UNTRAINED_NOTE)


def run_sweep(
    model: Any,
    items: Sequence[YesNoItem],
    conditions: Sequence[Condition],
    run_dir: str | Path,
    *,
    model_name: str | None = None,
    max_new_tokens: int = 4,
    system: str | None = None,
    mode: Mode = "proportional",
    rows: Rows = "answer",
    batch_size: int = 1,
    shard: Shard | str | None = None,
    record_shares: bool = True,
    progress: bool = True,
    max_records: int | None = None,
    on_record: Callable[[dict], None] | None = None,
    note: str | None = None,
) -> Path:
    """Run every (condition, item) not yet in `run_dir`'s logs (`harness.run` with `STUDY`);
    returns the log's path.

    The settings are `SweepConfig`'s; `batch_size` items per forward (left-padded; only
    items whose images have the same sizes are batched; 1 is always correct); `shard`
    (`Shard(k, n)` or "K/N") takes the pairing units with index % N == K; `max_records`
    stops after that many new records; `on_record(row)` is called after each is written;
    `note` is kept in run.json and shown in the report. A resume that changes
    `SEMANTICS` (model, benchmark, max_new_tokens, system, mode, rows) is refused.

    Every generation of a condition with hooks is checked: its recording must hold every
    step it generated (`EmptyMeasurementError` if the hooks saw no decoding step) and
    finite shares. A condition's own hooked layers are recorded for that check even with
    `record_shares=False`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:  # before run.json is written (it would pin the folder to it)
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    config = SweepConfig(
        items=tuple(items),
        conditions=tuple(conditions),
        max_new_tokens=max_new_tokens,
        system=system,
        mode=mode,
        rows=rows,
        record_shares=record_shares,
    )
    shard = Shard.parse(shard) if isinstance(shard, str) else shard
    run_dir = harness.run(
        STUDY,
        model,
        config,
        run_dir,
        model_name=model_name,
        shard=shard,
        progress=progress,
        note=note,
        max_samples=max_records,
        batch_size=batch_size,
        on_record=on_record,
    )
    return run_dir / (RECORDS if shard is None else shard.log_name(RECORDS))
