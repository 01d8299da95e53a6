"""Recording attention while a model runs: what to keep (`AttentionRecord`), what was kept
(`Recording`) and the hooks that keep it (`AttentionRecorder`).

`AttentionRecord` says what to keep of `hook_pattern` while generating: which layers
and steps, only the query row that predicts the next token (by default), and only
reductions of its key axis: the image key columns and/or the share of attention per
segment kind. HF's `output_attentions` keeps `[layers, heads, P, P]` at prefill; this
keeps `[layers, heads, image_tokens]` per step.

The recorder knows hooks only by their TransformerLens names and reads `hook.run` (step,
segments, query rows); it never sees the model, so any runner that attaches its
`fwd_hooks()` (`HookedVLM.generate`, `run_with_hooks`, a study's loop) can record.

Cross-attention layers (Mllama) read the image through their own keys, the image features:
there the recorder hooks `blocks.{L}.cross_attn.hook_pattern` (`pattern_hook_name`), "image"
keeps the image's patch keys in the order of `SampleSegments.image_keys` (row-major over each
image's stitched tile grid) and "shares" puts the whole row on "image". Layers whose widths
differ (a cross layer's keys against a self-attention layer's) are NaN-padded to one width.

Not for: running the model (`vlm_lens.core.generation`), or the per-image grids of one
traced generation (`vlm_lens.core.trace`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from vlm_lens.core.attention import select
from vlm_lens.core.layers import LayerSpec, resolve_layers
from vlm_lens.core.segments import KIND_IMAGE, KIND_NAMES, Segments


@dataclass
class AttentionRecord:
    """What to record of `blocks.{L}.attn.hook_pattern` during generation.

    Attributes:
        layers: layers to record, a layer spec (`vlm_lens.core.layers`: -1, "Q4", "20:28",
            "all", a list ...); None = all.
        steps: decoding steps to record (0 = prefill); None = all.
        keep: "image" (the image key columns, in prompt order), "shares" (attention mass on
            system / image / text / generated keys) and/or "full" (the whole key row; NaN
            at keys a sliding-window layer's cache no longer holds).
        query: "last" keeps the row that predicts the next token; "all" keeps every query
            row of the step (at prefill that is the whole prompt: use with care).
        heads: "all" keeps each head, "mean" their average.
        device, dtype: where and how the records are kept.

    A recorded layer computes its attention explicitly for the rows it records only (the
    recorder's hooks declare `query` and `steps` through `vlm_lens.core.attention.select`):
    with `query="last"` the prefill costs one `[head, key]` row, not `[head, P, P]`; every
    other row, every step not recorded and every layer not recorded keep PyTorch's SDPA.
    """

    layers: LayerSpec = None
    steps: Sequence[int] | None = None
    keep: Sequence[Literal["image", "shares", "full"]] = ("image", "shares")
    query: Literal["last", "all"] = "last"
    heads: Literal["all", "mean"] = "all"
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if isinstance(self.keep, str):
            self.keep = (self.keep,)
        unknown = set(self.keep) - {"image", "shares", "full"}
        if unknown or not self.keep:
            raise ValueError(
                f"keep must name some of 'image', 'shares', 'full'; got {list(self.keep)}"
            )
        if self.query not in ("last", "all"):
            raise ValueError(f"query must be 'last' or 'all', got {self.query!r}")
        if self.heads not in ("all", "mean"):
            raise ValueError(f"heads must be 'all' or 'mean', got {self.heads!r}")


@dataclass
class Recording:
    """Per step, per recorded layer: reductions of the attention pattern.

    `image[step]`: `[batch, layer, head, query, image_tokens]` (image tokens of all images of a
    row in prompt order; rows with fewer image tokens are NaN-padded).
    `shares[step]`: `[batch, layer, head, query, kind]` over `Segments.share_kinds`
    (`SEGMENT_KINDS`, plus "marker" for a batch with marker tokens; padding keys count in none).
    `full[step]`: `[batch, layer, head, query, keys]` (keys: every position in the KV cache
    at that step, left padding included).
    `query` is 1 for `query="last"`; `head` is 1 for `heads="mean"`; `layer` follows `layers`.
    In a cross-attention layer (`cross_attention_layers`) the image columns are the image's
    patch keys (`image_attention` gives any layer's own columns).
    """

    layers: list[int]
    image: dict[int, Tensor] = field(default_factory=dict)
    shares: dict[int, Tensor] = field(default_factory=dict)
    full: dict[int, Tensor] = field(default_factory=dict)
    cross_attention_layers: tuple[int, ...] = ()

    def image_attention(
        self, step: int, row: int, layer: int, segments: Segments
    ) -> tuple[Float[Tensor, "head query image"], list[tuple[int, int]]]:
        """Batch row `row`'s attention on its images at one step and layer, and each image's
        grid on that axis (row-major, images in prompt order): the image tokens of a
        self-attention layer, the patch keys of a cross-attention layer. The NaN columns that
        pad it to the widest row or layer are dropped."""
        grids = segments.samples[row].image_grids(layer in self.cross_attention_layers)
        width = sum(h * w for h, w in grids)
        return self.image[step][row, self.layers.index(layer), :, :, :width], grids

    @property
    def steps(self) -> list[int]:
        return sorted(set(self.image) | set(self.shares) | set(self.full))

    def nbytes(self) -> int:
        """Bytes held by the recorded tensors."""
        return sum(
            t.numel() * t.element_size()
            for d in (self.image, self.shares, self.full)
            for t in d.values()
        )

    def stacked(
        self, what: Literal["image", "shares", "full"] = "image"
    ) -> Float[Tensor, "step batch layer head query x"]:
        """One tensor over the recorded steps (in step order); "full" needs equal key counts,
        so it only stacks with `steps=[k]` or a single step."""
        store = getattr(self, what)
        if not store:
            raise KeyError(f"nothing recorded for {what!r}")
        return torch.stack([store[s] for s in sorted(store)])


def pattern_hook_name(layer: int, cross_attention_layers: Collection[int] = ()) -> str:
    """The hook point of a layer's attention pattern: its cross-attention over the image keys
    in a cross-attention layer (`[batch, head, query, image_key]`), else its self-attention."""
    part = "cross_attn" if layer in cross_attention_layers else "attn"
    return f"blocks.{layer}.{part}.hook_pattern"


def _stack_padded(per_layer: list[Tensor]) -> Tensor:
    """`[batch, layer, head, query, x]` from per-layer `[batch, head, query, x_l]`, NaN-padded."""
    width = max(t.shape[-1] for t in per_layer)
    padded = [
        torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=float("nan")) for t in per_layer
    ]
    return torch.stack(padded, dim=1)


class AttentionRecorder:
    """Builds the hook functions of an `AttentionRecord` and collects what they see.

    `cross_attention_layers`: the model's layers that attend to image keys
    (`HookedVLM.cfg.cross_attention_layers`)."""

    def __init__(
        self, spec: AttentionRecord, n_layers: int, cross_attention_layers: Collection[int] = ()
    ):
        self.spec = spec
        self.cross = frozenset(cross_attention_layers)
        self.layers = resolve_layers(spec.layers, n_layers)
        self._slot_of = {layer: i for i, layer in enumerate(self.layers)}
        self.steps = None if spec.steps is None else set(spec.steps)
        self.recording = Recording(self.layers, cross_attention_layers=tuple(sorted(self.cross)))
        self._pending: dict[int, dict[str, list[Tensor | None]]] = {}
        # Per-run constants, built on first use and kept per device (layers may sit on
        # different devices under a device_map).
        self._image_index: dict[tuple[bool, torch.device], Tensor] = {}
        self._kind_onehot: dict[torch.device, Tensor] = {}

    def fwd_hooks(self) -> list[tuple[str, Any]]:
        rows = "last" if self.spec.query == "last" else "all"
        fn = select(self._hook, rows=rows, steps=self.steps)
        return [(pattern_hook_name(layer, self.cross), fn) for layer in self.layers]

    def _image_positions(self, segments: Segments, device: torch.device, cross: bool) -> Tensor:
        """`[batch, max_image_tokens]` key columns of each row's image tokens (of its image
        keys in a cross-attention layer), -1 padded."""
        index = self._image_index.get((cross, device))
        if index is None:
            if cross:
                rows = [
                    torch.tensor([k for keys in s.image_keys for k in keys.index], dtype=torch.long)
                    for s in segments.samples
                ]
            else:
                rows = [
                    (segments.kinds[b] == KIND_IMAGE).nonzero().flatten()
                    for b in range(segments.batch_size)
                ]
            width = max((len(r) for r in rows), default=0)
            index = torch.full((segments.batch_size, width), -1, dtype=torch.long)
            for b, r in enumerate(rows):
                index[b, : len(r)] = r
            index = self._image_index[(cross, device)] = index.to(device)
        return index

    def _onehot(
        self, segments: Segments, n_keys: int, device: torch.device, dtype: torch.dtype
    ) -> Float[Tensor, "batch key kind"]:
        """Which share kind each key position belongs to (positions past the prompt are
        generated); grown by doubling so a decoding step costs a slice."""
        onehot = self._kind_onehot.get(device)
        if onehot is None or onehot.shape[1] < n_keys or onehot.dtype != dtype:
            length = max(n_keys, 2 * segments.prompt_len)
            kinds = segments.key_kinds(length)
            onehot = torch.stack(
                [kinds == KIND_NAMES[kind] for kind in segments.share_kinds], dim=-1
            )
            onehot = self._kind_onehot[device] = onehot.to(device=device, dtype=dtype)
        return onehot[:, :n_keys]

    def _hook(self, pattern: Float[Tensor, "batch head query key"], hook: Any) -> None:
        run = hook.run
        if self.steps is not None and run.step not in self.steps:
            return
        spec = self.spec
        rows = pattern[:, :, -1:, :] if spec.query == "last" else pattern
        rows = rows.detach()
        if spec.heads == "mean":
            rows = rows.mean(dim=1, keepdim=True)
        n_keys = rows.shape[-1]
        cross = hook.layer_idx in self.cross  # every key is an image key
        # Key columns sit at absolute positions key_offset.. (a sliding-window cache may drop early keys).
        key_offset = 0 if cross else run.key_offset(n_keys)
        out: dict[str, Tensor] = {}
        if "image" in spec.keep and run.segments is not None:
            pos = self._image_positions(run.segments, rows.device, cross) - key_offset
            valid = (pos >= 0) & (pos < n_keys)
            gather = pos.clamp(0, max(n_keys - 1, 0))[:, None, None, :].expand(*rows.shape[:3], -1)
            picked = rows.gather(-1, gather)
            out["image"] = picked.masked_fill(~valid[:, None, None, :], float("nan"))
        if "shares" in spec.keep and run.segments is not None and cross:
            kinds = run.segments.share_kinds
            image = torch.zeros(len(kinds), device=rows.device, dtype=rows.dtype)
            image[kinds.index("image")] = 1
            out["shares"] = rows.sum(-1, keepdim=True) * image
        elif "shares" in spec.keep and run.segments is not None:
            onehot = self._onehot(run.segments, key_offset + n_keys, rows.device, rows.dtype)
            out["shares"] = torch.einsum("bhqk,bkc->bhqc", rows, onehot[:, key_offset:])
        if "full" in spec.keep:
            # Key columns at their absolute positions: keys a sliding-window cache dropped are
            # NaN (as out-of-window image keys are), so every layer's row has the same length.
            out["full"] = F.pad(rows, (key_offset, 0), value=float("nan")) if key_offset else rows
        slot = self._pending.setdefault(run.step, {})
        index = self._slot_of[hook.layer_idx]
        for name, tensor in out.items():
            per_layer = slot.setdefault(name, [None] * len(self.layers))
            per_layer[index] = tensor.to(device=spec.device, dtype=spec.dtype)
            if all(t is not None for t in per_layer):
                # [batch, layer, head, query, x]
                getattr(self.recording, name)[run.step] = _stack_padded(per_layer)
                del slot[name]
