"""Core hooking: the attention function, hook points, segments and the `HookedVLM` wrapper,
layer specs, generation with step-aware hooks and recordings, and one-prompt generation traces.

The names below load on first use (`vlm_lens._lazy`): importing a light submodule such as
`vlm_lens.core.segments` or `vlm_lens.core.layers` does not import transformers.

Not for: studies, metrics or interventions built on these (`vlm_lens.studies`,
`vlm_lens.metrics`, `vlm_lens.interventions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlm_lens._lazy import lazy_names

if TYPE_CHECKING:
    from vlm_lens.core.generation import GenerationResult
    from vlm_lens.core.hooked_vlm import ActivationCache, HookedVLM, VLMConfig
    from vlm_lens.core.layers import LayerSpec, resolve_layers
    from vlm_lens.core.prepare import VLMInputs
    from vlm_lens.core.recording import AttentionRecord, Recording
    from vlm_lens.core.segments import SEGMENT_KINDS, Segments, Span
    from vlm_lens.core.trace import GenerationTrace

_HOMES = {
    "ActivationCache": "vlm_lens.core.hooked_vlm",
    "AttentionRecord": "vlm_lens.core.recording",
    "GenerationResult": "vlm_lens.core.generation",
    "GenerationTrace": "vlm_lens.core.trace",
    "HookedVLM": "vlm_lens.core.hooked_vlm",
    "LayerSpec": "vlm_lens.core.layers",
    "Recording": "vlm_lens.core.recording",
    "SEGMENT_KINDS": "vlm_lens.core.segments",
    "Segments": "vlm_lens.core.segments",
    "Span": "vlm_lens.core.segments",
    "VLMConfig": "vlm_lens.core.hooked_vlm",
    "VLMInputs": "vlm_lens.core.prepare",
    "resolve_layers": "vlm_lens.core.layers",
}
__all__ = [
    "SEGMENT_KINDS",
    "ActivationCache",
    "AttentionRecord",
    "GenerationResult",
    "GenerationTrace",
    "HookedVLM",
    "LayerSpec",
    "Recording",
    "Segments",
    "Span",
    "VLMConfig",
    "VLMInputs",
    "resolve_layers",
]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
