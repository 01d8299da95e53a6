"""Interventions as TransformerLens `fwd_hooks`: which layers, heads and rows to edit, at run time.

>>> iv = redistribute("system", "text", layers="Q4", model=model)          # doctest: +SKIP
>>> logits = model.run_with_hooks(inputs, fwd_hooks=iv)                   # doctest: +SKIP
>>> out = model.generate(inputs, max_new_tokens=4, fwd_hooks=iv)          # doctest: +SKIP
>>> with model.hooks(fwd_hooks=iv + scale_image(2.0, "Q4", model=model)): # doctest: +SKIP
...     logits = model(inputs)

Each constructor returns an `Intervention`: a description of the edit plus the layers,
heads and rows it applies to. It becomes `(hook name, function)` pairs with
`iv.fwd_hooks(model)` (or `iv.fwd_hooks(n_layers)`). When the depth is known (`model=` or
`n_layers=` given, or `iv.bind(model)`, or the layers are plain non-negative ints) the
intervention is itself an iterable of those pairs, so it can be passed as `fwd_hooks`
directly; `+` concatenates interventions and lists of pairs into one list.

Per layer L the pairs are

- ``blocks.L.attn.hook_attn_scores``: reads which keys the model's own mask lets each
  query see (causal, padding, sliding window, Gemma3's bidirectional image blocks):
  scores at the dtype's minimum are masked. It never changes the scores.
- ``blocks.L.attn.hook_pattern``: edits the post-softmax pattern with the pure functions of
  `vlm_lens.interventions.patterns`. It reads the current inputs' segments and position
  from `hook.run` at call time, so the same pairs serve a forward pass and every step of
  `generate`. Without the scores pair (if a user keeps only the pattern pair) visibility
  falls back to causal + not padding + already weighted.

Rows. ``rows="answer"`` edits the query rows that produce the answer: at absolute position
``prompt_len - 1`` or later, i.e. the last prompt row at prefill (or in a plain forward)
and the one row of every decoding step. ``rows="all"`` edits every query row that is not
padding, the prefill's included (as the yes-bias paper's released code does). Both stay
causal: a row only gives weight to keys its mask lets it see, and a row that sees no
recipient key (a prefill row before the first text token, say) keeps its pattern.
With ``rows="answer"`` the hooks declare their rows (`vlm_lens.core.attention.select`), so a
layer computes scores and pattern for the answer rows only and SDPA for the rest.
Heads: None (all), an int or a list (negative allowed).

Composition. Interventions on the same layer apply in the order their pairs are added
(TransformerLens runs a hook point's hooks in order). `model.generate(fwd_hooks=...,
record=AttentionRecord(...))` adds the user's hooks before the recorder's, so the
recording sees the edited pattern; to record the unedited one, add a recording hook
before the intervention yourself.

Not for: the tensor arithmetic (patterns.py) or layer spec parsing (layers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vlm_lens.core.attention import select
from vlm_lens.core.segments import KIND_PAD
from vlm_lens.interventions.layers import LayerSpec, needs_depth, resolve_layers
from vlm_lens.interventions.patterns import (
    Modalities,
    Mode,
    knockout_pattern,
    modality_codes,
    redistribute_pattern,
    restore_pattern,
    scale_pattern,
)

Rows = Literal["answer", "all"]
HookFn = Callable[[Tensor, Any], Tensor | None]
Heads = int | Sequence[int] | None


def _depth(model_or_n_layers: Any) -> int:
    if isinstance(model_or_n_layers, int) and not isinstance(model_or_n_layers, bool):
        return model_or_n_layers
    cfg = getattr(model_or_n_layers, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_layers"):
        return int(cfg.n_layers)
    raise TypeError(
        f"expected a HookedVLM (or anything with .cfg.n_layers) or an int depth, "
        f"got {type(model_or_n_layers).__name__}"
    )


def _cross_attention_layers(model_or_n_layers: Any) -> frozenset[int]:
    cfg = getattr(model_or_n_layers, "cfg", None)
    return frozenset(getattr(cfg, "cross_attention_layers", ()))


def _head_mask(heads: Heads, n_heads: int, device: torch.device) -> Bool[Tensor, " head"] | None:
    if heads is None:
        return None
    items = [heads] if isinstance(heads, int) else list(heads)
    mask = torch.zeros(n_heads, dtype=torch.bool, device=device)
    for head in items:
        if not -n_heads <= head < n_heads:
            raise IndexError(f"head {head} out of range for a layer with {n_heads} heads")
        mask[head % n_heads] = True
    return mask


class _LayerHooks:
    """The hook functions of one `fwd_hooks()` call (they share the captured visibility)."""

    def __init__(self, intervention: Intervention):
        self.iv = intervention
        self._visible: dict[int | None, Bool[Tensor, "batch head query key"]] = {}

    def capture(self, scores: Float[Tensor, "batch head query key"], hook: Any) -> None:
        self._visible[hook.layer_idx] = scores > torch.finfo(scores.dtype).min / 2

    def edit(self, pattern: Float[Tensor, "batch head query key"], hook: Any) -> Tensor:
        visible = self._visible.pop(hook.layer_idx, None)
        if self.iv.steps is not None and hook.run.step not in self.iv.steps:
            return pattern
        if visible is not None and visible.shape != pattern.shape:
            visible = None
        run = hook.run
        segments = run.segments
        if segments is None:
            raise RuntimeError(
                "an intervention needs the inputs' segments: run the model through HookedVLM "
                "(model(inputs), run_with_hooks, generate) with inputs from model.prepare(...)"
            )
        b, h, q, k = pattern.shape
        # The rows this hook holds: all of the forward's, or the answer rows of a row selection.
        query_positions = run.row_positions.to(pattern.device)
        if segments.batch_size != b or len(query_positions) != q:
            raise RuntimeError(
                f"pattern {tuple(pattern.shape)} does not match the run state "
                f"(batch {segments.batch_size}, {len(query_positions)} query rows)"
            )
        device = pattern.device
        key_start = run.key_offset(k)
        kinds = segments.key_kinds(run.query_start + run.n_queries, device)  # [batch, pos]
        key_kinds = kinds[:, key_start:]
        key_positions = torch.arange(key_start, key_start + k, device=device)
        row_mask = kinds[:, query_positions] != KIND_PAD  # [batch, query]
        if self.iv.rows == "answer":
            row_mask = row_mask & (query_positions >= segments.prompt_len - 1)[None, :]
        if not row_mask.any():
            return pattern
        return self.iv.edit(
            pattern,
            key_kinds,
            row_mask=row_mask,
            head_mask=_head_mask(self.iv.heads, h, device),
            visible=visible,
            query_positions=query_positions,
            key_positions=key_positions,
        )


@dataclass(frozen=True, eq=False)
class Intervention:
    """An edit of `hook_pattern` in chosen layers, heads and query rows (see the module docstring).

    Attributes:
        description: what it does, e.g. "redistribute system->text (f=1, proportional)".
        layers: the layer spec ("Q4", "20:28", 3, [-2, -1], "all", [] ...).
        edit: `fn(pattern, key_kinds, row_mask=, head_mask=, visible=, query_positions=,
            key_positions=) -> pattern`, one of the pure functions of `patterns` with its
            modality arguments bound.
        heads: heads to edit (None = all).
        rows: "answer" or "all".
        n_layers: the model's depth once known (`bind`).
        steps: the `hook.run.step` values (0 = prefill, k = k-th decoding step) at which it
            edits; None = every step.
    """

    description: str
    layers: LayerSpec
    edit: Callable[..., Tensor]
    heads: Heads = None
    rows: Rows = "answer"
    n_layers: int | None = None
    steps: Collection[int] | None = None
    cross_attention_layers: frozenset[int] = frozenset()
    """The model's cross-attention layers (set by `bind`), which the edit leaves alone."""

    def __post_init__(self) -> None:
        if self.rows not in ("answer", "all"):
            raise ValueError(f"rows must be 'answer' or 'all', got {self.rows!r}")
        if self.steps is not None:
            steps = frozenset(self.steps)
            if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
                raise ValueError(f"steps must be ints >= 0, got {sorted(self.steps, key=str)}")
            object.__setattr__(self, "steps", steps)  # frozen: normalise once
        if self.n_layers is not None:
            resolve_layers(self.layers, self.n_layers)  # fail early on a bad spec

    def bind(self, model_or_n_layers: Any) -> Intervention:
        """A copy that knows the model's depth (a HookedVLM or an int)."""
        return replace(
            self,
            n_layers=_depth(model_or_n_layers),
            cross_attention_layers=_cross_attention_layers(model_or_n_layers),
        )

    def layer_indices(self, model_or_n_layers: Any = None) -> list[int]:
        """The layers this intervention edits, as sorted non-negative indices. A cross-attention
        layer (Mllama) attends to image keys only, with no other kind to move mass to or from:
        it is left out (when the model is known)."""
        cross = self.cross_attention_layers | _cross_attention_layers(model_or_n_layers)
        if model_or_n_layers is not None:
            layers = resolve_layers(self.layers, _depth(model_or_n_layers))
            return [layer for layer in layers if layer not in cross]
        if self.n_layers is not None:
            layers = resolve_layers(self.layers, self.n_layers)
            return [layer for layer in layers if layer not in cross]
        if needs_depth(self.layers):
            raise TypeError(
                f"layers={self.layers!r} needs the model's depth: pass model= or n_layers= "
                "when building the intervention, call .bind(model), or use .fwd_hooks(model)"
            )
        items = self.layers if isinstance(self.layers, (list, tuple)) else [self.layers]
        return sorted(set(items))  # type: ignore[arg-type]

    def fwd_hooks(self, model_or_n_layers: Any = None) -> list[tuple[str, HookFn]]:
        """`(hook name, function)` pairs for `run_with_hooks`, `hooks()` and `generate`."""
        hooks = _LayerHooks(self)
        capture, edit = hooks.capture, hooks.edit
        if self.rows == "answer":
            # Declared rows and steps: the layer computes scores and pattern for the answer rows
            # of the steps it edits only, and takes SDPA everywhere else.
            capture = select(capture, rows="answer", steps=self.steps)
            edit = select(edit, rows="answer", steps=self.steps)
        pairs: list[tuple[str, HookFn]] = []
        for layer in self.layer_indices(model_or_n_layers):
            pairs.append((f"blocks.{layer}.attn.hook_attn_scores", capture))
            pairs.append((f"blocks.{layer}.attn.hook_pattern", edit))
        return pairs

    def __iter__(self) -> Iterator[tuple[str, HookFn]]:
        return iter(self.fwd_hooks())

    def __add__(self, other: Any) -> list[tuple[str, HookFn]]:
        return list(self) + list(other)

    def __radd__(self, other: Any) -> list[tuple[str, HookFn]]:
        return list(other) + list(self)

    def __repr__(self) -> str:
        depth = "" if self.n_layers is None else f", n_layers={self.n_layers}"
        heads = "" if self.heads is None else f", heads={self.heads!r}"
        steps = "" if self.steps is None else f", steps={sorted(self.steps)}"
        return (
            f"Intervention({self.description}, layers={self.layers!r}{heads}, "
            f"rows={self.rows!r}{depth}{steps})"
        )


def _bound(iv: Intervention, model: Any, n_layers: int | None) -> Intervention:
    if model is not None and n_layers is not None and _depth(model) != n_layers:
        raise ValueError(f"model has {_depth(model)} layers but n_layers={n_layers}")
    if model is not None:
        return iv.bind(model)
    return iv.bind(n_layers) if n_layers is not None else iv


def _label(modalities: Modalities) -> str:
    if modalities is None:
        return "rest"
    return modalities if isinstance(modalities, str) else "+".join(modalities)


def redistribute(
    source: Modalities,
    recipients: Modalities,
    layers: LayerSpec,
    heads: Heads = None,
    fraction: float = 1.0,
    mode: Mode = "proportional",
    rows: Rows = "answer",
    model: Any = None,
    n_layers: int | None = None,
) -> Intervention:
    """Move `fraction` of the source modalities' attention to the recipients (the yes-bias intervention).

    `source`, `recipients`: "system", "image", "text", "generated" or lists of them;
    "text" includes generated tokens unless "generated" is named; `recipients=None`
    means all other modalities. `mode`: "proportional" (α'_r = α_r + f·α_s·α_r/Σα_r', the
    paper's text) or "uniform" (each recipient modality's share spread evenly over its
    visible keys, the paper's released code; see `patterns.redistribute_pattern`). `rows`:
    "answer" or "all" (see the module docstring). `layers`: "Q1".."Q4", "all", "a:b", an int or a list (see
    `vlm_lens.interventions.layers`). Give `model` (or `n_layers`) so the result can be
    passed as `fwd_hooks` directly; otherwise use `.fwd_hooks(model)`.
    """
    modality_codes(source, recipients)  # validate now, not at the first forward
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if mode not in ("proportional", "uniform"):
        raise ValueError(f"mode must be 'proportional' or 'uniform', got {mode!r}")
    edit = partial(
        redistribute_pattern, source=source, recipients=recipients, fraction=fraction, mode=mode
    )
    description = f"redistribute {_label(source)}->{_label(recipients)} (f={fraction:g}, {mode})"
    return _bound(Intervention(description, layers, edit, heads, rows), model, n_layers)


def scale_modality(
    modality: Modalities,
    alpha: float,
    layers: LayerSpec,
    heads: Heads = None,
    rows: Rows = "answer",
    model: Any = None,
    n_layers: int | None = None,
) -> Intervention:
    """Multiply a modality's attention by `alpha` and renormalise each edited row."""
    modality_codes(modality, None)
    if not (float(alpha) >= 0.0 and float(alpha) < float("inf")):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    edit = partial(scale_pattern, modality=modality, alpha=alpha)
    description = f"scale {_label(modality)} x{alpha:g}"
    return _bound(Intervention(description, layers, edit, heads, rows), model, n_layers)


def scale_image(
    alpha: float,
    layers: LayerSpec,
    heads: Heads = None,
    rows: Rows = "answer",
    model: Any = None,
    n_layers: int | None = None,
) -> Intervention:
    """The paper's "Image×α" baseline: image attention ×`alpha`, then renormalise."""
    return scale_modality("image", alpha, layers, heads, rows, model, n_layers)


def knockout(
    modality: Modalities,
    layers: LayerSpec,
    heads: Heads = None,
    rows: Rows = "answer",
    model: Any = None,
    n_layers: int | None = None,
) -> Intervention:
    """Zero a modality's attention and renormalise over the other visible keys."""
    modality_codes(modality, None)
    edit = partial(knockout_pattern, modality=modality)
    description = f"knockout {_label(modality)}"
    return _bound(Intervention(description, layers, edit, heads, rows), model, n_layers)


def restore_image(
    source: Float[Tensor, "batch head image"],
    layers: LayerSpec,
    mass: Literal["current", "source"] = "current",
    steps: Collection[int] | None = None,
    heads: Heads = None,
    rows: Rows = "answer",
    model: Any = None,
    n_layers: int | None = None,
) -> Intervention:
    """Give each head's image keys `source`'s distribution (see `patterns.restore_pattern`).

    Re-grounding: `source` is what each head gave the image at an earlier step (one weight
    per image key); `mass="current"` keeps the row's image mass, "source" takes the
    source's. `steps`: the decoding steps to edit (None = all). One `source` serves every
    layer in `layers`; for per-layer sources build one intervention per layer and add them.
    """
    if mass not in ("current", "source"):
        raise ValueError(f"mass must be 'current' or 'source', got {mass!r}")
    edit = partial(restore_pattern, source=source, mass=mass)
    description = f"restore image ({mass} mass)"
    iv = Intervention(description, layers, edit, heads, rows, steps=steps)
    return _bound(iv, model, n_layers)
