"""InternVL3 (`InternVLForConditionalGeneration`): an InternViT vision tower, a pixel-shuffle
(2 x 2 patches into one token) and MLP projector, a Qwen2 language model, and tiled images.

With `crop_to_patches=True` (the processor's default) an image is resized to the grid of
square tiles whose columns/rows ratio is closest to its own aspect ratio (between
`min_patches` and `max_patches` tiles, the GOT-OCR2 image processor's rule), cut into those
tiles row by row, and, when there is more than one, followed by a thumbnail (the whole image
squashed to one tile). Each tile is `side x side` ``<IMG_CONTEXT>`` tokens; the image's
tokens are ``<img>``, the tiles in that order, ``</img>``. So the layout is: one marker, the
detail tiles (row-major, each with its box in the image), the thumbnail, one marker.

The processor drops the tile count (`num_patches` is popped from its output). It is
recovered per image from the token spans (each image is one run of ``<IMG_CONTEXT>``
between its ``<img>`` and ``</img>``: run length / tokens per tile), and the arrangement
of the tiles from the processor's own rule restricted to that count, applied to the image's
original size (which `vlm_lens.core.prepare` passes to the layout): the rule's choice
among the (columns, rows) pairs with that product is the processor's choice.

Tiny checkpoint: tiles of 32 x 32 pixels, patches of 4, so 8 x 8 patches shuffled to 4 x 4
tokens per tile; a 64 x 64 image gives 2 x 2 tiles + the thumbnail: 80 ``<IMG_CONTEXT>``.

Not for: InternVL3.5 with its own image processor, or InternVL2.5 with an InternLM2 language
model (same class, untested here).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlm_lens.architectures._base import (
    Adapter,
    Architecture,
    ImageLayout,
    RealVocab,
    TileLayout,
    TinyRecipe,
)
from vlm_lens.architectures._qwen import PACKAGE as QWEN_PACKAGE
from vlm_lens.architectures._qwen import write_qwen2_tokenizer
from vlm_lens.architectures._recipe import (
    REAL_VOCAB_TINY_TEXT,
    TINY_TEXT,
    check_tokens,
    derive_text,
    merge_overrides,
    text_token_ids,
)


def tokens_per_side(config: Any) -> int:
    """Tokens along each side of one tile (patches per side after the pixel shuffle)."""
    vision = config.vision_config
    return int(vision.image_size[0] // vision.patch_size[0] * config.downsample_ratio)


def tile_grid(config: Any, size: tuple[int, int], n_tiles: int) -> tuple[int, int]:
    """(rows, columns) of the `n_tiles` detail tiles of an image of `size` (height, width):
    the processor's aspect-ratio rule over the arrangements with exactly that many tiles."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    side = config.vision_config.image_size
    cols, rows = get_optimal_tiled_canvas(tuple(size), tuple(side), n_tiles, n_tiles)
    return rows, cols


def _image_runs(config: Any, processor_out: dict) -> list[int]:
    """Length of each run of image-context tokens, batch row by row, left to right (one run
    per image: ``<img>`` and ``</img>`` separate images)."""
    ids = processor_out["input_ids"]
    runs: list[int] = []
    for row in (ids == config.image_token_id).tolist():
        length = 0
        for is_image in [*row, False]:
            if is_image:
                length += 1
            elif length:
                runs.append(length)
                length = 0
    return runs


def _layout(
    config: Any, processor: Any, processor_out: dict, sizes: list[tuple[int, int]]
) -> list[ImageLayout]:
    side = tokens_per_side(config)
    runs = _image_runs(config, processor_out)
    if len(runs) != len(sizes):
        raise ValueError(f"internvl: {len(sizes)} images but {len(runs)} runs of image tokens")
    layouts: list[ImageLayout] = []
    for run, (height, width) in zip(runs, sizes, strict=True):
        n, rest = divmod(run, side * side)
        if rest or not n:
            raise ValueError(
                f"internvl: a run of {run} image tokens is not whole tiles of {side}^2"
            )
        if n == 1:  # one tile: no thumbnail
            layouts.append((1, TileLayout((side, side)), 1))
            continue
        rows, cols = tile_grid(config, (int(height), int(width)), n - 1)
        tiles = tuple(
            TileLayout((side, side), box=(r / rows, c / cols, (r + 1) / rows, (c + 1) / cols))
            for r in range(rows)
            for c in range(cols)
        )
        layouts.append((1, *tiles, TileLayout((side, side), thumbnail=True), 1))
    return layouts


# OpenGVLab/InternVL3-*-hf: "<|im_start|>role\n" then the items in order (an image as
# "<IMG_CONTEXT>\n", a text as is), "<|im_end|>\n"; no default system turn. Read from the
# chat template of huggingface/transformers' InternVL conversion script.
REAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

_NAMED = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# Qwen2's first specials, then InternVL's image tokens (in the real vocabulary after Qwen2.5's
# 22 specials: <img> 151665, </img> 151666, <IMG_CONTEXT> 151667). No BOS.
_CHAR_TOKENIZER = dict(
    trailing_special_tokens=(
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
        "<video>",
    ),
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    unk_token="<unk>",
    named_special_tokens=_NAMED,
    chat_template=REAL_CHAT_TEMPLATE,
)

_TOKEN_ATTRS = {"image_token_id": "<IMG_CONTEXT>"}
_HALF_MEAN_STD = [0.5, 0.5, 0.5]
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


def _config(tok, overrides: Mapping):
    from transformers import InternVLConfig

    cfg = {
        "text_config": {
            "model_type": "qwen2",
            **TINY_TEXT,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        "downsample_ratio": 0.5,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }
    cfg = merge_overrides(cfg, overrides)
    vision = cfg["vision_config"]
    per_side = vision["image_size"] // vision["patch_size"] * cfg["downsample_ratio"]
    cfg["image_seq_length"] = int(per_side) ** 2
    derive_text(cfg["text_config"], overrides, len(tok), store_head_dim=False)
    cfg["text_config"].update(
        text_token_ids(tok, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    )
    cfg["image_token_id"] = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    config = InternVLConfig(**cfg)
    check_tokens(config, tok, _TOKEN_ATTRS)
    return config


def _processor(tok, config, image_kwargs: Mapping):
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    height, width = config.vision_config.image_size
    kwargs = merge_overrides(
        {
            "size": {"height": height, "width": width},
            "crop_to_patches": True,
            "min_patches": 1,
            "max_patches": 12,
            "image_mean": _IMAGENET_MEAN,
            "image_std": _IMAGENET_STD,
        },
        image_kwargs,
    )
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(**kwargs),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(
            size={"height": height, "width": width},
            image_mean=_HALF_MEAN_STD,
            image_std=_HALF_MEAN_STD,
        ),
        image_seq_length=config.image_seq_length,
        chat_template=tok.chat_template,
    )


_QWEN2_SPECIALS = 22  # <|endoftext|> 151643 .. <|file_sep|> 151664 (Qwen2.5 = Qwen3's first 22)
_INTERNVL_ADDED = (
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<video>",
)  # 151665 ..


def _compose_tokenizer(files: Path, out: Path, chat_template: str | None) -> None:
    """InternVL3-*-hf's tokenizer files: Qwen2.5's 22 special tokens, then InternVL's image
    and grounding tokens from 151665, and ``<video>`` after them."""
    write_qwen2_tokenizer(
        files,
        out,
        chat_template,
        n_specials=_QWEN2_SPECIALS,
        added=_INTERNVL_ADDED,
        named={"extra_special_tokens": _NAMED, "model_max_length": 8192},
    )


ARCHITECTURE = Architecture(
    title="InternVL3",
    family="internvl",
    released="2025-04",
    adapter=Adapter(
        "internvl",
        "InternVLForConditionalGeneration",
        layout=_layout,
        image_marker="<IMG_CONTEXT>",
    ),
    tiny=TinyRecipe(
        char_tokenizer=_CHAR_TOKENIZER,
        config=_config,
        processor=_processor,
        eos_tokens=("<|im_end|>", "<|endoftext|>"),
        pad_token="<|endoftext|>",
        bos_token=None,
        image_tokens=("<IMG_CONTEXT>", "<img>", "</img>", "<video>"),
        # InternViT's class token and position table ([1, n, width]): drawn N(0, 1) (the
        # zoo's rule for a leading dimension of 1), like embedding rows.
        bare_matrices=("embeddings.cls_token", "embeddings.position_embeddings"),
    ),
    # Qwen2.5's vocabulary from the Qwen3 package (same ordinary tokens and first 22 specials)
    # with InternVL's added tokens. InternViT-300M at 448 with patches of 14: 32 x 32 patches
    # shuffled to 16 x 16 = 256 tokens per tile, 1..12 tiles plus the thumbnail.
    real_vocab=RealVocab(
        package=QWEN_PACKAGE,
        chat_template=REAL_CHAT_TEMPLATE,
        settings={
            **REAL_VOCAB_TINY_TEXT,
            "vision_config": {"image_size": 448, "patch_size": 14},
        },
        compose=_compose_tokenizer,
    ),
)
