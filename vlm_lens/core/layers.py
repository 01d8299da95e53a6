"""Layer specs: the one grammar for naming language-model layers, everywhere a layer list is taken.

A layer spec is one of

- an int; negative counts from the last layer (``-1`` is the last);
- ``"all"`` (or None): every layer; ``"last"``: the last layer;
- ``"Q1"`` .. ``"Q4"`` (or ``"q1"`` ..): a quarter of the depth n. Quarter i (1-based)
  covers layers ``[b(i-1), b(i))`` with ``b(j) = floor(j·n/4 + 1/2)`` (j·n/4 rounded half
  up). Depth 32 gives Q4 = 24..31 (the yes-bias paper's layers 25-32, 1-indexed); depth
  28 gives 0-6 / 7-13 / 14-20 / 21-27; depth 36 gives 0-8 / 9-17 / 18-26 / 27-35; depth 4
  gives one layer each. The quarters partition the layers, and none is empty from depth 4 up;
- ``"a:b"``: a Python slice of the layers (``"20:28"``, ``"-8:"``, ``":4"``), or a `slice`;
  a `range` of layer indices;
- an int written as text (``"8"``, ``"-1"``), as a command line gives it;
- a preset name the caller defines (`presets=`): a study's own fixed layer set, e.g. the
  counting paper's ``{"paper": (-1, 8, 16, 24)}``. A preset names layers of the model it was
  written for, so the layers a shallower model lacks are dropped (an explicit index that does
  not exist raises instead). This module defines no preset of its own: one word, one meaning;
- a list or tuple of any of the above (their union); ``[]`` selects no layer.

`resolve_layers(spec, n_layers)` gives sorted, de-duplicated, non-negative indices;
`sort=False` keeps the order of first mention instead (a study whose layer axis follows the
user's list).

Not for: building hooks (`vlm_lens.interventions.hooks`) or hook names (`HookedVLM.resolve_hook_name`).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Mapping, Sequence

LayerItem = int | str | range | slice
LayerSpec = LayerItem | Sequence[LayerItem] | None
Presets = Mapping[str, Sequence[int]]

_QUARTER = re.compile(r"^[qQ]([1-4])$")
_SLICE = re.compile(r"^\s*(-?[0-9]+)?\s*:\s*(-?[0-9]+)?\s*$")
_INT = re.compile(r"^-?[0-9]+$")
_WORDS = "'all', 'last', 'Q1'..'Q4', 'a:b', an int, a range, a slice or a list of them"


def quarter_bounds(n_layers: int) -> list[int]:
    """The five boundaries b(0..4) of the quarters of a depth-`n_layers` model."""
    return [(j * n_layers * 2 + 4) // 8 for j in range(5)]


def quarter(i: int, n_layers: int) -> range:
    """Layers of quarter `i` (1..4) of a depth-`n_layers` model (see the module docstring)."""
    if i not in (1, 2, 3, 4):
        raise ValueError(f"quarters are numbered 1..4, got {i}")
    b = quarter_bounds(n_layers)
    return range(b[i - 1], b[i])


def check_layer(layer: int, n_layers: int) -> int:
    """`layer` as a non-negative index (negative counts from the last); out of range raises."""
    if not -n_layers <= layer < n_layers:
        raise IndexError(f"layer {layer} out of range for a model with {n_layers} layers")
    return layer % n_layers


def _items(spec: LayerSpec) -> list:
    """The items of a spec: a list, tuple or other collection is a union of items."""
    if isinstance(spec, (str, range, slice)) or not isinstance(spec, Iterable):
        return [spec]
    return list(spec)


def _unknown(spec: object, presets: Presets | None) -> ValueError:
    named = f", a preset ({', '.join(map(repr, presets))})" if presets else ""
    return ValueError(f"unknown layer spec {spec!r}; use {_WORDS}{named}")


def _text(text: str, n_layers: int, presets: Presets | None) -> list[int]:
    word = text.strip()
    if presets and word in presets:
        return [layer % n_layers for layer in presets[word] if -n_layers <= layer < n_layers]
    if word.lower() == "all":
        return list(range(n_layers))
    if word.lower() == "last":
        return [check_layer(-1, n_layers)]
    match = _QUARTER.match(word)
    if match:
        layers = list(quarter(int(match.group(1)), n_layers))
        if not layers:
            raise ValueError(f"quarter {word} is empty for a model with {n_layers} layers")
        return layers
    match = _SLICE.match(word)
    if match:
        start, stop = (None if g is None else int(g) for g in match.groups())
        return list(range(n_layers))[slice(start, stop)]
    if _INT.match(word):
        return [check_layer(int(word), n_layers)]
    raise _unknown(text, presets)


def _item(spec: LayerItem, n_layers: int, presets: Presets | None) -> list[int]:
    if isinstance(spec, bool):
        raise TypeError(f"not a layer: {spec!r}")
    if isinstance(spec, numbers.Integral):
        return [check_layer(int(spec), n_layers)]
    if isinstance(spec, range):
        return [check_layer(layer, n_layers) for layer in spec]
    if isinstance(spec, slice):
        return list(range(n_layers))[spec]
    if isinstance(spec, str):
        return _text(spec, n_layers, presets)
    raise _unknown(spec, presets)


def resolve_layers(
    spec: LayerSpec, n_layers: int, presets: Presets | None = None, sort: bool = True
) -> list[int]:
    """Non-negative layer indices of `spec` for a depth-`n_layers` model, without repeats.

    Sorted, or with `sort=False` in the order of first mention. `presets` maps words the
    caller defines to layer lists (see the module docstring).
    """
    if spec is None:
        return list(range(n_layers))
    out: dict[int, None] = {}  # an ordered set
    for item in _items(spec):
        out.update(dict.fromkeys(_item(item, n_layers, presets)))
    return sorted(out) if sort else list(out)


def needs_depth(spec: LayerSpec) -> bool:
    """Whether `spec` can only be resolved knowing the model's depth (anything but layers >= 0)."""
    return not all(
        isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in _items(spec)
    )
