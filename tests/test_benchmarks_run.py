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
    ):
        row = next(line for line in lines if line.startswith(name + " "))
        assert "x " in row, row  # a ratio to hf_sdpa was printed
    results = json.loads(out_json.read_text())["results"]
    assert results["hf_sdpa"]["ratio_to_hf_sdpa"] == 1.0
    assert results["vlm_lens_record_last_layer"]["bytes_kept"] > 0
    assert results["vlm_lens_record_last_layer"]["same_tokens_as_hf_sdpa"]
