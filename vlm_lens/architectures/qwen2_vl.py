"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): the Qwen-VL base (`_qwen`) with the first
Qwen vision tower (LayerNorm, quick-GELU MLP sized by `mlp_ratio`), patch 14.

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
    "embed_dim": 32,
    "mlp_ratio": 2,
    "num_heads": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


def _derive_vision(cfg: dict, overrides: Mapping) -> None:
    if not given(overrides, "vision_config", "hidden_size"):
        # Qwen2-VL's vision `hidden_size` is the merger's output width = text hidden size
        cfg["vision_config"]["hidden_size"] = cfg["text_config"]["hidden_size"]


def _config(tok, overrides: Mapping):
    return _qwen.config(
        "Qwen2VLConfig", tok, overrides, _VISION, interleaved=False, derive_vision=_derive_vision
    )


ARCHITECTURE = Architecture(
    title="Qwen2-VL",
    family="qwen",
    released="2024-08",
    adapter=Adapter("qwen2_vl", "Qwen2VLForConditionalGeneration", **_qwen.ADAPTER_FIELDS),
    tiny=TinyRecipe(
        char_tokenizer=_qwen.char_tokenizer(
            _qwen.zoo_chat_template("You are a helpful assistant.")
        ),
        config=_config,
        processor=_qwen.processor("Qwen2VLProcessor", "Qwen2VLVideoProcessor", _qwen.CLIP_MEAN_STD),
        **_qwen.RECIPE_TOKENS,
    ),
    # Qwen2-VL: patch 14, merge 2, pixels 3,136 .. 12,845,056 (as Qwen2.5-VL).
    real_vocab=RealVocab(
        package=_qwen.PACKAGE,
        chat_template=_qwen.QWEN2_VL_CHAT_TEMPLATE,
        settings=_qwen.real_settings(3_136, 12_845_056),
    ),
)
