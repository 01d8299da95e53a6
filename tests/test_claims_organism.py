"""The claim controls on the shipped organism, from the counting study's own records.

The study's records (`counting.count_samples`) on paper-spec images and on their
content-free counterparts (`dots.content_free`) feed the baseline, the sink mask, the
sink-excluded and baseline-relative halo metrics, the hull permutation test and the
verdicts, as the study will once they are wired in.
"""

from __future__ import annotations

import numpy as np
import pytest

from vlm_lens import HookedVLM, zoo
from vlm_lens.data import dots
from vlm_lens.metrics import claims
from vlm_lens.metrics.controls import (
    baseline_map,
    halo_controls,
    hull_permutation_test,
    sink_cells,
)
from vlm_lens.studies import counting

N = 24
UNITS = 1


@pytest.fixture(scope="module")
def records():
    model = HookedVLM.from_pretrained(zoo.organism())
    config = counting.CountingConfig(n=N, example_maps=N)  # keep every map
    real = config.dataset()
    shuffled = dots.content_free(real, "shuffled", seed=1)
    rows = {}
    for name, samples in (("real", real), ("shuffled", shuffled)):
        rows[name] = [
            row
            for i in range(0, N, 8)
            for row in counting.count_samples(model, samples[i : i + 8], config)
        ]
    return real, rows


def _maps(rows, digit):
    out = {}
    for row in rows:
        entry = [e for e in row.attention if e["digit"] == digit]
        if entry:
            out[row.index] = np.asarray(entry[0]["map"]).reshape(row.grid)
    return out


def test_units_digit_controls_on_the_organism(records):
    real, rows = records
    shuffled_maps = _maps(rows["shuffled"], UNITS)
    # The same counts at new places: the organism still answers with two digits, so the
    # units step has a baseline.
    assert len(shuffled_maps) >= N - 2
    base = baseline_map(np.stack(list(shuffled_maps.values())))
    assert base.sum() == pytest.approx(1.0)
    sinks = sink_cells(base)
    real_maps = _maps(rows["real"], UNITS)
    for index, m in real_maps.items():
        sample = real[index]
        out = halo_controls(m, sample.centres, sample.size, base, sinks)
        shares = [out[k] for k in ("centre", "hull_band", "background")]
        assert sum(shares) == pytest.approx(1.0)
        # the study's own halo numbers for this record are the raw ones here
        entry = next(e for e in rows["real"][index].attention if e["digit"] == UNITS)
        assert out["hull_band"] == pytest.approx(entry["hull_band"], abs=1e-6)
        assert out["centroid_hit_rate"] == pytest.approx(entry["centroid_hit_rate"])
        if not sinks.any():
            assert out["nosink_hull_band"] == pytest.approx(out["hull_band"])
        assert sum(out[f"nosink_{k}"] for k in ("centre", "hull_band", "background")) == (
            pytest.approx(1.0)
        )

    indices = sorted(real_maps)
    perm = hull_permutation_test(
        np.stack([real_maps[i] for i in indices]),
        [real[i].centres for i in indices],
        real[0].size,
        exclude=sinks,
        n_permutations=2000,
    )
    counts = [real[i].count for i in indices]
    assert perm.n == sum(counts.count(c) > 1 for c in counts)
    verdict = claims.halo_verdict(perm)
    assert verdict.verdict in claims.VERDICTS and "permutation p" in verdict.parts[0].evidence
