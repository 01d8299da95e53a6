"""Real vocabularies, chat templates and processor settings: `prepare` sees what users see.

The checkpoints are tiny (random weights, two layers) but tokenize, render prompts and count
image tokens like Qwen3-VL, Qwen2.5-VL, Qwen2-VL, gemma-3-it and llava-1.5-7b-hf
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
from vlm_lens.core.prepare import _system_length
from vlm_lens.core.segments import KIND_IMAGE, KIND_PAD, KIND_SYSTEM, KIND_TEXT
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
    if arch == "qwen3_vl":
        turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return turn + "<|im_start|>user\n"
    if arch in QWEN:  # Qwen2-VL / 2.5-VL add a default system turn
        return f"<|im_start|>system\n{system or 'You are a helpful assistant.'}<|im_end|>\n<|im_start|>user\n"
    if arch == "gemma3":  # the system text opens the first user turn
        return "<bos><start_of_turn>user\n" + (f"{system}\n\n" if system else "")
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
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
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
        with_image, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
    )
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
    text, out = hf_reference(model, c, image)
    inputs = model.prepare(images=image, prompt=c.prompt, system=c.system)
    assert inputs.texts == [text]
    assert set(inputs.tensors) == set(out.keys())
    for name in out:
        assert torch.equal(inputs[name], out[name]), name


def expected_kinds(tokenizer, ids, attention, text: str, head: str, image_id: int):
    """Kinds derived from the ids alone: padding where masked, image where the image token is,
    system for the leading tokens whose text lies wholly in the header, text elsewhere."""
    assert text.startswith(head), (text, head)
    kinds = torch.full_like(ids, KIND_TEXT)
    n_pad = int((attention == 0).sum())
    kinds[:n_pad] = KIND_PAD
    kinds[ids == image_id] = KIND_IMAGE
    start = n_pad
    bos = tokenizer.bos_token
    if bos and not text.startswith(bos) and int(ids[n_pad]) == tokenizer.bos_token_id:
        start += 1  # the tokenizer's own BOS, before the rendered text
    end = start
    while end < len(ids) and head.startswith(tokenizer.decode(ids[start : end + 1].tolist())):
        end += 1
    kinds[n_pad:end] = KIND_SYSTEM
    return kinds


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_segment_kinds_follow_from_the_ids(hooked, arch, case):
    model, c = hooked(arch), CASES[case]
    inputs = model.prepare(images=picture(448, 448), prompt=c.prompt, system=c.system)
    image_id = model.adapter.image_token_id(model.hf_model.config)
    want = expected_kinds(
        model.processor.tokenizer,
        inputs.input_ids[0],
        inputs.attention_mask[0],
        inputs.texts[0],
        header(arch, c.system),
        image_id,
    )
    assert torch.equal(inputs.segments.kinds[0], want)
    seg = inputs.segments.samples[0]
    assert len(seg.system) > 0 and seg.system.end <= seg.images[0].start


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
    elif arch == "gemma3":
        got["size"] = (images.size["height"], images.size["width"])
        got["image_seq_length"] = processor.image_seq_length
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
    "mllama": {(1024, 1024): (1, 1), (1024, 640): (1, 1)},  # one <|image|> token
}
# Mllama's image keys: both sizes fit a 2 x 2 canvas of 560 px tiles (the smallest upscale),
# 40 x 40 patches each, stitched to 80 x 80.
MLLAMA_KEY_GRIDS = {(1024, 1024): (80, 80), (1024, 640): (80, 80)}


@pytest.mark.parametrize("size", [(1024, 1024), (1024, 640)])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_image_grid_matches_the_real_processor(hooked, arch, size):
    model = hooked(arch)
    inputs = model.prepare(images=picture(*size), prompt=QUESTION)
    span = inputs.segments.samples[0].images[0]
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
