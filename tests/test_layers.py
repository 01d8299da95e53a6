"""The one layer-spec grammar (`vlm_lens.core.layers`), and that every layer list takes it."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_lens import HookedVLM
from vlm_lens.core.layers import needs_depth, resolve_layers
from vlm_lens.core.recording import AttentionRecord
from vlm_lens.interventions import redistribute
from vlm_lens.studies.counting import PAPER_LAYERS, study_layers


def test_words_slices_quarters_and_ints():
    assert resolve_layers("last", 6) == [5]
    assert resolve_layers("all", 3) == resolve_layers(None, 3) == [0, 1, 2]
    assert resolve_layers("q4", 8) == resolve_layers("Q4", 8) == [6, 7]
    assert resolve_layers("-2:", 6) == resolve_layers(slice(-2, None), 6) == [4, 5]
    assert resolve_layers(["8", "-1"], 12) == [8, 11]  # ints as a command line gives them
    assert resolve_layers(np.int64(-1), 4) == [3]
    assert resolve_layers([], 4) == []


def test_order_of_first_mention_when_asked():
    assert resolve_layers([-1, 0, 3, "last"], 4) == [0, 3]
    assert resolve_layers([-1, 0, 3, "last"], 4, sort=False) == [3, 0]


def test_presets_are_the_callers_and_drop_layers_a_shallow_model_lacks():
    presets = {"paper": (-1, 8, 16, 24)}
    assert resolve_layers("paper", 28, presets, sort=False) == [27, 8, 16, 24]
    assert resolve_layers("paper", 12, presets, sort=False) == [11, 8]
    with pytest.raises(IndexError):  # an explicit index is not dropped: it is an error
        resolve_layers([24], 12)
    with pytest.raises(ValueError, match="'paper'"):  # no preset unless the caller names one
        resolve_layers("paper", 28)


def test_bad_specs_say_what_is_accepted():
    with pytest.raises(ValueError, match="Q1'..'Q4'"):
        resolve_layers("middle", 8)
    with pytest.raises(ValueError, match="empty"):
        resolve_layers("Q2", 2)
    with pytest.raises(TypeError):
        resolve_layers(True, 4)
    with pytest.raises(ValueError, match="unknown layer spec 1.5"):
        resolve_layers(1.5, 4)


def test_needs_depth():
    assert not needs_depth([0, 3]) and not needs_depth(2)
    assert needs_depth(-1) and needs_depth("Q4") and needs_depth(None) and needs_depth("3")


def test_the_counting_study_keeps_its_own_paper_layers():
    assert study_layers("paper", 32) == [31, 8, 16, 24]
    assert study_layers(None, 4) == study_layers("last", 4) == [3]
    assert study_layers(0, 4) == [0]  # a falsy layer is still a layer
    assert study_layers("2:", 4) == [2, 3]  # the shared grammar works here too
    assert PAPER_LAYERS == (-1, 8, 16, 24)


def test_every_layer_list_takes_the_grammar(tiny_ckpt):
    model = HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))
    n = model.cfg.n_layers
    assert model.resolve_layers("-2:") == [n - 2, n - 1]
    inputs = model.prepare(images=[np.full((32, 32, 3), 255, np.uint8)], prompt="Count: ")
    out = model.generate(inputs, max_new_tokens=1, record=AttentionRecord(layers="last"))
    assert out.recording.layers == [n - 1]
    assert out.recording.image[0].shape[1] == 1  # one recorded layer on the layer axis
    iv = redistribute("system", "text", layers="-1:", n_layers=n)
    assert iv.layer_indices() == [n - 1]
