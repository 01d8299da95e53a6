"""Counterfactual inputs for the counting study: a dots pair -> clean/corrupted inputs + answers.

`vlm_lens.data.dots.counterfactual_pairs` makes two images that differ by one added dot;
`counting_pair` turns one into what a sweep needs: both images under the same prompt (same
size, so the same token layout), the two counts as answer tokens, and the decoding steps
at which they differ, teacher-forcing the digits before each step.

Not for: generating images (that is `vlm_lens.data.dots`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vlm_lens.core.prepare import VLMInputs
from vlm_lens.data.count_prompt import COUNT_PROMPT
from vlm_lens.data.dots import DotsPair
from vlm_lens.patching.inputs import check_same_layout
from vlm_lens.patching.sweep import AnswerStep, answer_steps

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM


@dataclass
class CountingPair:
    """A dots pair as model inputs.

    Attributes:
        clean, corrupted: prepared inputs (one example each, same token layout).
        clean_answer, corrupted_answer: token ids of `str(count)` of each image.
        steps: every decoding step where the two answers differ; step k teacher-forces the
            clean answer's first k tokens (the shared digits: "16" vs "15" gives one step,
            k = 1 after "1"). A shorter answer is compared by its end token (EOS).
        pair: the `DotsPair` it came from.
    """

    clean: VLMInputs
    corrupted: VLMInputs
    clean_answer: tuple[int, ...]
    corrupted_answer: tuple[int, ...]
    steps: list[AnswerStep]
    pair: DotsPair

    @property
    def added_patch(self) -> tuple[int, int]:
        """(row, col) of the image token whose patch holds the added dot's centre.

        The processor resizes the whole image onto the token grid, so relative positions
        carry over (up to the rounding of the resize).
        """
        h, w = self.clean.segments.samples[0].images[0].grid
        x, y = self.pair.added_centre
        width, height = self.pair.clean.size
        return min(int(y / height * h), h - 1), min(int(x / width * w), w - 1)

    @property
    def first_step(self) -> AnswerStep:
        """The first step where the answers differ (the first digit that carries the count)."""
        return self.steps[0]


def answer_tokens(model: HookedVLM, text: str) -> tuple[int, ...]:
    """Token ids of an answer string, as the model's tokenizer splits it (no special tokens).

    Real SentencePiece tokenizers may split a number after "Answer: " differently from how
    the model generates it; check with `model.generate` on a real checkpoint.
    """
    ids = model.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer gives no tokens for {text!r}")
    return tuple(int(i) for i in ids)


def counting_pair(
    model: HookedVLM,
    pair: DotsPair,
    prompt: str = COUNT_PROMPT,
    system: str | None = None,
) -> CountingPair:
    """Clean and corrupted inputs, answers and steps of a `DotsPair` for `model`."""
    clean = model.prepare(images=[pair.clean.image], prompt=prompt, system=system)
    corrupted = model.prepare(images=[pair.corrupted.image], prompt=prompt, system=system)
    check_same_layout(clean, corrupted)
    clean_answer = answer_tokens(model, str(pair.clean.count))
    corrupted_answer = answer_tokens(model, str(pair.corrupted.count))
    steps = answer_steps(
        clean_answer, corrupted_answer, end_token=next(iter(model.eos_token_ids), None)
    )
    if not steps:
        raise ValueError(
            f"the answers {pair.clean.count} and {pair.corrupted.count} tokenize the same"
        )
    return CountingPair(clean, corrupted, clean_answer, corrupted_answer, steps, pair)
