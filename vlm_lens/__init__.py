"""vlm_lens: TransformerLens-style hooks, per-step attention tracing and patching for VLMs.

`from vlm_lens import HookedVLM, zoo` is the entry point. The names load on first use
(`vlm_lens._lazy`), so `import vlm_lens` and `vlm-lens --help` do not import torch.

Not for: anything but pointing at the package's parts (`vlm_lens.core`, `vlm_lens.studies`, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlm_lens._lazy import lazy_names

if TYPE_CHECKING:
    from vlm_lens import zoo
    from vlm_lens.core import HookedVLM, Segments, VLMInputs

__version__ = "0.1.0"
_HOMES = {
    "HookedVLM": "vlm_lens.core.hooked_vlm",
    "Segments": "vlm_lens.core.segments",
    "VLMInputs": "vlm_lens.core.prepare",
    "zoo": "vlm_lens.zoo",
}
__all__ = ["HookedVLM", "Segments", "VLMInputs", "zoo"]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
