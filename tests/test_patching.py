"""Activation patching: the invariants a patching result must keep, checked on tiny models.

- Copying the whole residual stream before the first layer from clean into corrupted
  gives back the clean output (normalised metric 1); copying nothing gives 0.
- Copying every head's `hook_z` of a layer is copying the layer's attention output.
- A batched sweep gives the numbers a naive loop of `run_with_hooks` calls gives, in fewer
  forward passes.
- Teacher forcing computes what KV-cached generation computes at the same step.
- Inputs whose layouts differ are refused with the difference named.

Exactness claims run in float64 (so a tiny random model's small logit differences, which
the normalisation divides by, do not amplify float32 rounding); float32 checks compare
raw logits.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.architectures import REGISTRY, newest_per_family, no_deepstack
from vlm_lens.data.dots import counterfactual_pairs
from vlm_lens.patching import (
    COUNT_PROMPT,
    AnswerStep,
    Patch,
    answer_steps,
    counting_pair,
    layout_difference,
    logit_diff,
    patch_sweep,
    run_patched,
    with_answer_prefix,
)
from vlm_lens.patching.resume import record_resume_point
from vlm_lens.zoo import ARCHITECTURES

PAIR_SPEC = dict(size=64, radius=3, count_range=(10, 16), min_separation=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are overhead-bound: one thread is faster, and kinder to a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pairs():
    return counterfactual_pairs(4, seed=0, **PAIR_SPEC)


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))


@pytest.fixture(scope="module")
def model64(tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"), dtype="float64")


def _n_deepstack(model: HookedVLM) -> int:
    return len(getattr(model.hf_model.config.vision_config, "deepstack_visual_indexes", []) or [])


# ----------------------------------------------------------------------------- restoring


# With deepstack or cross-attention the corrupted image comes back after layer 0 (tested below).
@pytest.mark.parametrize(
    "arch",
    [
        k
        for k, a in REGISTRY.items()
        if a.adapter.deepstack is no_deepstack and a.adapter.cross_attention is None
    ],
)
def test_patching_whole_residual_stream_at_layer0_restores_clean(tiny_ckpt, pairs, arch):
    if arch == "idefics3":  # pixel_values [prompt, tile, ...]: a patched batch cannot share them
        pytest.skip("idefics3: patching sweeps not validated yet on this family (issue #15)")
    model = HookedVLM.from_pretrained(tiny_ckpt(arch), dtype="float64")
    pair = counting_pair(model, pairs[0])
    everything = run_patched(
        model,
        pair.clean,
        pair.corrupted,
        pair.first_step,
        [Patch("resid_pre", 0)],  # blocks.0.hook_resid_pre
    )
    assert abs(everything.value - 1.0) <= 1e-5
    nothing = run_patched(model, pair.clean, pair.corrupted, pair.first_step, [])
    assert abs(nothing.value) <= 1e-5
    from vlm_lens.patching.sweep import resume_unsupported

    # Resumed: clean cached, corrupted once, the patched run; full path: clean, patched batch.
    assert everything.n_forward_passes == (3 if resume_unsupported(model) is None else 2)


def test_qwen3_vl_deepstack_reinjects_the_image_after_layer0(model64, pairs):
    """Qwen3-VL adds corrupted-image features after its first layers: the full restore
    happens at the first layer after them, not at layer 0 (documented in vlm_lens.patching)."""
    pair = counting_pair(model64, pairs[0])
    n = _n_deepstack(model64)
    assert n >= 1
    layer0 = run_patched(
        model64, pair.clean, pair.corrupted, pair.first_step, [Patch("resid_pre", 0)]
    )
    after = run_patched(
        model64, pair.clean, pair.corrupted, pair.first_step, [Patch("resid_pre", n)]
    )
    nothing = run_patched(model64, pair.clean, pair.corrupted, pair.first_step, [])
    assert abs(after.value - 1.0) <= 1e-5
    assert abs(nothing.value) <= 1e-5
    assert abs(layer0.value - 1.0) > 1e-3


def test_mllama_cross_attention_reads_the_image_after_layer0(tiny_ckpt, pairs):
    """Mllama's image keys enter at every cross-attention layer: the clean residual stream
    restores the clean output only after the last of them."""
    model = HookedVLM.from_pretrained(tiny_ckpt("mllama"), dtype="float64")
    pair = counting_pair(model, pairs[0])
    last = max(model.cfg.cross_attention_layers)
    runs = {
        layer: run_patched(
            model, pair.clean, pair.corrupted, pair.first_step, [Patch("resid_pre", layer)]
        )
        for layer in (0, last, last + 1)
    }
    assert abs(runs[last + 1].value - 1.0) <= 1e-5
    assert abs(runs[0].value - 1.0) > 1e-3 and abs(runs[last].value - 1.0) > 1e-3


def test_float32_restore_at_first_clean_layer(model, pairs):
    pair = counting_pair(model, pairs[0])
    run = run_patched(
        model,
        pair.clean,
        pair.corrupted,
        pair.first_step,
        [Patch("resid_pre", _n_deepstack(model))],
    )
    assert abs(run.value - 1.0) <= 1e-5


# ----------------------------------------------------------------------------- z vs attention out


def _attn_module(model: HookedVLM, layer: int) -> torch.nn.Module:
    return model.hf_model.get_submodule(f"{model.adapter.language_model}.layers.{layer}.self_attn")


def _patch_attention_output(model, clean, corrupted, layer) -> torch.Tensor:
    """Last-row logits of `corrupted` with layer `layer`'s whole attention output taken from
    `clean`, by plain torch forward hooks on the attention module."""
    module = _attn_module(model, layer)
    saved = {}

    def save(mod, args, output):
        saved["out"] = output[0].detach().clone()

    def replace(mod, args, output):
        return (saved["out"].to(output[0].dtype), *output[1:])

    handle = module.register_forward_hook(save)
    try:
        with torch.no_grad():
            model(clean)
    finally:
        handle.remove()
    handle = module.register_forward_hook(replace)
    try:
        with torch.no_grad():
            return model(corrupted)[0, -1]
    finally:
        handle.remove()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_heads_z_equals_whole_attention_output(model, model64, pairs, dtype):
    m = model if dtype == "float32" else model64
    pair = counting_pair(m, pairs[1])
    step = pair.first_step
    c, x = (
        with_answer_prefix(pair.clean, step.prefix),
        with_answer_prefix(pair.corrupted, step.prefix),
    )
    for layer in range(m.cfg.n_layers):
        ours = run_patched(m, pair.clean, pair.corrupted, step, [Patch("z", layer, heads=None)])
        ref = _patch_attention_output(m, c, x, layer)
        assert (ours.logits.to(ref.dtype) - ref).abs().max().item() <= 1e-5
        if dtype == "float64":
            ref_metric = float(logit_diff(ref[None], step)[0])
            normalised = (ref_metric - ours.corrupted_metric) / (
                ours.clean_metric - ours.corrupted_metric
            )
            assert abs(ours.value - normalised) <= 1e-5


# ----------------------------------------------------------------------------- sweep vs loop


def naive_loop(model, clean, corrupted, step, family, layers, heads, groups):
    """Reference: one `run_with_hooks` call per cell. Returns raw logit differences
    `[layer, head, group]`, the clean and corrupted metric and the forward passes made."""
    hook_name = {
        "resid_pre": "blocks.{}.hook_resid_pre",
        "resid_post": "blocks.{}.hook_resid_post",
        "z": "blocks.{}.attn.hook_z",
        "pattern": "blocks.{}.attn.hook_pattern",
    }[family]
    c, x = with_answer_prefix(clean, step.prefix), with_answer_prefix(corrupted, step.prefix)
    names = [hook_name.format(layer) for layer in layers]
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(c, names_filter=names)
        corrupted_logits = model(x)
    n_passes = 2

    def diff(logits):
        return float(logit_diff(logits[:, -1], step)[0])

    values = torch.zeros(len(layers), len(heads), len(groups), dtype=torch.float64)
    for i, layer in enumerate(layers):
        name = hook_name.format(layer)
        for j, head in enumerate(heads):
            for k, positions in enumerate(groups):
                pos = list(positions)

                def hook(act, hook, name=name, head=head, pos=pos):
                    act = act.clone()
                    source = cache[name]
                    if family in ("resid_pre", "resid_post"):  # [batch, pos, d_model]
                        act[:, pos] = source[:, pos]
                    elif family == "z":  # [batch, pos, head, d_head]
                        act[:, pos, head] = source[:, pos, head]
                    else:  # [batch, head, query, key]
                        act[:, head, pos] = source[:, head, pos]
                    return act

                with torch.no_grad():
                    logits = model.run_with_hooks(x, fwd_hooks=[(name, hook)])
                n_passes += 1
                values[i, j, k] = diff(logits)
    return values, diff(clean_logits), diff(corrupted_logits), n_passes


# (family, positions, dtype): every family exact in float64, two in float32 (raw logit diffs).
SWEEPS = [
    ("resid_pre", "image_patch", "float64"),
    ("resid_post", "segment", "float64"),
    ("z", "all", "float64"),
    ("z", "segment", "float64"),
    ("pattern", "last", "float64"),
    ("resid_pre", "image_patch", "float32"),
    ("pattern", "all", "float32"),
]


@pytest.mark.parametrize(("family", "positions", "dtype"), SWEEPS)
def test_sweep_equals_naive_loop_with_fewer_forward_passes(
    model, model64, pairs, family, positions, dtype
):
    m = model if dtype == "float32" else model64
    pair = counting_pair(m, pairs[0])
    step = pair.first_step
    batch_size = 8
    normalize = dtype == "float64"
    result = patch_sweep(
        m,
        pair.clean,
        pair.corrupted,
        family,
        answer=step,
        positions=positions,
        layers=[0, -1],
        batch_size=batch_size,
        normalize=normalize,
    )
    assert result.layers == [0, m.cfg.n_layers - 1]
    heads = result.heads if result.heads is not None else [None]
    groups = [g.positions for g in result.groups]
    ref, ref_clean, ref_corrupted, ref_passes = naive_loop(
        m, pair.clean, pair.corrupted, step, family, result.layers, heads, groups
    )
    if normalize:
        ref = (ref - ref_corrupted) / (ref_clean - ref_corrupted)
    ours = result.values.reshape(ref.shape)  # [layer, head?, position?] -> [layer, head, group]
    assert (ours - ref).abs().max().item() <= 1e-5

    n_cells = len(result.layers) * len(heads) * len(groups)
    assert result.n_cells == n_cells
    assert ref_passes == n_cells + 2
    assert result.n_forward_passes == 2 + math.ceil(n_cells / batch_size)
    assert result.n_forward_passes < ref_passes
    assert abs(float(result.clean_metric[0]) - ref_clean) <= 1e-5
    assert abs(float(result.corrupted_metric[0]) - ref_corrupted) <= 1e-5


@pytest.fixture(scope="module")
def patch_result(model, pairs):
    pair = counting_pair(model, pairs[0])
    return patch_sweep(
        model,
        pair.clean,
        pair.corrupted,
        "resid_pre",
        answer=pair.first_step,
        positions="image_patch",
    )


def test_result_axes_and_labels(model, pairs, patch_result):
    pair = counting_pair(model, pairs[0])
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    by_head = patch_sweep(model, pair.clean, pair.corrupted, "z", answer=pair.first_step)
    assert by_head.dims == ("layer", "head")
    assert by_head.values.shape == (n_layers, n_heads)
    assert by_head.n_forward_passes == 3  # clean, corrupted, 16 cells in one batch of 32
    assert patch_result.dims == ("layer", "position")
    assert patch_result.values.shape == (n_layers, 16)
    assert patch_result.labels("position")[:2] == ["[0,0]", "[0,1]"]
    assert patch_result.image_map(layer=0).shape == (4, 4)
    assert torch.equal(patch_result.image_map(layer=1).flatten(), patch_result.get(layer=1))
    by_each = patch_sweep(
        model, pair.clean, pair.corrupted, "resid_pre", answer=pair.first_step, layers=[-1]
    )
    assert by_each.layers == [n_layers - 1]
    assert by_each.values.shape == (1, pair.clean.input_ids.shape[1] + 1)  # + the answer prefix
    assert by_each.groups[-1].kind == "generated"
    assert by_each.groups[-1].label.startswith(f"{pair.clean.input_ids.shape[1]} generated")


def test_to_rows_and_heatmaps(model, pairs, patch_result):
    rows = patch_result.to_rows()
    assert len(rows) == patch_result.values.numel()
    first = rows[0]
    assert {"family", "step", "layer", "position", "kind", "row", "col", "value"} <= set(first)
    assert (first["layer"], first["row"], first["col"], first["step"]) == (0, 0, 0, 1)
    assert first["value"] == float(patch_result.values[0, 0])
    fig = patch_result.heatmap()
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == model.cfg.n_layers  # one [h, w] map per layer
    assert len(fig.data[0].z) == 4 and len(fig.data[0].z[0]) == 4
    pair = counting_pair(model, pairs[0])
    heads = patch_sweep(model, pair.clean, pair.corrupted, "pattern", answer=pair.first_step)
    fig = heads.heatmap()
    assert len(fig.data) == 1
    assert len(fig.data[0].z) == model.cfg.n_layers


# ----------------------------------------------------------------------------- steps


def test_teacher_forcing_matches_kv_cached_generation(model, pairs):
    """Forward over prompt + generated prefix = generation's step k (last-row logits)."""
    pair = counting_pair(model, pairs[0])
    out = model.generate(pair.clean, max_new_tokens=4)
    tokens = out.tokens[0]
    for k in range(tokens.shape[0]):
        forced = with_answer_prefix(pair.clean, tokens[:k])
        assert forced.segments.samples[0].generated is not None or k == 0
        with torch.no_grad():
            logits = model(forced)[0, -1]
        assert (logits - out.logits[k, 0]).abs().max().item() <= 1e-5
        # The patching code path (last row only) reads the same logits.
        step = AnswerStep(tuple(tokens[:k].tolist()), 17, 18)
        run = run_patched(model, pair.clean, pair.clean, step, [], normalize=False)
        assert abs(run.clean_metric - float(logit_diff(out.logits[k], step)[0])) <= 1e-5


def test_sweep_over_every_differing_digit_step(model):
    """10 vs 9: step 0 compares "1" with "9"; step 1 (after "1") compares "0" with the end."""
    pair = counting_pair(
        model, counterfactual_pairs(1, seed=0, **{**PAIR_SPEC, "count_range": (9, 10)})[0]
    )
    assert (pair.pair.clean.count, pair.pair.corrupted.count) == (10, 9)
    assert [s.step for s in pair.steps] == [0, 1]
    res = patch_sweep(
        model, pair.clean, pair.corrupted, "resid_pre", answer=pair.steps, positions="segment"
    )
    assert res.dims == ("step", "layer", "position")
    assert res.labels("position") == ["system", "image", "text", "generated"]
    generated = res.get(position="generated")  # [step, layer]
    assert torch.isnan(generated[0]).all() and torch.isfinite(generated[1]).all()
    assert res.n_forward_passes == 2 * 3  # per step: clean, corrupted, one batch of 4x4 rows
    assert res.clean_metric.shape == (2,)


def test_answer_steps_teacher_force_shared_digits():
    steps = answer_steps([1, 6], [1, 5])
    assert steps == [AnswerStep((1,), 6, 5)]
    steps = answer_steps([1, 0], [9], end_token=99)
    assert steps == [AnswerStep((), 1, 9), AnswerStep((1,), 0, 99)]
    with pytest.raises(ValueError, match="past the end"):
        answer_steps([1, 0], [9], steps=[1])


def test_degenerate_step_is_refused(model, pairs):
    pair = counting_pair(model, pairs[0])  # 16 vs 15: step 0 is "1" for both
    same = AnswerStep((), pair.clean_answer[0], pair.corrupted_answer[0])
    with pytest.raises(ValueError, match="nothing to restore"):
        patch_sweep(model, pair.clean, pair.corrupted, "z", answer=same)


# ----------------------------------------------------------------------------- layouts


def test_counting_pair_builds_matching_layouts(model, pairs):
    tokenizer = model.processor.tokenizer
    for dots_pair in pairs:
        pair = counting_pair(model, dots_pair)
        assert layout_difference(pair.clean, pair.corrupted) is None
        assert torch.equal(pair.clean.input_ids, pair.corrupted.input_ids)  # same prompt
        assert not torch.equal(pair.clean["pixel_values"], pair.corrupted["pixel_values"])
        assert tokenizer.decode(pair.clean_answer) == str(dots_pair.clean.count)
        assert tokenizer.decode(pair.corrupted_answer) == str(dots_pair.corrupted.count)
        # N + 1 vs N in 10..16: the tens digit is shared and teacher-forced.
        assert pair.steps == [
            AnswerStep(pair.clean_answer[:1], pair.clean_answer[1], pair.corrupted_answer[1])
        ]
        assert COUNT_PROMPT in pair.clean.texts[0]


def _white(w: int, h: int) -> Image.Image:
    return Image.new("RGB", (w, h), "white")


def test_different_image_grids_are_refused_with_the_difference(model):
    clean = model.prepare(images=[_white(64, 64)], prompt=COUNT_PROMPT)
    corrupted = model.prepare(images=[_white(64, 96)], prompt=COUNT_PROMPT)  # 64 wide, 96 high
    step = AnswerStep((), 17, 18)
    message = "clean has 16 image tokens (grid 4x4), corrupted has 20 (grid 5x4)"
    assert layout_difference(clean, corrupted) == message
    with pytest.raises(ValueError, match=r"same token layout.*\(grid 4x4\).*\(grid 5x4\)"):
        patch_sweep(model, clean, corrupted, "resid_pre", answer=step)
    with pytest.raises(ValueError, match=r"16 image tokens \(grid 4x4\), corrupted has 20"):
        run_patched(model, clean, corrupted, step, [Patch("resid_pre", 0)])


def test_different_token_counts_and_batches_are_refused(model):
    clean = model.prepare(images=[_white(64, 64)], prompt=COUNT_PROMPT)
    longer = model.prepare(images=[_white(64, 64)], prompt=COUNT_PROMPT + "Now. ")
    with pytest.raises(ValueError, match=r"clean has \d+ tokens, corrupted has \d+"):
        patch_sweep(model, clean, longer, "z", answer=AnswerStep((), 17, 18))
    two = model.prepare(images=[_white(64, 64), _white(64, 64)], prompt=COUNT_PROMPT)
    assert "clean has 1 image(s), corrupted has 2" in layout_difference(clean, two)
    batch = model.prepare(images=[_white(64, 64)] * 2, prompt=[COUNT_PROMPT] * 2)
    assert "batch of 2" in layout_difference(clean, batch)


def test_bad_arguments_are_named(model, pairs):
    pair = counting_pair(model, pairs[0])
    with pytest.raises(ValueError, match="unknown hook family"):
        patch_sweep(model, pair.clean, pair.corrupted, "mlp_out", answer=pair.first_step)
    with pytest.raises(ValueError, match="has no heads"):
        patch_sweep(
            model, pair.clean, pair.corrupted, "resid_pre", answer=pair.first_step, heads=[0]
        )
    with pytest.raises(ValueError, match="unknown position grouping"):
        patch_sweep(
            model, pair.clean, pair.corrupted, "z", answer=pair.first_step, positions="patches"
        )


def _resume_not_validated(tiny_ckpt, arch: str) -> str | None:
    """Families whose patched batches are not validated yet: cross-attention, tiled images and
    prefix-LM prompts (issue #15); `resume_unsupported` sends them down the full path."""
    from vlm_lens.architectures import get

    adapter = get(arch).adapter
    if adapter.cross_attention or adapter.layout is not None or adapter.prompt_template:
        return f"{arch}: patching sweeps not validated yet on this family (issue #15)"
    return None


@pytest.mark.parametrize("resume", [True, False])
@pytest.mark.parametrize("arch", newest_per_family())
def test_patched_batches_encode_the_image_once(tiny_ckpt, pairs, arch, resume):
    """Resumed: the image is encoded by the clean and the corrupted run only (the patched
    batches start inside the language model). Full path: rows of a patched batch share one
    vision-tower pass (its output is stacked back)."""
    if not_validated := _resume_not_validated(tiny_ckpt, arch):
        pytest.skip(not_validated)
    from vlm_lens.adapters import get_module

    m = HookedVLM.from_pretrained(tiny_ckpt(arch))
    pair = counting_pair(m, pairs[0])
    tower = get_module(m.hf_model, m.adapter.vision_tower)
    seen: list[int] = []

    def record(module, args, kwargs, output):
        pixels = args[0] if args else kwargs["pixel_values"]
        seen.append(pixels.shape[0])

    given: list[int] = []  # pixel rows handed to the HF model (copied per row or not)

    def record_input(module, args, kwargs):
        given.append(kwargs["pixel_values"].shape[0])

    pixels = pair.corrupted["pixel_values"]
    # [images, crops, 3, H, W] (any-resolution: the tower sees every crop) or [images, ...]
    single = pixels.flatten(0, 1).shape[0] if pixels.dim() == 5 else pixels.shape[0]
    handles = [
        tower.register_forward_hook(record, with_kwargs=True),
        m.hf_model.register_forward_pre_hook(record_input, with_kwargs=True),
    ]
    try:
        res = patch_sweep(
            m, pair.clean, pair.corrupted, "z", answer=pair.first_step, batch_size=5, resume=resume
        )
    finally:
        for handle in handles:
            handle.remove()
    if resume:
        assert res.n_forward_passes == 2 + math.ceil(res.n_cells / 5)
        assert len(seen) == 2
    else:
        assert res.n_forward_passes == 1 + math.ceil((res.n_cells + 1) / 5) == len(seen)
    assert seen == [single] * len(seen)
    assert given == [pixels.shape[0]] * len(seen)  # the pixels are never repeated per row


# ----------------------------------------------------------------------------- resuming


def _layer_tokens(model: HookedVLM, n_pos: int, batches: list[tuple[int, int, int]]) -> int:
    """Decoder layers x rows x positions of a resumed sweep: the clean and corrupted runs in
    full, then each batch (start layer, rows, first position) from where it starts."""
    n = model.cfg.n_layers
    return 2 * n * n_pos + sum(
        rows * (n - start) * (n_pos - first) for start, rows, first in batches
    )


RESUMED = [
    ("resid_pre", "image_patch"),
    ("resid_post", "segment"),
    ("z", "all"),
    ("pattern", "last"),
]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_resumed_sweep_equals_full_path_on_every_architecture(tiny_ckpt, pairs, arch):
    """Batches started at their first patched layer (and position) from the corrupted run
    give the values of batches run from the inputs (raw logit differences, float32), skip the
    layers (and positions) below, and `run_patched` agrees too. Positions are skipped where
    attention is causal: not inside Gemma3's image, whose tokens see each other both ways."""
    if not_validated := _resume_not_validated(tiny_ckpt, arch):
        pytest.skip(not_validated)
    m = HookedVLM.from_pretrained(tiny_ckpt(arch))
    pair = counting_pair(m, pairs[0])
    n, batch = m.cfg.n_layers, 7
    x = with_answer_prefix(pair.corrupted, pair.first_step.prefix)
    n_pos = x.input_ids.shape[1]
    point = record_resume_point(m, x, list(range(n)))
    image = x.segments.samples[0].images[0]
    inside = 0 if arch == "gemma3" else image.start + 1
    assert point.first_position(0, image.start + 1) == inside
    assert point.first_position(1, image.end) == image.end  # the first text token
    for family, positions in RESUMED:
        kw = dict(answer=pair.first_step, positions=positions, normalize=False, batch_size=batch)
        fast = patch_sweep(m, pair.clean, pair.corrupted, family, resume=True, **kw)
        full = patch_sweep(m, pair.clean, pair.corrupted, family, resume=False, **kw)
        assert (fast.values - full.values).abs().max().item() <= 1e-5, (family, positions)
        assert abs(float(fast.corrupted_metric[0] - full.corrupted_metric[0])) <= 1e-5
        assert float(fast.clean_metric[0]) == float(full.clean_metric[0])
        # A layer with a batch's worth of cells (16 image patches) gets batches of its own;
        # fewer cells per layer (4 segments, 4 heads) share batches across layers.
        firsts = [min(g.positions) for _ in fast.heads or [None] for g in fast.groups]
        if len(firsts) >= batch:
            spans = [
                (layer, firsts[i : i + batch])
                for layer in range(n)
                for i in range(0, len(firsts), batch)
            ]
        else:
            cells = [(layer, f) for layer in range(n) for f in firsts]
            spans = [
                (cells[i][0], [f for _, f in cells[i : i + batch]])
                for i in range(0, len(cells), batch)
            ]
        batches = [(start, len(fs), point.first_position(start, min(fs))) for start, fs in spans]
        assert fast.n_forward_passes == 2 + len(batches)
        assert fast.n_layer_tokens == _layer_tokens(m, n_pos, batches) < full.n_layer_tokens
    patches = [Patch("resid_pre", 2, "last"), Patch("z", -1, "all", heads=[0])]
    args = (m, pair.clean, pair.corrupted, pair.first_step, patches)
    fast_run = run_patched(*args, normalize=False, resume=True)
    full_run = run_patched(*args, normalize=False, resume=False)
    assert abs(fast_run.value - full_run.value) <= 1e-5
    assert (fast_run.logits - full_run.logits).abs().max().item() <= 1e-5


def test_resuming_respects_hooks_already_on_the_model(model, pairs):
    """Hooks a user attached around the sweep fire as in a full pass: above the start layer
    they fire again, below it their effect is in the recorded stream; a hook on a deepstack
    addition (which lands where the stream is recorded) rules its next layer out as a start."""
    pair = counting_pair(model, pairs[0])
    n_ds = _n_deepstack(model)

    def shift(act, hook):
        return act + 0.05

    def scale(act, hook):
        return act * 1.5

    user = [("blocks.1.hook_resid_pre", shift), (f"blocks.{n_ds - 1}.hook_deepstack", scale)]
    kw = dict(answer=pair.first_step, positions="image_patch", normalize=False, batch_size=16)
    with model.hooks(fwd_hooks=user):
        fast = patch_sweep(model, pair.clean, pair.corrupted, "resid_pre", resume=True, **kw)
        full = patch_sweep(model, pair.clean, pair.corrupted, "resid_pre", resume=False, **kw)
        point = record_resume_point(model, with_answer_prefix(pair.corrupted, [1]), [0, n_ds])
    plain = patch_sweep(model, pair.clean, pair.corrupted, "resid_pre", **kw)
    assert (fast.values - full.values).abs().max().item() <= 1e-5
    assert (fast.values - plain.values).abs().max().item() > 1e-3  # the hooks did act
    assert point.resumable(0) and not point.resumable(n_ds)
    # 16 image patches per layer, one batch per layer; layer n_ds's batch ran in full.
    n = model.cfg.n_layers
    n_pos = pair.corrupted.input_ids.shape[1] + 1
    first = pair.corrupted.segments.samples[0].images[0].start
    batches = [(layer, 16, first) if layer != n_ds else (0, 16, 0) for layer in range(n)]
    assert fast.n_layer_tokens == _layer_tokens(model, n_pos, batches)


def test_an_unreproduced_step_between_layers_falls_back_to_the_full_path(model, pairs):
    """If the language model does something between layers that resuming does not reproduce
    (here: Qwen3-VL's deepstack addition made to add twice), recording detects it, the layers
    before it are not used as starts, and the sweep still gives the full path's values."""
    pair = counting_pair(model, pairs[0])
    lm = model.hf_model.get_submodule(model.adapter.language_model)
    original = lm._deepstack_process
    n_ds, n = _n_deepstack(model), model.cfg.n_layers

    def twice(hidden, masks, embeds):
        return original(original(hidden, masks, embeds), masks, embeds)

    tower = model.hf_model.get_submodule(model.adapter.vision_tower)
    encoded: list[int] = []
    handle = tower.register_forward_hook(lambda *args: encoded.append(1))
    lm._deepstack_process = twice  # this instance only, undone below
    try:
        point = record_resume_point(model, pair.corrupted, list(range(n)))
        encoded.clear()
        kw = dict(
            answer=pair.first_step, positions="all", layers=[0, n_ds], normalize=False, batch_size=1
        )
        fast = patch_sweep(model, pair.clean, pair.corrupted, "resid_pre", resume=True, **kw)
        n_encoded = len(encoded)
        full = patch_sweep(model, pair.clean, pair.corrupted, "resid_pre", resume=False, **kw)
    finally:
        del lm._deepstack_process
        handle.remove()
    assert point.exact == [False] * n_ds + [True] * (n - n_ds)
    assert [point.resumable(layer) for layer in range(n)] == [False] * n_ds + [True] * (n - n_ds)
    assert "after layer(s)" in point.reasons[0]
    assert (fast.values - full.values).abs().max().item() <= 1e-5
    # Layer 0's batch ran from the inputs (the image encoded a third time), layer n_ds's resumed.
    assert n_encoded == 3 and fast.n_forward_passes == 4
    n_pos = pair.corrupted.input_ids.shape[1] + 1
    assert fast.n_layer_tokens == _layer_tokens(model, n_pos, [(0, 1, 0), (n_ds, 1, 0)])
