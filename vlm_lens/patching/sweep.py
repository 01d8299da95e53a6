"""Activation-patching sweeps: clean cached once, patched runs batched, one cell per batch row.

A *cell* is one place to patch: a layer, a head (head families) and a position group.
For every decoding step asked for, the sweep

1. appends the step's answer prefix to both inputs (teacher forcing) and checks that their
   token layouts match;
2. runs the clean input once, caching only the hook points the sweep patches
   (1 forward pass);
3. runs the corrupted input once in full, keeping the residual stream entering each swept
   layer (1 forward pass; its logits are the corrupted baseline; `vlm_lens.patching.resume`);
4. gives each row of a batch its own cell (row r copies the clean activation into the
   corrupted run at its cell only) and starts the batch at the first layer any of its rows
   patches, from the corrupted residual stream there: no vision tower, no embeddings, no
   layer below, and (causal attention) no position before the first one it patches (about
   ceil(cells / batch_size) passes, each over the layers and positions from its start; a
   layer with at least `batch_size` cells gets batches of its own);
5. reads the metric on the last row's logits (the row that predicts the step's answer
   token) and normalises it: 0 = the corrupted run, 1 = the clean run.

Where starting at a layer would not be exact (see `vlm_lens.patching.resume`: recording
checks it), that batch runs from the inputs instead; `resume=False` does so for every
batch (the corrupted input replicated along the batch, the image encoded once per batch,
the corrupted baseline as an extra row of the first batch), the reference path.

A naive loop makes one forward pass per cell plus two; the batched sweep makes far fewer,
and shorter ones (`PatchingResult.n_forward_passes`, and their cost in decoder layers x
rows x positions, `PatchingResult.n_layer_tokens`).

Not for: inputs with more than one example (patch one pair at a time and average results),
or path patching.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vlm_lens.adapters import get_module
from vlm_lens.core.layers import LayerSpec
from vlm_lens.core.prepare import VLMInputs
from vlm_lens.patching.inputs import (
    check_same_layout,
    repeat_inputs,
    repeat_segments,
    with_answer_prefix,
)
from vlm_lens.patching.positions import PositionGroup, Positions, position_groups
from vlm_lens.patching.result import PatchingResult
from vlm_lens.patching.resume import ResumePoint, record_resume_point, resume

if TYPE_CHECKING:
    from vlm_lens.core.hooked_vlm import HookedVLM


# ----------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class AnswerStep:
    """Decoding step k under teacher forcing, and the two answer tokens compared there.

    Attributes:
        prefix: answer tokens 0..k-1, appended to both inputs (so `step == len(prefix)`).
        clean_token: the token the clean run should predict at this step.
        corrupted_token: the token the corrupted run predicts (or should) at this step.
    """

    prefix: tuple[int, ...]
    clean_token: int
    corrupted_token: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", tuple(int(t) for t in self.prefix))

    @property
    def step(self) -> int:
        return len(self.prefix)


def answer_steps(
    clean_answer: Sequence[int],
    corrupted_answer: Sequence[int],
    *,
    end_token: int | None = None,
    steps: Sequence[int] | None = None,
) -> list[AnswerStep]:
    """Teacher-forced steps of two answers: step k appends `clean_answer[:k]` to both inputs.

    By default every step where the two answers' tokens differ (e.g. "16" vs "15": step 1,
    after the shared "1"; "10" vs "9": steps 0 and 1). A shorter answer continues with
    `end_token` (e.g. the EOS id) at the step after its last token. `steps` picks steps
    explicitly (then a step whose two tokens coincide is kept; a metric comparing them is
    degenerate there, and normalising raises).
    """
    clean_answer, corrupted_answer = list(clean_answer), list(corrupted_answer)
    n = max(len(clean_answer), len(corrupted_answer))

    def token(answer: list[int], k: int, name: str) -> int:
        if k < len(answer):
            return int(answer[k])
        if k == len(answer) and end_token is not None:
            return int(end_token)
        raise ValueError(
            f"step {k} is past the end of the {name} answer {answer} (give end_token=... "
            "to compare with the end of the answer)"
        )

    if steps is None:
        chosen = []
        for k in range(n):
            if k >= len(clean_answer):
                break  # the clean prefix cannot teacher-force past its own end
            try:
                a, b = token(clean_answer, k, "clean"), token(corrupted_answer, k, "corrupted")
            except ValueError:
                break
            if a != b:
                chosen.append(k)
    else:
        chosen = list(steps)
    out = []
    for k in chosen:
        if k > len(clean_answer):
            raise ValueError(f"step {k} needs {k} clean answer tokens, have {len(clean_answer)}")
        out.append(
            AnswerStep(
                tuple(clean_answer[:k]),
                token(clean_answer, k, "clean"),
                token(corrupted_answer, k, "corrupted"),
            )
        )
    return out


Metric = Callable[[Float[Tensor, "batch vocab"], AnswerStep], Float[Tensor, " batch"]]
"""A metric reads the last row's logits (`[batch, vocab]`) of a step and gives one value per row."""


def logit_diff(logits: Float[Tensor, "batch vocab"], answer: AnswerStep) -> Float[Tensor, " batch"]:
    """Logit of the clean answer token minus logit of the corrupted answer token (the default)."""
    return logits[:, answer.clean_token] - logits[:, answer.corrupted_token]


def logprob_clean(
    logits: Float[Tensor, "batch vocab"], answer: AnswerStep
) -> Float[Tensor, " batch"]:
    """Log-probability of the clean answer token."""
    return logits.log_softmax(-1)[:, answer.clean_token]


# ----------------------------------------------------------------------------- families


@dataclass(frozen=True)
class HookFamily:
    """A kind of activation to patch: its hook point per layer and the layout of its tensor.

    `layout` names the activation's axes: "resid" `[batch, pos, d_model]`, "z"
    `[batch, pos, head, d_head]`, "pattern" `[batch, head, query, key]` (positions select
    query rows: a patched row keeps the clean run's attention from that query to every key).
    """

    name: str
    hook: str
    layout: str

    @property
    def per_head(self) -> bool:
        return self.layout != "resid"

    def hook_name(self, layer: int, cross_attention_layers: Collection[int] = ()) -> str:
        # A cross-attention layer's attention hook points are `cross_attn.*` (Mllama).
        attn = "cross_attn" if layer in cross_attention_layers else "attn"
        return self.hook.format(layer=layer, attn=attn)


FAMILIES: dict[str, HookFamily] = {
    "resid_pre": HookFamily("resid_pre", "blocks.{layer}.hook_resid_pre", "resid"),
    "resid_post": HookFamily("resid_post", "blocks.{layer}.hook_resid_post", "resid"),
    "z": HookFamily("z", "blocks.{layer}.{attn}.hook_z", "z"),
    "pattern": HookFamily("pattern", "blocks.{layer}.{attn}.hook_pattern", "pattern"),
}
_ALIASES = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_post": "resid_post",
    "hook_z": "z",
    "attn_head_out": "z",
    "hook_pattern": "pattern",
    "attn_head_pattern": "pattern",
}


def get_family(name: str | HookFamily) -> HookFamily:
    if isinstance(name, HookFamily):
        return name
    key = _ALIASES.get(name, name)
    if key not in FAMILIES:
        raise ValueError(
            f"unknown hook family {name!r}; use one of {list(FAMILIES)} (or {list(_ALIASES)})"
        )
    return FAMILIES[key]


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True)
class _Cell:
    family: HookFamily
    layer: int
    heads: tuple[int, ...] | None  # None: all heads (or a residual family)
    positions: tuple[int, ...]


class _Counter:
    """Forward passes made, and their cost: decoder layers x batch rows x query positions."""

    def __init__(self) -> None:
        self.n = 0
        self.layer_tokens = 0

    def count(self, rows: int, layers: int, positions: int) -> None:
        self.n += 1
        self.layer_tokens += rows * layers * positions


def _first_copy(obj: Any, copies: int) -> Any:
    # Pixels arrive as one copy (`repeat_inputs(share_pixels=True)`); what arrives repeated is
    # per-image metadata, integer (Qwen's `grid_thw`).
    integer = isinstance(obj, Tensor) and not obj.is_floating_point() and obj.ndim
    if integer and obj.shape[0] % copies == 0:
        return obj[: obj.shape[0] // copies]
    return obj


def _tile(obj: Any, copies: int) -> Any:
    if isinstance(obj, Tensor):
        return torch.cat([obj] * copies, dim=0) if obj.ndim else obj
    if isinstance(obj, dict):  # also transformers' ModelOutput
        for key in list(obj.keys()):
            obj[key] = _tile(obj[key], copies)
        return obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_tile(x, copies) for x in obj)
    return obj


@contextmanager
def _one_vision_pass(model: HookedVLM, copies: int):
    """Encode the image once for a batch of `copies` identical rows.

    Every row of a patched batch carries the same image, and the vision tower is not
    patched: the batch holds the pixels once (`repeat_inputs(share_pixels=True)`, so they
    are not copied, cast or moved per row), a forward pre-hook hands the tower one copy of
    the per-image metadata that is repeated (Qwen's `grid_thw`), and a forward hook stacks
    the tower's outputs back to `copies`. The language model sees exactly what it would
    have; only the repeated work is gone.
    """
    if copies <= 1:
        yield
        return
    tower = get_module(model.hf_model, model.adapter.vision_tower)

    def shrink(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return (
            tuple(_first_copy(a, copies) for a in args),
            {k: _first_copy(v, copies) for k, v in kwargs.items()},
        )

    def grow(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        return _tile(output, copies)

    handles = [
        tower.register_forward_pre_hook(shrink, with_kwargs=True),
        tower.register_forward_hook(grow),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _last_logits(
    model: HookedVLM,
    inputs: VLMInputs,
    fwd_hooks: list,
    counter: _Counter,
    copies: int = 1,
) -> Float[Tensor, "batch vocab"]:
    """One forward pass keeping only the last row's logits (a real vocabulary times the whole
    prompt times the batch would not fit). `copies`: the batch is that many copies of one
    example (`repeat_inputs(..., share_pixels=True)`), so the image is encoded once."""
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks), _one_vision_pass(model, copies):
        logits = model(inputs, logits_to_keep=1)[:, -1]
    counter.count(inputs.batch_size, model.cfg.n_layers, inputs.input_ids.shape[1])
    return _as_float(logits)


def _as_float(logits: Tensor) -> Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def _record_corrupted(
    model: HookedVLM, corrupted: VLMInputs, layers: list[int], counter: _Counter
) -> ResumePoint:
    """The corrupted run in full, once: its logits are the baseline, and patched batches
    resume from its residual stream (`vlm_lens.patching.resume`)."""
    point = record_resume_point(model, corrupted, layers)
    counter.count(1, model.cfg.n_layers, corrupted.input_ids.shape[1])
    return point


def _patched_logits(
    model: HookedVLM,
    corrupted: VLMInputs,
    point: ResumePoint | None,
    rows: list[list[_Cell]],
    hooks: list,
    counter: _Counter,
) -> Float[Tensor, "batch vocab"]:
    """Last-row logits of one patched batch (row r patched at `rows[r]`): resumed at its
    first patched layer (and, where exact, its first patched position) where `point` allows
    it, else a full pass of `len(rows)` copies."""
    cells = [cell for row in rows for cell in row]
    start = min((cell.layer for cell in cells), default=0)
    if point is None or not point.resumable(start):
        batch = repeat_inputs(corrupted, len(rows), share_pixels=True)
        return _last_logits(model, batch, hooks, counter, len(rows))
    first = min((min(cell.positions) for cell in cells if cell.positions), default=0)
    first = point.first_position(start, first)
    segments = repeat_segments(corrupted.segments, len(rows))
    with model.hooks(fwd_hooks=hooks):
        logits = resume(model, point, start, len(rows), segments, first)
    n_pos = corrupted.input_ids.shape[1]
    counter.count(len(rows), model.cfg.n_layers - start, n_pos - first)
    return _as_float(logits)


def resume_unsupported(model: HookedVLM) -> str | None:
    """Why starting a patched batch at its layer is not validated for this model (None: it is).

    Resuming is checked exact on families whose image is one untiled block of the prompt
    (`tests/test_patching.py`); cross-attention layers, tiled images and prefix-LM prompts
    take the full path until their resume is validated (issue #15)."""
    adapter = model.adapter
    if model.cfg.cross_attention_layers:
        return "cross-attention layers"
    if adapter.layout is not None:
        return "tiled images"
    if adapter.prompt_template is not None:
        return "a prefix-LM prompt without a chat template"
    return None


def _cache_clean(
    model: HookedVLM, inputs: VLMInputs, names: list[str], counter: _Counter
) -> tuple[Float[Tensor, "1 vocab"], dict[str, Tensor]]:
    cache: dict[str, Tensor] = {}

    def save(act: Tensor, hook: Any) -> None:
        cache[hook.name] = act.detach().clone()

    logits = _last_logits(model, inputs, [(n, save) for n in names], counter)
    return logits, cache


def _patch_hooks(
    model: HookedVLM, rows: list[list[_Cell]], cache: dict[str, Tensor], n_pos: int
) -> list[tuple[str, Callable]]:
    """Hooks that give batch row r the clean activation at the cells `rows[r]` (and nowhere else)."""
    batch, n_heads = len(rows), model.cfg.n_heads
    masks: dict[str, Tensor] = {}
    for r, cells in enumerate(rows):
        for cell in cells:
            name = cell.family.hook_name(cell.layer, model.cfg.cross_attention_layers)
            pos = torch.tensor(cell.positions, dtype=torch.long)
            heads = torch.arange(n_heads) if cell.heads is None else torch.tensor(cell.heads)
            layout = cell.family.layout
            if layout == "resid":
                mask = masks.setdefault(name, torch.zeros(batch, n_pos, dtype=torch.bool))
                mask[r, pos] = True  # [batch, pos]
            elif layout == "z":
                mask = masks.setdefault(name, torch.zeros(batch, n_pos, n_heads, dtype=torch.bool))
                mask[r, pos[:, None], heads[None, :]] = True  # [batch, pos, head]
            elif layout == "pattern":
                mask = masks.setdefault(name, torch.zeros(batch, n_heads, n_pos, dtype=torch.bool))
                mask[r, heads[:, None], pos[None, :]] = True  # [batch, head, query]
            else:
                raise ValueError(
                    f"unknown activation layout {layout!r} of family {cell.family.name!r}"
                )

    def make(name: str, mask: Bool[Tensor, "batch ..."], axis: int) -> Callable:
        clean = cache[name]  # [1, ...]: broadcasts over the batch

        def patch(act: Tensor, hook: Any) -> Tensor:
            # A pass resumed at a later position holds the positions (queries) from `first` on.
            first = n_pos - act.shape[axis]
            m = mask.narrow(axis, first, n_pos - first).to(act.device).unsqueeze(-1)
            src = clean.narrow(axis, first, n_pos - first)  # the last axis (features / keys) whole
            return torch.where(m, src.to(device=act.device, dtype=act.dtype), act)

        return patch

    # The axis of positions (query rows for patterns) in the activation and in its mask.
    axes = {"resid": 1, "z": 1, "pattern": 2}
    layout = {cell.family.hook_name(cell.layer): cell.family.layout for row in rows for cell in row}
    return [(name, make(name, mask, axes[layout[name]])) for name, mask in masks.items()]


def _token_text(model: HookedVLM, ids: Tensor) -> Callable[[int], str]:
    tokenizer = model.processor.tokenizer
    return lambda p: tokenizer.convert_ids_to_tokens(int(ids[p]))


def _normalise(
    raw: Float[Tensor, "..."], clean: float, corrupted: float, step: AnswerStep
) -> Float[Tensor, "..."]:
    scale = clean - corrupted
    if not math.isfinite(scale) or abs(scale) < 1e-6:
        raise ValueError(
            f"step {step.step}: the clean and corrupted runs give the same metric "
            f"({clean:.6g} vs {corrupted:.6g}; tokens {step.clean_token} vs {step.corrupted_token}), "
            "so there is nothing to restore; pick a step where the answers differ, another "
            "metric, or normalize=False"
        )
    return (raw - corrupted) / scale + 0.0  # + 0.0 turns -0.0 into 0.0


def _resolve_heads(model: HookedVLM, heads: int | Sequence[int] | None) -> list[int]:
    n = model.cfg.n_heads
    if heads is None:
        return list(range(n))
    heads = [heads] if isinstance(heads, int) else list(heads)
    for h in heads:
        if not -n <= h < n:
            raise IndexError(f"head {h} out of range for a model with {n} heads")
    return sorted({h % n for h in heads})


# ----------------------------------------------------------------------------- one patch


@dataclass(frozen=True)
class Patch:
    """One activation to take from the clean run: a family at a layer, some positions and heads.

    `positions`: a grouping that gives one group ("all", "last"), or a list of positions.
    `heads`: for head families, the heads to patch together (None = all heads).
    """

    family: str | HookFamily
    layer: int
    positions: Positions = "all"
    heads: int | Sequence[int] | None = None


@dataclass
class PatchedRun:
    """Outcome of `run_patched`: the metric of one patched run, and the anchors of its scale."""

    value: float
    """The metric of the patched run (normalised: 0 = corrupted, 1 = clean, if asked)."""
    logits: Float[Tensor, " vocab"]
    """The patched run's last-row logits."""
    clean_metric: float
    corrupted_metric: float
    n_forward_passes: int


def run_patched(
    model: HookedVLM,
    clean: VLMInputs,
    corrupted: VLMInputs,
    answer: AnswerStep,
    patches: Sequence[Patch],
    *,
    metric: Metric = logit_diff,
    normalize: bool = True,
    resume: bool = True,
) -> PatchedRun:
    """Run the corrupted input with all `patches` taken from the clean run at once.

    With `resume` (default), three forward passes: the clean run (caching what the patches
    need), the corrupted run (the baseline), and the patched run started at the first
    patched layer from the corrupted run's residual stream (`vlm_lens.patching.resume`).
    `resume=False`: the clean run, then one full batch of two rows (the baseline and the
    patched run). With no patches the value is 0; patching the whole residual stream before
    the first layer gives 1 (except where the model feeds the image in again later, see
    `vlm_lens.patching`).
    """
    c = with_answer_prefix(clean, answer.prefix)
    x = with_answer_prefix(corrupted, answer.prefix)
    check_same_layout(c, x)
    counter = _Counter()
    cells = []
    for p in patches:
        family = get_family(p.family)
        groups = position_groups(c.segments, p.positions)
        if len(groups) != 1:
            raise ValueError(
                f"a Patch takes one group of positions, {p.positions!r} gives {len(groups)}"
            )
        if p.heads is not None and not family.per_head:
            raise ValueError(f"family {family.name!r} has no heads; leave heads=None")
        heads = None if p.heads is None else tuple(_resolve_heads(model, p.heads))
        cells.append(_Cell(family, model.resolve_layer(p.layer), heads, groups[0].positions))
    cross = model.cfg.cross_attention_layers
    names = sorted({cell.family.hook_name(cell.layer, cross) for cell in cells})
    clean_logits, cache = _cache_clean(model, c, names, counter)
    n_pos = c.input_ids.shape[1]
    if resume and resume_unsupported(model) is None:
        first_layer = min((cell.layer for cell in cells), default=0)
        point = _record_corrupted(model, x, [first_layer], counter)
        hooks = _patch_hooks(model, [cells], cache, n_pos)
        logits = torch.cat(
            [_as_float(point.logits), _patched_logits(model, x, point, [cells], hooks, counter)]
        )
    else:
        hooks = _patch_hooks(model, [[], cells], cache, n_pos)
        logits = _patched_logits(model, x, None, [[], cells], hooks, counter)  # [2, vocab]
    m_clean = float(metric(clean_logits, answer)[0])
    values = metric(logits, answer).detach().cpu().double()
    m_corrupted, value = float(values[0]), values[1]
    if normalize:
        value = _normalise(value, m_clean, m_corrupted, answer)
    return PatchedRun(float(value), logits[1], m_clean, m_corrupted, counter.n)


# ----------------------------------------------------------------------------- sweeps


@dataclass
class _StepOut:
    """One decoding step of a sweep: its position groups and what each cell measured."""

    groups: list[PositionGroup]
    values: Float[Tensor, "layer head group"]
    clean: float
    corrupted: float
    grids: list[tuple[int, int]]
    n_cells: int


@dataclass(frozen=True)
class _Plan:
    """What a sweep patches and measures, the same at every decoding step."""

    fam: HookFamily
    positions: Positions
    layers: list[int]
    heads: list[int | None]  # [None] for residual families
    names: list[str]  # the hook names patched (one per layer)
    metric: Metric
    normalize: bool
    batch_size: int
    resume: bool


def _sweep_step(
    model: HookedVLM,
    plan: _Plan,
    clean: VLMInputs,
    corrupted: VLMInputs,
    step: AnswerStep,
    counter: _Counter,
) -> _StepOut:
    """Steps 1-4 of the module docstring for one decoding step."""
    c = with_answer_prefix(clean, step.prefix)
    x = with_answer_prefix(corrupted, step.prefix)
    check_same_layout(c, x)
    groups = position_groups(c.segments, plan.positions, _token_text(model, c.input_ids[0]))
    cells = [
        _Cell(plan.fam, layer, None if h is None else (h,), g.positions)
        for layer in plan.layers
        for h in plan.heads
        for g in groups
    ]
    clean_logits, cache = _cache_clean(model, c, plan.names, counter)
    rows: list[list[_Cell]] = [[cell] for cell in cells]
    metric_rows = []
    point = None
    if plan.resume:
        point = _record_corrupted(model, x, plan.layers, counter)
        metric_rows.append(plan.metric(_as_float(point.logits), step).detach().cpu().double())
    else:
        rows.insert(0, [])  # the corrupted baseline rides in the first batch
    for chunk in _batches(rows, plan.batch_size, by_layer=plan.resume):
        hooks = _patch_hooks(model, chunk, cache, c.input_ids.shape[1])
        logits = _patched_logits(model, x, point, chunk, hooks, counter)
        metric_rows.append(plan.metric(logits, step).detach().cpu().double())
    values = torch.cat(metric_rows)  # [1 + cells]: the corrupted baseline first
    m_clean = float(plan.metric(clean_logits, step)[0])
    m_corrupted = float(values[0])
    raw = values[1:].reshape(len(plan.layers), len(plan.heads), len(groups))
    if plan.normalize:
        raw = _normalise(raw, m_clean, m_corrupted, step)
    grids = [s.grid for s in c.segments.samples[0].images]
    return _StepOut(groups, raw, m_clean, m_corrupted, grids, len(cells))


def _batches(rows: list[list[_Cell]], size: int, by_layer: bool) -> list[list[list[_Cell]]]:
    """Rows in batches of at most `size`, in order. `by_layer` (resumed batches start at their
    first patched layer): a layer with at least `size` cells gets batches of its own, so no
    row runs layers below its own; layers with fewer share batches (fewer, fuller passes)."""
    if not by_layer:
        return [rows[i : i + size] for i in range(0, len(rows), size)]
    out: list[list[list[_Cell]]] = []
    pending: list[list[_Cell]] = []
    for _, group in itertools.groupby(rows, key=lambda row: min(c.layer for c in row)):
        group = list(group)
        if len(group) < size:
            pending += group
            continue
        out += [pending[i : i + size] for i in range(0, len(pending), size)]
        out += [group[i : i + size] for i in range(0, len(group), size)]
        pending = []
    return out + [pending[i : i + size] for i in range(0, len(pending), size)]


def _align_steps(
    step_groups: list[list[PositionGroup]],
    step_values: list[Float[Tensor, "layer head group"]],
    per_head: bool,
    single_step: bool,
) -> tuple[Tensor, list[str], list[PositionGroup]]:
    """One `[step, layer, head, position]` tensor (axes of one entry dropped) and its groups.

    Position groups may differ between steps (a longer prefix has more positions): they are
    aligned by key, NaN where a step has no such group.
    """
    all_groups: dict[object, PositionGroup] = {}
    for groups in step_groups:
        for g in groups:
            all_groups.setdefault(g.key, g)
    keys = list(all_groups)
    index = {k: i for i, k in enumerate(keys)}
    n_layers, n_heads = step_values[0].shape[:2]
    full = torch.full(
        (len(step_values), n_layers, n_heads, len(keys)), float("nan"), dtype=torch.float64
    )
    for s, (groups, raw) in enumerate(zip(step_groups, step_values)):
        full[s, :, :, [index[g.key] for g in groups]] = raw

    dims = ["step", "layer", "head", "position"]
    if not per_head:
        full, dims = full[:, :, 0], ["step", "layer", "position"]
    elif len(keys) == 1:
        full, dims = full[..., 0], ["step", "layer", "head"]
    if single_step:
        full, dims = full[0], dims[1:]
    return full, dims, [all_groups[k] for k in keys]


def patch_sweep(
    model: HookedVLM,
    clean: VLMInputs,
    corrupted: VLMInputs,
    family: str | HookFamily = "resid_pre",
    *,
    answer: AnswerStep | Sequence[AnswerStep],
    positions: Positions | None = None,
    layers: LayerSpec = None,
    heads: int | Sequence[int] | None = None,
    metric: Metric = logit_diff,
    normalize: bool = True,
    batch_size: int = 32,
    resume: bool = True,
) -> PatchingResult:
    """Patch each cell (layer x head x position group) from clean into corrupted; measure.

    Args:
        model: the hooked model.
        clean, corrupted: one prepared example each, with the same token layout (same
            prompt length, same image grids, same segment kinds); a ValueError names the
            difference otherwise.
        family: "resid_pre" / "resid_post" (residual stream, `[batch, pos, d_model]`), "z"
            (per-head attention output `hook_z`, `[batch, pos, head, d_head]`) or "pattern"
            (per-head `hook_pattern`, `[batch, head, query, key]`; positions are query rows).
        answer: the decoding step(s) to measure (`AnswerStep`: teacher-forced prefix and the
            two answer tokens). A list gives a result with a leading "step" axis.
        positions: position groups (see `vlm_lens.patching.positions`): "each" (default for
            residual families), "segment", "image_patch", "all" (default for head families),
            "last", a mapping {label: positions} or one list of positions.
        layers: layers to sweep, a layer spec (`vlm_lens.core.layers`: -1, "Q4", "20:28",
            a list ...); None = all.
        heads: heads to sweep (head families); None = all.
        metric: `metric(last_row_logits [batch, vocab], answer) -> [batch]`; default
            `logit_diff` (clean answer token minus corrupted answer token).
        normalize: report `(m - m_corrupted) / (m_clean - m_corrupted)` (0 = corrupted
            behaviour, 1 = clean behaviour) instead of the raw metric.
        batch_size: rows per patched forward pass (cells per pass; memory grows with it).
        resume: run the corrupted input once in full and start each patched batch at its
            first patched layer from that run's residual stream (`vlm_lens.patching.resume`;
            a batch where that is not exact runs in full). False: every patched batch runs
            from the embeddings, with the corrupted baseline as an extra row (the reference
            path; same values to float rounding).

    Returns:
        A `PatchingResult`: values `[step?, layer, head?, position?]` (the head axis for head
        families; the position axis for residual families, and for head families when
        `positions` gives several groups), labels, baselines and `n_forward_passes`.
    """
    t0 = time.perf_counter()
    fam = get_family(family)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if heads is not None and not fam.per_head:
        raise ValueError(f"family {fam.name!r} has no heads; leave heads=None")
    single_step = isinstance(answer, AnswerStep)
    steps = [answer] if single_step else list(answer)
    if not steps:
        raise ValueError("answer: give at least one AnswerStep")
    if positions is None:
        positions = "all" if fam.per_head else "each"
    layer_list = model.resolve_layers(layers)
    head_list: list[int | None] = list(_resolve_heads(model, heads)) if fam.per_head else [None]
    names = [fam.hook_name(layer, model.cfg.cross_attention_layers) for layer in layer_list]
    counter = _Counter()

    resume = resume and resume_unsupported(model) is None
    plan = _Plan(
        fam, positions, layer_list, head_list, names, metric, normalize, batch_size, resume
    )
    steps_out = [_sweep_step(model, plan, clean, corrupted, step, counter) for step in steps]
    full, dims, groups = _align_steps(
        [o.groups for o in steps_out], [o.values for o in steps_out], fam.per_head, single_step
    )
    return PatchingResult(
        values=full,
        dims=tuple(dims),
        family=fam.name,
        layers=layer_list,
        heads=[h for h in head_list if h is not None] or None,
        groups=groups,
        steps=steps,
        clean_metric=torch.tensor([o.clean for o in steps_out], dtype=torch.float64),
        corrupted_metric=torch.tensor([o.corrupted for o in steps_out], dtype=torch.float64),
        normalized=normalize,
        hook_names=names,
        image_grids=steps_out[-1].grids,
        n_cells=sum(o.n_cells for o in steps_out),
        n_forward_passes=counter.n,
        n_layer_tokens=counter.layer_tokens,
        seconds=time.perf_counter() - t0,
    )


# TransformerLens-style names for the four families.


def get_act_patch_resid_pre(
    model: HookedVLM, clean: VLMInputs, corrupted: VLMInputs, answer: Any, **kwargs: Any
) -> PatchingResult:
    """`patch_sweep(..., "resid_pre")`: residual stream before each layer, `[layer, position]`."""
    return patch_sweep(model, clean, corrupted, "resid_pre", answer=answer, **kwargs)


def get_act_patch_resid_post(
    model: HookedVLM, clean: VLMInputs, corrupted: VLMInputs, answer: Any, **kwargs: Any
) -> PatchingResult:
    """`patch_sweep(..., "resid_post")`: residual stream after each layer, `[layer, position]`."""
    return patch_sweep(model, clean, corrupted, "resid_post", answer=answer, **kwargs)


def get_act_patch_attn_head_out(
    model: HookedVLM, clean: VLMInputs, corrupted: VLMInputs, answer: Any, **kwargs: Any
) -> PatchingResult:
    """`patch_sweep(..., "z")`: each head's output (`hook_z`), `[layer, head]`."""
    return patch_sweep(model, clean, corrupted, "z", answer=answer, **kwargs)


def get_act_patch_attn_head_pattern(
    model: HookedVLM, clean: VLMInputs, corrupted: VLMInputs, answer: Any, **kwargs: Any
) -> PatchingResult:
    """`patch_sweep(..., "pattern")`: each head's attention pattern, `[layer, head]`."""
    return patch_sweep(model, clean, corrupted, "pattern", answer=answer, **kwargs)
