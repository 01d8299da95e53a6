"""The yes-bias sweep's measurement: its units (item, condition) for the study harness, and
one batch of items under one condition -> one `Record` each.

Every (condition, item) is one greedy generation of a few tokens (the answer is the first
word) scored by log P(yes) - log P(no) at the first answer step (`yes_no_score` on
`GenerationResult.logits[0]`), with the per-layer attention shares of the answer row
after the condition's edit. Units are laid out item batch by item batch (items whose
images have the same sizes), every condition within a batch, so a batch's prepared inputs
serve all its conditions; a shard takes the pairing units with `index % N == K`.

Not for: the conditions (`vlm_lens.studies.yesbias.conditions`), resume, shards and logs
(`vlm_lens.studies.harness`) or the metrics (`vlm_lens.studies.yesbias.summarize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlm_lens.core.recording import AttentionRecord
from vlm_lens.data.yesno.items import YesNoItem, parse_yes_no, yes_no_score, yes_no_token_ids
from vlm_lens.interventions import Intervention
from vlm_lens.studies import harness
from vlm_lens.studies.checks import EmptyMeasurementError, require_decoding_steps
from vlm_lens.studies.runlog import Shard
from vlm_lens.studies.yesbias.conditions import Condition
from vlm_lens.studies.yesbias.config import SweepConfig
from vlm_lens.studies.yesbias.records import Record, prompt_layout, write_items

__all__ = ["measure", "plan"]


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


@dataclass
class _Context:
    """What every batch of one run shares: each condition's edit, hooks and recording, the
    yes / no token ids, and the last batch's prepared inputs (its conditions reuse them)."""

    model: Any
    config: SweepConfig
    edits: dict[str, Intervention | None]
    hooks: dict[str, list] = field(init=False)
    records: dict[str, AttentionRecord | None] = field(init=False)
    yes_no: tuple[list[int], list[int]] = field(init=False)
    prepared: tuple[tuple[str, ...], Any] | None = None

    def __post_init__(self) -> None:
        model, config = self.model, self.config
        self.hooks = {
            cid: [] if edit is None else edit.fwd_hooks(model) for cid, edit in self.edits.items()
        }
        self.records = {
            cid: _step_record(edit, config.record_shares) for cid, edit in self.edits.items()
        }
        self.yes_no = yes_no_token_ids(model.processor)

    def inputs(self, items: Sequence[YesNoItem]) -> Any:
        ids = tuple(it.item_id for it in items)
        if self.prepared is None or self.prepared[0] != ids:
            self.prepared = (ids, _prepare(self.model, items, self.config.system_text))
        return self.prepared[1]


def _edits(model: Any, config: SweepConfig) -> dict[str, Intervention | None]:
    return {c.id: c.intervention(model, config.mode, config.rows) for c in config.conditions}


def _measure(ctx: _Context, items: Sequence[YesNoItem], cond: Condition) -> list[Record]:
    inputs = ctx.inputs(items)
    record = ctx.records[cond.id]
    out = ctx.model.generate(
        inputs,
        max_new_tokens=ctx.config.max_new_tokens,
        fwd_hooks=ctx.hooks[cond.id],
        record=record,
    )
    if record is not None:
        _check_recording(out, f"yes-bias study, condition {cond.id}")
    scores = yes_no_score(out.logits[0], *ctx.yes_no)
    shares = None
    if ctx.config.record_shares:
        # [batch, layer, 1 head (mean), 1 query, 4 kinds] -> [batch, layer, 4]
        shares = out.recording.shares[0][:, :, 0, 0, :]
    return [
        Record(
            condition=cond.id,
            item_id=item.item_id,
            unit_id=item.unit_id,
            label=bool(item.label),
            text=out.texts[b],
            answer=parse_yes_no(out.texts[b]),
            score=float(scores[b]),
            shares=None
            if shares is None
            else np.round(shares[b].numpy().astype(float), 6).tolist(),
        )
        for b, item in enumerate(items)
    ]


def measure(
    model: Any, batch: Sequence[tuple[Condition, YesNoItem]], config: SweepConfig
) -> list[Record]:
    """The records of `batch`, (condition, item) pairs of one condition whose items batch
    together (same image sizes), in order."""
    cond = batch[0][0]
    if any(c != cond for c, _ in batch):
        raise ValueError("a batch holds one condition")
    ctx = _Context(model, config, {cond.id: cond.intervention(model, config.mode, config.rows)})
    return _measure(ctx, [item for _, item in batch], cond)


def _manifest(
    model: Any,
    config: SweepConfig,
    edits: dict[str, Intervention | None],
    model_name: str | None,
    note: str | None,
) -> dict[str, Any]:
    """run.json: the semantics (`SEMANTICS`), the system preset, the layers each layer spec
    resolved to, the fractions, the conditions and the first item's `prompt_layout`."""
    conditions = config.conditions
    return {
        "model": model_name,
        "benchmark": config.benchmark,
        "max_new_tokens": config.max_new_tokens,
        "system": config.system_text,
        "system_preset": config.system_preset,
        "mode": config.mode,
        "rows": config.rows,
        "layers": {str(c.layers): edits[c.id].layer_indices() for c in conditions if edits[c.id]},
        "fractions": sorted({c.fraction for c in conditions if c.fraction is not None}),
        "conditions": [c.id for c in conditions],
        "n_items": len(config.items),
        "note": note,
        "layout": prompt_layout(_prepare(model, config.items[:1], config.system_text)),
    }


def plan(
    study: harness.Study,
    model: Any,
    config: SweepConfig,
    *,
    model_name: str | None,
    note: str | None = None,
    shard: Shard | None = None,
    batch_size: int = 1,
    **_: Any,
) -> harness.Plan:
    """The sweep as units (condition, item) for `harness.run`: item batch by item batch, every
    condition within a batch (the shard index is the item's pairing unit's)."""
    edits = _edits(model, config)
    unit_ids = list(dict.fromkeys(it.unit_id for it in config.items))
    unit_index = {u: i for i, u in enumerate(unit_ids)}
    owned = [it for it in config.items if shard is None or shard.owns(unit_index[it.unit_id])]
    units = [
        harness.Unit((c.id, it.item_id), unit_index[it.unit_id], (n, c.id), (c, it))
        for n, batch in enumerate(harness.batches(owned, batch_size, _size_group))
        for c in config.conditions
        for it in batch
    ]
    ctx = _Context(model, config, edits)

    def measure_batch(model: Any, batch: list[tuple[Condition, YesNoItem]]) -> list[Record]:
        return _measure(ctx, [item for _, item in batch], batch[0][0])

    return harness.Plan(
        _manifest(model, config, edits, model_name, note),
        units,
        measure_batch,
        setup=lambda run_dir: write_items(run_dir, config.items),
    )
