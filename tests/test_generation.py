"""Generation: per-step hooks, step-local patches, slim recordings, batching, device maps, traces.

Every claim is checked against Hugging Face itself where HF can see it: the recorded rows
are HF's `output_attentions` rows (eager attention, same checkpoint), the tokens are HF's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.architectures import newest_per_family
from vlm_lens.core.generation import AttentionRecord, generation_config
from vlm_lens.core.segments import KIND_NAMES, SEGMENT_KINDS
from vlm_lens.zoo import ARCHITECTURES

PROMPT = "How many dots are there in the image? Answer directly. Answer: "
N_NEW = 5


def dots_image(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    h, w = size
    arr = np.full((h, w), 255, dtype=np.uint8)
    for _ in range(5):
        y, x = rng.integers(4, h - 4), rng.integers(4, w - 4)
        arr[y - 3 : y + 3, x - 3 : x + 3] = rng.integers(0, 40)
    return Image.fromarray(arr).convert("RGB")


@pytest.fixture(scope="module")
def hooked(tiny_ckpt):
    """`hooked(arch) -> HookedVLM`, loaded once per module."""
    cache: dict[str, HookedVLM] = {}

    def get(arch: str) -> HookedVLM:
        if arch not in cache:
            cache[arch] = HookedVLM.from_pretrained(tiny_ckpt(arch))
        return cache[arch]

    return get


@pytest.fixture(scope="module")
def eager(tiny_ckpt):
    """`eager(arch)`: the same checkpoint in the real HF class with eager attention."""
    cache: dict[str, torch.nn.Module] = {}

    def get(arch: str):
        if arch not in cache:
            path = tiny_ckpt(arch)
            cls = getattr(transformers, _model_class(path))
            cache[arch] = cls.from_pretrained(path, attn_implementation="eager").eval()
        return cache[arch]

    return get


def _model_class(path) -> str:
    from vlm_lens.adapters import adapter_for

    return adapter_for(transformers.AutoConfig.from_pretrained(path)).model_class


def _gen(model, inputs, n=N_NEW, **kwargs):
    """Exactly `n` steps (EOS suppressed), so runs compare step by step."""
    return model.generate(inputs, max_new_tokens=n, min_new_tokens=n, **kwargs)


# ----------------------------------------------------------------------------- per-step hooks


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_call_per_layer_per_step_with_step_numbers_and_shapes(hooked, arch):
    model = hooked(arch)
    inputs = model.prepare(images=[dots_image(0)], prompt=PROMPT)
    prompt_len = inputs.input_ids.shape[1]
    calls: list[tuple[str, int, tuple[int, ...]]] = []

    def spy(t, hook):
        assert hook.run.segments is inputs.segments
        calls.append((hook.name, hook.run.step, tuple(t.shape)))

    names = lambda n: n.endswith("hook_pattern") or n.endswith("hook_resid_post")  # noqa: E731
    out = _gen(model, inputs, fwd_hooks=[(names, spy)])
    assert out.n_steps == N_NEW and out.logits.shape[0] == N_NEW

    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for step in range(N_NEW):
        at_step = [(name, shape) for name, s, shape in calls if s == step]
        patterns = [name for name, _ in at_step if name.endswith("hook_pattern")]
        assert patterns == [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
        resid = [name for name, _ in at_step if name.endswith("hook_resid_post")]
        assert resid == [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]
        for name, shape in at_step:
            if name.endswith("hook_pattern"):
                queries = prompt_len if step == 0 else 1
                assert shape == (1, n_heads, queries, prompt_len + step), (name, step)
    # steps come in order 0, 1, ..., n-1 and nothing else fires
    assert [s for _, s, _ in calls] == sorted(s for _, s, _ in calls)
    assert len(calls) == 2 * n_layers * N_NEW


def _scale_image_at(step: int, segments, factor: float):
    """Multiply the predicting row's attention to image keys by `factor` at one step, renormalise."""

    def hook(pattern, hook):
        if hook.run.step != step:
            return pattern
        image = segments.mask("image", pattern.shape[-1]).to(pattern.device)  # [batch, key]
        scale = 1 + (factor - 1) * image[:, None, None, :].to(pattern.dtype)
        pattern = pattern * scale
        return pattern / pattern.sum(-1, keepdim=True)

    return hook


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patch_at_step_k_changes_logits_from_step_k_on_and_none_before(hooked, arch):
    model = hooked(arch)
    inputs = model.prepare(images=[dots_image(1)], prompt=PROMPT)
    k = 2
    name = "blocks.0.attn.hook_pattern"  # an early layer: the edit also reaches later steps via the KV cache
    identity = lambda p, hook: p  # noqa: E731  (same computation path as the patched run)
    clean = _gen(model, inputs, fwd_hooks=[(name, identity)])
    patched = _gen(model, inputs, fwd_hooks=[(name, _scale_image_at(k, inputs.segments, 8.0))])

    diff = (patched.logits - clean.logits).abs().amax(dim=(1, 2))  # [step]
    assert torch.equal(patched.logits[:k], clean.logits[:k]), f"steps before {k} moved: {diff}"
    assert diff[k] > 1e-4, f"step {k} did not change: {diff}"
    assert (diff[k:] > 1e-6).all(), f"later steps must see the edit through the cache: {diff}"
    assert torch.equal(patched.tokens[:, :k], clean.tokens[:, :k])


# ----------------------------------------------------------------------------- HF parity


def _hf_rows(eager_model, model, inputs, n):
    """Per step, per layer: HF's attention row of the predicting query, `[batch, head, key]`."""
    config = generation_config(model, n, min_new_tokens=n, output_attentions=True)
    with torch.no_grad():
        out = eager_model.generate(**inputs.tensors, generation_config=config)
    rows = [[layer[:, :, -1, :] for layer in step] for step in out.attentions]
    nbytes = sum(t.numel() * t.element_size() for step in out.attentions for t in step)
    return out, rows, nbytes


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_recording_equals_hf_output_attentions(hooked, eager, arch):
    model = hooked(arch)
    inputs = model.prepare(images=[dots_image(2)], prompt=PROMPT, system="Count carefully.")
    out = _gen(model, inputs, record=AttentionRecord(keep=("image", "shares", "full")))
    hf_out, hf_rows, _ = _hf_rows(eager(arch), model, inputs, N_NEW)
    assert torch.equal(out.sequences, hf_out.sequences.cpu())

    rec = out.recording
    assert rec.steps == list(range(N_NEW)) and rec.layers == list(range(model.cfg.n_layers))
    seg = out.segments
    image_pos = seg.mask("image")[0].nonzero().flatten()
    for step in range(N_NEW):
        n_keys = inputs.input_ids.shape[1] + step
        kinds = seg.key_kinds(n_keys)[0]
        for layer in range(model.cfg.n_layers):
            ref = hf_rows[step][layer][0]  # [head, key]
            full = rec.full[step][0, layer, :, 0]
            image = rec.image[step][0, layer, :, 0]
            shares = rec.shares[step][0, layer, :, 0]
            assert full.shape == ref.shape
            torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(image, ref[:, image_pos], atol=1e-5, rtol=0)
            ref_shares = torch.stack(
                [ref[:, kinds == KIND_NAMES[k]].sum(-1) for k in SEGMENT_KINDS], dim=-1
            )
            torch.testing.assert_close(shares, ref_shares, atol=1e-5, rtol=0)
    # system prompt given: every kind gets some attention somewhere, and shares sum to 1
    stacked = rec.stacked("shares")
    torch.testing.assert_close(stacked.sum(-1), torch.ones_like(stacked.sum(-1)))


def test_recording_is_at_most_one_percent_of_output_attentions(hooked, eager):
    arch = "qwen3_vl"
    model = hooked(arch)
    inputs = model.prepare(images=[dots_image(3)], prompt=PROMPT)
    n = 8
    out = _gen(model, inputs, n=n, record=AttentionRecord(layers=-1, keep=("image",)))
    _, _, hf_bytes = _hf_rows(eager(arch), model, inputs, n)
    ours = out.recording.nbytes()
    n_image = int(inputs.segments.mask("image").sum())
    assert ours == n * model.cfg.n_heads * n_image * 4  # [step, 1 layer, head, image] float32
    assert ours <= 0.01 * hf_bytes, (ours, hf_bytes)


def test_record_options_steps_heads_mean_and_device_dtype(hooked):
    model = hooked("qwen3_vl")
    inputs = model.prepare(images=[dots_image(4)], prompt=PROMPT)
    full = _gen(model, inputs, record=AttentionRecord(layers=[0, -1], keep=("image", "shares")))
    slim = _gen(
        model,
        inputs,
        record=AttentionRecord(
            layers=[-1, 0], steps=[0, 3], heads="mean", keep=("image",), dtype=torch.float64
        ),
    )
    rec = slim.recording
    assert rec.layers == [0, model.cfg.n_layers - 1] and rec.steps == [0, 3]
    assert not rec.shares and rec.image[3].dtype == torch.float64
    assert rec.image[3].shape == (1, 2, 1, 1, int(inputs.segments.mask("image").sum()))
    torch.testing.assert_close(
        rec.image[3].float(), full.recording.image[3].mean(dim=2, keepdim=True)
    )
    with pytest.raises(ValueError, match="keep"):
        AttentionRecord(keep=("pixels",))


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_left_padded_equals_one_by_one(hooked, arch):
    model = hooked(arch)
    images = [dots_image(5), dots_image(6, size=(96, 64))]  # Qwen: different grids too
    prompts = [PROMPT, "Dots?"]
    record = AttentionRecord(layers=[0, -1], keep=("image", "shares", "full"))
    batch_inputs = model.prepare(images=images, prompt=prompts)
    assert (batch_inputs.attention_mask == 0).any(), "the prompts must differ in length"
    batched = _gen(model, batch_inputs, record=record)
    for b, (image, prompt) in enumerate(zip(images, prompts)):
        inputs = model.prepare(images=[image], prompt=prompt)
        single = _gen(model, inputs, record=record)
        assert torch.equal(batched.tokens[b], single.tokens[0])
        torch.testing.assert_close(batched.logits[:, b], single.logits[:, 0], atol=1e-4, rtol=0)
        n_pad = len(batch_inputs.segments.samples[b].padding)
        n_img = int(inputs.segments.mask("image").sum())
        for step in range(N_NEW):
            got, ref = batched.recording, single.recording
            torch.testing.assert_close(
                got.image[step][b, ..., :n_img], ref.image[step][0], atol=1e-4, rtol=0
            )
            assert got.image[step][b, ..., n_img:].isnan().all()
            torch.testing.assert_close(got.shares[step][b], ref.shares[step][0], atol=1e-4, rtol=0)
            torch.testing.assert_close(
                got.full[step][b, ..., n_pad:], ref.full[step][0], atol=1e-4, rtol=0
            )
            assert (got.full[step][b, ..., :n_pad] == 0).all()  # nothing attends to padding


# ----------------------------------------------------------------------------- devices


def split_device_map(model: HookedVLM) -> dict[str, str | torch.device]:
    """Every module of the HF model mapped explicitly, odd decoder layers on a second "device".

    On a CPU-only machine the only devices are CPU ones: the string "cpu" in a device map
    means "offload to CPU RAM" for accelerate, `torch.device("cpu")` an execution device. Two
    distinct values make transformers dispatch the model with accelerate's hooks, which move
    the offloaded layers' weights in (and inputs across) at every call: the same machinery
    that places layers on different GPUs with `device_map="auto"`.
    """
    cpu = torch.device("cpu")
    lm_path = model.adapter.language_model  # e.g. "model.language_model"
    parts = lm_path.split(".")
    device_map: dict[str, str | torch.device] = {}
    for depth in range(len(parts)):  # siblings of the language model and of its ancestors
        parent = ".".join(parts[:depth])
        for name, _ in model.hf_model.get_submodule(parent).named_children():
            path = f"{parent}.{name}" if parent else name
            if path != ".".join(parts[: depth + 1]):
                device_map[path] = cpu
    for name, _ in model.hf_model.get_submodule(lm_path).named_children():
        if name == model.adapter.layers:
            for i in range(model.cfg.n_layers):
                device_map[f"{lm_path}.{name}.{i}"] = "cpu" if i % 2 else cpu
        else:
            device_map[f"{lm_path}.{name}"] = cpu
    return device_map


@pytest.mark.parametrize("arch", newest_per_family())
def test_device_map_split_equals_single_device(hooked, tiny_ckpt, arch):
    single = hooked(arch)
    device_map = split_device_map(single)
    split = HookedVLM.from_pretrained(tiny_ckpt(arch), device_map=device_map)
    dispatched = [n for n, m in split.hf_model.named_modules() if hasattr(m, "_hf_hook")]
    assert any(".layers.1" in n for n in dispatched), "accelerate's dispatch hooks are not in place"

    inputs = single.prepare(images=[dots_image(7)], prompt=PROMPT)
    record = AttentionRecord(keep=("image", "shares"))
    k, factor = 1, 4.0
    hooks = [("blocks.1.attn.hook_pattern", _scale_image_at(k, inputs.segments, factor))]
    ref = _gen(single, inputs, record=record, fwd_hooks=hooks)
    got = _gen(split, inputs, record=record, fwd_hooks=hooks)
    assert torch.equal(got.sequences, ref.sequences)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-6, rtol=0)
    for what in ("image", "shares"):
        torch.testing.assert_close(
            got.recording.stacked(what), ref.recording.stacked(what), atol=1e-6, rtol=0
        )


# ----------------------------------------------------------------------------- trace_generation


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_trace_generation_grids_shares_and_tokens(hooked, arch):
    model = hooked(arch)
    images = [dots_image(8), dots_image(9)]
    trace = model.trace_generation(
        images, PROMPT, layers=[0, -1], max_new_tokens=N_NEW, min_new_tokens=N_NEW
    )
    inputs = model.prepare(images=images, prompt=PROMPT)
    out = _gen(model, inputs, record=AttentionRecord(layers=[0, -1], keep=("image",)))

    assert trace.n_steps == N_NEW and torch.equal(trace.tokens, out.tokens[0])
    assert trace.text == out.texts[0]
    assert len(trace.token_texts) == N_NEW
    assert trace.logits.shape == (N_NEW, out.logits.shape[-1])
    torch.testing.assert_close(trace.probs.sum(-1), torch.ones(N_NEW))
    assert trace.layers == [0, model.cfg.n_layers - 1]

    spans = inputs.segments.samples[0].images
    assert len(trace.images) == len(spans) == 2
    flat = out.recording.stacked("image")[:, 0, :, :, 0]  # [step, layer, head, image tokens]
    start = 0
    for grid_map, span in zip(trace.images, spans):
        h, w = span.grid
        assert grid_map.shape == (N_NEW, 2, model.cfg.n_heads, h, w)
        # row-major: grid cell (i, j) is image token i * w + j of that image
        block = flat[..., start : start + h * w]
        torch.testing.assert_close(grid_map[..., 1, 0], block[..., w])
        torch.testing.assert_close(grid_map.flatten(-2), block)
        start += h * w

    assert trace.shares.shape == (N_NEW, 2, model.cfg.n_heads, 4)
    torch.testing.assert_close(trace.shares.sum(-1), torch.ones(N_NEW, 2, model.cfg.n_heads))
    image_mass = sum(m.sum((-1, -2)) for m in trace.images)
    torch.testing.assert_close(trace.share("image"), image_mass, atol=1e-5, rtol=0)
    assert (trace.share("generated")[0] == 0).all() and (trace.share("generated")[1:] > 0).all()
    assert trace.image_map(1, -1).shape == spans[0].grid
    top = trace.top_tokens(0, k=3)
    assert len(top) == 3 and top[0][1] == pytest.approx(float(trace.probs[0].max()))


def test_trace_generation_takes_one_prompt(hooked):
    model = hooked("qwen3_vl")
    with pytest.raises(TypeError, match="one prompt"):
        model.trace_generation([dots_image(0), dots_image(1)], ["a", "b"])
