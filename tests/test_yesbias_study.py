"""The yes-bias sweep on a tiny model: records, resume, shards, paired deltas, report."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_lens import HookedVLM
from vlm_lens.data.yesno import synthetic, yes_no_token_ids
from vlm_lens.data.yesno.items import yes_no_score
from vlm_lens.interventions import redistribute, resolve_layers
from vlm_lens.reports.yesbias import (
    dose_response,
    headline_grid,
    headline_text,
    layer_shares_figure,
    quarter_heatmap,
    report_run,
)
from vlm_lens.studies import yesbias as yb

EVIL = "<script>alert('x')</script> & <b>tiny</b>"
CONDITIONS = [
    yb.Condition("baseline"),
    yb.Condition.parse("redistribute:system->text:Q4:f1.0"),
    yb.Condition.parse("scale:image:all:a2.0"),
]
MAX_NEW = 2


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))


@pytest.fixture(scope="module")
def full_run(model, tmp_path_factory) -> Path:
    """4 pairing units x (baseline + 2 conditions), unsharded, batch size 1."""
    run_dir = tmp_path_factory.mktemp("yesbias") / "tiny" / "synthetic"
    yb.run_sweep(
        model,
        synthetic.generate(4, seed=0),
        CONDITIONS,
        run_dir,
        model_name=EVIL,
        max_new_tokens=MAX_NEW,
        progress=False,
    )
    return run_dir


def _keyed(records):
    return {(r["condition"], r["item_id"]): r for r in records}


# ------------------------------------------------------------------------------ conditions


def test_condition_ids_are_stable_and_parse_back():
    assert yb.Condition("redistribute", "system->text", "Q4", fraction=1).id == (
        "redistribute:system->text:Q4:f1.0"
    )
    conditions = yb.sweep_conditions("quarters", knockout=True)
    # baseline + 5 directions x 4 quarters x 4 fractions + image x2 per quarter + knockout
    assert len(conditions) == 1 + 5 * 4 * 4 + 4 + 4
    assert len({c.id for c in conditions}) == len(conditions)
    for c in conditions:
        assert yb.Condition.parse(c.id) == c
    paper = [c.id for c in yb.sweep_conditions("paper")]
    assert "redistribute:system->image+text:Q4:f1.0" in paper and "scale:image:Q4:a2.0" in paper
    assert [c.id for c in yb.sweep_conditions("none")] == ["baseline"]
    with pytest.raises(ValueError):
        yb.Condition.parse("redistribute:system->text:Q4")


# ------------------------------------------------------------------------------ the sweep


def test_sweep_writes_table_figures_and_escaped_report(full_run):
    records = yb.load_records(full_run)
    assert len(records) == len(CONDITIONS) * 8
    assert len(_keyed(records)) == len(records)
    assert all(r["answer"] in ("yes", "no", "other") for r in records)
    assert all(len(r["shares"]) == 4 and abs(sum(r["shares"][0]) - 1) < 1e-4 for r in records)

    result = report_run(full_run, n_boot=200)
    table = result["table"]
    assert [r["condition"] for r in table] == [c.id for c in CONDITIONS]
    assert table[0]["d_paired_accuracy"] == 0 and table[0]["d_mean_score"] == 0
    assert all(r["n_units"] == 4 and r["n_items"] == 8 for r in table)
    # the redistribution changes the answer-step scores (it is applied), not the item set
    assert table[1]["d_mean_score"] != 0
    csv_text = result["paths"]["table_csv"].read_text()
    assert csv_text.splitlines()[0].startswith("benchmark,model,condition")
    assert len(json.loads(result["paths"]["table_json"].read_text())) == 3
    assert set(result["metrics"]) == {c.id for c in CONDITIONS}
    assert "unit_types" in result["metrics"]["baseline"]["official"]

    heat = quarter_heatmap(table)
    assert len(heat.data[0].y) == 2 and list(heat.data[0].x) == ["Q4", "all"]
    assert len(dose_response(table).data) == 1
    assert result["shares"].shape == (4, 4)
    assert len(layer_shares_figure(result["shares"]).data) == 3

    page = result["paths"]["report"].read_text()
    assert EVIL not in page
    assert "&lt;script&gt;alert(" in page
    assert page.count("<script") >= 1  # plotly.js, inlined once
    assert not re.search(r"<script[^>]*\bsrc=", page)  # self-contained: nothing fetched


def test_answer_step_score_is_the_log_softmax_difference(model, full_run):
    item = synthetic.generate(1, seed=0)[0]
    cond = CONDITIONS[1]
    inputs = model.prepare(images=item.load_images(), prompt=item.prompt)
    out = model.generate(inputs, max_new_tokens=MAX_NEW, fwd_hooks=cond.fwd_hooks(model))
    logp = torch.log_softmax(out.logits[0, 0].double(), -1)
    yes_ids, no_ids = yes_no_token_ids(model.processor)
    p_yes = sum(math.exp(logp[i].item()) for i in yes_ids)
    p_no = sum(math.exp(logp[i].item()) for i in no_ids)
    by_hand = math.log(p_yes) - math.log(p_no)
    record = _keyed(yb.load_records(full_run))[(cond.id, item.item_id)]
    assert record["score"] == pytest.approx(by_hand, abs=1e-5)
    assert record["text"] == out.texts[0]


def test_stopped_sweep_resumes_without_loss_or_duplicates(model, full_run, tmp_path):
    items = synthetic.generate(2, seed=0)  # the first 2 units of the full run
    conditions = CONDITIONS[:2]
    run_dir = tmp_path / "run"

    class Crash(RuntimeError):
        pass

    def crash_after_three(row, seen=[]):  # noqa: B006 - a counter that lives for this run
        seen.append(row)
        if len(seen) == 3:
            raise Crash

    with pytest.raises(Crash):
        yb.run_sweep(
            model,
            items,
            conditions,
            run_dir,
            model_name=EVIL,
            max_new_tokens=MAX_NEW,
            progress=False,
            on_record=crash_after_three,
        )
    log = run_dir / yb.RECORDS
    assert len(log.read_text().splitlines()) == 3
    # the process died while writing a fourth line
    with log.open("a") as f:
        f.write('{"condition": "baseline", "item_id": "synth')
    yb.run_sweep(
        model, items, conditions, run_dir, model_name=EVIL, max_new_tokens=MAX_NEW, progress=False
    )
    records = yb.load_records(run_dir)
    lines = log.read_text().splitlines()
    assert len(lines) == len(records) == 8
    assert all(json.loads(line) for line in lines)
    reference = _keyed(yb.load_records(full_run))
    for key, row in _keyed(records).items():
        assert row["text"] == reference[key]["text"]
        assert row["score"] == pytest.approx(reference[key]["score"], abs=1e-6)
    # a resumed run with other generation settings or other items would mix records: refused
    with pytest.raises(ValueError, match="max_new_tokens"):
        yb.run_sweep(model, items, conditions, run_dir, model_name=EVIL, max_new_tokens=3)
    other_seed = synthetic.generate(2, seed=1)
    with pytest.raises(ValueError, match="differs"):
        yb.run_sweep(
            model, other_seed, conditions, run_dir, model_name=EVIL, max_new_tokens=MAX_NEW
        )


def test_shards_merged_equal_the_unsharded_run(model, full_run, tmp_path):
    items = synthetic.generate(2, seed=0)
    conditions = CONDITIONS[:2]
    run_dir = tmp_path / "sharded"
    for k in range(2):
        yb.run_sweep(
            model,
            items,
            conditions,
            run_dir,
            model_name=EVIL,
            max_new_tokens=MAX_NEW,
            shard=f"{k}/2",
            progress=False,
        )
    assert not (run_dir / yb.RECORDS).exists()
    assert len(list(run_dir.glob("records.shard-*-of-2.jsonl"))) == 2
    # an unsharded rerun finds everything done in the shard logs: nothing new is written
    yb.run_sweep(
        model, items, conditions, run_dir, model_name=EVIL, max_new_tokens=MAX_NEW, progress=False
    )
    assert not (run_dir / yb.RECORDS).exists() or not (run_dir / yb.RECORDS).read_text()
    summary = yb.merge(run_dir)["."]
    assert summary["complete"] and summary["rows"] == 8 and summary["duplicates"] == 0

    ids = {it.item_id for it in items}
    wanted = {c.id for c in conditions}
    reference = [
        r for r in yb.load_records(full_run) if r["item_id"] in ids and r["condition"] in wanted
    ]
    merged = yb.load_records(run_dir)
    assert _keyed(merged).keys() == _keyed(reference).keys()
    for key, row in _keyed(merged).items():
        assert row["text"] == _keyed(reference)[key]["text"]
        assert row["score"] == pytest.approx(_keyed(reference)[key]["score"], abs=1e-6)
    loaded = yb.load_items(run_dir)
    t_merged = yb.delta_table(loaded, merged, n_boot=100)
    t_ref = yb.delta_table(loaded, reference, n_boot=100)
    assert len(t_merged) == len(t_ref) == 2
    for a, b in zip(t_merged, t_ref):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], abs=1e-6, nan_ok=True), k
            else:
                assert a[k] == b[k], k


def test_left_padded_batches_match_single_items(model, full_run, tmp_path):
    items = synthetic.generate(2, seed=0)  # prompts of different lengths: left padding
    run_dir = tmp_path / "batched"
    yb.run_sweep(
        model,
        items,
        CONDITIONS[:2],
        run_dir,
        max_new_tokens=MAX_NEW,
        batch_size=4,
        progress=False,
    )
    reference = _keyed(yb.load_records(full_run))
    batched = _keyed(yb.load_records(run_dir))
    assert len(batched) == 8
    for key, row in batched.items():
        assert row["score"] == pytest.approx(reference[key]["score"], abs=1e-4)
        assert np.allclose(row["shares"], reference[key]["shares"], atol=1e-4)


def test_merge_tolerates_a_rerun_shard_and_reports_missing(full_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(full_run, run_dir)
    lines = (run_dir / yb.RECORDS).read_text().splitlines(keepends=True)
    (run_dir / yb.RECORDS).write_text("".join(lines[:10]))
    (run_dir / "records.shard-0-of-2.jsonl").write_text("".join(lines[5:20]))
    summary = yb.merge(run_dir)["."]
    assert summary["rows"] == 20 and summary["duplicates"] == 5
    assert not summary["complete"] and len(summary["missing"]) == len(lines) - 20


# ------------------------------------------------------------------------- paired deltas


def test_paired_bootstrap_interval_contains_the_difference():
    rng = np.random.default_rng(1)
    n_units = 40
    unit = np.repeat(np.arange(n_units), 2)
    label = np.tile([True, False], n_units)
    base_yes = rng.random(2 * n_units) < 0.8  # a yes-biased baseline
    cond_yes = np.where(rng.random(2 * n_units) < 0.3, label, base_yes)  # partly corrected

    def arm(yes):
        return {"correct": yes == label, "yes": yes, "score": yes.astype(float)}

    d = yb.paired_delta(unit, arm(base_yes), arm(cond_yes), label=label, n_boot=500, seed=0)
    pair = lambda yes: np.mean([(yes == label)[unit == u].all() for u in range(n_units)])  # noqa: E731
    assert d["d_paired_accuracy"] == pytest.approx(pair(cond_yes) - pair(base_yes))
    assert d["d_yes_rate"] == pytest.approx(cond_yes.mean() - base_yes.mean())
    # scores: 1 for yes, 0 for no, so a unit is ranked right when yes item > no item
    ranked = lambda yes: np.mean([yes[2 * u] > yes[2 * u + 1] for u in range(n_units)])  # noqa: E731
    assert d["d_score_paired_accuracy"] == pytest.approx(ranked(cond_yes) - ranked(base_yes))
    for name in ("paired_accuracy", "accuracy", "yes_rate", "mean_score", "score_paired_accuracy"):
        assert d[f"d_{name}_lo"] <= d[f"d_{name}"] <= d[f"d_{name}_hi"]
    same = yb.paired_delta(unit, arm(base_yes), arm(base_yes), n_boot=200)
    assert same["d_paired_accuracy_lo"] == same["d_paired_accuracy_hi"] == 0.0


def test_heatmap_places_each_condition_in_its_cell():
    def row(target, layers, value, kind="redistribute"):
        return {
            "condition": f"{target}:{layers}",
            "kind": kind,
            "target": target,
            "layers": layers,
            "fraction": 1.0 if kind == "redistribute" else None,
            "alpha": 2.0 if kind == "scale" else None,
            "n_units": 3,
            "d_paired_accuracy": value,
            "d_paired_accuracy_lo": value - 0.1,
            "d_paired_accuracy_hi": value + 0.1,
        }

    table = [
        row("system->text", "Q4", 0.5),
        row("system->text", "Q1", -0.25),
        row("image", "Q2", 0.125, kind="scale"),
    ]
    fig = quarter_heatmap(table)
    assert list(fig.data[0].x) == ["Q1", "Q2", "Q4"]
    assert list(fig.data[0].y) == ["system-&gt;text f=1", "image ×2"]
    assert [list(r) for r in fig.data[0].z] == [[-0.25, None, 0.5], [None, 0.125, None]]


# ------------------------------------------------------------- edit semantics and system


def test_system_presets_resolve():
    assert yb.resolve_system(None) == ("none", None)
    assert yb.resolve_system("none") == ("none", None)
    assert yb.resolve_system("paper") == ("paper", yb.PAPER_SYSTEM)
    assert yb.resolve_system("Be brief.") == ("custom", "Be brief.")
    assert yb.PAPER_SYSTEM.startswith("A chat between a curious human")
    assert yb.PAPER_SYSTEM.endswith("polite answers to the human's questions.")


def test_mode_and_rows_reach_the_hooks(model, tmp_path):
    """A uniform, every-row run records what that intervention gives, not the default's."""
    item = synthetic.generate(1, seed=0)[0]
    cond = yb.Condition.parse("redistribute:system->image+text:Q4:f1.0")
    scores = {}
    for mode, rows in (("uniform", "all"), ("proportional", "answer")):
        run_dir = tmp_path / f"{mode}-{rows}"
        settings = dict(mode=mode, rows=rows, max_new_tokens=MAX_NEW, progress=False)
        yb.run_sweep(model, [item], [cond], run_dir, **settings)
        settings = json.loads((run_dir / yb.RUN).read_text())
        assert (settings["mode"], settings["rows"]) == (mode, rows)
        scores[mode] = _keyed(yb.load_records(run_dir))[(cond.id, item.item_id)]["score"]
    by_hand = redistribute(
        "system", ["image", "text"], "Q4", mode="uniform", rows="all", model=model
    )
    inputs = model.prepare(images=item.load_images(), prompt=item.prompt)
    out = model.generate(inputs, max_new_tokens=MAX_NEW, fwd_hooks=by_hand)
    yes_ids, no_ids = yes_no_token_ids(model.processor)
    expected = float(yes_no_score(out.logits[0], yes_ids, no_ids)[0])
    assert scores["uniform"] == pytest.approx(expected, abs=1e-5)
    assert abs(scores["uniform"] - scores["proportional"]) > 1e-4


def test_resume_refuses_changed_semantics(model, tmp_path):
    items = synthetic.generate(1, seed=0)
    conditions = CONDITIONS[:2]
    run_dir = tmp_path / "run"
    paper = dict(system="paper", mode="uniform", rows="all")

    def sweep(conds=conditions, **settings):
        yb.run_sweep(
            model, items, conds, run_dir, max_new_tokens=MAX_NEW, progress=False, **settings
        )

    sweep(**paper)
    settings = json.loads((run_dir / yb.RUN).read_text())
    assert settings["system"] == yb.PAPER_SYSTEM and settings["system_preset"] == "paper"
    assert (settings["mode"], settings["rows"]) == ("uniform", "all")
    n = model.cfg.n_layers
    assert settings["layers"] == {"Q4": resolve_layers("Q4", n)}
    assert settings["fractions"] == [1.0]
    for key, value in (("mode", "proportional"), ("rows", "answer"), ("system", "none")):
        with pytest.raises(ValueError, match=f"other settings \\({key}: "):
            sweep(**{**paper, key: value})
    with pytest.raises(ValueError, match="system"):
        sweep(**{**paper, "system": "Be brief."})
    sweep(system=yb.PAPER_SYSTEM, mode="uniform", rows="all")  # the preset's text is the same
    # A layer spec that now resolves to other layers (another quarter rule) is refused too.
    manifest = json.loads((run_dir / yb.RUN).read_text())
    (run_dir / yb.RUN).write_text(json.dumps({**manifest, "layers": {"Q4": [0]}}))
    with pytest.raises(ValueError, match="layers Q4: \\[0\\] -> "):
        sweep(**paper)
    (run_dir / yb.RUN).write_text(json.dumps(manifest))
    # More conditions under the same semantics extend the run; the manifest keeps the union.
    sweep([yb.Condition.parse("redistribute:system->text:Q3:f0.5")], **paper)
    settings = json.loads((run_dir / yb.RUN).read_text())
    assert settings["fractions"] == [0.5, 1.0] and set(settings["layers"]) == {"Q3", "Q4"}
    assert len(yb.load_records(run_dir)) == 3 * 2
    # A run.json from before mode and rows were recorded stands for the defaults.
    old_dir = tmp_path / "old"
    yb.run_sweep(model, items, conditions[:1], old_dir, max_new_tokens=MAX_NEW, progress=False)
    manifest = json.loads((old_dir / yb.RUN).read_text())
    for key in ("mode", "rows", "system_preset", "layers", "fractions", "layout"):
        manifest.pop(key)
    (old_dir / yb.RUN).write_text(json.dumps(manifest))
    yb.run_sweep(model, items, conditions[:1], old_dir, max_new_tokens=MAX_NEW, progress=False)
    with pytest.raises(ValueError, match="mode"):
        yb.run_sweep(model, items, conditions[:1], old_dir, max_new_tokens=MAX_NEW, mode="uniform")
    with pytest.raises(ValueError, match="mode"):
        yb.run_sweep(model, items, conditions[:1], run_dir, mode="nearest")


def run_paper_setup(ckpt: Path, out: Path, sweep: str = "paper") -> dict:
    """`vlm-lens yesbias --system paper --mode uniform --rows all` on one pairing unit;
    returns the run's run.json (its `layout` holds the first prompt's spans)."""
    from vlm_lens.cli import main

    argv = ["yesbias", "--model", str(ckpt), "--system", "paper", "--mode", "uniform"]
    argv += ["--rows", "all", "--sweep", sweep, "--limit", "1", "--max-new-tokens", "2"]
    argv += ["--out", str(out), "--tag", "m", "--no-progress", "--n-boot", "20"]
    assert main(argv) == 0
    return json.loads((out / "m" / "synthetic" / yb.RUN).read_text())


def test_paper_preset_gives_the_vicuna_layout_on_llava(tiny_ckpt, tmp_path):
    """The paper's LLaVA prompt: "<s>{system} USER: <image>\\n{question} ASSISTANT:", with
    the system span covering everything before the image (35 tokens with the real vocabulary:
    BOS + 30 + " USER: "; the char-level zoo tokenizer gives one token per character)."""
    settings = run_paper_setup(tiny_ckpt("llava"), tmp_path)
    item = synthetic.generate(1, seed=0)[0]
    assert settings["system_preset"] == "paper" and settings["system"] == yb.PAPER_SYSTEM
    assert (settings["mode"], settings["rows"]) == ("uniform", "all")
    layout = settings["layout"]
    assert layout["text"] == f"{yb.PAPER_SYSTEM} USER: <image>\n{item.prompt} ASSISTANT:"
    (image,) = layout["images"]
    assert layout["system"] == [0, image[0]], "the system span is everything before the image"

    model = HookedVLM.from_pretrained(tiny_ckpt("llava"))
    inputs = model.prepare(images=item.load_images(), prompt=item.prompt, system=yb.PAPER_SYSTEM)
    assert yb.prompt_layout(inputs) == layout
    tokens = model.processor.tokenizer.convert_ids_to_tokens(inputs.input_ids[0].tolist())
    start, end = image
    assert "".join(tokens[:start]) == f"<s>{yb.PAPER_SYSTEM} USER: "
    assert tokens[start:end] == ["<image>"] * (end - start)
    assert "".join(tokens[end:]) == f"\n{item.prompt} ASSISTANT:"
    # Without a system prompt llava-1.5-hf's template leaves BOS + "USER: " before the image.
    plain = model.prepare(images=item.load_images(), prompt=item.prompt)
    end = plain.segments.samples[0].system.end
    assert "".join(model.processor.tokenizer.convert_ids_to_tokens(plain.input_ids[0, :end])) == (
        "<s>USER: "
    )


def test_paper_preset_gives_35_system_tokens_with_the_real_llava_vocabulary(
    real_vocab_ckpt, tmp_path
):
    """With llava-1.5-7b-hf's vocabulary and processor: BOS + 30 + " USER: " = 35 system
    tokens, then 576 image tokens [35, 611), as in the paper's code. (The checkpoint has
    2 layers, too few for the quarters of the paper sweep: the baseline shows the layout.)"""
    layout = run_paper_setup(real_vocab_ckpt("llava"), tmp_path, sweep="none")["layout"]
    assert layout["system"] == [0, 35]
    assert layout["images"] == [[35, 611]]


# ---------------------------------------------------------------------------------- CLI


def test_cli_runs_resumes_and_merges(tiny_ckpt, tmp_path, capsys):
    from vlm_lens.cli import main

    args = ["yesbias", "--model", str(tiny_ckpt("qwen3_vl")), "--sweep", "none"]
    args += ["--limit", "1", "--out", str(tmp_path), "--no-progress", "--n-boot", "20"]
    args += ["--max-new-tokens", str(MAX_NEW), "--tag", "tiny"]
    assert main(args) == 0
    run_dir = tmp_path / "tiny" / "synthetic"
    assert len((run_dir / yb.RECORDS).read_text().splitlines()) == 2
    assert (tmp_path / "tiny" / "report.html").exists()
    assert main(args) == 0  # everything done: nothing is rerun
    assert len((run_dir / yb.RECORDS).read_text().splitlines()) == 2
    assert main(["yesbias", "merge", "--out", str(tmp_path), "--n-boot", "20"]) == 0
    assert "complete" in capsys.readouterr().out


def test_report_leads_with_the_headline_grid_and_collapses_the_raw_tables(full_run):
    result = report_run(full_run, n_boot=200)
    table = {r["condition"]: r for r in result["table"]}
    columns, rows = headline_grid(result["table"])
    assert columns == ["Q4", "all"]
    grid = dict(rows)
    moved = grid["move system->text (fraction 1)"]
    # group-major cells: Q4 (d paired acc, d yes-rate), then all (not run for this row)
    t = table["redistribute:system->text:Q4:f1.0"]
    assert moved[0] == (
        t["d_paired_accuracy"],
        t["d_paired_accuracy_lo"],
        t["d_paired_accuracy_hi"],
    )
    assert moved[1] == (t["d_yes_rate"], t["d_yes_rate_lo"], t["d_yes_rate_hi"])
    assert moved[2:] == [None, None]
    assert grid["image attention ×2"][:2] == [None, None] and grid["image attention ×2"][2]

    page = result["paths"]["report"].read_text()
    body = page[page.index("<body>") :]
    first_h3 = re.search(r"<h3>(.*?)</h3>", body).group(1)
    assert first_h3.startswith("Headline")
    first_table = body.index("<table")
    assert body.index('<table class="grid">') == first_table < body.index("<figure")
    assert f"{t['d_paired_accuracy']:+.3f}" in body[first_table : body.index("</table>")]
    details = body[body.index("<details>") : body.index("</details>")]
    assert "Conditions against the baseline" in details and "<table" in details
    assert body.index("<details>") > body.rindex("<figure")
    assert 'title="paired accuracy minus the baseline' in details  # hover definitions
    assert "d_paired_accuracy_lo" not in body  # raw column keys are not shown


def test_cli_prints_the_headline(tiny_ckpt, tmp_path, capsys):
    from vlm_lens.cli import main

    args = ["yesbias", "--model", str(tiny_ckpt("qwen3_vl")), "--sweep", "paper"]
    args += ["--limit", "1", "--out", str(tmp_path), "--no-progress", "--n-boot", "20"]
    args += ["--max-new-tokens", str(MAX_NEW), "--tag", "tiny", "--no-shares"]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = yb.analyze(tmp_path / "tiny" / "synthetic", n_boot=20)["table"]
    expected = headline_text(table, "synthetic")
    assert "move system->image+text (fraction 1)" in expected and "Q4" in expected
    assert expected in out
    assert main(["yesbias", "report", "--out", str(tmp_path), "--n-boot", "20"]) == 0
    assert expected in capsys.readouterr().out
