"""The yes-bias study: attention redistribution between modalities as patching experiments.

Implements shared/papers/yes-bias-system-attention.md on any supported architecture, as a
pipeline of plain functions a notebook can enter at any stage::

    conditions = sweep_conditions("quarters", fractions=(0.5, 1.0))   # what to run
    run_dir = run_sweep(model, items, conditions, out / tag / "synthetic")  # -> records.jsonl
    result = analyze(run_dir)              # metrics per condition, delta table

The figures and the HTML report: `vlm_lens.reports.yesbias` (`report_run(run_dir)`).

Stages:

1. **Conditions.** A `Condition` names one intervention with a stable string id:
   ``baseline``, ``redistribute:system->text:Q4:f1.0`` (source->recipients, layers, fraction),
   ``scale:image:Q4:a2.0`` (the paper's Image×2.0), ``knockout:system:Q4``. Its hooks come
   from `vlm_lens.interventions` (`Condition.fwd_hooks`, the one place this module calls
   that API).
2. **Records.** `run_sweep` runs every (condition, item): greedy generation of a few tokens
   (the answer is the first word: yes / no / other) and the continuous score
   log P(yes) - log P(no) at the first answer step (`yes_no_score` on
   `GenerationResult.logits[0]`), plus the per-layer attention share of the answer row on
   system / image / text / generated keys (head mean, after the condition's edit). One
   JSON line per (condition, item) is appended and flushed as it goes to
   ``records.jsonl`` (``records.shard-K-of-N.jsonl`` for ``Shard(K, N)``, which takes the
   pairing units with ``index % N == K``); a restart skips what is done and cuts a
   truncated last line. `merge_records` folds the shard logs into ``records.jsonl``.
   ``items.jsonl`` (every item without its images) and ``run.json`` (model, settings,
   conditions) sit beside them, so analysis needs neither the model nor the data.
3. **Metrics.** `condition_metrics`: the benchmark's official metrics per condition
   (`vlm_lens.metrics.yesno.evaluate`). `delta_table`: per condition, Δ paired accuracy,
   Δ accuracy, Δ yes-rate and Δ mean score against the baseline with paired bootstrap 95%
   intervals: pairing units are resampled jointly for the condition and the baseline, and
   the difference is taken within each resample.
4. **Figures and report** (`vlm_lens.reports.yesbias`): heatmap quarter × intervention,
   dose-response curves, per-layer attention shares of the baseline; a self-contained HTML
   page.

Edit semantics (one setting per run, kept in run.json; a run is never resumed with others):

- ``mode``: "proportional" (default, the paper's stated rule: mass moved into a modality
  goes to its keys in proportion to their current attention) or "uniform" (evenly over the
  modality's visible keys, as the paper's released code does; PITFALLS 16).
- ``rows``: "answer" (default: the last prompt row and every decoding row) or "all" (every
  query row, the prefill's included, as the released code does). Both stay causal: a row
  only gives weight to keys it can see, and a row that sees no recipient key is left as it
  is (see `vlm_lens.interventions.patterns`).
- ``system``: "none" (default: no system message, the chat template decides), "paper"
  (`PAPER_SYSTEM`, the vicuna_v1 prompt of the paper's LLaVA-1.5 runs) or any literal text.

The system span (every token before the user's first content item) with ``system="none"``:

=================  ==============================================================
Qwen2-VL, 2.5-VL   the template's own "You are a helpful assistant." turn + user header
Qwen3-VL           no system turn: only the user header ``<|im_start|>user\n``
Gemma3             BOS + the user header ``<start_of_turn>user\n``
llava-1.5-hf       BOS + ``USER: `` (the template has no system prompt)
=================  ==============================================================

With ``system="paper"`` on llava-1.5-hf the prompt is exactly the paper's vicuna_v1 layout,
``<s>A chat between ... questions. USER: <image>\n{question} ASSISTANT:``; with the real
vocabulary its system span is BOS + 30 tokens + " USER: " = 35 tokens and the image
[35, 611). Other templates put the same text in their system turn (Gemma3 merges it into the
first user turn). run.json's ``layout`` records the first item's spans.

A generation whose hooks saw no decoding step, or NaN attention shares, stops the run with
`vlm_lens.studies.EmptyMeasurementError` before its records are written; `analyze` raises it
for a run without records instead of writing an empty report.

Not for: the attention arithmetic (`vlm_lens.interventions`), reading benchmarks
(`vlm_lens.data.yesno`) or the metrics' definitions (`vlm_lens.metrics.yesno`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vlm_lens.core.recording import AttentionRecord
from vlm_lens.core.segments import SEGMENT_KINDS
from vlm_lens.data.yesno.items import YesNoItem, parse_yes_no, yes_no_score, yes_no_token_ids
from vlm_lens.interventions import Intervention, knockout, redistribute, scale_modality
from vlm_lens.interventions.hooks import Rows
from vlm_lens.interventions.patterns import Mode
from vlm_lens.metrics.yesno import bootstrap_unit_sums, evaluate, percentile_interval
from vlm_lens.studies import fallback, harness, runlog
from vlm_lens.studies.checks import EmptyMeasurementError, require_decoding_steps, require_finite
from vlm_lens.studies.runlog import SampleLog, Shard, jsonable, read_jsonl, write_json_atomic
from vlm_lens.studies.yesbias_options import (
    DIRECTIONS,
    FRACTIONS,
    ITEMS,
    MODES,
    PAPER_SYSTEM,
    QUARTERS,
    RECORDS,
    ROWS,
    RUN,
    SYSTEM_PRESETS,
)

__all__ = [
    "DIRECTIONS",
    "FRACTIONS",
    "PAPER_SYSTEM",
    "QUARTERS",
    "RECORDS",
    "SYSTEM_PRESETS",
    "Condition",
    "analyze",
    "condition_metrics",
    "default_model",
    "delta_table",
    "layer_shares",
    "load_items",
    "load_records",
    "merge_records",
    "model_tag",
    "paired_delta",
    "prompt_layout",
    "resolve_system",
    "run_sweep",
    "sweep_conditions",
    "write_table",
]

SHARE_KINDS = SEGMENT_KINDS

Kind = Literal["baseline", "redistribute", "scale", "knockout"]


def resolve_system(system: str | None) -> tuple[str, str | None]:
    """`(preset, text)` of a `system=` setting: None or "none" -> ("none", None), "paper" ->
    ("paper", `PAPER_SYSTEM`), anything else -> ("custom", the text itself)."""
    if system is None:
        return "none", None
    if system in SYSTEM_PRESETS:
        return system, SYSTEM_PRESETS[system]
    return "custom", system


# ------------------------------------------------------------------------------ conditions


@dataclass(frozen=True)
class Condition:
    """One arm of the sweep.

    Attributes:
        kind: "baseline", "redistribute", "scale" (modality ×alpha, renormalised) or
            "knockout" (modality zeroed, renormalised).
        target: for "redistribute" a direction "source->recipient[+recipient]" (e.g.
            "system->image+text"); for "scale" / "knockout" the modality.
        layers: a layer spec of `vlm_lens.interventions` ("Q4", "all", "20:28", ...).
        fraction: share of the source's weight moved ("redistribute").
        alpha: factor ("scale").
    """

    kind: Kind
    target: str | None = None
    layers: str | None = None
    fraction: float | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("baseline", "redistribute", "scale", "knockout"):
            raise ValueError(f"unknown condition kind {self.kind!r}")
        if self.kind != "baseline" and (not self.target or not self.layers):
            raise ValueError(f"a {self.kind} condition needs a target and layers")
        if self.kind == "redistribute":
            if self.fraction is None or "->" not in str(self.target):
                raise ValueError("redistribute needs target 'source->recipients' and a fraction")
            object.__setattr__(self, "fraction", float(self.fraction))
            if not 0.0 <= self.fraction <= 1.0:
                raise ValueError(f"fraction must lie in [0, 1], got {self.fraction}")
        if self.kind == "scale":
            if self.alpha is None:
                raise ValueError("scale needs alpha")
            object.__setattr__(self, "alpha", float(self.alpha))
            if not 0.0 <= self.alpha < float("inf"):
                raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")

    @property
    def id(self) -> str:
        """Stable string id, e.g. ``redistribute:system->text:Q4:f1.0``."""
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "redistribute":
            return f"redistribute:{self.target}:{self.layers}:f{self.fraction!r}"
        if self.kind == "scale":
            return f"scale:{self.target}:{self.layers}:a{self.alpha!r}"
        return f"knockout:{self.target}:{self.layers}"

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Inverse of `id`."""
        parts = text.split(":")
        try:
            if parts == ["baseline"]:
                return cls("baseline")
            if parts[0] == "redistribute" and len(parts) == 4 and parts[3].startswith("f"):
                return cls("redistribute", parts[1], parts[2], fraction=float(parts[3][1:]))
            if parts[0] == "scale" and len(parts) == 4 and parts[3].startswith("a"):
                return cls("scale", parts[1], parts[2], alpha=float(parts[3][1:]))
            if parts[0] == "knockout" and len(parts) == 3:
                return cls("knockout", parts[1], parts[2])
        except ValueError as err:
            raise ValueError(f"bad condition id {text!r}: {err}") from err
        raise ValueError(
            f"bad condition id {text!r}; expected 'baseline', "
            "'redistribute:SRC->DST:LAYERS:fF', 'scale:MOD:LAYERS:aA' or 'knockout:MOD:LAYERS'"
        )

    @property
    def source(self) -> str | None:
        return self.target.split("->")[0] if self.kind == "redistribute" else None

    @property
    def recipients(self) -> tuple[str, ...]:
        if self.kind != "redistribute":
            return ()
        return tuple(self.target.split("->", 1)[1].split("+"))

    @property
    def label(self) -> str:
        """Row label of the heatmap: the intervention without its layers."""
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "redistribute":
            return f"{self.target} f={self.fraction:g}"
        if self.kind == "scale":
            return f"{self.target}×{self.alpha:g}"
        return f"knockout {self.target}"

    def intervention(
        self, model: Any, mode: Mode = "proportional", rows: Rows = "answer"
    ) -> Intervention | None:
        """The condition's edit bound to `model` (None for the baseline); `mode` applies to
        redistributions, `rows` to every edit (see the module docstring)."""
        if self.kind == "baseline":
            return None
        if self.kind == "redistribute":
            recipients = list(self.recipients)
            return redistribute(
                self.source,
                recipients[0] if len(recipients) == 1 else recipients,
                self.layers,
                fraction=self.fraction,
                mode=mode,
                rows=rows,
                model=model,
            )
        if self.kind == "scale":
            return scale_modality(self.target, self.alpha, self.layers, rows=rows, model=model)
        return knockout(self.target, self.layers, rows=rows, model=model)

    def fwd_hooks(
        self, model: Any, mode: Mode = "proportional", rows: Rows = "answer"
    ) -> list[tuple[str, Any]]:
        """The condition's `(hook name, function)` pairs for `model` (none for the baseline)."""
        edit = self.intervention(model, mode, rows)
        return [] if edit is None else edit.fwd_hooks(model)


def sweep_conditions(
    sweep: Literal["quarters", "paper", "none"] = "quarters",
    fractions: Sequence[float] = FRACTIONS,
    directions: Sequence[str] = tuple(DIRECTIONS),
    quarters: Sequence[str] = QUARTERS,
    image_alpha: float | None = 2.0,
    knockout: bool = False,
) -> list[Condition]:
    """The conditions of a sweep, baseline first.

    - "quarters": every direction × quarter × fraction (dose-response), image ×`image_alpha`
      per quarter, and with `knockout` the system knockout per quarter.
    - "paper": the paper's arms: system->text / image / image+text in Q4 at fraction 1,
      image ×`image_alpha` in Q4 and in all layers (and system knockout in Q4).
    - "none": the baseline only.
    """
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown directions {unknown}; known: {list(DIRECTIONS)}")
    out = [Condition("baseline")]
    if sweep == "none":
        return out
    if sweep == "paper":
        for d in ("system->text", "system->image", "system->image+text"):
            out.append(Condition("redistribute", d, "Q4", fraction=1.0))
        if image_alpha is not None:
            out += [Condition("scale", "image", q, alpha=image_alpha) for q in ("Q4", "all")]
        if knockout:
            out.append(Condition("knockout", "system", "Q4"))
        return out
    if sweep != "quarters":
        raise ValueError(f"sweep must be 'quarters', 'paper' or 'none', got {sweep!r}")
    for d in directions:
        for q in quarters:
            for f in fractions:
                out.append(Condition("redistribute", d, q, fraction=float(f)))
    if image_alpha is not None:
        out += [Condition("scale", "image", q, alpha=image_alpha) for q in quarters]
    if knockout:
        out += [Condition("knockout", "system", q) for q in quarters]
    return out


UNTRAINED_NOTE = (
    "No model given and no trained organism available: this is a tiny UNTRAINED "
    "random-weight qwen3_vl zoo model. Its answers are noise; the run only shows that the "
    "pipeline works."
)


def default_model(cache_dir: str | os.PathLike | None = None) -> tuple[Any, str, str | None]:
    """`(model_or_path, name, note)`: the trained organism (`vlm_lens.zoo.organism()`) if it
    exists, else a tiny random-weight qwen3_vl zoo checkpoint with `UNTRAINED_NOTE`.

    `cache_dir`: where the tiny checkpoint is built (default `$VLM_LENS_CACHE/zoo`, or
    ~/.cache/vlm_lens/zoo).
    """
    return fallback.default_model(UNTRAINED_NOTE, cache_dir)


def model_tag(name_or_path: str | os.PathLike) -> str:
    """A directory-safe tag for a model: the hub id with "/" -> "__", or a local dir's name."""
    text = str(name_or_path).rstrip("/\\")
    path = Path(text)
    if path.exists():
        text = path.name
    return re.sub(r"[^A-Za-z0-9._+-]+", "__", text) or "model"


# ---------------------------------------------------------------------------------- items


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


def _write_items(run_dir: Path, items: Sequence[YesNoItem]) -> None:
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
#: run.json written before the key existed stands for (mode and rows came later).
SEMANTICS: dict[str, Any] = {
    "model": None,
    "benchmark": None,
    "max_new_tokens": None,
    "system": None,
    "mode": "proportional",
    "rows": "answer",
}


def _check_run(run_dir: Path, settings: dict[str, Any]) -> None:
    """Write run.json, refusing to resume a run made with settings that change the records
    (`SEMANTICS`, or a layer spec that now names other layers); conditions, layer specs and
    fractions of a resumed run accumulate."""
    harness.check_manifest(
        run_dir / RUN,
        settings,
        fixed=SEMANTICS,
        # A layer spec is part of the condition ids: it must still name the same layers.
        entries=("layers",),
        accumulate={
            "conditions": lambda old, new: list(dict.fromkeys((old or []) + new)),
            "fractions": lambda old, new: sorted(set(old or []) | set(new)),
        },
    )


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


# -------------------------------------------------------------------------------- running


def _record_key(row: Mapping[str, Any]) -> tuple[str, str]:
    return (row["condition"], row["item_id"])


def _size_group(item: YesNoItem) -> tuple | None:
    """Items batch together when their images have the same sizes (left padding is then the
    only difference between rows); unknown sizes (image files not opened yet) never do."""
    sizes = tuple(_image_size(src) for src in item.images)
    return None if None in sizes else sizes


def _image_size(src: Any) -> Any:
    size = getattr(src, "size", None)  # PIL image, or the synthetic renderer's side
    if isinstance(size, int):
        return (size, size)
    return size if isinstance(size, tuple) else None


def _prepare(model: Any, batch: Sequence[YesNoItem], system: str | None) -> Any:
    return model.prepare(
        images=[it.load_images() or None for it in batch],
        prompt=[it.prompt for it in batch],
        system=system,
    )


def _step_record(edit: Intervention | None, record_shares: bool) -> AttentionRecord | None:
    """What a condition records: the answer row's shares at every step (a few floats per
    layer; the step check needs every step), in every layer with `record_shares`, else in
    the condition's own hooked layers only (None if it has none)."""
    layers = None if record_shares else (edit.layer_indices() if edit is not None else [])
    if layers == []:
        return None
    return AttentionRecord(layers=layers, keep=("shares",), heads="mean")


def _check_recording(out: Any, where: str) -> None:
    """Every generated step was recorded, with finite shares (a softmax row's shares are
    never NaN: NaN means the recording read the wrong keys)."""
    require_decoding_steps(out.recording, out.n_steps, where)
    for step, shares in out.recording.shares.items():
        if not bool(torch.isfinite(shares).all()):
            raise EmptyMeasurementError(f"{where}: attention shares at step {step} are NaN")


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
    """Run every (condition, item) not yet in the log; return the log's path.

    Args:
        model: a `HookedVLM`.
        items: the benchmark's items (all of them: a shard picks its own units).
        conditions: from `sweep_conditions` (the baseline should be among them for the
            delta table).
        run_dir: where records.jsonl, items.jsonl and run.json go.
        model_name: recorded in run.json (a resumed run must use the same one).
        max_new_tokens: greedy tokens generated per item; the answer is the first word.
        system: "none" / None (no system message), "paper" (`PAPER_SYSTEM`) or the text
            of a system prompt, passed to `model.prepare` (see the module docstring).
        mode: "proportional" or "uniform" spreading of redistributed attention.
        rows: "answer" or "all": the query rows every condition edits.
        batch_size: items per forward (left-padded; only items whose images have the
            same sizes are batched). 1 is always correct.
        shard: `Shard(k, n)` or "K/N" (0-based K): the pairing units with index % N == K.
        record_shares: keep the per-layer attention shares of the answer row.
        progress: a tqdm bar.
        max_records: stop after writing this many new records (a time-boxed run; the
            rest is done by the next call).
        on_record: called with each row after it is written.
        note: a remark kept in run.json and shown in the report (e.g. "untrained model").

    run.json keeps the semantics (`SEMANTICS`: model, benchmark, max_new_tokens, system,
    mode, rows) and refuses a resume that changes them; also the system preset, the layers
    each layer spec resolved to, the fractions, and the first item's `prompt_layout`.

    Every generation of a condition with hooks is checked: its recording must hold every
    step it generated (`EmptyMeasurementError` if the hooks saw no decoding step) and
    finite shares. A condition's own hooked layers are recorded for that check even with
    `record_shares=False`; the baseline then has no hooks and nothing that depends on
    the step.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:  # before run.json is written (it would pin the folder to it)
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {ROWS}, got {rows!r}")
    preset, system_text = resolve_system(system)
    run_dir = Path(run_dir)
    items = list(items)
    if not items:
        raise ValueError("no items to run")
    if isinstance(shard, str):
        shard = Shard.parse(shard)
    ids = [c.id for c in conditions]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate conditions in the sweep")
    edits = {c.id: c.intervention(model, mode, rows) for c in conditions}
    benchmark = items[0].benchmark
    layout = prompt_layout(_prepare(model, items[:1], system_text))
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / (RECORDS if shard is None else shard.log_name(RECORDS))
    with runlog.log_lock(log_path):  # a second run of this log fails at once
        _check_run(
            run_dir,
            {
                "model": model_name,
                "benchmark": benchmark,
                "max_new_tokens": max_new_tokens,
                "system": system_text,
                "system_preset": preset,
                "mode": mode,
                "rows": rows,
                "layers": {
                    str(c.layers): edits[c.id].layer_indices() for c in conditions if edits[c.id]
                },
                "fractions": sorted({c.fraction for c in conditions if c.fraction is not None}),
                "conditions": ids,
                "n_items": len(items),
                "note": note,
                "layout": layout,
            },
        )
        _write_items(run_dir, items)

        units = list(dict.fromkeys(it.unit_id for it in items))
        if shard is not None:
            owned = {u for i, u in enumerate(units) if shard.owns(i)}
            items = [it for it in items if it.unit_id in owned]
        yes_ids, no_ids = yes_no_token_ids(model.processor)
        hooks = {
            c.id: [] if edits[c.id] is None else edits[c.id].fwd_hooks(model) for c in conditions
        }
        records = {c.id: _step_record(edits[c.id], record_shares) for c in conditions}
        written = 0
        with SampleLog(log_path, key=_record_key) as log:
            # Records in the run's other logs (an earlier unsharded or differently sharded
            # attempt) count as done too: `merge_records` folds them in.
            for other in [run_dir / RECORDS, *_shard_logs(run_dir)]:
                if other != log_path:
                    log.done.update(_record_key(r) for r in read_jsonl(other))
            todo = sum(not log.has((c.id, it.item_id)) for c in conditions for it in items)
            bar = _progress(todo, progress, f"{benchmark} {len(conditions)} conditions")
            try:
                for batch in harness.batches(items, batch_size, _size_group):
                    pending = [
                        c
                        for c in conditions
                        if any(not log.has((c.id, it.item_id)) for it in batch)
                    ]
                    if not pending:
                        continue
                    inputs = _prepare(model, batch, system_text)
                    for cond in pending:
                        record = records[cond.id]
                        out = model.generate(
                            inputs,
                            max_new_tokens=max_new_tokens,
                            fwd_hooks=hooks[cond.id],
                            record=record,
                        )
                        if record is not None:
                            _check_recording(out, f"yes-bias study, condition {cond.id}")
                        scores = yes_no_score(out.logits[0], yes_ids, no_ids)
                        shares = None
                        if record_shares:
                            # [batch, layer, 1 head (mean), 1 query, 4 kinds] -> [batch, layer, 4]
                            shares = out.recording.shares[0][:, :, 0, 0, :]
                        for b, item in enumerate(batch):
                            if log.has((cond.id, item.item_id)):
                                continue
                            row = {
                                "condition": cond.id,
                                "item_id": item.item_id,
                                "unit_id": item.unit_id,
                                "label": bool(item.label),
                                "text": out.texts[b],
                                "answer": parse_yes_no(out.texts[b]),
                                "score": float(scores[b]),
                            }
                            if shares is not None:
                                row["shares"] = np.round(
                                    shares[b].numpy().astype(float), 6
                                ).tolist()
                            log.append(row)
                            written += 1
                            bar.update(1)
                            if on_record is not None:
                                on_record(row)
                            if max_records is not None and written >= max_records:
                                return log_path
            finally:
                bar.close()
        return log_path


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run")


# ---------------------------------------------------------------------------- records I/O


def _shard_logs(run_dir: Path) -> list[Path]:
    return runlog.shard_files(run_dir, RECORDS)


def merge_records(run_dir: str | Path, *, remove_shards: bool = False) -> dict[str, Any]:
    """Fold the shard logs of `run_dir` into records.jsonl (deduplicated by (condition, item)).

    Rows are written in (condition order of run.json, item order of items.jsonl) order, so
    a merged sharded run and an unsharded run give the same file. Returns
    `{"rows", "duplicates", "missing", "complete"}` (missing: expected (condition, item)
    pairs not in any log).
    """
    run_dir = Path(run_dir)
    with runlog.run_lock(run_dir):
        return _merge_records(run_dir, remove_shards)


def _merge_records(run_dir: Path, remove_shards: bool) -> dict[str, Any]:
    conditions = json.loads((run_dir / RUN).read_text(encoding="utf-8"))["conditions"]
    item_ids = [it.item_id for it in load_items(run_dir)]
    c_rank = {c: i for i, c in enumerate(conditions)}
    i_rank = {i: n for n, i in enumerate(item_ids)}
    result = runlog.merge(
        run_dir,
        _record_key,
        expected=[(c, i) for c in conditions for i in item_ids],
        sort_key=lambda r: (
            c_rank.get(r["condition"], len(c_rank)),
            r["condition"],
            i_rank.get(r["item_id"], len(i_rank)),
        ),
        log=RECORDS,
        remove_shards=remove_shards,
    )
    result.pop("sources")
    return result


def load_records(run_dir: str | Path) -> list[dict]:
    """All records of a run: records.jsonl plus any shard log not merged yet (deduplicated)."""
    run_dir = Path(run_dir)
    rows = [
        row
        for source in [run_dir / RECORDS] + _shard_logs(run_dir)
        for row in runlog.unique(read_jsonl(source), _record_key, str(source))
    ]
    return runlog.unique(rows, _record_key, str(run_dir), copies_ok=True)


def _by_condition(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Mapping]]:
    out: dict[str, dict[str, Mapping]] = {}
    for r in records:
        out.setdefault(r["condition"], {})[r["item_id"]] = r
    return out


# -------------------------------------------------------------------------------- metrics


def condition_metrics(
    items: Sequence[YesNoItem],
    records: Iterable[Mapping[str, Any]],
    *,
    benchmark: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """`evaluate(...)` per condition, over the items that condition has records for."""
    benchmark = benchmark or items[0].benchmark
    out = {}
    for cond, rows in _by_condition(records).items():
        done = [it for it in items if it.item_id in rows]
        if not done:
            continue
        out[cond] = evaluate(
            benchmark,
            done,
            {i: r["text"] for i, r in rows.items()},
            scores={i: r["score"] for i, r in rows.items()},
            n_boot=n_boot,
            seed=seed,
        )
    return out


def paired_delta(
    unit: Sequence[Any],
    baseline: Mapping[str, np.ndarray],
    condition: Mapping[str, np.ndarray],
    *,
    label: Sequence[bool] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Differences condition - baseline with a paired bootstrap over pairing units.

    `unit[i]` is item i's pairing unit; `baseline` / `condition` map "correct", "yes"
    (bool per item) and "score" (float per item) for the same items. Paired accuracy is
    the share of units whose every item is right. Each resample draws units with
    replacement once and evaluates both arms on it, so the interval is that of the
    difference, not of two independent estimates. Returns `d_<metric>`, `d_<metric>_lo`,
    `d_<metric>_hi` for paired_accuracy, accuracy, yes_rate and mean_score; with the
    items' `label` also for score_paired_accuracy (share of units holding both labels
    whose every yes item scores above every no item: the answer-free reading).
    """
    codes: dict[Any, int] = {}
    u = np.array([codes.setdefault(x, len(codes)) for x in unit], dtype=np.int64)
    n_units = len(codes)

    def per_unit(values: np.ndarray) -> np.ndarray:
        return np.bincount(u, weights=np.asarray(values, dtype=np.float64), minlength=n_units)

    n_items = per_unit(np.ones(len(u)))
    cols = {"items": n_items, "units": np.ones(n_units)}
    for arm, data in (("b", baseline), ("c", condition)):
        correct = per_unit(data["correct"])
        cols[f"correct_{arm}"] = correct
        cols[f"all_{arm}"] = (correct == n_items).astype(np.float64)
        cols[f"yes_{arm}"] = per_unit(data["yes"])
        cols[f"score_{arm}"] = per_unit(data["score"])
    if label is not None:
        lab = np.asarray(label, dtype=bool)
        mixed = (per_unit(lab) > 0) & (per_unit(~lab) > 0)
        cols["mixed"] = mixed.astype(np.float64)
        for arm, data in (("b", baseline), ("c", condition)):
            score = np.asarray(data["score"], dtype=np.float64)
            lo = np.full(n_units, np.inf)
            hi = np.full(n_units, -np.inf)
            np.minimum.at(lo, u[lab], score[lab])
            np.maximum.at(hi, u[~lab], score[~lab])
            cols[f"ranked_{arm}"] = (mixed & (lo > hi)).astype(np.float64)
    names = list(cols)
    table = np.column_stack([cols[n] for n in names])
    col = {n: i for i, n in enumerate(names)}

    def deltas(sums: np.ndarray) -> dict[str, np.ndarray]:
        s = {n: sums[..., col[n]] for n in names}
        out = {
            "paired_accuracy": (s["all_c"] - s["all_b"]) / s["units"],
            "accuracy": (s["correct_c"] - s["correct_b"]) / s["items"],
            "yes_rate": (s["yes_c"] - s["yes_b"]) / s["items"],
            "mean_score": (s["score_c"] - s["score_b"]) / s["items"],
        }
        if "mixed" in s:
            with np.errstate(invalid="ignore", divide="ignore"):
                out["score_paired_accuracy"] = (s["ranked_c"] - s["ranked_b"]) / s["mixed"]
        return out

    point = deltas(table.sum(0))
    boot = deltas(bootstrap_unit_sums(table, n_boot, seed)) if n_boot > 0 else {}
    out: dict[str, float] = {}
    for name, value in point.items():
        lo, hi = percentile_interval(boot[name]) if boot else (math.nan, math.nan)
        out[f"d_{name}"] = float(value)
        out[f"d_{name}_lo"] = lo
        out[f"d_{name}_hi"] = hi
    return out


def _arm(rows: Mapping[str, Mapping], items: Sequence[YesNoItem]) -> dict[str, np.ndarray]:
    answers = [rows[it.item_id]["answer"] for it in items]
    labels = np.array([it.label for it in items])
    yes = np.array([a == "yes" for a in answers])
    no = np.array([a == "no" for a in answers])
    return {
        "correct": (yes & labels) | (no & ~labels),
        "yes": yes,
        "score": np.array([rows[it.item_id]["score"] for it in items], dtype=np.float64),
    }


TABLE_COLUMNS = (
    "benchmark",
    "model",
    "condition",
    "kind",
    "target",
    "source",
    "recipients",
    "layers",
    "fraction",
    "alpha",
    "n_items",
    "n_units",
    "paired_accuracy",
    "accuracy",
    "yes_rate",
    "other_rate",
    "mean_score",
    "baseline_paired_accuracy",
    "baseline_yes_rate",
    "d_paired_accuracy",
    "d_paired_accuracy_lo",
    "d_paired_accuracy_hi",
    "d_accuracy",
    "d_accuracy_lo",
    "d_accuracy_hi",
    "d_yes_rate",
    "d_yes_rate_lo",
    "d_yes_rate_hi",
    "d_mean_score",
    "d_mean_score_lo",
    "d_mean_score_hi",
    "d_score_paired_accuracy",
    "d_score_paired_accuracy_lo",
    "d_score_paired_accuracy_hi",
)


def delta_table(
    items: Sequence[YesNoItem],
    records: Iterable[Mapping[str, Any]],
    *,
    baseline: str = "baseline",
    model: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One tidy row per condition (baseline included, with zero deltas): its rates and its
    paired-bootstrap differences to the baseline over the items both have records for.

    Columns: `TABLE_COLUMNS`. Rates are fractions; "other" answers count as wrong.
    """
    by_cond = _by_condition(records)
    if baseline not in by_cond:
        raise ValueError(f"no records of the baseline condition {baseline!r}")
    base_rows = by_cond[baseline]
    order = sorted(by_cond, key=lambda c: (c != baseline,))  # baseline first, else as logged
    out = []
    for cond_id in order:
        rows = by_cond[cond_id]
        common = [it for it in items if it.item_id in rows and it.item_id in base_rows]
        if not common:
            continue
        cond = Condition.parse(cond_id)
        b, c = _arm(base_rows, common), _arm(rows, common)
        unit = [it.unit_id for it in common]
        labels = [it.label for it in common]
        delta = paired_delta(unit, b, c, label=labels, n_boot=n_boot, seed=seed)
        answers = [rows[it.item_id]["answer"] for it in common]
        units = list(dict.fromkeys(unit))
        unit_all = {x: True for x in units}
        for it, ok in zip(common, c["correct"]):
            unit_all[it.unit_id] &= bool(ok)
        base_all = {x: True for x in units}
        for it, ok in zip(common, b["correct"]):
            base_all[it.unit_id] &= bool(ok)
        out.append(
            {
                "benchmark": common[0].benchmark,
                "model": model,
                "condition": cond_id,
                "kind": cond.kind,
                "target": cond.target,
                "source": cond.source,
                "recipients": "+".join(cond.recipients) or None,
                "layers": cond.layers,
                "fraction": cond.fraction,
                "alpha": cond.alpha,
                "n_items": len(common),
                "n_units": len(units),
                "paired_accuracy": float(np.mean(list(unit_all.values()))),
                "accuracy": float(np.mean(c["correct"])),
                "yes_rate": float(np.mean(c["yes"])),
                "other_rate": float(np.mean([a == "other" for a in answers])),
                "mean_score": float(np.mean(c["score"])),
                "baseline_paired_accuracy": float(np.mean(list(base_all.values()))),
                "baseline_yes_rate": float(np.mean(b["yes"])),
                **delta,
            }
        )
    return out


def write_table(rows: Sequence[Mapping[str, Any]], path_stem: str | Path) -> tuple[Path, Path]:
    """Write the table as `<stem>.csv` and `<stem>.json`; returns both paths."""
    stem = Path(path_stem)
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    columns = list(TABLE_COLUMNS) + [k for r in rows for k in r if k not in TABLE_COLUMNS]
    runlog.write_csv(csv_path, rows, list(dict.fromkeys(columns)))
    write_json_atomic(json_path, list(rows))
    return csv_path, json_path


def layer_shares(
    records: Iterable[Mapping[str, Any]], condition: str = "baseline"
) -> np.ndarray | None:
    """Mean attention share of the answer row per layer, `[layer, 4]` over
    (system, image, text, generated), averaged over heads and items; None if not recorded.
    Shares recorded but all NaN raise `EmptyMeasurementError`."""
    stacks = [r["shares"] for r in records if r["condition"] == condition and r.get("shares")]
    if not stacks:
        return None
    require_finite(stacks, f"attention shares of {condition!r}", "nothing was measured")
    return np.asarray(stacks, dtype=np.float64).mean(0)


# -------------------------------------------------------------------------------- analysis


def analyze(
    run_dir: str | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics, the delta table (table.csv / table.json) and metrics.json of a run.

    Shard logs not merged yet are read too (use `merge_records` to fold them). Returns
    `{"items", "records", "metrics", "table", "shares", "paths"}`. A run without records
    raises `EmptyMeasurementError` and writes nothing.
    """
    run_dir = Path(run_dir)
    with runlog.run_lock(run_dir):
        return _analyze(run_dir, n_boot, seed)


def _analyze(run_dir: Path, n_boot: int, seed: int) -> dict[str, Any]:
    settings = json.loads((run_dir / RUN).read_text(encoding="utf-8"))
    items = load_items(run_dir)
    records = load_records(run_dir)
    if not records:
        raise EmptyMeasurementError(f"{run_dir}: no records to analyse (the sweep wrote none)")
    metrics = condition_metrics(items, records, n_boot=n_boot, seed=seed)
    try:
        table = delta_table(items, records, model=settings.get("model"), n_boot=n_boot, seed=seed)
    except ValueError:  # no baseline records (yet): metrics per condition only
        table = []
    shares = layer_shares(records)
    paths = dict(zip(("table_csv", "table_json"), write_table(table, run_dir / "table")))
    paths["metrics"] = run_dir / "metrics.json"
    write_json_atomic(paths["metrics"], metrics)
    result = {
        "settings": settings,
        "items": items,
        "records": records,
        "metrics": metrics,
        "table": table,
        "shares": shares,
        "paths": paths,
    }
    return result
