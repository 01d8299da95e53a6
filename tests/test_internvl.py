"""InternVL3 on its tiny checkpoint: tiles in the original image's frame, and the counting
study end to end with its maps in that frame.

The registry-parametrized files (test_zoo, test_hooked_vlm, test_segments, test_generation,
test_patching, test_real_vocab) cover the rest of the family.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.core.image_frame import frame_grid, tile_maps, to_image_frame


def test_tiles_stitch_into_the_image_frame_row_major(tiny_ckpt):
    """A 1024 x 1024 image: 3 x 3 tiles of 4 x 4 tokens and a thumbnail. Per-token values
    drawn in the frame put tile (r, c)'s cell (i, j) at frame cell (4r + i, 4c + j), exactly
    (the tiles' boxes align with the frame's cells); the thumbnail is left out, or averaged in
    with `thumbnail="mean"`."""
    model = HookedVLM.from_pretrained(tiny_ckpt("internvl"))
    inputs = model.prepare(images=Image.new("RGB", (1024, 1024), (90, 90, 90)), prompt="Count.")
    image = inputs.segments.samples[0].images[0]
    assert len(image.tiles) == 10 and image.tiles[-1].thumbnail
    assert frame_grid(image) == (12, 12)
    values = torch.arange(image.n_tokens, dtype=torch.float64)
    frame = to_image_frame(values, image)
    maps = tile_maps(values, image)
    by_hand = torch.cat([torch.cat(maps[3 * r : 3 * r + 3], dim=1) for r in range(3)], dim=0)
    torch.testing.assert_close(frame, by_hand)
    assert float(frame.sum()) == float(values[: 9 * 16].sum())  # the thumbnail's left out
    thumb = maps[-1].repeat_interleave(3, 0).repeat_interleave(3, 1) / 9  # its mass spread
    torch.testing.assert_close(to_image_frame(values, image, thumbnail="mean"), (frame + thumb) / 2)


def test_count_runs_end_to_end_with_maps_in_the_image_frame(tiny_ckpt, tmp_path):
    """`vlm-lens count --model <tiny InternVL3> --n 2 --digits-only`: 1024 x 1024 dots images
    on 3 x 3 tiles of 4 x 4 tokens give a 12 x 12 frame (the thumbnail left out); the halo
    metrics and the kept maps are taken on it."""
    from vlm_lens.cli import main

    ckpt = tiny_ckpt("internvl")
    out = tmp_path / "run"
    args = [
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
    assert main(args) == 0
    (samples,) = out.rglob("samples.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["grid"] == [12, 12] and row["image_size"] == [1024, 1024]
        assert row["attention"], "no digit step measured"
        for entry in row["attention"]:
            shares = entry["centre"] + entry["hull_band"] + entry["background"]
            assert shares == pytest.approx(1.0)
            assert 0 < entry["image_mass"] < 1
    kept = rows[0]["attention"][0]["map"]
    assert len(kept) == 144 and sum(kept) == pytest.approx(1.0, abs=1e-5)
    assert (out / "report.html").is_file()
