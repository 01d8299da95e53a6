"""The result of a patching sweep: a labelled tensor, a tidy table and plotly heatmaps.

Not for: running sweeps (see `vlm_lens.patching.sweep`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlm_lens.patching.positions import PositionGroup

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vlm_lens.patching.sweep import AnswerStep


def _panel_name(dim: str, label: Any) -> str:
    return f"step {label}" if dim == "step" else f"{'L' if dim == 'layer' else 'H'}{label}"


@dataclass
class PatchingResult:
    """Metric per patched cell, with its axes named and labelled.

    Attributes:
        values: `[step?, layer, head?, position?]` as named by `dims`; NaN where a cell does not
            exist (e.g. the answer-prefix positions at an earlier step).
        dims: axis names, e.g. ("layer", "head"), ("layer", "position"),
            ("step", "layer", "position").
        family: "resid_pre", "resid_post", "z" or "pattern".
        layers, heads: the swept layers and heads (heads None for residual families).
        groups: the position axis: one `PositionGroup` per entry (a single group when the
            result has no position axis).
        steps: the `AnswerStep` of each step (one if there is no step axis).
        clean_metric, corrupted_metric: `[step]` the metric of the unpatched runs, the anchors
            of the normalisation (1 and 0).
        normalized: whether `values` are normalised.
        hook_names: the hook points patched.
        image_grids: (h, w) token grid of each image of the input.
        n_cells: patched cells run (all steps), n_forward_passes: forward passes made (clean
            caching included; a pass resumed at layer L counts as one), n_layer_tokens: their
            cost, decoder layers run x batch rows x query positions summed over passes (a
            proxy: the last layer's MLP, run on one position in resumed passes, counts in
            full), seconds: wall time.
    """

    values: Float[Tensor, "..."]
    dims: tuple[str, ...]
    family: str
    layers: list[int]
    heads: list[int] | None
    groups: list[PositionGroup]
    steps: list[AnswerStep]
    clean_metric: Float[Tensor, " step"]
    corrupted_metric: Float[Tensor, " step"]
    normalized: bool
    hook_names: list[str]
    image_grids: list[tuple[int, int]]
    n_cells: int
    n_forward_passes: int
    n_layer_tokens: int = 0
    seconds: float = 0.0

    # ------------------------------------------------------------------ labels
    def labels(self, dim: str) -> list[Any]:
        """Labels along one axis: step numbers, layer and head indices, position-group labels."""
        if dim == "step":
            return [s.step for s in self.steps]
        if dim == "layer":
            return list(self.layers)
        if dim == "head":
            return list(self.heads or [])
        if dim == "position":
            return [g.label for g in self.groups]
        raise KeyError(f"no axis {dim!r}; the axes are {self.dims}")

    @property
    def shape(self) -> dict[str, int]:
        return dict(zip(self.dims, self.values.shape))

    def __repr__(self) -> str:
        axes = ", ".join(f"{d}={n}" for d, n in self.shape.items())
        return (
            f"PatchingResult({self.family}: [{axes}], {self.n_cells} cells in "
            f"{self.n_forward_passes} forward passes, {self.seconds:.2f} s)"
        )

    def _index(self, dim: str, label: Any) -> int:
        labels = self.labels(dim)
        if dim == "position" and not isinstance(label, str):
            keys = [g.key for g in self.groups]
            if label in keys:
                return keys.index(label)
        if label not in labels:
            raise KeyError(f"{label!r} is not on the {dim} axis ({labels})")
        return labels.index(label)

    def get(self, **where: Any) -> Float[Tensor, "..."]:
        """Values with some axes fixed by label, e.g. `result.get(layer=2, step=1)`."""
        out, dims = self.values, list(self.dims)
        for dim, label in where.items():
            if dim not in dims:
                raise KeyError(f"no axis {dim!r}; the axes are {self.dims}")
            axis = dims.index(dim)
            out = out.select(axis, self._index(dim, label))
            dims.pop(axis)
        return out

    # ------------------------------------------------------------------ table
    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per cell: the axis labels, the position group's metadata and the value."""
        rows = []
        for idx in itertools.product(*(range(n) for n in self.values.shape)):
            row: dict[str, Any] = {"family": self.family}
            for dim, i in zip(self.dims, idx):
                if dim == "step":
                    row["step"] = self.steps[i].step
                elif dim == "layer":
                    row["layer"] = self.layers[i]
                elif dim == "head":
                    row["head"] = (self.heads or [])[i]
                else:
                    g = self.groups[i]
                    row.update(
                        position=g.label,
                        kind=g.kind,
                        positions=list(g.positions),
                        image=g.image,
                        row=g.row,
                        col=g.col,
                    )
            if "step" not in self.dims:
                row["step"] = self.steps[0].step
            row["value"] = float(self.values[idx])
            rows.append(row)
        return rows

    def to_frame(self):
        """`to_rows()` as a pandas DataFrame (pandas is needed for this one method)."""
        import pandas as pd

        return pd.DataFrame(self.to_rows())

    # ------------------------------------------------------------------ image maps
    @property
    def is_image_patch(self) -> bool:
        """Whether the position axis holds single image tokens (results draw over the image)."""
        return (
            "position" in self.dims
            and bool(self.groups)
            and all(g.row is not None for g in self.groups)
        )

    def image_map(self, image: int = 0, **where: Any) -> Float[Tensor, "... h w"]:
        """Values over image `image`'s token grid: `[..., h, w]` (NaN off the image).

        Other axes can be fixed by label first, e.g. `result.image_map(layer=3)` -> `[h, w]`
        (or `[step, h, w]` with a step axis).
        """
        if not self.is_image_patch:
            raise ValueError("image_map needs a sweep with positions='image_patch'")
        h, w = self.image_grids[image]
        values = self.get(**where)  # position axis last
        grid = torch.full((*values.shape[:-1], h, w), float("nan"), dtype=values.dtype)
        for i, g in enumerate(self.groups):
            if g.image == image:
                grid[..., g.row, g.col] = values[..., i]
        return grid

    # ------------------------------------------------------------------ figures
    def heatmap(
        self,
        image: int = 0,
        title: str | None = None,
        max_cols: int = 4,
        zmax: float | None = None,
        mark: tuple[int, int] | None = None,
    ) -> go.Figure:
        """A plotly figure: layer x head / layer x position, or the image grid per layer.

        Image-patch results draw one `[h, w]` panel per layer (and per step / head); other
        results one `[layer, head or position]` panel per step. Colours diverge around 0
        (the corrupted behaviour); 1 is the clean behaviour. `mark=(row, col)` draws a cross
        on that image token in every image panel (e.g. `CountingPair.added_patch`).
        """
        from plotly.subplots import make_subplots

        values = self.values.float()
        dims = list(self.dims)
        finite = values[torch.isfinite(values)]
        if zmax is None:
            zmax = float(finite.abs().max()) if finite.numel() else 1.0
            zmax = max(zmax, 1.0 if self.normalized else 1e-6)
        metric = "normalised metric" if self.normalized else "metric"

        if self.is_image_patch:
            x_dim, y_dim = None, None
            panel_dims = [d for d in dims if d != "position"]
        else:
            x_dim = dims[-1]
            y_dim = "layer"
            panel_dims = [d for d in dims if d not in (x_dim, y_dim)]

        panel_labels = list(itertools.product(*(self.labels(d) for d in panel_dims)))
        n_panels = len(panel_labels)
        cols = min(max_cols, n_panels)
        rows = math.ceil(n_panels / cols)
        titles = [
            " ".join(_panel_name(d, v) for d, v in zip(panel_dims, labs)) for labs in panel_labels
        ]
        fig = make_subplots(
            rows=rows,
            cols=cols,
            subplot_titles=titles if panel_dims else None,
            horizontal_spacing=0.04 if self.is_image_patch else 0.08,
            vertical_spacing=0.12 if rows > 1 else 0.05,
        )
        for n, labs in enumerate(panel_labels):
            where = dict(zip(panel_dims, labs))
            r, c = divmod(n, cols)
            if self.is_image_patch:
                self._image_panel(fig, n, (r + 1, c + 1), where, image, titles[n], mark)
            else:
                self._table_panel(fig, (r + 1, c + 1), where, x_dim)
        what = {
            "resid_pre": "residual stream (pre)",
            "resid_post": "residual stream (post)",
            "z": "attention head output (hook_z)",
            "pattern": "attention pattern (hook_pattern)",
        }.get(self.family, self.family)
        step_text = "" if "step" in dims else f", step {self.steps[0].step}"
        fig.update_layout(
            title=title or f"Patching {what}{step_text}",
            coloraxis=dict(
                colorscale="RdBu", cmid=0.0, cmin=-zmax, cmax=zmax, colorbar_title=metric
            ),
            height=max(300, 260 * rows),
            width=max(500, 260 * cols if self.is_image_patch else 420 * cols),
        )
        return fig

    def _image_panel(
        self,
        fig: go.Figure,
        n: int,
        cell: tuple[int, int],
        where: dict[str, Any],
        image: int,
        title: str,
        mark: tuple[int, int] | None,
    ) -> None:
        """Panel `n` of an image-patch heatmap: the `[h, w]` grid, square, rows top-down."""
        import plotly.graph_objects as go

        row, col = cell
        z = self.image_map(image, **where)
        h, w = z.shape
        trace = go.Heatmap(
            z=z.tolist(),
            x=list(range(w)),
            y=list(range(h)),
            coloraxis="coloraxis",
            hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra>" + title + "</extra>",
        )
        fig.add_trace(trace, row=row, col=col)
        if mark is not None:
            fig.add_trace(
                go.Scatter(
                    x=[mark[1]],
                    y=[mark[0]],
                    mode="markers",
                    marker=dict(symbol="x-thin", size=14, line=dict(width=3, color="black")),
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=row,
                col=col,
            )
        fig.update_yaxes(
            autorange="reversed", scaleanchor=f"x{n + 1 if n else ''}", row=row, col=col
        )
        fig.update_xaxes(showticklabels=False, constrain="domain", row=row, col=col)
        fig.update_yaxes(showticklabels=False, row=row, col=col)

    def _table_panel(
        self, fig: go.Figure, cell: tuple[int, int], where: dict[str, Any], x_dim: str
    ) -> None:
        """One `[layer, head or position]` panel."""
        import plotly.graph_objects as go

        row, col = cell
        z = self.get(**where)  # [layer, x]
        trace = go.Heatmap(
            z=z.tolist(),
            x=[str(v) for v in self.labels(x_dim)],
            y=[f"L{layer}" for layer in self.layers],
            coloraxis="coloraxis",
            hovertemplate="%{y} " + x_dim + " %{x}: %{z:.3f}<extra></extra>",
        )
        fig.add_trace(trace, row=row, col=col)
        fig.update_xaxes(title_text=x_dim, row=row, col=col)
