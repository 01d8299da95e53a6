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

Row- and step-selective hooks. A study often needs one query row (the row that predicts the
next token), not the prefill's `[P, P]` pattern. Wrap the hook function with `select`::

    fn = select(record_row, rows="last", steps=[0, 3])     # still fn(tensor, hook)
    model.run_with_hooks(inputs, fwd_hooks=[("blocks.-1.attn.hook_pattern", fn)])

and the layer computes every row's output with SDPA, then scores -> pattern -> z explicitly for
the declared rows only (same operations and order as the explicit path, softcap and mask rows
included), fires the hooks on `[batch, head, rows, key]` and writes those rows' z back. Memory
and time grow as rows x keys, not P x P; no `[P, P]` mask is built for those rows. At a step
that no hook declares, the layer takes SDPA and the hooks are not called. The hook reads the
absolute positions of the rows it holds from `hook.run.row_positions`.

Rows: "last" (the forward's last query row), "answer" (rows at or after the prompt's last
position: the last prompt row at the prefill, the one row at each decoding step), "all", a
slice of this forward's query rows, or a list of absolute positions. Several hooks on one
layer: the layer computes the union of their rows, and each declared hook still sees exactly
its own rows (picked out of the union). A hook that declares nothing (a plain
TransformerLens hook), a backward hook, or a forced hook point (nnsight) makes the layer take
the full explicit path, as before; declared hooks then get their rows sliced out of it.

Chunked full patterns. `select(fn, rows="all", chunk=n)` computes the rows in chunks of `n`
and fires the hooks once per chunk (`hook.run.row_positions` gives the chunk's rows): a reader
of the whole pattern then holds `n x P` at a time instead of `P x P`. An edit returned for a
chunk changes that chunk's output. A plain hook sees the whole `[P, P]` tensor at once, as
TransformerLens promises, so chunking must be asked for.

Not for: anything outside the language model, or choosing which layers to hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from vlm_lens.core.hook_points import VLMHookPoint, check_return
from vlm_lens.core.run_state import RunState

ATTENTION_NAME = "vlm_lens"
RowSpec = Literal["last", "answer", "all"] | slice | Sequence[int]
_ROW_NAMES = ("last", "answer", "all")


class Selection:
    """A hook function with the query rows and decoding steps it needs (built by `select`).

    Called as `fn(tensor, hook)` like any TransformerLens hook: at a step it did not declare it
    returns None without calling `fn`; given more rows than it declared (the layer computed
    the union of several hooks' rows, or the full pattern), it hands `fn` its own rows only
    and writes `fn`'s result back into a copy of the tensor. Return edits: an in-place change
    of a tensor that holds only some of the rows is not written back.
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Any], Tensor | None],
        rows: RowSpec,
        steps: Iterable[int] | None,
        chunk: int | None,
    ):
        if not callable(fn):
            raise TypeError(f"select needs a hook function fn(tensor, hook), got {fn!r}")
        if isinstance(rows, str):
            if rows not in _ROW_NAMES:
                raise ValueError(
                    f"rows must be one of {_ROW_NAMES}, a slice or positions, got {rows!r}"
                )
        elif isinstance(rows, slice):
            if rows.step not in (None, 1):
                raise ValueError(f"a row slice must be contiguous (step 1), got {rows!r}")
        else:
            rows = list(rows)
            if not rows or not all(isinstance(r, int) and r >= 0 for r in rows):
                raise ValueError(f"row positions must be non-negative ints, got {rows!r}")
            rows = sorted(set(rows))
        if steps is not None:
            steps = frozenset(steps)
            if not all(isinstance(s, int) and s >= 0 for s in steps):
                raise ValueError(
                    f"steps must be non-negative ints (0 = prefill), got {sorted(steps)}"
                )
        if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        self.fn, self.rows, self.steps, self.chunk = fn, rows, steps, chunk

    def __repr__(self) -> str:
        steps = "all" if self.steps is None else sorted(self.steps)
        return f"select({self.fn!r}, rows={self.rows!r}, steps={steps})"

    def positions(self, run: RunState) -> Int[Tensor, " row"]:
        """Absolute positions of the query rows this hook needs in the current forward (empty:
        none, e.g. a step it did not declare)."""
        if self.rows == "answer" and run.segments is None:
            raise RuntimeError(
                "rows='answer' needs the inputs' segments (where the prompt ends): run the model "
                "through HookedVLM (model(inputs), run_with_hooks, generate) with inputs from "
                "model.prepare(...)"
            )
        start, n = run.query_start, run.n_queries
        if self.steps is not None and run.step not in self.steps:
            return torch.arange(0)
        if self.rows == "last":
            return torch.arange(start + n - 1, start + n)
        if self.rows == "answer":
            first = max(start, run.segments.prompt_len - 1)
            return torch.arange(first, max(first, start + n))  # empty: a chunk before the answer
        if self.rows == "all":
            return torch.arange(start, start + n)
        if isinstance(self.rows, slice):
            return torch.arange(start, start + n)[self.rows]
        wanted = torch.tensor(self.rows)
        return wanted[(wanted >= start) & (wanted < start + n)]

    def __call__(self, tensor: Float[Tensor, "batch head row key"], hook: Any) -> Tensor | None:
        run: RunState = hook.run
        wanted = self.positions(run)
        if not len(wanted):
            return None
        held = run.row_positions
        # The layer may hold more rows (the union of several hooks' rows, or the full pattern)
        # or fewer (one chunk of them): give fn the rows it declared among those held.
        mine = torch.isin(held, wanted)
        if bool(mine.all()):
            return self.fn(tensor, hook)
        if not bool(mine.any()):
            return None
        index = mine.nonzero().flatten().to(tensor.device)
        previous, run.rows = run.rows, held[mine]
        try:
            out = self.fn(tensor.index_select(2, index), hook)
        finally:
            run.rows = previous
        if out is None:
            return None
        if hook.check_returns:  # before index_copy, whose own error would not name the hook
            check_return(hook.name, tensor.index_select(2, index), out)
        return tensor.index_copy(2, index, out)


def select(
    fn: Callable[[Tensor, Any], Tensor | None],
    rows: RowSpec = "last",
    steps: Iterable[int] | None = None,
    chunk: int | None = None,
) -> Selection:
    """Declare the query rows and steps a `hook_attn_scores` / `hook_pattern` hook needs.

    The result is itself a hook function (`fn(tensor, hook)`); attach it as any other. `rows`:
    "last", "answer", "all", a slice of the forward's query rows or a list of absolute
    positions; `steps`: decoding steps (0 = prefill; None = every step); `chunk`: compute and
    fire in chunks of this many rows (for readers of many rows). See the module docstring.
    """
    return Selection(fn, rows, steps, chunk)


def _expand_kv(
    x: Float[Tensor, "batch kv_head key d"], n_heads: int
) -> Float[Tensor, "batch head key d"]:
    """Grouped-query attention: repeat each key/value head for the query heads that share it."""
    batch, n_kv, n_keys, d = x.shape
    if n_kv == n_heads:
        return x
    rep = n_heads // n_kv  # head h reads kv head h // rep, as repeat_interleave would give
    return x[:, :, None].expand(batch, n_kv, rep, n_keys, d).reshape(batch, n_heads, n_keys, d)


def _causal(
    n_queries: int, n_keys: int, device: torch.device, rows: Tensor | None = None
) -> Bool[Tensor, "1 1 query key"]:
    """Causal mask of the last `n_queries` positions of `n_keys` (True = may attend); `rows`:
    only these query rows (indices into the `n_queries`)."""
    keys = torch.arange(n_keys, device=device)
    if rows is None:
        rows = torch.arange(n_queries, device=device)
    rows = rows.to(device) + (n_keys - n_queries)
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


_FULL = "full"


def _row_plan(
    hook_points: tuple[VLMHookPoint | None, ...], n_queries: int
) -> None | str | list[Int[Tensor, " row"]]:
    """What the firing score/pattern hooks need this forward: None (nothing: SDPA), "full"
    (today's explicit path) or chunks of query row indices (`[row]`, into this forward's rows)."""
    wanted: list[Tensor] = []
    chunk: int | None = None
    run: RunState | None = None
    for hp in hook_points:
        if not _fires(hp):
            continue
        run = hp.run
        if hp.force or hp._backward_hooks or run.n_queries != n_queries:
            return _FULL
        declared = {h.hook.id: h.user_hook for h in hp.fwd_hooks}
        for key in hp._forward_hooks:
            fn = declared.get(key)
            if not isinstance(fn, Selection):
                return _FULL  # a plain hook: the full [query, key] tensor, as TransformerLens gives
            wanted.append(fn.positions(run))
            if fn.chunk is not None:
                chunk = fn.chunk if chunk is None else min(chunk, fn.chunk)
    if run is None or not wanted:
        return None
    rows = torch.unique(torch.cat(wanted)) - run.query_start  # sorted
    if not len(rows):
        return None
    if chunk is None and len(rows) == n_queries:
        return _FULL
    return list(rows.split(chunk or len(rows)))


def _sdpa(
    query: Float[Tensor, "batch head query d"],
    key: Float[Tensor, "batch kv_head key d"],
    value: Float[Tensor, "batch kv_head key d"],
    mask: Tensor | None,
    scaling: float,
    dropout: float,
) -> Float[Tensor, "batch head query d"]:
    batch, n_heads, n_queries, d_head = query.shape
    n_kv = key.shape[1]
    if n_queries == 1 and n_kv < n_heads and (mask is None or mask.shape[1] == 1):
        # One decoding row with grouped-query attention: the query heads sharing a key/value
        # head become that head's query rows (as HF's SDPA integration does), so the KV cache
        # is not copied once per query head at every step.
        return F.scaled_dot_product_attention(
            query.reshape(batch, n_kv, n_heads // n_kv, d_head),
            key,
            value,
            attn_mask=mask,  # [batch, 1, 1, key] broadcasts over those rows
            dropout_p=dropout,
            scale=scaling,
        ).reshape(batch, n_heads, 1, d_head)
    return F.scaled_dot_product_attention(
        query,
        _expand_kv(key, n_heads),
        _expand_kv(value, n_heads),
        attn_mask=mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=mask is None and n_queries > 1,
    )


def _explicit(
    query: Float[Tensor, "batch head row d"],
    key: Float[Tensor, "batch kv_head key d"],
    value: Float[Tensor, "batch kv_head key d"],
    mask: Tensor | None,
    scaling: float,
    softcap: float | None,
    dropout: float,
    n_queries: int,
    rows: Int[Tensor, " row"] | None = None,
    hooks: tuple[VLMHookPoint | None, VLMHookPoint | None] = (None, None),
) -> tuple[Float[Tensor, "batch head row d"], Float[Tensor, "batch head row key"]]:
    """scores -> pattern -> z for the query rows given (`rows`: indices into the forward's
    `n_queries` rows, None = all), firing the score/pattern hooks on them."""
    n_heads, n_keys = query.shape[1], key.shape[-2]
    key = _expand_kv(key, n_heads)
    value = _expand_kv(value, n_heads)
    # Same operations, in the same order, as HF's eager attention, so logits match it exactly.
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is None and n_queries > 1:
        mask = _causal(n_queries, n_keys, scores.device, rows)
    elif mask is not None and rows is not None and mask.shape[2] == n_queries:
        mask = mask[:, :, rows.to(mask.device)]  # slice the boolean rows before converting
    if mask is not None:
        scores = scores + _additive(mask, scores.dtype)
    hp_scores, hp_pattern = hooks
    if _fires(hp_scores):
        scores = hp_scores(scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout:
        pattern = F.dropout(pattern, p=dropout, training=True)
    if _fires(hp_pattern):
        pattern = hp_pattern(pattern)
    return torch.matmul(pattern, value), pattern


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
    n_queries = query.shape[2]
    query, key, value = (
        _qkv_hook(module, name, x)
        for name, x in (("hook_q", query), ("hook_k", key), ("hook_v", value))
    )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    dropout = dropout if module.training else 0.0
    n_keys = key.shape[-2]
    mask = None if attention_mask is None else attention_mask[:, :, :, :n_keys]
    if mask is None and n_queries > 1 and n_queries != n_keys:
        # SDPA's is_causal aligns the query rows top-left; spell the mask out when they do not
        # start at key 0 (a prompt chunk after a filled cache).
        mask = _causal(n_queries, n_keys, query.device)

    hooks = (getattr(module, "hook_attn_scores", None), getattr(module, "hook_pattern", None))
    plan = _row_plan(hooks, n_queries) if (_fires(hooks[0]) or _fires(hooks[1])) else None

    pattern = None
    if plan == _FULL:
        z, pattern = _explicit(
            query, key, value, mask, scaling, softcap, dropout, n_queries, None, hooks
        )
    else:
        # Every row without hooks: SDPA (Gemma2-style softcap has no SDPA kernel: explicit).
        if softcap is None:
            z = _sdpa(query, key, value, mask, scaling, dropout)
        else:
            z = _explicit(query, key, value, mask, scaling, softcap, dropout, n_queries)[0]
        for rows in plan or ():
            run: RunState = hooks[0].run if hooks[0] is not None else hooks[1].run
            previous, run.rows = run.rows, rows + run.query_start
            try:
                z_rows = _explicit(
                    query[:, :, rows.to(query.device)],
                    key,
                    value,
                    mask,
                    scaling,
                    softcap,
                    dropout,
                    n_queries,
                    rows,
                    hooks,
                )[0]
            finally:
                run.rows = previous
            z = z.index_copy(2, rows.to(z.device), z_rows)

    z = z.transpose(1, 2).contiguous()  # [batch, head, query, d] -> [batch, query, head, d]
    hp_z: VLMHookPoint | None = getattr(module, "hook_z", None)
    if _fires(hp_z):
        z = hp_z(z)
    return z, pattern


def register() -> None:
    """Make ``attn_implementation="vlm_lens"`` known to transformers (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, vlm_lens_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


register()
