"""nnsight sees and patches the same hook points, step by step, as TransformerLens-style hooks."""

from __future__ import annotations

import operator

import nnsight
import numpy as np
import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.architectures import newest_per_family
from vlm_lens.core.generation import AttentionRecord

PROMPT = "How many dots are there in the image? Answer directly. Answer: "
N_NEW, STEP = 4, 2


def dots_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((64, 64), 255, dtype=np.uint8)
    for _ in range(5):
        y, x = rng.integers(4, 60, size=2)
        arr[y - 3 : y + 3, x - 3 : x + 3] = rng.integers(0, 40)
    return Image.fromarray(arr).convert("RGB")


@pytest.fixture(scope="module", params=newest_per_family())
def wrapped(request, tiny_ckpt):
    # Its own model instance: nnsight instruments the HF modules in place.
    model = HookedVLM.from_pretrained(tiny_ckpt(request.param))
    return model, model.to_nnsight()


def drop_image_at(step: int, image_keys: torch.Tensor):
    """TransformerLens-style: zero the image columns at one step and renormalise."""

    def hook(pattern, hook):
        if hook.run.step != step:
            return pattern
        pattern = pattern.masked_fill(image_keys[: pattern.shape[-1]], 0.0)
        return pattern / pattern.sum(-1, keepdim=True)

    return hook


def _layers(nn, model):
    """The decoder layers' envoy, by the adapter's module path (e.g. `nn.model.language_model.layers`)."""
    a = model.adapter
    return operator.attrgetter(f"{a.language_model}.{a.layers}")(nn)


def test_hook_points_are_reachable_by_module_path(wrapped):
    model, nn = wrapped
    a, last = model.adapter, model.cfg.n_layers - 1
    path = nn.hook_path("blocks.-1.attn.hook_pattern")
    assert path == f"{a.language_model}.{a.layers}.{last}.{a.attention}.hook_pattern"
    hook_point = model.hook_dict[f"blocks.{last}.attn.hook_pattern"]
    assert nn.hook("blocks.-1.attn.hook_pattern")._module is hook_point
    layer = _layers(nn, model)[-1]
    assert getattr(layer, a.attention).hook_pattern._module is hook_point


def test_reading_hook_pattern_per_step_equals_recording(wrapped):
    model, nn = wrapped
    inputs = model.prepare(images=[dots_image(0)], prompt=PROMPT)
    prompt_len = inputs.input_ids.shape[1]
    layer = model.cfg.n_layers - 1
    with nn.generate(inputs, max_new_tokens=N_NEW, min_new_tokens=N_NEW) as tracer:
        patterns = nnsight.save([])
        for _ in tracer.iter[:N_NEW]:
            patterns.append(
                getattr(
                    _layers(nn, model)[layer], model.adapter.attention
                ).hook_pattern.output.save()
            )
        result = tracer.result.save()

    assert [tuple(p.shape) for p in patterns] == [
        (1, model.cfg.n_heads, prompt_len if s == 0 else 1, prompt_len + s) for s in range(N_NEW)
    ]
    record = AttentionRecord(layers=layer, steps=[STEP], keep=("full",))
    ref = model.generate(inputs, max_new_tokens=N_NEW, min_new_tokens=N_NEW, record=record)
    torch.testing.assert_close(patterns[STEP], ref.recording.full[STEP][:, 0], atol=1e-5, rtol=0)
    assert torch.equal(result.tokens, ref.tokens)
    # the run forced the hook points only while it ran
    assert not any(hp.force for hp in model.hook_dict.values())


def test_patching_hook_pattern_at_step_2_equals_tensorlens_style_hook(wrapped):
    model, nn = wrapped
    inputs = model.prepare(images=[dots_image(1)], prompt=PROMPT)
    image_keys = inputs.segments.mask("image", inputs.input_ids.shape[1] + N_NEW)[0]  # [key]
    name = "blocks.0.attn.hook_pattern"

    with nn.generate(inputs, max_new_tokens=N_NEW, min_new_tokens=N_NEW) as tracer:
        for _ in tracer.iter[STEP]:
            hook_point = nn.hook(name)
            pattern = hook_point.output
            edited = pattern.masked_fill(image_keys[: pattern.shape[-1]], 0.0)
            hook_point.output = edited / edited.sum(-1, keepdim=True)
        via_nnsight = tracer.result.save()

    kwargs = dict(max_new_tokens=N_NEW, min_new_tokens=N_NEW)
    via_hook = model.generate(inputs, fwd_hooks=[(name, drop_image_at(STEP, image_keys))], **kwargs)
    clean = model.generate(inputs, **kwargs)

    torch.testing.assert_close(via_nnsight.logits, via_hook.logits, atol=1e-5, rtol=0)
    assert torch.equal(via_nnsight.tokens, via_hook.tokens)
    moved = (via_nnsight.logits - clean.logits).abs().amax(dim=(1, 2))  # [step]
    assert (moved[:STEP] <= 1e-5).all() and moved[STEP] > 1e-3, moved


def test_single_forward_trace(wrapped):
    model, nn = wrapped
    inputs = model.prepare(images=[dots_image(2)], prompt=PROMPT)
    with nn.trace(inputs) as tracer:
        pattern = nn.hook("blocks.0.attn.hook_pattern").output.save()
        output = tracer.result.save()
    logits, cache = model.run_with_cache(inputs, names_filter="blocks.0.attn.hook_pattern")
    torch.testing.assert_close(pattern, cache["blocks.0.attn.hook_pattern"], atol=1e-5, rtol=0)
    torch.testing.assert_close(output.logits, logits, atol=1e-5, rtol=0)
