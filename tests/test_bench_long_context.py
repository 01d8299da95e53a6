"""The long-context and GPU benchmarks run in their smoke modes and report what they promise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_long_context_smoke(tmp_path, keep_threads):
    bench = _load("bench_long_context")
    report = bench.main(["--smoke", "--dir", str(tmp_path)])
    table = report["table"]
    sizes = sorted({r["tokens"] for r in table})
    assert len(sizes) == 2 and sizes[0] < sizes[1]
    assert {r["method"] for r in table} == set(bench.METHODS)
    for r in table:
        assert r["time_s"] > 0 and r["time_ratio"] > 0
        if r["method"] == "hf_sdpa":
            assert r["time_ratio"] == 1.0
    assert set(report["growth"]) == set(bench.METHODS)


def test_slope_is_the_log_log_exponent():
    bench = _load("bench_long_context")
    xs = [1000, 2000, 4000, 8000]
    assert bench.slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert bench.slope(xs, [5 * x for x in xs]) == pytest.approx(1.0)
    assert bench.slope([1000], [1.0]) is None


def test_bench_gpu_smoke_on_cpu(keep_threads):
    bench = _load("bench_gpu")
    report = bench.main(["--smoke", "--arch", "qwen3_vl", "llava"])
    rows = report["rows"]
    for arch in ("qwen3_vl", "llava"):
        names = {r["method"] for r in rows if r["arch"] == arch}
        assert {"hf_sdpa", "hf_eager_attn", "hooked", "record_last", "yesbias_q4"} <= names
        assert "nnsight_row" in names and "record_all" in names
    assert all(r["time_s"] > 0 for r in rows)


def test_bench_gpu_real_configs_have_the_published_sizes():
    bench = _load("bench_gpu")
    params = {}
    for arch in ("qwen3_vl", "llava"):
        model = bench.build(arch, False, "meta", torch.bfloat16)  # no memory: meta tensors
        params[arch] = sum(p.numel() for p in model.hf_model.parameters()) / 1e9
        assert model.cfg.d_head == 128
    assert 2.0 < params["qwen3_vl"] < 2.3  # Qwen3-VL-2B
    assert 6.9 < params["llava"] < 7.2  # LLaVA-1.5-7B
