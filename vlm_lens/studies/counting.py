"""The counting study: Halo Effect and Language Takeover (shared/papers/counting-halo-language-takeover.md).

A pipeline of plain functions, so a notebook can enter at any stage::

    configs  = conditions(CountingConfig(n=256), cot=True, three_digit=True)
    samples  = configs[0].dataset()                          # dataset (vlm_lens.data.dots)
    row      = count_sample(model, samples[0], configs[0])   # one record: answer + metrics
    rows     = count_samples(model, samples[:8], configs[0])  # the same, one batch
    out      = run_counting(model, configs, "runs/", model_name="qwen3-vl-2b")  # JSONL log
    rows     = load_samples(out)                             # records
    summary  = summarize(rows)                               # accuracy, MBE, MAE, drops
    write_tables("runs/")                                    # summary.json/csv, samples/attention.csv

The figures and the HTML report: `vlm_lens.reports.counting.write_outputs("runs/")`.

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

from __future__ import annotations

import bisect
import contextlib
import json
import math
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens.core.generation import AttentionRecord, GenerationResult, Recording
from vlm_lens.core.layers import resolve_layers
from vlm_lens.core.segments import Segments
from vlm_lens.data import dots
from vlm_lens.data.count_prompt import COT_COUNT_PROMPT, COUNT_PROMPT, answer_span, parse_count
from vlm_lens.interventions import restore_image, scale_image
from vlm_lens.metrics.attention import (
    centroid_hit_rate,
    gini_sparsity,
    halo_masks,
    halo_shares,
    normalized_entropy,
    textbook_gini,
)
from vlm_lens.studies import fallback, harness, runlog
from vlm_lens.studies.checks import (
    STEP_TRACKING_HINT,
    EmptyMeasurementError,
    require_decoding_steps,
    require_finite,
)
from vlm_lens.studies.stats import wilcoxon_signed_rank

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM
    from vlm_lens.core.prepare import VLMInputs

__all__ = [
    "COT_PROMPT",
    "PAPER_LAYERS",
    "PROMPT",
    "CountingConfig",
    "Regrounding",
    "answer_span",
    "attention_table",
    "conditions",
    "count_sample",
    "count_samples",
    "default_model",
    "digit_step_metrics",
    "digit_steps",
    "load_samples",
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

PROMPT = COUNT_PROMPT
COT_PROMPT = COT_COUNT_PROMPT
PAPER_LAYERS = (-1, 8, 16, 24)
MANIFEST = harness.MANIFEST
model_slug = harness.model_slug


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class Regrounding:
    """Re-grounding at the units digit (and later digits): a causal test of Language Takeover.

    Attributes:
        mode: "restore": each head's image columns get the head's step-1 image
            distribution, scaled to the row's current image mass (the rest of the row is
            untouched); "restore_mass": the step-1 columns exactly (distribution and mass;
            the non-image part is rescaled so the row sums to 1); "scale": image columns
            times `alpha`, then the row is renormalised.
        alpha: factor for "scale".
        layers: layers to intervene in (negative allowed); None = the study's layers.
    """

    mode: Literal["restore", "restore_mass", "scale"] = "restore"
    alpha: float = 2.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("restore", "restore_mass", "scale"):
            raise ValueError(
                f"regrounding mode must be 'restore', 'restore_mass' or 'scale', got {self.mode!r}"
            )
        if self.mode == "scale" and not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")

    @classmethod
    def parse(cls, spec: str, layers: Sequence[int] | None = None) -> Regrounding:
        """`"restore"`, `"restore-mass"` or `"scale:ALPHA"` (e.g. `"scale:2"`)."""
        name, _, value = spec.strip().partition(":")
        name = name.replace("-", "_")
        if name == "scale":
            if not value:
                raise ValueError("scale needs a factor, e.g. scale:2")
            return cls("scale", float(value), None if layers is None else tuple(layers))
        if value:
            raise ValueError(f"regrounding {name!r} takes no value, got {spec!r}")
        return cls(name, layers=None if layers is None else tuple(layers))  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"scale:{self.alpha:g}" if self.mode == "scale" else self.mode


@dataclass(frozen=True)
class CountingConfig:
    """One condition of the study: its dataset, prompt and what to record.

    Defaults are the paper's: 256 images of 1024 px, 10-16 dots of radius 10, the
    direct-answer prompt, greedy decoding, the last layer. `layers` may be "last",
    "paper" (-1, 8, 16, 24, dropping those beyond the model's depth) or layer indices.
    `digits_only` suppresses every non-digit token but EOS and caps the answer at the
    number of digits of the largest count: for untrained models, so the attention
    pipeline has digit steps to measure (never for reported numbers of real models).
    """

    n: int = 256
    seed: int = 0
    condition: str = "baseline"
    layers: str | int | tuple[int, ...] = "last"
    prompt: str = PROMPT
    answer: Literal["first", "last"] = "first"
    max_new_tokens: int = 8
    size: int = 1024
    radius: float = 10.0
    count_range: tuple[int, int] = (10, 16)
    regrounding: Regrounding | None = None
    digits_only: bool = False
    example_maps: int = 4
    band_width: float = 1.0

    def dataset(self) -> list[dots.DotsSample]:
        return dots.generate(
            self.n,
            self.seed,
            size=self.size,
            radius=self.radius,
            count_range=tuple(self.count_range),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regrounding"] = None if self.regrounding is None else asdict(self.regrounding)
        return runlog.jsonable(d)


def conditions(
    base: CountingConfig,
    *,
    cot: bool = False,
    three_digit: bool = False,
    cot_max_new_tokens: int = 256,
    three_digit_range: tuple[int, int] = (100, 130),
    three_digit_radius: float | None = None,
) -> list[CountingConfig]:
    """The baseline condition plus the requested variants (same seed, n and layers)."""
    out = [base]
    if cot:
        out.append(
            replace(
                base,
                condition="cot",
                prompt=COT_PROMPT,
                answer="last",
                max_new_tokens=max(base.max_new_tokens, cot_max_new_tokens),
            )
        )
    if three_digit:
        out.append(
            replace(
                base,
                condition="three_digit",
                count_range=tuple(three_digit_range),
                radius=three_digit_radius if three_digit_radius is not None else base.radius / 2,
                max_new_tokens=max(base.max_new_tokens, 8),
            )
        )
    return out


def study_layers(layers: str | int | Sequence[int] | None, n_layers: int) -> list[int]:
    """Resolve "last" / "paper" / indices to non-negative layer indices (order kept, no repeats).

    "paper" is the paper's -1, 8, 16, 24 with the layers a shallow model lacks dropped.
    """
    wanted = "last" if layers is None else layers
    return resolve_layers(wanted, n_layers, {"paper": PAPER_LAYERS}, sort=False)


# ----------------------------------------------------------------------------- answers


def digit_steps(
    tokens: Sequence[int],
    decode: Callable[[Sequence[int]], str],
    which: Literal["first", "last"] = "first",
) -> tuple[list[int], list[str]]:
    """Generation steps that produced the digits of the answer, and each step's digits.

    Decodes growing prefixes of `tokens` (the same way the text is decoded) to find the
    token holding each character of the answer's span, so tokenizers that merge digits
    or add prefix spaces are handled.
    """
    tokens = list(tokens)
    text = decode(tokens)
    span = answer_span(text, which)
    if span is None:
        return [], []
    ends: list[int] = []
    for i in range(len(tokens)):
        ends.append(len(decode(tokens[: i + 1])))
        if ends[-1] >= span[1]:
            break
    steps: list[int] = []
    digits: list[str] = []
    for c in range(*span):
        step = min(bisect.bisect_right(ends, c), len(ends) - 1)
        if steps and steps[-1] == step:
            digits[-1] += text[c]
        else:
            steps.append(step)
            digits.append(text[c])
    return steps, digits


_DIGIT_SUPPRESS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _all_digits(text: str) -> bool:
    """Whether `text` is one run of ASCII digits (the parser's notion of a number)."""
    return bool(text) and answer_span(text) == (0, len(text))


def _digits_only_kwargs(model: HookedVLM, max_digits: int) -> tuple[dict[str, Any], int]:
    """`generate` kwargs that allow only digit tokens (and EOS), and the new-token cap."""
    if model in _DIGIT_SUPPRESS:
        return {"suppress_tokens": _DIGIT_SUPPRESS[model]}, max_digits
    tok = model.processor.tokenizer
    vocab = max(len(tok), model.cfg.d_vocab)
    digits = {i for i in range(len(tok)) if _all_digits(tok.decode([i]).strip())}
    allowed = digits | set(model.eos_token_ids)
    _DIGIT_SUPPRESS[model] = [i for i in range(vocab) if i not in allowed]
    return {"suppress_tokens": _DIGIT_SUPPRESS[model]}, max_digits


# --------------------------------------------------------------------------- metrics


def _num(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


def digit_step_metrics(
    image: Float[Tensor, "head image"],
    sample: dots.DotsSample,
    grid: tuple[int, int],
    band_width: float = 1.0,
    keep_map: bool = False,
) -> dict[str, Any]:
    """Metrics of one query row's attention to the image (one step, one layer).

    `image` holds each head's post-softmax attention on the image keys (in prompt order,
    row-major over `grid`), not renormalised. Eq. 1 averages the heads; the map is then
    renormalised over the image tokens before the paper's metrics are taken.

    An all-NaN `image` (the recording found none of the image keys among the keys the
    hook saw) raises `EmptyMeasurementError`. A partly NaN one (some image keys outside a
    sliding window) gives NaN metrics, stored as None.
    """
    image = image.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(image).any()):
        raise EmptyMeasurementError(
            "the image attention map is all NaN: none of the image keys was among the keys "
            "the hook saw. Either a sliding window dropped the image, or "
            f"{STEP_TRACKING_HINT}"
        )
    mean = image.mean(dim=0)  # Eq. 1
    mass = mean.sum()
    p = mean / mass
    h, w = grid
    entry: dict[str, Any] = {
        "image_mass": _num(mass),
        "gini": _num(gini_sparsity(p)),
        "textbook_gini": _num(textbook_gini(p)),
        "entropy": _num(normalized_entropy(p)),
        "head_image_mass": [_num(v) for v in image.sum(dim=-1)],
        "head_gini": [_num(v) for v in gini_sparsity(image)],
        "head_entropy": [_num(v) for v in normalized_entropy(image)],
    }
    if h * w == p.shape[-1]:
        masks = halo_masks(sample.centres, sample.size, grid, band_width)
        for name, share in halo_shares(p, masks).items():
            entry[name] = _num(share)
        entry["centroid_hit_rate"] = _num(centroid_hit_rate(p, sample.centres, sample.size, grid))
    else:  # several images or an unexpected grid: no spatial metrics
        entry.update(centre=None, hull_band=None, background=None, centroid_hit_rate=None)
    if keep_map:
        entry["map"] = [round(float(v), 7) for v in p]
    return entry


def recording_metrics(
    recording: Recording,
    steps: Sequence[int],
    digits: Sequence[str],
    layers: Sequence[int],
    sample: dots.DotsSample,
    grid: tuple[int, int],
    *,
    row: int = 0,
    band_width: float = 1.0,
    keep_map: bool = False,
    segments: Segments | None = None,
) -> list[dict[str, Any]]:
    """`digit_step_metrics` for every (digit step, layer) of batch row `row` of a recording.

    With the prompt's `segments`, each layer's own image axis and grid are read
    (`Recording.image_attention`: a cross-attention layer's image keys, Mllama).

    `steps[k]` is the step that predicted digit string `digits[k]`; the recording must
    keep the image columns of all heads (`keep=("image",)`, `heads="all"`) at every one of
    those steps (a missing step raises `EmptyMeasurementError`).
    """
    entries = []
    for k, (step, digit) in enumerate(zip(steps, digits)):
        if step not in recording.image:
            raise EmptyMeasurementError(
                f"no image attention was recorded at step {step} (digit {digit!r}); "
                f"recorded steps: {sorted(recording.image)}"
            )
        for layer in layers:
            if segments is None:
                image = recording.image[step][row, recording.layers.index(layer), :, -1, :]
                layer_grid: tuple[int, int] | None = grid
            else:  # the layer's own image axis (a cross-attention layer's image keys)
                image, grids = recording.image_attention(step, row, layer, segments)
                image, layer_grid = image[:, -1], grids[0] if len(grids) == 1 else None
            entry: dict[str, Any] = {"digit": k, "step": step, "token": digit, "layer": layer}
            try:
                # Maps and halo metrics are on the sample's grid: a layer whose image axis is
                # another (Mllama's <|image|> token in a self-attention layer) gets neither.
                on_map = layer_grid is not None and tuple(layer_grid) == tuple(grid)
                entry.update(
                    digit_step_metrics(
                        image, sample, grid if on_map else (0, 0), band_width, keep_map and on_map
                    )
                )
            except EmptyMeasurementError as err:
                raise EmptyMeasurementError(f"step {step}, layer {layer}: {err}") from err
            entries.append(entry)
    return entries


def _area_shares(sample: dots.DotsSample, grid: tuple[int, int], band_width: float) -> dict:
    masks = halo_masks(sample.centres, sample.size, grid, band_width)
    return {name: float(m.float().mean()) for name, m in masks.as_dict().items()}


# ------------------------------------------------------------------------ re-grounding


def reground(
    model: HookedVLM,
    inputs: VLMInputs,
    baseline: GenerationResult,
    first_step: int,
    target_steps: Collection[int],
    spec: Regrounding,
    layers: Sequence[int],
    max_new_tokens: int,
    record: AttentionRecord | None = None,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Generate again with the re-grounding intervention acting at `target_steps`.

    "restore" / "restore_mass" are `interventions.restore_image` (one per layer, each
    with its layer's step-`first_step` image attention as the source: image mass kept /
    taken from the source); "scale" is `interventions.scale_image`. They edit the answer
    row of each target step. `baseline` must have recorded the image columns of `layers`
    at `first_step` (all heads). Steps before the first target step are computed exactly
    as in the baseline.
    """
    if spec.mode == "scale":
        hooks = replace(scale_image(spec.alpha, list(layers)), steps=target_steps)
    else:
        rec = baseline.recording
        if rec is None or first_step not in rec.image:
            raise ValueError(f"the baseline recorded no image attention at step {first_step}")
        missing = [layer for layer in layers if layer not in rec.layers]
        if missing:
            raise ValueError(f"the baseline did not record layer(s) {missing}")
        mass = "current" if spec.mode == "restore" else "source"
        hooks = []
        for layer in layers:
            source = rec.image[first_step][:, rec.layers.index(layer), :, -1, :]
            hooks += restore_image(source, [layer], mass, steps=target_steps)
    return model.generate(
        inputs, max_new_tokens=max_new_tokens, fwd_hooks=hooks, record=record, **generate_kwargs
    )


# ------------------------------------------------------------------------------ samples


def count_sample(
    model: HookedVLM,
    sample: dots.DotsSample,
    config: CountingConfig,
    *,
    generate_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one image through the model and return its record (see the module docstring)."""
    return count_samples(model, [sample], config, generate_kwargs=generate_kwargs)[0]


def _until_eos(tokens: list[int], eos: Collection[int]) -> list[int]:
    """A generated row up to and including its first EOS (a batch pads stopped rows)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def count_samples(
    model: HookedVLM,
    samples: Sequence[dots.DotsSample],
    config: CountingConfig,
    *,
    generate_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run ``samples`` through the model as one batch; one record per sample, in order.

    Rows are greedy and independent, so a record equals its one-image run up to float
    rounding (all images of a condition have the same size and prompt: no padding).
    With re-grounding, which edits each row at its own digit steps, samples run one by one.
    """
    samples = list(samples)
    reg = config.regrounding
    if reg is not None and len(samples) > 1:
        return [
            row
            for sample in samples
            for row in count_samples(model, [sample], config, generate_kwargs=generate_kwargs)
        ]
    n_layers = model.cfg.n_layers
    layers = study_layers(config.layers, n_layers)
    reg_layers = [] if reg is None else study_layers(reg.layers or layers, n_layers)
    max_new = config.max_new_tokens
    kwargs = dict(generate_kwargs or {})
    if config.digits_only and "suppress_tokens" not in kwargs:
        extra, max_new = _digits_only_kwargs(model, len(str(config.count_range[1])))
        kwargs.update(extra)
    inputs = model.prepare(
        images=[[s.image] for s in samples], prompt=[config.prompt] * len(samples)
    )
    record = AttentionRecord(layers=sorted(set(layers) | set(reg_layers)), keep=("image",))
    out = model.generate(inputs, max_new_tokens=max_new, record=record, **kwargs)
    require_decoding_steps(out.recording, out.n_steps, "counting study")
    rows = []
    for r, sample in enumerate(samples):
        row = _sample_row(model, inputs, out, r, sample, config, layers)
        steps = row["digit_steps"]
        if reg is not None and steps:  # a batch of one (see above)
            generation = (model, inputs, out, max_new, kwargs)
            row["regrounding"] = _regrounded(
                generation, steps, row["text"], sample, reg, config, reg_layers
            )
        rows.append(row)
    return rows


def _sample_row(
    model: HookedVLM,
    inputs: VLMInputs,
    out: GenerationResult,
    r: int,
    sample: dots.DotsSample,
    config: CountingConfig,
    layers: list[int],
) -> dict[str, Any]:
    """Batch row `r`'s record, without re-grounding (see the module docstring)."""
    tokens = _until_eos(out.tokens[r].tolist(), model.eos_token_ids)
    text = out.texts[r]
    prediction = parse_count(text, config.answer)
    steps, digits = digit_steps(tokens, model.tokens_to_text, config.answer)
    # The map's grid: the image keys' where the image is read by cross-attention (Mllama).
    grid = tuple(inputs.segments.samples[r].image_grids(bool(model.cfg.cross_attention_layers))[0])
    attention = recording_metrics(
        out.recording,
        steps,
        digits,
        layers,
        sample,
        grid,
        row=r,
        band_width=config.band_width,
        keep_map=sample.index < config.example_maps,
        segments=inputs.segments,
    )
    row: dict[str, Any] = {
        "condition": config.condition,
        "index": sample.index,
        "count": sample.count,
        "text": text,
        "tokens": tokens,
        "prediction": prediction,
        "correct": prediction == sample.count,
        "error": None if prediction is None else prediction - sample.count,
        "digit_steps": steps,
        "digits": digits,
        "layers": layers,
        "grid": list(grid),
        "image_size": list(sample.size),
        "area": _area_shares(sample, grid, config.band_width),
        "attention": attention,
        "regrounding": None,
    }
    if sample.index < config.example_maps:
        row["centres"] = [list(c) for c in sample.centres]
    return row


def _regrounded(
    generation: tuple[HookedVLM, VLMInputs, GenerationResult, int, dict[str, Any]],
    steps: list[int],
    text: str,
    sample: dots.DotsSample,
    reg: Regrounding,
    config: CountingConfig,
    reg_layers: list[int],
) -> dict[str, Any]:
    """A one-image record's "regrounding" entry: generate again with the units digit (and
    later digits) re-grounded on the first digit's image attention (`reground`)."""
    model, inputs, out, max_new, kwargs = generation
    targets = steps[1:] or [steps[0] + 1]
    targets = [s for s in targets if s < max_new]
    regrounded = None
    if targets:
        regrounded = reground(
            model, inputs, out, steps[0], targets, reg, reg_layers, max_new, **kwargs
        )
    text2 = regrounded.texts[0] if regrounded is not None else text
    pred2 = parse_count(text2, config.answer)
    return {
        "mode": reg.describe(),
        "layers": reg_layers,
        "steps": targets,
        "text": text2,
        "prediction": pred2,
        "correct": pred2 == sample.count,
        "error": None if pred2 is None else pred2 - sample.count,
    }


def _measure(
    model: HookedVLM, samples: Sequence[dots.DotsSample], config: CountingConfig, **kwargs: Any
) -> list[dict[str, Any]]:
    return count_samples(model, samples, config, **kwargs)  # looked up at call time


STUDY = harness.Study(
    name="count",
    config=CountingConfig,
    measure=_measure,
    summarize=lambda rows: summarize(rows),
    report="vlm_lens.reports.counting:write_outputs",
)


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
        out_dir,
        model_name=model_name,
        shard=shard,
        progress=progress,
        note=note,
        max_samples=max_samples,
        batch_size=batch_size,
        measure_kwargs={"generate_kwargs": generate_kwargs},
    )


merge = harness.merge
load_samples = harness.load


# ----------------------------------------------------------------------------- summary


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _std(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


_STEP_METRICS = (
    "gini",
    "textbook_gini",
    "entropy",
    "image_mass",
    "centre",
    "hull_band",
    "background",
    "centroid_hit_rate",
)


def _answer_stats(pairs: list[tuple[int, int | None]]) -> dict[str, Any]:
    n = len(pairs)
    errors = [p - c for c, p in pairs if p is not None]
    return {
        "n": n,
        "n_parsed": len(errors),
        "accuracy": sum(p == c for c, p in pairs) / n if n else None,
        "mbe": _mean(errors),
        "mae": _mean([abs(e) for e in errors]),
    }


def _paired(rows: list[dict], layer: int, metric: str) -> tuple[list[float], list[float]]:
    first, second = [], []
    for row in rows:
        by_digit = {e["digit"]: e.get(metric) for e in row["attention"] if e["layer"] == layer}
        a, b = by_digit.get(0), by_digit.get(1)
        if a is not None and b is not None:
            first.append(a)
            second.append(b)
    return first, second


def _require_attention(group: Sequence[dict], where: str) -> None:
    """Raise `EmptyMeasurementError` if a (model, condition) has no attention metric at all."""
    entries = [e for r in group for e in r["attention"]]
    if not entries:
        if not any(r["digit_steps"] for r in group):
            raise EmptyMeasurementError(
                f"{where}: none of the {len(group)} answers held a number, so no digit step "
                "had attention to measure (an untrained model needs digits_only, "
                "`--digits-only`)"
            )
        raise EmptyMeasurementError(
            f"{where}: the answers held digits but no attention was recorded at their steps; "
            f"{STEP_TRACKING_HINT}"
        )
    require_finite(
        [[e.get(m) for m in _STEP_METRICS] for e in entries],
        f"{where}: every attention metric of {len(entries)} (digit step, layer) entries",
        "the recorded image maps held no number",
    )


def summarize(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """One summary per (model, condition): accuracy, MBE, MAE, per-step metrics, drop tests.

    `steps`: per layer and digit step, mean and std of every metric. `sparsity_drop`:
    per layer, Gini of the 1st minus the 2nd digit on the samples that have both, with a
    two-sided Wilcoxon signed-rank test; `entropy_rise` likewise (2nd minus 1st).
    `regrounding`: the re-grounded answers' accuracy, MBE and MAE, and the changes.

    Raises `EmptyMeasurementError` for no rows, or for a (model, condition) whose
    attention metrics are all missing (no digit step, nothing recorded, all-NaN maps).
    """
    if not rows:
        raise EmptyMeasurementError("no samples to summarize")
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("model", ""), row["condition"]), []).append(row)
    out = []
    for (model, condition), group in groups.items():
        _require_attention(group, f"model {model!r}, condition {condition!r}")
        summary: dict[str, Any] = {"model": model, "condition": condition}
        summary.update(_answer_stats([(r["count"], r["prediction"]) for r in group]))
        layers = sorted({e["layer"] for r in group for e in r["attention"]})
        headline = group[0]["layers"][0] if group[0]["layers"] else None
        summary["layers"] = layers
        summary["headline_layer"] = headline
        steps = []
        for layer in layers:
            digits = sorted(
                {e["digit"] for r in group for e in r["attention"] if e["layer"] == layer}
            )
            for digit in digits:
                entries = [
                    e
                    for r in group
                    for e in r["attention"]
                    if e["layer"] == layer and e["digit"] == digit
                ]
                item: dict[str, Any] = {"layer": layer, "digit": digit, "n": len(entries)}
                for metric in _STEP_METRICS:
                    values = [e.get(metric) for e in entries]
                    item[f"{metric}_mean"] = _mean(values)
                    item[f"{metric}_std"] = _std(values)
                steps.append(item)
        summary["steps"] = steps
        summary["sparsity_drop"] = {}
        summary["entropy_rise"] = {}
        for layer in layers:
            g1, g2 = _paired(group, layer, "gini")
            summary["sparsity_drop"][str(layer)] = wilcoxon_signed_rank(g1, g2).as_dict()
            e1, e2 = _paired(group, layer, "entropy")
            summary["entropy_rise"][str(layer)] = wilcoxon_signed_rank(e2, e1).as_dict()
        summary["area"] = {
            name: _mean([r["area"][name] for r in group])
            for name in ("centre", "hull_band", "background")
        }
        regrounded = [r for r in group if r.get("regrounding")]
        if regrounded:
            base = _answer_stats([(r["count"], r["prediction"]) for r in regrounded])
            new = _answer_stats([(r["count"], r["regrounding"]["prediction"]) for r in regrounded])
            summary["regrounding"] = {
                "mode": regrounded[0]["regrounding"]["mode"],
                "layers": regrounded[0]["regrounding"]["layers"],
                "n": new["n"],
                "baseline": base,
                "regrounded": new,
                "delta_accuracy": _delta(new["accuracy"], base["accuracy"]),
                "delta_mbe": _delta(new["mbe"], base["mbe"]),
                "delta_mae": _delta(new["mae"], base["mae"]),
                "changed_answers": sum(
                    r["regrounding"]["prediction"] != r["prediction"] for r in regrounded
                ),
            }
        else:
            summary["regrounding"] = None
        out.append(summary)
    return out


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# ------------------------------------------------------------------------------ tables

SAMPLE_COLUMNS = (
    "model",
    "condition",
    "index",
    "count",
    "prediction",
    "correct",
    "error",
    "abs_error",
    "text",
    "n_digits",
    "digit_steps",
    "regrounded_prediction",
    "regrounded_correct",
    "regrounded_error",
)
ATTENTION_COLUMNS = (
    "model",
    "condition",
    "index",
    "count",
    "prediction",
    "correct",
    "digit",
    "step",
    "token",
    "layer",
    "image_mass",
    "gini",
    "textbook_gini",
    "entropy",
    "centre",
    "hull_band",
    "background",
    "centroid_hit_rate",
    "area_centre",
    "area_hull_band",
    "area_background",
    "head_image_mass",
    "head_gini",
    "head_entropy",
)
SUMMARY_COLUMNS = (
    "model",
    "condition",
    "n",
    "n_parsed",
    "accuracy",
    "mbe",
    "mae",
    "headline_layer",
    "gini_digit1",
    "gini_digit2",
    "entropy_digit1",
    "entropy_digit2",
    "sparsity_drop",
    "sparsity_drop_statistic",
    "sparsity_drop_p",
    "sparsity_drop_n",
    "entropy_rise",
    "entropy_rise_p",
    "centre_share_digit1",
    "hull_band_share_digit1",
    "background_share_digit1",
    "centroid_hit_rate_digit1",
    "regrounding",
    "regrounded_accuracy",
    "regrounded_mbe",
    "delta_accuracy",
    "delta_mbe",
)


def sample_table(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """One flat row per sample (answers and, if run, the re-grounded answers)."""
    table = []
    for r in rows:
        reg = r.get("regrounding") or {}
        table.append(
            {
                "model": r.get("model", ""),
                "condition": r["condition"],
                "index": r["index"],
                "count": r["count"],
                "prediction": r["prediction"],
                "correct": r["correct"],
                "error": r["error"],
                "abs_error": None if r["error"] is None else abs(r["error"]),
                "text": r["text"],
                "n_digits": len(r["digit_steps"]),
                "digit_steps": " ".join(map(str, r["digit_steps"])),
                "regrounded_prediction": reg.get("prediction"),
                "regrounded_correct": reg.get("correct"),
                "regrounded_error": reg.get("error"),
            }
        )
    return table


def attention_table(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Tidy long table: one row per (sample, digit step, layer); per-head values `;`-joined."""
    table = []
    for r in rows:
        for e in r["attention"]:
            item = {
                "model": r.get("model", ""),
                "condition": r["condition"],
                "index": r["index"],
                "count": r["count"],
                "prediction": r["prediction"],
                "correct": r["correct"],
            }
            for col in ATTENTION_COLUMNS[len(item) :]:
                if col.startswith("area_"):
                    item[col] = r["area"][col[5:]]
                elif col.startswith("head_"):
                    item[col] = ";".join("" if v is None else f"{v:.6g}" for v in e[col])
                else:
                    item[col] = e.get(col)
            table.append(item)
    return table


def _step(summary: dict, layer: int | None, digit: int, metric: str) -> float | None:
    for s in summary["steps"]:
        if s["layer"] == layer and s["digit"] == digit:
            return s[f"{metric}_mean"]
    return None


def summary_table(summaries: Sequence[dict]) -> list[dict[str, Any]]:
    """One flat row per (model, condition), metrics at the headline (first chosen) layer."""
    table = []
    for s in summaries:
        layer = s["headline_layer"]
        drop = s["sparsity_drop"].get(str(layer), {})
        rise = s["entropy_rise"].get(str(layer), {})
        reg = s.get("regrounding") or {}
        table.append(
            {
                "model": s["model"],
                "condition": s["condition"],
                "n": s["n"],
                "n_parsed": s["n_parsed"],
                "accuracy": s["accuracy"],
                "mbe": s["mbe"],
                "mae": s["mae"],
                "headline_layer": layer,
                "gini_digit1": _step(s, layer, 0, "gini"),
                "gini_digit2": _step(s, layer, 1, "gini"),
                "entropy_digit1": _step(s, layer, 0, "entropy"),
                "entropy_digit2": _step(s, layer, 1, "entropy"),
                "sparsity_drop": drop.get("mean_diff"),
                "sparsity_drop_statistic": drop.get("statistic"),
                "sparsity_drop_p": drop.get("p_value"),
                "sparsity_drop_n": drop.get("n"),
                "entropy_rise": rise.get("mean_diff"),
                "entropy_rise_p": rise.get("p_value"),
                "centre_share_digit1": _step(s, layer, 0, "centre"),
                "hull_band_share_digit1": _step(s, layer, 0, "hull_band"),
                "background_share_digit1": _step(s, layer, 0, "background"),
                "centroid_hit_rate_digit1": _step(s, layer, 0, "centroid_hit_rate"),
                "regrounding": reg.get("mode"),
                "regrounded_accuracy": (reg.get("regrounded") or {}).get("accuracy"),
                "regrounded_mbe": (reg.get("regrounded") or {}).get("mbe"),
                "delta_accuracy": reg.get("delta_accuracy"),
                "delta_mbe": reg.get("delta_mbe"),
            }
        )
    return table


def write_tables(out_dir: str | Path) -> dict[str, Any]:
    """Summaries and tables of every model under `out_dir` (the report is written from these).

    Reads each `<out_dir>/<model>/samples.jsonl` (run `merge` first after a sharded run)
    and writes `summary.json`, `summary.csv`, `samples.csv` and `attention.csv`. Returns
    `{"rows", "summaries", "manifests", "notes", "paths"}`. Nothing is written when there
    are no samples or a condition's attention metrics are all missing
    (`EmptyMeasurementError`, see `summarize`). `vlm_lens.reports.counting.write_outputs`
    calls this and then writes the report.
    """
    out_dir = Path(out_dir)
    with contextlib.ExitStack() as held:  # no run or merge of any model meanwhile
        for manifest_path in sorted(out_dir.glob(f"*/{MANIFEST}")):
            held.enter_context(runlog.run_lock(manifest_path.parent))
        return _write_tables(out_dir)


def _write_tables(out_dir: Path) -> dict[str, Any]:
    rows: list[dict] = []
    incomplete = []
    manifests = []
    for manifest_path in sorted(out_dir.glob(f"*/{MANIFEST}")):
        model_dir = manifest_path.parent
        manifests.append(json.loads(manifest_path.read_text(encoding="utf-8")))
        found = load_samples(model_dir)
        if not found and runlog.shard_files(model_dir):
            incomplete.append(model_dir.name)
        rows.extend(found)
    if not rows:
        hint = "; only shard logs: run `vlm-lens count merge` first" if incomplete else ""
        raise EmptyMeasurementError(f"no samples under {out_dir}{hint}")
    if incomplete:
        print(f"note: only shard logs in {', '.join(incomplete)}: run `vlm-lens count merge` first")
    summaries = summarize(rows)
    runlog.write_json_atomic(out_dir / "summary.json", summaries)
    paths = {
        "summary_json": out_dir / "summary.json",
        "summary_csv": runlog.write_csv(
            out_dir / "summary.csv", summary_table(summaries), SUMMARY_COLUMNS
        ),
        "samples_csv": runlog.write_csv(
            out_dir / "samples.csv", sample_table(rows), SAMPLE_COLUMNS
        ),
        "attention_csv": runlog.write_csv(
            out_dir / "attention.csv", attention_table(rows), ATTENTION_COLUMNS
        ),
    }
    notes = [f"{m['model']}: {m['note']}" for m in manifests if m.get("note")]
    notes += [f"{name}: only shard logs found; run `vlm-lens count merge`" for name in incomplete]
    return {
        "rows": rows,
        "summaries": summaries,
        "manifests": manifests,
        "notes": notes,
        "paths": paths,
    }


def default_model_note() -> str:
    return (
        "note: no model given and the trained counting organism is not available; using a "
        "tiny RANDOM-WEIGHT qwen3_vl zoo model with answers constrained to digits. Its numbers "
        "show that the pipeline runs, not how any real model counts."
    )


def default_model(cache_dir: str | Path | None = None) -> tuple[Any, str, str | None]:
    """`(model_or_path, name, note)` for runs that name no model.

    The trained counting organism (`vlm_lens.zoo.organism()`) if it is available, else a
    tiny random-weight qwen3_vl zoo checkpoint (built once under `cache_dir`, default
    `$VLM_LENS_CACHE/zoo` or `~/.cache/vlm_lens/zoo`) with a printed notice; `note` is
    None for the organism and the notice otherwise (callers should then set
    `digits_only=True`).
    """
    ref, name, note = fallback.default_model(
        default_model_note(), cache_dir, organism="counting organism"
    )
    if note:
        print(note)
    return ref, name, note
