"""Generation with step-aware hooks and a slim, step-indexed attention recording.

`generate` runs Hugging Face's own `generate` (KV cache, multimodal rotary positions,
left padding: all as HF does them) with the user's hooks attached for the whole run.
Every hook can read `hook.run.step`: 0 for the prefill, k for the k-th decoding step.

`AttentionRecord` says what to keep of `hook_pattern` while generating: which layers
and steps, only the query row that predicts the next token (by default), and only
reductions of its key axis: the image key columns and/or the share of attention per
segment kind. HF's `output_attentions` keeps `[layers, heads, P, P]` at prefill; this
keeps `[layers, heads, image_tokens]` per step.

Not for: study logic (what to do with the maps lives in `vlm_lens.studies`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import GenerationConfig

from vlm_lens.core.segments import KIND_GENERATED, KIND_IMAGE, KIND_SYSTEM, KIND_TEXT, Segments

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM
    from vlm_lens.core.prepare import VLMInputs

SHARE_KINDS = ("system", "image", "text", "generated")
_SHARE_CODES = (KIND_SYSTEM, KIND_IMAGE, KIND_TEXT, KIND_GENERATED)


@dataclass
class AttentionRecord:
    """What to record of `blocks.{L}.attn.hook_pattern` during generation.

    Attributes:
        layers: layers to record (negative allowed); None = all.
        steps: decoding steps to record (0 = prefill); None = all.
        keep: "image" (the image key columns, in prompt order), "shares" (attention mass on
            system / image / text / generated keys) and/or "full" (the whole key row).
        query: "last" keeps the row that predicts the next token; "all" keeps every query
            row of the step (at prefill that is the whole prompt: use with care).
        heads: "all" keeps each head, "mean" their average.
        device, dtype: where and how the records are kept.
    """

    layers: Sequence[int] | int | None = None
    steps: Sequence[int] | None = None
    keep: Sequence[Literal["image", "shares", "full"]] = ("image", "shares")
    query: Literal["last", "all"] = "last"
    heads: Literal["all", "mean"] = "all"
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
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
    `shares[step]`: `[batch, layer, head, query, 4]` over `SHARE_KINDS`.
    `full[step]`: `[batch, layer, head, query, keys]`.
    `query` is 1 for `query="last"`; `head` is 1 for `heads="mean"`.
    """

    layers: list[int]
    image: dict[int, Tensor] = field(default_factory=dict)
    shares: dict[int, Tensor] = field(default_factory=dict)
    full: dict[int, Tensor] = field(default_factory=dict)

    @property
    def steps(self) -> list[int]:
        return sorted(set(self.image) | set(self.shares) | set(self.full))

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for d in (self.image, self.shares, self.full)
            for t in d.values()
        )

    def stacked(
        self, what: Literal["image", "shares", "full"] = "image"
    ) -> Float[Tensor, "step batch layer head query x"]:
        store = getattr(self, what)
        if not store:
            raise KeyError(f"nothing recorded for {what!r}")
        return torch.stack([store[s] for s in sorted(store)])


class _Recorder:
    """Builds the hook functions of an `AttentionRecord` and collects what they see."""

    def __init__(self, model: HookedVLM, spec: AttentionRecord):
        self.spec = spec
        self.layers = model.resolve_layers(spec.layers)
        self.steps = None if spec.steps is None else set(spec.steps)
        self.recording = Recording(self.layers)
        self._pending: dict[int, dict[str, list[Tensor | None]]] = {}
        self._image_index: Tensor | None = None

    def fwd_hooks(self) -> list[tuple[str, Any]]:
        return [(f"blocks.{layer}.attn.hook_pattern", self._hook) for layer in self.layers]

    def _image_positions(self, segments: Segments) -> Tensor:
        """`[batch, max_image_tokens]` positions of each row's image tokens, -1 padded."""
        if self._image_index is None:
            rows = [
                (segments.kinds[b] == KIND_IMAGE).nonzero().flatten()
                for b in range(segments.batch_size)
            ]
            width = max((len(r) for r in rows), default=0)
            index = torch.full((segments.batch_size, width), -1, dtype=torch.long)
            for b, r in enumerate(rows):
                index[b, : len(r)] = r
            self._image_index = index
        return self._image_index

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
        # Key columns sit at absolute positions key_offset.. (a sliding-window cache may drop early keys).
        key_offset = run.query_start + run.n_queries - n_keys
        out: dict[str, Tensor] = {}
        if "image" in spec.keep and run.segments is not None:
            pos = self._image_positions(run.segments).to(rows.device) - key_offset  # [batch, n_img]
            valid = (pos >= 0) & (pos < n_keys)
            gather = pos.clamp(0, max(n_keys - 1, 0))[:, None, None, :].expand(*rows.shape[:3], -1)
            picked = rows.gather(-1, gather)
            out["image"] = picked.masked_fill(~valid[:, None, None, :], float("nan"))
        if "shares" in spec.keep and run.segments is not None:
            kinds = run.segments.key_kinds(key_offset + n_keys, rows.device)[
                :, key_offset:
            ]  # [batch, key]
            onehot = torch.stack([kinds == code for code in _SHARE_CODES], dim=-1).to(rows.dtype)
            out["shares"] = torch.einsum("bhqk,bkc->bhqc", rows, onehot)
        if "full" in spec.keep:
            out["full"] = rows
        slot = self._pending.setdefault(run.step, {})
        index = self.layers.index(hook.layer_idx)
        for name, tensor in out.items():
            per_layer = slot.setdefault(name, [None] * len(self.layers))
            per_layer[index] = tensor.to(device=spec.device, dtype=spec.dtype)
            if all(t is not None for t in per_layer):
                getattr(self.recording, name)[run.step] = torch.stack(
                    per_layer, dim=1
                )  # [batch, layer, ...]


@dataclass
class GenerationResult:
    """Output of `HookedVLM.generate`.

    `sequences`: `[batch, prompt_len + new]` (left-padded prompt then generated ids);
    `tokens`: `[batch, new]`; `logits`: `[step, batch, vocab]` of the distribution each step
    sampled from (float32, on CPU); `segments`: the prompt's segments extended by the
    generated span; `recording`: what an `AttentionRecord` kept, if one was given.
    """

    sequences: Tensor
    tokens: Tensor
    texts: list[str]
    logits: Tensor | None
    segments: Segments
    recording: Recording | None = None

    @property
    def probs(self) -> Tensor:
        if self.logits is None:
            raise ValueError("logits were not kept (keep_logits=False)")
        return self.logits.softmax(-1)


def generate(
    model: HookedVLM,
    inputs: VLMInputs,
    max_new_tokens: int = 16,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
    record: AttentionRecord | None = None,
    keep_logits: bool = True,
    **generate_kwargs: Any,
) -> GenerationResult:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    recorder = _Recorder(model, record) if record is not None else None
    hooks = list(fwd_hooks) + (recorder.fwd_hooks() if recorder else [])
    defaults = model.hf_model.generation_config
    tokenizer = model.processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else defaults.pad_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=defaults.eos_token_id,
        pad_token_id=pad,
        bos_token_id=defaults.bos_token_id,
        return_dict_in_generate=True,
        output_logits=keep_logits,
        **generate_kwargs,
    )
    kwargs = model._model_kwargs(inputs)
    with model._running(inputs), model.hooks(fwd_hooks=hooks), torch.no_grad():
        out = model.hf_model.generate(**kwargs, generation_config=config)
    sequences = out.sequences.cpu()
    prompt_len = inputs.input_ids.shape[1]
    tokens = sequences[:, prompt_len:]
    texts = [model.tokens_to_text(row) for row in tokens]
    logits = torch.stack([s.float().cpu() for s in out.logits]) if keep_logits else None
    return GenerationResult(
        sequences=sequences,
        tokens=tokens,
        texts=texts,
        logits=logits,
        segments=inputs.segments.with_generated(tokens.shape[1]),
        recording=recorder.recording if recorder else None,
    )
