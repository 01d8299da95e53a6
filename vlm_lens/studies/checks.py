"""Checks that stop a study before it writes numbers measured from nothing.

A recording that silently misses its steps still yields tables: when transformers 5.24
started passing the KV cache under a new keyword, every decoding step looked like the
prefill (PITFALLS 12); the counting study then wrote empty Gini cells and a centroid hit
rate from all-NaN maps, and the yes-bias study a figure with all attention on system
tokens. These checks run where records are made and where they are summarised or
reported, and raise `EmptyMeasurementError` naming the cause instead.

Not for: validating user input (that raises ValueError where the input is read).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["EmptyMeasurementError", "require_decoding_steps", "require_finite"]

STEP_TRACKING_HINT = (
    "the model's step tracking did not see the KV cache, so every forward pass looked like "
    "the prefill; a transformers release may pass the cache another way (PITFALLS 12)"
)


class EmptyMeasurementError(RuntimeError):
    """A study measured nothing where it must have measured something (no decoding step
    recorded, every attention metric missing, all-NaN maps); no number or report is written."""


def require_decoding_steps(recording: Any, n_steps: int, what: str = "the recording") -> None:
    """Raise unless `recording` (a `Recording` of every step) holds steps 0..n_steps-1.

    `n_steps` is the number of generated tokens: step 0 is the prefill, step k the k-th
    decoding step. A run that generated one token has no decoding step to check.
    """
    if recording is None:
        raise EmptyMeasurementError(f"{what}: nothing was recorded")
    seen = list(recording.steps)
    expected = list(range(n_steps))
    if seen == expected:
        return
    if n_steps > 1 and seen == [0]:
        raise EmptyMeasurementError(
            f"{what}: {n_steps} tokens were generated but the hooks saw no decoding step, only "
            f"step 0; {STEP_TRACKING_HINT}"
        )
    raise EmptyMeasurementError(
        f"{what}: {n_steps} tokens were generated (steps 0..{n_steps - 1}) but the hooks "
        f"recorded steps {seen}"
    )


def require_finite(values: Iterable[Any] | Any, what: str, cause: str = "") -> None:
    """Raise if `values` (numbers, None, nested lists, arrays or tensors) hold no finite number."""
    flat = _floats(values)
    if not any(math.isfinite(x) for x in flat):
        detail = "empty" if not flat else "all missing or NaN"
        raise EmptyMeasurementError(f"{what}: {detail}" + (f"; {cause}" if cause else ""))


def _floats(values: Any) -> list[float]:
    # Plain Python on purpose: the CLI imports this module for its exception class while
    # it parses arguments, and `vlm-lens count --help` should not wait for numpy.
    if values is None:
        return []
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu()
    if hasattr(values, "tolist"):  # numpy / torch arrays and scalars -> Python numbers, lists
        values = values.tolist()
    if isinstance(values, (int, float)):
        return [float(values)]
    return [x for v in values for x in _floats(v)]
