"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): the Qwen-VL base (`_qwen`) with a vision
tower that mixes window and full attention (RMSNorm, SwiGLU), patch 14.

Tiny checkpoint, one 64x64 image: 16 x ``<|image_pad|>`` between vision_start/end, a
4 x 4 grid after merging (``image_grid_thw`` = [1, 8, 8] patches of 14).

Not for: what all Qwen-VL share (`vlm_lens.architectures._qwen`).
"""

from __future__ import annotations

from collections.abc import Mapping

from vlm_lens.architectures import _qwen
from vlm_lens.architectures._base import Adapter, Architecture, RealVocab, TinyRecipe
from vlm_lens.architectures._recipe import given

_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


def _derive_vision(cfg: dict, overrides: Mapping) -> None:
    _qwen.default_out_width(cfg, overrides)
    vision = cfg["vision_config"]
    if not given(overrides, "vision_config", "window_size"):
        # windows of 2 x 2 merged tokens, so window attention is really exercised
        vision["window_size"] = vision["patch_size"] * vision["spatial_merge_size"] * 2
    if not given(overrides, "vision_config", "fullatt_block_indexes"):
        vision["fullatt_block_indexes"] = list(range(1, vision["depth"], 2))


def _config(tok, overrides: Mapping):
    return _qwen.config(
        "Qwen2_5_VLConfig", tok, overrides, _VISION, interleaved=False, derive_vision=_derive_vision
    )


ARCHITECTURE = Architecture(
    title="Qwen2.5-VL",
    family="qwen",
    released="2025-01",
    adapter=Adapter("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", **_qwen.ADAPTER_FIELDS),
    tiny=TinyRecipe(
        char_tokenizer=_qwen.char_tokenizer(
            _qwen.zoo_chat_template("You are a helpful assistant.")
        ),
        config=_config,
        # transformers has no Qwen2.5-VL video processor class: it uses Qwen2-VL's
        processor=_qwen.processor(
            "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", _qwen.CLIP_MEAN_STD
        ),
        **_qwen.RECIPE_TOKENS,
    ),
    # Qwen2.5-VL: patch 14, merge 2, pixels 3,136 .. 12,845,056.
    real_vocab=RealVocab(
        package=_qwen.PACKAGE,
        chat_template=_qwen.QWEN2_VL_CHAT_TEMPLATE,
        settings=_qwen.real_settings(3_136, 12_845_056),
    ),
)
