"""The shipped model organism (a trained dots-counting Qwen3-VL) and its training script."""

from __future__ import annotations

import pytest
import torch

from vlm_lens import HookedVLM, zoo
from vlm_lens.data import dots
from vlm_lens.zoo import organism_path, train

# Held-out: training draws seeds >= 10_000_000, validation 5_000, the benchmark 10_000-10_003.
TEST_SEED = 20_260


@pytest.fixture(scope="module")
def organism_model() -> HookedVLM:
    torch.set_num_threads(1)
    return HookedVLM.from_pretrained(zoo.organism())


def test_organism_dir_holds_a_small_safetensors_checkpoint():
    path = zoo.organism()
    for name in ("config.json", "model.safetensors", "processor_config.json", "training.json"):
        assert (path / name).is_file(), name
    total = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    assert total <= 25 * 10**6


def test_shipped_processor_maps_white_to_zero(organism_model):
    proc = organism_model.processor.image_processor
    assert list(proc.image_mean) == [1.0, 1.0, 1.0]
    assert list(proc.image_std) == [0.5, 0.5, 0.5]


def test_organism_counts_held_out_paper_spec_images(organism_model):
    samples = dots.generate(16, TEST_SEED)  # the paper's spec: radius 10, counts 10-16
    inputs = organism_model.prepare(
        images=[[s.image] for s in samples], prompt=[train.COUNT_PROMPT] * len(samples)
    )
    texts = organism_model.generate(inputs, max_new_tokens=4).texts
    values = [train.parse_count(t) for t in texts]
    assert all(v is not None for v in values), texts
    right = sum(v == s.count for v, s in zip(values, samples))
    assert right >= 12, list(zip(values, [s.count for s in samples]))


def test_organism_raises_a_clear_error_without_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(organism_path, "ORGANISM_DIR", tmp_path / "organism")
    with pytest.raises(FileNotFoundError, match="python -m vlm_lens.zoo.train"):
        organism_path.organism()


def test_short_training_run_lowers_the_loss():
    first, last = train.smoke(steps=30)
    assert last < 0.5 * first, (first, last)


def test_learning_rate_schedule_warms_up_then_decays_to_the_floor():
    f = [train.lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert train.lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_yes_no_training_rows_are_balanced():
    cfg = train.TrainConfig(out="", batch=16, yesno_fraction=0.5)
    rows = [r for step in range(6) for r in train.training_batch(cfg, step) if r.kind != "count"]
    yes = sum(r.answer == "yes" for r in rows)
    assert 0.25 < yes / len(rows) < 0.75
    for r in rows:
        assert r.answer in ("yes", "no")
