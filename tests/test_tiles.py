"""The layout model of tiled images: tiles, markers, and maps in the original image's frame.

Layouts here are written by hand in the shapes the tiling families give (LLaVA-OneVision: a
thumbnail then a whole-image grid with an image-newline after each row; Idefics3: labelled
tiles, row breaks, a global image) and placed on hand-made token ids by the real
`_row_segments`; the model-backed checks are in the families' own tests.
"""

from __future__ import annotations

import pytest
import torch

from vlm_lens.adapters import TileLayout, one_tile
from vlm_lens.core.image_frame import frame_grid, tile_maps, to_image_frame
from vlm_lens.core.prepare import _row_segments
from vlm_lens.core.segments import (
    KIND_IMAGE,
    KIND_MARKER,
    KIND_PAD,
    KIND_SYSTEM,
    KIND_TEXT,
    SEGMENT_KINDS,
    ImageSpan,
    Segments,
    Span,
    Tile,
)
from vlm_lens.interventions.patterns import redistribute_pattern

IMG, FAKE, LABEL, T = 9, 7, 8, 1  # image token, Idefics3's around-image token, tile label, text


def _place(ids: list[int], layouts, n_pad: int = 0, n_system: int = 1):
    ids_t = torch.tensor(ids)
    attn = torch.ones_like(ids_t)
    attn[:n_pad] = 0
    return _row_segments(ids_t, attn, n_system, IMG, layouts, row=0)


def test_untiled_image_is_one_whole_image_tile_and_keeps_the_image_span_api():
    sample, kinds, index = _place([T, T, IMG, IMG, IMG, IMG, IMG, IMG, T], [one_tile((2, 3))])
    (image,) = sample.images
    assert image == ImageSpan(2, 8, grid=(2, 3))
    assert image.tiles == (Tile(2, 8, (2, 3), (0.0, 0.0, 1.0, 1.0)),)
    assert image.positions() == list(range(2, 8)) and image.n_tokens == len(image) == 6
    assert image.markers == ()
    assert kinds.tolist() == [KIND_SYSTEM, KIND_TEXT] + [KIND_IMAGE] * 6 + [KIND_TEXT]
    assert KIND_MARKER not in kinds.tolist()
    assert sample.text == [Span(1, 2), Span(8, 9)]


def test_onevision_layout_thumbnail_then_grid_with_newline_after_each_row():
    # Thumbnail 2x2, then a 3x2 grid of the whole image, an image-newline (same id) per row.
    layout = (TileLayout((2, 2), thumbnail=True), TileLayout((3, 2), row_markers=1))
    ids = [T, T] + [IMG] * (4 + 3 * 3) + [T]
    sample, kinds, index = _place(ids, [layout])
    (image,) = sample.images
    thumb, grid = image.tiles
    assert (thumb.start, thumb.end, thumb.thumbnail) == (2, 6, True)
    assert (grid.start, grid.end) == (6, 15)
    assert grid.positions() == [6, 7, 9, 10, 12, 13]
    assert image.markers == (Span(8, 9), Span(11, 12), Span(14, 15))
    assert image.grid == (0, 0) and image.n_tokens == 10
    assert [p for p in range(15) if kinds[p] == KIND_MARKER] == [8, 11, 14]
    assert [p for p in range(16) if kinds[p] == KIND_IMAGE] == image.positions()
    assert index[2:15].tolist() == [0] * 13 and index[[0, 1, 15]].tolist() == [-1, -1, -1]


def test_idefics3_layout_labels_row_breaks_and_global_image_with_two_images_and_padding():
    # <fake><row_1_col_1> 4 x img  <fake><row_1_col_2> 4 x img  \n  <fake><global> 4 x img <fake>
    tiles = [TileLayout((2, 2), box=(0, 0, 1, 0.5)), TileLayout((2, 2), box=(0, 0.5, 1, 1))]
    layout = (2, tiles[0], 2, tiles[1], 3, TileLayout((2, 2), thumbnail=True), 1)
    one = [FAKE, LABEL] + [IMG] * 4 + [FAKE, LABEL] + [IMG] * 4 + [T, FAKE, LABEL] + [IMG] * 4
    ids = [0, 0, T] + one + [FAKE, T] + [IMG] * 4 + [T]
    sample, kinds, index = _place(ids, [layout, one_tile((2, 2))], n_pad=2)
    first, second = sample.images
    assert (first.start, first.end) == (3, 3 + len(one) + 1)
    assert [t.start for t in first.tiles] == [5, 11, 18]
    assert first.markers == (Span(3, 5), Span(9, 11), Span(15, 18), Span(22, 23))
    assert second == ImageSpan(24, 28, grid=(2, 2))
    assert kinds[:3].tolist() == [KIND_PAD, KIND_PAD, KIND_SYSTEM]
    assert kinds[23].item() == KIND_TEXT and kinds[28].item() == KIND_TEXT
    assert index[3:23].unique().tolist() == [0] and index[24:28].unique().tolist() == [1]
    segments = Segments(kinds[None], index[None], [sample])
    assert segments.share_kinds == (*SEGMENT_KINDS, "marker")
    assert segments.mask("marker")[0].nonzero().flatten().tolist() == [3, 4, 9, 10, 15, 16, 17, 22]


def test_layout_errors_name_the_image():
    with pytest.raises(ValueError, match="need 8"):
        _place([T, IMG, IMG, IMG, IMG, IMG, T], [one_tile((2, 4))])
    with pytest.raises(ValueError, match="image 0 are not contiguous"):
        _place([T, IMG, IMG, T, IMG, IMG, T], [one_tile((2, 2))])
    with pytest.raises(ValueError, match="layouts place 4"):
        _place([T, IMG, IMG, IMG, IMG, T, IMG, T], [one_tile((2, 2))])
    # The second tile's tokens are not where the layout puts them.
    with pytest.raises(ValueError, match="tile 1's visual tokens of image 0"):
        _place([T] + [IMG] * 4 + [T] + [IMG] * 4, [(TileLayout((2, 2)), TileLayout((2, 2)))])


def test_untiled_frame_is_the_grid_itself():
    image = ImageSpan(5, 11, grid=(2, 3))
    values = torch.arange(12.0).reshape(2, 6)  # [head, tokens]
    assert frame_grid(image) == (2, 3)
    assert torch.equal(to_image_frame(values, image), values.reshape(2, 2, 3))


def _two_by_two_tiles_and_thumbnail() -> ImageSpan:
    boxes = [(0, 0, 0.5, 0.5), (0, 0.5, 0.5, 1), (0.5, 0, 1, 0.5), (0.5, 0.5, 1, 1)]
    tiles = [Tile(4 * k, 4 * k + 4, (2, 2), box) for k, box in enumerate(boxes)]
    tiles.append(Tile(16, 20, (2, 2), thumbnail=True))
    return ImageSpan(0, 20, tiles=tuple(tiles))


def test_tiles_stitch_into_the_frame_and_the_thumbnail_is_apart_or_averaged():
    image = _two_by_two_tiles_and_thumbnail()
    values = torch.arange(1.0, 21.0)
    maps = tile_maps(values, image)
    assert [m.shape for m in maps] == [(2, 2)] * 5
    frame = to_image_frame(values, image)
    assert frame_grid(image) == (4, 4)
    expected = torch.tensor(
        [[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], dtype=torch.float
    )
    assert torch.equal(frame, expected)
    # The thumbnail's 2x2 cells each cover 2x2 frame cells: a quarter of its mass each.
    thumb = torch.tensor([[17, 18], [19, 20]], dtype=torch.float).repeat_interleave(2, 0)
    thumb = thumb.repeat_interleave(2, 1) / 4
    torch.testing.assert_close(to_image_frame(values, image, "mean"), (expected + thumb) / 2)


def test_frame_keeps_the_mass_of_a_grid_finer_than_the_frame_axis_it_does_not_divide():
    # OneVision: thumbnail 2x2 and a 3x5 grid of the whole image -> a 3x5 frame; the
    # thumbnail alone would spread each of its cells over fractional frame cells.
    image = ImageSpan(0, 19, tiles=(Tile(0, 4, (2, 2), thumbnail=True), Tile(4, 19, (3, 5))))
    values = torch.rand(3, 19)
    assert frame_grid(image) == (3, 5)
    assert torch.equal(to_image_frame(values, image), values[:, 4:].reshape(3, 3, 5))
    mean = to_image_frame(values, image, "mean")
    torch.testing.assert_close(mean.sum((-2, -1)), values.sum(-1) / 2)
    with pytest.raises(ValueError, match="19 visual tokens"):
        to_image_frame(values[:, :18], image)


def test_markers_move_only_where_named():
    kinds = torch.tensor([[KIND_SYSTEM, KIND_IMAGE, KIND_MARKER, KIND_IMAGE, KIND_TEXT]])
    pattern = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2]).expand(1, 1, 1, 5)
    # Knocking out the system: image and text gain, the marker keeps its weight.
    out = redistribute_pattern(pattern, kinds, source="system", fraction=1.0)
    assert out[0, 0, 0, 2] == pattern[0, 0, 0, 2]
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 1, 1))
    # Named as the source, the marker's weight goes to the image (in proportion: 0.15 each).
    out = redistribute_pattern(pattern, kinds, source="marker", recipients="image", fraction=1.0)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.1, 0.35, 0.0, 0.35, 0.2]))


def test_count_runs_end_to_end_on_a_tiled_family_with_maps_in_the_image_frame(tiny_ckpt, tmp_path):
    """`vlm-lens count --model <tiny LLaVA-OneVision> --n 2`: 1024 x 1024 dots images on 3 x 3
    crops of 4 x 4 tokens give a 12 x 12 frame (the 4 x 4 thumbnail left out), and the halo
    metrics are taken on it."""
    import json

    from vlm_lens.cli import main

    ckpt = tiny_ckpt("llava_onevision")
    out = tmp_path / "run"
    assert (
        main(
            [
                "count",
                "--model",
                str(ckpt),
                "--n",
                "2",
                "--digits-only",
                "--no-controls",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (samples,) = out.rglob("samples.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["grid"] == [12, 12]
        for entry in row["attention"]:
            shares = entry["centre"] + entry["hull_band"] + entry["background"]
            assert shares == pytest.approx(1.0)
            assert 0 < entry["image_mass"] < 1
    assert len(rows[0]["attention"][0]["map"]) == 144


def test_one_tile_with_a_marker_has_no_single_grid():
    # LLaVA-OneVision's image in a multi-image prompt: its thumbnail, then one image-newline.
    sample, kinds, _ = _place([T, IMG, IMG, IMG, IMG, IMG, T], [(TileLayout((2, 2)), 1)])
    (image,) = sample.images
    assert (image.start, image.end, image.grid, image.n_tokens) == (1, 6, (0, 0), 4)
    assert image.markers == (Span(5, 6),) and kinds[5].item() == KIND_MARKER
