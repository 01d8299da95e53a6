"""The patching benchmark runs on its tiny config and its two methods agree."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_patching.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_patching", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_patching_runs_tiny_config(bench, tiny_dir, tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "report.json"
    try:
        report = bench.main(
            ["--config", "tiny", "--threads", "1", "--dir", str(tiny_dir), "--json", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = report["results"]
    assert [r["sweep"] for r in rows] == [
        "resid_pre x image_patch",
        "z x all",
        "pattern x all",
        "resid_pre x each",
    ]
    for r in rows:
        assert r["naive_forward_passes"] == r["cells"] + 2
        assert r["resume_forward_passes"] < r["naive_forward_passes"]
        assert r["resume_layer_tokens"] <= r["full_layer_tokens"]
        assert r["max_abs_diff_vs_full"] <= 1e-5 and r["max_abs_diff_vs_naive"] <= 1e-5
        for method in ("resume", "full", "naive"):
            assert r[f"{method}_cells_per_s"] > 0
    printed = capsys.readouterr().out
    assert "resume / full / naive" in printed and "resid_pre x image_patch" in printed
