"""The yes-bias study: attention redistribution between modalities as patching experiments.

Implements shared/papers/yes-bias-system-attention.md on any supported architecture, as a
pipeline of plain functions a notebook can enter at any stage::

    conditions = sweep_conditions("quarters", fractions=(0.5, 1.0))   # what to run
    log = run_sweep(model, items, conditions, harness.run_dir(out, name, "synthetic"))  # records.jsonl
    result = analyze(run_dir)              # metrics per condition, delta table

The figures and the HTML report: `vlm_lens.reports.yesbias` (`report_run(run_dir)`, or
`harness.report(STUDY, out)` for every run under `out`).

Modules: `conditions` (the arms), `config` (`SweepConfig`), `records` (`Record`, items,
layout), `measure` (the harness's units and one batch's records), `summarize` (metrics,
delta table, `analyze`), `study` (`STUDY`, `run_sweep`, `merge`, `default_model`).

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
   truncated last line. `merge` folds the shard logs into ``records.jsonl``.
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

from vlm_lens.studies.yesbias.conditions import Condition, resolve_system, sweep_conditions
from vlm_lens.studies.yesbias.config import SEMANTICS, SweepConfig
from vlm_lens.studies.yesbias.records import (
    Record,
    load_items,
    load_records,
    prompt_layout,
    record_key,
)
from vlm_lens.studies.yesbias.study import (
    STUDY,
    UNTRAINED_NOTE,
    default_model,
    merge,
    run_sweep,
)
from vlm_lens.studies.yesbias.summarize import (
    TABLE_COLUMNS,
    analyze,
    condition_metrics,
    delta_table,
    layer_shares,
    paired_delta,
)
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
    "ITEMS",
    "MODES",
    "PAPER_SYSTEM",
    "QUARTERS",
    "RECORDS",
    "ROWS",
    "RUN",
    "SEMANTICS",
    "STUDY",
    "SYSTEM_PRESETS",
    "TABLE_COLUMNS",
    "UNTRAINED_NOTE",
    "Condition",
    "Record",
    "SweepConfig",
    "analyze",
    "condition_metrics",
    "default_model",
    "delta_table",
    "layer_shares",
    "load_items",
    "load_records",
    "merge",
    "paired_delta",
    "prompt_layout",
    "record_key",
    "resolve_system",
    "run_sweep",
    "sweep_conditions",
]
