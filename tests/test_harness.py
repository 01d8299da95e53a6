"""The study harness: a third study written against it (image attention mass per layer per
step, over the dots set), and the promise both real studies rely on: one seed gives the
same bytes whether a run goes through at once, stops and resumes, or runs in shards that
are merged."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import pytest
import torch

from vlm_lens import HookedVLM
from vlm_lens.core.recording import AttentionRecord
from vlm_lens.core.segments import KIND_IMAGE, SEGMENT_KINDS
from vlm_lens.data import dots
from vlm_lens.data.yesno import synthetic
from vlm_lens.studies import counting, harness, runlog
from vlm_lens.studies import yesbias as yb

IMAGE = SEGMENT_KINDS.index("image")


@dataclass(frozen=True)
class MassConfig:
    n: int = 4
    seed: int = 0
    condition: str = "baseline"
    size: int = 64
    steps: int = 2
    prompt: str = "How many dots are there?"

    def dataset(self) -> list[dots.DotsSample]:
        return dots.generate(self.n, self.seed, size=self.size, radius=3, count_range=(1, 4))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MassRecord:
    condition: str
    index: int
    count: int
    mass: list[list[float]]  # [step][layer]: the answer row's attention on image keys


def measure(model, samples, config: MassConfig) -> list[MassRecord]:
    inputs = model.prepare(
        images=[[s.image] for s in samples], prompt=[config.prompt] * len(samples)
    )
    record = AttentionRecord(layers=None, keep=("shares",), heads="mean")
    out = model.generate(
        inputs, max_new_tokens=config.steps, min_new_tokens=config.steps, record=record
    )
    shares = out.recording.shares  # step -> [batch, layer, 1, query, kind]
    return [
        MassRecord(
            config.condition,
            s.index,
            s.count,
            [shares[step][b, :, 0, -1, IMAGE].tolist() for step in sorted(shares)],
        )
        for b, s in enumerate(samples)
    ]


def summarize(rows) -> dict:
    mass = torch.tensor([r["mass"] for r in rows])  # [sample, step, layer]
    return {"n": len(rows), "mean_mass": mass.mean(0).tolist()}


def report(out_dir) -> list:
    paths = []
    for model_dir in sorted(p.parent for p in out_dir.glob(f"*/{harness.MANIFEST}")):
        s = summarize(harness.load_records(model_dir))
        rows = [
            {"step": t, "layer": layer, "mass": m}
            for t, per_layer in enumerate(s["mean_mass"])
            for layer, m in enumerate(per_layer)
        ]
        paths.append(runlog.write_csv(model_dir / "mass.csv", rows, ["step", "layer", "mass"]))
    return paths


STUDY = harness.Study("mass", MassConfig, measure, summarize, report=f"{__name__}:report")


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> HookedVLM:
    return HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))


def _lines(model_dir) -> list[str]:
    return (model_dir / runlog.SAMPLES).read_text().splitlines()


def test_a_third_study_runs_end_to_end(model, tmp_path):
    config = MassConfig()
    where = harness.run_dir(tmp_path, "tiny/q")
    model_dir = harness.run(STUDY, model, config, where, model_name="tiny/q", progress=False)
    assert model_dir == tmp_path / "tiny__q"
    rows = harness.load_records(model_dir)
    assert [r["index"] for r in rows] == list(range(config.n))
    assert list(rows[0]) == ["model", "condition", "index", "count", "mass"]  # field order
    n_layers = model.cfg.n_layers
    for row in rows:
        assert len(row["mass"]) == config.steps and all(len(m) == n_layers for m in row["mass"])
        assert all(0 < m < 1 for step in row["mass"] for m in step)
    # The recorded mass is the answer row's full pattern summed over the image keys.
    sample = config.dataset()[1]
    inputs = model.prepare(images=[[sample.image]], prompt=[config.prompt])
    full = model.generate(
        inputs, max_new_tokens=1, record=AttentionRecord(layers=None, keep=("full",))
    ).recording.full[0][0, :, :, -1, :]  # [layer, head, key]
    is_image = inputs.segments.key_kinds(full.shape[-1]) == KIND_IMAGE
    expected = (full * is_image[0].to(full.dtype)).sum(-1).mean(-1)
    torch.testing.assert_close(torch.tensor(rows[1]["mass"][0]), expected, rtol=1e-4, atol=1e-5)
    summary = STUDY.summarize(rows)
    assert summary["n"] == config.n and len(summary["mean_mass"]) == config.steps
    (csv,) = harness.report(STUDY, tmp_path)
    assert len(csv.read_text().splitlines()) == 1 + config.steps * n_layers


def test_resume_skips_done_ids(model, tmp_path):
    seen: list[int] = []

    def counted(model, samples, config):
        seen.extend(s.index for s in samples)
        return measure(model, samples, config)

    study = replace(STUDY, measure=counted)
    where = tmp_path / "m"
    harness.run(study, model, MassConfig(), where, model_name="m", progress=False, max_samples=3)
    assert seen == [0, 1, 2]
    harness.run(study, model, MassConfig(), where, model_name="m", progress=False, batch_size=2)
    assert seen == [0, 1, 2, 3]
    assert [json.loads(line)["index"] for line in _lines(tmp_path / "m")] == [0, 1, 2, 3]


def test_a_changed_manifest_is_refused(model, tmp_path):
    where = tmp_path / "m"
    harness.run(STUDY, model, MassConfig(n=2), where, model_name="m", progress=False)
    before = _lines(where)
    with pytest.raises(ValueError, match=r"other settings \(conditions 'baseline': n, seed differ"):
        harness.run(STUDY, model, MassConfig(n=3, seed=1), where, model_name="m", progress=False)
    assert _lines(where) == before
    # Another condition beside it is fine, and the manifest then holds both.
    other = MassConfig(n=1, condition="other", steps=1)
    harness.run(STUDY, model, other, where, model_name="m", progress=False)
    manifest = json.loads((tmp_path / "m" / harness.MANIFEST).read_text())
    assert list(manifest["conditions"]) == ["baseline", "other"]


def test_shards_and_merge_equal_an_unsharded_run(model, tmp_path):
    configs = [MassConfig(n=3), MassConfig(n=2, condition="second", seed=5)]
    whole = harness.run(STUDY, model, configs, tmp_path / "whole", model_name="m", progress=False)
    for k in (1, 0):  # out of order: merge sorts
        shard = runlog.Shard(k, 2)
        parts = tmp_path / "parts" / "m"
        harness.run(STUDY, model, configs, parts, model_name="m", progress=False, shard=shard)
    assert not (tmp_path / "parts" / "m" / runlog.SAMPLES).exists()
    result = harness.merge(STUDY, tmp_path / "parts")
    assert result["m"]["complete"] and result["m"]["rows"] == 5
    assert _lines(tmp_path / "parts" / "m") == _lines(whole)


# ------------------------------------------------ same bytes: at once, resumed, sharded


def _bytes(directory, names) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in names}


COUNT = counting.CountingConfig(
    n=4, size=128, radius=3, layers=(0,), digits_only=True, example_maps=1
)
COUNT_FILES = ("summary.json", "summary.csv", "samples.csv", "attention.csv")


def test_counting_gives_the_same_bytes_at_once_resumed_and_sharded(model, tmp_path):
    def run(out, **kwargs):
        counting.run_counting(model, COUNT, out, model_name="m", progress=False, **kwargs)

    run(tmp_path / "once")
    run(tmp_path / "resumed", max_samples=1)
    run(tmp_path / "resumed", max_samples=2)
    run(tmp_path / "resumed")
    for k in (1, 0):
        run(tmp_path / "sharded", shard=runlog.Shard(k, 2))
    assert counting.merge(tmp_path / "sharded")["m"]["complete"]
    written = {}
    for name in ("once", "resumed", "sharded"):
        counting.write_tables(tmp_path / name)
        written[name] = {
            **_bytes(tmp_path / name / "m", (runlog.SAMPLES, harness.MANIFEST)),
            **_bytes(tmp_path / name, COUNT_FILES),
        }
    assert written["once"][runlog.SAMPLES].count(b"\n") == COUNT.n
    assert written["resumed"] == written["once"]
    assert written["sharded"] == written["once"]


def test_yesbias_gives_the_same_bytes_at_once_resumed_and_sharded(model, tmp_path):
    items = synthetic.generate(2, seed=0)  # 2 pairing units, 4 items
    conditions = [yb.Condition("baseline"), yb.Condition.parse("scale:image:all:a2.0")]

    def run(run_dir, **kwargs):
        yb.run_sweep(model, items, conditions, run_dir, max_new_tokens=2, progress=False, **kwargs)

    run(tmp_path / "once")
    run(tmp_path / "resumed", max_records=3)
    run(tmp_path / "resumed")
    for k in (1, 0):
        run(tmp_path / "sharded", shard=f"{k}/2")
    written = {}
    for name in ("once", "resumed", "sharded"):
        run_dir = tmp_path / name
        if name == "sharded":  # a stop and a resume append in the order of an unbroken run
            assert yb.merge(run_dir)["."]["complete"]
        yb.analyze(run_dir, n_boot=50)
        files = ("items.jsonl", yb.RUN, "table.csv", "table.json", "metrics.json")
        written[name] = _bytes(run_dir, files)
        written[name]["records"] = (run_dir / yb.RECORDS).read_bytes()
    assert written["once"]["records"].count(b"\n") == len(items) * len(conditions)
    assert written["resumed"] == written["once"]
    merged = tmp_path / "once"
    before = written["once"]["records"]
    yb.merge(merged)  # an unsharded log sorted as a merge sorts: the same records
    assert sorted(before.splitlines()) == sorted((merged / yb.RECORDS).read_bytes().splitlines())
    assert (merged / yb.RECORDS).read_bytes() == written["sharded"]["records"]
    assert {k: v for k, v in written["sharded"].items() if k != "records"} == {
        k: v for k, v in written["once"].items() if k != "records"
    }
