"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): a SigLIP vision tower, a
projector, a Qwen2 language model, and any-resolution images.

An image alone in its prompt is read twice: a thumbnail (the image resized to the tower's
square input: side x side tokens), then the image resized to the best of the configured grid
pinpoints, cut into tower-sized crops whose features are stitched back into one grid, the
padding rows or columns removed, downscaled when it exceeds `anyres_max_N` crops, and an
image-newline embedding appended after every row. Both carry the `<image>` token id in the
input ids. So the layout is two tiles: the thumbnail and the whole-image grid whose rows are
followed by one marker each. An image in a prompt with several images is the thumbnail only,
followed by one image-newline.

Tiny checkpoint, one 64x64 image: a 4 x 4 thumbnail, then an 8 x 8 grid (2 x 2 crops of 4 x 4)
with 8 newlines: 88 x ``<image>``.

Not for: LLaVA-1.5 (fixed square grid: `llava.py`).
"""

from __future__ import annotations

import math
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
    TINY_SIGLIP,
    check_tokens,
    derive_text,
    merge_overrides,
    text_token_ids,
    tiny_text,
)


def _best_resolution(size: tuple[int, int], pinpoints: list) -> tuple[int, int]:
    """The pinpoint (height, width) that keeps most of the image's pixels after an
    aspect-preserving fit and wastes least (the image processor's choice)."""
    from transformers.image_processing_utils import select_best_resolution

    return tuple(select_best_resolution(size, pinpoints))


def _detail_grid(config: Any, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of the whole-image grid of an image of `size` (height, width)."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    best_h, best_w = _best_resolution(size, config.image_grid_pinpoints)
    rows = best_h // vision.image_size * side
    cols = best_w // vision.image_size * side
    height, width = size
    # The crops cover the image fitted into the pinpoint and padded: drop the padding.
    if width / height > cols / rows:
        padding = (rows - int(round(height * (cols / width), 7))) // 2
        rows -= 2 * padding
    else:
        padding = (cols - int(round(width * (rows / height), 7))) // 2
        cols -= 2 * padding
    max_crops = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
    ratio = math.sqrt(rows * cols / (max_crops * side**2))
    if ratio > 1.1:  # bilinear downscale to about max_crops crops' worth
        rows, cols = int(rows // ratio), int(cols // ratio)
    return rows, cols


def _layout(
    config: Any, processor: Any, processor_out: dict, sizes: list[tuple[int, int]]
) -> list[ImageLayout]:
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    per_prompt = processor_out.get("batch_num_images")
    if per_prompt is None:  # the model then tiles every image
        alone = [True] * len(sizes)
    else:
        alone = [int(n) == 1 for n in per_prompt.tolist() for _ in range(int(n))]
    layouts: list[ImageLayout] = []
    for size, single in zip(sizes, alone, strict=True):
        if single:
            grid = _detail_grid(config, size)
            layouts.append(
                (TileLayout((side, side), thumbnail=True), TileLayout(grid, row_markers=1))
            )
        else:
            layouts.append((TileLayout((side, side)), 1))
    return layouts


# llava-hf/llava-onevision-qwen2-*-hf: "<|im_start|>user <image>\n{text}<|im_end|>
# <|im_start|>assistant\n"; images (then videos) first, each text after a newline, no default
# system turn. Read from huggingface/transformers
# tests/models/llava_onevision/test_processing_llava_onevision.py (prepare_processor_dict).
REAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2's specials after the ordinary vocabulary; OneVision adds <image> and <video> after
# <|im_end|> (151646, 151647 in the real vocabulary). No BOS.
_CHAR_TOKENIZER = dict(
    trailing_special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    unk_token="<unk>",
    named_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    chat_template=REAL_CHAT_TEMPLATE,
)

_TOKEN_ATTRS = {"image_token_index": "<image>", "video_token_index": "<video>"}
_HALF_MEAN_STD = [0.5, 0.5, 0.5]  # SigLIP


def _pinpoints(image_size: int, most: int) -> list[list[int]]:
    """Every (rows x columns) arrangement of 1..`most` crops per side, in pixels."""
    return [
        [a * image_size, b * image_size] for a in range(1, most + 1) for b in range(1, most + 1)
    ]


def _config(tok, overrides: Mapping):
    from transformers import LlavaOnevisionConfig

    cfg = {
        "text_config": tiny_text("qwen2", 1e-6),
        "vision_config": dict(TINY_SIGLIP),
        "vision_feature_select_strategy": "full",
        "vision_feature_layer": -1,
        "vision_aspect_ratio": "anyres_max_9",
        "tie_word_embeddings": False,
    }
    cfg = merge_overrides(cfg, overrides)
    if "image_grid_pinpoints" not in overrides:
        cfg["image_grid_pinpoints"] = _pinpoints(cfg["vision_config"]["image_size"], 6)
    derive_text(cfg["text_config"], overrides, len(tok), store_head_dim=False)
    cfg["text_config"].update(
        text_token_ids(tok, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    )
    cfg.update({attr: tok.convert_tokens_to_ids(t) for attr, t in _TOKEN_ATTRS.items()})
    config = LlavaOnevisionConfig(**cfg)
    check_tokens(config, tok, _TOKEN_ATTRS)
    return config


def _processor(tok, config, image_kwargs: Mapping):
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    size = config.vision_config.image_size
    kwargs = merge_overrides(
        {
            "size": {"height": size, "width": size},
            "image_grid_pinpoints": config.image_grid_pinpoints,
            "image_mean": _HALF_MEAN_STD,
            "image_std": _HALF_MEAN_STD,
        },
        image_kwargs,
    )
    side = size // config.vision_config.patch_size
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(**kwargs),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(
            size={"height": size, "width": size},
            image_mean=_HALF_MEAN_STD,
            image_std=_HALF_MEAN_STD,
        ),
        num_image_tokens=side * side,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio=config.vision_aspect_ratio,
        chat_template=tok.chat_template,
    )


_ONEVISION_ADDED = ("<image>", "<video>")  # 151646, 151647


def _compose_tokenizer(files: Path, out: Path, chat_template: str | None) -> None:
    """llava-onevision-qwen2-*-hf's tokenizer files: Qwen2's first three special tokens, then
    <image> and <video> where Qwen2/3 keep <|object_ref_start|> and <|object_ref_end|>."""
    write_qwen2_tokenizer(
        files,
        out,
        chat_template,
        n_specials=3,
        added=_ONEVISION_ADDED,
        named={"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *_ONEVISION_ADDED]},
    )


ARCHITECTURE = Architecture(
    title="LLaVA-OneVision",
    family="llava_onevision",
    released="2024-08",
    adapter=Adapter("llava_onevision", "LlavaOnevisionForConditionalGeneration", layout=_layout),
    tiny=TinyRecipe(
        char_tokenizer=_CHAR_TOKENIZER,
        config=_config,
        processor=_processor,
        eos_tokens=("<|im_end|>", "<|endoftext|>"),
        pad_token="<|endoftext|>",
        bos_token=None,
        image_tokens=("<image>", "<video>"),
    ),
    # Qwen2's vocabulary from the Qwen3 package (same ordinary tokens and first specials), with
    # OneVision's two added tokens. SigLIP-so400m/14 at 384: a 27 x 27 thumbnail, crops of
    # 384 on 1..6 x 1..6 pinpoints, at most 9 crops' worth of detail.
    real_vocab=RealVocab(
        package=QWEN_PACKAGE,
        chat_template=REAL_CHAT_TEMPLATE,
        settings={
            **REAL_VOCAB_TINY_TEXT,
            "vision_config": {"image_size": 384, "patch_size": 14},
        },
        compose=_compose_tokenizer,
    ),
)
