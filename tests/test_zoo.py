"""vlm_lens.zoo: tiny checkpoints load through the real HF path and behave like the real models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from vlm_lens.architectures import get
from vlm_lens.architectures.paligemma import LOC_SEG_TOKENS
from vlm_lens.zoo import ARCHITECTURES, CHARSET, build_char_tokenizer, tiny_checkpoint
from vlm_lens.zoo.tiny import MARKER_FILE

MODEL_CLASS = {
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "mllama": "MllamaForConditionalGeneration",
}
PROCESSOR_CLASS = {
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen2_vl": "Qwen2VLProcessor",
    "gemma3": "Gemma3Processor",
    "llava": "LlavaProcessor",
    "llava_onevision": "LlavaOnevisionProcessor",
    "internvl": "InternVLProcessor",
    "paligemma": "PaliGemmaProcessor",
    "idefics3": "Idefics3Processor",
    "mllama": "MllamaProcessor",
}
ARCH_OF_PROCESSOR = {name: arch for arch, name in PROCESSOR_CLASS.items()}
QWEN = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")


def noise_image(seed: int, height: int = 64, width: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def user_turn(*items: str) -> list[dict]:
    """A user message; an item "<img>" is an image, anything else a text item."""
    content = [{"type": "image"} if x == "<img>" else {"type": "text", "text": x} for x in items]
    return [{"role": "user", "content": content}]


def image_token_id(config) -> int:
    return config.image_token_id  # Gemma3/LLaVA map it to image_token_index


def expected_image_tokens(arch: str, config, inputs, processor=None) -> int:
    """How many image placeholder tokens the model will look for, from config + processor."""
    if arch in QWEN:
        merge = config.vision_config.spatial_merge_size
        return int(inputs["image_grid_thw"].prod(-1).sum()) // merge**2
    if arch == "idefics3":  # every tile (zero tiles pad the prompts' lists) is one sequence
        pixels = inputs["pixel_values"]  # [prompts, tiles, 3, H, W]
        side = config.vision_config.image_size // config.vision_config.patch_size
        tiles = int((pixels != 0).flatten(2).any(-1).sum())
        return tiles * (side // config.scale_factor) ** 2
    if arch == "mllama":  # one <|image|> per image; pixel_values [batch, images, tiles, 3, H, W]
        return inputs["pixel_values"].shape[0] * inputs["pixel_values"].shape[1]
    n_images = inputs["pixel_values"].shape[0]  # [images, 3, H, W]
    if arch == "llava_onevision":  # the adapter's layout: tiles and image-newlines
        sizes = [tuple(hw) for hw in inputs["image_sizes"].tolist()]
        layouts = get(arch).adapter.image_layouts(config, processor, inputs, sizes)
        return sum(p if isinstance(p, int) else p.length for lay in layouts for p in lay)
    if arch == "gemma3":
        return n_images * config.mm_tokens_per_image
    if arch == "internvl":  # one pixel_values entry per tile (thumbnails included)
        return n_images * config.image_seq_length
    if arch == "paligemma":
        return n_images * config.text_config.num_image_tokens
    return n_images * config.image_seq_length


@pytest.fixture(scope="module", params=ARCHITECTURES)
def loaded(request, tiny_ckpt):
    arch = request.param
    path = tiny_ckpt(arch)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return arch, path, processor, model


def render(processor, messages) -> str:
    """The prompt as vlm_lens renders it: the processor's chat template, or the architecture's
    prompt template where the checkpoint has none (PaliGemma)."""
    own = {}
    if processor.chat_template is None:
        own["chat_template"] = get(
            ARCH_OF_PROCESSOR[type(processor).__name__]
        ).adapter.prompt_template
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **own
    )


def encode(processor, messages, images):
    return processor(text=[render(processor, messages)], images=images, return_tensors="pt")


# ------------------------------------------------------------------------------------------
# Loading through the real path
# ------------------------------------------------------------------------------------------


def test_loads_through_real_from_pretrained(loaded):
    arch, path, processor, model = loaded
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == arch
    assert type(processor).__name__ == PROCESSOR_CLASS[arch]
    assert type(model).__name__ == MODEL_CLASS[arch]
    concrete = getattr(transformers, MODEL_CLASS[arch]).from_pretrained(path)
    assert type(concrete).__name__ == MODEL_CLASS[arch]
    assert AutoTokenizer.from_pretrained(path)("12") is not None
    text = config.text_config
    assert text.num_hidden_layers >= 2
    assert text.hidden_size <= 64
    # Mllama's head stops before <|image|>, the one token past its vocabulary (as in the real
    # checkpoints: 128256 vs 128257).
    assert text.vocab_size == len(processor.tokenizer) - (arch == "mllama")
    # characters and special tokens (PaliGemma's also hold its <loc>/<seg> tokens, Idefics3's
    # its <row_1_col_1> .. <row_6_col_6> tags)
    extra = {"paligemma": len(LOC_SEG_TOKENS), "idefics3": 36}.get(arch, 0)
    assert 90 < len(processor.tokenizer) - extra <= 140
    assert model.dtype == torch.float32


def test_special_token_ids_match_tokenizer(loaded):
    arch, _, processor, model = loaded
    tok, config = processor.tokenizer, model.config
    ids = tok.convert_tokens_to_ids
    text = config.text_config
    if arch in QWEN:
        assert config.image_token_id == ids("<|image_pad|>") == processor.image_token_id
        assert config.video_token_id == ids("<|video_pad|>")
        assert config.vision_start_token_id == ids("<|vision_start|>")
        assert config.vision_end_token_id == ids("<|vision_end|>")
        assert text.eos_token_id == ids("<|im_end|>") == tok.eos_token_id
        assert text.pad_token_id == ids("<|endoftext|>") == tok.pad_token_id
        rope = text.rope_parameters
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        assert sum(rope["mrope_section"]) == head_dim // 2  # PITFALLS 5
    elif arch == "gemma3":
        assert config.image_token_id == ids("<image_soft_token>") == tok.image_token_id
        assert config.boi_token_id == ids("<start_of_image>") == tok.boi_token_id
        assert config.eoi_token_id == ids("<end_of_image>") == tok.eoi_token_id
        assert (text.pad_token_id, text.eos_token_id, text.bos_token_id) == (0, 1, 2)
        assert processor.image_seq_length == config.mm_tokens_per_image == 4
    elif arch == "llava_onevision":
        assert config.image_token_id == ids("<image>") == processor.image_token_id
        assert config.video_token_id == ids("<video>") == processor.video_token_id
        assert text.eos_token_id == ids("<|im_end|>") == tok.eos_token_id
        assert text.pad_token_id == ids("<|endoftext|>") == tok.pad_token_id
        # The thumbnail's token count, and the detail grid's limit, as the model reads them.
        side = config.vision_config.image_size // config.vision_config.patch_size
        assert processor.num_image_tokens == side * side == 16
        assert processor.vision_aspect_ratio == config.vision_aspect_ratio == "anyres_max_9"
        assert processor.image_processor.image_grid_pinpoints == config.image_grid_pinpoints
    elif arch == "internvl":
        assert config.image_token_id == ids("<IMG_CONTEXT>") == processor.image_token_id
        assert processor.start_image_token_id == ids("<img>")
        assert processor.end_image_token_id == ids("</img>")
        assert text.eos_token_id == ids("<|im_end|>") == tok.eos_token_id
        assert text.pad_token_id == ids("<|endoftext|>") == tok.pad_token_id
        # 32 px tiles of 8 x 8 patches, pixel-shuffled to 4 x 4 tokens, as the model reads them.
        assert processor.image_seq_length == config.image_seq_length == 16
        assert config.vision_config.image_size == [32, 32]
        image_processor = processor.image_processor
        assert image_processor.crop_to_patches is True
        assert (image_processor.size.height, image_processor.size.width) == (32, 32)
    elif arch == "paligemma":
        assert config.image_token_id == ids("<image>") == processor.image_token_id
        assert ids(["<loc0000>", "<seg127>"]) == [len(tok) - 1153, len(tok) - 2]  # as real ones
        assert (text.pad_token_id, text.eos_token_id, text.bos_token_id) == (0, 1, 2)
        assert processor.image_seq_length == text.num_image_tokens == 16
        assert text.attn_logit_softcapping == 50.0 and text.final_logit_softcapping == 30.0
        assert "sliding_attention" in text.layer_types and "full_attention" in text.layer_types
    elif arch == "idefics3":
        assert config.image_token_id == ids("<image>") == processor.image_token_id
        assert processor.fake_image_token_id == ids("<fake_token_around_image>")
        assert processor.global_image_token_id == ids("<global-img>")
        assert processor.row_col_ids[0] == ids("<row_1_col_1>") != tok.unk_token_id
        assert text.bos_token_id == ids("<|begin_of_text|>") == tok.bos_token_id
        assert text.eos_token_id == ids("<end_of_utterance>") == tok.eos_token_id
        assert text.pad_token_id == ids("<|reserved_special_token_0|>") == tok.pad_token_id
        # 8 x 8 patches a tile, pixel-shuffled by 2: 16 tokens a tile.
        assert processor.image_seq_len == 16 and config.scale_factor == 2
    elif arch == "mllama":
        assert config.image_token_index == ids("<|image|>") == processor.image_token_id
        assert config.image_token_index == text.vocab_size  # one past the head's vocabulary
        assert (text.bos_token_id, text.eos_token_id) == (
            ids("<|begin_of_text|>"),
            ids("<|eot_id|>"),
        )
        assert text.pad_token_id == ids("<|finetune_right_pad_id|>") == tok.pad_token_id
        assert text.cross_attention_layers == [1, 3]
    else:
        assert config.image_token_index == ids("<image>") == processor.image_token_id
        assert (text.bos_token_id, text.eos_token_id) == (ids("<s>"), ids("</s>"))
        assert text.pad_token_id == ids("<pad>") == tok.pad_token_id
        assert processor.num_additional_image_tokens == 1
        assert processor.patch_size == config.vision_config.patch_size
        assert config.image_seq_length == 16
    gen = model.generation_config
    assert tok.eos_token_id in (
        gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    )
    assert gen.do_sample is False


# ------------------------------------------------------------------------------------------
# Chat templates
# ------------------------------------------------------------------------------------------

RENDERED = {
    "qwen3_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "gemma3": "<bos><start_of_turn>user\n<start_of_image>How many?<end_of_turn>\n<start_of_turn>model\n",
    "llava": "USER: <image>\nHow many? ASSISTANT:",
    "llava_onevision": "<|im_start|>user <image>\nHow many?<|im_end|><|im_start|>assistant\n",
    "internvl": "<|im_start|>user\n<IMG_CONTEXT>\nHow many?<|im_end|>\n<|im_start|>assistant\n",
    "idefics3": "<|begin_of_text|>User:<image>How many?<end_of_utterance>\nAssistant:",
    "mllama": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>How many?"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
}
RENDERED["qwen2_vl"] = RENDERED["qwen2_5_vl"]

RENDERED_WITH_SYSTEM = {
    "qwen3_vl": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": "<bos><start_of_turn>user\nBe brief.\n\n<start_of_image>How many?<end_of_turn>\n"
    "<start_of_turn>model\n",
    "llava": "Be brief. USER: <image>\nHow many? ASSISTANT:",
    "llava_onevision": "<|im_start|>system \nBe brief.<|im_end|><|im_start|>user <image>\n"
    "How many?<|im_end|><|im_start|>assistant\n",
    "internvl": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\n"
    "How many?<|im_end|>\n<|im_start|>assistant\n",
    "idefics3": "<|begin_of_text|>System: Be brief.<end_of_utterance>\nUser:<image>How many?"
    "<end_of_utterance>\nAssistant:",
    # The real Llama-3.2-Vision-Instruct template refuses a system turn with images; the zoo's
    # renders it as a Llama-3 system turn.
    "mllama": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<|image|>How many?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
}
RENDERED_WITH_SYSTEM["qwen2_5_vl"] = RENDERED_WITH_SYSTEM["qwen2_vl"] = RENDERED_WITH_SYSTEM[
    "qwen3_vl"
]


def test_chat_template_renders_like_the_real_one(loaded):
    arch, _, processor, _ = loaded
    if arch == "paligemma":
        pytest.skip("no chat template, as the real checkpoints (tests/test_paligemma.py)")
    messages = user_turn("<img>", "How many?")
    render = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert render == RENDERED[arch]
    system = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]
    render = processor.apply_chat_template(
        system + messages, add_generation_prompt=True, tokenize=False
    )
    assert render == RENDERED_WITH_SYSTEM[arch]
    # the tokenizer carries the same template, and string contents work too
    as_string = [{"role": "user", "content": "Hi"}]
    assert processor.tokenizer.apply_chat_template(
        as_string, add_generation_prompt=True, tokenize=False
    ) == processor.apply_chat_template(as_string, add_generation_prompt=True, tokenize=False)


def test_chat_template_multi_turn(loaded):
    arch, _, processor, _ = loaded
    if arch == "paligemma":
        pytest.skip("no chat template, as the real checkpoints (tests/test_paligemma.py)")
    messages = [
        *user_turn("<img>", "Red?"),
        {"role": "assistant", "content": [{"type": "text", "text": "Yes"}]},
        *user_turn("Sure?"),
    ]
    render = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if arch in (*QWEN, "internvl"):
        assert render.endswith(
            "<|im_start|>assistant\nYes<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"
        )
    elif arch == "gemma3":
        assert render.endswith(
            "<start_of_turn>model\nYes<end_of_turn>\n<start_of_turn>user\nSure?<end_of_turn>\n"
            "<start_of_turn>model\n"
        )
    elif arch == "llava_onevision":
        assert render == (
            "<|im_start|>user <image>\nRed?<|im_end|><|im_start|>assistant \nYes<|im_end|>"
            "<|im_start|>user \nSure?<|im_end|><|im_start|>assistant\n"
        )
    elif arch == "idefics3":  # ":" after the role when the turn opens with an image
        assert render == (
            "<|begin_of_text|>User:<image>Red?<end_of_utterance>\nAssistant: Yes<end_of_utterance>"
            "\nUser: Sure?<end_of_utterance>\nAssistant:"
        )
    elif arch == "mllama":
        assert render.endswith(
            "<|start_header_id|>assistant<|end_header_id|>\n\nYes<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nSure?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    else:
        assert render == "USER: <image>\nRed? ASSISTANT: Yes USER: Sure? ASSISTANT:"


# ------------------------------------------------------------------------------------------
# Processor -> model
# ------------------------------------------------------------------------------------------


def test_image_tokens_match_and_forward_runs(loaded):
    arch, _, processor, model = loaded
    inputs = encode(processor, user_turn("<img>", "How many dots? Answer: "), [noise_image(0)])
    ids = inputs["input_ids"]
    n_image = int((ids == image_token_id(model.config)).sum())
    assert n_image == expected_image_tokens(arch, model.config, inputs, processor)
    # LLaVA-OneVision: a 4 x 4 thumbnail, then 2 x 2 crops of 4 x 4 with 8 image-newlines.
    # InternVL: 2 x 2 tiles of 4 x 4 and a 4 x 4 thumbnail; Idefics3: 2 x 2 tiles and the
    # global image, 4 x 4 tokens each.
    # Mllama: one <|image|> token (the image is read by cross-attention).
    n_tokens = {
        "gemma3": 4,
        "llava_onevision": 16 + 8 * 9,
        "internvl": 5 * 16,
        "idefics3": 5 * 16,
        "mllama": 1,
    }
    assert n_image == n_tokens.get(arch, 16)
    if arch in QWEN:
        assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]  # 8x8 patches -> 4x4 merged
        assert "mm_token_type_ids" in inputs
    if arch == "gemma3":
        assert (inputs["token_type_ids"] == 1).sum() == n_image
    with torch.no_grad():
        logits = model(**inputs).logits  # every processor output is forwarded (PITFALLS 4)
    assert logits.shape == (1, ids.shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_generate_runs(loaded):
    _, _, processor, model = loaded
    inputs = encode(processor, user_turn("<img>", "Is it red? "), [noise_image(0)])
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_different_image_changes_logits(loaded):
    _, _, processor, model = loaded
    messages = user_turn("<img>", "How many dots? Answer: ")
    with torch.no_grad():
        a = model(**encode(processor, messages, [noise_image(0)])).logits[0, -1]
        a2 = model(**encode(processor, messages, [noise_image(0)])).logits[0, -1]
        b = model(**encode(processor, messages, [noise_image(1)])).logits[0, -1]
    assert torch.equal(a, a2)
    assert (a - b).abs().max() > 1e-2


def test_two_images_in_one_prompt(loaded):
    arch, _, processor, model = loaded
    messages = user_turn("<img>", "Left? ", "<img>", "Right? ")
    inputs = encode(processor, messages, [noise_image(0), noise_image(1, 64, 96)])
    n_image = int((inputs["input_ids"] == image_token_id(model.config)).sum())
    assert n_image == expected_image_tokens(arch, model.config, inputs, processor)
    if arch in QWEN:
        assert inputs["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 10]]
        assert n_image == 16 + 20
    if arch == "llava_onevision":  # 64 x 96: 2 x 3 crops, 8 x 12 tokens plus 8 newlines
        assert n_image == (16 + 8 * 9) + (16 + 8 * 13)
    if arch == "internvl":  # 64 x 96: 2 x 3 tiles and the thumbnail
        assert n_image == 5 * 16 + 7 * 16
    if arch == "mllama":  # a square image fills one 32 x 32 tile, a 64 x 96 one two side by side
        assert inputs["aspect_ratio_ids"].tolist() == [[1, 2]]  # [1, 1], [1, 2]
        assert inputs["aspect_ratio_mask"].tolist() == [[[1, 0], [1, 1]]]
        # Text rows see the tiles of the latest image before them (HF's cross-attention mask).
        seen = inputs["cross_attention_mask"][0].sum(0).tolist()
        first, second = (inputs["input_ids"][0] == model.config.image_token_index).nonzero()[:, 0]
        assert seen == [[int(second - first), 0], [len(inputs["input_ids"][0]) - int(second)] * 2]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.parametrize("arch", QWEN)
def test_qwen_grid_follows_aspect_ratio(arch, tiny_ckpt):
    processor = AutoProcessor.from_pretrained(tiny_ckpt(arch))
    grids = {}
    for hw in [(64, 64), (64, 96), (96, 64), (500, 300)]:
        out = processor.image_processor(images=[noise_image(0, *hw)], return_tensors="pt")
        grids[hw] = out["image_grid_thw"][0].tolist()
    assert grids[(64, 64)] == [1, 8, 8]
    assert grids[(64, 96)] == [1, 8, 10]  # 4 x 5 merged tokens
    assert grids[(96, 64)] == [1, 10, 8]
    t, h, w = grids[(500, 300)]
    assert h > w and (h // 2) * (w // 2) <= 64  # capped at 64 merged tokens per image


def test_gemma3_image_projection_is_not_zero(tiny_ckpt):
    model = AutoModelForImageTextToText.from_pretrained(tiny_ckpt("gemma3"))
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    assert weight.std() > 0.05  # zero-initialised by HF (PITFALLS 3); the zoo re-draws it


# ------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------


def test_char_tokenizer_is_character_level(loaded):
    _, _, processor, _ = loaded
    tok = processor.tokenizer
    text = "Yes No 2024\nyes no\t~"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character, every digit its own token
    assert tok.convert_ids_to_tokens(ids) == list(text)
    assert tok.decode(ids) == text
    assert tok.unk_token_id not in ids
    for token in tok.all_special_tokens:
        assert tok(token, add_special_tokens=False)["input_ids"] == [
            tok.convert_tokens_to_ids(token)
        ]


def test_build_char_tokenizer_directly(tmp_path):
    tok = build_char_tokenizer(
        leading_special_tokens=("<s>",),
        trailing_special_tokens=("<img>",),
        bos_token="<s>",
        named_special_tokens={"image_token": "<img>"},
        add_bos_token=True,
    )
    assert len(tok) == len(CHARSET) + 3  # + <s>, <img>, <unk>
    assert tok("a<img>b")["input_ids"][0] == tok.bos_token_id == 0
    assert tok.image_token_id == tok.convert_tokens_to_ids("<img>")
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a\n<img>")["input_ids"] == tok("a\n<img>")["input_ids"]
    with pytest.raises(ValueError, match="not among"):
        build_char_tokenizer(bos_token="<bos>")


# ------------------------------------------------------------------------------------------
# Building: reuse, errors, determinism, overrides
# ------------------------------------------------------------------------------------------


def test_second_call_reuses_the_checkpoint(tiny_ckpt, tiny_dir):
    path = tiny_ckpt("qwen2_vl")
    weights = path / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (path / MARKER_FILE).stat().st_mtime_ns)
    assert tiny_checkpoint("qwen2_vl", tiny_dir) == path
    assert path == tiny_dir / "qwen2_vl"
    assert (weights.stat().st_mtime_ns, (path / MARKER_FILE).stat().st_mtime_ns) == before
    assert json.loads((path / MARKER_FILE).read_text())["spec"]["arch"] == "qwen2_vl"


def test_overwrite_and_incomplete_builds_are_rebuilt(tmp_path):
    path = tiny_checkpoint("llava", tmp_path)
    first = (path / "model.safetensors").stat().st_mtime_ns
    (path / MARKER_FILE).unlink()  # an interrupted build has no marker
    assert tiny_checkpoint("llava", tmp_path) == path
    second = (path / "model.safetensors").stat().st_mtime_ns
    assert second != first and (path / MARKER_FILE).exists()
    tiny_checkpoint("llava", tmp_path, overwrite=True)
    assert (path / "model.safetensors").stat().st_mtime_ns != second
    assert [p.name for p in tmp_path.iterdir()] == ["llava"]  # no staging leftovers


def test_unknown_arch_names_the_supported_ones(tmp_path):
    with pytest.raises(ValueError) as info:
        tiny_checkpoint("llama4", tmp_path)
    for arch in ARCHITECTURES:
        assert arch in str(info.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_seed_gives_identical_weights(arch, tiny_ckpt, tmp_path):
    reference = (tiny_ckpt(arch) / "model.safetensors").read_bytes()
    rng_before = torch.random.get_rng_state()
    again = tiny_checkpoint(arch, tmp_path, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    assert (again / "model.safetensors").read_bytes() == reference
    other = tiny_checkpoint(arch, tmp_path, seed=1)
    assert other != again
    assert (other / "model.safetensors").read_bytes() != reference


def test_config_overrides_build_a_bigger_qwen3_vl(tmp_path):
    path = tiny_checkpoint(
        "qwen3_vl",
        tmp_path,
        text_config={"hidden_size": 128, "num_hidden_layers": 2},
        vision_config={"depth": 3},
        image_processor={"size": {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}},
    )
    assert path.name.startswith("qwen3_vl-")
    config = AutoConfig.from_pretrained(path)
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.head_dim) == (128, 2, 32)
    assert sum(text.rope_parameters["mrope_section"]) == 16
    assert config.vision_config.out_hidden_size == 128
    assert config.vision_config.deepstack_visual_indexes == [0, 1, 2]
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    inputs = encode(processor, user_turn("<img>", "Hi"), [noise_image(0)])
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]  # 64x64 fits 2x2 merged tokens
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == len(processor.tokenizer)


def test_inconsistent_overrides_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="mrope_section"):
        tiny_checkpoint(
            "qwen2_vl", tmp_path, text_config={"rope_parameters": {"mrope_section": [1, 1, 1]}}
        )
    with pytest.raises(ValueError, match="mm_tokens_per_image"):
        tiny_checkpoint("gemma3", tmp_path, mm_tokens_per_image=9)


def test_adapter_module_paths_exist_and_the_vision_tower_holds_no_language_layers(loaded):
    from vlm_lens.adapters import adapter_for, get_module

    arch, _, _, model = loaded
    adapter = adapter_for(model.config)
    tower = get_module(model, adapter.vision_tower)
    lm = get_module(model, adapter.language_model)
    get_module(model, adapter.image_embeds_module)
    assert not any(m is lm for m in tower.modules())
    assert any(p.requires_grad for p in tower.parameters())


def test_internvl_tile_arrangement_is_the_processors(tiny_ckpt):
    """The layout recovers each image's tile count from its run of image tokens and the
    arrangement from the processor's rule restricted to that count; both agree with the
    processor's own choice over every allowed count (ties included: a square image of 64 px
    takes 2 x 2 tiles of 32, one of 32 px a single tile and no thumbnail)."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    arch = get("internvl")
    path = tiny_ckpt("internvl")
    processor, config = AutoProcessor.from_pretrained(path), AutoConfig.from_pretrained(path)
    sizes = [(64, 64), (32, 32), (64, 96), (96, 64), (40, 300), (300, 40), (500, 300)]
    images = [noise_image(i, h, w) for i, (h, w) in enumerate(sizes)]
    text = "".join(f"<IMG_CONTEXT>{i}" for i in range(len(images)))
    inputs = dict(processor(text=[text], images=images, return_tensors="pt"))
    layouts = arch.adapter.image_layouts(config, processor, inputs, sizes)
    n_tiles = 0
    for (h, w), layout in zip(sizes, layouts, strict=True):
        cols, rows = get_optimal_tiled_canvas((h, w), (32, 32), 1, 12)
        tiles = [p for p in layout if not isinstance(p, int)]
        assert (layout[0], layout[-1]) == (1, 1)  # <img> ... </img>
        detail = [t for t in tiles if not t.thumbnail]
        assert len(detail) == rows * cols
        assert [t.thumbnail for t in tiles] == [False] * len(detail) + [True] * (len(detail) > 1)
        assert detail[-1].box == ((rows - 1) / rows, (cols - 1) / cols, 1.0, 1.0)
        assert detail[0].box == (0.0, 0.0, 1 / rows, 1 / cols)
        n_tiles += len(tiles)
    # 40 x 300 (7.5): 7 x 1 and 8 x 1 tie, the larger wins (its area stays under twice the
    # image's); 500 x 300 (0.6): 2 columns x 3 rows (3 x 5 would be 15 > 12 tiles).
    assert [len(lay) - 2 for lay in layouts] == [5, 1, 7, 7, 9, 9, 7]
    assert n_tiles == inputs["pixel_values"].shape[0]
    with pytest.raises(ValueError, match="8 images but 7 runs"):
        arch.adapter.image_layouts(config, processor, inputs, sizes + [(64, 64)])
