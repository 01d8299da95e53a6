"""What a hook function can know about the forward pass it runs in.

Every vlm_lens hook point carries a reference to the model's one `RunState`, so a
hook written as `fn(tensor, hook)` can read `hook.run.step` (0 = prefill or a plain
forward, k = the k-th decoding step), `hook.run.segments` (the prompt layout) and
`hook.run.query_positions` (absolute positions of the query rows of this forward) and
`hook.run.row_positions` (absolute positions of the query rows the firing attention hook holds:
fewer than the forward's when the hook declared rows, see `vlm_lens.core.attention.select`).

Not for: storing activations (that is what caches and recordings are for).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm_lens.core.segments import Segments


@dataclass
class RunState:
    step: int = 0
    segments: Segments | None = None
    query_start: int = 0
    n_queries: int = 0
    # Set by the attention function while row-selective hooks fire: the absolute positions of
    # the query rows they hold. None = all of this forward's query rows.
    rows: torch.Tensor | None = None

    @property
    def query_positions(self) -> torch.Tensor:
        """`[query]` absolute positions (in the left-padded sequence) of this forward's query rows."""
        return torch.arange(self.query_start, self.query_start + self.n_queries)

    @property
    def row_positions(self) -> torch.Tensor:
        """`[row]` absolute positions of the query rows of the tensor an attention hook holds."""
        return self.query_positions if self.rows is None else self.rows

    def key_offset(self, n_keys: int) -> int:
        """Absolute position of the first of this forward's `n_keys` key columns.

        The keys end where the queries end; a sliding-window cache may have dropped early keys,
        so the first column is not always position 0.
        """
        return self.query_start + self.n_queries - n_keys

    @property
    def is_prefill(self) -> bool:
        return self.step == 0
