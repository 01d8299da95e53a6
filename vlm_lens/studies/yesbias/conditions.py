"""The yes-bias sweep's arms: `Condition` (one intervention with a stable string id) and
`sweep_conditions` (the arms of a sweep), plus the system prompt setting.

Not for: the attention arithmetic (`vlm_lens.interventions`) or running the arms
(`vlm_lens.studies.yesbias.measure`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vlm_lens.interventions import Intervention, knockout, redistribute, scale_modality
from vlm_lens.interventions.hooks import Rows
from vlm_lens.interventions.patterns import Mode
from vlm_lens.studies.yesbias_options import DIRECTIONS, FRACTIONS, QUARTERS, SYSTEM_PRESETS

__all__ = ["Condition", "resolve_system", "sweep_conditions"]

Kind = Literal["baseline", "redistribute", "scale", "knockout"]


def resolve_system(system: str | None) -> tuple[str, str | None]:
    """`(preset, text)` of a `system=` setting: None or "none" -> ("none", None), "paper" ->
    ("paper", `PAPER_SYSTEM`), anything else -> ("custom", the text itself)."""
    if system is None:
        return "none", None
    if system in SYSTEM_PRESETS:
        return system, SYSTEM_PRESETS[system]
    return "custom", system


@dataclass(frozen=True)
class Condition:
    """One arm of the sweep.

    Attributes:
        kind: "baseline", "redistribute", "scale" (modality ×alpha, renormalised) or
            "knockout" (modality zeroed, renormalised).
        target: for "redistribute" a direction "source->recipient[+recipient]" (e.g.
            "system->image+text"); for "scale" / "knockout" the modality.
        layers: a layer spec of `vlm_lens.interventions` ("Q4", "all", "20:28", ...).
        fraction: share of the source's weight moved ("redistribute").
        alpha: factor ("scale").
    """

    kind: Kind
    target: str | None = None
    layers: str | None = None
    fraction: float | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("baseline", "redistribute", "scale", "knockout"):
            raise ValueError(f"unknown condition kind {self.kind!r}")
        if self.kind != "baseline" and (not self.target or not self.layers):
            raise ValueError(f"a {self.kind} condition needs a target and layers")
        if self.kind == "redistribute":
            if self.fraction is None or "->" not in str(self.target):
                raise ValueError("redistribute needs target 'source->recipients' and a fraction")
            object.__setattr__(self, "fraction", float(self.fraction))
            if not 0.0 <= self.fraction <= 1.0:
                raise ValueError(f"fraction must lie in [0, 1], got {self.fraction}")
        if self.kind == "scale":
            if self.alpha is None:
                raise ValueError("scale needs alpha")
            object.__setattr__(self, "alpha", float(self.alpha))
            if not 0.0 <= self.alpha < float("inf"):
                raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")

    @property
    def id(self) -> str:
        """Stable string id, e.g. ``redistribute:system->text:Q4:f1.0``."""
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "redistribute":
            return f"redistribute:{self.target}:{self.layers}:f{self.fraction!r}"
        if self.kind == "scale":
            return f"scale:{self.target}:{self.layers}:a{self.alpha!r}"
        return f"knockout:{self.target}:{self.layers}"

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Inverse of `id`."""
        parts = text.split(":")
        try:
            if parts == ["baseline"]:
                return cls("baseline")
            if parts[0] == "redistribute" and len(parts) == 4 and parts[3].startswith("f"):
                return cls("redistribute", parts[1], parts[2], fraction=float(parts[3][1:]))
            if parts[0] == "scale" and len(parts) == 4 and parts[3].startswith("a"):
                return cls("scale", parts[1], parts[2], alpha=float(parts[3][1:]))
            if parts[0] == "knockout" and len(parts) == 3:
                return cls("knockout", parts[1], parts[2])
        except ValueError as err:
            raise ValueError(f"bad condition id {text!r}: {err}") from err
        raise ValueError(
            f"bad condition id {text!r}; expected 'baseline', "
            "'redistribute:SRC->DST:LAYERS:fF', 'scale:MOD:LAYERS:aA' or 'knockout:MOD:LAYERS'"
        )

    @property
    def source(self) -> str | None:
        return self.target.split("->")[0] if self.kind == "redistribute" else None

    @property
    def recipients(self) -> tuple[str, ...]:
        if self.kind != "redistribute":
            return ()
        return tuple(self.target.split("->", 1)[1].split("+"))

    @property
    def label(self) -> str:
        """Row label of the heatmap: the intervention without its layers."""
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "redistribute":
            return f"{self.target} f={self.fraction:g}"
        if self.kind == "scale":
            return f"{self.target}×{self.alpha:g}"
        return f"knockout {self.target}"

    def intervention(
        self, model: Any, mode: Mode = "proportional", rows: Rows = "answer"
    ) -> Intervention | None:
        """The condition's edit bound to `model` (None for the baseline); `mode` applies to
        redistributions, `rows` to every edit (see the module docstring)."""
        if self.kind == "baseline":
            return None
        if self.kind == "redistribute":
            recipients = list(self.recipients)
            return redistribute(
                self.source,
                recipients[0] if len(recipients) == 1 else recipients,
                self.layers,
                fraction=self.fraction,
                mode=mode,
                rows=rows,
                model=model,
            )
        if self.kind == "scale":
            return scale_modality(self.target, self.alpha, self.layers, rows=rows, model=model)
        return knockout(self.target, self.layers, rows=rows, model=model)

    def fwd_hooks(
        self, model: Any, mode: Mode = "proportional", rows: Rows = "answer"
    ) -> list[tuple[str, Any]]:
        """The condition's `(hook name, function)` pairs for `model` (none for the baseline)."""
        edit = self.intervention(model, mode, rows)
        return [] if edit is None else edit.fwd_hooks(model)


def sweep_conditions(
    sweep: Literal["quarters", "paper", "none"] = "quarters",
    fractions: Sequence[float] = FRACTIONS,
    directions: Sequence[str] = tuple(DIRECTIONS),
    quarters: Sequence[str] = QUARTERS,
    image_alpha: float | None = 2.0,
    knockout: bool = False,
) -> list[Condition]:
    """The conditions of a sweep, baseline first.

    - "quarters": every direction × quarter × fraction (dose-response), image ×`image_alpha`
      per quarter, and with `knockout` the system knockout per quarter.
    - "paper": the paper's arms: system->text / image / image+text in Q4 at fraction 1,
      image ×`image_alpha` in Q4 and in all layers (and system knockout in Q4).
    - "none": the baseline only.
    """
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown directions {unknown}; known: {list(DIRECTIONS)}")
    out = [Condition("baseline")]
    if sweep == "none":
        return out
    if sweep == "paper":
        for d in ("system->text", "system->image", "system->image+text"):
            out.append(Condition("redistribute", d, "Q4", fraction=1.0))
        if image_alpha is not None:
            out += [Condition("scale", "image", q, alpha=image_alpha) for q in ("Q4", "all")]
        if knockout:
            out.append(Condition("knockout", "system", "Q4"))
        return out
    if sweep != "quarters":
        raise ValueError(f"sweep must be 'quarters', 'paper' or 'none', got {sweep!r}")
    for d in directions:
        for q in quarters:
            for f in fractions:
                out.append(Condition("redistribute", d, q, fraction=float(f)))
    if image_alpha is not None:
        out += [Condition("scale", "image", q, alpha=image_alpha) for q in quarters]
    if knockout:
        out += [Condition("knockout", "system", q) for q in quarters]
    return out
