"""Attention metrics behave as the counting paper's Eq. 2 / Eq. 3 state, and halo metrics on known maps."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_lens.metrics import attention as attention_module
from vlm_lens.metrics import (
    centroid_hit_rate,
    convex_hull,
    gini_sparsity,
    halo_masks,
    halo_metrics,
    halo_metrics_batch,
    halo_shares,
    image_attention_mass,
    normalized_entropy,
    textbook_gini,
)

SIZES = [1, 2, 4, 16, 256]


def one_hot(m: int, at: int = 0) -> torch.Tensor:
    p = torch.zeros(m, dtype=torch.float64)
    p[at] = 1.0
    return p


def uniform(m: int) -> torch.Tensor:
    return torch.full((m,), 1.0 / m, dtype=torch.float64)


def test_docstring_examples():
    result = doctest.testmod(attention_module)
    assert result.attempted >= 8 and result.failed == 0


# ------------------------------------------------------------ Eq. 2 / Eq. 3 anchors


@pytest.mark.parametrize("m", SIZES)
def test_uniform_attention(m):
    """Uniform over M tokens: entropy 1 (0 for M = 1), paper Gini -1/M, textbook Gini 0."""
    assert float(normalized_entropy(uniform(m))) == pytest.approx(1.0 if m > 1 else 0.0)
    assert float(gini_sparsity(uniform(m))) == pytest.approx(-1.0 / m)
    assert float(textbook_gini(uniform(m))) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("m", SIZES)
def test_one_hot_attention(m):
    """One-hot: entropy 0, paper Gini 1 - 2/M, textbook Gini (M - 1)/M, wherever the peak is."""
    for at in {0, m // 2, m - 1}:
        p = one_hot(m, at)
        assert float(normalized_entropy(p)) == 0.0
        assert float(gini_sparsity(p)) == pytest.approx(1.0 - 2.0 / m)
        assert float(textbook_gini(p)) == pytest.approx((m - 1) / m)


def test_eq2_hand_worked_example():
    # p = [0.4, 0.1, 0.3, 0.2]; sorted ascending: p_1..p_4 = 0.1, 0.2, 0.3, 0.4; M = 4.
    # Weights (M + 1 - i) = 4, 3, 2, 1:
    #   sum = 4*0.1 + 3*0.2 + 2*0.3 + 1*0.4 = 0.4 + 0.6 + 0.6 + 0.4 = 2.0
    #   Sparsity = 1 - (2/4) * 2.0 = 0.0
    p = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64)
    assert float(gini_sparsity(p)) == pytest.approx(0.0, abs=1e-12)
    # Textbook Gini = paper + 1/M = 0.25; check against the mean-difference definition:
    #   sum_ij |p_i - p_j| = 2 * (0.1+0.2+0.3 + 0.1+0.2 + 0.1) = 2.0; / (2 * M * sum p) = 2.0/8.
    assert float(textbook_gini(p)) == pytest.approx(0.25)


def test_eq2_second_hand_example_unnormalised_input():
    # Weights 1, 1, 2, 4 (sum 8) -> p = 0.125, 0.125, 0.25, 0.5 after normalising.
    #   sum = 4*0.125 + 3*0.125 + 2*0.25 + 1*0.5 = 0.5 + 0.375 + 0.5 + 0.5 = 1.875
    #   Sparsity = 1 - 0.5 * 1.875 = 0.0625
    w = torch.tensor([4.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    assert float(gini_sparsity(w)) == pytest.approx(0.0625)
    # Without normalising, the printed formula is applied to the raw weights.
    assert float(gini_sparsity(w, normalize=False)) == pytest.approx(
        1 - 0.5 * (4 * 1 + 3 * 1 + 2 * 2 + 1 * 4)
    )


def test_paper_gini_is_textbook_minus_one_over_m():
    p = torch.rand(5, 7, dtype=torch.float64)
    assert torch.allclose(gini_sparsity(p), textbook_gini(p) - 1 / 7)


def test_entropy_hand_example():
    # p = [0.5, 0.25, 0.25]: H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2; / ln 3.
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert float(normalized_entropy(p)) == pytest.approx(1.5 * math.log(2) / math.log(3))


def test_zero_rows_are_nan_and_negative_values_rejected():
    p = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 2.0]])
    for fn in (gini_sparsity, textbook_gini, normalized_entropy):
        out = fn(p)
        assert torch.isnan(out[0]) and not torch.isnan(out[1])
        with pytest.raises(ValueError, match="non-negative"):
            fn(torch.tensor([0.5, -0.1, 0.6]))
        with pytest.raises(ValueError):
            fn(torch.zeros(3, 0))


# ----------------------------------------------------------------- vectorisation


@pytest.mark.parametrize("fn", [gini_sparsity, textbook_gini, normalized_entropy])
def test_vectorised_over_leading_axes(fn):
    torch.manual_seed(0)
    m = 9
    p = torch.softmax(torch.randn(2, 3, 4, m, dtype=torch.float64) * 3, dim=-1)
    p[0, 1, 2] = one_hot(m, 3)  # include exact zeros
    out = fn(p)
    assert out.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            for k in range(4):
                assert float(out[i, j, k]) == pytest.approx(float(fn(p[i, j, k])), abs=1e-12)


def test_numpy_in_numpy_out_and_half_precision():
    p = np.array([[0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]])
    out = gini_sparsity(p)
    assert isinstance(out, np.ndarray) and out.shape == (2,)
    assert out[1] == pytest.approx(-1 / 3)
    assert isinstance(normalized_entropy(p), np.ndarray)
    half = gini_sparsity(torch.tensor(p, dtype=torch.bfloat16))
    assert half.dtype == torch.float32
    assert torch.allclose(half, torch.from_numpy(out).float(), atol=1e-2)


# ---------------------------------------------------------------- property tests

distributions = st.integers(min_value=2, max_value=40).flatmap(
    lambda m: st.lists(
        st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False), min_size=m, max_size=m
    ).filter(lambda xs: sum(xs) > 1e-6)
)


@settings(max_examples=150, deadline=None)
@given(distributions)
def test_entropy_in_unit_interval(xs):
    h = float(normalized_entropy(torch.tensor(xs, dtype=torch.float64)))
    assert 0.0 <= h <= 1.0


@settings(max_examples=150, deadline=None)
@given(distributions, st.randoms(use_true_random=False))
def test_permutation_invariance(xs, rnd):
    p = torch.tensor(xs, dtype=torch.float64)
    perm = list(range(len(xs)))
    rnd.shuffle(perm)
    q = p[perm]
    for fn in (gini_sparsity, textbook_gini, normalized_entropy):
        assert float(fn(q)) == pytest.approx(float(fn(p)), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(distributions, st.floats(0.05, 0.95))
def test_mixing_with_uniform_lowers_gini_and_raises_entropy(xs, lam):
    p = torch.tensor(xs, dtype=torch.float64)
    p = p / p.sum()
    m = len(xs)
    mixed = (1 - lam) * p + lam / m
    # Mixing scales the textbook Gini by (1 - lam) exactly, so it never increases.
    assert float(textbook_gini(mixed)) == pytest.approx(
        (1 - lam) * float(textbook_gini(p)), abs=1e-12
    )
    assert float(gini_sparsity(mixed)) <= float(gini_sparsity(p)) + 1e-12
    assert float(normalized_entropy(mixed)) >= float(normalized_entropy(p)) - 1e-12
    if float(textbook_gini(p)) > 1e-6:  # p not already uniform: strictly more diffuse
        assert float(gini_sparsity(mixed)) < float(gini_sparsity(p))


@settings(max_examples=100, deadline=None)
@given(distributions)
def test_paper_gini_range(xs):
    m = len(xs)
    g = float(gini_sparsity(torch.tensor(xs, dtype=torch.float64)))
    assert -1 / m - 1e-12 <= g <= 1 - 2 / m + 1e-12


# ---------------------------------------------------------------- image mass


def test_image_attention_mass_hand_example():
    # Row over 6 keys: [system, img, img, img, text, text]
    pattern = torch.tensor([[0.30, 0.05, 0.10, 0.15, 0.25, 0.15], [0.0, 0.5, 0.25, 0.25, 0.0, 0.0]])
    mask = torch.tensor([False, True, True, True, False, False])
    assert torch.allclose(image_attention_mass(pattern, mask), torch.tensor([0.30, 1.0]))
    # A [batch, head, query, key] pattern with a per-row [batch, key] mask.
    pattern4 = pattern.reshape(2, 1, 1, 6).expand(2, 3, 2, 6)
    masks = torch.stack([mask, torch.tensor([False, False, False, False, True, True])])
    out = image_attention_mass(pattern4, masks[:, None, None, :])
    assert out.shape == (2, 3, 2)
    assert torch.allclose(out[0], torch.full((3, 2), 0.30)) and torch.allclose(
        out[1], torch.zeros(3, 2)
    )
    # Rows that do not sum to one: the share after renormalising.
    assert (
        float(
            image_attention_mass(
                torch.tensor([1.0, 3.0]), torch.tensor([True, False]), normalize=True
            )
        )
        == 0.25
    )


# ------------------------------------------------------------------------- halo

# An 8x8 grid over a 800x800 image: cell (row, col) covers pixels [100c, 100c+100) x [100r, 100r+100).
IMAGE = (800, 800)
GRID = (8, 8)
# Three dots at the centres of cells (1, 1), (1, 6) and (6, 1): a right triangle.
TRIANGLE = [(150.0, 150.0), (650.0, 150.0), (150.0, 650.0)]


def test_centre_cell_mapping():
    m = halo_masks([(0.0, 0.0), (799.9, 10.0), (800.0, 800.0), (250.0, 399.0)], IMAGE, GRID)
    expected = torch.zeros(GRID, dtype=torch.bool)
    expected[0, 0] = expected[0, 7] = expected[7, 7] = expected[3, 2] = True
    assert torch.equal(m.centre, expected)


def test_halo_masks_triangle():
    m = halo_masks(TRIANGLE, IMAGE, GRID, band_width=0.5)
    # In grid units the hull has vertices (1.5, 1.5), (6.5, 1.5), (1.5, 6.5); with a
    # half-cell band, only cells whose centre lies ON an edge are in it: row 1 and
    # column 1 from 1 to 6, and the hypotenuse cells (r, c) with r + c = 7.
    band = torch.zeros(GRID, dtype=torch.bool)
    for i in range(1, 7):
        band[1, i] = band[i, 1] = band[i, 7 - i] = True
    centre = torch.zeros(GRID, dtype=torch.bool)
    centre[1, 1] = centre[1, 6] = centre[6, 1] = True
    assert torch.equal(m.centre, centre)
    assert torch.equal(m.hull_band, band & ~centre)
    assert torch.equal(m.background, ~(band | centre))
    # The regions partition the grid.
    total = m.centre.int() + m.hull_band.int() + m.background.int()
    assert torch.equal(total, torch.ones(GRID, dtype=torch.int32))
    assert sorted(map(tuple, m.hull.tolist())) == [(1.5, 1.5), (1.5, 6.5), (6.5, 1.5)]


def test_halo_interior_cells_are_background():
    # A big square of dots: cells deep inside the hull are not in the band.
    square = [(150.0, 150.0), (650.0, 150.0), (650.0, 650.0), (150.0, 650.0)]
    m = halo_masks(square, IMAGE, GRID, band_width=1.0)
    assert bool(m.background[3, 3]) and bool(m.background[4, 4])
    assert bool(m.hull_band[1, 3]) and bool(m.hull_band[0, 3]) and bool(m.hull_band[2, 3])
    # Corner cell centre (0.5, 0.5) is sqrt(2) cells from the vertex (1.5, 1.5): outside the band.
    assert bool(m.background[0, 0])
    assert bool(m.hull_band[3, 0]) and bool(m.hull_band[3, 2])


def test_halo_shares_all_mass_on_band():
    m = halo_masks(TRIANGLE, IMAGE, GRID, band_width=0.5)
    a = m.hull_band.to(torch.float64) * 7.0  # unnormalised on purpose
    shares = halo_shares(a, m)
    assert float(shares["hull_band"]) == pytest.approx(1.0)
    assert float(shares["centre"]) == 0.0 and float(shares["background"]) == 0.0


def test_halo_shares_known_split_and_flat_input():
    m = halo_masks(TRIANGLE, IMAGE, GRID, band_width=0.5)
    a = torch.zeros(2, *GRID, dtype=torch.float64)
    # Map 0: 0.6 on the centre cells (0.2 each), 0.4 on one background cell.
    a[0, 1, 1] = a[0, 1, 6] = a[0, 6, 1] = 0.2
    a[0, 5, 5] = 0.4
    # Map 1: uniform: shares are the region sizes / 64.
    a[1] = 1 / 64
    shares = halo_shares(a, m)
    assert shares["centre"].shape == (2,)
    assert float(shares["centre"][0]) == pytest.approx(0.6)
    assert float(shares["background"][0]) == pytest.approx(0.4)
    assert float(shares["hull_band"][0]) == 0.0
    n_band = int(m.hull_band.sum())
    assert float(shares["centre"][1]) == pytest.approx(3 / 64)
    assert float(shares["hull_band"][1]) == pytest.approx(n_band / 64)
    assert float(shares["background"][1]) == pytest.approx((64 - 3 - n_band) / 64)
    flat = halo_shares(a.reshape(2, 64), m)
    for key in shares:
        assert torch.allclose(flat[key], shares[key])
    numpy_out = halo_shares(a.numpy(), m)
    assert isinstance(numpy_out["centre"], np.ndarray)


def test_centroid_hit_rate_two_of_three():
    a = torch.zeros(GRID)
    a[1, 1] = 0.5  # dot 1 hit
    a[6, 1] = 0.3  # dot 3 hit
    a[4, 4] = 0.2  # a non-dot cell takes the third place; dot 2 at (1, 6) misses
    assert float(centroid_hit_rate(a, TRIANGLE, IMAGE, GRID)) == pytest.approx(2 / 3)
    assert float(centroid_hit_rate(a.reshape(64), TRIANGLE, IMAGE, GRID)) == pytest.approx(2 / 3)
    # Vectorised over leading axes; k can be changed.
    stacked = torch.stack([a, a.T.contiguous()])
    assert centroid_hit_rate(stacked, TRIANGLE, IMAGE, GRID).shape == (2,)
    assert float(centroid_hit_rate(a, TRIANGLE, IMAGE, GRID, k=1)) == pytest.approx(1 / 3)


def test_centroid_hit_rate_ties_prefer_reading_order():
    flat = torch.ones(GRID)  # all tied: the top-3 are cells 0, 1, 2 of row 0
    dots_row0 = [(50.0, 50.0), (150.0, 50.0), (750.0, 750.0)]
    assert float(centroid_hit_rate(flat, dots_row0, IMAGE, GRID)) == pytest.approx(2 / 3)
    assert math.isnan(float(centroid_hit_rate(flat, [], IMAGE, GRID)))


def test_nan_maps_give_nan_from_every_metric():
    """NaN in, NaN out: a map the recording could not fill gives no number, not a rank."""
    nan_map = torch.full(GRID, torch.nan)
    # Without the NaN guard the stable sort ranks NaN cells and returns a rate from nothing.
    assert math.isnan(float(centroid_hit_rate(nan_map, TRIANGLE, IMAGE, GRID)))
    assert np.isnan(centroid_hit_rate(nan_map.numpy(), TRIANGLE, IMAGE, GRID))
    one_nan = torch.rand(GRID, generator=torch.Generator().manual_seed(1))
    one_nan[7, 7] = torch.nan  # a non-dot cell: the hits alone would still look fine
    both = torch.stack([one_nan, torch.ones(GRID)])
    rates = centroid_hit_rate(both, TRIANGLE, IMAGE, GRID)
    assert math.isnan(float(rates[0])) and float(rates[1]) == pytest.approx(0.0)
    for metric in halo_metrics(one_nan, TRIANGLE, IMAGE, GRID).values():
        assert math.isnan(float(metric))
    for fn in (gini_sparsity, textbook_gini, normalized_entropy):
        assert math.isnan(float(fn(nan_map.reshape(-1))))
        assert math.isnan(float(fn(one_nan.reshape(-1))))
        assert math.isnan(float(fn(torch.tensor([torch.nan]))))
    row = torch.tensor([0.2, torch.nan, 0.3, 0.5])
    image = torch.tensor([True, True, False, False])
    assert math.isnan(float(image_attention_mass(row, image)))
    assert float(image_attention_mass(row, ~image)) == pytest.approx(0.8)  # NaN key not counted
    assert math.isnan(float(image_attention_mass(row, ~image, normalize=True)))


def test_halo_metrics_and_batch():
    a = torch.rand(3, *GRID, generator=torch.Generator().manual_seed(0))
    single = halo_metrics(a[0], TRIANGLE, IMAGE, GRID)
    assert set(single) == {"centre", "hull_band", "background", "centroid_hit_rate"}
    assert float(single["centre"] + single["hull_band"] + single["background"]) == pytest.approx(
        1.0
    )
    other = [(450.0, 450.0), (50.0, 750.0)]
    batch = halo_metrics_batch(a, [TRIANGLE, other, TRIANGLE], IMAGE, GRID)
    assert batch["centre"].shape == (3,)
    assert float(batch["centre"][1]) == pytest.approx(
        float(halo_metrics(a[1], other, IMAGE, GRID)["centre"])
    )
    # Per-image grids (e.g. dynamic resolution) as a list.
    maps = [torch.rand(4, 4), torch.rand(8, 8)]
    per = halo_metrics_batch(maps, [TRIANGLE, TRIANGLE], IMAGE, [(4, 4), (8, 8)])
    assert per["hull_band"].shape == (2,)


def test_radii_extend_centre_cells():
    # A dot of radius 60 at (150, 150) reaches into cells (0..2, 0..2) but not diagonally
    # past (0, 0)'s corner: distance from (150, 150) to (100, 100) is ~70.7 > 60.
    m = halo_masks([(150.0, 150.0)], IMAGE, GRID, radii=[60.0])
    expected = torch.zeros(GRID, dtype=torch.bool)
    expected[1, 0:3] = expected[0:3, 1] = True
    assert torch.equal(m.centre, expected)


def test_convex_hull_drops_inner_and_edge_points_counter_clockwise():
    pts = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [1, 0], [0, 1]], dtype=float)
    hull = convex_hull(pts)
    assert sorted(map(tuple, hull.tolist())) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    x, y = hull[:, 0], hull[:, 1]
    assert 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) == pytest.approx(4.0)  # CCW
    assert convex_hull(np.array([[0, 0], [1, 1], [2, 2]], dtype=float)).tolist() == [[0, 0], [2, 2]]
