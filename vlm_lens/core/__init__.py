"""Core hooking: the attention function, hook points, segments and the `HookedVLM` wrapper."""

from vlm_lens.core.hooked_vlm import ActivationCache, HookedVLM, VLMConfig
from vlm_lens.core.prepare import VLMInputs
from vlm_lens.core.segments import Segments, Span

__all__ = ["ActivationCache", "HookedVLM", "Segments", "Span", "VLMConfig", "VLMInputs"]
