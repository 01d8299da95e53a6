"""Per-architecture knowledge, one small declarative record per architecture.

An adapter says where the decoder layers are, which module emits the image
embeddings, how an image item appears in a rendered chat template and how an
image's visual tokens form a grid. Everything else (hooking, segments,
generation) is shared code that reads these records.

Not for: behaviour. If an architecture needs code, it is a bug in the shared path
or a field here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _qwen_grids(config: Any, processor_out: dict, n_images: int) -> list[tuple[int, int]]:
    # image_grid_thw counts vision patches before the spatial merge: [n_images, (t, h, w)].
    thw = processor_out["image_grid_thw"]
    merge = config.vision_config.spatial_merge_size
    return [(int(h) // merge, int(w) // merge) for _, h, w in thw.tolist()]


def _gemma3_grids(config: Any, processor_out: dict, n_images: int) -> list[tuple[int, int]]:
    side = math.isqrt(config.mm_tokens_per_image)
    return [(side, side)] * n_images


def _llava_grids(config: Any, processor_out: dict, n_images: int) -> list[tuple[int, int]]:
    side = config.vision_config.image_size // config.vision_config.patch_size
    return [(side, side)] * n_images


@dataclass(frozen=True)
class Adapter:
    arch: str
    model_class: str
    """transformers class that holds the whole VLM (vision tower, projector, language model, head)."""
    language_model: str = "model.language_model"
    layers: str = "layers"
    attention: str = "self_attn"
    image_embeds_module: str = "model.multi_modal_projector"
    vision_tower: str = "model.vision_tower"
    """The vision encoder (pixels in, patch features out); it holds no language-model hooks."""
    image_marker: str = "<image>"
    """How an image content item first shows in the rendered chat template (before expansion)."""
    grids: Callable[[Any, dict, int], list[tuple[int, int]]] = _llava_grids

    def image_token_id(self, config: Any) -> int:
        for name in ("image_token_id", "image_token_index"):
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        raise ValueError(f"{self.arch}: config names no image token id")


_QWEN = dict(
    image_embeds_module="model.visual.merger",
    vision_tower="model.visual",
    image_marker="<|vision_start|>",
    grids=_qwen_grids,
)

ADAPTERS: dict[str, Adapter] = {
    "qwen3_vl": Adapter("qwen3_vl", "Qwen3VLForConditionalGeneration", **_QWEN),
    "qwen2_5_vl": Adapter("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", **_QWEN),
    "qwen2_vl": Adapter("qwen2_vl", "Qwen2VLForConditionalGeneration", **_QWEN),
    "gemma3": Adapter(
        "gemma3",
        "Gemma3ForConditionalGeneration",
        image_marker="<start_of_image>",
        grids=_gemma3_grids,
    ),
    "llava": Adapter(
        "llava", "LlavaForConditionalGeneration", image_marker="<image>", grids=_llava_grids
    ),
}

SUPPORTED = tuple(ADAPTERS)


def adapter_for(config: Any) -> Adapter:
    """The adapter of a checkpoint's config (`model_type`), or a ValueError naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"unsupported architecture {model_type!r}; vlm_lens supports {', '.join(SUPPORTED)} "
            "(Qwen3-VL, Qwen2.5-VL, Qwen2-VL, Gemma3ForConditionalGeneration, LLaVA-1.5)"
        )
    return ADAPTERS[model_type]


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """`root.a.b.c` for `path="a.b.c"`, with an error naming the missing part."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise AttributeError(f"{type(root).__name__} has no module {path!r} (missing {part!r})")
        module = getattr(module, part)
    return module
