"""TransformerLens-style analysis on a VLM: what HookedVLM adds so a TL notebook runs.

The residual stream decomposes exactly (attention, MLP and Qwen3-VL's deepstack components
plus the embeddings, through the final norm's cached scale and the folded `W_U`, give the
logits); per-head results sum to the attention output; backward hooks see the gradient;
edits at the new hook points flow on; nothing is paid for hook points nobody hooks; the
tokenizer helpers label image tokens; the loss counts the text positions.

Not for: TransformerLens's own tests (tests/test_tl_parity.py) or HF parity
(tests/test_hooked_vlm.py).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.architectures import REGISTRY
from vlm_lens.core.hook_points import Site
from vlm_lens.core.segments import KIND_GENERATED, KIND_TEXT
from vlm_lens.data import dots
from vlm_lens.patching import with_answer_prefix
from vlm_lens.zoo import ARCHITECTURES

PROMPTS = ["How many dots? Answer: ", "Count: "]


def dots_image(i: int) -> Image.Image:
    """Image i of a small seeded dots set (the counting study's generator, 64 px)."""
    return _DOTS[i].image


_DOTS = dots.generate(4, seed=0, size=64, radius=3, min_separation=1)


# Not Mllama: its cross-attention layers add tanh(gate) * attention and tanh(gate) * mask * MLP
# inside HF's layer, so their hook_attn_out / hook_mlp_out are before the gates and they have
# no hook_resid_mid: TransformerLens's residual decomposition does not hold there (README).
@pytest.fixture(
    scope="module", params=[k for k in ARCHITECTURES if REGISTRY[k].adapter.cross_attention is None]
)
def model(request, tiny_ckpt) -> HookedVLM:
    m = HookedVLM.from_pretrained(tiny_ckpt(request.param))
    yield m
    m.reset_hooks(including_permanent=True)
    m.set_use_attn_result(False)


@pytest.fixture(scope="module")
def batch(model):
    """Two rows of different lengths: left padding in the second."""
    return model.prepare(images=[dots_image(0), dots_image(1)], prompt=PROMPTS)


def per_head(model: HookedVLM) -> bool:
    return not model.adapter.sandwich_norms


def final_softcap(model) -> float | None:
    """The final logit soft-cap HF applies: Gemma 2's config value where the model class applies
    it (PaliGemma's does in transformers 5.24, not in 5.4), else None."""
    cap = getattr(model.hf_model.config.get_text_config(), "final_logit_softcapping", None)
    applies = "final_logit_softcapping" in inspect.getsource(type(model.hf_model).forward)
    return cap if applies else None


@torch.no_grad()
def test_decompose_resid_through_the_final_norm_and_unembedding_gives_the_logits(model, batch):
    logits, cache = model.run_with_cache(batch)
    stack, labels = cache.decompose_resid(apply_ln=True, return_labels=True)
    n = model.cfg.n_layers
    expected = ["embed"]
    for layer in range(n):
        expected += [f"{layer}_attn_out", f"{layer}_mlp_out"]
        if f"blocks.{layer}.hook_deepstack" in model.hook_dict:
            expected.append(f"{layer}_deepstack")
    assert labels == expected
    assert any(lab.endswith("deepstack") for lab in labels) == (model.cfg.arch == "qwen3_vl")
    # W_U gives the logits before any final soft-cap (Gemma 2: cap * tanh(logit / cap))
    cap = final_softcap(model)
    capped = (lambda x: torch.tanh(x / cap) * cap) if cap else (lambda x: x)  # noqa: E731
    rebuilt = stack.sum(0) @ model.W_U + model.b_U
    torch.testing.assert_close(capped(rebuilt), logits, atol=1e-4, rtol=0)
    # the same through the final norm's own hook point
    normalized = cache["ln_final.hook_normalized"]
    torch.testing.assert_close(
        capped(normalized @ model.W_U + model.b_U), logits, atol=1e-4, rtol=0
    )
    # direct logit attribution: per-component contributions of the answer token sum to its logit
    token = int(logits[0, -1].argmax())
    unscaled = cache.decompose_resid(pos_slice=-1)  # [component, batch, d_model]
    dla = cache.logit_attrs(unscaled, tokens=torch.tensor([token, token]), pos_slice=-1)
    torch.testing.assert_close(capped(dla.sum(0)[0]), logits[0, -1, token], atol=1e-4, rtol=0)


@torch.no_grad()
def test_residual_stream_identities(model, batch):
    _, cache = model.run_with_cache(batch)
    for layer in range(model.cfg.n_layers):
        mid = cache["resid_pre", layer] + cache["attn_out", layer]
        torch.testing.assert_close(cache["resid_mid", layer], mid, atol=1e-5, rtol=0)
        post = cache["resid_mid", layer] + cache["mlp_out", layer]
        torch.testing.assert_close(cache["resid_post", layer], post, atol=1e-5, rtol=0)
        gelu = model.cfg.arch in ("gemma3", "paligemma")
        gated = F.silu if not gelu else lambda x: F.gelu(x, approximate="tanh")
        hook_post = gated(cache["pre", layer]) * cache["pre_linear", layer]
        torch.testing.assert_close(cache["post", layer], hook_post, atol=1e-5, rtol=0)
        scale = cache["scale", layer, "ln1"]
        torch.testing.assert_close(
            cache["normalized", layer, "ln1"], cache["resid_pre", layer] / scale, atol=1e-5, rtol=0
        )
    for layer in range(model.cfg.n_layers - 1):
        after = cache["resid_post", layer]
        if f"blocks.{layer}.hook_deepstack" in model.hook_dict:
            after = after + cache["deepstack", layer]
        torch.testing.assert_close(cache["resid_pre", layer + 1], after, atol=1e-5, rtol=0)
    if model.cfg.arch == "qwen3_vl":  # deepstack lands on image positions only
        image = batch.segments.mask("image")
        assert cache["deepstack", 0][~image].abs().max() == 0
        assert cache["deepstack", 0][image].abs().max() > 0


@torch.no_grad()
def test_per_head_results_sum_to_the_attention_output(model, batch, request):
    if not per_head(model):
        # Gemma3: the attention output passes post_attention_layernorm before the residual
        with pytest.raises(ValueError, match="post_attention_layernorm"):
            model.set_use_attn_result(True)
        _, cache = model.run_with_cache(batch, names_filter=lambda n: "hook_z" in n)
        with pytest.raises(ValueError, match="per-head results are undefined"):
            cache.stack_head_results()
        return
    plain_logits, plain = model.run_with_cache(batch)  # HF's own output projection
    request.addfinalizer(lambda: model.set_use_attn_result(False))
    model.set_use_attn_result(True)
    logits, cache = model.run_with_cache(batch)
    torch.testing.assert_close(logits, plain_logits, atol=1e-5, rtol=0)
    shape = (2, batch.input_ids.shape[1], model.cfg.n_heads, model.cfg.d_model)
    for layer in range(model.cfg.n_layers):
        result = cache["result", layer]
        assert result.shape == shape
        summed = result.sum(-2) + model.blocks[layer].attn.b_O
        torch.testing.assert_close(summed, plain["attn_out", layer], atol=1e-5, rtol=0)
        # z_h @ W_O[h], as TransformerLens's compute_head_results builds it from hook_z
        by_hand = torch.einsum("bphd,hdm->bphm", cache["z", layer], model.blocks[layer].attn.W_O)
        torch.testing.assert_close(result, by_hand, atol=1e-5, rtol=0)
    plain.compute_head_results()
    torch.testing.assert_close(
        plain["result", -1], cache["result", -1], atol=1e-5, rtol=0
    )  # fmt: skip


def test_backward_hooks_fire_alone_and_see_the_gradient(model, batch):
    """Backward hooks with no forward hook on the same point fire (the point is called because
    it has a backward hook) and receive d loss / d activation."""
    grads: dict[str, torch.Tensor] = {}
    acts: dict[str, torch.Tensor] = {}
    names = ["blocks.-1.attn.hook_pattern", "blocks.0.mlp.hook_post", "ln_final.hook_scale"]

    def keep_grad(grad, hook):
        grads[hook.name] = grad

    with model.hooks(bwd_hooks=[(n, keep_grad) for n in names]):
        loss = model(batch, return_type="loss")
        loss.backward()
    model.zero_grad()
    last = model.cfg.n_layers - 1
    assert set(grads) == {f"blocks.{last}.attn.hook_pattern", "blocks.0.mlp.hook_post",
                          "ln_final.hook_scale"}  # fmt: skip
    p = batch.input_ids.shape[1]
    assert grads[f"blocks.{last}.attn.hook_pattern"].shape == (2, model.cfg.n_heads, p, p)
    assert grads["blocks.0.mlp.hook_post"].shape == (2, p, model.cfg.d_mlp)
    assert grads["ln_final.hook_scale"].shape == (2, p, 1)

    # the same gradient as autograd gives for the activation
    def keep_act(t, hook):
        t.retain_grad()
        acts[hook.name] = t

    with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", keep_act)]):
        model(batch, return_type="loss").backward()
    model.zero_grad()
    torch.testing.assert_close(grads["blocks.0.mlp.hook_post"], acts["blocks.0.mlp.hook_post"].grad)
    assert grads["blocks.0.mlp.hook_post"].abs().max() > 0


def test_run_with_cache_incl_bwd(model, batch):
    loss, cache = model.run_with_cache(
        batch, return_type="loss", incl_bwd=True, names_filter=lambda n: "resid" in n
    )
    model.zero_grad()
    assert loss.ndim == 0
    for layer in range(model.cfg.n_layers):
        for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            key = f"blocks.{layer}.{name}"
            assert cache[key + "_grad"].shape == cache[key].shape
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def _torch_hooks(model: HookedVLM) -> int:
    """Torch hooks on the HF modules, ours (sites and hooks on hook points) or anyone's."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.hf_model.modules()
    )


def _sites(model: HookedVLM) -> int:
    """Torch hooks that are vlm_lens sites."""
    return sum(
        isinstance(getattr(fn, "__self__", None), Site)
        for m in model.hf_model.modules()
        for fn in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    )


def test_nothing_hooked_leaves_hf_modules_untouched(model, batch):
    """Sites exist only while a hook point they fire is hooked: an unhooked model runs HF's
    modules without any torch hook of ours (but the language model's position tracking)."""
    assert _sites(model) == 0
    base = _torch_hooks(model)  # the language model's position tracking (and HF's own, if any)
    with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", lambda t, hook: None)]):
        assert _torch_hooks(model) == base + 2  # the hook itself, and the down projection's site
    assert _torch_hooks(model) == base
    with torch.no_grad(), model.hooks(fwd_hooks=[(lambda n: True, lambda t, hook: None)]):
        assert _sites(model) > 0
        model(batch)
    assert _torch_hooks(model) == base and _sites(model) == 0
    # a hook removed behind TransformerLens's back: the site goes at the next call
    hp = model.hook_dict["blocks.0.hook_mlp_out"]
    handle = hp.register_forward_hook(lambda m, i, o: None)
    assert _torch_hooks(model) == base + 2
    handle.remove()
    with torch.no_grad():
        model(batch)
    assert _torch_hooks(model) == base
    # forcing (nnsight) installs the sites too
    model.force_hooks(True)
    assert _torch_hooks(model) > base
    model.force_hooks(False)
    assert _torch_hooks(model) == base


@torch.no_grad()
def test_edits_at_the_new_hook_points_flow_on(model, batch):
    clean_logits = model(batch)

    def zero(t, hook):
        return torch.zeros_like(t)

    # resid_mid edited reaches both the MLP and the residual stream
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_mid", zero)]):
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n.startswith("blocks.1."))
    assert cache["mlp_out", 1].abs().max() == 0  # a zero residual normalises to zero
    assert cache["resid_post", 1].abs().max() == 0
    # MLP activations
    with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", zero)]):
        _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_mlp_out")
    assert cache["blocks.0.hook_mlp_out"].abs().max() == 0
    # the final norm's scale: doubled, the logits halve (no unembedding bias) before any final
    # soft-cap (Gemma 2: cap * tanh(logit / cap))
    cap = final_softcap(model)
    half = clean_logits / 2 if not cap else torch.tanh(torch.atanh(clean_logits / cap) / 2) * cap
    double = model.run_with_hooks(batch, fwd_hooks=[("ln_final.hook_scale", lambda t, hook: 2 * t)])
    torch.testing.assert_close(double, half, atol=1e-5, rtol=1e-5)
    halved = model.run_with_hooks(
        batch, fwd_hooks=[("ln_final.hook_normalized", lambda t, hook: t / 2)]
    )
    torch.testing.assert_close(halved, half, atol=1e-5, rtol=1e-5)
    # the input embeddings and the attention output
    for name in ("hook_embed", "blocks.0.hook_attn_out", "blocks.0.mlp.hook_pre"):
        edited = model.run_with_hooks(batch, fwd_hooks=[(name, zero)])
        assert (edited - clean_logits).abs().max() > 1e-4, name
    if model.cfg.arch == "qwen3_vl":
        edited = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_deepstack", zero)])
        assert (edited - clean_logits).abs().max() > 1e-4


def test_tokenizer_helpers(model, batch):
    assert model.tokenizer is model.processor.tokenizer
    assert model.cfg.device == model.input_device and model.cfg.dtype == model.dtype
    tokens = model.to_tokens(batch)
    assert torch.equal(tokens, batch.input_ids)
    labels = model.to_str_tokens(batch)
    assert len(labels) == 2 and all(len(row) == tokens.shape[1] for row in labels)
    for row, sample in enumerate(batch.segments.samples):
        (span,) = sample.images
        if span.grid != (0, 0):
            h, w = span.grid
            assert labels[row][span.start : span.end] == [
                f"<img0 r{r}c{c}>" for r in range(h) for c in range(w)
            ]
        else:  # tiles (LLaVA-OneVision): "<img0 t1 r2c3>"; markers keep their token's text
            for t, tile in enumerate(span.tiles):
                w = tile.grid[1]
                got = [labels[row][p] for p in tile.positions()]
                assert got == [f"<img0 t{t} r{k // w}c{k % w}>" for k in range(tile.n_tokens)]
            for m in span.markers:
                assert labels[row][m.as_slice()] == model.to_str_tokens(tokens[row, m.as_slice()])
        # nothing decodes to "": special tokens show as their text
        assert all(label != "" for label in labels[row][sample.padding.end :])
        assert labels[row][: sample.padding.end] == [model.tokenizer.pad_token] * sample.padding.end
    assert labels[0][-1] == model.to_string(tokens[0, -1:])
    single = model.prepare(images=[dots_image(3)], prompt=PROMPTS[0])
    assert isinstance(model.to_str_tokens(single)[0], str)
    # text, ids, and round trips
    text = "How many"
    ids = model.to_tokens(text)
    assert ids.shape[0] == 1 and model.to_string(ids[0]) == text
    assert "".join(model.to_str_tokens(text)) == text
    assert model.to_string(ids) == [text]
    assert model.to_str_tokens(ids[0].tolist()) == model.to_str_tokens(text)
    digit = model.to_single_token("7")
    assert model.to_string(digit) == "7" and model.to_str_tokens(digit) == ["7"]
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token("77")
    two = model.to_tokens(["a", "abc"], padding_side="left")
    assert two.shape == (2, 3) and two[0, -1] == model.to_single_token("a")
    bos = model.tokenizer.bos_token_id
    if bos is not None:
        assert model.to_tokens(text, prepend_bos=True)[0, 0] == bos
        padded = model.to_tokens(["a", "abc"], prepend_bos=True, padding_side="left")
        assert padded[0, 2] == bos and padded[0, 1] == model.tokenizer.pad_token_id
    # W_U columns as residual directions
    direction = model.tokens_to_residual_directions("7")
    torch.testing.assert_close(direction, model.W_U[:, digit])
    assert model.tokens_to_residual_directions(torch.tensor([[1, 2, 3]])).shape == (
        1, 3, model.cfg.d_model,
    )  # fmt: skip


def test_loss_counts_the_text_targets(model, batch):
    with torch.no_grad():
        logits, loss = model(batch, return_type="both")
        per = model(batch, return_type="loss", loss_per_token=True)
        assert model(batch, return_type=None) is None
    kinds = batch.segments.kinds[:, 1:]
    counted = kinds == KIND_TEXT
    targets = batch.input_ids[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
    torch.testing.assert_close(loss, ce[counted].mean())
    torch.testing.assert_close(per[counted], ce[counted])
    assert per[~counted].abs().max() == 0  # image, system and padding targets
    assert counted.any() and (~counted).any()
    # a teacher-forced answer's tokens count too
    answered = with_answer_prefix(batch, [model.to_single_token("7")])
    assert answered.segments.kinds[0, -1] == KIND_GENERATED
    with torch.no_grad():
        full = model(answered, return_type="loss", loss_per_token=True)
    assert full[:, -1].abs().min() > 0
    with pytest.raises(ValueError, match="return_type"):
        model(batch, return_type="probs")
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(batch, return_type="loss", logits_to_keep=1)


def test_a_switched_off_hook_point_is_refused_by_name(model, batch):
    with pytest.raises(AssertionError, match="set_use_attn_result"):
        model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_result", lambda t, hook: t)])
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_generation_with_every_point_hooked_gives_the_same_tokens(model, batch):
    """Sites also fire at every decoding step (KV cache, one query row): identity hooks on
    every point leave greedy generation unchanged, and each point sees every step."""
    plain = model.generate(batch, max_new_tokens=3)
    steps: dict[str, set[int]] = {}

    def identity(t, hook):
        steps.setdefault(hook.name, set()).add(hook.run.step)
        return t

    hooked = model.generate(batch, max_new_tokens=3, fwd_hooks=[(lambda n: True, identity)])
    assert torch.equal(plain.tokens, hooked.tokens)
    per_step = {n for n in model.hook_dict if n != "hook_image_embeds" and "hook_result" not in n}
    assert all(steps[n] == {0, 1, 2} for n in per_step), {n: steps.get(n) for n in per_step}
