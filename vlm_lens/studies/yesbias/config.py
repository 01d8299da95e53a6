"""The yes-bias sweep's config: a frozen dataclass holding the items, the conditions and the
settings that decide what a record means.

Not for: the command line's spelling of these settings (`vlm_lens.cli.yesbias`) or the
conditions themselves (`vlm_lens.studies.yesbias.conditions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlm_lens.data.yesno.items import YesNoItem
from vlm_lens.interventions.hooks import Rows
from vlm_lens.interventions.patterns import Mode
from vlm_lens.studies.yesbias.conditions import Condition, resolve_system
from vlm_lens.studies.yesbias_options import MODES, ROWS

__all__ = ["SEMANTICS", "SweepConfig"]

#: run.json keys that change what a condition id's records mean, each with the value a
#: run.json written before the key existed stands for (mode and rows came later).
SEMANTICS: dict[str, Any] = {
    "model": None,
    "benchmark": None,
    "max_new_tokens": None,
    "system": None,
    "mode": "proportional",
    "rows": "answer",
}


@dataclass(frozen=True)
class SweepConfig:
    """One sweep: every condition on every item, with one set of edit semantics.

    Attributes:
        items: the benchmark's items (all of them: a shard picks its own pairing units).
        conditions: from `sweep_conditions` (the baseline first, for the delta table).
        max_new_tokens: greedy tokens generated per item; the answer is the first word.
        system: "none" / None (no system message), "paper" (`PAPER_SYSTEM`) or the text
            of a system prompt, passed to `model.prepare`.
        mode: "proportional" or "uniform" spreading of redistributed attention.
        rows: "answer" or "all": the query rows every condition edits.
        record_shares: keep the per-layer attention shares of the answer row.

    Bad values raise `ValueError` here, before a run writes anything.
    """

    items: tuple[YesNoItem, ...] = field(repr=False)
    conditions: tuple[Condition, ...]
    max_new_tokens: int = 4
    system: str | None = None
    mode: Mode = "proportional"
    rows: Rows = "answer"
    record_shares: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.max_new_tokens < 1:  # before run.json is written (it would pin the folder to it)
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.rows not in ROWS:
            raise ValueError(f"rows must be one of {ROWS}, got {self.rows!r}")
        if not self.items:
            raise ValueError("no items to run")
        ids = [c.id for c in self.conditions]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate conditions in the sweep")

    @property
    def benchmark(self) -> str:
        return self.items[0].benchmark

    @property
    def system_text(self) -> str | None:
        """The system prompt's text (None for no system message)."""
        return resolve_system(self.system)[1]

    @property
    def system_preset(self) -> str:
        return resolve_system(self.system)[0]

    def dataset(self) -> list[YesNoItem]:
        return list(self.items)
