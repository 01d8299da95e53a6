"""Idefics3: the tile layout recovered from the token ids, and the counting study end to end.

The registry-parametrized tests (zoo, hooked, segments, generation, patching) cover the tiny
checkpoint's parity, patching and segments; these pin what is Idefics3's own.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.adapters import TileLayout
from vlm_lens.architectures.idefics3 import ARCHITECTURE, tile_side

IMG, FAKE, GLOBAL, NL, T = 9, 7, 8, 5, 1
TAG = 20  # any tile tag: the layout reads tags only to find the global one


def config(side: int = 2):
    """A config whose tiles are side x side tokens (patches 2 * side, shuffled by 2)."""
    vision = SimpleNamespace(image_size=8 * side, patch_size=4)
    return SimpleNamespace(vision_config=vision, scale_factor=2, image_token_id=IMG)


def split_image(rows: int, cols: int, n: int = 4) -> list[int]:
    ids: list[int] = []
    for r in range(rows):
        for c in range(cols):
            ids += [FAKE, TAG + r * 6 + c] + [IMG] * n
        ids += [NL]
    return ids + [NL, FAKE, GLOBAL] + [IMG] * n + [FAKE]


def whole_image(n: int = 4) -> list[int]:
    return [FAKE, GLOBAL] + [IMG] * n + [FAKE]


def processor_out(rows: list[list[int]], tiles: list[int]) -> dict:
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # left padding
    pixels = torch.zeros(len(rows), max(tiles), 3, 2, 2)
    for i, n in enumerate(tiles):
        pixels[i, :n] = 1.0
    return {"input_ids": ids, "pixel_values": pixels}


def test_rows_and_columns_come_from_the_tags_and_the_row_breaks():
    # Row 0: a 2 x 3 split image, then an unsplit one; row 1 (padded): a 3 x 1 split image.
    rows = [[T] + split_image(2, 3) + [T] + whole_image() + [T], [T] + split_image(3, 1) + [T]]
    out = processor_out(rows, [2 * 3 + 1 + 1, 3 + 1])
    first, second, third = ARCHITECTURE.adapter.image_layouts(config(), None, out, [(64, 64)] * 3)
    tiles = [p for p in first if isinstance(p, TileLayout)]
    assert [t.box for t in tiles[:3]] == [
        (0, 0, 0.5, 1 / 3),
        (0, 1 / 3, 0.5, 2 / 3),
        (0, 2 / 3, 0.5, 1),
    ]
    assert tiles[3].box == (0.5, 0, 1, 1 / 3) and tiles[-1].thumbnail and len(tiles) == 7
    # fake + tag, then 2 between tiles of a row, 3 across a row break, 4 before the global
    assert [p for p in first if isinstance(p, int)] == [2, 2, 2, 3, 2, 2, 4, 1]
    assert second == (2, TileLayout((2, 2), thumbnail=True), 1)
    assert [t.box for t in third if isinstance(t, TileLayout)] == [
        (0, 0, 1 / 3, 1),
        (1 / 3, 0, 2 / 3, 1),
        (2 / 3, 0, 1, 1),
        (0, 0, 1, 1),
    ]


def test_layout_errors_say_what_does_not_match():
    out = processor_out([[T] + split_image(1, 2, n=3)], [3])
    with pytest.raises(ValueError, match=r"row 0: image-token runs .* are not 4 tokens"):
        ARCHITECTURE.adapter.image_layouts(config(), None, out, [(64, 64)])
    out = processor_out([[T] + split_image(1, 2)], [2])
    with pytest.raises(ValueError, match="row 0: 3 image-token runs but 2 tiles"):
        ARCHITECTURE.adapter.image_layouts(config(), None, out, [(64, 64)])
    ragged = [FAKE, TAG] + [IMG] * 4 + [FAKE, TAG] + [IMG] * 4 + [NL, FAKE, TAG] + [IMG] * 4
    out = processor_out([[T] + ragged + [NL, NL] + whole_image()], [4])
    with pytest.raises(ValueError, match="do not form a grid of equal rows"):
        ARCHITECTURE.adapter.image_layouts(config(), None, out, [(64, 64)])
    odd = SimpleNamespace(
        vision_config=SimpleNamespace(image_size=12, patch_size=4), scale_factor=2
    )
    with pytest.raises(ValueError, match="3 patches per side do not split by scale_factor 2"):
        tile_side(odd)


def test_an_unsplit_image_is_the_global_tile_alone(tiny_ckpt):
    model = HookedVLM.from_pretrained(tiny_ckpt("idefics3"))
    model.processor.image_processor.do_image_splitting = False
    inputs = model.prepare(images=Image.new("RGB", (64, 64), (40, 90, 200)), prompt="How many?")
    (image,) = inputs.segments.samples[0].images
    assert [(t.grid, t.thumbnail) for t in image.tiles] == [((4, 4), True)]
    assert [len(m) for m in image.markers] == [2, 1] and len(image) == 16 + 3


def test_count_runs_end_to_end_with_maps_in_the_image_frame(tiny_ckpt, tmp_path):
    """`vlm-lens count --model <tiny Idefics3> --n 4`: 1024 x 1024 dots images, resized to
    64 x 64 and split into 2 x 2 tiles of 4 x 4 tokens, give an 8 x 8 frame (the global
    image left out), and the halo metrics are taken on it."""
    from vlm_lens.cli import main

    out = tmp_path / "run"
    args = [
        "count",
        "--model",
        str(tiny_ckpt("idefics3")),
        "--n",
        "4",
        "--no-controls",
        "--out",
        str(out),
    ]
    assert main([*args, "--digits-only"]) == 0
    (samples,) = out.rglob("samples.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["grid"] == [8, 8]
        for entry in row["attention"]:
            shares = entry["centre"] + entry["hull_band"] + entry["background"]
            assert shares == pytest.approx(1.0)
            assert 0 < entry["image_mass"] < 1
    assert len(rows[0]["attention"][0]["map"]) == 64
