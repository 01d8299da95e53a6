"""Row- and step-selective attention hooks (`vlm_lens.core.attention.select`) on every architecture:
the rows a hook declares equal those rows of the full pattern, edits through them equal the
same edits through the full explicit path, undeclared rows and steps take SDPA."""

from __future__ import annotations

import pytest
import torch

from vlm_lens import HookedVLM
from vlm_lens.core import attention
from vlm_lens.core.attention import select
from vlm_lens.core.generation import AttentionRecord
from vlm_lens.core.recording import AttentionRecorder
from vlm_lens.data import dots
from vlm_lens.interventions import redistribute
from vlm_lens.zoo import ARCHITECTURES

PROMPT = "Is there a red dot in the image? Answer: "


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def model(request, tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt(request.param))


@pytest.fixture(scope="module")
def inputs(model):
    # Two prompts of different lengths: left padding, so the mask is a boolean tensor.
    a, b = (s.image for s in dots.generate(2, seed=0, size=64, radius=3, count_range=(2, 4)))
    return model.prepare(images=[a, b], prompt=[PROMPT, "Dots? "])


def _keep(store: list, name: str = "pattern"):
    def fn(t, hook):
        store.append((t.detach().clone(), hook.run.row_positions.clone()))

    return fn


def _halve_even_keys(t, hook):
    """An edit that depends on the rows it is given: in rows at odd absolute positions, halve
    the even keys, then renormalise."""
    t = t.clone()
    odd = (hook.run.row_positions % 2 == 1).to(t.device)
    t[:, :, odd, ::2] *= 0.5
    return t / t.sum(-1, keepdim=True)


@pytest.mark.parametrize("rows", ["last", "answer", slice(3, 9), [2, 5, 11]])
def test_selected_rows_equal_the_full_pattern_rows(model, inputs, rows):
    name = "blocks.-1.attn.hook_pattern"
    full, part = [], []
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(name, _keep(full))])
        model.run_with_hooks(inputs, fwd_hooks=[(name, select(_keep(part), rows=rows))])
    (pattern, _), ((got, got_positions),) = full[0], part
    n = pattern.shape[2]
    expected = (
        {
            "last": [n - 1],
            "answer": [n - 1],  # prefill: the last prompt row
        }.get(rows)
        if isinstance(rows, str)
        else (list(range(n))[rows] if isinstance(rows, slice) else rows)
    )
    assert got_positions.tolist() == expected
    assert got.shape == (*pattern.shape[:2], len(expected), pattern.shape[3])
    assert (got - pattern[:, :, expected]).abs().max().item() <= 1e-6


def test_scores_rows_are_selected_too(model, inputs):
    full, part = [], []
    name = "blocks.0.attn.hook_attn_scores"
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(name, _keep(full))])
        model.run_with_hooks(inputs, fwd_hooks=[(name, select(_keep(part), rows=[4, 7]))])
    scores, got = full[0][0], part[0][0]
    # Masked entries hold the dtype's minimum in both (the same additive mask rows).
    assert torch.equal(
        got == torch.finfo(got.dtype).min, scores[:, :, [4, 7]] == torch.finfo(got.dtype).min
    )
    visible = got > torch.finfo(got.dtype).min
    assert (got[visible] - scores[:, :, [4, 7]][visible]).abs().max().item() <= 1e-5


def _plain(t, hook):
    return None  # a hook that declares nothing: forces the full explicit path


def test_edit_through_rows_equals_the_full_path(model, inputs):
    name = "blocks.-1.attn.hook_pattern"
    edit = select(_halve_even_keys, rows=[3, 8, 13])
    with torch.no_grad():
        clean = model(inputs)
        selective = model.run_with_hooks(inputs, fwd_hooks=[(name, edit)])
        # The same Selection on the full path (a plain hook beside it): it gets its rows out of
        # the full pattern and writes them back.
        full = model.run_with_hooks(inputs, fwd_hooks=[(name, _plain), (name, edit)])
    real = inputs.attention_mask.bool()
    assert (selective - clean)[real].abs().max().item() > 1e-4, "the edit must change something"
    assert (selective - full)[real].abs().max().item() <= 1e-5


def test_answer_intervention_equals_the_full_path(model, inputs):
    if model.cfg.arch == "paligemma":
        pytest.skip("PaliGemma prompts have no system span (the image comes first)")
    iv = redistribute("system", "text", "Q4", model=model)
    plain = [(f"blocks.{layer}.attn.hook_pattern", _plain) for layer in iv.layer_indices()]
    with torch.no_grad():
        clean = model(inputs)
        selective = model.run_with_hooks(inputs, fwd_hooks=iv)
        full = model.run_with_hooks(inputs, fwd_hooks=plain + list(iv))
    real = inputs.attention_mask.bool()
    assert (selective[:, -1] - clean[:, -1]).abs().max().item() > 1e-4
    # (padding positions: the full path gives a fully masked row uniform weights, SDPA does not)
    assert (selective - full)[real].abs().max().item() <= 1e-5
    # Rows that are not the answer row are SDPA's: identical to the clean run.
    assert (selective[:, :-1] - clean[:, :-1]).abs().max().item() <= 1e-6


def test_rows_not_selected_equal_sdpa(model, inputs):
    zs: dict[str, torch.Tensor] = {}

    def keep_z(tag):
        def fn(z, hook):
            zs[tag] = z.detach().clone()

        return fn

    rows = [3, 8, 13]
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[("blocks.-1.attn.hook_z", keep_z("sdpa"))])
        model.run_with_hooks(
            inputs,
            fwd_hooks=[
                ("blocks.-1.attn.hook_pattern", select(_halve_even_keys, rows=rows)),
                ("blocks.-1.attn.hook_z", keep_z("edited")),
            ],
        )
    other = [i for i in range(zs["sdpa"].shape[1]) if i not in rows]
    assert torch.equal(zs["edited"][:, other], zs["sdpa"][:, other])
    assert not torch.allclose(zs["edited"][:, rows], zs["sdpa"][:, rows])


def test_union_of_declared_rows_each_hook_sees_its_own(model, inputs):
    name = "blocks.-1.attn.hook_pattern"
    full, a, b = [], [], []
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(name, _keep(full))])
        model.run_with_hooks(
            inputs,
            fwd_hooks=[
                (name, select(_keep(a), rows=[2, 6])),
                (name, select(_keep(b), rows="last")),
            ],
        )
    pattern = full[0][0]
    n = pattern.shape[2]
    assert a[0][1].tolist() == [2, 6] and b[0][1].tolist() == [n - 1]
    assert (a[0][0] - pattern[:, :, [2, 6]]).abs().max().item() <= 1e-6
    assert (b[0][0] - pattern[:, :, [n - 1]]).abs().max().item() <= 1e-6


def test_chunked_reading_and_editing(model, inputs):
    name = "blocks.-1.attn.hook_pattern"
    full, chunks = [], []
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(name, _keep(full))])
        model.run_with_hooks(inputs, fwd_hooks=[(name, select(_keep(chunks), rows="all", chunk=5))])
        edited_full = model.run_with_hooks(inputs, fwd_hooks=[(name, _halve_even_keys)])
        edited_chunked = model.run_with_hooks(
            inputs, fwd_hooks=[(name, select(_halve_even_keys, rows="all", chunk=5))]
        )
    pattern = full[0][0]
    assert all(t.shape[2] <= 5 for t, _ in chunks) and len(chunks) > 1
    positions = torch.cat([p for _, p in chunks])
    assert positions.tolist() == list(range(pattern.shape[2]))
    assert (torch.cat([t for t, _ in chunks], dim=2) - pattern).abs().max().item() <= 1e-6
    assert (edited_chunked - edited_full).abs().max().item() <= 1e-5


def test_row_selective_recorder_equals_full_path_recorder(model, inputs):
    spec = AttentionRecord(layers="all", keep=("image", "shares", "full"), steps=[0, 2])
    n_new = 3
    with torch.no_grad():
        selective = model.generate(inputs, max_new_tokens=n_new, min_new_tokens=n_new, record=spec)
        plain = AttentionRecorder(spec, model.cfg.n_layers, model.cfg.cross_attention_layers)
        # The recorder's own hook function, attached without its declaration: the full path.
        hooks = [(name, plain._hook) for name, _ in plain.fwd_hooks()]
        full = model.generate(inputs, max_new_tokens=n_new, min_new_tokens=n_new, fwd_hooks=hooks)
    assert torch.equal(selective.tokens, full.tokens)
    got, want = selective.recording, plain.recording
    assert got.steps == want.steps == [0, 2]
    for what in ("image", "shares", "full"):
        for step in (0, 2):
            a, b = getattr(got, what)[step], getattr(want, what)[step]
            assert a.shape == b.shape
            assert torch.allclose(a.nan_to_num(-1), b.nan_to_num(-1), atol=1e-6, rtol=0)


def test_undeclared_steps_take_sdpa(model, inputs, monkeypatch):
    if getattr(model.hf_model.config.get_text_config(), "attn_logit_softcapping", None):
        pytest.skip("soft-capped scores (Gemma 2) have no SDPA kernel: every layer is explicit")
    calls: list[tuple[int, int]] = []
    explicit = attention._explicit

    def spy(query, *args, **kwargs):
        calls.append((model.run_state.step, query.shape[2]))
        return explicit(query, *args, **kwargs)

    monkeypatch.setattr(attention, "_explicit", spy)
    seen: list[int] = []
    fn = select(lambda t, hook: seen.append(hook.run.step), rows="last", steps=[1])
    with torch.no_grad():
        model.generate(inputs, max_new_tokens=3, min_new_tokens=3)
        assert calls == [], "no hooks: SDPA everywhere"
        model.generate(
            inputs,
            max_new_tokens=3,
            min_new_tokens=3,
            fwd_hooks=[("blocks.0.attn.hook_pattern", fn)],
        )
    assert seen == [1]
    assert calls == [(1, 1)], "only step 1 of layer 0 computes its pattern explicitly"
    calls.clear()
    with torch.no_grad():
        model.run_with_hooks(
            inputs,
            fwd_hooks=[("blocks.0.attn.hook_pattern", select(lambda t, h: None, rows="last"))],
        )
    assert calls == [(0, 1)], "a prefill row selection computes one row explicitly, not P"


def test_bad_declarations_are_refused():
    fn = lambda t, hook: None  # noqa: E731
    with pytest.raises(ValueError, match="rows must be one of"):
        select(fn, rows="first")
    with pytest.raises(ValueError, match="non-negative ints"):
        select(fn, rows=[-1])
    with pytest.raises(ValueError, match="steps must be"):
        select(fn, steps=[-2])
    with pytest.raises(ValueError, match="chunk must be"):
        select(fn, rows="all", chunk=0)
    with pytest.raises(ValueError, match="contiguous"):
        select(fn, rows=slice(0, 8, 2))
    with pytest.raises(TypeError, match="hook function"):
        select("not a function")
