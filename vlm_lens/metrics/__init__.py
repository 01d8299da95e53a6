"""Metrics: attention concentration (Gini, entropy), image mass and halo
(`vlm_lens.metrics.attention`), the halo's controls (content-free baseline, sinks, hull
permutation test: `vlm_lens.metrics.controls`), attention decay against errors
(`vlm_lens.metrics.decay`), verdicts on the counting paper's claims
(`vlm_lens.metrics.claims`), and yes/no benchmark scoring (`vlm_lens.metrics.yesno`).

Attention functions take distributions (or maps) on the last axis / axes and are
vectorised over leading axes.

Not for: running models or recording attention (`vlm_lens.core`).
"""

from vlm_lens.metrics.attention import (
    HaloMasks,
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
from vlm_lens.metrics.claims import Verdict, headline, paper_claims
from vlm_lens.metrics.controls import (
    HullPermutation,
    baseline_map,
    halo_controls,
    hull_permutation_test,
    sink_cells,
)
from vlm_lens.metrics.decay import (
    Auroc,
    LogisticFit,
    auroc,
    decay_vs_error,
    digit_correct,
    logistic_fit,
)
from vlm_lens.metrics.yesno import (
    OFFICIAL,
    IncompleteUnitsWarning,
    bootstrap_ratio_ci,
    bootstrap_unit_sums,
    evaluate,
    to_rows,
)

__all__ = [
    "OFFICIAL",
    "Auroc",
    "HullPermutation",
    "LogisticFit",
    "Verdict",
    "auroc",
    "baseline_map",
    "decay_vs_error",
    "digit_correct",
    "halo_controls",
    "headline",
    "hull_permutation_test",
    "logistic_fit",
    "paper_claims",
    "sink_cells",
    "HaloMasks",
    "IncompleteUnitsWarning",
    "bootstrap_ratio_ci",
    "bootstrap_unit_sums",
    "evaluate",
    "to_rows",
    "centroid_hit_rate",
    "convex_hull",
    "gini_sparsity",
    "halo_masks",
    "halo_metrics",
    "halo_metrics_batch",
    "halo_shares",
    "image_attention_mass",
    "normalized_entropy",
    "textbook_gini",
]
