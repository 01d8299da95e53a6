"""The counting study's measurement: a batch of dot images of one condition -> one `Record`
each, with the re-grounded answer when the condition asks for it.

Step convention: step 0 is the prefill; its last row predicts generated token 0. So
"digit step k" is the step whose last query row predicted the k-th digit, the same index
as `GenerationResult.logits` and `Recording.image`.

Not for: the metrics of one row (`vlm_lens.studies.counting.metrics`), where the digits
are (`vlm_lens.studies.counting.answers`) or resume and logs (`vlm_lens.studies.harness`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vlm_lens.core.generation import GenerationResult
from vlm_lens.core.image_frame import frame_grid
from vlm_lens.core.recording import AttentionRecord
from vlm_lens.data import dots
from vlm_lens.data.count_prompt import parse_count
from vlm_lens.interventions import restore_image, scale_image
from vlm_lens.studies.checks import require_decoding_steps
from vlm_lens.studies.counting.answers import digit_steps, digits_only_kwargs
from vlm_lens.studies.counting.config import CountingConfig, Regrounding, study_layers
from vlm_lens.studies.counting.metrics import area_shares, recording_metrics
from vlm_lens.studies.counting.records import Record

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM
    from vlm_lens.core.prepare import VLMInputs

__all__ = ["count_sample", "count_samples", "reground"]


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
) -> Record:
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
) -> list[Record]:
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
        extra, max_new = digits_only_kwargs(model, len(str(config.count_range[1])))
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
        if reg is not None and row.digit_steps:  # a batch of one (see above)
            generation = (model, inputs, out, max_new, kwargs)
            regrounded = _regrounded(
                generation, row.digit_steps, row.text, sample, reg, config, reg_layers
            )
            row = replace(row, regrounding=regrounded)
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
) -> Record:
    """Batch row `r`'s record, without re-grounding (see the module docstring)."""
    tokens = _until_eos(out.tokens[r].tolist(), model.eos_token_ids)
    text = out.texts[r]
    prediction = parse_count(text, config.answer)
    steps, digits = digit_steps(tokens, model.tokens_to_text, config.answer)
    image_span = inputs.segments.samples[r].images[0]
    cross = bool(model.cfg.cross_attention_layers)  # the image is read by cross-attention
    # The map's grid: the image keys' under cross-attention (Mllama), else the image's frame.
    grid = (
        tuple(inputs.segments.samples[r].image_grids(True)[0]) if cross else frame_grid(image_span)
    )
    keep = config.controls or sample.index < config.example_maps
    attention = recording_metrics(
        out.recording,
        steps,
        digits,
        layers,
        sample,
        grid,
        row=r,
        band_width=config.band_width,
        keep_map=keep,
        image_span=image_span,
        segments=inputs.segments if cross else None,
    )
    return Record(
        condition=config.condition,
        index=sample.index,
        count=sample.count,
        text=text,
        tokens=tokens,
        prediction=prediction,
        correct=prediction == sample.count,
        error=None if prediction is None else prediction - sample.count,
        digit_steps=steps,
        digits=digits,
        layers=layers,
        grid=list(grid),
        image_size=list(sample.size),
        area=area_shares(sample, grid, config.band_width),
        attention=attention,
        centres=[list(c) for c in sample.centres] if keep else None,
    )


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
