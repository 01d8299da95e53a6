"""The one attention function through which a hooked language model computes attention.

HF attention modules look their attention function up by name at call time
(`transformers.AttentionInterface`). We register ``"vlm_lens"`` there and select it
for the language model only (the vision tower keeps its own). Per layer it computes::

    q, k, v (after rotary)                         -> hook_q, hook_k, hook_v  [batch, pos, head, d_head]
    scores  = q @ k^T * scale (+ softcap) + mask   -> hook_attn_scores  [batch, head, query, key]
    pattern = softmax(scores)                      -> hook_pattern      [batch, head, query, key]
    z       = pattern @ v                          -> hook_z            [batch, query, head, d_head]

so an edit at `hook_pattern` changes `z` and everything downstream. A layer whose
score/pattern hook points have no hooks (and are not forced) takes PyTorch's SDPA
kernel instead: observing costs only where it is asked for.

The mask function registered beside it is HF's additive float mask, which SDPA also
accepts, so both paths see the same mask (causal, padding, sliding window, Gemma3's
bidirectional image blocks).

Not for: anything outside the language model, or choosing which layers to hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTENTION_NAME = "vlm_lens"


def _expand_kv(
    x: Float[Tensor, "batch kv_head key d"], n_heads: int
) -> Float[Tensor, "batch head key d"]:
    """Grouped-query attention: repeat each key/value head for the query heads that share it."""
    n_kv = x.shape[1]
    if n_kv == n_heads:
        return x
    return x.repeat_interleave(n_heads // n_kv, dim=1)


def _fires(hook_point: HookPoint | None) -> bool:
    # torch keeps a module's forward hooks in this dict; empty means "identity, skip the call".
    return hook_point is not None and (
        bool(hook_point._forward_hooks) or getattr(hook_point, "force", False)
    )


def _qkv_hook(module: torch.nn.Module, name: str, x: Float[Tensor, "batch head pos d"]) -> Tensor:
    """Fire hook_q/k/v in TransformerLens layout `[batch, pos, head, d_head]` (k, v: key-value heads,
    all positions in the cache so far)."""
    hp = getattr(module, name, None)
    if not _fires(hp):
        return x
    return hp(x.transpose(1, 2)).transpose(1, 2)


def vlm_lens_attention(
    module: torch.nn.Module,
    query: Float[Tensor, "batch head query d"],
    key: Float[Tensor, "batch kv_head key d"],
    value: Float[Tensor, "batch kv_head key d"],
    attention_mask: Float[Tensor, "batch 1 query key"] | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **_: object,
) -> tuple[Float[Tensor, "batch query head d"], Float[Tensor, "batch head query key"] | None]:
    n_heads = query.shape[1]
    query, key, value = (
        _qkv_hook(module, name, x)
        for name, x in (("hook_q", query), ("hook_k", key), ("hook_v", value))
    )
    key = _expand_kv(key, n_heads)
    value = _expand_kv(value, n_heads)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]

    hp_scores: HookPoint | None = getattr(module, "hook_attn_scores", None)
    hp_pattern: HookPoint | None = getattr(module, "hook_pattern", None)
    hp_z: HookPoint | None = getattr(module, "hook_z", None)

    pattern = None
    if softcap is None and not (_fires(hp_scores) or _fires(hp_pattern)):
        # Fast path: nobody looks at scores or pattern.
        z = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,
            dropout_p=dropout if module.training else 0.0,
            scale=scaling,
        )
    else:
        # Same operations, in the same order, as HF's eager attention, so logits match it exactly.
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if mask is not None:
            scores = scores + mask
        if _fires(hp_scores):
            scores = hp_scores(scores)
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        if dropout and module.training:
            pattern = F.dropout(pattern, p=dropout, training=True)
        if _fires(hp_pattern):
            pattern = hp_pattern(pattern)
        z = torch.matmul(pattern, value)

    z = z.transpose(1, 2).contiguous()  # [batch, head, query, d] -> [batch, query, head, d]
    if _fires(hp_z):
        z = hp_z(z)
    return z, pattern


def register() -> None:
    """Make ``attn_implementation="vlm_lens"`` known to transformers (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, vlm_lens_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


register()
