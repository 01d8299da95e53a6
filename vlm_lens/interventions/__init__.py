"""Attention interventions: move, scale or knock out attention between modalities.

Hook level (TransformerLens `fwd_hooks`, read segments and decoding step at run time)::

    from vlm_lens.interventions import redistribute, scale_image, knockout

    iv = redistribute("system", "text", layers="Q4", model=model)   # the yes-bias intervention
    model.run_with_hooks(inputs, fwd_hooks=iv)
    model.generate(inputs, max_new_tokens=4, fwd_hooks=iv + scale_image(2.0, "Q4", model=model))

Re-grounding: `restore_image(source, layers, steps=...)` gives the image keys an earlier
step's distribution; `steps=` (on every `Intervention`) limits an edit to chosen steps.

Tensor level (no model needed): `redistribute_pattern`, `scale_pattern`, `knockout_pattern`,
`restore_pattern`
on `[batch, head, query, key]` patterns with `[batch, key]` segment codes.

Layer specs ("Q1".."Q4", "all", "a:b", ints, lists): `resolve_layers`, `quarter`.

Not for: recording attention (`vlm_lens.core.recording`) or the studies that use these
edits (`vlm_lens.studies`).
"""

from vlm_lens.interventions.hooks import (
    Intervention,
    knockout,
    redistribute,
    restore_image,
    scale_image,
    scale_modality,
)
from vlm_lens.interventions.layers import quarter, quarter_bounds, resolve_layers
from vlm_lens.interventions.patterns import (
    MODALITIES,
    knockout_pattern,
    modality_codes,
    redistribute_pattern,
    restore_pattern,
    scale_pattern,
)

__all__ = [
    "MODALITIES",
    "Intervention",
    "knockout",
    "knockout_pattern",
    "modality_codes",
    "quarter",
    "quarter_bounds",
    "redistribute",
    "redistribute_pattern",
    "resolve_layers",
    "restore_image",
    "restore_pattern",
    "scale_image",
    "scale_modality",
    "scale_pattern",
]
