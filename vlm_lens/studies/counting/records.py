"""What one counting sample records: `Record`, one line of `<out>/<model>/samples.jsonl`.

Not for: making records (`vlm_lens.studies.counting.measure`) or summarising them
(`vlm_lens.studies.counting.summarize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from vlm_lens.studies import harness

__all__ = ["Record", "load_records"]


@dataclass(frozen=True)
class Record:
    """One image's answer and the attention at its digit steps (written in field order,
    after the harness's `model`).

    Attributes:
        condition, index, count: the condition, the sample's index and its true count.
        text, tokens: the generated answer, and its tokens up to the first EOS.
        prediction: the answer's integer (first, or last for chain of thought); None if none.
        correct: prediction == count; error: prediction - count (None without a prediction).
        digit_steps, digits: the step that produced each digit string of the answer.
        layers: the layers measured; grid: the image's token grid; image_size: in pixels.
        area: each Halo region's share of the grid (the uniform-attention baseline).
        attention: one entry per (digit step, layer): `metrics.digit_step_metrics` plus
            `digit`, `step`, `token`, `layer`.
        regrounding: the re-grounded answer (`mode`, `layers`, `steps`, `text`,
            `prediction`, `correct`, `error`), or None.
        centres: the dots' centres, for the samples whose maps are kept (every sample under
            `controls`, else the first `example_maps`; not written otherwise).
    """

    condition: str
    index: int
    count: int
    text: str
    tokens: list[int]
    prediction: int | None
    correct: bool
    error: int | None
    digit_steps: list[int]
    digits: list[str]
    layers: list[int]
    grid: list[int]
    image_size: list[int]
    area: dict[str, float]
    attention: list[dict[str, Any]]
    regrounding: dict[str, Any] | None = None
    centres: list[list[float]] | None = None
    #: Written only when set (`harness` leaves them out of the log line while None).
    optional: ClassVar[tuple[str, ...]] = ("centres",)


#: Records of a model directory (its samples.jsonl) or of one log file, each once.
load_records = partial(harness.load_records)
