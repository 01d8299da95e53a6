"""Verdicts on the counting paper's claims, from a run's summary numbers.

Each claim gets "supported", "not supported", "opposite" or "not measured", the numbers
behind it and the rule that decided, so a report's headline can state what the run says
about the paper without the reader redoing the statistics. One rule for every test: a
two-sided p-value below `ALPHA` decides, and the sign of the effect says which way.

- Halo Effect (§5.2): attention lies on the band around the dots' convex hull, not on
  the dots. Test: `hull_permutation_test` (own dots against other images' dots of the
  same count) on the hull band (more) and, optionally, on the dots' cells (less).
- Language Takeover (§5.2, Fig. 3): the later digit's attention is more diffuse than the
  first's (sparsity drops, entropy rises) and, in the issue's reading, less of it is on
  the image. Tests: Wilcoxon signed-rank on the per-sample differences
  (`vlm_lens.studies.stats.wilcoxon_signed_rank`).
- Decay predicts error (§1, §5.2): samples whose digit attention decayed more get that
  digit wrong more often. Test: the AUROC's bootstrap interval excludes 0.5
  (`vlm_lens.metrics.decay.auroc`), in the direction the claim predicts.
- Re-grounding helps (the paper's conclusion, a causal test it did not run): putting the
  first digit's image attention back raises units-digit accuracy. Test: McNemar exact
  (`vlm_lens.studies.stats.mcnemar_exact`).

Not for: computing the tests (the modules above), or plotting and writing the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ALPHA",
    "VERDICTS",
    "Verdict",
    "combine",
    "decay_verdict",
    "halo_verdict",
    "headline",
    "paper_claims",
    "regrounding_verdict",
    "takeover_verdict",
]

ALPHA = 0.05
VERDICTS = ("supported", "not supported", "opposite", "not measured")


@dataclass(frozen=True)
class Verdict:
    """What a run says about one claim.

    Attributes:
        claim: short name ("halo", "takeover", "takeover_sparsity", "decay_sparsity", ...).
        statement: the claim in words, as the paper (or the issue) makes it.
        verdict: one of `VERDICTS`.
        evidence: the numbers, in one line.
        rule: how the verdict was decided.
        numbers: the inputs the rule used (JSON-able).
        parts: sub-verdicts a combined claim was made from.
    """

    claim: str
    statement: str
    verdict: str
    evidence: str
    rule: str
    numbers: dict[str, Any] = field(default_factory=dict)
    parts: tuple[Verdict, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


def _finite(*values: Any) -> bool:
    """All values are finite numbers (None, a string or NaN is not measured)."""
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def _direction(effect: float, p: float, alpha: float) -> str:
    """The one rule: significant and in the claimed direction, significant against it, or neither."""
    if not _finite(effect, p):
        return "not measured"
    if p < alpha and effect > 0:
        return "supported"
    if p < alpha and effect < 0:
        return "opposite"
    return "not supported"


def _f(value: Any, spec: str) -> str:
    """`format(value, spec)`, or "n/a" for a missing value (None from JSON, NaN)."""
    return format(float(value), spec) if _finite(value) else "n/a"


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def _permutation_verdict(permutation: Any, claimed_sign: int, alpha: float) -> Verdict:
    """One region's `HullPermutation`: own dots against other images' dots of the same count."""
    region = _get(permutation, "region")
    excess = _get(permutation, "excess")
    p = _get(permutation, "p_two_sided")
    more = "more" if claimed_sign > 0 else "less"
    return Verdict(
        claim=f"halo_{region}",
        statement=f"attention puts {more} on the image's own {region} cells than on another "
        "image's of the same count",
        verdict=_direction(claimed_sign * excess, p, alpha),
        evidence=(
            f"{region} share above its area: {_f(_get(permutation, 'observed'), '+.3f')} with the image's "
            f"own dots vs {_f(_get(permutation, 'null_mean'), '+.3f')} with other images' dots of the same "
            f"count (excess {_f(excess, '+.3f')}, permutation p = {_f(p, '.2g')}, n = {_get(permutation, 'n')})"
        ),
        rule=(
            f"two-sided permutation p < {alpha} with the excess over other images' dots on the "
            "claimed side: supported; on the other side: opposite; otherwise not supported"
        ),
        numbers={
            k: _get(permutation, k)
            for k in ("region", "observed", "null_mean", "excess", "p_two_sided", "n")
        },
    )


def halo_verdict(hull_band: Any, centre: Any | None = None, alpha: float = ALPHA) -> Verdict:
    """Halo Effect from `HullPermutation`s (or their `as_dict()`).

    Args:
        hull_band: the test on `region="hull_band"`: the claim is MORE on the own hull band.
        centre: optionally the test on `region="centre"`: the claim is LESS on the own dots'
            cells ("fails to penetrate the geometric centres").
    """
    for test, region in ((hull_band, "hull_band"), (centre, "centre")):
        if test is not None and _get(test, "region") != region:
            raise ValueError(
                f"expected a permutation test of {region!r}, got {_get(test, 'region')!r}"
            )
    parts = [_permutation_verdict(hull_band, +1, alpha)]
    if centre is not None:
        parts.append(_permutation_verdict(centre, -1, alpha))
    return combine(
        "halo",
        "attention follows the hull of the dots rather than the dots themselves (Halo Effect)",
        parts,
    )


def _paired_verdict(claim: str, statement: str, what: str, test: Any, alpha: float) -> Verdict:
    """A Wilcoxon record of differences oriented so that positive means "as claimed"."""
    n = _get(test, "n")
    w_plus = _get(test, "w_plus")
    p = _get(test, "p_value")
    # The rank sum's side of its null mean n(n+1)/4 is the direction the test measured.
    effect = w_plus - n * (n + 1) / 4 if _finite(w_plus) and n else math.nan
    mean = _get(test, "mean_diff")
    return Verdict(
        claim=claim,
        statement=statement,
        verdict=_direction(effect, p, alpha),
        evidence=f"{what}: mean {_f(mean, '+.3f')} over {n} pairs (Wilcoxon p = {_f(p, '.2g')})",
        rule=(
            f"two-sided Wilcoxon p < {alpha} with the differences ranked mostly as claimed "
            "(W+ above n(n+1)/4): supported; mostly the other way: opposite; otherwise "
            "not supported"
        ),
        numbers={"mean_diff": mean, "w_plus": w_plus, "n": n, "p_value": p},
    )


def combine(claim: str, statement: str, parts: Sequence[Verdict]) -> Verdict:
    """One verdict from several tests of one claim: all agree, or it is not supported."""
    measured = [v for v in parts if v.verdict != "not measured"]
    if not measured:
        verdict = "not measured"
    elif all(v.verdict == "supported" for v in measured):
        verdict = "supported"
    elif all(v.verdict == "opposite" for v in measured):
        verdict = "opposite"
    else:
        verdict = "not supported"
    return Verdict(
        claim=claim,
        statement=statement,
        verdict=verdict,
        evidence="; ".join(f"{v.claim}: {v.verdict}" for v in parts),
        rule=(
            "every measured part supported: supported; every one opposite: opposite; "
            "otherwise (mixed or not significant) not supported"
        ),
        parts=tuple(parts),
    )


def takeover_verdict(
    sparsity_drop: Any,
    entropy_rise: Any,
    image_mass_drop: Any | None = None,
    alpha: float = ALPHA,
) -> Verdict:
    """Language Takeover from paired tests between the first and the second digit.

    Args:
        sparsity_drop: `wilcoxon_signed_rank(gini_1st, gini_2nd)` (a `PairedTest` or dict).
        entropy_rise: `wilcoxon_signed_rank(entropy_2nd, entropy_1st)`.
        image_mass_drop: `wilcoxon_signed_rank(mass_1st, mass_2nd)`, optional.
    """
    parts = [
        _paired_verdict(
            "takeover_sparsity",
            "the 2nd digit's attention is less sparse (Gini) than the 1st's",
            "Gini 1st - 2nd",
            sparsity_drop,
            alpha,
        ),
        _paired_verdict(
            "takeover_entropy",
            "the 2nd digit's attention has higher entropy than the 1st's",
            "entropy 2nd - 1st",
            entropy_rise,
            alpha,
        ),
    ]
    if image_mass_drop is not None:
        parts.append(
            _paired_verdict(
                "takeover_image_mass",
                "the 2nd digit puts less of its attention on the image than the 1st",
                "image mass 1st - 2nd",
                image_mass_drop,
                alpha,
            )
        )
    return combine(
        "takeover",
        "visual grounding decays from the 1st to the 2nd digit (Language Takeover)",
        parts,
    )


def _auroc_verdict(name: str, result: Any, higher_when_correct: bool, level_note: str) -> Verdict:
    value, low, high = (_get(result, k) for k in ("auroc", "ci_low", "ci_high"))
    if not _finite(value, low, high):
        verdict = "not measured"
    elif (low > 0.5) if higher_when_correct else (high < 0.5):
        verdict = "supported"
    elif (high < 0.5) if higher_when_correct else (low > 0.5):
        verdict = "opposite"
    else:
        verdict = "not supported"
    side = "higher" if higher_when_correct else "lower"
    return Verdict(
        claim=f"decay_{name}",
        statement=f"the digit is right more often when its {name} is {side}",
        verdict=verdict,
        evidence=(
            f"AUROC of {name} for a right digit {_f(value, '.3f')} [{_f(low, '.3f')}, {_f(high, '.3f')}] "
            f"({_get(result, 'n_pos')} right, {_get(result, 'n_neg')} wrong)"
        ),
        rule=(
            f"the {level_note} bootstrap interval of the AUROC lies entirely on the claimed "
            "side of 0.5: supported; entirely on the other side: opposite; otherwise not "
            "supported"
        ),
        numbers={"auroc": value, "ci_low": low, "ci_high": high},
    )


# The direction each score takes when grounding holds: focused (high Gini, low entropy)
# and on the image (high mass).
_HIGHER_WHEN_GROUNDED = {
    "gini": True,
    "sparsity": True,
    "textbook_gini": True,
    "entropy": False,
    "image_mass": True,
}


def decay_verdict(aurocs: Mapping[str, Any], digit: str = "units") -> Verdict:
    """Decay predicts error, from one `Auroc` (or dict) per score of one digit.

    Args:
        aurocs: score name -> `auroc(score, digit_is_right)`. Names: "gini" (or
            "sparsity", "textbook_gini"), "entropy", "image_mass"; the claimed direction
            follows from the name (entropy lower when right, the others higher).
        digit: which digit, for the wording.
    """
    parts = []
    for name, result in aurocs.items():
        if name not in _HIGHER_WHEN_GROUNDED:
            raise ValueError(
                f"no claimed direction for score {name!r}; known: {sorted(_HIGHER_WHEN_GROUNDED)}"
            )
        level = _get(result, "level")
        parts.append(_auroc_verdict(name, result, _HIGHER_WHEN_GROUNDED[name], _f(level, ".0%")))
    return combine(
        f"decay_predicts_error_{digit}",
        f"the {digit} digit is wrong more often when its attention decayed more",
        parts,
    )


def regrounding_verdict(test: Any, alpha: float = ALPHA) -> Verdict:
    """Re-grounding raises units-digit accuracy, from `mcnemar_exact(before, after)`."""
    n = _get(test, "n")
    turned_right = _get(test, "statistic")
    p = _get(test, "p_value")
    delta = _get(test, "mean_diff")
    effect = turned_right - n / 2 if _finite(turned_right) else math.nan
    return Verdict(
        claim="regrounding",
        statement="re-grounding the later digits on the first digit's attention fixes them",
        verdict=_direction(effect, p, alpha),
        evidence=(
            f"units-digit accuracy {_f(delta, '+.3f')}; of {n} changed digits "
            f"{_f(turned_right, '.0f')} turned right (McNemar exact p = {_f(p, '.2g')})"
        ),
        rule=(
            f"McNemar exact p < {alpha} with more digits turned right than wrong: supported; "
            "more turned wrong: opposite; otherwise not supported"
        ),
        numbers={"delta_accuracy": delta, "turned_right": turned_right, "changed": n, "p_value": p},
    )


def paper_claims(
    *,
    halo: Any | None = None,
    takeover: Mapping[str, Any] | None = None,
    decay: Mapping[str, Any] | None = None,
    regrounding: Any | None = None,
    alpha: float = ALPHA,
) -> list[Verdict]:
    """Every claim the run has numbers for, in the paper's order.

    Args:
        halo: a `HullPermutation` of the hull band, or `{"hull_band": ..., "centre": ...}`.
        takeover: `{"sparsity_drop": ..., "entropy_rise": ..., "image_mass_drop": ...}`
            (`PairedTest`s or dicts; the last is optional).
        decay: score name -> `Auroc` for the units digit.
        regrounding: `mcnemar_exact(units_right_before, units_right_after)`.
    """
    out = []
    if halo is not None:
        if isinstance(halo, Mapping) and "hull_band" in halo:
            out.append(halo_verdict(halo["hull_band"], halo.get("centre"), alpha))
        else:
            out.append(halo_verdict(halo, alpha=alpha))
    if takeover is not None:
        out.append(
            takeover_verdict(
                takeover["sparsity_drop"],
                takeover["entropy_rise"],
                takeover.get("image_mass_drop"),
                alpha,
            )
        )
    if decay is not None:
        out.append(decay_verdict(decay))
    if regrounding is not None:
        out.append(regrounding_verdict(regrounding, alpha))
    return out


def headline(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per claim (sub-tests indented below it), for a report's headline."""
    lines = []
    for v in verdicts:
        lines.append(f"{v.statement}: {v.verdict.upper()} -- {v.evidence}")
        lines.extend(f"  {p.statement}: {p.verdict} -- {p.evidence}" for p in v.parts)
    return lines
