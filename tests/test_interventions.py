"""Attention interventions: invariants of the pure pattern edits (property-based), layer
specs, and the hook-level API on tiny models (forward, generate, composition, recording)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.architectures import newest_per_family
from vlm_lens.core.generation import AttentionRecord
from vlm_lens.core.segments import (
    KIND_GENERATED,
    KIND_IMAGE,
    KIND_PAD,
    KIND_SYSTEM,
    KIND_TEXT,
)
from vlm_lens.interventions import (
    MODALITIES,
    knockout,
    knockout_pattern,
    modality_codes,
    quarter,
    redistribute,
    redistribute_pattern,
    resolve_layers,
    restore_image,
    restore_pattern,
    scale_image,
    scale_modality,
    scale_pattern,
)

REAL_KINDS = (KIND_SYSTEM, KIND_IMAGE, KIND_TEXT, KIND_GENERATED)
PROP = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- random patterns
def build_pattern(
    scores: torch.Tensor, kinds: torch.Tensor, n_queries: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax under the mask HF builds (causal, padding; a padding query sees nothing).

    Masked scores get the dtype's minimum, as in HF's eager mask, so a fully masked row
    comes out uniform (as HF's does). Returns the pattern and the `[batch, query, key]`
    mask of keys each query may see.
    """
    b, k = kinds.shape
    qpos = torch.arange(k - n_queries, k)
    causal = torch.arange(k)[None, :] <= qpos[:, None]  # [query, key]
    allowed = causal[None] & (kinds != KIND_PAD)[:, None, :]
    allowed &= (kinds[:, qpos] != KIND_PAD)[:, :, None]
    masked = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
    return masked.softmax(-1), allowed


@st.composite
def layouts(draw):
    """A random batch: pattern, kinds, allowed mask, row mask, head mask."""
    b = draw(st.integers(1, 3))
    h = draw(st.integers(1, 3))
    k = draw(st.integers(1, 12))
    q = draw(st.sampled_from(["prefill", "decode", "chunk"]))
    q = {"prefill": k, "decode": 1}.get(q) or draw(st.integers(1, k))
    rows = []
    for _ in range(b):
        n_pad = draw(st.integers(0, k - 1))
        rows.append(
            [KIND_PAD] * n_pad
            + draw(st.lists(st.sampled_from(REAL_KINDS), min_size=k - n_pad, max_size=k - n_pad))
        )
    kinds = torch.tensor(rows, dtype=torch.long)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 4.0, 20.0]))
    scores = torch.randn(b, h, q, k, generator=gen, dtype=torch.float64) * scale
    pattern, allowed = build_pattern(scores, kinds, q)
    row_mask = torch.rand(b, q, generator=gen) < 0.6 if draw(st.booleans()) else None
    head_mask = torch.rand(h, generator=gen) < 0.6 if draw(st.booleans()) else None
    explicit = draw(st.booleans())  # pass the mask, or let the function derive it
    return pattern, kinds, allowed, row_mask, head_mask, explicit


@st.composite
def source_recipients(draw):
    source = draw(st.lists(st.sampled_from(MODALITIES), min_size=1, max_size=3, unique=True))
    rest = [m for m in MODALITIES if m not in source]
    if len(source) < 3 and draw(st.booleans()):  # None: every other modality
        return source, None
    return source, draw(
        st.lists(st.sampled_from(rest), min_size=1, max_size=len(rest), unique=True)
    )


fractions = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))


def recipient_groups(source, recipients) -> list[set[int]]:
    """Codes of each recipient modality, from the rules in the patterns module docstring."""
    src_names = [source] if isinstance(source, str) else list(source)
    rec_names = (
        []
        if recipients is None
        else [recipients]
        if isinstance(recipients, str)
        else list(recipients)
    )
    split = "generated" in src_names + rec_names
    codes = {
        "system": {KIND_SYSTEM},
        "image": {KIND_IMAGE},
        "text": {KIND_TEXT} if split else {KIND_TEXT, KIND_GENERATED},
        "generated": {KIND_GENERATED},
    }
    src = set().union(*(codes[n] for n in src_names))
    if recipients is None:
        rec_names = [n for n in MODALITIES if (n != "generated" or split) and not codes[n] & src]
    return [codes[n] for n in rec_names]


def keys_of(kinds: torch.Tensor, codes) -> torch.Tensor:
    """`[batch, 1, 1, key]` mask of the keys whose kind is in `codes`."""
    return torch.isin(kinds, torch.tensor(sorted(codes)))[:, None, None, :]


def selection(p, row_mask, head_mask) -> torch.Tensor:
    """`[batch, head, query, 1]` rows the caller asked to edit."""
    b, h, q, _ = p.shape
    sel = torch.ones(b, h, q, 1, dtype=torch.bool)
    if row_mask is not None:
        sel &= row_mask[:, None, :, None]
    if head_mask is not None:
        sel &= head_mask[None, :, None, None]
    return sel


def check_common(p, out, allowed):
    assert out.shape == p.shape and out.dtype == p.dtype
    assert (out >= 0).all(), "no negative weight"
    torch.testing.assert_close(out.sum(-1), p.sum(-1), rtol=0, atol=1e-9)
    torch.testing.assert_close(out.sum(-1), torch.ones_like(out.sum(-1)), rtol=0, atol=1e-9)
    masked = ~allowed[:, None].expand_as(p)
    assert torch.equal(out[masked], p[masked]), "masked and padded keys are never written"
    real_rows = allowed.any(-1)[:, None, :, None].expand_as(p)  # rows of non-padding queries
    assert (out[masked & real_rows] == 0).all()


# ----------------------------------------------------------------------------- pure invariants
@PROP
@given(layouts(), source_recipients(), fractions, st.sampled_from(["proportional", "uniform"]))
def test_redistribute_invariants(layout, src_rec, fraction, mode):
    p, kinds, allowed, row_mask, head_mask, explicit = layout
    source, recipients = src_rec
    out = redistribute_pattern(
        p,
        kinds,
        source,
        recipients,
        fraction,
        mode,
        row_mask=row_mask,
        head_mask=head_mask,
        visible=allowed if explicit else None,
    )
    check_common(p, out, allowed)
    if fraction == 0.0:
        assert torch.equal(out, p), "fraction 0 is the identity"

    src_codes, rec_codes = modality_codes(source, recipients)
    vis = allowed[:, None]  # [batch, 1, query, key]
    src = keys_of(kinds, src_codes) & vis
    rec = keys_of(kinds, rec_codes) & vis
    other = vis & ~src & ~rec
    n_rec = rec.sum(-1, keepdim=True)
    edited = selection(p, row_mask, head_mask) & (n_rec > 0)

    # Rows outside the chosen set (rows, heads, or without a visible recipient): bit-identical.
    untouched = (~edited).expand_as(p)
    assert torch.equal(out[untouched], p[untouched])
    # Keys that are neither source nor recipient: bit-identical everywhere.
    assert torch.equal(out[other.expand_as(p)], p[other.expand_as(p)])

    src_e = (src & edited).expand_as(p)
    torch.testing.assert_close(out[src_e], p[src_e] * (1 - fraction), rtol=0, atol=1e-12)
    if fraction == 1.0:
        assert (out[src_e] == 0).all(), "fraction 1 leaves the source at 0"
    moved = fraction * (p * src).sum(-1, keepdim=True)
    gain = out - p
    torch.testing.assert_close(
        (gain * rec).sum(-1, keepdim=True)[edited], moved[edited], rtol=0, atol=1e-12
    )
    rec_mass = (p * rec).sum(-1, keepdim=True)
    # Weightless recipients: even shares over all visible recipient keys, in both modes.
    even = (rec & edited & (rec_mass == 0)).expand_as(p)
    expected_even = (moved / n_rec.clamp(min=1)).expand_as(p)
    torch.testing.assert_close(gain[even], expected_even[even], rtol=0, atol=1e-12)
    if mode == "uniform":
        # Modality m gets moved * R_m / R, spread evenly over its n_m visible keys.
        for codes in recipient_groups(source, recipients):
            in_m = keys_of(kinds, codes) & vis
            share = (p * in_m).sum(-1, keepdim=True) / rec_mass.clamp(min=1e-300)
            per_key = moved * share / in_m.sum(-1, keepdim=True).clamp(min=1)
            u = (in_m & edited & (rec_mass > 0)).expand_as(p)
            torch.testing.assert_close(gain[u], per_key.expand_as(p)[u], rtol=1e-9, atol=1e-12)
    if mode == "proportional":
        # Recipients keep their relative proportions: out_r / p_r is the same for every r.
        prop = (rec & edited & (rec_mass > 0)).expand_as(p)
        out_mass = (out * rec).sum(-1, keepdim=True)
        torch.testing.assert_close(
            (out * rec_mass)[prop], (p * out_mass)[prop], rtol=1e-9, atol=1e-12
        )


@PROP
@given(layouts(), st.sampled_from(MODALITIES), st.floats(0.0, 5.0))
def test_scale_invariants(layout, modality, alpha):
    p, kinds, allowed, row_mask, head_mask, explicit = layout
    visible = allowed if explicit else None
    out = scale_pattern(p, kinds, modality, alpha, row_mask, head_mask, visible=visible)
    check_common(p, out, allowed)
    assert torch.equal(
        scale_pattern(p, kinds, modality, 1.0, row_mask, head_mask, visible=visible), p
    ), "alpha 1 is the identity"
    codes, _ = modality_codes(modality)
    vis = allowed[:, None]
    mod = keys_of(kinds, codes) & vis
    mass = (p * mod).sum(-1, keepdim=True)
    rest = (p * (vis & ~mod)).sum(-1, keepdim=True)
    edited = selection(p, row_mask, head_mask) & (mass + rest > 0) & (rest + alpha * mass > 0)
    assert torch.equal(out[(~edited).expand_as(p)], p[(~edited).expand_as(p)])
    # The modality's new mass α·A·(A+R)/(R+α·A), written to stay exact for subnormal α.
    expected = mass * (mass + rest) / (rest / alpha + mass) if alpha > 0 else 0 * mass
    torch.testing.assert_close(
        (out * mod).sum(-1, keepdim=True)[edited], expected[edited], rtol=0, atol=1e-9
    )
    # Within the modality and within the rest, proportions are kept (one factor each).
    # A subnormal result (e.g. 3e-21 times a factor of 1e-301) has too few bits to hold a
    # ratio to 1e-9, so only normal numbers are compared.
    normal = out >= torch.finfo(out.dtype).tiny
    for part in (mod, vis & ~mod):
        sel = (part & edited & (p > 1e-200)).expand_as(p) & normal
        ratio = torch.where(sel, out / p.clamp(min=1e-300), float("nan"))
        lo = ratio.nan_to_num(float("inf")).amin(-1)
        hi = ratio.nan_to_num(float("-inf")).amax(-1)
        has = sel.any(-1)
        torch.testing.assert_close(lo[has], hi[has], rtol=1e-9, atol=0)


@PROP
@given(layouts(), st.sampled_from(MODALITIES))
def test_knockout_is_proportional_redistribution_to_everything_else(layout, modality):
    p, kinds, allowed, row_mask, head_mask, _ = layout
    out = knockout_pattern(p, kinds, modality, row_mask, head_mask)
    check_common(p, out, allowed)
    assert torch.equal(
        out,
        redistribute_pattern(p, kinds, modality, None, 1.0, "proportional", row_mask, head_mask),
    )
    codes, rest = modality_codes(modality)
    vis = allowed[:, None]
    has_rest = (keys_of(kinds, rest) & vis).any(-1, keepdim=True)
    gone = (keys_of(kinds, codes) & vis & has_rest & selection(p, row_mask, head_mask)).expand_as(p)
    assert (out[gone] == 0).all()


def test_reduced_precision_keeps_unedited_bits_and_sums():
    gen = torch.Generator().manual_seed(0)
    kinds = torch.tensor(
        [[KIND_PAD, KIND_SYSTEM, KIND_SYSTEM, KIND_IMAGE, KIND_IMAGE, KIND_TEXT, KIND_TEXT]]
    )
    p32, allowed = build_pattern(torch.randn(1, 2, 7, 7, generator=gen), kinds, 7)
    for dtype in (torch.bfloat16, torch.float16):
        p = p32.to(dtype)
        rows = torch.zeros(1, 7, dtype=torch.bool)
        rows[0, -1] = True
        out = redistribute_pattern(p, kinds, "system", ["image", "text"], row_mask=rows)
        assert out.dtype == dtype
        assert torch.equal(out[:, :, :-1], p[:, :, :-1])
        assert (out[0, :, -1, 1:3] == 0).all() and (out[0, :, -1, 0] == 0).all()
        torch.testing.assert_close(
            out[:, :, -1].float().sum(-1), torch.ones(1, 2), atol=2e-2, rtol=0
        )
        assert torch.equal(redistribute_pattern(p, kinds, "system", "text", fraction=0.0), p)


def test_uniform_mode_and_fallback_by_hand():
    kinds = torch.tensor([[KIND_SYSTEM, KIND_IMAGE, KIND_IMAGE, KIND_TEXT]])
    p = torch.tensor([[[[0.5, 0.0, 0.0, 0.5]]]], dtype=torch.float64)  # images hold no weight
    out = redistribute_pattern(p, kinds, "system", "image", mode="proportional")
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 0.25, 0.25, 0.5]]]], dtype=torch.float64))
    p = torch.tensor([[[[0.4, 0.3, 0.1, 0.2]]]], dtype=torch.float64)
    out = redistribute_pattern(p, kinds, "system", "image", fraction=0.5, mode="uniform")
    torch.testing.assert_close(out, torch.tensor([[[[0.2, 0.4, 0.2, 0.2]]]], dtype=torch.float64))
    out = redistribute_pattern(p, kinds, "system", ["image", "text"])  # the paper's rule
    torch.testing.assert_close(
        out, torch.tensor([[[[0.0, 0.3 / 0.6, 0.1 / 0.6, 0.2 / 0.6]]]], dtype=torch.float64)
    )
    out = scale_pattern(p, kinds, "image", 2.0)
    torch.testing.assert_close(
        out, torch.tensor([[[[0.4, 0.6, 0.2, 0.2]]]], dtype=torch.float64) / 1.4
    )


def test_uniform_and_all_rows_by_hand_on_a_causal_prefill():
    """The paper's released semantics (uniform within a modality, every row) on a 1x1x3x5
    prefill: keys system, image, image, text, text; queries at positions 2, 3, 4."""
    kinds = torch.tensor([[KIND_SYSTEM, KIND_IMAGE, KIND_IMAGE, KIND_TEXT, KIND_TEXT]])
    p = torch.tensor(
        [
            [
                [
                    [0.50, 0.10, 0.40, 0.00, 0.00],  # position 2: sees keys 0..2
                    [0.40, 0.20, 0.30, 0.10, 0.00],  # position 3: sees keys 0..3
                    [0.50, 0.05, 0.05, 0.10, 0.30],  # position 4: sees every key
                ]
            ]
        ],
        dtype=torch.float64,
    )
    future = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)

    def check(out, expected):
        torch.testing.assert_close(out, torch.tensor([[expected]], dtype=torch.float64))
        torch.testing.assert_close(out.sum(-1), torch.ones(1, 1, 3, dtype=torch.float64))
        assert (out[0, 0][future] == 0).all(), "no mass on a masked (future) key"

    # system -> text, uniform, every row. Position 2 sees no text key: unchanged. Position 3
    # gives its 0.40 to its one text key; position 4 splits 0.50 evenly over two.
    check(
        redistribute_pattern(p, kinds, "system", "text", mode="uniform"),
        [
            [0.50, 0.10, 0.40, 0.00, 0.00],
            [0.00, 0.20, 0.30, 0.50, 0.00],
            [0.00, 0.05, 0.05, 0.35, 0.55],
        ],
    )
    # Proportional (the default): position 4 gives 0.5 * 0.1 / 0.4 and 0.5 * 0.3 / 0.4.
    check(
        redistribute_pattern(p, kinds, "system", "text"),
        [
            [0.50, 0.10, 0.40, 0.00, 0.00],
            [0.00, 0.20, 0.30, 0.50, 0.00],
            [0.00, 0.05, 0.05, 0.225, 0.675],
        ],
    )
    # system -> image + text, uniform: each modality gets the moved mass in proportion to
    # its weight, then spreads it evenly over its visible keys. Position 2: images only,
    # +0.25 each. Position 3: image 0.5 and text 0.1 of R = 0.6, so the images share
    # 0.4 * 5/6 (1/6 each) and the text key gets 0.4 / 6 = 1/15. Position 4: image 0.1
    # and text 0.4 of 0.5, so +0.05 per image key and +0.2 per text key.
    check(
        redistribute_pattern(p, kinds, "system", ["image", "text"], mode="uniform"),
        [
            [0.00, 0.35, 0.65, 0.00, 0.00],
            [0.00, 0.20 + 1 / 6, 0.30 + 1 / 6, 0.10 + 1 / 15, 0.00],
            [0.00, 0.10, 0.10, 0.30, 0.50],
        ],
    )
    # Proportional to the same recipients: every key grows by the factor (R + S) / R
    # (position 2: x2, position 3: x5/3, position 4: x2).
    check(
        redistribute_pattern(p, kinds, "system", ["image", "text"]),
        [
            [0.00, 0.20, 0.80, 0.00, 0.00],
            [0.00, 1 / 3, 0.50, 1 / 6, 0.00],
            [0.00, 0.10, 0.10, 0.20, 0.60],
        ],
    )
    # Half of the source, uniform, only the answer row (what rows="answer" selects at
    # prefill): positions 2 and 3 are returned as they were.
    answer = torch.tensor([[False, False, True]])
    check(
        redistribute_pattern(p, kinds, "system", "text", 0.5, "uniform", row_mask=answer),
        [
            [0.50, 0.10, 0.40, 0.00, 0.00],
            [0.40, 0.20, 0.30, 0.10, 0.00],
            [0.25, 0.05, 0.05, 0.225, 0.425],
        ],
    )


def test_no_visible_recipient_leaves_the_row_unchanged():
    kinds = torch.tensor([[KIND_SYSTEM, KIND_TEXT, KIND_IMAGE]])
    p, _ = build_pattern(torch.zeros(1, 1, 3, 3, dtype=torch.float64), kinds, 3)
    out = redistribute_pattern(p, kinds, "system", "image")
    # Rows 0 and 1 cannot see the image key (it comes later): unchanged; row 2 is edited.
    assert torch.equal(out[:, :, :2], p[:, :, :2])
    torch.testing.assert_close(out[0, 0, 2], torch.tensor([0.0, 1 / 3, 2 / 3], dtype=torch.float64))


def test_explicit_visibility_excludes_out_of_window_keys():
    """A sliding window hides early keys: uniform mode must not give them weight."""
    kinds = torch.tensor([[KIND_SYSTEM, KIND_TEXT, KIND_TEXT, KIND_SYSTEM, KIND_TEXT]])
    visible = torch.tensor([[[False, False, True, True, True]]])  # window of 3 for the last query
    p = torch.tensor([[[[0.0, 0.0, 0.2, 0.5, 0.3]]]], dtype=torch.float64)
    out = redistribute_pattern(p, kinds, "system", "text", mode="uniform", visible=visible)
    torch.testing.assert_close(
        out, torch.tensor([[[[0.0, 0.0, 0.45, 0.0, 0.55]]]], dtype=torch.float64)
    )
    # Without the mask the causal rule would count key 1 as a recipient.
    out = redistribute_pattern(p, kinds, "system", "text", mode="uniform")
    assert out[0, 0, 0, 1] > 0


def test_restore_pattern_by_hand():
    """Keys: system, image, image, text; one head, one answer row; source (0.6, 0.2) has S = 0.8."""
    kinds = torch.tensor([[KIND_SYSTEM, KIND_IMAGE, KIND_IMAGE, KIND_TEXT]])
    p = torch.tensor([0.1, 0.2, 0.2, 0.5]).reshape(1, 1, 1, 4)
    source = torch.tensor([0.6, 0.2]).reshape(1, 1, 2)
    # Image mass kept (M = 0.4), spread as the source is (3:1); the rest bit-identical.
    kept = restore_pattern(p, kinds, source)
    torch.testing.assert_close(kept.flatten(), torch.tensor([0.1, 0.3, 0.1, 0.5]))
    assert kept[..., 0] == p[..., 0] and kept[..., 3] == p[..., 3]
    # The source's weights exactly; the rest scaled by (1 - 0.8) / (1 - 0.4) = 1/3.
    taken = restore_pattern(p, kinds, source, mass="source")
    torch.testing.assert_close(taken.flatten(), torch.tensor([0.1 / 3, 0.6, 0.2, 0.5 / 3]))
    for out in (kept, taken):
        torch.testing.assert_close(out.sum(-1), torch.ones(1, 1, 1))
    # The second image key is masked: it gets nothing and S counts the visible key only
    # (T = S = 0.6, rest scale (1 - 0.6) / (1 - 0.3) = 4/7).
    p2 = torch.tensor([0.1, 0.3, 0.0, 0.6]).reshape(1, 1, 1, 4)
    visible = torch.tensor([True, True, False, True]).reshape(1, 1, 4)
    masked = restore_pattern(p2, kinds, source, mass="source", visible=visible)
    torch.testing.assert_close(masked.flatten(), torch.tensor([0.4 / 7, 0.6, 0.0, 2.4 / 7]))
    assert masked[..., 2] == 0
    torch.testing.assert_close(masked.sum(-1), torch.ones(1, 1, 1))
    # A source with no weight on a visible key, and rows outside row_mask, stay unchanged.
    zero = torch.tensor([0.0, 0.7]).reshape(1, 1, 2)
    assert torch.equal(restore_pattern(p2, kinds, zero, visible=visible), p2)
    off = torch.tensor([[False]])
    assert torch.equal(restore_pattern(p, kinds, source, row_mask=off), p)
    with pytest.raises(ValueError, match="source must be"):
        restore_pattern(p, kinds, torch.ones(1, 1, 3))
    with pytest.raises(ValueError, match="mass"):
        restore_pattern(p, kinds, source, mass="both")


def test_modality_resolution():
    both = {KIND_TEXT, KIND_GENERATED}
    assert modality_codes("system", "text") == ({KIND_SYSTEM}, both)
    assert modality_codes("text", "system") == (both, {KIND_SYSTEM})
    assert modality_codes("generated", "text") == ({KIND_GENERATED}, {KIND_TEXT})
    assert modality_codes("system") == ({KIND_SYSTEM}, {KIND_IMAGE} | both)
    assert modality_codes(["system", "image"], None) == ({KIND_SYSTEM, KIND_IMAGE}, both)
    with pytest.raises(ValueError, match="overlap"):
        modality_codes("image", ["image", "text"])
    with pytest.raises(ValueError, match="unknown source modality 'pad'"):
        modality_codes("pad", "text")
    with pytest.raises(ValueError, match="no recipient"):
        modality_codes(list(MODALITIES))
    p = torch.full((1, 1, 1, 2), 0.5)
    kinds = torch.tensor([[KIND_SYSTEM, KIND_TEXT]])
    with pytest.raises(ValueError, match="fraction"):
        redistribute_pattern(p, kinds, "system", "text", fraction=1.5)
    with pytest.raises(ValueError, match="mode"):
        redistribute_pattern(p, kinds, "system", "text", mode="softmax")
    with pytest.raises(ValueError, match="key_kinds"):
        redistribute_pattern(p, kinds[:, :1], "system", "text")


# ----------------------------------------------------------------------------- layer specs
@pytest.mark.parametrize(
    "depth, bounds",
    [
        (4, [0, 1, 2, 3, 4]),
        (28, [0, 7, 14, 21, 28]),
        (32, [0, 8, 16, 24, 32]),
        (36, [0, 9, 18, 27, 36]),
    ],
)
def test_quarter_boundaries(depth, bounds):
    for i in range(1, 5):
        assert list(quarter(i, depth)) == list(range(bounds[i - 1], bounds[i]))
        assert resolve_layers(f"Q{i}", depth) == list(range(bounds[i - 1], bounds[i]))
    if depth == 32:  # the paper's Q4: layers 25-32, 1-indexed
        assert [layer + 1 for layer in resolve_layers("Q4", 32)] == list(range(25, 33))


@settings(max_examples=100, deadline=None)
@given(st.integers(4, 300))
def test_quarters_partition_every_depth(depth):
    layers = [resolve_layers(f"Q{i}", depth) for i in range(1, 5)]
    assert sum(layers, []) == list(range(depth))
    assert all(layers)
    sizes = [len(x) for x in layers]
    assert max(sizes) - min(sizes) <= 1


def test_layer_specs():
    assert resolve_layers("all", 6) == [0, 1, 2, 3, 4, 5]
    assert resolve_layers("20:28", 32) == list(range(20, 28))
    assert resolve_layers("-2:", 6) == [4, 5]
    assert resolve_layers(":2", 6) == [0, 1]
    assert resolve_layers(-1, 6) == [5]
    assert resolve_layers([0, -1, "Q4", 5], 8) == [0, 5, 6, 7]
    assert resolve_layers(range(2, 4), 6) == [2, 3]
    assert resolve_layers([], 6) == []
    with pytest.raises(IndexError, match="out of range"):
        resolve_layers(6, 6)
    with pytest.raises(ValueError, match="unknown layer spec"):
        resolve_layers("Q5", 6)
    with pytest.raises(ValueError, match="empty"):
        resolve_layers("Q2", 2)


def test_intervention_object_binding_and_concatenation():
    lazy = redistribute("system", "text", "Q4")
    with pytest.raises(TypeError, match="needs the model's depth"):
        list(lazy)
    assert lazy.layer_indices(32) == list(range(24, 32))
    bound = lazy.bind(32)
    names = [name for name, _ in bound]
    assert names[1::2] == [f"blocks.{i}.attn.hook_pattern" for i in range(24, 32)]
    assert names[0::2] == [f"blocks.{i}.attn.hook_attn_scores" for i in range(24, 32)]
    explicit = knockout("image", [1, 2])  # non-negative layers need no depth
    assert [n for n, _ in explicit][1::2] == [
        "blocks.1.attn.hook_pattern",
        "blocks.2.attn.hook_pattern",
    ]
    extra = [("blocks.0.attn.hook_pattern", lambda t, hook: t)]
    assert len(bound + explicit) == 20 and len(extra + explicit) == 5 and len(explicit + extra) == 5
    assert list(redistribute("system", "image", [], n_layers=4)) == []
    assert "system->text" in repr(bound) and "n_layers=32" in repr(bound)
    with pytest.raises(ValueError, match="rows"):
        redistribute("system", "text", "Q4", rows="last")
    with pytest.raises(ValueError, match="fraction"):
        redistribute("system", "text", "Q4", fraction=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        scale_image(-1.0, "Q4")
    with pytest.raises(ValueError, match="overlap"):
        redistribute("text", "text", "Q4")


# ----------------------------------------------------------------------------- tiny models
PROMPT = "Is there a red dot in the image? Answer: "
MODEL_ARCHS = newest_per_family()  # one per family base: the rest share its code path


def dots_image(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((size, size, 3), 255, dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(4, size - 4, size=2)
        arr[y - 3 : y + 3, x - 3 : x + 3] = rng.integers(0, 255, size=3)
    return Image.fromarray(arr)


@pytest.fixture(scope="module", params=MODEL_ARCHS)
def model(request, tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt(request.param))


def identity_hooks(layers):
    return [(f"blocks.{layer}.attn.hook_pattern", lambda t, hook: t) for layer in layers]


def test_q4_redistribution_changes_only_the_answer_row(model):
    inputs = model.prepare(images=[dots_image(0)], prompt=PROMPT)
    iv = redistribute("system", "text", "Q4", model=model)
    assert iv.layer_indices() == [model.cfg.n_layers - 1]
    with torch.no_grad():
        clean = model(inputs)
        edited = model.run_with_hooks(inputs, fwd_hooks=iv)
    assert (edited[:, -1] - clean[:, -1]).abs().max().item() > 1e-4
    # The answer-row hooks declare their rows: every other row is computed by SDPA, as clean.
    assert torch.equal(edited[:, :-1], clean[:, :-1]), (
        "rows='answer' edits the last prompt row only"
    )
    with torch.no_grad():
        every_row = model.run_with_hooks(
            inputs, fwd_hooks=redistribute("system", "text", "Q4", rows="all", model=model)
        )
    assert (every_row[:, :-1] - clean[:, :-1]).abs().max().item() > 1e-4


def test_no_layer_and_identity_settings_change_nothing(model):
    inputs = model.prepare(images=[dots_image(1)], prompt=PROMPT)
    q4 = resolve_layers("Q4", model.cfg.n_layers)
    with torch.no_grad():
        clean = model(inputs)
        nothing = model.run_with_hooks(
            inputs, fwd_hooks=redistribute("system", "text", [], model=model)
        )
        same_path = model.run_with_hooks(inputs, fwd_hooks=identity_hooks(q4))
        zero = model.run_with_hooks(
            inputs,
            fwd_hooks=redistribute("system", "text", "Q4", fraction=0.0, rows="all", model=model),
        )
        image_x1 = model.run_with_hooks(
            inputs, fwd_hooks=scale_image(1.0, "Q4", rows="all", model=model)
        )
        image_x2 = model.run_with_hooks(inputs, fwd_hooks=scale_image(2.0, "Q4", model=model))
    assert torch.equal(nothing, clean)
    assert torch.equal(zero, same_path) and torch.equal(image_x1, same_path)
    assert (image_x2[:, -1] - clean[:, -1]).abs().max().item() > 1e-5


def test_edit_matches_pure_function_and_composes_in_order(model):
    """The hook edits exactly as the tensor function does; two interventions apply in order."""
    inputs = model.prepare(images=[dots_image(2)], prompt=PROMPT)
    layer = model.cfg.n_layers - 1
    name = f"blocks.{layer}.attn.hook_pattern"
    kinds = inputs.segments.kinds
    # Reweightings commute; a uniform redistribution after/before scaling does not.
    first = scale_modality("text", 3.0, "Q4", rows="all", model=model)
    second = redistribute("system", "text", -1, mode="uniform", rows="all", model=model)
    with torch.no_grad():
        _, clean = model.run_with_cache(inputs, names_filter=name)
        with model.hooks(fwd_hooks=first + second):
            _, both = model.run_with_cache(inputs, names_filter=name)
        with model.hooks(fwd_hooks=second + first):
            _, swapped = model.run_with_cache(inputs, names_filter=name)
    p = clean[name]
    expected = redistribute_pattern(
        scale_pattern(p, kinds, "text", 3.0), kinds, "system", "text", mode="uniform"
    )
    torch.testing.assert_close(both[name], expected, rtol=0, atol=1e-6)
    expected_swapped = scale_pattern(
        redistribute_pattern(p, kinds, "system", "text", mode="uniform"), kinds, "text", 3.0
    )
    torch.testing.assert_close(swapped[name], expected_swapped, rtol=0, atol=1e-6)
    assert (both[name] - swapped[name]).abs().max() > 1e-4
    out = both[name]
    torch.testing.assert_close(out.sum(-1), torch.ones_like(out.sum(-1)))
    system = inputs.segments.mask("system")[:, None, None, :]
    future = ~torch.ones(p.shape[-1], p.shape[-1], dtype=torch.bool).tril()
    if model.cfg.arch != "gemma3":  # Gemma3's image tokens see each other both ways
        assert (out[..., future] == 0).all(), "the causal mask stays zero"
    # Rows that can see a text key have lost all system weight; the others kept theirs.
    first_text = int((kinds[0] == KIND_TEXT).nonzero()[0])
    sees_text = torch.arange(p.shape[-1]) >= first_text
    assert (out[:, :, sees_text] * system).sum() == 0
    assert (out[:, :, ~sees_text] * system).sum() > 0


def test_generate_edits_answer_rows_at_every_step(model):
    """Count calls per step; at each, answer rows lose the source, other rows stay as they were."""
    images = [[dots_image(3)], [dots_image(4)]]
    inputs = model.prepare(images=images, prompt=[PROMPT, "Red dot? "])
    prompt_len = inputs.segments.prompt_len
    assert (inputs.segments.kinds[1] == KIND_PAD).any(), "the second row must be left-padded"
    iv = redistribute("system", ["image", "text"], ["Q3", "Q4"], model=model)
    layers = iv.layer_indices()
    calls: list[tuple[int, int]] = []
    problems: list[str] = []

    def watch(fn):
        def hook(pattern, hook):
            out = fn(pattern, hook)
            if not hook.name.endswith("hook_pattern"):
                return out
            run = hook.run
            calls.append((run.step, hook.layer_idx))
            k = pattern.shape[-1]
            kinds = run.segments.key_kinds(k)
            system = (kinds == KIND_SYSTEM)[:, None, None, :]
            answer = run.query_positions >= prompt_len - 1
            if (out[:, :, answer] * system).sum() != 0:
                problems.append(f"step {run.step}: system weight left in an answer row")
            if not torch.equal(out[:, :, ~answer], pattern[:, :, ~answer]):
                problems.append(f"step {run.step}: a non-answer row changed")
            pad = (kinds == KIND_PAD)[:, None, None, :].expand_as(out)
            if (out[pad & (pattern == 0)] != 0).any():
                problems.append(f"step {run.step}: weight on a padding key")
            return out

        return hook

    record = AttentionRecord(layers=[0, layers[-1]], keep=("shares",))
    hooks = [(name, watch(fn)) for name, fn in iv]
    result = model.generate(inputs, max_new_tokens=4, fwd_hooks=hooks, record=record)
    clean = model.generate(inputs, max_new_tokens=4)
    n_steps = result.logits.shape[0]
    assert n_steps >= 2
    assert problems == []
    assert calls == [(step, layer) for step in range(n_steps) for layer in layers]
    assert (result.logits[0] - clean.logits[0]).abs().max() > 1e-5
    # The Intervention itself is a valid fwd_hooks argument (the recorder's extra layer-0
    # hooks only move that layer from SDPA to the explicit softmax: tiny float differences).
    direct = model.generate(inputs, max_new_tokens=4, fwd_hooks=iv)
    torch.testing.assert_close(direct.logits, result.logits, rtol=0, atol=1e-4)
    # The recorder's hooks come after the intervention's: it sees the edited pattern.
    for step in range(n_steps):
        shares = result.recording.shares[step]  # [batch, layer, head, query, kind]
        assert (shares[:, 1, :, :, 0] == 0).all(), "edited layer: no system share"
        assert (shares[:, 0, :, :, 0] > 0).all(), "unedited layer keeps its system share"


def test_heads_and_lazy_binding(model):
    inputs = model.prepare(images=[dots_image(5)], prompt=PROMPT)
    name = "blocks.-1.attn.hook_pattern"
    lazy = redistribute("system", "image", "Q4", heads=[0, -1], rows="all")
    with torch.no_grad():
        _, clean = model.run_with_cache(inputs, names_filter=name)
        with model.hooks(fwd_hooks=lazy.fwd_hooks(model)):
            _, edited = model.run_with_cache(inputs, names_filter=name)
    p, out = clean[name], edited[name]
    n = model.cfg.n_heads
    kept = [h for h in range(n) if h not in (0, n - 1)]
    assert torch.equal(out[:, kept], p[:, kept])
    assert not torch.equal(out[:, [0, n - 1]], p[:, [0, n - 1]])
    with pytest.raises(IndexError, match="head"):
        model.run_with_hooks(
            inputs, fwd_hooks=redistribute("system", "image", -1, heads=n, model=model)
        )


def test_hook_outside_a_hooked_run_is_a_clear_error(model):
    iv = knockout("image", "Q4", model=model)
    _, edit = list(iv)[1]

    class Hook:
        layer_idx = 0
        run = type("Run", (), {"segments": None})()

    with pytest.raises(RuntimeError, match="segments"):
        edit(torch.ones(1, 1, 1, 1), Hook())


def test_steps_limit_an_intervention_to_those_decoding_steps(model):
    inputs = model.prepare(images=[dots_image(6)], prompt=PROMPT)
    kwargs = {"max_new_tokens": 4, "min_new_tokens": 4}
    iv = scale_image(4.0, "all", model=model)
    # Hooked but never firing (a hooked pattern runs the explicit softmax, not SDPA).
    clean = model.generate(inputs, fwd_hooks=replace(iv, steps=[99]), **kwargs)
    with pytest.raises(ValueError, match="steps"):
        replace(iv, steps=[-1])
    at_two = model.generate(inputs, fwd_hooks=replace(iv, steps=[2]), **kwargs)
    for step in (0, 1):
        assert torch.equal(at_two.logits[step], clean.logits[step])
    assert not torch.equal(at_two.logits[2], clean.logits[2])
    # restore_image with a random source, at step 1 only.
    n_image = int((inputs.segments.key_kinds(inputs.segments.prompt_len) == KIND_IMAGE).sum())
    source = torch.rand(1, model.cfg.n_heads, n_image)
    restore = restore_image(source, "all", steps=[1], model=model)
    restored = model.generate(inputs, fwd_hooks=restore, **kwargs)
    assert torch.equal(restored.logits[0], clean.logits[0])
    assert not torch.equal(restored.logits[1], clean.logits[1])
