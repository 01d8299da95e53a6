"""Mllama (Llama-3.2-Vision): cross-attention hook points, their patterns and edits, the image
keys' layout, and the recording that reads image attention from the cross-attention layers."""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image

from vlm_lens import HookedVLM
from vlm_lens.architectures.mllama import image_key_grid
from vlm_lens.core.attention import _expand_kv
from vlm_lens.core.generation import AttentionRecord
from vlm_lens.core.segments import SEGMENT_KINDS
from vlm_lens.data import dots
from vlm_lens.interventions import scale_image

PROMPT = "How many dots are there? Answer: "


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt("mllama"))


@pytest.fixture(scope="module")
def eager(tiny_ckpt):
    return transformers.MllamaForConditionalGeneration.from_pretrained(
        tiny_ckpt("mllama"), attn_implementation="eager"
    ).eval()


def dots_image(seed: int, width: int = 64, height: int = 64) -> Image.Image:
    sample = dots.generate(1, seed=seed)[0]
    return sample.image.resize((width, height))


def test_cross_attention_layers_have_their_own_hook_points(model):
    cross = model.cfg.cross_attention_layers
    assert cross == tuple(model.hf_model.config.text_config.cross_attention_layers) == (1, 3)
    names = set(model.hook_dict)
    family = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")
    for layer in range(model.cfg.n_layers):
        own, other = ("cross_attn", "attn") if layer in cross else ("attn", "cross_attn")
        for attr in (*family, "hook_result"):
            assert f"blocks.{layer}.{own}.{attr}" in names
            assert f"blocks.{layer}.{other}.{attr}" not in names
        # HF gates the cross layer's sum inside the layer: no module gives its mid stream.
        assert (f"blocks.{layer}.hook_resid_mid" in names) == (layer not in cross)
    hp = model.hf_model.model.language_model.layers[1].cross_attn.hook_pattern
    assert hp is model.hook_dict["blocks.1.cross_attn.hook_pattern"]


def test_cross_attention_patterns_equal_hf_eager_and_logits_match(model, eager):
    inputs = model.prepare(images=[dots_image(0)], prompt=PROMPT)
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, names_filter=lambda n: "cross_attn" in n)
        ref = eager(**inputs.tensors, output_attentions=True)
    assert (logits - ref.logits).abs().max().item() <= 1e-5
    tiles, per_tile, _ = image_key_grid(model.hf_model.config)
    n_query = inputs.input_ids.shape[1]
    for layer in model.cfg.cross_attention_layers:
        pattern = cache[f"blocks.{layer}.cross_attn.hook_pattern"]
        assert pattern.shape == (1, model.cfg.n_heads, n_query, tiles * per_tile)
        torch.testing.assert_close(pattern, ref.attentions[layer], atol=1e-6, rtol=0)
        assert cache[f"blocks.{layer}.cross_attn.hook_k"].shape[1] == tiles * per_tile


def test_cross_attention_mask_semantics(model):
    """A square image fills one of the two tiles: its second tile's keys get nothing. A text
    row before the image would see no key: HF lifts its mask instead (the row attends to every
    key, the unused tile's too) and zeroes the layer's MLP output there."""
    inputs = model.prepare(images=[dots_image(1)], prompt=PROMPT)
    assert inputs["aspect_ratio_mask"].tolist() == [[[1, 0]]]
    _, per_tile, _ = image_key_grid(model.hf_model.config)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter="blocks.1.cross_attn.hook_pattern")
    pattern = cache["blocks.1.cross_attn.hook_pattern"][0]  # [head, query, key]
    image_at = inputs.segments.samples[0].images[0].start
    after = pattern[:, image_at:]
    assert (after[..., per_tile:] == 0).all()
    torch.testing.assert_close(after.sum(-1), torch.ones_like(after.sum(-1)))
    before = pattern[:, :image_at]
    torch.testing.assert_close(before.sum(-1), torch.ones_like(before.sum(-1)))
    assert (before[..., per_tile:] > 0).all()


def test_two_images_text_reads_the_latest_image_and_keys_are_stitched(model):
    """Text after the second image reads only its keys; a 64 x 128 image fills two tiles side
    by side, stitched into a 4 x 8 patch grid."""
    images = [dots_image(2), dots_image(3, width=128, height=64)]
    inputs = model.prepare(images=images, prompt=f"<image>Left. <image>Right. {PROMPT}")
    tiles, per_tile, side = image_key_grid(model.hf_model.config)
    keys = inputs.segments.samples[0].image_keys
    assert [k.grid for k in keys] == [(side, side), (side, 2 * side)]
    assert keys[0].index[:2] == (1, 2)  # CLS first, then the patches row-major
    assert keys[1].index[side] == tiles * per_tile + per_tile + 1  # (0, side): tile 1's first
    assert keys[1].index[2 * side] == tiles * per_tile + 1 + side  # (1, 0): tile 0's second row
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter="blocks.3.cross_attn.hook_pattern")
    pattern = cache["blocks.3.cross_attn.hook_pattern"][0]
    second = inputs.segments.samples[0].images[1].start
    last_rows = pattern[:, second:]
    assert (last_rows[..., : tiles * per_tile] == 0).all()
    assert last_rows[..., list(keys[1].index)].sum(-1).min() > 0.5


def test_edited_cross_attention_pattern_changes_logits_as_computed_by_hand(model):
    """Moving the last row's cross-attention onto one image key: z is that key's value (per
    head, grouped-query heads sharing it) and the output changes."""
    inputs = model.prepare(images=[dots_image(4)], prompt=PROMPT)
    key = inputs.segments.samples[0].image_keys[0].index[5]
    seen = {}

    def one_key(pattern, hook):
        edited = pattern.clone()
        edited[:, :, -1] = 0
        edited[:, :, -1, key] = 1
        return edited

    def keep(t, hook):
        seen[hook.name] = t.detach().clone()

    hooks = [
        ("blocks.1.cross_attn.hook_pattern", one_key),
        ("blocks.1.cross_attn.hook_v", keep),
        ("blocks.1.cross_attn.hook_z", keep),
    ]
    with torch.no_grad():
        clean = model(inputs)
        edited = model.run_with_hooks(inputs, fwd_hooks=hooks)
    v = seen["blocks.1.cross_attn.hook_v"].transpose(1, 2)  # [batch, kv_head, key, d_head]
    v = _expand_kv(v, model.cfg.n_heads)
    z = seen["blocks.1.cross_attn.hook_z"]  # [batch, query, head, d_head]
    torch.testing.assert_close(z[0, -1], v[0, :, key], atol=1e-6, rtol=0)
    assert (edited[0, -1] - clean[0, -1]).abs().max() > 1e-3
    # Rows other than the last are untouched, so their logits are too.
    torch.testing.assert_close(edited[0, :-1], clean[0, :-1], atol=1e-5, rtol=0)


def test_recording_reads_image_attention_from_the_cross_attention_layers(model):
    """The per-step image record of a cross layer is its pattern over the image's patch keys
    (in `image_keys` order); its shares are all "image"; a self-attention layer's image is the
    one <|image|> token."""
    images = [dots_image(5), dots_image(6)]
    inputs = model.prepare(images=[[im] for im in images], prompt=[PROMPT, "Count: "])
    assert inputs.segments.samples[1].padding.end > 0  # left-padded batch
    seen = {}

    def keep(t, hook):
        if hook.run.step == 1:
            seen[hook.name] = t.detach().clone()

    record = AttentionRecord(layers="all", keep=("image", "shares"))
    out = model.generate(
        inputs,
        max_new_tokens=2,
        min_new_tokens=2,
        record=record,
        fwd_hooks=[(lambda n: n.endswith("hook_pattern"), keep)],
    )
    image = out.recording.image[1]  # [batch, layer, head, query, image]
    shares = out.recording.shares[1]
    for row in range(2):
        index = list(inputs.segments.samples[row].image_keys[0].index)
        pattern = seen["blocks.1.cross_attn.hook_pattern"][row, :, -1]
        torch.testing.assert_close(image[row, 1, :, 0, : len(index)], pattern[:, index])
        torch.testing.assert_close(
            shares[row, 1, :, 0, SEGMENT_KINDS.index("image")], torch.ones(model.cfg.n_heads)
        )
        token = inputs.segments.samples[row].images[0].start
        self_pattern = seen["blocks.0.attn.hook_pattern"][row, :, -1]
        torch.testing.assert_close(image[row, 0, :, 0, 0], self_pattern[:, token])
        assert torch.isnan(image[row, 0, :, 0, 1:]).all()  # padded to the cross layers' width


def test_attention_edits_leave_the_cross_attention_layers_alone(model):
    """A redistribution between segments edits the self-attention layers of its range only: a
    cross-attention layer's keys are all image keys."""
    edit = scale_image(2.0, "all", model=model)
    names = [name for name, _ in edit.fwd_hooks(model)]
    assert names == [
        f"blocks.{i}.attn.{h}" for i in (0, 2, 4) for h in ("hook_attn_scores", "hook_pattern")
    ]
    inputs = model.prepare(images=[dots_image(7)], prompt=PROMPT)
    with torch.no_grad():
        clean = model(inputs)
        edited = model.run_with_hooks(inputs, fwd_hooks=edit.fwd_hooks(model))
    assert (edited[0, -1] - clean[0, -1]).abs().max() > 1e-4


def test_count_cli_maps_the_cross_attention_over_the_image(tiny_ckpt, tmp_path):
    """`vlm-lens count` end to end: a cross-attention layer's entries are maps over the image's
    4 x 4 patch keys (spatial metrics and all); the self-attention layer sees one <|image|>."""
    import json

    from vlm_lens.cli import main

    argv = [
        "count",
        "--model",
        str(tiny_ckpt("mllama")),
        "--n",
        "2",
        "--size",
        "128",
        "--no-controls",
    ]
    argv += ["--radius", "3", "--digits-only", "--no-png", "--no-progress", "--out", str(tmp_path)]
    assert main([*argv, "--layers", "1", "3", "-1", "--example-maps", "2"]) == 0
    (samples,) = tmp_path.rglob("samples.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 2 and (tmp_path / "report.html").exists()
    for row in rows:
        assert row["grid"] == [4, 4]
        by_layer = {e["layer"]: e for e in row["attention"] if e["digit"] == 0}
        for layer in (1, 3):
            entry = by_layer[layer]
            assert len(entry["map"]) == 16 and entry["centroid_hit_rate"] is not None
            assert (
                0.5 < entry["image_mass"] < 1.0
            )  # the patch keys; the tiles' CLS keys take the rest
        assert "map" not in by_layer[4] and by_layer[4]["centre"] is None
