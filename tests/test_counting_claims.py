"""The counting study's tests of the paper's claims (issue 16): the content-free control
condition, the halo controls and permutation test, decay -> error, re-grounding's paired
test and the verdict headline, on the trained organism and on hand-made records.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vlm_lens import HookedVLM, zoo
from vlm_lens.reports.counting import write_outputs
from vlm_lens.studies import counting, runlog
from vlm_lens.studies.counting.claims import DECAY_SCORES, MIN_CLASS

N_ORGANISM = 24


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


@pytest.fixture(scope="module")
def organism_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    model = HookedVLM.from_pretrained(zoo.organism())
    out = tmp_path_factory.mktemp("count_claims")
    base = counting.CountingConfig(n=N_ORGANISM, regrounding=counting.Regrounding("restore"))
    configs = counting.conditions(base)
    counting.run_counting(model, configs, out, model_name="organism", progress=False)
    written = write_outputs(out, png=False)
    return out, written["summaries"]


def test_organism_run_reports_every_claim_field(organism_run):
    out, summaries = organism_run
    by_condition = {s["condition"]: s for s in summaries}
    assert set(by_condition) == {"baseline", counting.CONTROL_CONDITION}
    assert "claims" not in by_condition[counting.CONTROL_CONDITION]  # the control is not judged
    s = by_condition["baseline"]
    rows = [
        r
        for r in runlog.read_jsonl(out / "organism" / "samples.jsonl")
        if r["condition"] == "baseline"
    ]
    assert len(rows) == N_ORGANISM and all(len(r["centres"]) == r["count"] for r in rows)

    digits = sorted({e["digit"] for r in rows for e in r["attention"]})
    assert [(c["layer"], c["digit"]) for c in s["controls"]] == [
        (layer, d) for layer in s["layers"] for d in digits
    ]
    for c in s["controls"]:
        assert c["measured"] and c["n_baseline"] > 0
        h, w = c["grid"]
        base = np.asarray(c["baseline_map"])
        assert (
            base.shape == (h * w,) and base.min() >= 0 and base.sum() == pytest.approx(1, abs=1e-5)
        )
        assert all(0 <= i < h * w for i in c["sink_cells"])
        for prefix in ("", "nosink_", "ratio_", "baseline_"):
            for region in ("centre", "hull_band", "background"):
                assert _finite(c["halo"][f"{prefix}{region}"]), (prefix, region)
        raw = sum(c["halo"][r] for r in ("centre", "hull_band", "background"))
        assert raw == pytest.approx(1, abs=1e-6)
        for name in ("hull_band", "centre", "nosink_hull_band", "nosink_centre"):
            test = c["permutation"][name]
            assert 0 < test["p_greater"] <= 1 and 0 < test["p_less"] <= 1
            assert _finite(test["observed"]) and _finite(test["excess"])

    for place in ("units", "tens"):
        d = s["decay"][place]
        n_wrong = sum(
            not _digit_right(r, place) for r in rows if _digit_right(r, place) is not None
        )
        assert d["n_wrong"] == n_wrong
        if d["status"] == "measured":
            for score in DECAY_SCORES:
                a = d[score]["auroc"]
                assert a["ci_low"] <= a["auroc"] <= a["ci_high"]
        else:
            assert d["status"].startswith("not measured") and n_wrong in (0, d["n"])

    reg = s["regrounding_test"]
    before = [_digit_right(r, "units") is True for r in rows]
    after = [
        _digit_right({**r, "digits": list(str(r["regrounding"]["prediction"] or ""))}, "units")
        is True
        for r in rows
    ]
    assert reg["units_accuracy_before"] == pytest.approx(np.mean(before))
    assert reg["units_accuracy_after"] == pytest.approx(np.mean(after))
    assert reg["n"] == sum(a != b for a, b in zip(before, after))  # discordant pairs
    assert (reg["p_value"] is None) if reg["n"] == 0 else 0 < reg["p_value"] <= 1

    claims = {c["claim"]: c for c in s["claims"]}
    assert set(claims) >= {"halo", "takeover", "decay_predicts_error_units", "regrounding"}
    for c in claims.values():
        assert c["verdict"] in ("supported", "not supported", "opposite", "not measured")
    assert claims["halo"]["verdict"] != "not measured"
    assert len(s["headline"]) >= len(claims)

    page = (out / "report.html").read_text()
    assert "The paper&#x27;s claims: what this run says" in page
    for c in claims.values():
        assert c["verdict"] in page
    assert "Content-free baseline" in page and "Halo controls" in page
    assert page.index("what this run says") < page.index("<h2>Summary (all columns)</h2>")


def _digit_right(row: dict, place: str) -> bool | None:
    """Independent of the study's code: the answer's digit at `place` against the count's."""
    answer, truth = "".join(row["digits"]), str(row["count"])
    back = 1 if place == "units" else 2
    if len(truth) < back or len(answer) < len(truth) - back + 1:
        return None
    return answer[len(truth) - back] == truth[-back]


def test_cli_prints_the_claims_and_no_controls_runs_only_the_baseline(
    tmp_path, capsys, organism_run
):
    from vlm_lens.cli import main

    argv = ["count", "--n", "4", "--no-png", "--no-progress", "--no-controls"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = runlog.read_jsonl(tmp_path / "organism" / "samples.jsonl")
    assert {r["condition"] for r in rows} == {"baseline"}
    assert "the paper's claims" in printed and "Language Takeover" in printed
    assert "Halo Effect" not in printed  # no control run: nothing to judge the halo by


def test_controls_off_keeps_maps_of_the_example_samples_only(tiny_ckpt, tmp_path):
    model = HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))
    base = counting.CountingConfig(n=3, size=128, radius=3, digits_only=True, example_maps=1)
    configs = counting.conditions(base, controls=False)
    assert [c.condition for c in configs] == ["baseline"] and not configs[0].controls
    counting.run_counting(model, configs, tmp_path, model_name="tiny", progress=False)
    rows = runlog.read_jsonl(tmp_path / "tiny" / "samples.jsonl")
    assert [("map" in r["attention"][0], "centres" in r) for r in rows] == [
        (True, True),
        (False, False),
        (False, False),
    ]
    (summary,) = counting.summarize(rows)
    assert summary["controls"] is None
    assert "halo" not in {c["claim"] for c in summary["claims"]}


def test_content_free_condition_moves_the_dots_and_keeps_the_rest():
    base = counting.CountingConfig(n=4, size=128, radius=3)
    control = counting.conditions(base)[1]
    assert control.condition == counting.CONTROL_CONDITION and control.regrounding is None
    for a, b in zip(base.dataset(), control.dataset()):
        assert (a.index, a.count, a.size) == (b.index, b.count, b.size)
        assert not np.allclose(np.asarray(a.centres), np.asarray(b.centres))
    with pytest.raises(ValueError, match="content_free"):
        replace(base, content_free="smeared")


def _rows(units_right: list[bool], gini_when_right: float, gini_when_wrong: float) -> list[dict]:
    """Hand-made two-digit records: tens always right, the units digit as given."""
    rows = []
    for i, right in enumerate(units_right):
        count = 10 + i % 7
        units = str(count % 10) if right else str((count + 1) % 10)
        g = gini_when_right if right else gini_when_wrong
        g += 0.001 * i  # distinct scores, the same order as the classes
        rows.append(
            {
                "model": "m",
                "condition": "baseline",
                "index": i,
                "count": count,
                "prediction": int(f"1{units}"),
                "digits": ["1", units],
                "layers": [3],
                "area": {"centre": 0.2, "hull_band": 0.3, "background": 0.5},
                "attention": [
                    {"digit": d, "layer": 3, "gini": gd, "entropy": 1 - gd, "image_mass": gd}
                    for d, gd in ((0, 0.5), (1, g))
                ],
            }
        )
    return rows


def test_decay_that_separates_the_classes_is_supported():
    right = [True] * 12 + [False] * MIN_CLASS
    (s,) = counting.summarize(_rows(right, 0.8, 0.2))
    units = s["decay"]["units"]
    assert units["status"] == "measured" and units["n_wrong"] == MIN_CLASS
    assert units["gini"]["auroc"]["auroc"] == pytest.approx(1.0)
    assert units["entropy"]["auroc"]["auroc"] == pytest.approx(0.0)
    (claim,) = [c for c in s["claims"] if c["claim"] == "decay_predicts_error_units"]
    assert claim["verdict"] == "supported"
    (flipped,) = counting.summarize(_rows(right, 0.2, 0.8))
    (claim,) = [c for c in flipped["claims"] if c["claim"] == "decay_predicts_error_units"]
    assert claim["verdict"] == "opposite"


@pytest.mark.parametrize(
    ("right", "status"),
    [
        ([True] * 10, "not measured: 10 units digits, 0 wrong"),
        ([False] * 6, "not measured: 6 units digits, 6 wrong"),
    ],
)
def test_decay_without_both_classes_is_not_measured(right, status):
    (s,) = counting.summarize(_rows(right, 0.8, 0.2))
    assert s["decay"]["units"]["status"].startswith(status)
    assert s["decay"]["tens"]["status"].startswith("not measured")  # tens never wrong here
    (claim,) = [c for c in s["claims"] if c["claim"] == "decay_predicts_error_units"]
    assert claim["verdict"] == "not measured"
    from vlm_lens.studies.counting import claims_text

    assert any("not measured" in line for line in claims_text(s))


def test_one_wrong_digit_gives_numbers_but_no_decay_verdict():
    right = [True] * 20 + [False]
    (s,) = counting.summarize(_rows(right, 0.8, 0.2))
    assert s["decay"]["units"]["status"] == "measured"
    assert s["decay"]["units"]["gini"]["auroc"]["auroc"] == pytest.approx(1.0)
    (claim,) = [c for c in s["claims"] if c["claim"] == "decay_predicts_error_units"]
    assert claim["verdict"] == "not measured" and f"fewer than {MIN_CLASS}" in claim["evidence"]
