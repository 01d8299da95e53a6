"""Generation with step-aware hooks and an optional attention recording.

`generate` runs Hugging Face's own `generate` (KV cache, multimodal rotary positions,
left padding: all as HF does them) with the user's hooks attached for the whole run.
Every hook can read `hook.run.step`: 0 for the prefill, k for the k-th decoding step.
Step k is the forward pass whose last query row predicts generated token k, so a run
that generates n tokens has steps 0..n-1 and every hook point fires once per step.
An `AttentionRecord` (`vlm_lens.core.recording`) keeps slim per-step attention.

It drives the model through its public API only (`model.running(inputs)`, `model.hooks`,
`model.hf_model`), so `HookedVLM.generate` is a thin method over this module.

Not for: study logic (what to do with the maps lives in `vlm_lens.studies`), or the
per-image grids of one traced generation (`vlm_lens.core.trace`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import GenerationConfig

from vlm_lens.core.recording import AttentionRecord, AttentionRecorder, Recording
from vlm_lens.core.segments import Segments

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM
    from vlm_lens.core.prepare import VLMInputs


@dataclass
class GenerationResult:
    """Output of `HookedVLM.generate`.

    `sequences`: `[batch, prompt_len + new]` (left-padded prompt then generated ids);
    `tokens`: `[batch, new]`; `logits`: `[step, batch, vocab]` of the distribution each step
    chose from (the model's raw logits, before any logits processor; float32, on CPU);
    `segments`: the prompt's segments extended by the generated span; `recording`: what an
    `AttentionRecord` kept, if one was given.

    In a batch, a row that stops (EOS) before the others is padded by HF with the pad
    token; its later steps still have logits (of a pad input) that a one-row run would
    not have. Pass `min_new_tokens=max_new_tokens` for equal lengths.
    """

    sequences: Int[Tensor, "batch seq"]
    tokens: Int[Tensor, "batch new"]
    texts: list[str]
    logits: Float[Tensor, "step batch vocab"] | None
    segments: Segments
    recording: Recording | None = None

    @property
    def n_steps(self) -> int:
        return self.tokens.shape[1]

    @property
    def probs(self) -> Float[Tensor, "step batch vocab"]:
        if self.logits is None:
            raise ValueError("logits were not kept (keep_logits=False)")
        return self.logits.softmax(-1)


def generation_config(
    model: HookedVLM, max_new_tokens: int, keep_logits: bool = True, **generate_kwargs: Any
) -> GenerationConfig:
    """The greedy `GenerationConfig` vlm_lens generates with (EOS / pad / BOS from the
    checkpoint's generation config, the tokenizer's pad token first)."""
    defaults = model.hf_model.generation_config
    tokenizer = model.processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else defaults.pad_token_id
    settings: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=defaults.eos_token_id,
        pad_token_id=pad,
        bos_token_id=defaults.bos_token_id,
        return_dict_in_generate=True,
        output_logits=keep_logits,
    )
    settings.update(generate_kwargs)
    return GenerationConfig(**settings)


def generate(
    model: HookedVLM,
    inputs: VLMInputs,
    max_new_tokens: int = 16,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
    record: AttentionRecord | None = None,
    keep_logits: bool = True,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Greedy generation through HF's `generate` with hooks and an optional recording.

    See `HookedVLM.generate`. The user's hooks are attached before the recorder's, so the
    recording sees the pattern after the user's edits. `generate_kwargs` go into the
    `GenerationConfig` (e.g. `min_new_tokens`, `do_sample=True`, `temperature`).

    Multi-device: load with `HookedVLM.from_pretrained(path, device_map="auto")` (or a dict
    of module name -> device) on a GPU machine. Inputs go to the embedding's device; each
    hook runs on the device of its layer and the recording moves its slices to
    `AttentionRecord.device` (CPU by default), so nothing else changes.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    recorder = (
        AttentionRecorder(record, model.cfg.n_layers, model.cfg.cross_attention_layers)
        if record is not None
        else None
    )
    hooks = list(fwd_hooks) + (recorder.fwd_hooks() if recorder else [])
    config = generation_config(model, max_new_tokens, keep_logits, **generate_kwargs)
    with model.running(inputs) as kwargs, model.hooks(fwd_hooks=hooks), torch.no_grad():
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


__all__ = ["AttentionRecord", "GenerationResult", "Recording", "generate", "generation_config"]
