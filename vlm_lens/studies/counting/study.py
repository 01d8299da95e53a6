"""The counting study as the harness runs it: `STUDY`, `run_counting`, `merge`,
`default_model`.

Not for: what a record holds (`vlm_lens.studies.counting.records`), how it is measured
(`vlm_lens.studies.counting.measure`) or summarised (`vlm_lens.studies.counting.summarize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm_lens.data import dots
from vlm_lens.studies import fallback, harness, runlog
from vlm_lens.studies.counting import measure
from vlm_lens.studies.counting.config import CountingConfig
from vlm_lens.studies.counting.records import Record
from vlm_lens.studies.counting.summarize import summarize

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM

__all__ = ["STUDY", "UNTRAINED_NOTE", "default_model", "merge", "run_counting"]


def _measure(
    model: HookedVLM, samples: Sequence[dots.DotsSample], config: CountingConfig, **kwargs: Any
) -> list[Record]:
    return measure.count_samples(model, samples, config, **kwargs)  # looked up at call time


STUDY = harness.Study(
    name="count",
    config=CountingConfig,
    measure=_measure,
    summarize=summarize,
    report="vlm_lens.reports.counting:write_outputs",
)

#: Merge the shard logs of every model under a folder (`harness.merge`).
merge = partial(harness.merge, STUDY)


def run_counting(
    model: HookedVLM,
    configs: CountingConfig | Sequence[CountingConfig],
    out_dir: str | Path,
    *,
    model_name: str,
    shard: runlog.Shard | None = None,
    progress: bool = True,
    generate_kwargs: dict[str, Any] | None = None,
    note: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 1,
) -> Path:
    """Run every condition on `model`, appending one JSON line per sample as it goes.

    `vlm_lens.studies.harness.run` with this study: writes
    `<out_dir>/<model_slug>/samples.jsonl` (or the shard's file) and `run.json`.
    Samples already in the log are skipped, so calling it again after a stop resumes.
    `max_samples` stops after that many new samples (a run in chunks; resume continues).
    `note` (e.g. "untrained model") is kept in `run.json` and shown in the report.
    `batch_size` images of a condition run as one batch (`count_samples`); a stop loses at
    most the batch in flight.
    Returns the model's directory.
    """
    return harness.run(
        STUDY,
        model,
        configs,
        harness.run_dir(out_dir, model_name),
        model_name=model_name,
        shard=shard,
        progress=progress,
        note=note,
        max_samples=max_samples,
        batch_size=batch_size,
        measure_kwargs={"generate_kwargs": generate_kwargs},
    )


UNTRAINED_NOTE = (
    "note: no model given and the trained counting organism is not available; using a "
    "tiny RANDOM-WEIGHT qwen3_vl zoo model with answers constrained to digits. Its numbers "
    "show that the pipeline runs, not how any real model counts."
)

#: `(model_or_path, name, note)` for a run that names no model (`fallback.default_model`);
#: with a note (the stand-in model) set `digits_only=True`.
default_model = partial(fallback.default_model, UNTRAINED_NOTE, organism="counting organism")
