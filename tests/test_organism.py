"""The shipped model organism (a trained dots-counting Qwen3-VL) and its training script."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch

from scripts.organism import train
from vlm_lens import HookedVLM, zoo
from vlm_lens.data import dots
from vlm_lens.zoo import organism_path

# Held-out: training draws seeds >= 10_000_000, validation 5_000, the benchmark 10_000-10_003.
TEST_SEED = 20_260

# train.training_batch(TrainConfig(batch=16, yesno_fraction=0.3), 7), as the shipped run drew it
PINNED_STEP_7 = [
    ("count", "17", 17, "How many dots are there in the"),
    ("count", "17", 17, "How many dots are there in the"),
    ("count", "21", 21, "How many dots are there in the"),
    ("count", "7", 7, "How many dots are there in the"),
    ("count", "6", 6, "How many dots are there in the"),
    ("count", "8", 8, "How many dots are there in the"),
    ("count", "4", 4, "How many dots are there in the"),
    ("count", "6", 6, "How many dots are there in the"),
    ("count", "23", 23, "How many dots are there in the"),
    ("count", "2", 2, "How many dots are there in the"),
    ("count", "11", 11, "How many dots are there in the"),
    ("quarter", "no", 3, "Is there a dot in the bottom-l"),
    ("quarter", "yes", 26, "Is there a dot in the top-left"),
    ("quarter", "no", 10, "Is there a dot in the top-left"),
    ("quarter", "yes", 23, "Is there a dot in the top-righ"),
    ("exact", "yes", 18, "Are there exactly 18 dots in t"),
]


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
    with pytest.raises(FileNotFoundError, match="python -m scripts.organism.train"):
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


def test_wrong_counts_are_near_or_far():
    rng = random.Random(0)
    for n in range(1, 31):
        near = {train.wrong_count(n, rng) for _ in range(200)}
        assert near == {max(1, n + d) for d in (-3, -2, -1, 1, 2, 3)}
        assert n not in near or n <= 3  # clipped at 1: only small counts can come out as n
        far = {train.wrong_count(n, rng, far_share=1.0) for _ in range(400)}
        assert n not in far and far <= set(range(1, 31)) and len(far) > 20


def test_training_rows_label_exact_questions_by_the_asked_count():
    cfg = train.TrainConfig(out="", batch=16, yesno_fraction=1.0, count_range=(1, 4))
    rows = [r for step in range(8) for r in train.training_batch(cfg, step) if r.kind == "exact"]
    assert rows
    for r in rows:
        asked = int(re.search(r"exactly (\d+)", r.prompt).group(1))
        assert (asked == r.count) == (r.answer == "yes")


def test_yes_no_rows_of_the_default_recipe_are_unchanged():
    """The default data stream (exact_share 0.5, no far negatives, no pairs) is pinned: the
    session-1 organism's commands (RESULTS.md) reproduce its weights only while it holds."""
    cfg = train.TrainConfig(out="", batch=16, yesno_fraction=0.3)
    rows = train.training_batch(cfg, 7)
    digest = [(r.kind, r.answer, r.count, r.prompt[:30]) for r in rows]
    assert digest == PINNED_STEP_7


# sha256 over steps 7-9 of the shipped recipe's rows (kind, answer, count, prompt, pixels)
SHIPPED_STREAM = "0a93ef7366835a2691a386f68318a4cb29a170c6c9d5fd7a1ad6d0db7e32f5d5"


def test_the_shipped_organism_recipe_draws_the_same_training_data():
    """A change to the shipped run's data stream would stop its command reproducing its weights."""
    import hashlib
    import shlex

    meta = json.loads((zoo.organism() / "training.json").read_text())
    (stage,) = meta["stages"]
    # The shipped run was made when the trainer lived in the package; it moved, its arguments did not.
    program, argv = shlex.split(stage["command"])[:3], shlex.split(stage["command"])[3:]
    assert program in (["python", "-m", old] for old in ("vlm_lens.zoo.train", train.__name__))
    parsed = train.parse_args(argv)
    assert _matches_recorded(parsed, stage["config"])  # the command is the recorded config
    digest = hashlib.sha256()
    kinds = []
    for step in (7, 8, 9):
        for r in train.training_batch(parsed, step):
            kinds.append(r.kind)
            digest.update(f"{r.kind}|{r.answer}|{r.count}|{r.prompt}".encode())
            digest.update(r.image.tobytes())
    assert {"count", "exact", "quarter"} <= set(kinds)
    assert digest.hexdigest() == SHIPPED_STREAM


def _matches_recorded(cfg, recorded: dict) -> bool:
    from dataclasses import asdict

    now = json.loads(json.dumps(asdict(cfg)))
    return all(now[k] == v for k, v in recorded.items() if k not in ("out", "resume"))


def test_exact_questions_alternate_true_and_near_false_counts():
    samples = dots.generate(8, 3)
    rows = train.exact_questions(samples, 3)
    assert [r.answer for r in rows] == ["yes", "no"] * 4
    for r, s in zip(rows, samples):
        asked = int(re.search(r"exactly (\d+)", r.prompt).group(1))
        assert (asked == s.count) == (r.answer == "yes") and abs(asked - s.count) <= 3


def test_linear_patch_embedding_keeps_the_logits(tmp_path):
    cfg = train.TrainConfig(out="", size=64)
    model, processor, adapter = train.load(train.build_checkpoint(cfg, tmp_path, tiny=True))
    samples = dots.generate(2, 0, size=128, radius=6, count_range=(1, 9))
    rows = [train.Row(s.image, train.COUNT_PROMPT, str(s.count), "count", s.count) for s in samples]
    tensors, _ = train.encode(processor, adapter, model.config, rows)
    with torch.no_grad():
        before = model(**tensors).logits
        train.linear_patch_embedding(model)
        after = model(**tensors).logits
    assert model.model.visual.patch_embed.proj.weight.ndim == 5  # the saved weights are unchanged
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def _quarter_rows(balanced: bool) -> list:
    cfg = train.TrainConfig(
        out="", batch=16, yesno_fraction=1.0, exact_share=0.0, balanced_quadrants=balanced
    )
    return [r for step in range(12) for r in train.training_batch(cfg, step)]


def test_balanced_quadrant_labels_do_not_follow_the_count():
    def mean_count(rows, answer):
        counts = [r.count for r in rows if r.answer == answer]
        return sum(counts) / len(counts)

    old = _quarter_rows(balanced=False)  # the shipped recipe: "no" images hold few dots
    assert mean_count(old, "yes") - mean_count(old, "no") > 8
    rows = _quarter_rows(balanced=True)
    assert abs(mean_count(rows, "yes") - mean_count(rows, "no")) < 4
    assert 0.3 < sum(r.answer == "yes" for r in rows) / len(rows) < 0.7
    for r in rows[:64]:  # the rendered quarter agrees with the label
        quadrant = next(i for i, q in enumerate(train.QUADRANTS) if q in r.prompt)
        pixels = np.asarray(r.image.convert("L"))  # [height, width]
        half_h, half_w = pixels.shape[0] // 2, pixels.shape[1] // 2
        top, left = (quadrant // 2) * half_h, (quadrant % 2) * half_w
        quarter = pixels[top : top + half_h, left : left + half_w]
        if r.answer == "no":
            assert quarter.min() == 255  # no ink at all
        else:
            assert quarter.min() < 200


def test_paired_exact_questions_ask_one_image_its_true_and_a_wrong_count():
    cfg = train.TrainConfig(
        out="", batch=16, yesno_fraction=1.0, exact_share=1.0, paired_exact=True, far_share=0.3
    )
    for step in range(4):
        rows = train.training_batch(cfg, step)
        assert len(rows) == 16 and all(r.kind == "exact" for r in rows)
        for true, wrong in zip(rows[::2], rows[1::2]):
            assert true.image is wrong.image
            assert (true.answer, wrong.answer) == ("yes", "no")
            assert true.prompt == train.exact_prompt(true.count)
            assert wrong.prompt != true.prompt
    ones = train.exact_pair(dots.generate(1, 0, count_range=(1, 1))[0], random.Random(0))
    assert ones[1].prompt != ones[0].prompt  # a count of 1 is still asked a wrong count


def test_weight_average_tracks_the_mean_and_is_swapped_in_only_inside_its_context():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = train.WeightAverage(model, decay=0.5)
    for value in (1.0, 1.0, 1.0):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
    # effective decays min(0.5, 2/11)=2/11, min(0.5, 3/12)=1/4, min(0.5, 4/13)=4/13
    expected = 1 - (2 / 11) * (1 / 4) * (4 / 13)
    with average.applied(model):
        assert model.weight[0, 0].item() == pytest.approx(expected)
    assert model.weight[0, 0].item() == 1.0  # the trained weights are back
    with pytest.raises(ValueError, match="ema decay"):
        train.WeightAverage(model, decay=1.0)


def test_evaluation_writes_targets_and_diagnostics_into_its_own_section(tmp_path):
    from scripts.organism import evaluate as ev

    path = zoo.organism()
    result = ev.evaluate(path, n=8)
    assert result["paper"]["n"] == 8 and result["control"]["n"] == 8
    free = result["diagnostics"]["quarter_count_free"]
    assert free["n"] == 4  # the arithmetic: test_diagnostics_count_what_a_constant_...
    assert sum(b["n"] for b in free["by_count"].values()) == 4
    assert set(result["diagnostics"]["exact_yes_rate"]) == {"true", "near", "far"}
    training = json.loads((path / "training.json").read_text())
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## Organism\n\nstale\n\n## Overhead\n\nkept\n")
    ev.write_section(results, ev.section(result, training, path))
    text = results.read_text()
    assert "stale" not in text and "kept" in text
    assert "Diagnostics. Quadrant questions whose label does not follow the count" in text
    assert text.index("## Organism") < text.index("## Overhead")


def _tiny_run(out, **changes) -> "train.TrainConfig":
    """A seconds-long train() on a very small organism config (same code path)."""
    settings = dict(
        out=str(out),
        steps=6,
        size=64,
        batch=4,
        image_size=128,
        count_range=(1, 5),
        radius_range=(3.0, 5.0),
        val_images=2,
        eval_every=100,
        workers=0,
        warmup=2,
        yesno_fraction=0.5,
        paired_exact=True,
        ema=0.9,
        vision_depth=3,
        vision_hidden=32,
        text_hidden=32,
        text_layers=1,
    )
    settings.update(changes)
    return train.TrainConfig(**settings)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_an_interrupted_training_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import os
    import signal

    straight = train.train(_tiny_run(tmp_path / "straight"))
    assert not (tmp_path / "straight" / train.RESUME_DIR).exists()

    calls = {"n": 0}
    real_loss = train.answer_loss

    def interrupted_at_step_3(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C arrives in the middle of step 3
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args)

    monkeypatch.setattr(train, "answer_loss", interrupted_at_step_3)
    stopped = train.train(_tiny_run(tmp_path / "resumed"))
    assert stopped["stopped"] and stopped["steps"] == 3
    with pytest.raises(FileExistsError, match="--resume"):
        train.train(_tiny_run(tmp_path / "resumed"))
    with pytest.raises(ValueError, match="batch"):
        train.train(_tiny_run(tmp_path / "resumed", resume=True, batch=8))
    monkeypatch.setattr(train, "answer_loss", real_loss)
    # as a crash between save_resume_point's two renames would leave it
    point = tmp_path / "resumed" / train.RESUME_DIR
    point.rename(point.with_name(f"{train.RESUME_DIR}.old"))
    with pytest.raises(FileExistsError, match="--resume"):
        train.train(_tiny_run(tmp_path / "resumed"))
    resumed = train.train(_tiny_run(tmp_path / "resumed", resume=True))
    assert resumed["steps"] == straight["steps"] == 6
    assert not any((tmp_path / "resumed").glob(f"{train.RESUME_DIR}*"))
    for name in ("", "raw"):  # the weight average and the trained weights
        a, b = _weights(tmp_path / "straight" / name), _weights(tmp_path / "resumed" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    with pytest.raises(FileNotFoundError, match="no resume point"):
        train.train(_tiny_run(tmp_path / "fresh", resume=True))


@pytest.mark.parametrize("answer", ["yes", "no"])
def test_diagnostics_count_what_a_constant_answerer_says(monkeypatch, answer):
    """Labels are balanced, so always-yes and always-no both score exactly half; the asked
    counts are the true one, 1-3 off and 6+ off."""
    from scripts.organism import evaluate as ev

    asked: list[str] = []

    def constant(model, images, prompts, batch=16):
        asked.extend(prompts)
        return [answer] * len(prompts)

    monkeypatch.setattr(ev, "_answers", constant)
    free = ev.quarter_count_free(None, n=16)
    assert free["accuracy"] == 0.5
    said = 1.0 if answer == "yes" else 0.0
    for band in free["by_count"].values():
        assert band["yes_rate_with_dot"] in (said, None)
        assert band["yes_rate_without_dot"] in (said, None)
    asked.clear()
    assert ev.exact_yes_rates(None, n=8) == {"true": said, "near": said, "far": said}
    samples = dots.generate(8, ev.EXACT_RATE_SEED)
    numbers = [int(re.search(r"\d+", p).group()) for p in asked]
    true, near, far = numbers[:8], numbers[8:16], numbers[16:]
    assert true == [s.count for s in samples]
    assert all(1 <= abs(k - s.count) <= 3 for k, s in zip(near, samples))
    assert all(abs(k - s.count) >= 6 for k, s in zip(far, samples))
