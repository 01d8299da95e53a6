"""PaliGemma 2: the prefix-LM mask, Gemma 2's soft-capping and sliding window, its prompt
layout (no chat template) and the count study end to end.

The registry-parametrized files cover the rest (HF parity of logits, the hand-computed pattern
edit, per-step generation, segments of one/two images and a padded batch, real vocabulary).
Here: what is particular to PaliGemma, checked against HF's eager attention on a tiny
checkpoint whose soft-cap and window are small enough to bite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.core.generation import AttentionRecord, generation_config
from vlm_lens.core.segments import KIND_IMAGE, KIND_TEXT
from vlm_lens.patching import with_answer_prefix
from vlm_lens.zoo import tiny_checkpoint

PROMPT = "How many dots are there? Answer: "
WINDOW = 8


def picture(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def biting(tmp_path_factory):
    """A tiny PaliGemma 2 whose soft-cap (2.0) and sliding window (8 tokens) change the
    result, with an HF eager twin loaded from the same directory."""
    path = tiny_checkpoint(
        "paligemma",
        tmp_path_factory.mktemp("paligemma_biting"),
        text_config={
            "attn_logit_softcapping": 2.0,
            "final_logit_softcapping": 5.0,
            "sliding_window": WINDOW,
        },
    )
    eager = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        path, attn_implementation="eager"
    ).eval()
    return HookedVLM.from_pretrained(path), eager


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return HookedVLM.from_pretrained(tiny_ckpt("paligemma"))


def teacher_forced_batch(model: HookedVLM):
    """A left-padded batch with two answer tokens appended: prefix (0) and suffix (1) rows."""
    inputs = model.prepare(images=[picture(0), picture(1)], prompt=[PROMPT, "Count: "])
    return with_answer_prefix(inputs, model.to_tokens("42", move_to_device=False)[0])


def test_teacher_forced_answer_is_the_causal_suffix(model):
    inputs = teacher_forced_batch(model)
    types = inputs["token_type_ids"]
    assert (types[:, :-2] == 0).all() and (types[:, -2:] == 1).all()
    assert inputs.appended["token_type_ids"] == 1


def test_patterns_and_logits_equal_hf_eager_with_softcap_window_and_prefix(biting):
    """Every layer's hook_pattern equals HF eager's attention weights (prefix both ways, answer
    causal, sliding layers windowed, scores soft-capped), and the logits match."""
    model, eager = biting
    text = model.hf_model.config.text_config
    assert text.layer_types[:2] == ["sliding_attention", "full_attention"]
    inputs = teacher_forced_batch(model)
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: "hook_pattern" in n)
        ref = eager(**inputs.tensors, output_attentions=True)
    real = inputs.attention_mask.bool()  # [batch, pos]; padded query rows are not compared
    assert (logits - ref.logits)[real].abs().max().item() <= 1e-5
    for layer, hf_pattern in enumerate(ref.attentions):
        ours = cache[f"blocks.{layer}.attn.hook_pattern"]
        diff = (ours - hf_pattern).abs().amax(dim=(1, 3))  # [batch, query]
        assert diff[real].max().item() <= 1e-5, f"layer {layer}"

    # What the mask is: row 0 has no padding. The prefix (image, BOS, prompt, "\n") sees itself
    # both ways, the two answer tokens only what precedes them.
    n = inputs.input_ids.shape[1]
    prefix = inputs["token_type_ids"][0] == 0
    full = cache["blocks.1.attn.hook_pattern"][0]  # [head, query, key], a global layer
    later = torch.ones(n, n, dtype=torch.bool).triu(1)  # key after query
    assert (full[:, later & prefix[:, None] & prefix[None, :]] > 0).all()
    assert (full[:, later & ~prefix[:, None]] == 0).all()
    assert (full[:, prefix[:, None] & ~prefix[None, :]] == 0).all(), "prefix sees no answer"
    # The sliding layer: an answer row sees only the last WINDOW positions.
    sliding = cache["blocks.0.attn.hook_pattern"][0]
    last = n - 1
    assert (sliding[:, last, : last - WINDOW + 1] == 0).all()
    assert (sliding[:, last, last - WINDOW + 1 : last + 1] > 0).all()
    assert (full[:, last, : last - WINDOW + 1] > 0).all()


def test_softcap_is_applied(biting):
    """Without the soft-cap (same weights) the logits move: the parity above is not vacuous."""
    model, _ = biting
    inputs = model.prepare(images=[picture(2)], prompt=PROMPT)
    attns = [layer.self_attn for layer in model.hf_model.model.language_model.layers]
    with torch.no_grad():
        capped = model(inputs)
        try:
            for attn in attns:
                attn.attn_logit_softcapping = None
            uncapped = model(inputs)
        finally:
            for attn in attns:
                attn.attn_logit_softcapping = 2.0
    assert (capped - uncapped).abs().max().item() > 1e-3


def test_generation_step_logits_equal_teacher_forcing(biting):
    """Decoding step k (HF's generate, KV cache, sliding cache) equals the forward of the prompt
    plus the first k generated tokens as the causal suffix (`with_answer_prefix`)."""
    model, eager = biting
    inputs = model.prepare(images=[picture(3)], prompt=PROMPT)
    steps: list[int] = []
    out = model.generate(
        inputs,
        max_new_tokens=4,
        min_new_tokens=4,
        fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: steps.append(hook.run.step))],
    )
    assert steps == [0, 1, 2, 3]
    with torch.no_grad():
        ref = eager.generate(**inputs.tensors, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(out.sequences, ref)
    for k in range(4):
        forced = with_answer_prefix(inputs, out.tokens[0, :k])
        with torch.no_grad():
            last = model(forced, logits_to_keep=1)[0, -1]
        assert (last - out.logits[k, 0]).abs().max().item() <= 1e-4, f"step {k}"


def test_prompt_layout_image_first_then_bos_prompt_newline(model):
    inputs = model.prepare(images=[picture(4)], prompt="How many?")
    tok = model.processor.tokenizer
    image_id = model.hf_model.config.image_token_id
    assert model.processor.chat_template is None  # as the real checkpoints
    assert inputs.texts == ["<image>How many?"]
    expected = (
        [image_id] * 16
        + [tok.bos_token_id]
        + tok("How many?\n", add_special_tokens=False)["input_ids"]
    )
    assert inputs.input_ids[0].tolist() == expected
    seg = inputs.segments.samples[0]
    assert (seg.system.start, seg.system.end) == (0, 0)
    assert (seg.images[0].start, seg.images[0].end, seg.images[0].grid) == (0, 16, (4, 4))
    assert [(s.start, s.end) for s in seg.text] == [(16, len(expected))]
    kinds = inputs.segments.kinds[0]
    assert (kinds[:16] == KIND_IMAGE).all() and (kinds[16:] == KIND_TEXT).all()
    assert (inputs["token_type_ids"] == 0).all() and "labels" not in inputs.tensors
    # The raw path (the processor's own placeholder) gives the same inputs.
    raw = model.prepare(images=[picture(4)], prompt="<image>How many?", chat_template=False)
    assert raw.tensors.keys() == inputs.tensors.keys()
    assert all(torch.equal(raw[k], inputs[k]) for k in inputs.tensors)
    # An image placed inside the prompt goes first, where PaliGemma saw it in training.
    moved = model.prepare(images=[picture(4)], prompt="How <image>many?")
    assert moved.texts == ["<image>How many?"]


def test_no_system_prompt_and_no_text_only_prompt(model):
    with pytest.raises(ValueError, match="no system prompt"):
        model.prepare(images=[picture(5)], prompt="How many?", system="Be brief.")
    with pytest.raises(ValueError, match="needs an image in every prompt"):
        model.prepare(images=None, prompt="How many?")


def test_real_vocabulary_layout(real_vocab_ckpt):
    """paligemma2-*-224 with the real tokenizer: 256 x <image> (257152), BOS, the prompt and
    "\\n" (108), no BOS before the image."""
    model = HookedVLM.from_pretrained(real_vocab_ckpt("paligemma"))
    tok = model.processor.tokenizer
    assert len(tok) == 257_153 and model.hf_model.config.text_config.vocab_size == 257_216
    inputs = model.prepare(images=[picture(6, 300)], prompt=PROMPT)
    ids = inputs.input_ids[0].tolist()
    assert ids == [257_152] * 256 + [2] + tok(PROMPT + "\n", add_special_tokens=False)["input_ids"]
    assert ids[-1] == 108
    seg = inputs.segments.samples[0]
    assert len(seg.system) == 0 and seg.images[0].grid == (16, 16)
    assert seg.text[0].start == 256  # BOS starts the text


def test_count_study_runs_end_to_end(tiny_ckpt, tmp_path):
    from vlm_lens.cli import main

    argv = [
        "count",
        "--model",
        str(tiny_ckpt("paligemma")),
        "--n",
        "4",
        "--no-png",
        "--no-controls",
    ]
    assert main([*argv, "--no-progress", "--out", str(tmp_path)]) == 0
    (run,) = [p for p in tmp_path.iterdir() if (p / "run.json").exists()]
    assert len((run / "samples.jsonl").read_text().splitlines()) == 4
    assert (tmp_path / "report.html").exists()


def test_recording_past_the_sliding_window_equals_hf_attentions(biting):
    """Once the prompt is longer than the window, a sliding layer's decoding-step pattern holds
    only the window's keys (HF's sliding cache drops the rest): the recording keeps them at their
    absolute positions, NaN before, and equals HF eager's attention weights."""
    model, eager = biting
    inputs = model.prepare(images=[picture(7)], prompt=PROMPT)
    prompt_len = inputs.input_ids.shape[1]
    sliding = [t == "sliding_attention" for t in model.hf_model.config.text_config.layer_types]
    out = model.generate(
        inputs, max_new_tokens=3, min_new_tokens=3, record=AttentionRecord(keep=("full", "image"))
    )
    config = generation_config(model, 3, min_new_tokens=3, output_attentions=True)
    with torch.no_grad():
        ref = eager.generate(**inputs.tensors, generation_config=config)
    assert torch.equal(out.sequences, ref.sequences)
    for step in range(3):
        full = out.recording.full[step][0, :, :, 0]  # [layer, head, key]
        assert full.shape[-1] == prompt_len + step
        for layer, hf in enumerate(ref.attentions[step]):
            hf_row = hf[0, :, -1]  # [head, key held]
            held = hf_row.shape[-1]
            if step and sliding[layer]:  # past the window
                assert held < prompt_len and torch.isnan(full[layer, :, :-held]).all()
            else:
                assert held == prompt_len + step
            torch.testing.assert_close(full[layer, :, -held:], hf_row, atol=1e-5, rtol=0)
        # the image keys left the sliding layers' window: NaN there, numbers in the global ones
        image = out.recording.image[step][0, :, :, 0]  # [layer, head, image key]
        for layer, is_sliding in enumerate(sliding):
            assert bool(torch.isnan(image[layer]).all()) == (is_sliding and step > 0)
            assert bool(torch.isnan(image[layer]).any()) == (is_sliding and step > 0)
