"""The counting study: Halo Effect and Language Takeover (shared/papers/counting-halo-language-takeover.md).

A pipeline of plain functions, so a notebook can enter at any stage::

    configs  = conditions(CountingConfig(n=256), cot=True, three_digit=True)
    samples  = configs[0].dataset()                          # dataset (vlm_lens.data.dots)
    row      = count_sample(model, samples[0], configs[0])   # one record: answer + metrics
    rows     = count_samples(model, samples[:8], configs[0])  # the same, one batch
    out      = run_counting(model, configs, "runs/", model_name="qwen3-vl-2b")  # JSONL log
    rows     = load_records(out)                             # records
    summary  = summarize(rows)                               # accuracy, MBE, MAE, drops
    write_tables("runs/")                                    # summary.json/csv, samples/attention.csv

The figures and the HTML report: `harness.report(STUDY, "runs/")`
(`vlm_lens.reports.counting.write_outputs`).

Modules: `config` (`CountingConfig`, `Regrounding`, `conditions`), `answers` (digit
steps), `metrics` (one row's attention metrics), `measure` (a batch -> `Record`s, and
re-grounding), `records` (`Record`), `summarize`, `tables` (flat tables, `write_tables`),
`study` (`STUDY`, `run_counting`, `merge`, `default_model`).

What one record holds (one JSON line of `<out>/<model>/samples.jsonl`): the answer
(`text`, `prediction` = first integer of the text, or the last one for the
chain-of-thought variant, in ASCII digits only; None if there is none; `correct`, `error` = prediction - count)
and, for every generated step that produced a digit of that integer and every chosen
layer, the attention of the query row that PREDICTS that digit to the image tokens:

- Eq. 1: the heads' softmax rows restricted to the image keys and averaged over heads,
  then renormalised over the image tokens (`image_mass` is the share before
  renormalising);
- `gini` (the paper's Eq. 2, as printed: uniform gives -1/M), `textbook_gini`,
  `entropy` (Eq. 3);
- Halo metrics (`centre`, `hull_band`, `background` shares and `centroid_hit_rate`, see
  `vlm_lens.metrics.attention`), with the regions' area shares in `area` as the
  uniform-attention baseline;
- per head: `head_gini`, `head_entropy`, `head_image_mass`;
- for the first `example_maps` samples, the renormalised map itself (`map`, row-major
  over the `grid`) for the heatmap figure.

Step convention: step 0 is the prefill; its last row predicts generated token 0. So
"digit step k" is the step whose last query row predicted the k-th digit, the same
index as `GenerationResult.logits` and `Recording.image`.

Causal tests the paper did not run (its Limitations), reported beside the baseline:

- re-grounding (`Regrounding`): at the steps that predict the 2nd and later digits, in
  chosen layers, replace each head's image attention by its distribution at the first
  digit's step (keeping the row's current image mass, or restoring the step-1 mass too),
  or scale the image share by alpha and renormalise; the record gets the re-grounded
  answer so accuracy and MBE can be compared on the same samples;
- `cot`: a prompt asking to count step by step; the answer is the LAST integer;
- `three_digit`: counts in [100, 130] with smaller dots.

Empty measurements stop the study (`vlm_lens.studies.EmptyMeasurementError`) instead of
becoming empty cells: a generation whose hooks saw no decoding step, an all-NaN image map,
or a condition whose attention metrics are all missing.

Not for: the dataset itself (`vlm_lens.data.dots`), the metric definitions
(`vlm_lens.metrics`), plotting (`vlm_lens.reports`) or argument parsing (`vlm_lens.cli.count`).
"""

from vlm_lens.data.count_prompt import answer_span, parse_count
from vlm_lens.studies.counting.answers import digit_steps
from vlm_lens.studies.counting.claims import claims_summary, claims_text
from vlm_lens.studies.counting.config import (
    CONTROL_CONDITION,
    COT_PROMPT,
    PAPER_LAYERS,
    PROMPT,
    CountingConfig,
    Regrounding,
    conditions,
    study_layers,
)
from vlm_lens.studies.counting.measure import count_sample, count_samples, reground
from vlm_lens.studies.counting.metrics import digit_step_metrics, recording_metrics
from vlm_lens.studies.counting.records import Record, load_records
from vlm_lens.studies.counting.study import (
    STUDY,
    UNTRAINED_NOTE,
    default_model,
    merge,
    run_counting,
)
from vlm_lens.studies.counting.summarize import STEP_METRICS, summarize
from vlm_lens.studies.counting.tables import (
    ATTENTION_COLUMNS,
    SAMPLE_COLUMNS,
    SUMMARY_COLUMNS,
    attention_table,
    sample_table,
    summary_table,
    write_tables,
)
from vlm_lens.studies.harness import model_slug

__all__ = [
    "CONTROL_CONDITION",
    "claims_summary",
    "claims_text",
    "ATTENTION_COLUMNS",
    "COT_PROMPT",
    "PAPER_LAYERS",
    "PROMPT",
    "SAMPLE_COLUMNS",
    "STEP_METRICS",
    "STUDY",
    "SUMMARY_COLUMNS",
    "UNTRAINED_NOTE",
    "CountingConfig",
    "Record",
    "Regrounding",
    "answer_span",
    "attention_table",
    "conditions",
    "count_sample",
    "count_samples",
    "default_model",
    "digit_step_metrics",
    "digit_steps",
    "load_records",
    "merge",
    "model_slug",
    "parse_count",
    "recording_metrics",
    "reground",
    "run_counting",
    "sample_table",
    "study_layers",
    "summarize",
    "summary_table",
    "write_tables",
]
