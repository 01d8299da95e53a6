"""Layer selections for interventions: quarters, ranges, ints and lists.

A layer spec is one of

- ``"Q1"`` .. ``"Q4"``: a quarter of the language model's depth n. Quarter i (1-based)
  covers layers ``[b(i-1), b(i))`` with ``b(j) = floor(j·n/4 + 1/2)`` (j·n/4 rounded half
  up). Depth 32 gives Q4 = 24..31 (the yes-bias paper's layers 25-32, 1-indexed); depth
  28 gives 0-6 / 7-13 / 14-20 / 21-27; depth 36 gives 0-8 / 9-17 / 18-26 / 27-35; depth 4
  gives one layer each. The quarters partition the layers, and none is empty from depth 4 up.
- ``"all"``: every layer.
- ``"a:b"``: a Python slice of the layers (``"20:28"``, ``"-8:"``, ``":4"``).
- an int (negative counts from the last layer), a `range` or a `slice`.
- a list/tuple mixing any of the above (their union); ``[]`` selects no layer.

`resolve_layers(spec, n_layers)` returns the sorted, de-duplicated layer indices.

Not for: building hooks (see `vlm_lens.interventions.hooks`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LayerSpec = int | str | range | slice | Sequence["int | str | range | slice"]

_QUARTER = re.compile(r"^[qQ]([1-4])$")
_SLICE = re.compile(r"^\s*(-?[0-9]+)?\s*:\s*(-?[0-9]+)?\s*$")


def quarter_bounds(n_layers: int) -> list[int]:
    """The five boundaries b(0..4) of the quarters of a depth-`n_layers` model."""
    return [(j * n_layers * 2 + 4) // 8 for j in range(5)]


def quarter(i: int, n_layers: int) -> range:
    """Layers of quarter `i` (1..4) of a depth-`n_layers` model (see the module docstring)."""
    if i not in (1, 2, 3, 4):
        raise ValueError(f"quarters are numbered 1..4, got {i}")
    b = quarter_bounds(n_layers)
    return range(b[i - 1], b[i])


def _check(layer: int, n_layers: int) -> int:
    if not -n_layers <= layer < n_layers:
        raise IndexError(f"layer {layer} out of range for a model with {n_layers} layers")
    return layer % n_layers


def _one(spec: int | str | range | slice, n_layers: int) -> list[int]:
    if isinstance(spec, bool):
        raise TypeError(f"not a layer: {spec!r}")
    if isinstance(spec, int):
        return [_check(spec, n_layers)]
    if isinstance(spec, range):
        return [_check(layer, n_layers) for layer in spec]
    if isinstance(spec, slice):
        return list(range(n_layers))[spec]
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "all":
            return list(range(n_layers))
        match = _QUARTER.match(text)
        if match:
            layers = list(quarter(int(match.group(1)), n_layers))
            if not layers:
                raise ValueError(f"quarter {text} is empty for a model with {n_layers} layers")
            return layers
        match = _SLICE.match(text)
        if match:
            start, stop = (None if g is None else int(g) for g in match.groups())
            return list(range(n_layers))[slice(start, stop)]
        if re.fullmatch(r"-?[0-9]+", text):
            return [_check(int(text), n_layers)]
    raise ValueError(
        f"unknown layer spec {spec!r}; use 'Q1'..'Q4', 'all', 'a:b', an int, a range or a list"
    )


def resolve_layers(spec: LayerSpec, n_layers: int) -> list[int]:
    """Sorted, de-duplicated layer indices of `spec` for a depth-`n_layers` model."""
    if isinstance(spec, (list, tuple)):
        out: set[int] = set()
        for item in spec:
            out.update(_one(item, n_layers))
        return sorted(out)
    return sorted(set(_one(spec, n_layers)))  # type: ignore[arg-type]


def needs_depth(spec: LayerSpec) -> bool:
    """Whether `spec` can only be resolved knowing the model's depth (anything but layers >= 0)."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    return not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items)
