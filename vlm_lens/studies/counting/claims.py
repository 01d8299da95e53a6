"""The counting study's tests of the paper's claims, per (model, condition): the sink
baseline and halo controls, the hull permutation test, decay -> error, re-grounding's
paired test, and one verdict per claim.

Not for: the statistics and verdict rules themselves (`vlm_lens.metrics.controls`,
`vlm_lens.metrics.decay`, `vlm_lens.metrics.claims`, `vlm_lens.studies.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from jaxtyping import Float

from vlm_lens.metrics.claims import Verdict, decay_verdict, headline, paper_claims
from vlm_lens.metrics.controls import (
    baseline_map,
    halo_controls,
    hull_permutation_test,
    sink_cells,
)
from vlm_lens.metrics.decay import decay_vs_error, digit_correct
from vlm_lens.studies import runlog
from vlm_lens.studies.stats import mcnemar_exact

__all__ = ["DECAY_SCORES", "claims_summary", "claims_text"]

DECAY_SCORES = ("gini", "entropy", "image_mass")
#: Enough null draws for p down to 5e-4 while the organism's summary stays a few seconds.
N_PERMUTATIONS = 2000
#: Fewest right and fewest wrong digits for a decay verdict (see `_decay_claim`).
MIN_CLASS = 5


def _maps(
    rows: Sequence[dict], layer: int, digit: int
) -> tuple[list[dict], Float[np.ndarray, "n h w"]]:
    """The rows with a stored map at (layer, digit) and those maps, `[n, h, w]`."""
    kept, maps = [], []
    for r in rows:
        for e in r["attention"]:
            if e["layer"] == layer and e["digit"] == digit and e.get("map") is not None:
                h, w = r["grid"]
                kept.append(r)
                maps.append(np.asarray(e["map"], dtype=np.float64).reshape(h, w))
    return kept, np.stack(maps) if maps else np.zeros((0, 0, 0))


def _controls(group: Sequence[dict], control: Sequence[dict], layer: int, digit: int) -> dict:
    """Baseline map, sinks, halo shares raw / sink-excluded / ratio, permutation tests."""
    rows, maps = _maps(group, layer, digit)
    _, base_maps = _maps(control, layer, digit)
    if len(rows) == 0 or len(base_maps) == 0 or base_maps.shape[1:] != maps.shape[1:]:
        return {"layer": layer, "digit": digit, "measured": False}
    sizes = {tuple(r["image_size"]) for r in rows}
    if any(r.get("centres") is None for r in rows) or len(sizes) != 1:
        return {"layer": layer, "digit": digit, "measured": False}
    size = sizes.pop()
    baseline = baseline_map(base_maps)
    sinks = sink_cells(baseline)
    per_sample = [halo_controls(m, r["centres"], size, baseline, sinks) for r, m in zip(rows, maps)]
    means = {
        key: float(np.nanmean([float(p[key]) for p in per_sample]))
        if any(np.isfinite(float(p[key])) for p in per_sample)
        else None
        for key in per_sample[0]
    }
    centres = [r["centres"] for r in rows]
    tests: dict[str, Any] = {}
    for region in ("hull_band", "centre"):
        for name, exclude in ((region, None), (f"nosink_{region}", sinks if sinks.any() else None)):
            try:
                test = hull_permutation_test(
                    maps,
                    centres,
                    size,
                    region=region,
                    exclude=exclude,
                    n_permutations=N_PERMUTATIONS,
                )
                tests[name] = test.as_dict()
            except ValueError as err:  # e.g. no two images share a count
                tests[name] = {"measured": False, "reason": str(err)}
    return {
        "layer": layer,
        "digit": digit,
        "measured": True,
        "n": len(rows),
        "n_baseline": len(base_maps),
        "grid": list(baseline.shape),
        "baseline_map": [round(float(v), 7) for v in baseline.ravel()],
        "sink_cells": [int(i) for i in np.flatnonzero(sinks.ravel())],
        "halo": means,
        "permutation": tests,
    }


def _digit_index(count: int, place: str) -> int | None:
    """The left-to-right index of the count's units ("units") or tens ("tens") digit."""
    n = len(str(int(count)))
    k = n - 1 if place == "units" else n - 2
    return k if k >= 0 else None


def _decay(group: Sequence[dict], layer: int, place: str) -> dict[str, Any]:
    """Per sample, the digit's sparsity / entropy / image mass against that digit being right."""
    scores: dict[str, list[float | None]] = {s: [] for s in DECAY_SCORES}
    correct, counts = [], []
    for r in group:
        k = _digit_index(r["count"], place)
        right = (
            None
            if k is None
            else digit_correct(list("".join(r.get("digits") or [])), r["count"], k)
        )
        if right is None:
            continue
        entry = next((e for e in r["attention"] if e["layer"] == layer and e["digit"] == k), None)
        if entry is None:
            continue
        correct.append(bool(right))
        counts.append(r["count"])
        for s in DECAY_SCORES:
            scores[s].append(np.nan if entry.get(s) is None else entry[s])
    n_wrong = correct.count(False)
    out: dict[str, Any] = {"layer": layer, "n": len(correct), "n_wrong": n_wrong}
    if not correct or n_wrong == 0 or n_wrong == len(correct):
        out["status"] = (
            f"not measured: {len(correct)} {place} digits, {n_wrong} wrong "
            "(the AUROC needs right and wrong digits)"
        )
        return out
    out["status"] = "measured"
    for s in DECAY_SCORES:
        out[s] = decay_vs_error(np.asarray(scores[s], dtype=float), correct, counts)
    return out


def _decay_claim(units: dict[str, Any]) -> Verdict:
    """The decay -> error verdict of the units digit; "not measured" with fewer than
    `MIN_CLASS` right or wrong digits, where a percentile bootstrap of the AUROC resamples
    the same one or two wrong digits and its interval can miss 0.5 by chance alone."""
    measured = units["status"] == "measured"
    verdict = decay_verdict({s: units[s]["auroc"] for s in DECAY_SCORES} if measured else {})
    n_wrong = units["n_wrong"]
    if measured and min(n_wrong, units["n"] - n_wrong) >= MIN_CLASS:
        return verdict
    return replace(
        verdict,
        verdict="not measured",
        evidence=f"{units['n']} units digits, {n_wrong} wrong: fewer than {MIN_CLASS} in a class",
        parts=(),
    )


def _units_right(digits: Sequence[str], count: int) -> bool:
    k = _digit_index(count, "units")
    return bool(k is not None and digit_correct(list("".join(digits)), count, k))


def _regrounding_test(group: Sequence[dict]) -> dict[str, Any] | None:
    """McNemar's exact test of the units digit right without / with re-grounding."""
    rows = [r for r in group if r.get("regrounding")]
    if not rows:
        return None
    before = [_units_right(r["digits"], r["count"]) for r in rows]
    after = [_units_right(str(r["regrounding"]["prediction"] or ""), r["count"]) for r in rows]
    test = mcnemar_exact(before, after).as_dict()
    test.update(
        units_accuracy_before=float(np.mean(before)), units_accuracy_after=float(np.mean(after))
    )
    return test


def claims_summary(
    group: Sequence[dict],
    control: Sequence[dict] | None,
    layers: Sequence[int],
    headline_layer: int | None,
    takeover: dict[str, Any],
) -> dict[str, Any]:
    """The summary's `controls`, `decay`, `regrounding_test`, `claims` and `headline`.

    `control` holds the same model's content-free rows (None: no halo controls, and the
    Halo claim is not judged). `takeover` is `{"sparsity_drop", "entropy_rise"}` at the
    headline layer. The Halo claim is judged at the headline layer's units-digit step.
    """
    digits = sorted({e["digit"] for r in group for e in r["attention"]})
    controls = None
    if control:
        controls = [_controls(group, control, layer, d) for layer in layers for d in digits]
    layer = headline_layer if headline_layer is not None else (layers[0] if layers else None)
    decay = {place: _decay(group, layer, place) for place in ("units", "tens")}
    reg = _regrounding_test(group)
    halo = None
    units = max(digits) if digits else None
    for c in controls or []:
        if c["layer"] == layer and c["digit"] == units and c["measured"]:
            perm = c["permutation"]
            if "p_greater" in perm["hull_band"]:
                halo = {"hull_band": perm["hull_band"]}
                if "p_greater" in perm["centre"]:
                    halo["centre"] = perm["centre"]
    verdicts = paper_claims(halo=halo, takeover=takeover, regrounding=reg)
    verdicts.insert(len(verdicts) - (reg is not None), _decay_claim(decay["units"]))
    return runlog.jsonable(
        {
            "controls": controls,
            "decay": decay,
            "regrounding_test": reg,
            "claims": [v.as_dict() for v in verdicts],
            "headline": headline(verdicts),
        }
    )


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def claims_text(summary: dict[str, Any]) -> list[str]:
    """The claims part of one summary as text lines: the verdicts, then their numbers."""
    if "claims" not in summary:
        return []
    lines = [f"{summary.get('model', '')} / {summary['condition']}: the paper's claims"]
    lines += [f"  {line}" for line in summary["headline"]]
    for c in summary.get("controls") or []:
        where = f"  layer {c['layer']}, digit {c['digit'] + 1}"
        if not c["measured"]:
            lines.append(f"{where}: halo controls not measured")
            continue
        h = c["halo"]
        perm = c["permutation"]["hull_band"]
        lines.append(
            f"{where}: {len(c['sink_cells'])} sink cells of {c['grid'][0]}x{c['grid'][1]}; "
            f"hull band {_f(h['hull_band'])} raw, {_f(h['nosink_hull_band'])} sinks out, "
            f"x{_f(h['ratio_hull_band'], '{:.2f}')} baseline; centre {_f(h['centre'])} raw, "
            f"x{_f(h['ratio_centre'], '{:.2f}')} baseline; hull permutation excess "
            f"{_f(perm.get('excess'), '{:+.3f}')} (p> {_f(perm.get('p_greater'), '{:.2g}')}, "
            f"p< {_f(perm.get('p_less'), '{:.2g}')})"
        )
    for place, d in summary["decay"].items():
        if d["status"] != "measured":
            lines.append(f"  decay -> {place} digit error: {d['status']}")
            continue
        parts = []
        for s in DECAY_SCORES:
            a = d[s]["auroc"]
            parts.append(
                f"{s} AUROC {_f(a['auroc'])} [{_f(a['ci_low'])}, {_f(a['ci_high'])}], "
                f"logit coef {_f(d[s]['score_coef'], '{:+.2f}')} "
                f"(p {_f(d[s]['score_p'], '{:.2g}')})"
            )
        few = min(d["n_wrong"], d["n"] - d["n_wrong"]) < MIN_CLASS
        lines.append(
            f"  decay -> {place} digit error ({d['n']} digits, {d['n_wrong']} wrong"
            + (f"; fewer than {MIN_CLASS} in a class, not read" if few else "")
            + "): "
            + "; ".join(parts)
        )
    reg = summary.get("regrounding_test")
    if reg:
        lines.append(
            f"  re-grounding: units digit right {_f(reg['units_accuracy_before'])} -> "
            f"{_f(reg['units_accuracy_after'])} (McNemar exact p {_f(reg['p_value'], '{:.2g}')}, "
            f"{reg['n']} discordant)"
        )
    return lines
