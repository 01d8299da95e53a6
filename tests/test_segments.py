"""Segments on real processor outputs: spans, grids, batches, two images, and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.core.segments import KIND_IMAGE, KIND_PAD, KIND_SYSTEM, KIND_TEXT
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
    "mllama": "<|start_header_id|>user<|end_header_id|>\n\n",
}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request, tiny_ckpt):
    return HookedVLM.from_pretrained(tiny_ckpt(request.param))


def img(w: int = 64, h: int = 64, value: int = 200) -> Image.Image:
    return Image.new("RGB", (w, h), (value, value, value))


def decode(model, ids) -> str:
    return model.processor.tokenizer.decode(ids, skip_special_tokens=False)


def check_row(model, inputs, row: int, n_images: int, system_text: str | None = None):
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
        assert system.endswith(USER_HEADER[model.adapter.arch]), system
    else:  # Gemma3 merges the system prompt into the user turn, after its header
        assert USER_HEADER[model.adapter.arch] in system and system_text in system, system
    bos = model.processor.tokenizer.bos_token
    if bos:
        assert system.count(bos) <= 1, f"BOS doubled: {system!r}"
    assert (kinds[seg.system.as_slice()] == KIND_SYSTEM).all()
    # Image spans: exactly the placeholder tokens, with h*w tokens each.
    assert len(seg.images) == n_images
    assert int((ids == image_id).sum()) == sum(len(s) for s in seg.images)
    for span in seg.images:
        assert (ids[span.as_slice()] == image_id).all()
        assert len(span) == span.grid[0] * span.grid[1]
        assert (kinds[span.as_slice()] == KIND_IMAGE).all()
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
    elif arch == "mllama":  # the image is read by cross-attention: one <|image|> token
        assert seg.images[0].grid == (1, 1)
        assert decode(model, inputs.input_ids[0, seg.images[0].as_slice()]) == "<|image|>"
    else:
        vc = model.hf_model.config.vision_config
        assert seg.images[0].grid == (vc.image_size // vc.patch_size,) * 2


def test_non_square_image_gives_non_square_grid_on_qwen(model):
    if not model.adapter.arch.startswith("qwen"):
        pytest.skip("Gemma3 and LLaVA-1.5 resize every image to a fixed square grid")
    inputs = model.prepare(images=img(w=128, h=64), prompt=PROMPT)
    (h, w) = check_row(model, inputs, 0, 1).images[0].grid
    assert w > h


def test_two_images_and_system_prompt(model):
    inputs = model.prepare(
        images=[img(value=10), img(value=240)],
        prompt="Left: <image> right: <image> same?",
        system="Be brief.",
    )
    seg = check_row(model, inputs, 0, 2, system_text="Be brief.")
    # The first content item starts right where the system span ends: the text "Left:", or the
    # image where the template moves images first (LLaVA-1.5).
    if model.adapter.arch == "llava":
        assert seg.images[0].start == seg.system.end
    else:
        assert decode(model, inputs.input_ids[0, seg.system.end : seg.system.end + 5]) == "Left:"
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
    if model.adapter.arch == "mllama":
        # Mllama cannot run a batch mixing rows with and without images: MllamaProcessor 5.4
        # refuses it, later releases return aspect ratios for the image rows only.
        with pytest.raises(ValueError, match="at least one image per sample|needs an image"):
            model.prepare(images=[img(value=30), None], prompt=["Count.", "Say hello to me."])
        return
    batch = model.prepare(images=[img(value=30), None], prompt=["Count.", "Say hello to me."])
    check_row(model, batch, 0, 1)
    check_row(model, batch, 1, 0)
    assert batch.segments.samples[1].images == []
