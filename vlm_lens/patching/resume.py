"""Resume a forward pass at decoder layer L from the corrupted run's residual stream.

In a patching sweep every row of a patched batch is the corrupted input, and a row whose
cell is at layer L equals the corrupted run below L. So the corrupted input runs once in
full (batch 1, the image encoded once) while a `ResumePoint` records, per decoder layer,
the residual stream entering it and the keyword arguments the language model handed it
(attention mask, rotary position embeddings, position ids: each family's own, computed by
HF, including Qwen's multimodal rotary positions and Gemma3's per-layer sliding or
bidirectional masks). A patched batch then starts at its first patched layer::

    layer L ... layer N-1  ->  final norm  ->  lm_head (last position)

calling the HF decoder layers themselves (so every hook point at or after L fires as in a
full pass), with the recorded residual stream and arguments broadcast to the batch. The
vision tower, the embeddings and the layers below L are not run; no pixel tensor is copied.

Positions too. With causal attention, a batch whose rows patch only positions >= p leaves
every position before p as in the corrupted run, at every layer. Such a batch runs the query
positions p.. only: the recorded keys and values of positions < p (after rotary, as HF's
attention hands them to the attention function) go into a KV cache, and the recorded masks,
position ids and rotary embeddings are cut to the rows from p. It is used only where no query
before p may see a key at or after p in any layer run (Gemma3's image tokens see each other
both ways: a patch inside the image starts at the image's first position or before).

And the last layer's MLP (most of a layer's work) runs on the last position only: only the
last position's logits are computed, and no later layer reads the other positions. They get a
zero MLP output, so a hook on the last layer's MLP, `hook_mlp_out` or `hook_resid_post` sees
those positions without it.

Exactness is checked, not assumed. While recording, each layer's input is compared with
what resuming computes from the previous layer's output (the output itself, plus Qwen3-VL's
deepstack features at the image positions after its first layers, added here by the same
operation as HF's), and the last-position logits rebuilt from the final norm's input with
HF's logits. A layer from which something unreproduced happens later (another
architecture's extra step between layers, a user hook editing the stream, a logit softcap
after the head) is not resumable; `ResumePoint.resumable(L)` says so and the sweep takes the
full path from the embeddings for such a batch (`vlm_lens.patching.sweep`).

Not for: KV-cached decoding, batches of different examples, or anything but the last
position's logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers import DynamicCache

from vlm_lens.adapters import get_module
from vlm_lens.core.prepare import VLMInputs
from vlm_lens.core.segments import Segments

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM


def _tensor(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


# transformers hands the layers the KV cache as `cache=` (5.24) or `past_key_values=` (5.4,
# the oldest supported; PITFALLS 12); whichever the recorded call used is the one set.
_CACHE_KEYS = ("cache", "past_key_values")
# Per-position arguments and the axis of their query positions: masks [batch, 1, query, key],
# position ids [batch, pos] (None on Qwen), rotary (cos, sin) [batch, pos, d] (Qwen2/2.5-VL
# on transformers 5.4: [3, batch, pos, d]).
_CUT = {"attention_mask": 2, "position_ids": -1, "position_embeddings": -2}


def _cut(value: Any, axis: int, first: int) -> Any:
    if isinstance(value, Tensor):
        return value.narrow(axis, first, value.shape[axis] - first)
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, axis, first) for v in value)
    return value


def _broadcast(value: Any, rows: int) -> Any:
    """A recorded batch-1 argument for a batch of `rows` identical rows (views, no copies)."""
    if isinstance(value, Tensor):
        return value.expand(rows, *value.shape[1:]) if value.ndim and value.shape[0] == 1 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_broadcast(v, rows) for v in value)
    return value


@dataclass
class _Deepstack:
    """Qwen3-VL's visual features added to the image positions after the first layers."""

    positions: Int[Tensor, " image_token"]  # positions of the image tokens in the (one) row
    features: list[Float[Tensor, "image_token d_model"]]  # one per layer it follows

    def after(self, layer: int, x: Float[Tensor, "batch pos d_model"], first: int = 0) -> Tensor:
        """`x` (positions `first`..) after `layer`, with its deepstack features added."""
        if layer >= len(self.features):
            return x
        # HF's operation (clone, add at the image positions); every row has the same layout.
        kept = self.positions >= first
        pos = (self.positions[kept] - first).to(x.device)
        x = x.clone()
        features = self.features[layer][kept.to(self.features[layer].device)]
        x[:, pos] = x[:, pos] + features.to(device=x.device, dtype=x.dtype)
        return x


@dataclass
class ResumePoint:
    """One example's full forward pass, kept so that later passes can start at any layer.

    Attributes:
        logits: `[1, vocab]` the last position's logits of the full pass.
        resid: layer -> `[1, pos, d_model]` the residual stream entering that layer, for the
            layers asked for.
        layer_kwargs: per decoder layer, the keyword arguments it was called with.
        exact: per decoder layer, whether its output reaches the next layer (the final norm
            after the last) exactly as resuming computes it; plus the tail check.
    """

    logits: Float[Tensor, "1 vocab"]
    resid: dict[int, Float[Tensor, "1 pos d_model"]]
    layer_kwargs: list[dict[str, Any]]
    exact: list[bool]
    tail_exact: bool
    segments: Segments
    keys: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    """layer -> (key, value) `[1, kv_head, pos, d_head]` as the attention function got them."""
    deepstack: _Deepstack | None = None
    reasons: list[str] = field(default_factory=list)
    blocked: frozenset[int] = frozenset()
    """Layers not to start at: a hook on the previous layer's `hook_deepstack` edits the stream
    as it enters them, after the point where it is recorded."""

    def first_position(self, start: int, first: int) -> int:
        """The first query position a pass from layer `start` whose rows patch nothing before
        position `first` may start at: `first` where that is exact (see the module), else 0."""
        if first <= 0 or not all(i in self.keys for i in range(start, len(self.exact))):
            return 0
        for kwargs in self.layer_kwargs[start:]:
            if not any(k in kwargs for k in _CACHE_KEYS):
                return 0
            if any(isinstance(v, Tensor) and k not in _CUT for k, v in kwargs.items()):
                return 0  # an argument we would not know how to cut to the rows from `first`
            mask = kwargs.get("attention_mask")
            if mask is not None and (mask.dtype != torch.bool or mask[..., :first, first:].any()):
                return 0
        return first

    def resumable(self, layer: int) -> bool:
        """Whether a pass started at `layer` computes what the full pass computes."""
        return (
            layer in self.resid
            and layer not in self.blocked
            and self.tail_exact
            and all(self.exact[layer:])
        )


def _language_parts(model: HookedVLM) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    lm = get_module(model.hf_model, model.adapter.language_model)
    return lm, list(get_module(lm, model.adapter.layers))


def _head(model: HookedVLM, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch vocab"]:
    """Final norm and unembedding of the last position (the norm over every position, as the
    full pass does, so its hook points see the same tensor)."""
    lm, _ = _language_parts(model)
    normed = get_module(lm, model.adapter.final_norm)(x)
    return get_module(model.hf_model, model.adapter.lm_head)(normed[:, -1:])[:, -1]


def record_resume_point(model: HookedVLM, inputs: VLMInputs, layers: list[int]) -> ResumePoint:
    """Run one example in full (no hooks of ours), keeping what resuming at `layers` needs.

    Keeps the residual stream entering each of `layers` (`[1, pos, d_model]` each) and every
    layer's keyword arguments (masks and rotary embeddings are shared by reference, not
    copied per layer).
    """
    if inputs.batch_size != 1:
        raise ValueError(f"a resume point is of one example, got a batch of {inputs.batch_size}")
    lm, blocks = _language_parts(model)
    final = get_module(lm, model.adapter.final_norm)
    wanted = set(layers)
    n = len(blocks)
    resid: dict[int, Tensor] = {}
    kwargs_of: list[dict[str, Any]] = [{} for _ in blocks]
    exact = [False] * n
    lm_kwargs: dict[str, Any] = {}
    state: dict[str, Any] = {"out": None, "deepstack": None}

    def on_lm(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        lm_kwargs.update(kwargs)
        features = kwargs.get("deepstack_visual_embeds")
        mask: Bool[Tensor, "1 pos"] | None = kwargs.get("visual_pos_masks")
        if features is not None and mask is not None:
            state["deepstack"] = _Deepstack(mask[0].nonzero().flatten(), list(features))

    def arriving(i: int, x: Tensor) -> None:
        """Layer `i` (n: the final norm) receives `x`: is it what resuming computes?"""
        if i == 0:
            return
        out = state["out"]
        ds: _Deepstack | None = state["deepstack"]
        expected = out if ds is None else ds.after(i - 1, out)
        exact[i - 1] = x is expected or torch.equal(x, expected)

    def before(i: int):
        def fn(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            arriving(i, x)
            kwargs_of[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if i in wanted:
                resid[i] = x.detach()

        return fn

    def after(i: int):
        def fn(module: torch.nn.Module, args: tuple, output: Any) -> None:
            state["out"] = _tensor(output)

        return fn

    def into_final(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        arriving(n, x)
        state["final_in"] = x.detach()

    # A layer's input is taken before any hook point's site edits it (prepend), its output
    # after every site has (appended last): resuming calls the layer, so its sites fire again.
    keys: dict[int, list[Tensor]] = {}

    def keep(i: int):
        def fn(act: Float[Tensor, "batch pos kv_head d_head"], hook: Any) -> None:
            keys.setdefault(i, []).append(act.detach().transpose(1, 2))

        return fn

    first_layer = min(layers, default=n)
    kv_hooks = [
        (f"blocks.{i}.attn.{name}", keep(i))
        for i in range(first_layer, n)
        for name in ("hook_k", "hook_v")
    ]
    handles = [lm.register_forward_pre_hook(on_lm, with_kwargs=True)]
    handles.append(final.register_forward_pre_hook(into_final, with_kwargs=True, prepend=True))
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(before(i), with_kwargs=True, prepend=True))
        handles.append(block.register_forward_hook(after(i)))
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=kv_hooks):
            logits = model(inputs, logits_to_keep=1)[:, -1]
            tail = _head(model, state["final_in"]) if "final_in" in state else None
    finally:
        for handle in handles:
            handle.remove()
    reasons = []
    blocked = frozenset(
        i + 1
        for i in range(n)
        if (hp := model.hook_dict.get(f"blocks.{i}.hook_deepstack")) is not None and hp.fires()
    )
    tail_exact = tail is not None and torch.equal(tail, logits)
    if not tail_exact:
        reasons.append("the logits are not lm_head(final_norm(last layer's output))")
    if not all(exact):
        bad = [i for i, ok in enumerate(exact) if not ok]
        reasons.append(f"something unreproduced happens after layer(s) {bad}")
    return ResumePoint(
        logits=logits,
        resid=resid,
        layer_kwargs=kwargs_of,
        exact=exact,
        tail_exact=tail_exact,
        segments=inputs.segments,
        deepstack=state["deepstack"],
        keys={i: (kv[0], kv[1]) for i, kv in keys.items() if len(kv) == 2},
        reasons=reasons,
        blocked=blocked,
    )


@contextmanager
def _as_prefill(model: HookedVLM, segments: Segments, first: int, n_pos: int) -> Iterator[None]:
    """What the language model's own pre-hook tells the hook points about a prefill of the
    query positions `first`.. (`HookedVLM._track_position`): the layers are called directly
    here, so it does not fire."""
    run = model.run_state
    saved = (run.segments, run.query_start, run.n_queries, run.step, run.rows)
    run.segments, run.query_start, run.n_queries = segments, first, n_pos - first
    run.step, run.rows = 0, None
    try:
        yield
    finally:
        run.segments, run.query_start, run.n_queries, run.step, run.rows = saved


@contextmanager
def _last_position_only(mlp: torch.nn.Module) -> Iterator[None]:
    """Run `mlp` on the last position of its input; the other positions get zeros."""
    n_pos: list[int] = []

    def last(module: torch.nn.Module, args: tuple) -> tuple:
        n_pos.append(args[0].shape[1])
        return (args[0][:, -1:], *args[1:])

    def pad(module: torch.nn.Module, args: tuple, output: Tensor) -> Tensor:
        zeros = output.new_zeros(output.shape[0], n_pos.pop() - 1, output.shape[-1])
        return torch.cat([zeros, output], dim=1)

    handles = [mlp.register_forward_pre_hook(last), mlp.register_forward_hook(pad)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def resume(
    model: HookedVLM,
    point: ResumePoint,
    start: int,
    rows: int,
    segments: Segments,
    first: int = 0,
) -> Float[Tensor, "batch vocab"]:
    """Last-position logits of `rows` copies of the recorded example, run from layer `start`
    over the query positions `first`.. (`first` from `point.first_position`; 0 = all).

    Hooks attached to the model (e.g. with `model.hooks(...)`) fire at layers >= `start` and
    at the final norm as in a full pass of the batch, on the positions run (`hook.run.
    query_start` is `first`); `segments` is the batch's layout. Raises if `point` does not
    allow the start.
    """
    if not point.resumable(start):
        why = "; ".join(point.reasons) or f"layer {start}'s input was not recorded"
        raise ValueError(f"cannot resume at layer {start}: {why}")
    if first and point.first_position(start, first) != first:
        raise ValueError(f"cannot resume at position {first}: a query before it sees a key after")
    _, blocks = _language_parts(model)
    x = point.resid[start][:, first:]
    n_pos = point.resid[start].shape[1]
    # One materialised copy per row: the rows diverge at the first patched layer anyway.
    x = x.expand(rows, *x.shape[1:]).contiguous()
    with torch.no_grad(), _as_prefill(model, segments, first, n_pos):
        for i in range(start, len(blocks)):
            cache = None
            if first:
                # A cache of this layer only, dropped after it: one layer's prefix keys and
                # values per row are alive at a time, not every layer's.
                cache = DynamicCache()
                k, v = (t[:, :, :first].expand(rows, -1, -1, -1) for t in point.keys[i])
                cache.update(k, v, i)
            kwargs = {}
            for name, value in point.layer_kwargs[i].items():
                if name in _CACHE_KEYS:
                    value = cache
                elif first and name in _CUT:
                    value = _cut(value, _CUT[name], first)
                kwargs[name] = _broadcast(value, rows)
            last = i == len(blocks) - 1
            mlp = get_module(blocks[i], model.adapter.mlp)
            with _last_position_only(mlp) if last else nullcontext():
                x = _tensor(blocks[i](x, **kwargs))
            if point.deepstack is not None:
                x = point.deepstack.after(i, x, first)
        return _head(model, x)
