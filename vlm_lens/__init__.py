"""vlm_lens: TransformerLens-style hooks, per-step attention tracing and patching for VLMs."""

from vlm_lens import zoo
from vlm_lens.core import HookedVLM, Segments, VLMInputs

__all__ = ["HookedVLM", "Segments", "VLMInputs", "zoo"]
__version__ = "0.1.0"
