"""`--shard auto` under torchrun: two ranks on CPU each write their shard, `merge` joins them,
and the merged log holds the same records as one unsharded run.

torchrun (its c10d rendezvous on a local TCP store) sets RANK / WORLD_SIZE / LOCAL_RANK; the
command creates no process group, so nothing else is needed on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_shard_auto_under_torchrun_then_merge_equals_an_unsharded_run(tiny_ckpt, tmp_path, capsys):
    from vlm_lens.cli import main

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # torchrun sets them for its ranks
        env.pop(name, None)
    study = ["count", "--model", str(tiny_ckpt("qwen3_vl")), "--n", "4", "--size", "128"]
    study += [
        "--radius",
        "3",
        "--digits-only",
        "--batch-size",
        "1",
        "--no-png",
        "--no-progress",
        "--no-controls",
    ]
    sharded, plain = tmp_path / "sharded", tmp_path / "plain"

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    # "--" ends torchrun's own options: it would read "--n" as an abbreviation of its --nnodes.
    launch = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "vlm_lens.cli", "--"]
    proc = run([*launch, *study, "--shard", "auto", "--out", str(sharded)])
    assert "shard 0/2 done" in proc.stdout and "shard 1/2 done" in proc.stdout
    (model_dir,) = [p for p in sharded.iterdir() if (p / "run.json").exists()]
    for k in (0, 1):
        rows = _rows(model_dir / f"samples.shard-{k}-of-2.jsonl")
        assert sorted(r["index"] for r in rows) == [i for i in range(4) if i % 2 == k]
    assert not (model_dir / "samples.jsonl").exists()

    # merge and the unsharded run in this process (one interpreter start less each)
    assert main(["count", "merge", "--out", str(sharded), "--no-png"]) == 0
    assert "4 rows, 0 duplicates dropped, complete" in capsys.readouterr().out
    assert main([*study, "--out", str(plain)]) == 0
    (plain_dir,) = [p for p in plain.iterdir() if (p / "run.json").exists()]

    def key(row: dict) -> tuple:
        return row["condition"], row["index"]

    assert sorted(_rows(model_dir / "samples.jsonl"), key=key) == sorted(
        _rows(plain_dir / "samples.jsonl"), key=key
    )
    assert (sharded / "report.html").exists()
