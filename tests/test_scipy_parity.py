"""The scipy-based hull and paired tests give the numbers the hand-written ones gave.

Temporary: kept for the commit that swaps the implementations, deleted with the old code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlm_lens.metrics.attention import _legacy_convex_hull, convex_hull
from vlm_lens.studies import stats


def test_convex_hull_matches_the_monotone_chain():
    rng = np.random.default_rng(0)
    for trial in range(1000):
        pts = rng.uniform(0, 50, (int(rng.integers(1, 25)), 2))
        if trial % 4 == 0:  # duplicates, points on edges and collinear sets
            pts = np.round(pts / 10) * 10
        new, old = convex_hull(pts), _legacy_convex_hull(pts)
        assert new.shape == old.shape
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("new", "old"),
    [
        (stats.wilcoxon_signed_rank, stats._legacy_wilcoxon_signed_rank),
        (stats.sign_test, stats._legacy_sign_test),
    ],
)
def test_paired_tests_match_the_hand_written_ones(new, old):
    rng = np.random.default_rng(1)
    methods = set()
    for trial in range(600):
        n = int(rng.integers(1, 120))
        x, y = rng.normal(0.2, 1, n), rng.normal(0, 1, n)
        if trial % 3 == 0:  # tied magnitudes and zero differences
            x, y = np.round(x, 1), np.round(y, 1)
        a, b = new(x, y).as_dict(), old(x, y).as_dict()
        methods.add(a["method"])
        for key, value in a.items():
            if isinstance(value, str) or (math.isnan(value) and math.isnan(b[key])):
                assert value == b[key] or math.isnan(b[key])
                continue
            assert value == pytest.approx(b[key], rel=1e-12, abs=1e-12), (trial, key)
    assert methods >= ({"binomial"} if new is stats.sign_test else {"exact", "normal"})
