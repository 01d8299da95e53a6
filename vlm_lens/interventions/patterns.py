"""Pure tensor edits of post-softmax attention patterns, by key modality.

Everything here works on plain tensors, without a model::

    pattern    [batch, head, query, key]   post-softmax attention (rows sum to 1)
    key_kinds  [batch, key]                segment codes (`vlm_lens.core.segments.KIND_*`)

and returns a new pattern of the same shape and dtype. The edits:

- `redistribute_pattern`: move a `fraction` of the source modalities' weight to the
  recipient modalities. The moved mass goes to each recipient modality in proportion to
  that modality's current weight (the yes-bias paper's rule, α'_r = α_r + f·α_s·α_r / Σα_r'),
  and within a modality either in proportion to each key's current weight
  ("proportional", the paper's text; overall every recipient key gains in proportion to
  its own weight) or evenly over the modality's visible keys ("uniform", what the
  paper's released code does, PITFALLS 16).
- `scale_pattern`: multiply one modality's weights by α, then renormalise the row
  (the paper's "Image×2.0" baseline).
- `knockout_pattern`: zero a modality and give its weight to every other visible key,
  proportionally (= `redistribute_pattern(..., recipients=None, fraction=1)`).
- `restore_pattern`: give the image keys a given distribution (e.g. an earlier step's),
  keeping the row's image mass or taking the source's (re-grounding a late answer digit).

Modalities are "system", "image", "text" and "generated". Generated tokens count as
text unless "generated" is named explicitly in the same edit: ``source="system",
recipients="text"`` gives system weight to prompt text *and* generated tokens, while
``source="generated", recipients="text"`` moves weight from generated tokens to prompt text.
Marker tokens of tiled images (image-newline, tile labels) are neither image nor text: they
take part only where "marker" is named as a source or recipient (`recipients=None` leaves
them as they are, and so does a knockout).

Visibility. Only keys a query may see take part. `visible` (`[batch, query, key]` or
`[batch, head, query, key]`, bool) says which; without it a key is visible when it is
not padding and either lies at or before the query (causal, from `query_positions` /
`key_positions`, by default the queries being the last `query` keys) or already has
weight (> 0: e.g. Gemma3's bidirectional image blocks). A query that is itself padding
sees nothing. Keys that are not visible are never written, so masked and padded keys
keep their (zero) weight.

Edge cases, per edited row: if the source has no weight nothing moves; if the
recipients are visible but hold no weight, both modes fall back to even shares over all
visible recipient keys; a recipient modality with no visible key (or no weight, while
another has some) gets nothing; if no recipient key is visible the row is left unchanged
(its source keeps its weight: nothing may go to a key the row cannot see, so a prefill row
before the first recipient token, e.g. under ``rows="all"``, is not edited).
Rows outside `row_mask`, heads outside `head_mask` and unedited rows are returned
bit-identical; fraction 0 (and scaling by 1) is the identity, bit for bit.

Computation is done in float32 (float64 for float64 patterns) and cast back.

Not for: deciding which rows/layers to edit at run time (see `vlm_lens.interventions.hooks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vlm_lens.core.segments import (
    KIND_GENERATED,
    KIND_IMAGE,
    KIND_MARKER,
    KIND_PAD,
    KIND_SYSTEM,
    KIND_TEXT,
    MARKER,
    SEGMENT_KINDS,
)

MODALITIES = SEGMENT_KINDS
# Marker tokens (image-newline, tile labels) are a modality only where named: never a default
# recipient, so families without them and families with them redistribute alike.
NAMEABLE = (*MODALITIES, MARKER)
Mode = Literal["proportional", "uniform"]
Modalities = str | Iterable[str] | None


def _names(spec: Modalities, what: str) -> list[str]:
    if spec is None:
        return []
    names = [spec] if isinstance(spec, str) else list(spec)
    for name in names:
        if name not in NAMEABLE:
            raise ValueError(f"unknown {what} modality {name!r}; expected one of {list(NAMEABLE)}")
    return names


def modality_codes(
    source: Modalities, recipients: Modalities = None
) -> tuple[frozenset[int], frozenset[int]]:
    """Segment codes of the source and recipient modalities.

    "text" covers generated tokens too unless "generated" is named in `source` or
    `recipients`. `recipients=None` means every modality that is not a source.
    """
    src, groups = _resolve(source, recipients)
    return src, frozenset().union(*groups)


def _resolve(
    source: Modalities, recipients: Modalities
) -> tuple[frozenset[int], tuple[frozenset[int], ...]]:
    """Source codes and one code set per recipient modality (see `modality_codes`)."""
    src_names = _names(source, "source")
    rec_names = _names(recipients, "recipient")
    if not src_names:
        raise ValueError("name at least one source modality")
    split_generated = "generated" in src_names or "generated" in rec_names
    codes = {
        "system": frozenset({KIND_SYSTEM}),
        "image": frozenset({KIND_IMAGE}),
        "text": frozenset({KIND_TEXT} if split_generated else {KIND_TEXT, KIND_GENERATED}),
        "generated": frozenset({KIND_GENERATED}),
        MARKER: frozenset({KIND_MARKER}),
    }
    src = frozenset().union(*(codes[n] for n in src_names))
    if recipients is None:
        names = ["system", "image", "text"] + (["generated"] if split_generated else [])
        groups = tuple(codes[n] for n in names if not codes[n] & src)
    else:
        groups = tuple(dict.fromkeys(codes[n] for n in rec_names))
    rec = frozenset().union(*groups)
    if not rec:
        raise ValueError(f"no recipient modality left for source {src_names}")
    if src & rec:
        raise ValueError(f"source {src_names} and recipients {rec_names} overlap")
    return src, groups


def _key_mask(
    key_kinds: Int[Tensor, "batch key"], codes: Iterable[int]
) -> Bool[Tensor, "batch key"]:
    mask = torch.zeros_like(key_kinds, dtype=torch.bool)
    for code in codes:
        mask |= key_kinds == code
    return mask


def _visibility(
    pattern: Float[Tensor, "batch head query key"],
    key_kinds: Int[Tensor, "batch key"],
    visible: Bool[Tensor, "batch query key"] | Bool[Tensor, "batch head query key"] | None,
    query_positions: Int[Tensor, " query"] | None,
    key_positions: Int[Tensor, " key"] | None,
) -> Bool[Tensor, "batch _head query key"]:
    b, _, q, k = pattern.shape
    device = pattern.device
    not_pad = (key_kinds != KIND_PAD).to(device)  # [batch, key]
    if visible is not None:
        vis = visible.to(device=device, dtype=torch.bool)
        if vis.dim() == 3:
            vis = vis[:, None]
        return vis & not_pad[:, None, None, :]
    kpos = torch.arange(k, device=device) if key_positions is None else key_positions.to(device)
    qpos = (
        torch.arange(k - q, k, device=device)
        if query_positions is None
        else query_positions.to(device)
    )
    causal = kpos[None, :] <= qpos[:, None]  # [query, key]
    vis = causal[None, None] | (pattern > 0)
    # A padding query sees nothing (its row is left as it is).
    is_query = kpos[None, :] == qpos[:, None]  # [query, key]: which key column is the query itself
    query_pad = (is_query[None] & ~not_pad[:, None, :]).any(-1)  # [batch, query]
    return vis & not_pad[:, None, None, :] & ~query_pad[:, None, :, None]


def _apply(
    pattern: Float[Tensor, "batch head query key"],
    vis: Bool[Tensor, "batch _head query key"],
    row_mask: Bool[Tensor, "batch query"] | None,
    head_mask: Bool[Tensor, " head"] | None,
    edit: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
) -> Float[Tensor, "batch head query key"]:
    """Run `edit(P, vis) -> (new P, edited rows [b, h, q, 1])` on the selected rows only."""
    b, h, q, _ = pattern.shape
    device = pattern.device
    if row_mask is not None:
        row_mask = row_mask.to(device=device, dtype=torch.bool).expand(b, q)
        rows = row_mask.any(0).nonzero().flatten()
        if rows.numel() == 0:
            return pattern
        if rows.numel() == q:
            rows = None
    else:
        rows = None
    if head_mask is not None:
        head_mask = head_mask.to(device=device, dtype=torch.bool)
        if head_mask.shape != (h,):
            raise ValueError(f"head_mask must have shape ({h},), got {tuple(head_mask.shape)}")
        if not head_mask.any():
            return pattern
    sub = pattern if rows is None else pattern[:, :, rows]
    sub_vis = vis if rows is None else vis[:, :, rows]
    work = torch.promote_types(pattern.dtype, torch.float32)
    new, edited = edit(sub.to(work), sub_vis)
    select = edited & sub_vis
    if row_mask is not None:
        sel_rows = row_mask if rows is None else row_mask[:, rows]
        select = select & sel_rows[:, None, :, None]
    if head_mask is not None:
        select = select & head_mask[None, :, None, None]
    out_sub = torch.where(select, new.to(pattern.dtype), sub)
    if rows is None:
        return out_sub
    out = pattern.clone()
    out[:, :, rows] = out_sub
    return out


def _check_shapes(pattern: Tensor, key_kinds: Tensor) -> None:
    if pattern.dim() != 4:
        raise ValueError(
            f"pattern must be [batch, head, query, key], got shape {tuple(pattern.shape)}"
        )
    if key_kinds.shape != (pattern.shape[0], pattern.shape[-1]):
        raise ValueError(
            f"key_kinds must be [batch, key] = {(pattern.shape[0], pattern.shape[-1])}, "
            f"got {tuple(key_kinds.shape)}"
        )


def redistribute_pattern(
    pattern: Float[Tensor, "batch head query key"],
    key_kinds: Int[Tensor, "batch key"],
    source: Modalities,
    recipients: Modalities = None,
    fraction: float = 1.0,
    mode: Mode = "proportional",
    row_mask: Bool[Tensor, "batch query"] | None = None,
    head_mask: Bool[Tensor, " head"] | None = None,
    visible: Bool[Tensor, "batch query key"] | Bool[Tensor, "batch head query key"] | None = None,
    query_positions: Int[Tensor, " query"] | None = None,
    key_positions: Int[Tensor, " key"] | None = None,
) -> Float[Tensor, "batch head query key"]:
    """Move `fraction` of the source modalities' weight to the recipient modalities.

    In each selected row (`row_mask`, `head_mask`; default all) with source mass S, visible
    recipient mass R = Σ_m R_m over the recipient modalities m, and visible recipient keys:
    every source key keeps (1 - f) of its weight, and recipient modality m receives
    f·S·R_m / R (the paper's rule at the level of modalities), spread over its keys

    - "proportional": in proportion to each key's weight, α'_r = α_r + f·S·α_r / R (the
      paper's stated rule; the modality split cancels out);
    - "uniform": evenly, f·S·R_m / R / n_m to each of the modality's n_m visible keys (the
      paper's released code). With one recipient modality that is f·S / n.

    `recipients=None` means every other modality. See the module docstring for visibility
    and edge cases.
    """
    _check_shapes(pattern, key_kinds)
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if mode not in ("proportional", "uniform"):
        raise ValueError(f"mode must be 'proportional' or 'uniform', got {mode!r}")
    src_codes, groups = _resolve(source, recipients)
    key_kinds = key_kinds.to(pattern.device)
    src_keys = _key_mask(key_kinds, src_codes)[:, None, None, :]
    group_keys = [_key_mask(key_kinds, codes)[:, None, None, :] for codes in groups]
    rec_keys = torch.stack(group_keys).any(0)
    vis = _visibility(pattern, key_kinds, visible, query_positions, key_positions)
    f = float(fraction)

    def edit(p: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        src = src_keys & v
        rec = rec_keys & v
        moved = f * (p * src).sum(-1, keepdim=True)  # [b, h, q, 1]
        rec_mass = (p * rec).sum(-1, keepdim=True)
        n_rec = rec.sum(-1, keepdim=True)
        has_mass = rec_mass > 0
        safe_mass = torch.where(has_mass, rec_mass, 1.0)
        # Weightless recipients: even shares over all their visible keys, in both modes.
        fallback = moved / n_rec.clamp(min=1)
        if mode == "proportional":
            # p / rec_mass <= 1: no overflow however small the recipients' mass is.
            gain = torch.where(has_mass, p / safe_mass * moved, fallback)
        else:
            gain = torch.zeros_like(p)
            for keys in group_keys:
                in_group = keys & v
                n_group = in_group.sum(-1, keepdim=True).clamp(min=1)
                share = (p * in_group).sum(-1, keepdim=True) / safe_mass  # R_m / R
                per_key = torch.where(has_mass, moved * share / n_group, fallback)
                gain = torch.where(in_group, per_key, gain)
        new = torch.where(src, p * (1.0 - f), torch.where(rec, p + gain, p))
        return new, n_rec > 0

    return _apply(pattern, vis, row_mask, head_mask, edit)


def knockout_pattern(
    pattern: Float[Tensor, "batch head query key"],
    key_kinds: Int[Tensor, "batch key"],
    modality: Modalities,
    row_mask: Bool[Tensor, "batch query"] | None = None,
    head_mask: Bool[Tensor, " head"] | None = None,
    visible: Bool[Tensor, "batch query key"] | Bool[Tensor, "batch head query key"] | None = None,
    query_positions: Int[Tensor, " query"] | None = None,
    key_positions: Int[Tensor, " key"] | None = None,
) -> Float[Tensor, "batch head query key"]:
    """Zero a modality and renormalise the row over every other visible key.

    The same as `redistribute_pattern(source=modality, recipients=None, fraction=1,
    mode="proportional")`; a row with no other visible key is left unchanged.
    """
    return redistribute_pattern(
        pattern,
        key_kinds,
        modality,
        None,
        1.0,
        "proportional",
        row_mask,
        head_mask,
        visible,
        query_positions,
        key_positions,
    )


def scale_pattern(
    pattern: Float[Tensor, "batch head query key"],
    key_kinds: Int[Tensor, "batch key"],
    modality: Modalities,
    alpha: float,
    row_mask: Bool[Tensor, "batch query"] | None = None,
    head_mask: Bool[Tensor, " head"] | None = None,
    visible: Bool[Tensor, "batch query key"] | Bool[Tensor, "batch head query key"] | None = None,
    query_positions: Int[Tensor, " query"] | None = None,
    key_positions: Int[Tensor, " key"] | None = None,
) -> Float[Tensor, "batch head query key"]:
    """Multiply a modality's weights by `alpha`, then renormalise the row.

    With A the modality's visible mass and R the rest's (A + R = 1 for a softmax row), every
    visible key is multiplied by (A + R) / (R + α·A), the modality's keys also by α: the row
    keeps its mass. α = 1 returns the pattern unchanged. A row whose remaining mass
    would be 0 (α = 0 with all weight on the modality) is left unchanged. "text" covers
    generated tokens unless `modality` also names "generated".
    """
    _check_shapes(pattern, key_kinds)
    alpha = float(alpha)
    if not (alpha >= 0.0 and alpha < float("inf")):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    codes, _ = modality_codes(modality, None)
    if alpha == 1.0:
        return pattern
    key_kinds = key_kinds.to(pattern.device)
    mod_keys = _key_mask(key_kinds, codes)[:, None, None, :]
    vis = _visibility(pattern, key_kinds, visible, query_positions, key_positions)

    def edit(p: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        mod = mod_keys & v
        mod_mass = (p * mod).sum(-1, keepdim=True)
        rest_mass = (p * (v & ~mod)).sum(-1, keepdim=True)
        total = rest_mass + mod_mass
        denom = rest_mass + alpha * mod_mass  # (no cancellation: both terms are >= 0)
        # Written so that nothing overflows for tiny alpha or tiny masses: p / denom <= 1 on
        # the rest, and total / (rest/alpha + A) is the modality keys' factor alpha·total/denom.
        if alpha > 0:
            mod_factor = total / (rest_mass / alpha + mod_mass)
        else:
            mod_factor = torch.zeros_like(total)
        new = torch.where(mod_keys, p * mod_factor, p / denom * total)
        ok = (total > 0) & (denom > 0) & torch.isfinite(mod_factor)
        return new, ok

    return _apply(pattern, vis, row_mask, head_mask, edit)


def restore_pattern(
    pattern: Float[Tensor, "batch head query key"],
    key_kinds: Int[Tensor, "batch key"],
    source: Float[Tensor, "batch head image"],
    mass: Literal["current", "source"] = "current",
    row_mask: Bool[Tensor, "batch query"] | None = None,
    head_mask: Bool[Tensor, " head"] | None = None,
    visible: Bool[Tensor, "batch query key"] | Bool[Tensor, "batch head query key"] | None = None,
    query_positions: Int[Tensor, " query"] | None = None,
    key_positions: Int[Tensor, " key"] | None = None,
) -> Float[Tensor, "batch head query key"]:
    """Give each head's image keys the distribution of `source` (re-grounding an answer row).

    `source[b, h]` is one weight per image key of row b, in key order (for instance what
    head h gave the image at an earlier decoding step, as `Recording.image` keeps it);
    every row of the batch must have `source.shape[-1]` image keys. In each selected row,
    with M its current visible image mass and S the source's mass on visible image keys,
    the image keys become ``T · source / S`` with target mass T:

    - `mass="current"`: T = M: the image keeps its mass, only its distribution changes;
      the rest of the row is bit-identical;
    - `mass="source"`: T = S: the source's weights exactly, and the non-image keys are
      rescaled by (1 - T) / (1 - M) so the row still sums to 1.

    Edge cases: image keys the row cannot see get nothing (their share of the source is
    dropped and S counts only visible keys); a row with S = 0 is left unchanged, and so is,
    under `mass="source"`, a row with all its weight on the image (M = 1) and T < 1 (the
    rest has no weight to scale up). See the module docstring for visibility.
    """
    _check_shapes(pattern, key_kinds)
    if mass not in ("current", "source"):
        raise ValueError(f"mass must be 'current' or 'source', got {mass!r}")
    key_kinds = key_kinds.to(pattern.device)
    is_image = key_kinds == KIND_IMAGE  # [batch, key]
    b, h = pattern.shape[:2]
    n_image = is_image.sum(-1)
    if source.dim() != 3 or source.shape[:2] != (b, h) or bool((n_image != source.shape[-1]).any()):
        raise ValueError(
            f"source must be [batch, head, image] = ({b}, {h}, image keys per row "
            f"{n_image.tolist()}), got {tuple(source.shape)}"
        )
    image_keys = is_image[:, None, None, :]
    positions = torch.stack([row.nonzero().flatten() for row in is_image])  # [batch, image]
    vis = _visibility(pattern, key_kinds, visible, query_positions, key_positions)

    def edit(p: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        img = (image_keys & v).expand(p.shape)  # [b, h, q, key]
        index = positions[:, None, None, :].expand(*p.shape[:3], -1)  # [b, h, q, image]
        src = source.to(device=p.device, dtype=p.dtype)[:, :, None, :] * img.gather(-1, index)
        src_mass = src.sum(-1, keepdim=True)  # [b, h, q, 1]
        current = (p * img).sum(-1, keepdim=True)
        target = current if mass == "current" else src_mass
        rest_scale = ((1 - target) / (1 - current).clamp_min(1e-12)).clamp_min(0)
        new = p * torch.where(img, 0.0, rest_scale)
        new = new.scatter(-1, index, target * src / src_mass.clamp_min(1e-30))
        ok = (src_mass > 0) & ((current < 1) | (target >= 1))
        return new, ok

    return _apply(pattern, vis, row_mask, head_mask, edit)
