"""Tiny random-weight checkpoints of the real VLM architectures, built offline.

:func:`tiny_checkpoint` writes a directory that loads through the ordinary Hugging Face path
(``AutoConfig`` / ``AutoProcessor`` / ``AutoModelForImageTextToText`` or the concrete model
class, no ``trust_remote_code``) and needs no network: the tokenizer is a character-level one
(:mod:`vlm_lens.zoo.tokenizer`) unless ``tokenizer_dir`` gives a real one
(:mod:`vlm_lens.zoo.real_vocab`), the processors are the real processor classes configured for
tiny images, the model is the real ``*ForConditionalGeneration`` class with a tiny config.

Layout on disk: ``tiny_checkpoint(arch, directory)`` builds into ``directory/<arch>`` for the
default build (``seed=0``, no overrides) and into ``directory/<arch>-<hash>`` otherwise, so
builds with different settings never clobber each other. A complete build carries a marker file
(``vlm_lens_zoo.json``); when it is present and matches, the directory is returned as is.

Token layout for one 64x64 image with the default settings:

============  =====================================================  ====================
arch          image tokens in ``input_ids``                          grid (after merging)
============  =====================================================  ====================
qwen3_vl      16 x ``<|image_pad|>`` between vision_start/end        4 x 4 (image_grid_thw
                                                                     = [1, 8, 8] patches)
qwen2_5_vl    same, patch 14                                         4 x 4 ([1, 8, 8])
qwen2_vl      same, patch 14                                         4 x 4 ([1, 8, 8])
gemma3        ``\\n\\n<start_of_image>`` + 4 x ``<image_soft_token>``    2 x 2 (pooled, fixed)
              + ``<end_of_image>\\n\\n``
llava         16 x ``<image>``                                       4 x 4 (fixed)
============  =====================================================  ====================

Not for: trained weights (`vlm_lens.zoo.organism`, scripts/organism) or numbers about a
real model: these checkpoints only show that a code path runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_lens.zoo.tokenizer import build_char_tokenizer

__all__ = ["ARCHITECTURES", "MARKER_FILE", "ZOO_VERSION", "tiny_checkpoint"]

#: Bumped whenever a change here changes what gets built; stale builds are then rebuilt.
ZOO_VERSION = 1
#: Written last into a finished build; its presence marks the checkpoint as complete.
MARKER_FILE = "vlm_lens_zoo.json"

#: Supported architecture keys (also the parametrisation list of the test-suite).
ARCHITECTURES: tuple[str, ...] = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl", "gemma3", "llava")

# Overrides key that configures the image processor instead of the model config.
_IMAGE_PROCESSOR_KEY = "image_processor"

# --------------------------------------------------------------------------------------------
# Chat templates (written for the zoo; they render the same text as the real templates for
# system/user/assistant messages with text and image items).
# --------------------------------------------------------------------------------------------


def _qwen_chat_template(default_system: str | None) -> str:
    """Qwen-VL ChatML template; Qwen2-VL/2.5-VL add a default system turn, Qwen3-VL does not."""
    default_turn = ""
    if default_system is not None:
        default_turn = (
            "{%- if loop.first and message['role'] != 'system' -%}"
            "{{- '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' -}}"
            "{%- endif -%}"
        )
    return (
        "{%- set image_count = namespace(value=0) -%}"
        "{%- set video_count = namespace(value=0) -%}"
        "{%- for message in messages -%}"
        + default_turn
        + "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['content'] is string -%}"
        "{{- message['content'] -}}"
        "{%- else -%}"
        "{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
        "{%- set image_count.value = image_count.value + 1 -%}"
        "{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}"
        "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
        "{%- elif item['type'] == 'video' or 'video' in item -%}"
        "{%- set video_count.value = video_count.value + 1 -%}"
        "{%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}"
        "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
        "{%- elif 'text' in item -%}"
        "{{- item['text'] -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


# Gemma3: the system text is merged into the first user turn, "assistant" is called "model".
_GEMMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set prefix = namespace(text='') -%}"
    "{%- set turns = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set prefix.text = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}"
    "{%- set prefix.text = messages[0]['content'][0]['text'] + '\\n\\n' -%}"
    "{%- endif -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' -}}"
    "{%- if loop.first -%}{{- prefix.text -}}{%- endif -%}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] | trim -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<start_of_image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] | trim -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

# LLaVA-1.5 (llava-hf): "USER: <image>\n{text} ASSISTANT:"; images first, then texts.
_LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}{{- message['role'] | upper + ': ' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] + ' ' -}}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] + ' ' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _qwen_tokenizer(chat_template: str):
    # Qwen keeps its special tokens after the ordinary vocabulary and adds no BOS.
    return build_char_tokenizer(
        trailing_special_tokens=_QWEN_SPECIALS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        named_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        chat_template=chat_template,
    )


def _gemma3_tokenizer():
    # Gemma: <pad>=0, <eos>=1, <bos>=2, <unk>=3 as in the real vocabulary; BOS is prepended.
    return build_char_tokenizer(
        leading_special_tokens=("<pad>", "<eos>", "<bos>", "<unk>"),
        trailing_special_tokens=(
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        # Gemma3Processor reads these three from the tokenizer (PITFALLS 1).
        named_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
        add_bos_token=True,
        chat_template=_GEMMA3_CHAT_TEMPLATE,
    )


def _llava_tokenizer():
    # Llama: <unk>=0, <s>=1, </s>=2; LLaVA-1.5 appends <image> and <pad>. BOS is prepended.
    return build_char_tokenizer(
        leading_special_tokens=("<unk>", "<s>", "</s>"),
        trailing_special_tokens=("<image>", "<pad>"),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        named_special_tokens={"image_token": "<image>"},
        add_bos_token=True,
        chat_template=_LLAVA_CHAT_TEMPLATE,
    )


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------


def merge_overrides(base: Mapping, overrides: Mapping) -> dict:
    """Recursively merge ``overrides`` into a copy of ``base`` (dicts merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_overrides(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _given(overrides: Mapping, *path: str) -> bool:
    """Whether the user set ``overrides[path[0]][path[1]]...`` explicitly."""
    node: Any = overrides
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def _derive_text(text: dict, overrides: Mapping, vocab_size: int, *, store_head_dim=True) -> int:
    """Keep a text config consistent after overrides: vocab size and head_dim (returned).

    ``store_head_dim=False`` for configs without a ``head_dim`` field (Qwen2/2.5-VL), whose
    attention always uses hidden_size // num_attention_heads.
    """
    if _given(overrides, "text_config", "vocab_size"):
        if text["vocab_size"] < vocab_size:
            raise ValueError(f"vocab_size {text['vocab_size']} < tokenizer size {vocab_size}")
    else:
        text["vocab_size"] = vocab_size
    if not store_head_dim:
        return text["hidden_size"] // text["num_attention_heads"]
    if not _given(overrides, "text_config", "head_dim"):
        text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    return text["head_dim"]


def _mrope_section(head_dim: int, interleaved: bool) -> list[int]:
    """Split head_dim/2 rotary frequencies into (temporal, height, width) sections.

    Scales the real splits ([16, 24, 24] for Qwen2/2.5-VL, interleaved [24, 20, 20] for Qwen3-VL,
    both of 64) to ``head_dim // 2``; the sections always sum to ``head_dim // 2`` (PITFALLS 5).
    """
    half = head_dim // 2
    side = round(half * (20 if interleaved else 24) / 64)
    if interleaved:  # Qwen3-VL picks h/w frequencies at indices 1, 4, 7.. and 2, 5, 8..
        side = min(side, (half - 1) // 3)
    side = max(side, 1)
    return [half - 2 * side, side, side]


def _check_tokens(config: Any, tokenizer: Any, expected: Mapping[str, str]) -> None:
    for attr, token in expected.items():
        got = getattr(config, attr)
        want = tokenizer.convert_tokens_to_ids(token)
        if got != want:
            raise AssertionError(f"config.{attr}={got} but tokenizer id of {token!r} is {want}")


# --------------------------------------------------------------------------------------------
# Per-architecture recipes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recipe:
    model_class: str  # attribute of `transformers`
    tokenizer: Callable[[], Any]
    config: Callable[[Any, Mapping], Any]  # (tokenizer, overrides) -> config
    processor: Callable[[Any, Any, Mapping], Any]  # (tokenizer, config, image kwargs) -> processor
    # Token ids the generation config stops on / pads with, as tokens.
    eos_tokens: tuple[str, ...]
    pad_token: str
    bos_token: str | None
    # Tokens that mark images in the ids (a given tokenizer must have each as one token).
    image_tokens: tuple[str, ...]


def _qwen_text_defaults() -> dict:
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }


def _qwen_ids(tok) -> dict:
    return {
        "image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>"),
    }


def _qwen_text_ids(tok) -> dict:
    return {
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
    }


_QWEN_TOKEN_ATTRS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def _finish_qwen_text(cfg: dict, overrides: Mapping, tok, interleaved: bool) -> None:
    text = cfg["text_config"]
    # Qwen3-VL has a head_dim field (interleaved mrope); Qwen2/2.5-VL derive it
    head_dim = _derive_text(text, overrides, len(tok), store_head_dim=interleaved)
    text.update(_qwen_text_ids(tok))
    rope = text.setdefault("rope_parameters", {})
    if not _given(overrides, "text_config", "rope_parameters", "mrope_section"):
        rope["mrope_section"] = _mrope_section(head_dim, interleaved)
    if interleaved:
        rope.setdefault("mrope_interleaved", True)
    if sum(rope["mrope_section"]) != head_dim // 2:
        raise ValueError(
            f"mrope_section {rope['mrope_section']} must sum to head_dim/2 = {head_dim // 2}"
        )
    cfg.update(_qwen_ids(tok))


def _qwen3_vl_config(tok, overrides: Mapping):
    from transformers import Qwen3VLConfig

    cfg = {
        "text_config": _qwen_text_defaults(),
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 256,  # a 16 x 16 table, interpolated to the grid
        },
        "tie_word_embeddings": False,
    }
    cfg = merge_overrides(cfg, overrides)
    _finish_qwen_text(cfg, overrides, tok, interleaved=True)
    vision = cfg["vision_config"]
    if not _given(overrides, "vision_config", "out_hidden_size"):
        vision["out_hidden_size"] = cfg["text_config"]["hidden_size"]
    if not _given(overrides, "vision_config", "deepstack_visual_indexes"):
        depth = vision["depth"]  # evenly spaced vision layers feed the first text layers
        vision["deepstack_visual_indexes"] = sorted({(depth * (j + 1)) // 4 for j in range(3)})
    config = Qwen3VLConfig(**cfg)
    _check_tokens(config, tok, _QWEN_TOKEN_ATTRS)
    return config


def _qwen2_5_vl_config(tok, overrides: Mapping):
    from transformers import Qwen2_5_VLConfig

    cfg = {
        "text_config": _qwen_text_defaults(),
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "tie_word_embeddings": False,
    }
    cfg = merge_overrides(cfg, overrides)
    _finish_qwen_text(cfg, overrides, tok, interleaved=False)
    vision = cfg["vision_config"]
    if not _given(overrides, "vision_config", "out_hidden_size"):
        vision["out_hidden_size"] = cfg["text_config"]["hidden_size"]
    if not _given(overrides, "vision_config", "window_size"):
        # windows of 2 x 2 merged tokens, so window attention is really exercised
        vision["window_size"] = vision["patch_size"] * vision["spatial_merge_size"] * 2
    if not _given(overrides, "vision_config", "fullatt_block_indexes"):
        vision["fullatt_block_indexes"] = list(range(1, vision["depth"], 2))
    config = Qwen2_5_VLConfig(**cfg)
    _check_tokens(config, tok, _QWEN_TOKEN_ATTRS)
    return config


def _qwen2_vl_config(tok, overrides: Mapping):
    from transformers import Qwen2VLConfig

    cfg = {
        "text_config": _qwen_text_defaults(),
        "vision_config": {
            "depth": 2,
            "embed_dim": 32,
            "mlp_ratio": 2,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "tie_word_embeddings": False,
    }
    cfg = merge_overrides(cfg, overrides)
    _finish_qwen_text(cfg, overrides, tok, interleaved=False)
    if not _given(overrides, "vision_config", "hidden_size"):
        # Qwen2-VL's vision `hidden_size` is the merger's output width = text hidden size
        cfg["vision_config"]["hidden_size"] = cfg["text_config"]["hidden_size"]
    config = Qwen2VLConfig(**cfg)
    _check_tokens(config, tok, _QWEN_TOKEN_ATTRS)
    return config


def _qwen_image_processor_kwargs(vision, image_kwargs: Mapping, mean_std: tuple) -> dict:
    factor = vision.patch_size * vision.spatial_merge_size
    kwargs = {
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "merge_size": vision.spatial_merge_size,
        # 64x64 -> upscaled to 4 x 4 merged tokens; at most 8 x 8 merged tokens per image
        "size": {"shortest_edge": (4 * factor) ** 2, "longest_edge": (8 * factor) ** 2},
        "image_mean": list(mean_std[0]),
        "image_std": list(mean_std[1]),
    }
    return merge_overrides(kwargs, image_kwargs)


def _qwen_processor(processor_cls: str, video_cls: str, mean_std: tuple):
    def build(tok, config, image_kwargs: Mapping):
        import transformers
        from transformers import Qwen2VLImageProcessor

        kwargs = _qwen_image_processor_kwargs(config.vision_config, image_kwargs, mean_std)
        image_processor = Qwen2VLImageProcessor(**kwargs)
        video_kwargs = {k: v for k, v in kwargs.items() if k != "size"}
        video_processor = getattr(transformers, video_cls)(**video_kwargs)
        return getattr(transformers, processor_cls)(
            image_processor=image_processor,
            tokenizer=tok,
            video_processor=video_processor,
            chat_template=tok.chat_template,
        )

    return build


def _gemma3_config(tok, overrides: Mapping):
    from transformers import Gemma3Config

    cfg = {
        "text_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "sliding_window": 512,
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "vision_use_head": False,
        },
        "mm_tokens_per_image": 4,  # 4 x 4 patches avg-pooled to 2 x 2
        "tie_word_embeddings": True,
    }
    cfg = merge_overrides(cfg, overrides)
    text = cfg["text_config"]
    _derive_text(text, overrides, len(tok))
    if not _given(overrides, "text_config", "query_pre_attn_scalar"):
        text["query_pre_attn_scalar"] = text["head_dim"]
    if not _given(overrides, "text_config", "layer_types"):
        # alternate local (sliding) and global layers so both code paths are exercised
        text["layer_types"] = [
            "full_attention" if i % 2 else "sliding_attention"
            for i in range(text["num_hidden_layers"])
        ]
    text.update(
        bos_token_id=tok.convert_tokens_to_ids("<bos>"),
        eos_token_id=tok.convert_tokens_to_ids("<eos>"),
        pad_token_id=tok.convert_tokens_to_ids("<pad>"),
    )
    cfg.update(
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
    )
    vision = cfg["vision_config"]
    side = math.isqrt(cfg["mm_tokens_per_image"])
    patches = vision["image_size"] // vision["patch_size"]
    if side * side != cfg["mm_tokens_per_image"] or patches % side:
        raise ValueError(
            f"mm_tokens_per_image={cfg['mm_tokens_per_image']} must be a square whose side divides "
            f"image_size/patch_size={patches}"
        )
    config = Gemma3Config(**cfg)
    _check_tokens(
        config,
        tok,
        {
            "image_token_id": "<image_soft_token>",
            "boi_token_id": "<start_of_image>",
            "eoi_token_id": "<end_of_image>",
        },
    )
    return config


def _gemma3_processor(tok, config, image_kwargs: Mapping):
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    size = config.vision_config.image_size
    kwargs = merge_overrides(
        {
            "size": {"height": size, "width": size},
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "do_pan_and_scan": False,
        },
        image_kwargs,
    )
    return Gemma3Processor(
        image_processor=Gemma3ImageProcessor(**kwargs),
        tokenizer=tok,
        chat_template=tok.chat_template,
        image_seq_length=config.mm_tokens_per_image,  # must match the config (PITFALLS 2)
    )


def _llava_config(tok, overrides: Mapping):
    from transformers import LlavaConfig

    cfg = {
        "text_config": {
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,  # vision_feature_layer=-2 reads the first layer's output
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 32,
        },
        "vision_feature_select_strategy": "default",  # drop CLS
        "vision_feature_layer": -2,
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": False,
    }
    cfg = merge_overrides(cfg, overrides)
    _derive_text(cfg["text_config"], overrides, len(tok))
    cfg["text_config"].update(
        bos_token_id=tok.convert_tokens_to_ids("<s>"),
        eos_token_id=tok.convert_tokens_to_ids("</s>"),
        pad_token_id=tok.convert_tokens_to_ids("<pad>"),
    )
    vision = cfg["vision_config"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    cfg["image_seq_length"] = patches + (
        0 if cfg["vision_feature_select_strategy"] == "default" else 1
    )
    cfg["image_token_index"] = tok.convert_tokens_to_ids("<image>")
    config = LlavaConfig(**cfg)
    _check_tokens(config, tok, {"image_token_index": "<image>"})
    return config


def _llava_processor(tok, config, image_kwargs: Mapping):
    from transformers import CLIPImageProcessor, LlavaProcessor

    size = config.vision_config.image_size
    kwargs = merge_overrides(
        {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}},
        image_kwargs,
    )
    return LlavaProcessor(
        image_processor=CLIPImageProcessor(**kwargs),
        tokenizer=tok,
        patch_size=config.vision_config.patch_size,  # required (PITFALLS 6)
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # the CLIP CLS token (PITFALLS 6)
        chat_template=tok.chat_template,
    )


_CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

#: The special tokens every Qwen-VL recipe shares.
_QWEN_SPECIAL: dict[str, Any] = {
    "eos_tokens": ("<|im_end|>", "<|endoftext|>"),
    "pad_token": "<|endoftext|>",
    "bos_token": "<|endoftext|>",
    "image_tokens": tuple(_QWEN_TOKEN_ATTRS.values()),
}
_RECIPES: dict[str, _Recipe] = {
    "qwen3_vl": _Recipe(
        model_class="Qwen3VLForConditionalGeneration",
        tokenizer=lambda: _qwen_tokenizer(_qwen_chat_template(None)),
        config=_qwen3_vl_config,
        processor=_qwen_processor("Qwen3VLProcessor", "Qwen3VLVideoProcessor", _HALF_MEAN_STD),
        **_QWEN_SPECIAL,
    ),
    "qwen2_5_vl": _Recipe(
        model_class="Qwen2_5_VLForConditionalGeneration",
        tokenizer=lambda: _qwen_tokenizer(_qwen_chat_template("You are a helpful assistant.")),
        config=_qwen2_5_vl_config,
        processor=_qwen_processor("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", _CLIP_MEAN_STD),
        **_QWEN_SPECIAL,
    ),
    "qwen2_vl": _Recipe(
        model_class="Qwen2VLForConditionalGeneration",
        tokenizer=lambda: _qwen_tokenizer(_qwen_chat_template("You are a helpful assistant.")),
        config=_qwen2_vl_config,
        processor=_qwen_processor("Qwen2VLProcessor", "Qwen2VLVideoProcessor", _CLIP_MEAN_STD),
        **_QWEN_SPECIAL,
    ),
    "gemma3": _Recipe(
        model_class="Gemma3ForConditionalGeneration",
        tokenizer=_gemma3_tokenizer,
        config=_gemma3_config,
        processor=_gemma3_processor,
        eos_tokens=("<eos>", "<end_of_turn>"),
        pad_token="<pad>",
        bos_token="<bos>",
        image_tokens=("<image_soft_token>", "<start_of_image>", "<end_of_image>"),
    ),
    "llava": _Recipe(
        model_class="LlavaForConditionalGeneration",
        tokenizer=_llava_tokenizer,
        config=_llava_config,
        processor=_llava_processor,
        eos_tokens=("</s>",),
        pad_token="<pad>",
        bos_token="<s>",
        image_tokens=("<image>",),
    ),
}
assert tuple(_RECIPES) == ARCHITECTURES

# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _reinitialise(model: nn.Module) -> None:
    """Draw every matrix-shaped weight from N(0, 1/fan_in) (uses the current torch RNG).

    HF's default init (std 0.02) leaves a tiny model nearly constant: attention is almost uniform
    and images barely move the logits. With variance-preserving weights activations keep unit
    scale, attention patterns are peaked and the image visibly changes the output. Embedding
    tables get unit-scale rows (after Gemma's sqrt(d) embedding scale). Norm weights and biases
    (1-D) keep HF's initialisation. This also replaces Gemma3's zero-initialised
    ``mm_input_projection_weight`` (PITFALLS 3).
    """
    done: set[int] = set()  # tied weights (Gemma3's lm_head) are drawn once
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or id(weight) in done:
            continue
        if isinstance(module, nn.Embedding):
            std = 1.0 / float(getattr(module, "scalar_embed_scale", 1.0))
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            std = weight[0].numel() ** -0.5  # fan_in: Linear [out, in], Conv [out, in, *kernel]
        else:
            continue  # norms
        weight.normal_(0.0, std)
        done.add(id(weight))
    for name, param in model.named_parameters():
        if param.ndim < 2 or id(param) in done:
            continue
        if name.endswith("mm_input_projection_weight"):
            param.normal_(0.0, param.shape[0] ** -0.5)  # used as x @ W: [vision_d, text_d]
        else:
            raise AssertionError(f"no initialisation rule for {name} {tuple(param.shape)}")


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _spec(arch: str, seed: int, overrides: Mapping, tokenizer_dir: Path | None) -> dict:
    normalised = json.loads(json.dumps(overrides, sort_keys=True, default=str))
    spec = {"arch": arch, "seed": seed, "overrides": normalised, "zoo_version": ZOO_VERSION}
    if tokenizer_dir is not None:  # a changed tokenizer file means a different build
        spec["tokenizer"] = _dir_digest(tokenizer_dir)
    return spec


def _dir_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _load_tokenizer(recipe: _Recipe, tokenizer_dir: Path) -> Any:
    """The tokenizer saved in ``tokenizer_dir``, checked for what the recipe relies on."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    needed = (*recipe.eos_tokens, recipe.pad_token, recipe.bos_token, *recipe.image_tokens)
    missing = [
        t
        for t in dict.fromkeys(n for n in needed if n is not None)
        if tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(t)) != t
    ]
    if missing:
        raise ValueError(
            f"the tokenizer in {tokenizer_dir} has no single token for {missing}, which a "
            f"{recipe.model_class} checkpoint needs"
        )
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has no chat template")
    return tokenizer


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(path: Path, spec: Mapping) -> bool:
    marker = _read_marker(path)
    return marker is not None and marker.get("spec") == spec


def config_and_processor(
    arch: str, tokenizer_dir: Path | None = None, **config_overrides: Any
) -> tuple[Any, Any]:
    """The config and processor `tiny_checkpoint` would save, built in memory (no weights):
    for building a model of any size directly, e.g. `model_cls._from_config(config)` on a GPU
    with a real checkpoint's dimensions as `config_overrides`."""
    if arch not in _RECIPES:
        raise ValueError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    recipe = _RECIPES[arch]
    overrides = dict(config_overrides)
    image_kwargs = overrides.pop(_IMAGE_PROCESSOR_KEY, None) or {}
    if tokenizer_dir is None:
        tokenizer = recipe.tokenizer()
    else:
        tokenizer = _load_tokenizer(recipe, tokenizer_dir)
    config = recipe.config(tokenizer, overrides)
    return config, recipe.processor(tokenizer, config, image_kwargs)


def model_class(arch: str) -> str:
    """The transformers class name of `arch`'s model."""
    return _RECIPES[arch].model_class


def _build(
    arch: str, target: Path, seed: int, overrides: Mapping, tokenizer_dir: Path | None
) -> None:
    import transformers

    recipe = _RECIPES[arch]
    config, processor = config_and_processor(arch, tokenizer_dir, **overrides)
    tokenizer = processor.tokenizer
    config.dtype = torch.float32

    model_cls = getattr(transformers, recipe.model_class)
    with torch.random.fork_rng(devices=[]):  # deterministic, leaves the caller's RNG alone
        torch.manual_seed(seed)
        model = model_cls(config)
        _reinitialise(model)
    model.eval()

    ids = tokenizer.convert_tokens_to_ids
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids(recipe.bos_token) if recipe.bos_token else None,
        eos_token_id=[ids(t) for t in recipe.eos_tokens],
        pad_token_id=ids(recipe.pad_token),
        do_sample=False,
    )
    model.save_pretrained(target)
    processor.save_pretrained(target)


def _make_readable(root: Path) -> None:
    """Give the build the usual 0755/0644 modes (``mkdtemp`` makes directories private)."""
    root.chmod(0o755)
    for path in root.iterdir():
        if path.is_file():
            path.chmod(0o644)


def tiny_checkpoint(
    arch: str,
    directory: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    seed: int = 0,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    **config_overrides: Any,
) -> Path:
    """Build (once) a tiny random-weight checkpoint of ``arch`` and return its directory.

    Args:
        arch: one of :data:`ARCHITECTURES` (``"qwen3_vl"``, ``"qwen2_5_vl"``, ``"qwen2_vl"``,
            ``"gemma3"``, ``"llava"``).
        directory: parent directory. The checkpoint goes to ``directory/<arch>`` for the default
            build (``seed=0``, no overrides, character-level tokenizer), else to
            ``directory/<arch>-<hash of settings>``.
        overwrite: rebuild even if a complete checkpoint with the same settings exists.
        seed: seeds the weights; the same seed gives byte-identical safetensors.
        tokenizer_dir: a directory with a real tokenizer (``tokenizer.json``,
            ``tokenizer_config.json``) and its chat template, used instead of the
            character-level one; the vocabulary size and special token ids follow it (see
            :mod:`vlm_lens.zoo.real_vocab` for the real Qwen, Gemma3 and LLaVA ones).
        **config_overrides: merged into the model config before it is built. Nested dicts merge
            key by key, e.g. ``text_config={"hidden_size": 128, "num_hidden_layers": 6}``;
            other values replace. Dependent values follow unless given explicitly: vocab size and
            all special token ids (from the tokenizer), ``head_dim``, Qwen's ``mrope_section``,
            the vision output width (= text hidden size), Qwen3-VL deepstack layers, Qwen2.5-VL
            window/full-attention layers, Gemma3 layer types and the processors' patch/merge/
            image sizes and image token counts. The one non-config key, ``image_processor={...}``,
            is merged into the image processor's arguments (e.g. Qwen ``size={"shortest_edge":
            min_pixels, "longest_edge": max_pixels}``).

    Returns:
        The checkpoint directory: loadable with ``AutoConfig``/``AutoProcessor``/
        ``AutoModelForImageTextToText.from_pretrained`` (or the concrete model class).

    Raises:
        ValueError: unknown ``arch`` (the message lists the supported keys), inconsistent
            overrides, or a ``tokenizer_dir`` that lacks a token or chat template the
            architecture needs.
    """
    if arch not in _RECIPES:
        raise ValueError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    tokenizer_path = None if tokenizer_dir is None else Path(tokenizer_dir)
    if tokenizer_path is not None and not (tokenizer_path / "tokenizer_config.json").is_file():
        raise ValueError(f"tokenizer_dir {tokenizer_path} has no tokenizer_config.json")
    spec = _spec(arch, seed, config_overrides, tokenizer_path)
    if seed == 0 and not config_overrides and tokenizer_path is None:
        name = arch
    else:
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{arch}-{digest}"
    parent = Path(directory)
    target = parent / name
    if not overwrite and _is_complete(target, spec):
        return target

    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=parent))
    try:
        _build(arch, staging, seed, config_overrides, tokenizer_path)
        marker = {"spec": spec, "model_class": _RECIPES[arch].model_class}
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _make_readable(staging)
        if target.exists():
            if not overwrite and _is_complete(target, spec):
                return target  # another process finished the same build first
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
