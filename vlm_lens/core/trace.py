"""One traced generation: tokens, per-step distributions and attention over each image.

`trace_generation` (also `HookedVLM.trace_generation`) generates greedily for one prompt
and returns a `GenerationTrace`: the generated tokens and their text, per step the logits
and probabilities, and per step x layer x head

- the attention of the predicting query row to each image, as a map over that image's
  token grid (`images[i]`: `[step, layer, head, h, w]`, grids from the segments' `ImageSpan`s;
  a tiled image's tiles stitched into the original image's frame, thumbnail left out:
  `vlm_lens.core.image_frame`);
- the share of that row's attention on system / image / text / generated keys
  (`shares`: `[step, layer, head, 4]`, kinds in `SEGMENT_KINDS` order; a fifth, "marker",
  for an image with marker tokens).

Step k is the forward pass whose last query row predicts generated token k (0 = prefill).
Only those rows' reductions are kept (`AttentionRecord(query="last", keep=("image", "shares"))`),
never a full pattern.

One prompt per trace (it may hold several images); for batches use `HookedVLM.generate`
with an `AttentionRecord`, whose per-row results are the same.

Not for: batched runs or studies (`vlm_lens.core.generation`, `vlm_lens.studies`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from jaxtyping import Float, Int
from torch import Tensor

from vlm_lens.core.generation import generate
from vlm_lens.core.image_frame import to_image_frame
from vlm_lens.core.layers import LayerSpec
from vlm_lens.core.recording import AttentionRecord, Recording
from vlm_lens.core.segments import SEGMENT_KINDS, ImageSpan, Segments

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM


@dataclass
class GenerationTrace:
    """What `trace_generation` observed, for one prompt.

    Attributes:
        prompt: the prompt as the model saw it (chat template applied).
        tokens: `[step]` generated token ids (step k's forward chose token k).
        token_texts: each generated token decoded on its own (special tokens kept).
        text: the generated text (special tokens skipped).
        logits: `[step, vocab]` raw logits each step chose from (float32).
        layers: the recorded layers (non-negative), the `layer` axis below.
        images: one tensor per image, `[step, layer, head, h, w]`: attention of the predicting
            row to that image's tokens, on the image's token grid.
        shares: `[step, layer, head, 4]` attention mass on `SEGMENT_KINDS`
            ("system", "image", "text", "generated"); the four sum to 1.
        image_spans: the images' token spans and grids (from the segments).
        segments: the prompt's segments, extended by the generated tokens.
        recording: the underlying `Recording` (batch axis of 1).
        n_layers: the model's number of layers (resolves negative layer indices).
        tokenizer: decodes ids for `top_tokens`.
    """

    prompt: str
    tokens: Int[Tensor, " step"]
    token_texts: list[str]
    text: str
    logits: Float[Tensor, "step vocab"]
    layers: list[int]
    images: list[Float[Tensor, "step layer head h w"]]
    shares: Float[Tensor, "step layer head kind"]
    image_spans: list[ImageSpan]
    segments: Segments
    recording: Recording
    n_layers: int

    share_kinds: tuple[str, ...] = SEGMENT_KINDS
    tokenizer: Any = field(default=None, repr=False, compare=False)

    @property
    def n_steps(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def probs(self) -> Float[Tensor, "step vocab"]:
        return self.logits.softmax(-1)

    @property
    def token_probs(self) -> Float[Tensor, " step"]:
        """Probability each step gave to the token it generated."""
        return self.probs.gather(-1, self.tokens[:, None])[:, 0]

    def share(self, kind: str) -> Float[Tensor, "step layer head"]:
        """Attention mass on one kind of key: "system", "image", "text", "generated" (or
        "marker" where the image has marker tokens)."""
        if kind not in self.share_kinds:
            raise ValueError(f"unknown kind {kind!r}; expected one of {self.share_kinds}")
        return self.shares[..., self.share_kinds.index(kind)]

    def layer_index(self, layer: int) -> int:
        """Position of a model layer (negative: counted from the model's last) on the `layer` axis."""
        resolved = layer + self.n_layers if layer < 0 else layer
        if resolved not in self.layers:
            raise KeyError(f"layer {layer} was not recorded; recorded layers: {self.layers}")
        return self.layers.index(resolved)

    def image_map(
        self, step: int, layer: int, image: int = 0, head: int | None = None
    ) -> Float[Tensor, "h w"]:
        """One image's attention grid at one step and layer; `head=None` averages the heads."""
        grids = self.images[image][step, self.layer_index(layer)]  # [head, h, w]
        return grids.mean(0) if head is None else grids[head]

    def top_tokens(self, step: int, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most probable next tokens at `step`, as (text, probability)."""
        probs, ids = self.probs[step].topk(k)
        return [(self._decode(int(i)), float(p)) for p, i in zip(probs, ids)]

    def _decode(self, token_id: int) -> str:
        if self.tokenizer is None or token_id >= len(self.tokenizer):
            return f"<{token_id}>"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


def _split_images(
    per_token: Float[Tensor, "step layer head tokens"], spans: list[ImageSpan]
) -> list[Float[Tensor, "step layer head h w"]]:
    """Cut the image columns (all images of the row, in prompt order) into per-image grids."""
    maps, start = [], 0
    for span in spans:
        block = per_token[..., start : start + span.n_tokens]
        maps.append(to_image_frame(block, span))
        start += span.n_tokens
    return maps


def trace_generation(
    model: HookedVLM,
    images: Any,
    prompt: str,
    layers: LayerSpec = None,
    max_new_tokens: int = 16,
    system: str | None = None,
    heads: Literal["all", "mean"] = "all",
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
    **generate_kwargs: Any,
) -> GenerationTrace:
    """Generate greedily for one prompt and trace every step (see the module docstring).

    Args:
        images: an image or a list of images (PIL, path or array) for the one prompt.
        prompt: the user's text; images go first unless it marks them with "<image>".
        layers: layers to record, a layer spec (`vlm_lens.core.layers`); None = all.
        max_new_tokens: at most this many tokens (fewer if EOS comes first).
        system: an optional system prompt.
        heads: "all" keeps each head, "mean" keeps the head average (head axis of 1).
        fwd_hooks: hooks active during the run (e.g. an intervention); the trace records the
            pattern after them.
        **generate_kwargs: passed to the generation config (e.g. `min_new_tokens`).
    """
    if not isinstance(prompt, str):
        raise TypeError(
            "trace_generation traces one prompt; for a batch use model.generate(inputs, "
            "record=AttentionRecord(...))"
        )
    inputs = model.prepare(images=images, prompt=prompt, system=system)
    record = AttentionRecord(layers=layers, keep=("image", "shares"), query="last", heads=heads)
    out = generate(
        model, inputs, max_new_tokens, fwd_hooks=fwd_hooks, record=record, **generate_kwargs
    )
    rec = out.recording
    assert rec is not None and out.logits is not None
    spans = list(inputs.segments.samples[0].images)
    if spans:
        image = rec.stacked("image")[:, 0, :, :, 0]  # [step, layer, head, image_tokens]
        maps = _split_images(image, spans)
    else:
        maps = []
    shares = rec.stacked("shares")[:, 0, :, :, 0]  # [step, layer, head, kind]
    tokens = out.tokens[0]
    tokenizer = model.processor.tokenizer
    token_texts = [tokenizer.decode([int(t)], skip_special_tokens=False) for t in tokens]
    return GenerationTrace(
        prompt=inputs.texts[0],
        tokens=tokens,
        token_texts=token_texts,
        text=out.texts[0],
        logits=out.logits[:, 0],
        layers=rec.layers,
        images=maps,
        shares=shares,
        image_spans=spans,
        segments=out.segments,
        recording=rec,
        n_layers=model.cfg.n_layers,
        share_kinds=inputs.segments.share_kinds,
        tokenizer=tokenizer,
    )


__all__ = ["GenerationTrace", "trace_generation"]
