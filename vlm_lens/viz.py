"""Attention views of a VLM run for notebooks and saved HTML pages, offline.

`attention_heads(model, cache, layer)` draws, for one layer of a `run_with_cache` cache:

1. circuitsvis's `AttentionHeads` (every head's pattern, tokens on the axes), with image
   tokens labelled `<img{i} r{row}c{col}>` and special tokens as their text
   (`HookedVLM.to_str_tokens`);
2. circuitsvis's `ColoredTokens`: the chosen query row's attention (mean over the heads)
   on every token, as text;
3. for each image, the query row's attention to that image's tokens laid out on the image's
   token grid (mean over heads, then each head): plain HTML, no script.

Offline by construction: circuitsvis's pip package ships its built JavaScript bundle
(`circuitsvis/dist/cdn/iife.js`, ~1.3 MB); the page inlines it once, so nothing is fetched
from a CDN (circuitsvis's own `str()` of a render points at unpkg.com). Jupyter shows the
view (`_repr_html_`); `view.save("attention.html")` writes a self-contained page.
Needs the `viz` extra (`pip install vlm_lens[viz]`, i.e. circuitsvis).

Not for: per-step attention over a generation (`HookedVLM.trace_generation` and the
studies' figures) or figures for reports (`vlm_lens.reports`).
"""

from __future__ import annotations

import html
import json
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from jaxtyping import Float
from torch import Tensor

from vlm_lens.core.prepare import VLMInputs

if TYPE_CHECKING:
    from vlm_lens.core.cache import ActivationCache
    from vlm_lens.core.hooked_vlm import HookedVLM

_BUNDLE = "dist/cdn/iife.js"


def circuitsvis_bundle() -> str:
    """circuitsvis's built JavaScript (defines the global `CircuitsVis`), safe to inline."""
    try:
        files = resources.files("circuitsvis")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "vlm_lens.viz needs circuitsvis: pip install 'vlm_lens[viz]' (or circuitsvis)"
        ) from err
    # The only "</script" in the bundle is inside a string literal; "<\/script" is the same
    # string to JavaScript and does not end the inline script to the HTML parser.
    return (files / _BUNDLE).read_text(encoding="utf-8").replace("</script", "<\\/script")


def _props(props: dict) -> str:
    # "<" escaped so no token text ("</s>", "<!--") can end or disturb the inline script.
    return json.dumps(props).replace("<", "\\u003c")


def _component(name: str, props: dict) -> tuple[str, str]:
    """A target div and the call that renders circuitsvis component `name` into it."""
    target = f"vlm-lens-{name.lower()}-{uuid.uuid4().hex[:12]}"
    call = f'CircuitsVis.render("{target}", CircuitsVis.{name}, {_props(props)});'
    return f'<div id="{target}" style="margin: 12px 0"></div>', call


def _heatmap(values: Float[Tensor, "h w"], vmax: float, title: str) -> str:
    """One grid as an HTML table, white (0) to blue (vmax); each cell's value on hover."""
    rows = []
    for r, row in enumerate(values.tolist()):
        cells = []
        for c, v in enumerate(row):
            a = 0.0 if vmax <= 0 else max(0.0, min(1.0, v / vmax))
            cells.append(
                f'<td title="r{r}c{c}: {v:.4f}" style="width:14px;height:14px;padding:0;'
                f'background:rgba(31,90,200,{a:.3f})"></td>'
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = '<table style="border-collapse:collapse;border:1px solid #888">' + "".join(rows)
    caption = f'<div style="font:12px sans-serif">{html.escape(title)}</div>'
    return f'<div style="display:inline-block;margin:4px 8px">{caption}{table}</table></div>'


@dataclass
class AttentionView:
    """An attention view: shows itself in Jupyter, `save(path)` writes a page."""

    body: str
    title: str

    def _repr_html_(self) -> str:
        return self.body

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(
            f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(self.title)}'
            f"</title></head><body>\n{self.body}\n</body></html>\n",
            encoding="utf-8",
        )
        return path


def attention_heads(
    model: HookedVLM,
    cache: ActivationCache,
    layer: int,
    query: int = -1,
    batch: int = 0,
    heads: list[int] | None = None,
) -> AttentionView:
    """The attention of layer `layer` in a cache (see the module docstring).

    Args:
        model: the `HookedVLM` the cache came from.
        cache: from `model.run_with_cache(inputs, ...)` with `blocks.{layer}.attn.hook_pattern`.
        layer: the layer (negative counts from the last).
        query: the query position whose attention the image grids and coloured tokens show
            (negative counts from the end of the row; -1 is the position predicting the next
            token).
        batch: which row of a batch.
        heads: which heads (default all).
    """
    layer = model.resolve_layer(layer)
    segments, tokens = cache.segments, cache.tokens
    if segments is None or tokens is None:
        raise ValueError("the cache does not know its tokens: make it with model.run_with_cache")
    pattern = cache["pattern", layer]
    if not cache.has_batch_dim:
        pattern = pattern[None]
    if not 0 <= batch < pattern.shape[0]:
        raise IndexError(f"batch row {batch} out of range for a batch of {pattern.shape[0]}")
    heads = list(range(pattern.shape[1])) if heads is None else list(heads)
    sample = segments.samples[batch]
    start = sample.padding.end  # the row's left padding is nobody's token
    attn: Float[Tensor, "head query key"] = pattern[batch, heads][:, start:, start:].float().cpu()
    n = attn.shape[-1]
    q = query if query >= 0 else n + query
    if not 0 <= q < n:
        raise IndexError(f"query {query} out of range for {n} positions")
    row_inputs = VLMInputs({"input_ids": tokens[batch : batch + 1]}, segments.select([batch]))
    labels = model.to_str_tokens(row_inputs)[start:]
    names = [f"L{layer}H{h}" for h in heads]

    divs, calls = [], []
    for component, props in (
        ("AttentionHeads", {"attention": attn.tolist(), "tokens": labels,
                            "attentionHeadNames": names, "maskUpperTri": True}),
        # ColoredTokens puts each token into the page as HTML: escaped, "<img0 r0c0>" and
        # "<s>" show as text instead of becoming (invisible) elements.
        ("ColoredTokens", {"tokens": [html.escape(t) for t in labels],
                           "values": attn[:, q].mean(0).tolist(), "minValue": 0.0}),
    ):  # fmt: skip
        div, call = _component(component, props)
        divs.append(div)
        calls.append(call)

    grids = []
    for i, span in enumerate(sample.images):
        h, w = span.grid
        image_attn = attn[:, q, span.start - start : span.end - start].reshape(len(heads), h, w)
        vmax = float(image_attn.max())
        maps = [_heatmap(image_attn.mean(0), float(image_attn.mean(0).max()), "mean of heads")]
        maps += [_heatmap(m, vmax, name) for m, name in zip(image_attn, names)]
        share = float(image_attn.sum((1, 2)).mean())
        grids.append(
            f'<div style="font:13px sans-serif;margin-top:8px">image {i} ({h} x {w} tokens): '
            f"{share:.1%} of the query's attention (mean of heads)</div>" + "".join(maps)
        )
    head = (
        f'<div style="font:14px sans-serif"><b>Layer {layer}</b>, query position {q} '
        f"(<code>{html.escape(labels[q])}</code>)</div>"
    )
    script = f"<script>\n{circuitsvis_bundle()}\n{chr(10).join(calls)}\n</script>"
    body = "\n".join(
        [head, divs[0], "<h4>Attention of the query row</h4>", divs[1], *grids, script]
    )
    return AttentionView(f'<div class="vlm-lens-attention">{body}</div>', f"layer {layer}")
