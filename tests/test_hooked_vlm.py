"""HookedVLM on tiny checkpoints of every architecture: parity with HF, real patching, names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.zoo import ARCHITECTURES

PROMPT = "How many dots are there in the image? Answer directly. Answer: "


def dots_image(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((size, size), 255, dtype=np.uint8)
    for _ in range(4):
        y, x = rng.integers(4, size - 4, size=2)
        arr[y - 3 : y + 3, x - 3 : x + 3] = rng.integers(0, 20)
    return Image.fromarray(arr).convert("RGB")


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_models(request, tiny_ckpt):
    path = tiny_ckpt(request.param)
    model = HookedVLM.from_pretrained(path)
    adapter = model.adapter
    eager = (
        getattr(transformers, adapter.model_class)
        .from_pretrained(path, attn_implementation="eager")
        .eval()
    )
    return request.param, model, eager


def hf_logits(eager, inputs) -> torch.Tensor:
    with torch.no_grad():
        return eager(**inputs.tensors).logits


def test_logits_match_hf_eager_without_hooks(arch_models):
    arch, model, eager = arch_models
    inputs = model.prepare(images=[dots_image(0)], prompt=PROMPT)
    with torch.no_grad():
        ours = model(inputs)
    assert (ours - hf_logits(eager, inputs)).abs().max().item() <= 1e-5


def test_logits_match_hf_eager_with_identity_hooks_everywhere(arch_models, request):
    """Every hook point (residual, norms, attention, per-head results, MLP, final norm) fires
    once and, as the identity, leaves HF's logits unchanged."""
    arch, model, eager = arch_models
    inputs = model.prepare(images=[dots_image(1)], prompt=PROMPT)
    seen: list[str] = []

    def identity(t, hook):
        seen.append(hook.name)
        return t

    # Per-head results are opt-in (TransformerLens's use_attn_result) and undefined on Gemma3.
    per_head = not model.adapter.sandwich_norms
    request.addfinalizer(lambda: model.set_use_attn_result(False))
    model.set_use_attn_result(per_head)
    with torch.no_grad():
        ours = model.run_with_hooks(inputs, fwd_hooks=[(lambda name: True, identity)])
    expected = {n for n in model.hook_dict if per_head or not n.endswith("attn.hook_result")}
    assert set(seen) == expected, "every hook point must fire once on a forward pass"
    assert len(seen) == len(expected)
    for name in (
        "hook_attn_out",
        "hook_resid_mid",
        "mlp.hook_pre",
        "mlp.hook_post",
        "ln1.hook_scale",
    ):
        assert f"blocks.0.{name}" in expected
    assert {"hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"} <= expected
    assert (ours - hf_logits(eager, inputs)).abs().max().item() <= 1e-5


def test_greedy_generation_matches_hf(arch_models):
    arch, model, eager = arch_models
    inputs = model.prepare(images=[dots_image(2)], prompt=PROMPT)
    out = model.generate(inputs, max_new_tokens=5)
    with torch.no_grad():
        ref = eager.generate(**inputs.tensors, max_new_tokens=5, do_sample=False)
    n = min(ref.shape[1], out.sequences.shape[1])
    assert torch.equal(out.sequences[:, :n], ref[:, :n])


def test_pattern_edit_changes_logits_and_matches_hand_computation(arch_models):
    """Zero the image columns of the last layer's pattern, renormalise; check z against q, k, v by hand."""
    arch, model, _ = arch_models
    inputs = model.prepare(images=[dots_image(3)], prompt=PROMPT)
    image_keys = inputs.segments.mask("image")[0]  # [key]

    def drop_image(pattern, hook):
        pattern = pattern.masked_fill(image_keys[None, None, None, :], 0.0)
        return pattern / pattern.sum(-1, keepdim=True)

    names = [
        "blocks.-1.attn.hook_q",
        "blocks.-1.attn.hook_k",
        "blocks.-1.attn.hook_v",
        "blocks.-1.attn.hook_z",
    ]
    with torch.no_grad():
        clean = model(inputs)
        with model.hooks(fwd_hooks=[("blocks.-1.attn.hook_pattern", drop_image)]):
            patched, cache = model.run_with_cache(inputs, names_filter=names)
    assert (patched - clean).abs().max().item() > 1e-4, (
        "editing hook_pattern must change the logits"
    )

    attn = model.hf_model.get_submodule(
        f"{model.adapter.language_model}.layers.{model.cfg.n_layers - 1}.self_attn"
    )
    q = cache["blocks.-1.attn.hook_q"].transpose(1, 2)  # [batch, head, pos, d]
    rep = model.cfg.n_heads // model.cfg.n_key_value_heads
    k = cache["blocks.-1.attn.hook_k"].transpose(1, 2).repeat_interleave(rep, dim=1)
    v = cache["blocks.-1.attn.hook_v"].transpose(1, 2).repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) * attn.scaling
    n = scores.shape[-1]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    if arch == "gemma3":  # Gemma3 lets an image's tokens see each other in both directions
        allowed |= image_keys[:, None] & image_keys[None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    pattern = scores.softmax(-1)
    pattern = pattern.masked_fill(image_keys, 0.0)
    pattern = pattern / pattern.sum(-1, keepdim=True)
    z_ref = (pattern @ v).transpose(1, 2)  # [batch, pos, head, d]
    assert (cache["blocks.-1.attn.hook_z"] - z_ref).abs().max().item() <= 1e-5


def test_negative_layer_names_and_cache_options(arch_models):
    _, model, _ = arch_models
    inputs = model.prepare(images=[dots_image(4)], prompt=PROMPT)
    last = model.cfg.n_layers - 1
    fired = []
    with torch.no_grad():
        model.run_with_hooks(
            inputs,
            fwd_hooks=[("blocks.-1.hook_resid_post", lambda t, hook: fired.append(hook.name))],
        )
        _, cache = model.run_with_cache(
            inputs,
            names_filter=lambda n: n.endswith("hook_pattern"),
            device="cpu",
            remove_batch_dim=True,
        )
    assert fired == [f"blocks.{last}.hook_resid_post"]
    assert set(cache) == {f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)}
    pattern = cache["blocks.-1.attn.hook_pattern"]
    p = inputs.input_ids.shape[1]
    assert pattern.shape == (model.cfg.n_heads, p, p)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(model.cfg.n_heads, p))


def test_image_embeds_hook_changes_output(arch_models):
    _, model, _ = arch_models
    inputs = model.prepare(images=[dots_image(5)], prompt=PROMPT)
    shapes = []

    def zero(t, hook):
        shapes.append(tuple(t.shape))
        return torch.zeros_like(t)

    with torch.no_grad():
        clean = model(inputs)
        patched = model.run_with_hooks(inputs, fwd_hooks=[("hook_image_embeds", zero)])
    n_image = int(inputs.segments.mask("image").sum())
    assert shapes == [(n_image, model.cfg.d_model)]
    assert (patched - clean).abs().max().item() > 1e-5


def test_unknown_hook_name_is_a_clear_error(arch_models):
    _, model, _ = arch_models
    inputs = model.prepare(images=[dots_image(6)], prompt=PROMPT)
    with pytest.raises(KeyError, match="hook_patern.*did you mean"):
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.attn.hook_patern", lambda t, hook: t)])
    with pytest.raises(IndexError, match="out of range"):
        model.run_with_hooks(
            inputs,
            fwd_hooks=[(f"blocks.{model.cfg.n_layers}.attn.hook_pattern", lambda t, hook: t)],
        )


def test_a_hook_that_raises_leaves_no_hook_attached(arch_models):
    _, model, _ = arch_models
    inputs = model.prepare(images=[dots_image(7)], prompt=PROMPT)

    def boom(t, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.attn.hook_pattern", boom)])
    assert not any(hp.fires() or hp.fwd_hooks for hp in model.hook_dict.values())
    with (
        pytest.raises(RuntimeError, match="boom"),
        model.hooks(fwd_hooks=[("blocks.-1.hook_resid_pre", boom)]),
    ):
        model(inputs)
    assert not any(hp.fires() or hp.fwd_hooks for hp in model.hook_dict.values())


def test_fast_path_is_taken_when_nothing_is_hooked(arch_models, request):
    """No hooks -> no pattern is materialised: the attention function returns weights None."""
    _, model, _ = arch_models
    inputs = model.prepare(images=[dots_image(8)], prompt=PROMPT)
    from vlm_lens.core import attention

    weights = []
    original = attention.vlm_lens_attention

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        weights.append(out[1])
        return out

    request.addfinalizer(attention.register)  # the real attention function back afterwards
    transformers.AttentionInterface.register(attention.ATTENTION_NAME, spy)
    with torch.no_grad():
        model(inputs)
        n_fast = sum(w is None for w in weights)
        weights.clear()
        model.run_with_hooks(
            inputs, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: None)]
        )
    assert n_fast == model.cfg.n_layers
    assert [w is None for w in weights] == [False] + [True] * (model.cfg.n_layers - 1)


def test_unsupported_checkpoint_names_supported_architectures(tmp_path):
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10)
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="gpt2.*" + ".*".join(ARCHITECTURES)):
        HookedVLM.from_pretrained(tmp_path)


def test_dtype_and_device_options(tiny_ckpt):
    path = tiny_ckpt("qwen3_vl")
    model = HookedVLM.from_pretrained(path, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16
    inputs = model.prepare(images=[dots_image(9)], prompt=PROMPT)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter="blocks.-1.attn.hook_pattern")
    assert cache["blocks.-1.attn.hook_pattern"].dtype == torch.bfloat16
    assert model.generate(inputs, max_new_tokens=2).tokens.shape == (1, 2)
    with pytest.raises(ValueError, match="either device or device_map"):
        HookedVLM.from_pretrained(path, device="cpu", device_map="cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        HookedVLM.from_pretrained(path, dtype="float13")


def test_wrapping_an_existing_hf_model(tiny_ckpt):
    path = tiny_ckpt("llava")
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path)
    model = HookedVLM(hf, transformers.AutoProcessor.from_pretrained(path))
    assert model.hf_model is hf and model.cfg.arch == "llava"
    assert "blocks.0.attn.hook_pattern" in model.hook_dict


def test_eos_token_ids_are_the_generation_configs_as_a_tuple(arch_models, monkeypatch):
    _, model, _ = arch_models
    tok = model.processor.tokenizer
    ends = {"<|im_end|>", "<end_of_turn>", "</s>", "<eos>"}
    names = {tok.convert_ids_to_tokens(i) for i in model.eos_token_ids}
    assert names & ends, names  # the end-of-turn token of each chat format
    config = model.hf_model.generation_config
    monkeypatch.setattr(config, "eos_token_id", 7)
    assert model.eos_token_ids == (7,)
    monkeypatch.setattr(config, "eos_token_id", None)
    assert model.eos_token_ids == ()


def test_logits_to_keep_gives_the_last_rows_of_the_full_forward(arch_models):
    """What the patching sweep reads: the next-token logits, without the whole prompt's."""
    arch, model, _ = arch_models
    inputs = model.prepare(images=[dots_image(2)] * 2, prompt=[PROMPT, "Count: "])
    with torch.no_grad():
        full = model(inputs)
        last = model(inputs, logits_to_keep=1)
        two = model(inputs, logits_to_keep=2)
    assert last.shape == (2, 1, full.shape[-1]) and two.shape[1] == 2
    torch.testing.assert_close(last[:, -1], full[:, -1], rtol=0, atol=1e-6)
    torch.testing.assert_close(two, full[:, -2:], rtol=0, atol=1e-6)


def test_running_gives_hf_kwargs_and_the_segments_to_hooks_for_its_duration(arch_models):
    arch, model, eager = arch_models
    inputs = model.prepare(images=[dots_image(3)], prompt=PROMPT)
    seen = []
    with model.running(inputs) as kwargs:
        assert set(kwargs) == set(inputs.tensors)  # every tensor the processor returned
        assert model.run_state.segments is inputs.segments
        with (
            model.hooks(
                fwd_hooks=[
                    ("blocks.0.hook_resid_pre", lambda t, hook: seen.append(hook.run.segments))
                ]
            ),
            torch.no_grad(),
        ):
            by_hand = model.hf_model(**kwargs, use_cache=False).logits
    assert model.run_state.segments is None  # restored after the run
    assert seen == [inputs.segments]
    torch.testing.assert_close(by_hand, hf_logits(eager, inputs), rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="model.prepare"), model.running(inputs.tensors):
        pass
