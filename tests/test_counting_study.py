"""The counting study end to end on a tiny model, its re-grounding test and its metrics.

Tiny random-weight models cannot count; answers are constrained to digit tokens
(`digits_only`) so the digit-step pipeline has something to measure.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_lens import HookedVLM
from vlm_lens.core.generation import AttentionRecord, Recording
from vlm_lens.core.layers import resolve_layers
from vlm_lens.data import dots
from vlm_lens.reports.counting import HEADLINE, headline_text, write_outputs
from vlm_lens.studies import counting, runlog
from vlm_lens.studies.stats import sign_test, wilcoxon_signed_rank

EVIL = "<script>alert(1)</script>"
N = 4
CONFIG = counting.CountingConfig(
    n=N,
    size=128,
    radius=3,
    layers="paper",
    digits_only=True,
    example_maps=2,
    regrounding=counting.Regrounding("restore"),
)


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))


@pytest.fixture(scope="module")
def full_run(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("count_full")
    counting.run_counting(model, CONFIG, out, model_name=EVIL, progress=False, note="untrained")
    write_outputs(out, png=False)
    return out


def _rows(path: Path) -> list[dict]:
    return runlog.read_jsonl(path)


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "model"}


# ------------------------------------------------------------------------ the table


def test_full_table_and_escaped_report(full_run: Path):
    model_dir = full_run / counting.model_slug(EVIL)
    rows = _rows(model_dir / "samples.jsonl")
    assert [r["index"] for r in rows] == list(range(N))
    for r in rows:
        assert r["model"] == EVIL
        assert r["prediction"] is not None and r["error"] == r["prediction"] - r["count"]
        assert len(r["digit_steps"]) == len(r["digits"]) >= 1
        assert r["regrounding"]["mode"] == "restore"
        for e in r["attention"]:
            for key in ("gini", "entropy", "image_mass", "centre", "hull_band", "background"):
                assert e[key] is not None and math.isfinite(e[key])
            assert len(e["head_gini"]) == 4  # the tiny model's heads
            assert math.isclose(e["centre"] + e["hull_band"] + e["background"], 1, abs_tol=1e-9)
        # controls (on by default) keep every sample's map and dots; tested off in
        # test_counting_claims.py
        assert CONFIG.controls and "map" in r["attention"][0] and len(r["centres"]) == r["count"]

    with open(full_run / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert tuple(summary[0]) == counting.SUMMARY_COLUMNS
    assert summary[0]["accuracy"] != "" and summary[0]["gini_digit1"] != ""
    with open(full_run / "attention.csv", newline="") as f:
        attention = list(csv.DictReader(f))
    assert tuple(attention[0]) == counting.ATTENTION_COLUMNS
    assert len(attention) == sum(len(r["attention"]) for r in rows)
    assert all(a[c] != "" for a in attention for c in ("gini", "entropy", "centroid_hit_rate"))

    page = (full_run / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert EVIL not in page
    assert page.count("window.PlotlyConfig") == 1  # plotly.js inlined once
    assert "Sparsity drop" in page and "untrained" in page


# ------------------------------------------------------------------ resume and shards


def test_killed_run_resumes_to_exactly_n_rows(model, full_run, tmp_path, monkeypatch):
    real = counting.count_samples
    calls = {"n": 0}

    def dies_after_two(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(counting.measure, "count_samples", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        counting.run_counting(model, CONFIG, tmp_path, model_name=EVIL, progress=False)
    monkeypatch.setattr(counting.measure, "count_samples", real)
    log = tmp_path / counting.model_slug(EVIL) / "samples.jsonl"
    assert len(_rows(log)) == 2
    with log.open("a") as f:  # the process died while writing the third row
        f.write('{"condition": "baseline", "index": 2, "text": "1')

    counting.run_counting(model, CONFIG, tmp_path, model_name=EVIL, progress=False)
    rows = _rows(log)
    assert sorted(r["index"] for r in rows) == list(range(N))
    reference = _rows(full_run / counting.model_slug(EVIL) / "samples.jsonl")
    assert sorted(rows, key=lambda r: r["index"]) == reference


def test_batched_run_matches_one_by_one(model, tmp_path):
    config = replace(CONFIG, regrounding=None, condition="plain")
    for batch in (1, 3):
        counting.run_counting(
            model, config, tmp_path / str(batch), model_name="m", progress=False, batch_size=batch
        )
    one, batched = (_rows(tmp_path / b / "m" / "samples.jsonl") for b in ("1", "3"))
    assert [r["index"] for r in batched] == list(range(N))
    for a, b in zip(one, batched):
        for key in ("text", "tokens", "prediction", "digit_steps", "digits", "grid", "area"):
            assert a[key] == b[key], key
        assert len(a["attention"]) == len(b["attention"]) > 0
        for ea, eb in zip(a["attention"], b["attention"]):
            for key in ("image_mass", "gini", "entropy", "centre", "hull_band"):
                assert ea[key] == pytest.approx(eb[key], abs=1e-4), key
    with pytest.raises(ValueError, match="batch_size"):
        counting.run_counting(model, config, tmp_path, model_name="m", batch_size=0)


def test_shards_merge_to_the_unsharded_run(model, full_run, tmp_path):
    for k in range(2):
        counting.run_counting(
            model, CONFIG, tmp_path, model_name=EVIL, shard=runlog.Shard(k, 2), progress=False
        )
    model_dir = tmp_path / counting.model_slug(EVIL)
    partial = tmp_path / "partial" / model_dir.name
    partial.mkdir(parents=True)
    shutil.copy(model_dir / "run.json", partial)
    shutil.copy(model_dir / runlog.Shard(0, 2).filename, partial)

    result = counting.merge(tmp_path)[counting.model_slug(EVIL)]
    assert result["complete"] and result["rows"] == N
    merged = _rows(model_dir / "samples.jsonl")
    assert merged == _rows(full_run / counting.model_slug(EVIL) / "samples.jsonl")
    slug = counting.model_slug(EVIL)
    assert counting.merge(tmp_path)[slug]["rows"] == N  # merging twice changes nothing

    missing = counting.merge(tmp_path / "partial")[counting.model_slug(EVIL)]
    assert not missing["complete"] and missing["missing"] == [("baseline", 1), ("baseline", 3)]


def test_changed_settings_refuse_to_mix(model, full_run):
    with pytest.raises(ValueError, match="other settings"):
        counting.run_counting(
            model,
            counting.CountingConfig(n=N, seed=1, size=128, radius=3),
            full_run,
            model_name=EVIL,
            progress=False,
        )


def test_cli_runs_resumes_and_reports(tiny_ckpt, tmp_path, capsys):
    from vlm_lens.cli import main

    argv = ["count", "--model", str(tiny_ckpt("qwen3_vl")), "--n", "2", "--size", "128"]
    argv += ["--radius", "3", "--digits-only", "--no-png", "--no-progress", "--out", str(tmp_path)]
    assert main([*argv, "--limit", "1", "--shard", "0/1"]) == 0
    assert main(["count", "merge", "--out", str(tmp_path), "--no-png"]) == 1  # 1 of 2 missing
    assert main(argv) == 0
    (model_dir,) = [p for p in tmp_path.iterdir() if (p / "run.json").exists()]
    rows = _rows(model_dir / "samples.jsonl")  # the baseline and its content-free control
    assert sorted((r["condition"], r["index"]) for r in rows) == [
        ("baseline", 0),
        ("baseline", 1),
        (counting.CONTROL_CONDITION, 0),
        (counting.CONTROL_CONDITION, 1),
    ]
    assert (tmp_path / "report.html").exists()
    summaries = json.loads((tmp_path / "summary.json").read_text())
    headline = headline_text(summaries)
    assert headline in capsys.readouterr().out  # the CLI prints the headline it computed
    assert headline.splitlines()[0].split() == " ".join(lab for lab, _, _ in HEADLINE).split()
    row = counting.summary_table(summaries)[0]
    mass = f"{row['image_mass_digit1']:.3f}→{row['image_mass_digit2']:.3f}"
    assert mass in headline.splitlines()[1] and f"{row['accuracy']:.3f}" in headline


def test_report_leads_with_the_headline_and_collapses_the_full_tables(full_run: Path):
    page = (full_run / "report.html").read_text()
    body = page[page.index("<body>") :]
    first_table = body[body.index("<table") : body.index("</table>")]
    assert "p Gini" in first_table and 'title="Wilcoxon signed-rank p' in first_table
    assert body.index("<table") < body.index("<figure")
    details = body[body.index("<details>") : body.index("</details>")]
    assert "Summary (all columns)" in details and "gini (1st digit)" in details
    assert "gini_digit1" not in body  # raw column keys are not shown


def test_heatmaps_share_one_colour_scale_with_a_colour_bar(full_run: Path):
    from vlm_lens.reports.figures import attention_heatmaps

    row = next(r for r in _rows(full_run / _sample_file(full_run)) if r.get("attention"))
    fig = attention_heatmaps(row)
    panels = [t for t in fig.data if t.type == "heatmap"]
    assert len(panels) >= 2 and {t.coloraxis for t in panels} == {"coloraxis"}
    axis = fig.layout.coloraxis
    assert axis.cmin == 0 and axis.cmax == max(float(np.max(t.z)) for t in panels)
    assert axis.colorbar.title.text and axis.showscale is not False


def test_cli_layers_take_the_layer_grammar_and_a_bad_spec_writes_nothing(
    tiny_ckpt, tmp_path, capsys
):
    from vlm_lens.cli import main

    n_layers = HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl")).cfg.n_layers
    argv = ["count", "--model", str(tiny_ckpt("qwen3_vl")), "--n", "1", "--size", "128"]
    argv += ["--radius", "3", "--digits-only", "--no-png", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "bad"), "--layers", str(n_layers)]) == 2
    assert re.search("--layers: .*layer", capsys.readouterr().err)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").rglob("run.json"))
    assert main([*argv, "--out", str(tmp_path / "q"), "--layers", "Q4"]) == 0
    (manifest,) = (tmp_path / "q").rglob("run.json")
    assert json.loads(manifest.read_text())["conditions"]["baseline"]["layers"] == "Q4"
    (row,) = [r for r in _rows(manifest.parent / "samples.jsonl") if r["condition"] == "baseline"]
    assert sorted({e["layer"] for e in row["attention"]}) == resolve_layers("Q4", n_layers)


# ---------------------------------------------------------------------- re-grounding


def _normalised(image: torch.Tensor) -> torch.Tensor:
    return image / image.sum(-1, keepdim=True)


@pytest.mark.parametrize("mode", ["restore", "restore_mass", "scale"])
def test_regrounding_changes_its_target_and_nothing_earlier(model, mode):
    sample = dots.generate(1, seed=3, size=128, radius=3)[0]
    inputs = model.prepare(images=sample.image, prompt=counting.PROMPT)
    record = AttentionRecord(layers=None, keep=("image", "full"))
    kwargs = {"max_new_tokens": 4, "min_new_tokens": 4}
    base = model.generate(inputs, record=record, **kwargs)
    spec = counting.Regrounding(mode, alpha=3.0)
    layers = [1, 3]
    new = counting.reground(model, inputs, base, 1, [2], spec, layers, record=record, **kwargs)
    b, n = base.recording, new.recording

    for step in (0, 1):  # before the target step: bit-identical
        assert torch.equal(new.logits[step], base.logits[step])
        assert torch.equal(n.image[step], b.image[step])
    assert torch.equal(new.tokens[:, :2], base.tokens[:, :2])  # tokens predicted at steps 0, 1

    at = {layer: n.image[2][0, layer, :, -1] for layer in range(4)}  # [head, image]
    was = {layer: b.image[2][0, layer, :, -1] for layer in range(4)}
    step1 = {layer: b.image[1][0, layer, :, -1] for layer in range(4)}
    assert torch.equal(at[0], was[0])  # below the first intervened layer: untouched
    for layer in layers:
        rows = n.full[2][0, layer, :, -1]
        torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[0]))
        if mode == "restore":
            torch.testing.assert_close(_normalised(at[layer]), _normalised(step1[layer]))
        elif mode == "restore_mass":
            torch.testing.assert_close(at[layer], step1[layer])
    if mode == "restore":  # the image mass of the row is kept (first intervened layer)
        torch.testing.assert_close(at[1].sum(-1), was[1].sum(-1))
    if mode == "scale":
        m = was[1].sum(-1)
        torch.testing.assert_close(at[1].sum(-1), 3 * m / (3 * m + 1 - m))
        torch.testing.assert_close(_normalised(at[1]), _normalised(was[1]))
    assert not torch.allclose(at[1], was[1])  # it did change what it targets


def test_regrounding_spec_parsing():
    assert counting.Regrounding.parse("restore-mass").mode == "restore_mass"
    assert counting.Regrounding.parse("scale:0.5", [1, -1]) == counting.Regrounding(
        "scale", 0.5, (1, -1)
    )
    with pytest.raises(ValueError):
        counting.Regrounding.parse("scale")
    with pytest.raises(ValueError):
        counting.Regrounding.parse("boost")


# ------------------------------------------------------------- metrics by hand


def test_digit_step_metrics_on_a_hand_made_recording():
    """Two heads, a 2x2 grid, one dot in the top-left cell of a 100x100 image.

    Head 0 spreads 0.4 evenly over the 4 image tokens, head 1 puts 0.4 on the first.
    Eq. 1: mean = [0.25, 0.05, 0.05, 0.05], image mass 0.4, renormalised
    p = [0.625, 0.125, 0.125, 0.125].
    Eq. 2 (sorted ascending, weights M+1-i = 4, 3, 2, 1):
        1 - (2/4) * (4*0.125 + 3*0.125 + 2*0.125 + 1*0.625) = 1 - 0.5 * 1.75 = 0.125.
    Eq. 3: -(0.625 ln 0.625 + 3 * 0.125 ln 0.125) / ln 4.
    Halo: the dot's cell holds 0.625; the two cells one cell away are the hull band
    (0.25); the diagonal cell is background (0.125); the top-1 cell is the dot's: hit 1.
    """
    sample = dots.DotsSample(
        index=0, seed=0, size=(100, 100), centres=((25.0, 25.0),), radii=(3.0,), intensities=(0,)
    )
    step0 = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.4, 0.0, 0.0, 0.0]])
    step1 = torch.tensor([[0.05, 0.05, 0.05, 0.05], [0.05, 0.05, 0.05, 0.05]])  # uniform
    other = torch.full((2, 4), 0.2)
    rec = Recording(layers=[2, 5])
    rec.image[3] = torch.stack([other, step0])[None, :, :, None, :]  # [batch, layer, head, 1, M]
    rec.image[4] = torch.stack([other, step1])[None, :, :, None, :]

    entries = counting.recording_metrics(rec, [3, 4], ["1", "2"], [5], sample, (2, 2))
    first, second = entries
    assert (first["digit"], first["step"], first["token"], first["layer"]) == (0, 3, "1", 5)
    assert first["image_mass"] == pytest.approx(0.4)
    assert first["gini"] == pytest.approx(0.125)
    assert first["textbook_gini"] == pytest.approx(0.125 + 1 / 4)
    expected_h = -(0.625 * math.log(0.625) + 3 * 0.125 * math.log(0.125)) / math.log(4)
    assert first["entropy"] == pytest.approx(expected_h)
    assert first["centre"] == pytest.approx(0.625)
    assert first["hull_band"] == pytest.approx(0.25)
    assert first["background"] == pytest.approx(0.125)
    assert first["centroid_hit_rate"] == 1.0
    assert first["head_image_mass"] == pytest.approx([0.4, 0.4])
    assert first["head_gini"] == pytest.approx([-0.25, 1 - 2 / 4])  # uniform, one-hot
    assert first["head_entropy"] == pytest.approx([1.0, 0.0])
    # uniform at the second digit: the paper's Gini is -1/M, the entropy 1
    assert second["gini"] == pytest.approx(-0.25)
    assert second["entropy"] == pytest.approx(1.0)
    assert second["image_mass"] == pytest.approx(0.2)


def test_summary_statistics_by_hand():
    def row(i, count, pred, g0, g1):
        return {
            "model": "m",
            "condition": "baseline",
            "index": i,
            "count": count,
            "prediction": pred,
            "layers": [7],
            "area": {"centre": 0.1, "hull_band": 0.2, "background": 0.7},
            "attention": [
                {"digit": d, "layer": 7, "gini": g, "entropy": 1 - g} for d, g in ((0, g0), (1, g1))
            ],
        }

    rows = [row(0, 12, 12, 0.5, 0.1), row(1, 14, 10, 0.4, 0.3), row(2, 11, None, 0.6, 0.2)]
    (s,) = counting.summarize(rows)
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert s["mbe"] == pytest.approx(-2.0) and s["mae"] == pytest.approx(2.0)
    assert s["n_parsed"] == 2
    drop = s["sparsity_drop"]["7"]
    assert drop["n"] == 3 and drop["mean_diff"] == pytest.approx((0.4 + 0.1 + 0.4) / 3)
    assert drop["statistic"] == 0 and drop["p_value"] == pytest.approx(0.25)  # 2 / 2^3


# ------------------------------------------------------------------- answers, stats


def test_answer_parsing_and_digit_steps():
    assert counting.parse_count("12 dots") == 12
    assert counting.parse_count("There are 1 2") == 1
    assert counting.parse_count("ten") is None
    assert counting.parse_count("3, 6, 9... so 13", "last") == 13

    pieces = ["Answer", ":", " 1", "2", " dots", "."]

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    assert counting.digit_steps(range(6), decode) == ([2, 3], ["1", "2"])
    merged = ["There are ", "12", " dots"]
    assert counting.digit_steps(range(3), lambda ids: "".join(merged[i] for i in ids)) == (
        [1],
        ["12"],
    )
    assert counting.digit_steps(range(2), lambda ids: "no" * len(list(ids))) == ([], [])


def test_study_layers():
    assert counting.study_layers("last", 4) == [3]
    assert counting.study_layers("paper", 4) == [3]
    assert counting.study_layers("paper", 28) == [27, 8, 16, 24]
    assert counting.study_layers((0, -1, 3), 4) == [0, 3]
    with pytest.raises(IndexError):
        counting.study_layers((9,), 4)


def test_wilcoxon_signed_rank_by_hand():
    # all 5 differences positive: W- = 0, P(W- = 0) = 1/32, two-sided 2/32
    t = wilcoxon_signed_rank([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (t.statistic, t.w_plus, t.n, t.method) == (0.0, 15.0, 5, "exact")
    assert t.p_value == pytest.approx(0.0625)
    assert wilcoxon_signed_rank([1, 2], [1, 2]).n == 0  # only zero differences
    assert sign_test([1, 1, 1, -1, 0]).p_value == pytest.approx(2 * 5 / 16)


def test_wilcoxon_matches_scipy():
    from scipy import stats  # a dev dependency: this check must run, not skip

    rng = np.random.default_rng(0)
    for n in (8, 30, 70):
        x, y = rng.normal(0.3, 1, n), rng.normal(0, 1, n)
        ours = wilcoxon_signed_rank(x, y)
        ref = stats.wilcoxon(x, y, correction=True, method="exact" if n <= 50 else "approx")
        assert ours.statistic == pytest.approx(ref.statistic)
        assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6)


def test_runlog_tolerates_a_truncated_last_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"index": 0}) + "\n" + '{"index": 1, "te')
    log = runlog.SampleLog(path, key=lambda r: r["index"])
    assert log.done == {0}
    log.append({"index": 1, "x": float("nan")})
    log.close()
    assert runlog.read_jsonl(path) == [{"index": 0}, {"index": 1, "x": None}]
    path.write_text('{"index": 0}\nnot json\n{"index": 2}\n')
    with pytest.raises(ValueError, match="malformed"):
        runlog.read_jsonl(path)


def test_default_model_falls_back_to_a_tiny_model_and_says_so(tiny_ckpt, monkeypatch, capsys):
    from vlm_lens import zoo

    def missing():
        raise FileNotFoundError("no organism here")

    monkeypatch.setattr(zoo, "organism", missing, raising=False)
    monkeypatch.setattr(zoo, "tiny_checkpoint", lambda arch, directory: tiny_ckpt(arch))
    ref, name, note = counting.default_model(cache_dir="unused")
    assert ref == tiny_ckpt("qwen3_vl") and "untrained" in name
    printed = capsys.readouterr().out
    assert "no organism here" in printed and "RANDOM-WEIGHT" in printed and note


def _have_chromium() -> bool:
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


@pytest.mark.skipif(not _have_chromium(), reason="PNG export needs Chromium (CI installs it)")
def test_key_figures_are_saved_as_png(full_run: Path, tmp_path: Path):
    out = tmp_path / "with_png"
    shutil.copytree(full_run, out)
    paths = write_outputs(out, png=True)["paths"]
    pngs = {k: Path(v) for k, v in paths.items() if k.startswith("png_")}
    assert pngs, "no PNG written although Chromium is installed"
    for path in pngs.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_heatmaps_draw_square_cells_over_the_image_grid(full_run: Path):
    from vlm_lens.reports.figures import attention_heatmaps

    row = next(r for r in _rows(full_run / _sample_file(full_run)) if r.get("attention"))
    fig = attention_heatmaps(row)
    h, w = row["grid"]
    panels = [t for t in fig.data if t.type == "heatmap"]
    assert panels and all(np.asarray(t.z).shape == (h, w) for t in panels)
    for k in range(1, len(panels) + 1):
        x = getattr(fig.layout, "xaxis" if k == 1 else f"xaxis{k}")
        y = getattr(fig.layout, "yaxis" if k == 1 else f"yaxis{k}")
        assert y.scaleanchor == ("x" if k == 1 else f"x{k}")  # one cell as tall as wide
        assert tuple(x.range) == (-0.5, w - 0.5) and tuple(y.range) == (h - 0.5, -0.5)


def _sample_file(out: Path) -> Path:
    (path,) = sorted(out.glob("*/samples.jsonl"))
    return path.relative_to(out)
