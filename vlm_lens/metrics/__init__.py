"""Metrics computed from recorded attention: concentration (Gini, entropy), image mass, halo.

Every function takes distributions (or maps) on the last axis / axes and is vectorised
over leading axes; see `vlm_lens.metrics.attention` for definitions.
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

__all__ = [
    "HaloMasks",
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
