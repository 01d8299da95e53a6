"""The controls that test the counting paper's claims: sinks, the hull permutation test,
decay against error, and the verdicts (issue 16). Pure numpy, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlm_lens.data import dots
from vlm_lens.metrics import claims
from vlm_lens.metrics.attention import halo_masks, halo_shares
from vlm_lens.metrics.controls import (
    SINK_FACTOR,
    baseline_map,
    halo_controls,
    hull_permutation_test,
    sink_cells,
)
from vlm_lens.metrics.decay import auroc, decay_vs_error, digit_correct, logistic_fit
from vlm_lens.studies.stats import mcnemar_exact, sign_test, wilcoxon_signed_rank

SIZE = 512
GRID = (16, 16)
CORNERS = [(0, 0), (0, GRID[1] - 1)]  # two top corners, the same on every image
SINK_MASS = 0.3  # on each corner


@pytest.fixture(scope="module")
def images():
    return dots.generate(60, seed=7, size=SIZE, radius=8, count_range=(10, 12))


def _band(sample) -> np.ndarray:
    return halo_masks(sample.centres, sample.size, GRID).hull_band.numpy()


def _with_sinks(content: np.ndarray) -> np.ndarray:
    """`content` (zero on the corners) scaled to the non-sink mass, plus fixed corner mass."""
    m = content / content.sum() * (1 - 2 * SINK_MASS)
    for r, c in CORNERS:
        m[r, c] = SINK_MASS
    return m


def _content(rng: np.random.Generator) -> np.ndarray:
    c = rng.random(GRID)
    for r, col in CORNERS:
        c[r, col] = 0.0
    return c


# ------------------------------------------------------------------------------- sinks


def test_fixed_corner_mass_is_flagged_as_sinks_and_excluding_it_leaves_the_rest(images):
    rng = np.random.default_rng(0)
    blank_runs = np.stack([_with_sinks(_content(rng)) for _ in range(20)])
    base = baseline_map(blank_runs)
    sinks = sink_cells(base)
    expected = np.zeros(GRID, dtype=bool)
    for r, c in CORNERS:
        expected[r, c] = True
    assert np.array_equal(sinks, expected)

    for sample in images[:5]:
        content = _content(rng) + 3 * _band(sample)  # the image's own content: its hull band
        for r, c in CORNERS:
            content[r, c] = 0.0
        out = halo_controls(_with_sinks(content), sample.centres, sample.size, base, sinks)
        rest = halo_shares(content, halo_masks(sample.centres, sample.size, GRID))
        for name, share in rest.items():
            assert out[f"nosink_{name}"] == pytest.approx(float(share), abs=1e-12)
            # raw shares differ: the corners hold 0.6 of the raw map
            assert out[name] != pytest.approx(float(share), abs=1e-3)
        regions = halo_masks(sample.centres, sample.size, GRID).as_dict()
        for name, mask in regions.items():
            kept = mask.numpy() & ~sinks
            assert out[f"nosink_area_{name}"] == pytest.approx(kept.sum() / (~sinks).sum())
            assert out[f"ratio_{name}"] == pytest.approx(
                out[name] / out[f"baseline_{name}"], rel=1e-12
            )
        assert out["excess_centroid_hit_rate"] == pytest.approx(
            out["centroid_hit_rate"] - out["baseline_centroid_hit_rate"]
        )


def test_uniform_baseline_has_no_sinks_and_ratio_one_for_the_baseline_itself(images):
    base = np.full(GRID, 1.0)
    assert not sink_cells(base).any()
    sample = images[0]
    out = halo_controls(base, sample.centres, sample.size, base, sink_cells(base))
    for name in ("centre", "hull_band", "background"):
        assert out[f"ratio_{name}"] == pytest.approx(1.0)
        assert out[name] == pytest.approx(out[f"area_{name}"])  # uniform = area share


def test_sink_threshold_is_a_multiple_of_uniform():
    m = GRID[0] * GRID[1]
    # one cell at v, the other m - 1 at 1: its share v / (m - 1 + v) passes factor / m
    # exactly at v = factor (m - 1) / (m - factor)
    edge = SINK_FACTOR * (m - 1) / (m - SINK_FACTOR)
    for v, flagged in ((edge * 1.01, True), (edge * 0.99, False)):
        base = np.full(GRID, 1.0)
        base[3, 3] = v
        assert sink_cells(base).sum() == int(flagged)
    with pytest.raises(ValueError, match="factor"):
        sink_cells(base, factor=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        baseline_map(-np.ones((2, *GRID)))


def test_controls_vectorise_over_layers_and_steps(images):
    rng = np.random.default_rng(1)
    maps = rng.random((3, 2, *GRID))  # [layer, digit step, h, w]
    base = baseline_map(rng.random((5, 3, 2, *GRID)))
    sinks = sink_cells(base, factor=1.5)
    sample = images[1]
    out = halo_controls(maps, sample.centres, sample.size, base, sinks)
    one = halo_controls(maps[2, 1], sample.centres, sample.size, base[2, 1], sinks[2, 1])
    for key, value in out.items():
        assert np.shape(value) == (3, 2), key
        assert value[2, 1] == pytest.approx(float(one[key]), nan_ok=True), key


# ------------------------------------------------------------------ permutation test


def test_permutation_p_is_small_for_a_map_that_follows_the_hull(images):
    rng = np.random.default_rng(2)
    maps = np.stack([0.2 * rng.random(GRID) + _band(s) for s in images])
    centres = [s.centres for s in images]
    result = hull_permutation_test(maps, centres, (SIZE, SIZE), n_permutations=2000)
    assert result.n == len(images)
    assert result.excess > 0.05
    assert result.p_greater < 0.001 and result.p_two_sided < 0.01


def test_permutation_p_is_not_small_for_a_map_that_ignores_the_hull(images):
    yy, xx = np.mgrid[0 : GRID[0], 0 : GRID[1]]
    blob = np.exp(-((yy - 7.5) ** 2 + (xx - 7.5) ** 2) / 8.0)  # the same on every image
    maps = np.stack([blob] * len(images))
    result = hull_permutation_test(maps, [s.centres for s in images], (SIZE, SIZE))
    assert result.p_two_sided > 0.2
    assert abs(result.excess) < 0.01


def test_permutation_excludes_sinks_and_unmatched_counts(images):
    rng = np.random.default_rng(3)
    maps = np.stack([_with_sinks(_content(rng) + 3 * _band(s)) for s in images])
    sinks = np.zeros(GRID, dtype=bool)
    for r, c in CORNERS:
        sinks[r, c] = True
    centres = [s.centres for s in images] + [[(10.0, 10.0)]]  # a count nobody else has
    maps = np.concatenate([maps, maps[:1]])
    result = hull_permutation_test(maps, centres, (SIZE, SIZE), exclude=sinks, n_permutations=500)
    assert result.n == len(images)
    assert result.p_greater < 0.01
    with pytest.raises(ValueError, match="share a dot count"):
        hull_permutation_test(maps[:2], [[(1.0, 1.0)], [(1.0, 1.0), (5.0, 5.0)]], (SIZE, SIZE))
    with pytest.raises(ValueError, match="region"):
        hull_permutation_test(maps, centres, (SIZE, SIZE), region="halo")


# ------------------------------------------------------------------------- decay

N_AUROC = 2000
RANDOM_AUROC_TOL = 0.04  # sd of the AUROC of a random score at n = 2000 is ~0.013


def test_auroc_of_correctness_itself_is_one_and_of_noise_about_half():
    rng = np.random.default_rng(4)
    correct = rng.random(N_AUROC) < 0.6
    perfect = auroc(correct.astype(float), correct, n_boot=200)
    assert perfect.auroc == 1.0 and perfect.ci_low == 1.0
    assert auroc(-correct.astype(float), correct, n_boot=0).auroc == 0.0
    noise = auroc(rng.random(N_AUROC), correct, n_boot=500)
    assert abs(noise.auroc - 0.5) < RANDOM_AUROC_TOL
    assert noise.ci_low < 0.5 < noise.ci_high
    assert noise.n_pos + noise.n_neg == N_AUROC


def test_auroc_by_hand_with_ties_and_single_class():
    # positives 2, 3; negatives 1, 2: pairs (2>1)=1, (2=2)=1/2, (3>1)=1, (3>2)=1 -> 3.5/4
    assert auroc([2, 3, 1, 2], [1, 1, 0, 0], n_boot=0).auroc == pytest.approx(0.875)
    assert math.isnan(auroc([1.0, 2.0], [True, True]).auroc)
    assert auroc([1.0, np.nan, 0.0], [1, 0, 0], n_boot=0).n_neg == 1  # NaN score left out


def test_logistic_fit_recovers_known_coefficients():
    rng = np.random.default_rng(5)
    n = 20_000
    x = np.stack([rng.normal(size=n), rng.integers(10, 17, n).astype(float)], axis=1)
    true = np.array([-3.0, 1.2, 0.25])  # intercept, score, count
    logits = true[0] + x @ true[1:]
    y = rng.random(n) < 1 / (1 + np.exp(-logits))
    fit = logistic_fit(x, y, ["score", "count"])
    assert fit.converged and fit.names == ("intercept", "score", "count")
    for est, se, t in zip(fit.coef, fit.se, true):
        assert abs(est - t) < 4 * se  # within four standard errors
    assert fit["score"]["p_value"] < 1e-10


def test_logistic_fit_reports_separation_and_rejects_collinear_predictors():
    x = np.arange(20.0)
    sep = logistic_fit(x, x > 9.5)
    assert not sep.converged
    with pytest.raises(ValueError, match="collinear"):
        logistic_fit(np.stack([x, 2 * x], axis=1), x > 5)


def test_decay_vs_error_on_a_simulated_decay():
    rng = np.random.default_rng(6)
    n = 400
    count = rng.integers(10, 17, n)
    gini = rng.normal(0.4, 0.1, n)
    right = rng.random(n) < 1 / (1 + np.exp(-(gini - 0.4) / 0.05))
    out = decay_vs_error(gini, list(right[:-1]) + [None], count, n_boot=300)
    assert out["n"] == n - 1
    assert out["auroc"]["ci_low"] > 0.6
    assert out["score_coef"] > 0 and out["score_p"] < 1e-6
    assert out["logistic"]["names"] == ("intercept", "score", "count")


def test_decay_vs_error_does_not_report_a_separated_fit():
    score = np.arange(50.0)
    right = score > 0  # the one wrong digit has the lowest score: complete separation
    out = decay_vs_error(score, right, np.full(50, 12), n_boot=0)
    assert out["auroc"]["auroc"] == 1.0
    assert out["logistic"]["converged"] is False
    assert math.isnan(out["score_coef"]) and math.isnan(out["score_p"])


def test_digit_correct_reads_digits_left_to_right():
    assert digit_correct(["1", "2"], 12, 1) is True
    assert digit_correct(["1", "3"], 12, 1) is False
    assert digit_correct(["9"], 12, 1) is None
    assert digit_correct(["1", "2", "0"], 12, 2) is False


# ------------------------------------------------------------------- paired tests


def test_mcnemar_is_the_sign_test_on_discordant_pairs():
    before = np.array([1, 1, 0, 0, 0, 0, 0, 1, 1, 0], dtype=bool)
    after = np.array([1, 0, 1, 1, 1, 1, 0, 1, 1, 1], dtype=bool)
    t = mcnemar_exact(before, after)
    # discordant: one right->wrong, five wrong->right; P(X<=1 | 6, 1/2) * 2 = 14/64
    assert (t.statistic, t.n, t.n_zero) == (5.0, 6, 4)
    assert t.p_value == pytest.approx(14 / 64)
    assert t.mean_diff == pytest.approx(after.mean() - before.mean())
    assert sign_test(after.astype(float), before.astype(float)) == t
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0, 2], [1, 1])


# ----------------------------------------------------------------------- verdicts


def test_verdicts_follow_the_stated_rule(images):
    rng = np.random.default_rng(7)
    follow = np.stack([0.2 * rng.random(GRID) + _band(s) for s in images])
    avoid = np.stack([1.0 + 0.2 * rng.random(GRID) - 0.9 * _band(s) for s in images])
    centres = [s.centres for s in images]
    perm = {
        name: hull_permutation_test(m, centres, (SIZE, SIZE), n_permutations=1000)
        for name, m in (("follow", follow), ("avoid", avoid))
    }
    assert claims.halo_verdict(perm["follow"]).verdict == "supported"
    assert claims.halo_verdict(perm["avoid"].as_dict()).verdict == "opposite"
    # a map on the dots' own cells: the band test is not won, the centre test is lost
    on_dots = np.stack(
        [
            0.2 * rng.random(GRID) + halo_masks(s.centres, s.size, GRID).centre.numpy()
            for s in images
        ]
    )
    centre = hull_permutation_test(
        on_dots, centres, (SIZE, SIZE), region="centre", n_permutations=1000
    )
    assert claims.halo_verdict(perm["follow"], centre).parts[1].verdict == "opposite"
    assert claims.halo_verdict(perm["follow"], centre).verdict == "not supported"
    with pytest.raises(ValueError, match="permutation test of 'centre'"):
        claims.halo_verdict(perm["follow"], perm["follow"])

    # Each test is oriented so that positive differences are what the paper claims:
    # wilcoxon(gini_1st, gini_2nd) for the drop, wilcoxon(entropy_2nd, entropy_1st) for the rise.
    x = rng.normal(0.5, 0.05, 80)
    up = wilcoxon_signed_rank(x + 0.1 + rng.normal(0, 0.02, 80), x)
    down = wilcoxon_signed_rank(x - 0.1 + rng.normal(0, 0.02, 80), x)
    flat = wilcoxon_signed_rank(x + rng.normal(0, 0.02, 80), x)
    take = claims.takeover_verdict(up, up)
    assert [p.verdict for p in take.parts] == ["supported", "supported"]
    assert take.verdict == "supported"
    assert claims.takeover_verdict(down, down).verdict == "opposite"
    assert claims.takeover_verdict(up, down).verdict == "not supported"  # mixed
    with_mass = claims.takeover_verdict(up, up, flat)
    assert [p.verdict for p in with_mass.parts] == ["supported", "supported", "not supported"]
    assert with_mass.verdict == "not supported"

    correct = rng.random(300) < 0.5
    good = auroc(correct + rng.normal(0, 0.5, 300), correct, n_boot=300)
    assert claims.decay_verdict({"gini": good}).verdict == "supported"
    assert claims.decay_verdict({"entropy": good}).verdict == "opposite"
    with pytest.raises(ValueError, match="direction"):
        claims.decay_verdict({"loudness": good})

    before = rng.random(200) < 0.4
    after = before | (rng.random(200) < 0.3)
    assert claims.regrounding_verdict(mcnemar_exact(before, after)).verdict == "supported"
    assert claims.regrounding_verdict(mcnemar_exact(before, before)).verdict == "not measured"

    lines = claims.headline(
        claims.paper_claims(
            halo=perm["follow"],
            takeover={"sparsity_drop": up, "entropy_rise": up},
            decay={"gini": good},
        )
    )
    assert lines[0].startswith("attention follows the hull") and "SUPPORTED" in lines[0]
    assert any("Wilcoxon p" in line for line in lines)


def test_missing_numbers_give_not_measured():
    empty = wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0])  # only zero differences: NaN p
    assert claims.takeover_verdict(empty, empty).verdict == "not measured"
    from_json = {"auroc": None, "ci_low": None, "ci_high": None, "level": 0.95}
    from_json.update(n_pos=0, n_neg=0)
    assert claims.decay_verdict({"gini": from_json}).verdict == "not measured"
    one_class = auroc([0.1, 0.2, 0.3], [True, True, True])
    assert claims.decay_verdict({"entropy": one_class}).parts[0].verdict == "not measured"
