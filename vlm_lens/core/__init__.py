"""Core hooking: the attention function, hook points, segments and the `HookedVLM` wrapper,
generation with step-aware hooks and recordings, and one-prompt generation traces."""

from vlm_lens.core.generation import AttentionRecord, GenerationResult, Recording
from vlm_lens.core.hooked_vlm import ActivationCache, HookedVLM, VLMConfig
from vlm_lens.core.prepare import VLMInputs
from vlm_lens.core.segments import Segments, Span
from vlm_lens.core.trace import GenerationTrace

__all__ = [
    "ActivationCache",
    "AttentionRecord",
    "GenerationResult",
    "GenerationTrace",
    "HookedVLM",
    "Recording",
    "Segments",
    "Span",
    "VLMConfig",
    "VLMInputs",
]
