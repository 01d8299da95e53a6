"""The yes-bias study's option values: file names, sweep directions, fractions, modes.

Plain constants with no imports, so that `vlm-lens yesbias --help` can offer them as choices
and defaults without importing torch or the study (`vlm_lens.studies.yesbias` re-exports
every name here).

Not for: what the options do (`vlm_lens.studies.yesbias`, `vlm_lens.interventions`).
"""

RECORDS = "records.jsonl"
ITEMS = "items.jsonl"
RUN = "run.json"

#: Source -> recipients of the sweep, keyed by the label used in condition ids.
DIRECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "system->text": ("system", ("text",)),
    "system->image": ("system", ("image",)),
    "system->image+text": ("system", ("image", "text")),
    "text->system": ("text", ("system",)),
    "image->system": ("image", ("system",)),
}
QUARTERS = ("Q1", "Q2", "Q3", "Q4")
FRACTIONS = (0.25, 0.5, 0.75, 1.0)

#: The vicuna_v1 system prompt of the yes-bias paper's LLaVA-1.5 runs (PITFALLS 15).
PAPER_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)
#: Named system prompts: `system=` / `--system` takes one of these names or literal text.
SYSTEM_PRESETS: dict[str, str | None] = {"none": None, "paper": PAPER_SYSTEM}
MODES = ("proportional", "uniform")
ROWS = ("answer", "all")
