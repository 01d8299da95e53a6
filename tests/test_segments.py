"""Segments on real processor outputs: spans, grids, batches, two images, and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.core.image_frame import frame_grid
from vlm_lens.core.segments import KIND_IMAGE, KIND_MARKER, KIND_PAD, KIND_SYSTEM, KIND_TEXT
from vlm_lens.data.images import load_image
from vlm_lens.zoo import ARCHITECTURES

PROMPT = "How many dots?"
# The text a user turn starts with once rendered: the system span must end exactly there.
USER_HEADER = {
    "qwen3_vl": "<|im_start|>user\n",
    "qwen2_5_vl": "<|im_start|>user\n",
    "qwen2_vl": "<|im_start|>user\n",
    "gemma3": "<start_of_turn>user\n",
    "llava": "USER: ",
    "llava_onevision": "<|im_start|>user ",
    "internvl": "<|im_start|>user\n",
    "paligemma": "",  # no template: the image comes first, BOS after it is text
    "idefics3": "User:",
    "mllama": "<|start_header_id|>user<|end_header_id|>\n\n",
}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request, tiny_ckpt):
    return HookedVLM.from_pretrained(tiny_ckpt(request.param))


def img(w: int = 64, h: int = 64, value: int = 200) -> Image.Image:
    return Image.new("RGB", (w, h), (value, value, value))


def decode(model, ids) -> str:
    return model.processor.tokenizer.decode(ids, skip_special_tokens=False)


def check_row(
    model, inputs, row: int, n_images: int, system_text: str | None = None, header: str = ""
):
    seg = inputs.segments.samples[row]
    ids = inputs.input_ids[row]
    kinds = inputs.segments.kinds[row]
    image_id = model.adapter.image_token_id(model.hf_model.config)
    # Padding is exactly the masked positions, on the left.
    n_pad = int((inputs.attention_mask[row] == 0).sum())
    assert (seg.padding.start, seg.padding.end) == (0, n_pad)
    assert (kinds[:n_pad] == KIND_PAD).all()
    # System span: starts after padding and ends right after the user header.
    assert seg.system.start == n_pad
    system = decode(model, ids[seg.system.as_slice()])
    if system_text is None:
        assert system.endswith(header or USER_HEADER[model.adapter.arch]), system
    else:  # Gemma3 merges the system prompt into the user turn, after its header
        assert USER_HEADER[model.adapter.arch] in system and system_text in system, system
    bos = model.processor.tokenizer.bos_token
    if bos:
        assert system.count(bos) <= 1, f"BOS doubled: {system!r}"
    assert (kinds[seg.system.as_slice()] == KIND_SYSTEM).all()
    # Image spans: exactly the placeholder tokens, with h*w tokens per tile; the rest of the
    # span (image-newline after each row, for LLaVA-OneVision; <img> and </img> around the
    # tiles, for InternVL; Idefics3's fake tokens, tile tags and newlines) is markers. No image-token id outside the spans.
    assert len(seg.images) == n_images
    inside = sum(int((ids[s.as_slice()] == image_id).sum()) for s in seg.images)
    assert int((ids == image_id).sum()) == inside
    for span in seg.images:
        assert (ids[span.positions()] == image_id).all()
        if len(span.tiles) == 1 and not span.markers:
            assert len(span) == span.grid[0] * span.grid[1]
            assert (kinds[span.as_slice()] == KIND_IMAGE).all()
        visual = span.positions()
        assert len(visual) == sum(t.grid[0] * t.grid[1] for t in span.tiles)
        assert (kinds[visual] == KIND_IMAGE).all()
        markers = [p for m in span.markers for p in range(m.start, m.end)]
        assert sorted(visual + markers) == list(range(span.start, span.end))
        assert (kinds[markers] == KIND_MARKER).all()
    # Everything else is text, and the text spans cover it.
    covered = sum(len(s) for s in seg.text)
    assert covered == int((kinds == KIND_TEXT).sum())
    assert covered == len(ids) - n_pad - len(seg.system) - sum(len(s) for s in seg.images)
    return seg


def test_one_image(model):
    inputs = model.prepare(images=img(), prompt=PROMPT)
    seg = check_row(model, inputs, 0, 1)
    arch = model.adapter.arch
    if arch.startswith("qwen"):
        thw = inputs["image_grid_thw"][0].tolist()
        merge = model.hf_model.config.vision_config.spatial_merge_size
        assert seg.images[0].grid == (thw[1] // merge, thw[2] // merge)
        # vision_start is text, just before the image span.
        assert (
            decode(model, inputs.input_ids[0, seg.images[0].start - 1 : seg.images[0].start])
            == "<|vision_start|>"
        )
    elif arch == "gemma3":
        side = int(model.hf_model.config.mm_tokens_per_image**0.5)
        assert seg.images[0].grid == (side, side)
    elif arch == "llava_onevision":
        # A thumbnail of the tower's side, then the 64x64 image on 2 x 2 crops: 8 x 8 tokens
        # with an image-newline after each row.
        vc = model.hf_model.config.vision_config
        side = vc.image_size // vc.patch_size
        thumb, detail = seg.images[0].tiles
        assert (thumb.grid, thumb.thumbnail, thumb.row_markers) == ((side, side), True, 0)
        assert (detail.grid, detail.thumbnail, detail.row_markers) == ((8, 8), False, 1)
        assert seg.images[0].grid == (0, 0) and len(seg.images[0].markers) == 8
        assert thumb.end == detail.start and detail.end == seg.images[0].end
    elif arch == "internvl":
        # <img>, the 64x64 image on 2 x 2 tiles (row-major, a quarter of the image each) and
        # the thumbnail, each 4 x 4 tokens, </img>.
        image = seg.images[0]
        *detail, thumb = image.tiles
        assert [t.grid for t in image.tiles] == [(4, 4)] * 5 and thumb.thumbnail
        assert [t.box for t in detail] == [
            (0.0, 0.0, 0.5, 0.5),
            (0.0, 0.5, 0.5, 1.0),
            (0.5, 0.0, 1.0, 0.5),
            (0.5, 0.5, 1.0, 1.0),
        ]
        assert [decode(model, inputs.input_ids[0, m.as_slice()]) for m in image.markers] == [
            "<img>",
            "</img>",
        ]
        assert (image.markers[0].start, image.markers[1].end) == (image.start, image.end)
        assert all(a.end == b.start for a, b in zip(image.tiles, image.tiles[1:]))
        assert frame_grid(image) == (8, 8)
    elif arch == "idefics3":
        # The 64x64 image as 2 x 2 tiles of 32 pixels, then the global image; 4 x 4 tokens
        # each. The span reads as the processor wrote it.
        image = seg.images[0]
        assert [t.grid for t in image.tiles] == [(4, 4)] * 5
        assert [t.box for t in image.tiles] == [
            (0.0, 0.0, 0.5, 0.5),
            (0.0, 0.5, 0.5, 1.0),
            (0.5, 0.0, 1.0, 0.5),
            (0.5, 0.5, 1.0, 1.0),
            (0.0, 0.0, 1.0, 1.0),
        ]
        assert [t.thumbnail for t in image.tiles] == [False] * 4 + [True]
        run = "<image>" * 16
        tile = "<fake_token_around_image><row_{}_col_{}>" + run
        written = (
            tile.format(1, 1) + tile.format(1, 2) + "\n" + tile.format(2, 1) + tile.format(2, 2)
        )
        written += "\n\n<fake_token_around_image><global-img>" + run + "<fake_token_around_image>"
        assert decode(model, inputs.input_ids[0, image.as_slice()]) == written
        assert [len(m) for m in image.markers] == [2, 2, 3, 2, 4, 1]
    elif arch == "mllama":  # the image is read by cross-attention: one <|image|> token
        assert seg.images[0].grid == (1, 1)
        assert decode(model, inputs.input_ids[0, seg.images[0].as_slice()]) == "<|image|>"
    else:
        vc = model.hf_model.config.vision_config
        assert seg.images[0].grid == (vc.image_size // vc.patch_size,) * 2


def test_non_square_image_gives_non_square_grid(model):
    if model.adapter.arch in ("gemma3", "llava", "paligemma"):
        pytest.skip("Gemma3, LLaVA-1.5 and PaliGemma resize every image to a fixed square grid")
    if model.adapter.arch == "mllama":
        pytest.skip(
            "Mllama: one <|image|> token in the sequence; its key grid: tests/test_mllama.py"
        )
    inputs = model.prepare(images=img(w=128, h=64), prompt=PROMPT)
    image = check_row(model, inputs, 0, 1).images[0]
    if model.adapter.arch == "idefics3":  # 64 x 32 after resizing: one row of two tiles
        boxes = [t.box for t in image.tiles]
        assert boxes == [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0), (0.0, 0.0, 1.0, 1.0)]
        return
    # Tiled images: the frame of the detail tiles (LLaVA-OneVision's detail grid after its
    # thumbnail; InternVL's 128 x 64 image on 2 x 4 tiles of 4 x 4).
    (h, w) = frame_grid(image)
    assert w > h
    if model.adapter.arch == "internvl":
        assert (h, w) == (8, 16) and len(image.tiles) == 9


def test_two_images_and_system_prompt(model):
    images, prompt, system = (
        [img(value=10), img(value=240)],
        "Left: <image> right: <image> same?",
        "Be brief.",
    )
    if model.adapter.arch == "paligemma":  # no system prompt: refused, before any side effect
        with pytest.raises(ValueError, match="PaliGemma takes one user turn: no system prompt"):
            model.prepare(images=images, prompt=prompt, system=system)
        system = None
    inputs = model.prepare(images=images, prompt=prompt, system=system)
    seg = check_row(model, inputs, 0, 2, system_text=system)
    # The first content item starts right where the system span ends: the text "Left:", or the
    # image where the template moves images first (LLaVA-1.5, LLaVA-OneVision, PaliGemma).
    if model.adapter.arch in ("llava", "llava_onevision", "paligemma"):
        assert seg.images[0].start == seg.system.end
    else:
        assert decode(model, inputs.input_ids[0, seg.system.end : seg.system.end + 5]) == "Left:"
    # back to back: LLaVA-OneVision's template writes "<image><image>", PaliGemma's nothing
    if model.adapter.arch in ("llava_onevision", "paligemma"):
        assert seg.images[0].end == seg.images[1].start
    else:
        assert seg.images[0].end < seg.images[1].start
    assert (inputs.segments.image_index[0][seg.images[1].as_slice()] == 1).all()
    assert [int(i) for i in inputs.segments.image_index[0].unique()] == [-1, 0, 1]


def test_left_padded_batch_matches_single_rows(model):
    prompts = ["Count.", "How many dots are there in the image? Answer directly."]
    batch = model.prepare(images=[img(value=30), img(value=90)], prompt=prompts)
    for row, p in enumerate(prompts):
        check_row(model, batch, row, 1)
        single = model.prepare(images=img(value=30 if row == 0 else 90), prompt=p)
        n_pad = len(batch.segments.samples[row].padding)
        assert torch.equal(batch.segments.kinds[row, n_pad:], single.segments.kinds[0])
        assert (
            batch.segments.samples[row].images[0].start - n_pad
            == single.segments.samples[0].images[0].start
        )
    assert (
        len(batch.segments.samples[0].padding) > 0 and len(batch.segments.samples[1].padding) == 0
    )


def test_placeholder_without_image_is_an_error(model):
    with pytest.raises(ValueError, match="2 image placeholder.*1 image"):
        model.prepare(images=[img()], prompt="<image> and <image>?")
    with pytest.raises(ValueError, match="1 image placeholder.*0 image"):
        model.prepare(images=None, prompt="what is in <image>?")


def test_image_without_placeholder_in_raw_prompt_is_an_error(model):
    with pytest.raises(ValueError, match="0 image placeholder.*1 image"):
        model.prepare(images=[img()], prompt="no placeholder here", chat_template=False)


def test_batch_needs_one_image_entry_per_prompt(model):
    with pytest.raises(ValueError, match="2 prompts"):
        model.prepare(images=[img()], prompt=["a", "b"])


def test_not_an_image_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="not an image file.*notes.png"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_grayscale_rgba_and_16bit_are_converted(tmp_path):
    gray = load_image(Image.fromarray(np.full((4, 4), 77, dtype=np.uint8)))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent -> the white background shows
    rgba[0, 0, 3] = 255  # one opaque red pixel
    out = load_image(Image.fromarray(rgba, mode="RGBA"))
    assert out.getpixel((0, 0)) == (200, 0, 0) and out.getpixel((1, 1)) == (255, 255, 255)
    sixteen = np.full((4, 4), 65535, dtype=np.uint16)
    sixteen[0, 0] = 0
    sixteen[0, 1] = 32896  # ~ half scale
    path = tmp_path / "deep.png"
    Image.fromarray(sixteen).save(path)
    deep = load_image(path)
    assert deep.mode == "RGB"
    assert deep.getpixel((0, 0)) == (0, 0, 0) and deep.getpixel((1, 1)) == (255, 255, 255)
    assert deep.getpixel((1, 0)) == (128, 128, 128)


def test_batch_with_a_text_only_prompt(model):
    if model.adapter.arch in ("paligemma", "mllama"):
        # PaliGemma needs an image in every prompt; Mllama cannot run a batch mixing rows with
        # and without images (MllamaProcessor 5.4 refuses it, later releases return aspect
        # ratios for the image rows only).
        with pytest.raises(ValueError, match="needs an image|at least one image per sample"):
            model.prepare(images=[img(value=30), None], prompt=["Count.", "Say hello to me."])
        return
    batch = model.prepare(images=[img(value=30), None], prompt=["Count.", "Say hello to me."])
    check_row(model, batch, 0, 1)
    # LLaVA-OneVision's template writes "\n" before each text item, Idefics3's ": " after the
    # role when the turn opens with text (":" before an image): part of the header here.
    after = {"llava_onevision": "\n", "idefics3": " "}.get(model.adapter.arch, "")
    check_row(model, batch, 1, 0, header=USER_HEADER[model.adapter.arch] + after)
    assert batch.segments.samples[1].images == []
