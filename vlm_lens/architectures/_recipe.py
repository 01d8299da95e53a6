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
