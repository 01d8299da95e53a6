"""What a hook may return: its input's shape, dtype and device, and no new NaN or infinity.

Every hook point checks the tensor a hook hands back before it replaces the model's own
(`vlm_lens.core.hook_points.check_return`); the error names the hook point and both shapes
and dtypes, instead of failing deep inside torch or broadcasting silently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.core.attention import select
from vlm_lens.core.hook_points import HookReturnError, VLMHookPoint, check_return

PROMPT = "How many dots are there in the image? Answer directly. Answer: "


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))


@pytest.fixture(scope="module")
def inputs(model):
    arr = np.full((64, 64), 255, dtype=np.uint8)
    arr[10:20, 30:40] = 0
    return model.prepare(images=[Image.fromarray(arr).convert("RGB")], prompt=PROMPT)


def _run(model, inputs, name, fn):
    with torch.no_grad():
        return model.run_with_hooks(inputs, fwd_hooks=[(name, fn)])


# One hook point of each kind of site: the layer's pre/post hooks, a norm, attention's q/k/v,
# scores, pattern and z, the output projection split by head, the MLP's parts, the projector,
# the embeddings, the final norm, and Qwen3-VL's deepstack addition.
POINTS = [
    "blocks.0.hook_resid_pre",
    "blocks.0.ln1.hook_scale",
    "blocks.0.ln1.hook_normalized",
    "blocks.1.attn.hook_q",
    "blocks.1.attn.hook_v",
    "blocks.1.attn.hook_attn_scores",
    "blocks.1.attn.hook_pattern",
    "blocks.1.attn.hook_z",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.0.mlp.hook_pre",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_mlp_out",
    "blocks.-1.hook_resid_post",
    "blocks.0.hook_deepstack",
    "hook_image_embeds",
    "hook_embed",
    "ln_final.hook_normalized",
]


@pytest.mark.parametrize("name", POINTS)
def test_a_return_of_another_dtype_is_refused_naming_the_point_and_both_dtypes(model, inputs, name):
    canonical = model.resolve_hook_name(name)
    with pytest.raises(HookReturnError, match=rf"{canonical}.*float64.*float32"):
        _run(model, inputs, name, lambda t, hook: t.double())


@pytest.mark.parametrize("name", POINTS)
def test_a_nan_where_the_input_was_finite_is_refused(model, inputs, name):
    def poison(t, hook):
        t = t.clone()
        t.view(-1)[0] = float("nan")
        return t

    with pytest.raises(HookReturnError, match=rf"{model.resolve_hook_name(name)}.*1 NaN"):
        _run(model, inputs, name, poison)


def test_a_pattern_that_would_broadcast_is_refused_and_only_the_check_stops_it(model, inputs):
    def one_head(pattern, hook):  # [b, 1, q, k]: pattern @ v would broadcast over the heads
        return pattern[:, :1]

    n_heads = model.cfg.n_heads
    with pytest.raises(HookReturnError, match=rf"\[1, 1, \d+, \d+\].*\[1, {n_heads}, \d+, \d+\]"):
        _run(model, inputs, "blocks.0.attn.hook_pattern", one_head)
    VLMHookPoint.check_returns = False
    try:  # the model itself would accept it without a word
        logits = _run(model, inputs, "blocks.0.attn.hook_pattern", one_head)
    finally:
        VLMHookPoint.check_returns = True
    assert torch.isfinite(logits).all()


def test_shape_device_and_type_are_checked(model, inputs):
    name = "blocks.0.hook_resid_post"
    with pytest.raises(
        HookReturnError, match=r"\[1, \d+, \d+\] .* for an input of \[1, \d+, \d+\]"
    ):
        _run(model, inputs, name, lambda t, hook: t[:, :-1])
    with pytest.raises(HookReturnError, match="on meta for an input of .* on cpu"):
        _run(model, inputs, name, lambda t, hook: t.to("meta"))
    with pytest.raises(HookReturnError, match="returned a tuple; return a tensor or None"):
        _run(model, inputs, name, lambda t, hook: (t,))


def test_a_row_selective_hook_is_checked_before_its_rows_are_written_back(model, inputs):
    def wrong(pattern, hook):  # [b, head, rows, key] -> an extra row
        return torch.cat([pattern, pattern], dim=2)

    with pytest.raises(
        HookReturnError,
        match=r"blocks.0.attn.hook_pattern' returned \[1, \d+, 2, \d+\] .* of \[1, \d+, 1, \d+\]",
    ):
        _run(model, inputs, "blocks.0.attn.hook_pattern", select(wrong, rows="answer"))


def test_valid_edits_pass_masking_with_minus_inf_included(model, inputs):
    with torch.no_grad():
        clean = model(inputs)
    same = _run(model, inputs, "blocks.0.attn.hook_pattern", lambda p, hook: p * 1.0)
    assert torch.allclose(same, clean, atol=1e-5)  # explicit attention instead of SDPA

    def mask_first_key(scores, hook):  # TransformerLens's way to knock out a key
        scores = scores.clone()
        scores[..., 1:, 0] = float("-inf")
        return scores

    masked = _run(model, inputs, "blocks.0.attn.hook_attn_scores", mask_first_key)
    assert torch.isfinite(masked).all() and not torch.equal(masked, clean)
    with pytest.raises(HookReturnError, match="hook_attn_scores.*NaN/infinite"):
        _run(model, inputs, "blocks.0.attn.hook_attn_scores", lambda s, hook: s + float("inf"))


def test_non_finite_values_already_in_the_input_may_stay():
    given = torch.tensor([1.0, float("inf"), float("nan")])
    check_return("x", given, given.clone())
    check_return("x", given, given * 2)
    with pytest.raises(HookReturnError, match="1 NaN/infinite values .* index \\(0,\\)"):
        check_return("x", given, torch.tensor([float("nan"), 1.0, 2.0]))
    # a finite tensor whose float32 sum overflows is still finite
    huge = torch.full((4,), 3e38)
    check_return("x", huge, huge.clone())
