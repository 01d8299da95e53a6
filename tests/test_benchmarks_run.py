"""The overhead benchmark runs on a tiny config and prints its ratios (timings are not tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_overhead.py"


def test_bench_overhead_runs_tiny(tmp_path):
    out_json = tmp_path / "result.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--checkpoints",
            str(tmp_path),
            "--json",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for name in (
        "hf_sdpa",
        "hf_eager_output_attentions",
        "vlm_lens_no_hooks",
        "vlm_lens_record_last_layer",
        "vlm_lens_edit_pattern_checked",
        "vlm_lens_edit_resid_post_unchecked",
    ):
        row = next(line for line in lines if line.startswith(name + " "))
        assert "x " in row, row  # a ratio to hf_sdpa was printed
    results = json.loads(out_json.read_text())["results"]
    assert results["hf_sdpa"]["ratio_to_hf_sdpa"] == 1.0
    assert results["vlm_lens_record_last_layer"]["bytes_kept"] > 0
    assert results["vlm_lens_record_last_layer"]["same_tokens_as_hf_sdpa"]


def _load_runner(name: str, monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls: list[list[str]] = []
    monkeypatch.setattr(module, "vlm_lens_main", lambda argv: calls.append(argv) or 0)
    return module, calls


def test_paper_runners_hand_the_cli_arguments_it_accepts(monkeypatch):
    from vlm_lens.cli import build_parser

    parser = build_parser()
    counting, calls = _load_runner("run_counting", monkeypatch)
    assert counting.main(["--causal", "--device-map", "auto", "--n", "8"]) == 0
    args = parser.parse_args(calls[-1])
    assert (args.command, args.n, args.device_map, args.dtype) == ("count", 8, "auto", "bfloat16")
    assert args.device is None  # --device-map replaces --device
    assert args.model == list(counting.PAPER_MODELS) and args.cot and args.three_digit

    yesbias, calls = _load_runner("run_yesbias", monkeypatch)
    assert yesbias.main(["--models", "a", "b", "--limit", "5", "--shard", "1/2"]) == 0
    assert len(calls) == 2
    for model, argv in zip(("a", "b"), calls):
        args = parser.parse_args(argv)
        assert (args.command, args.model, args.device, args.shard) == (
            "yesbias",
            model,
            "cuda",
            "1/2",
        )
        assert args.benchmark == ["synthetic"] and args.limit == 5


def test_machine_description_names_cpu_cores_ram_and_torch():
    import torch

    from vlm_lens.reports.machine import describe_machine, machine_info

    info = machine_info()
    assert info["logical_cpus"] == os.cpu_count() and info["torch"] == torch.__version__
    text = describe_machine()
    assert f"{os.cpu_count()} cores" in text and f"torch {torch.__version__}" in text
    assert info["cpu"] in text and info["ram"] in text
