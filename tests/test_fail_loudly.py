"""Studies stop with `EmptyMeasurementError` instead of writing numbers measured from nothing.

The end-to-end cases replay what transformers 5.24 did before the step-tracking fix
(PITFALLS 12): the KV cache went unseen, so every forward pass reported step 0 at position
0. The counting study then wrote empty Gini cells and a hit rate from all-NaN maps, and the
yes-bias study a figure with all attention on system tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.organism import train
from vlm_lens import HookedVLM
from vlm_lens.core.recording import Recording
from vlm_lens.core.run_state import RunState
from vlm_lens.data import dots
from vlm_lens.data.yesno import synthetic
from vlm_lens.reports.counting import counting_report, write_outputs
from vlm_lens.reports.yesbias import write_report
from vlm_lens.studies import EmptyMeasurementError, counting, runlog
from vlm_lens.studies import yesbias as yb

COUNT = counting.CountingConfig(n=2, size=128, radius=3, digits_only=True, example_maps=0)


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))


@pytest.fixture
def stuck_steps(monkeypatch):
    """Step tracking that never leaves the prefill: step and query start stay 0."""
    frozen = property(lambda self: 0, lambda self, value: None)
    monkeypatch.setattr(RunState, "step", frozen)
    monkeypatch.setattr(RunState, "query_start", frozen)


def _files(root: Path) -> list[str]:
    # The run lock files (`runlog.LOCK`) are held open by the run itself, not outputs.
    return sorted(
        p.name for p in root.rglob("*") if p.is_file() and not p.name.endswith(runlog.LOCK)
    )


# ------------------------------------------------------------- no decoding step recorded


def test_counting_without_decoding_steps_raises_and_writes_nothing(model, tmp_path, stuck_steps):
    with pytest.raises(EmptyMeasurementError, match="no decoding step"):
        counting.count_samples(model, COUNT.dataset()[:1], COUNT)
    with pytest.raises(EmptyMeasurementError, match="PITFALLS 12"):
        counting.run_counting(model, COUNT, tmp_path, model_name="m", progress=False)
    assert runlog.read_jsonl(tmp_path / "m" / runlog.SAMPLES) == []
    with pytest.raises(EmptyMeasurementError, match="no samples"):
        write_outputs(tmp_path, png=False)
    assert _files(tmp_path) == ["run.json"]


def test_yesbias_without_decoding_steps_raises_and_writes_nothing(model, tmp_path, stuck_steps):
    run_dir = tmp_path / "tiny" / "synthetic"
    items = synthetic.generate(1, seed=0)
    conditions = yb.sweep_conditions("none")
    with pytest.raises(EmptyMeasurementError, match="no decoding step"):
        yb.run_sweep(model, items, conditions, run_dir, max_new_tokens=3, progress=False)
    assert yb.load_records(run_dir) == []
    # Without the shares the baseline has no hook, but an edit's own layers are still checked.
    edited = [yb.Condition.parse("redistribute:system->text:Q4:f1.0")]
    with pytest.raises(EmptyMeasurementError, match="redistribute"):
        yb.run_sweep(
            model, items, edited, run_dir, max_new_tokens=3, record_shares=False, progress=False
        )
    with pytest.raises(EmptyMeasurementError, match="no records"):
        yb.analyze(run_dir)
    assert "report.html" not in _files(tmp_path) and "table.csv" not in _files(tmp_path)


@pytest.mark.parametrize("study", ["count", "yesbias"])
def test_cli_exits_nonzero_with_the_cause(study, tiny_ckpt, tmp_path, stuck_steps, capsys):
    from vlm_lens.cli import main

    argv = [study, "--model", str(tiny_ckpt("qwen3_vl")), "--out", str(tmp_path), "--no-progress"]
    if study == "count":
        argv += ["--n", "1", "--size", "128", "--radius", "3", "--digits-only", "--no-png"]
    else:
        argv += ["--sweep", "none", "--limit", "1", "--max-new-tokens", "3", "--tag", "tiny"]
    assert main(argv) == 1  # the run failed (not a usage error: that is 2)
    message = capsys.readouterr().err.splitlines()[-1]  # after the run's own progress lines
    assert message.startswith(f"vlm-lens {study}: error: ") and "no decoding step" in message
    assert not list(tmp_path.rglob("report.html"))
    assert not list(tmp_path.rglob("*.csv"))


def test_the_same_runs_pass_with_working_step_tracking(model, tmp_path):
    """The checks do not fire on a healthy run (the cases above differ only by the patch)."""
    rows = counting.count_samples(model, COUNT.dataset()[:1], COUNT)
    assert rows[0].attention and len(rows[0].digit_steps) >= 1
    run_dir = tmp_path / "yes"
    items = synthetic.generate(1, seed=0)
    yb.run_sweep(
        model, items, yb.sweep_conditions("none"), run_dir, max_new_tokens=3, progress=False
    )
    assert len(yb.load_records(run_dir)) == 2


# ------------------------------------------------------------------------- all-NaN maps


def _sample() -> dots.DotsSample:
    return dots.DotsSample(
        index=0, seed=0, size=(100, 100), centres=((25.0, 25.0),), radii=(3.0,), intensities=(0,)
    )


def test_all_nan_maps_raise_where_they_are_measured():
    nan = torch.full((2, 4), torch.nan)
    with pytest.raises(EmptyMeasurementError, match="all NaN"):
        counting.digit_step_metrics(nan, _sample(), (2, 2))
    rec = Recording(layers=[5])
    rec.image[0] = nan[None, None, :, None, :]  # [batch, layer, head, 1, M]
    with pytest.raises(EmptyMeasurementError, match="step 0, layer 5"):
        counting.recording_metrics(rec, [0], ["1"], [5], _sample(), (2, 2))
    rec.image[0] = torch.full((1, 1, 2, 1, 4), 0.1)
    with pytest.raises(EmptyMeasurementError, match="no image attention was recorded at step 1"):
        counting.recording_metrics(rec, [0, 1], ["1", "2"], [5], _sample(), (2, 2))
    # A map with only some NaN (image keys partly outside a sliding window): NaN metrics.
    partly = torch.full((2, 4), 0.1)
    partly[:, 3] = torch.nan
    entry = counting.digit_step_metrics(partly, _sample(), (2, 2))
    assert entry["gini"] is None and entry["centroid_hit_rate"] is None


def _row(attention: list[dict], digit_steps=(0,)) -> dict:
    return {
        "model": "m",
        "condition": "baseline",
        "index": 0,
        "count": 12,
        "prediction": 12 if digit_steps else None,
        "correct": bool(digit_steps),
        "error": 0 if digit_steps else None,
        "text": "12" if digit_steps else "x",
        "digit_steps": list(digit_steps),
        "digits": ["12"] if digit_steps else [],
        "layers": [3],
        "grid": [2, 2],
        "area": {"centre": 0.25, "hull_band": 0.5, "background": 0.25},
        "attention": attention,
        "regrounding": None,
    }


def _entry(value: float | None) -> dict:
    names = counting.STEP_METRICS
    return {"digit": 0, "step": 0, "token": "12", "layer": 3, **dict.fromkeys(names, value)}


def test_summaries_and_reports_refuse_missing_attention(tmp_path):
    # What the buggy run wrote: digit steps whose metrics are all missing (NaN maps).
    nan_rows = [_row([_entry(None)])]
    with pytest.raises(EmptyMeasurementError, match="every attention metric"):
        counting.summarize(nan_rows)
    with pytest.raises(EmptyMeasurementError, match="no attention was recorded"):
        counting.summarize([_row([])])
    with pytest.raises(EmptyMeasurementError, match="none of the 1 answers held a number"):
        counting.summarize([_row([], digit_steps=())])
    with pytest.raises(EmptyMeasurementError, match="no samples"):
        counting.summarize([])
    with pytest.raises(EmptyMeasurementError):
        counting_report(nan_rows, [{"model": "m"}], tmp_path, png=False)
    # From disk: samples.jsonl holding such rows gives an error, not a report.
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "run.json").write_text(json.dumps({"model": "m", "conditions": {}}))
    (model_dir / runlog.SAMPLES).write_text(json.dumps(nan_rows[0]) + "\n")
    with pytest.raises(EmptyMeasurementError, match="every attention metric"):
        write_outputs(tmp_path, png=False)
    assert _files(tmp_path) == ["run.json", runlog.SAMPLES]
    # One finite metric is a measurement: the summary goes through.
    (summary,) = counting.summarize([_row([_entry(0.5)])])
    assert summary["steps"][0]["gini_mean"] == 0.5


def test_yesbias_all_nan_shares_and_empty_results_raise(tmp_path):
    records = [{"condition": "baseline", "shares": [[math.nan] * 4] * 3}]
    with pytest.raises(EmptyMeasurementError, match="attention shares"):
        yb.layer_shares(records)
    with pytest.raises(EmptyMeasurementError, match="no results"):
        write_report(tmp_path / "r.html", [])
    result = {"settings": {"benchmark": "b"}, "records": [], "items": [], "table": []}
    with pytest.raises(EmptyMeasurementError, match="no records"):
        write_report(tmp_path / "r.html", [{**result, "metrics": {}}])
    nan_shares = {**result, "records": records, "metrics": {}, "shares": np.full((3, 4), np.nan)}
    with pytest.raises(EmptyMeasurementError, match="attention shares"):
        write_report(tmp_path / "r.html", [nan_shares])
    assert not (tmp_path / "r.html").exists()


# ------------------------------------------------------------------------- ASCII digits


def test_counts_are_read_in_ascii_digits_only():
    # Python's \d and str.isdigit accept these; int() would even convert them.
    assert counting.parse_count("3\uff19 dots") == 3  # fullwidth 9 ends the number
    assert counting.parse_count("\uff13\uff19") is None  # fullwidth 3 9
    assert counting.parse_count("\u0663\u0669 dots, or 4") == 4  # Arabic-Indic 3 9
    assert counting.parse_count("\u00b2") is None  # superscript two
    assert counting.parse_count(None) is None
    assert counting.answer_span("a 1\u0662 b") == (2, 3)
    assert counting.digit_steps(range(3), lambda ids: "".join("1\uff193"[i] for i in ids)) == (
        [0],
        ["1"],
    )
    # The trainer and the organism's evaluation read counts with the same parser.
    assert train.parse_count is counting.parse_count
