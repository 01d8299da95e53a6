"""Helpers the architecture files share to build a tiny checkpoint's config consistently.

Overrides merge into an architecture's defaults; values that depend on others (vocabulary
size, head_dim, token ids) follow unless the caller set them explicitly.

Not for: building models or writing checkpoints (`vlm_lens.zoo.tiny`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: The text model of a character-level tiny checkpoint (each architecture adds its own keys).
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}

#: The vision tower of a tiny checkpoint (each architecture adds image and patch sizes).
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}

#: A tiny SigLIP vision tower (no pooling head): 32 px images of 8 px patches, 4 x 4 patches.
TINY_SIGLIP = {
    "model_type": "siglip_vision_model",
    **TINY_VISION,
    "image_size": 32,
    "patch_size": 8,
    "vision_use_head": False,
}


def tiny_text(model_type: str, rms_norm_eps: float) -> dict:
    """A tiny text config with default rotary embeddings (theta 10,000)."""
    return {
        "model_type": model_type,
        **TINY_TEXT,
        "rms_norm_eps": rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }


#: Small widths and depths for the real-vocabulary checkpoints; the vocabulary (150k-262k rows)
#: dominates the size either way.
REAL_VOCAB_TINY_TEXT = {
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
}


#: Adapter fields of Gemma 2 / Gemma 3 decoder layers: sandwich norms (attention and MLP outputs
#: pass a norm before the residual stream), RMSNorm weights stored as offsets from 1.
GEMMA_LAYER_FIELDS = dict(
    ln2="pre_feedforward_layernorm",
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    norm_eps="eps",
    norm_weight_offset=1.0,
)


def merge_overrides(base: Mapping, overrides: Mapping) -> dict:
    """Recursively merge ``overrides`` into a copy of ``base`` (dicts merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_overrides(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def given(overrides: Mapping, *path: str) -> bool:
    """Whether the user set ``overrides[path[0]][path[1]]...`` explicitly."""
    node: Any = overrides
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def derive_text(text: dict, overrides: Mapping, vocab_size: int, *, store_head_dim=True) -> int:
    """Keep a text config consistent after overrides: vocab size and head_dim (returned).

    ``store_head_dim=False`` for configs without a ``head_dim`` field, whose attention always
    uses hidden_size // num_attention_heads.
    """
    if given(overrides, "text_config", "vocab_size"):
        if text["vocab_size"] < vocab_size:
            raise ValueError(f"vocab_size {text['vocab_size']} < tokenizer size {vocab_size}")
    else:
        text["vocab_size"] = vocab_size
    if not store_head_dim:
        return text["hidden_size"] // text["num_attention_heads"]
    if not given(overrides, "text_config", "head_dim"):
        text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    return text["head_dim"]


def check_tokens(config: Any, tokenizer: Any, expected: Mapping[str, str]) -> None:
    """Fail unless each ``config.<attr>`` is the tokenizer's id of the token ``expected`` names."""
    for attr, token in expected.items():
        got = getattr(config, attr)
        want = tokenizer.convert_tokens_to_ids(token)
        if got != want:
            raise AssertionError(f"config.{attr}={got} but tokenizer id of {token!r} is {want}")


def text_token_ids(tok: Any, *, bos: str, eos: str, pad: str) -> dict[str, int]:
    """The text config's bos/eos/pad ids, from the tokenizer."""
    ids = tok.convert_tokens_to_ids
    return {"bos_token_id": ids(bos), "eos_token_id": ids(eos), "pad_token_id": ids(pad)}


def derive_gemma_text(text: dict, overrides: Mapping, tok: Any) -> None:
    """Keep a Gemma 2 / Gemma 3 text config consistent after overrides: vocab size and head_dim,
    `query_pre_attn_scalar = head_dim`, alternating local (sliding, even) and global (odd)
    layers so both code paths are exercised, and Gemma's <bos>/<eos>/<pad> ids."""
    derive_text(text, overrides, len(tok))
    if not given(overrides, "text_config", "query_pre_attn_scalar"):
        text["query_pre_attn_scalar"] = text["head_dim"]
    if not given(overrides, "text_config", "layer_types"):
        text["layer_types"] = [
            "full_attention" if i % 2 else "sliding_attention"
            for i in range(text["num_hidden_layers"])
        ]
    text.update(text_token_ids(tok, bos="<bos>", eos="<eos>", pad="<pad>"))
