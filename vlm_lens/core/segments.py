"""Token segments: which positions of a prompt are system, image, marker, text or generated.

A `Segments` object is the one place that knows the layout of a (batched) prompt.
Hook functions, interventions and metrics read it instead of assuming offsets.

An image is a list of tiles (`Tile`): each a token span, the (h, w) grid its tokens form and
its box in the original image. Most families give one tile covering the whole image; tiling
families (LLaVA-OneVision, InternVL, Idefics3) give several, the global thumbnail being a tile
whose box is the whole image. Tokens the processor puts between tiles or rows (image-newline,
row breaks, tile labels) are "marker" positions: neither image nor text.

Layout of one row (left padding, as HF generation needs it)::

    [pad ... pad | system ... | text / image tokens interleaved ... | generated ...]

Kinds are stored per position as small integers (`KIND_*`) so masks over keys are
one vectorised comparison, whatever the number of images.

Not for: building the spans (see `vlm_lens.core.prepare`), or holding tensors of
the model's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from vlm_lens.adapters import WHOLE, Box

KIND_PAD = -1
KIND_SYSTEM = 0
KIND_IMAGE = 1
KIND_TEXT = 2
KIND_GENERATED = 3
KIND_MARKER = 4

KIND_NAMES: dict[str, int] = {
    "pad": KIND_PAD,
    "system": KIND_SYSTEM,
    "image": KIND_IMAGE,
    "text": KIND_TEXT,
    "generated": KIND_GENERATED,
    "marker": KIND_MARKER,
}
# The kinds every family's positions have (padding is none of them), in code order: the one
# list every share, modality argument and position grouping uses. "marker" is apart: only
# tiling families have marker positions, so shares grow a marker column only for a batch that
# has some (`Segments.share_kinds`), and a marker is a modality only where named.
SEGMENT_KINDS: tuple[str, ...] = ("system", "image", "text", "generated")
MARKER = "marker"
KIND_OF_CODE: dict[int, str] = {code: name for name, code in KIND_NAMES.items()}


@dataclass(frozen=True)
class Span:
    """Half-open index span `[start, end)` into a row of the (padded) sequence."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start

    def as_slice(self) -> slice:
        return slice(self.start, self.end)


@dataclass(frozen=True)
class Tile(Span):
    """One tile of an image: `grid` (h, w) visual tokens in row-major order inside `[start, end)`.

    `row_markers` marker tokens follow each row (LLaVA-OneVision's image-newline), so a row
    starts every `w + row_markers` positions. `box` is where the tile's grid lies in the
    original image; `thumbnail` marks a downscaled view of the whole image kept beside tiles
    that cover it at a finer scale.
    """

    grid: tuple[int, int] = (0, 0)
    box: Box = WHOLE
    row_markers: int = 0
    thumbnail: bool = False

    def positions(self) -> list[int]:
        """The visual token positions, row-major (row markers skipped)."""
        h, w = self.grid
        stride = w + self.row_markers
        return [self.start + r * stride + c for r in range(h) for c in range(w)]

    def marker_positions(self) -> list[int]:
        h, w = self.grid
        stride = w + self.row_markers
        return [self.start + r * stride + w + m for r in range(h) for m in range(self.row_markers)]

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class ImageSpan(Span):
    """The tokens of one image: its tiles, and the marker spans between them.

    `[start, end)` runs from the image's first to its last tile or marker token. An image of
    one tile and no markers (every non-tiling family) has that tile's span and grid; any other
    image has no single grid (`grid == (0, 0)`): read `tiles`.
    """

    grid: tuple[int, int] = (0, 0)
    tiles: tuple[Tile, ...] = ()
    markers: tuple[Span, ...] = ()

    def __post_init__(self) -> None:
        if not self.tiles and self.grid != (0, 0):  # ImageSpan(start, end, grid=...): one tile
            object.__setattr__(self, "tiles", (Tile(self.start, self.end, self.grid),))

    @property
    def n_tokens(self) -> int:
        """How many visual (image-kind) tokens the image has, over all tiles."""
        return sum(t.n_tokens for t in self.tiles)

    def positions(self) -> list[int]:
        """The visual token positions, tile by tile (prompt order)."""
        return [p for t in self.tiles for p in t.positions()]


@dataclass(frozen=True)
class ImageKeys:
    """Where one image's patches sit among the keys of the cross-attention layers (Mllama),
    whose keys are the image features rather than the prompt's positions.

    `index[i * w + j]` is the key column of grid cell (i, j) of the image's (h, w) patch grid,
    its tiles stitched back into the image's frame (CLS keys and unused tiles left out).
    """

    index: tuple[int, ...]
    grid: tuple[int, int]


@dataclass
class SampleSegments:
    """Spans of one row of the batch (indices already shifted by its left padding)."""

    padding: Span
    system: Span
    images: list[ImageSpan]
    text: list[Span]
    generated: Span | None = None
    image_keys: list[ImageKeys] = field(default_factory=list)
    """Per image, its cross-attention keys (families with cross-attention layers only)."""

    def image_grids(self, cross_attention: bool = False) -> list[tuple[int, int]]:
        """Each image's grid on the key axis of a self-attention layer (its tokens) or, with
        `cross_attention`, of a cross-attention layer (its patch keys, `image_keys`)."""
        return (
            [k.grid for k in self.image_keys] if cross_attention else [s.grid for s in self.images]
        )

    def describe(self) -> str:
        imgs = ", ".join(
            f"image{i}[{s.start}:{s.end}] "
            + (f"grid={s.grid}" if len(s.tiles) <= 1 else f"tiles={[t.grid for t in s.tiles]}")
            for i, s in enumerate(self.images)
        )
        return f"pad[0:{self.padding.end}] system[{self.system.start}:{self.system.end}] {imgs}".strip()


@dataclass
class Segments:
    """Per-position token kinds of a batch of prompts.

    Attributes:
        kinds: `[batch, prompt_len]` codes (`KIND_PAD`, `KIND_SYSTEM`, `KIND_IMAGE`, `KIND_TEXT`,
            `KIND_MARKER`).
        image_index: `[batch, prompt_len]` which image of the row a visual or marker token
            belongs to, -1 elsewhere.
        samples: one `SampleSegments` per row, with image grids.
    """

    kinds: Int[Tensor, "batch pos"]
    image_index: Int[Tensor, "batch pos"]
    samples: list[SampleSegments] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.kinds.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.kinds.shape[1]

    def key_kinds(
        self, n_keys: int, device: torch.device | None = None
    ) -> Int[Tensor, "batch key"]:
        """Kinds of the first `n_keys` positions; positions past the prompt are generated."""
        kinds = self.kinds
        if n_keys > kinds.shape[1]:
            extra = torch.full(
                (kinds.shape[0], n_keys - kinds.shape[1]), KIND_GENERATED, dtype=kinds.dtype
            )
            kinds = torch.cat([kinds, extra], dim=1)
        kinds = kinds[:, :n_keys]
        return kinds if device is None else kinds.to(device)

    def mask(
        self, kind: str, n_keys: int | None = None, device: torch.device | None = None
    ) -> Bool[Tensor, "batch key"]:
        """Boolean mask of the positions of one kind ("system", "image", "text", "generated",
        "marker", "pad")."""
        if kind not in KIND_NAMES:
            raise ValueError(f"unknown segment kind {kind!r}; expected one of {sorted(KIND_NAMES)}")
        kinds = self.key_kinds(self.prompt_len if n_keys is None else n_keys, device)
        return kinds == KIND_NAMES[kind]

    @property
    def share_kinds(self) -> tuple[str, ...]:
        """The kinds attention shares are taken over: `SEGMENT_KINDS`, plus "marker" when a
        row of this batch has marker positions."""
        if bool((self.kinds == KIND_MARKER).any()):
            return (*SEGMENT_KINDS, MARKER)
        return SEGMENT_KINDS

    def image_positions(self, row: int, image: int = 0) -> ImageSpan:
        """The span of image `image` of batch row `row` (raises a clear error if there is none)."""
        sample = self.samples[row]
        if image >= len(sample.images) or image < -len(sample.images):
            raise IndexError(
                f"row {row} has {len(sample.images)} image(s); asked for image {image}"
            )
        return sample.images[image]

    def with_generated(self, n_generated: int) -> Segments:
        """A copy whose samples record `n_generated` generated tokens after the prompt."""
        samples = [
            SampleSegments(
                s.padding,
                s.system,
                s.images,
                s.text,
                Span(self.prompt_len, self.prompt_len + n_generated),
                s.image_keys,
            )
            for s in self.samples
        ]
        extra = torch.full((self.batch_size, n_generated), KIND_GENERATED, dtype=self.kinds.dtype)
        index_extra = torch.full((self.batch_size, n_generated), -1, dtype=self.image_index.dtype)
        return Segments(
            torch.cat([self.kinds, extra], dim=1),
            torch.cat([self.image_index, index_extra], dim=1),
            samples,
        )

    def select(self, rows: list[int] | slice) -> Segments:
        """Segments of a subset of rows (e.g. one sample of a batch)."""
        idx = list(range(self.batch_size))[rows] if isinstance(rows, slice) else list(rows)
        return Segments(self.kinds[idx], self.image_index[idx], [self.samples[i] for i in idx])
