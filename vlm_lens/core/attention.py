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

The mask function registered beside it is HF's SDPA mask: a boolean mask (True = may
attend; causal, padding, sliding window, Gemma3's bidirectional image blocks), or None for
plain causal attention without padding, so the fast path gets SDPA's `is_causal` kernels
exactly as HF's SDPA integration does. The explicit path turns it into HF's eager additive
mask (0 where allowed, the dtype's minimum elsewhere), so scores, patterns and logits match
HF's eager attention.

Not for: anything outside the language model, or choosing which layers to hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from vlm_lens.core.hook_points import VLMHookPoint

ATTENTION_NAME = "vlm_lens"


def _expand_kv(
    x: Float[Tensor, "batch kv_head key d"], n_heads: int
) -> Float[Tensor, "batch head key d"]:
    """Grouped-query attention: repeat each key/value head for the query heads that share it."""
    batch, n_kv, n_keys, d = x.shape
    if n_kv == n_heads:
        return x
    rep = n_heads // n_kv  # head h reads kv head h // rep, as repeat_interleave would give
    return x[:, :, None].expand(batch, n_kv, rep, n_keys, d).reshape(batch, n_heads, n_keys, d)


def _causal(n_queries: int, n_keys: int, device: torch.device) -> Bool[Tensor, "1 1 query key"]:
    """Causal mask of the last `n_queries` positions of `n_keys` (True = may attend)."""
    keys = torch.arange(n_keys, device=device)
    rows = torch.arange(n_keys - n_queries, n_keys, device=device)
    return (keys[None, :] <= rows[:, None])[None, None]


def _additive(mask: Tensor, dtype: torch.dtype) -> Float[Tensor, "batch 1 query key"]:
    """HF's eager mask: 0 where attention is allowed, the dtype's minimum elsewhere."""
    if mask.dtype != torch.bool:
        return mask
    return torch.where(
        mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min
    )


def _fires(hook_point: VLMHookPoint | None) -> bool:
    return hook_point is not None and hook_point.fires()


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
    attention_mask: Bool[Tensor, "batch 1 query key"] | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **_: object,
) -> tuple[Float[Tensor, "batch query head d"], Float[Tensor, "batch head query key"] | None]:
    batch, n_heads, n_queries, d_head = query.shape
    query, key, value = (
        _qkv_hook(module, name, x)
        for name, x in (("hook_q", query), ("hook_k", key), ("hook_v", value))
    )
    n_kv = key.shape[1]
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_keys = key.shape[-2]
    mask = None if attention_mask is None else attention_mask[:, :, :, :n_keys]
    if mask is None and n_queries > 1 and n_queries != n_keys:
        # SDPA's is_causal aligns the query rows top-left; spell the mask out when they do not
        # start at key 0 (a prompt chunk after a filled cache).
        mask = _causal(n_queries, n_keys, query.device)

    hp_scores: VLMHookPoint | None = getattr(module, "hook_attn_scores", None)
    hp_pattern: VLMHookPoint | None = getattr(module, "hook_pattern", None)
    hp_z: VLMHookPoint | None = getattr(module, "hook_z", None)

    pattern = None
    fast = softcap is None and not (_fires(hp_scores) or _fires(hp_pattern))
    if fast and n_queries == 1 and n_kv < n_heads and (mask is None or mask.shape[1] == 1):
        # Fast path, one decoding row with grouped-query attention: the query heads sharing a
        # key/value head become that head's query rows (as HF's SDPA integration does), so
        # the KV cache is not copied once per query head at every step.
        z = F.scaled_dot_product_attention(
            query.reshape(batch, n_kv, n_heads // n_kv, d_head),
            key,
            value,
            attn_mask=mask,  # [batch, 1, 1, key] broadcasts over those rows
            dropout_p=dropout if module.training else 0.0,
            scale=scaling,
        ).reshape(batch, n_heads, 1, d_head)
    elif fast:
        # Fast path: nobody looks at scores or pattern.
        z = F.scaled_dot_product_attention(
            query,
            _expand_kv(key, n_heads),
            _expand_kv(value, n_heads),
            attn_mask=mask,
            dropout_p=dropout if module.training else 0.0,
            scale=scaling,
            is_causal=mask is None and n_queries > 1,
        )
    else:
        key = _expand_kv(key, n_heads)
        value = _expand_kv(value, n_heads)
        # Same operations, in the same order, as HF's eager attention, so logits match it exactly.
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if mask is None and n_queries > 1:
            mask = _causal(n_queries, n_keys, scores.device)
        if mask is not None:
            scores = scores + _additive(mask, scores.dtype)
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
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


register()
