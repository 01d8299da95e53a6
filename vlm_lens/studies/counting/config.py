"""The counting study's config: one condition (`CountingConfig`), its variants
(`conditions`), the re-grounding test (`Regrounding`) and the study's layer words.

Not for: the prompt and its parser (`vlm_lens.data.count_prompt`) or the layer grammar
(`vlm_lens.core.layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from vlm_lens.core.layers import resolve_layers
from vlm_lens.data import dots
from vlm_lens.data.count_prompt import COT_COUNT_PROMPT, COUNT_PROMPT
from vlm_lens.studies import runlog

__all__ = [
    "CONTROL_CONDITION",
    "COT_PROMPT",
    "PAPER_LAYERS",
    "PROMPT",
    "CountingConfig",
    "Regrounding",
    "conditions",
    "study_layers",
]

PROMPT = COUNT_PROMPT
COT_PROMPT = COT_COUNT_PROMPT
PAPER_LAYERS = (-1, 8, 16, 24)
#: The condition holding the content-free (dots shuffled) run of the baseline condition.
CONTROL_CONDITION = "shuffled"


@dataclass(frozen=True)
class Regrounding:
    """Re-grounding at the units digit (and later digits): a causal test of Language Takeover.

    Attributes:
        mode: "restore": each head's image columns get the head's step-1 image
            distribution, scaled to the row's current image mass (the rest of the row is
            untouched); "restore_mass": the step-1 columns exactly (distribution and mass;
            the non-image part is rescaled so the row sums to 1); "scale": image columns
            times `alpha`, then the row is renormalised.
        alpha: factor for "scale".
        layers: layers to intervene in (negative allowed); None = the study's layers.
    """

    mode: Literal["restore", "restore_mass", "scale"] = "restore"
    alpha: float = 2.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("restore", "restore_mass", "scale"):
            raise ValueError(
                f"regrounding mode must be 'restore', 'restore_mass' or 'scale', got {self.mode!r}"
            )
        if self.mode == "scale" and not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")

    @classmethod
    def parse(cls, spec: str, layers: Sequence[int] | None = None) -> Regrounding:
        """`"restore"`, `"restore-mass"` or `"scale:ALPHA"` (e.g. `"scale:2"`)."""
        name, _, value = spec.strip().partition(":")
        name = name.replace("-", "_")
        if name == "scale":
            if not value:
                raise ValueError("scale needs a factor, e.g. scale:2")
            return cls("scale", float(value), None if layers is None else tuple(layers))
        if value:
            raise ValueError(f"regrounding {name!r} takes no value, got {spec!r}")
        return cls(name, layers=None if layers is None else tuple(layers))  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"scale:{self.alpha:g}" if self.mode == "scale" else self.mode


@dataclass(frozen=True)
class CountingConfig:
    """One condition of the study: its dataset, prompt and what to record.

    Defaults are the paper's: 256 images of 1024 px, 10-16 dots of radius 10, the
    direct-answer prompt, greedy decoding, the last layer. `layers` may be "last",
    "paper" (-1, 8, 16, 24, dropping those beyond the model's depth) or layer indices.
    `digits_only` suppresses every non-digit token but EOS and caps the answer at the
    number of digits of the largest count: for untrained models, so the attention
    pipeline has digit steps to measure (never for reported numbers of real models).
    `controls` stores every sample's maps and dot centres (the halo controls and the
    permutation test need them all; `example_maps` only sets how many the report draws).
    `content_free`: "shuffled" or "blank" runs the same images with the dots moved or
    removed (`dots.content_free`): the condition the sink baseline is taken from.
    """

    n: int = 256
    seed: int = 0
    condition: str = "baseline"
    layers: str | int | tuple[int, ...] = "last"
    prompt: str = PROMPT
    answer: Literal["first", "last"] = "first"
    max_new_tokens: int = 8
    size: int = 1024
    radius: float = 10.0
    count_range: tuple[int, int] = (10, 16)
    regrounding: Regrounding | None = None
    digits_only: bool = False
    example_maps: int = 4
    band_width: float = 1.0
    controls: bool = True
    content_free: Literal["shuffled", "blank"] | None = None

    def __post_init__(self) -> None:
        if self.content_free not in (None, *dots.CONTENT_FREE_KINDS):
            raise ValueError(
                f"content_free must be one of {dots.CONTENT_FREE_KINDS} or None, "
                f"got {self.content_free!r}"
            )

    def dataset(self) -> list[dots.DotsSample]:
        samples = dots.generate(
            self.n,
            self.seed,
            size=self.size,
            radius=self.radius,
            count_range=tuple(self.count_range),
        )
        if self.content_free is None:
            return samples
        return dots.content_free(samples, self.content_free, self.seed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regrounding"] = None if self.regrounding is None else asdict(self.regrounding)
        return runlog.jsonable(d)


def conditions(
    base: CountingConfig,
    *,
    cot: bool = False,
    three_digit: bool = False,
    cot_max_new_tokens: int = 256,
    three_digit_range: tuple[int, int] = (100, 130),
    three_digit_radius: float | None = None,
    controls: bool = True,
) -> list[CountingConfig]:
    """The baseline condition plus the requested variants (same seed, n and layers).

    With `controls`, a `CONTROL_CONDITION` run of the baseline on the same images with
    their dots shuffled (no re-grounding): the content-free map the halo is judged against.
    """
    base = replace(base, controls=controls)
    out = [base]
    if controls:
        out.append(
            replace(base, condition=CONTROL_CONDITION, content_free="shuffled", regrounding=None)
        )
    if cot:
        out.append(
            replace(
                base,
                condition="cot",
                prompt=COT_PROMPT,
                answer="last",
                max_new_tokens=max(base.max_new_tokens, cot_max_new_tokens),
            )
        )
    if three_digit:
        out.append(
            replace(
                base,
                condition="three_digit",
                count_range=tuple(three_digit_range),
                radius=three_digit_radius if three_digit_radius is not None else base.radius / 2,
                max_new_tokens=max(base.max_new_tokens, 8),
            )
        )
    return out


def study_layers(layers: str | int | Sequence[int] | None, n_layers: int) -> list[int]:
    """Resolve "last" / "paper" / indices to non-negative layer indices (order kept, no repeats).

    "paper" is the paper's -1, 8, 16, 24 with the layers a shallow model lacks dropped.
    """
    wanted = "last" if layers is None else layers
    return resolve_layers(wanted, n_layers, {"paper": PAPER_LAYERS}, sort=False)
