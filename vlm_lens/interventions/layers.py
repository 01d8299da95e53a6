"""Layer selections for interventions ("Q1".."Q4", "all", "a:b", ints, lists).

The grammar is the library's one layer-spec grammar, `vlm_lens.core.layers`; this module
names what interventions use of it. `resolve_layers(spec, n_layers)` returns the sorted,
de-duplicated layer indices.

Not for: building hooks (see `vlm_lens.interventions.hooks`).
"""

from vlm_lens.core.layers import LayerSpec, needs_depth, quarter, quarter_bounds, resolve_layers

__all__ = ["LayerSpec", "needs_depth", "quarter", "quarter_bounds", "resolve_layers"]
