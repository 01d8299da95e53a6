"""Run directories are locked (issue 19): one run per log, no merge or report during a run,
locks gone when a process dies, and loading records drops duplicate ids with a warning."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from vlm_lens import HookedVLM
from vlm_lens.studies import counting, runlog

CONFIG = counting.CountingConfig(n=2, size=128, radius=3, layers=(0,), digits_only=True)


def _hold(kind: str, target: Path, then: str) -> subprocess.Popen:
    """Another process that takes `runlog.<kind>(target)`, prints "held", then `then`."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from vlm_lens.studies import runlog
        with runlog.{kind}({str(target)!r}):
            print("held", flush=True)
            {then}
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_at_once_and_a_crash_releases(tmp_path):
    holder = _hold("run_lock", tmp_path, "time.sleep(60)")
    try:
        with (
            pytest.raises(runlog.RunLockedError, match="in use by another process"),
            runlog.run_lock(tmp_path),
        ):
            pass
        with pytest.raises(runlog.RunLockedError), runlog.log_lock(tmp_path / runlog.SAMPLES):
            pass
    finally:
        holder.kill()
        holder.wait()
    # killed while holding: the OS dropped the lock, nothing to clean up
    with runlog.run_lock(tmp_path):
        pass
    crashed = _hold("run_lock", tmp_path, "os._exit(3)")
    assert crashed.wait() == 3
    with runlog.run_lock(tmp_path):
        pass


def test_shards_run_side_by_side_but_not_the_same_log_nor_a_merge(tmp_path):
    shard0 = tmp_path / runlog.Shard(0, 2).filename
    shard1 = tmp_path / runlog.Shard(1, 2).filename
    holder = _hold("log_lock", shard0, "time.sleep(60)")
    try:
        with runlog.log_lock(shard1):  # the other shard: free
            pass
        with pytest.raises(runlog.RunLockedError, match="shard-0-of-2"), runlog.log_lock(shard0):
            pass
        with (
            pytest.raises(runlog.RunLockedError),
            runlog.run_lock(tmp_path),
        ):  # a merge waits for every shard
            pass
    finally:
        holder.kill()
        holder.wait()


def test_counting_run_merge_and_tables_are_refused_while_another_run_holds_the_log(
    tiny_ckpt, tmp_path
):
    model = HookedVLM.from_pretrained(tiny_ckpt("qwen3_vl"))
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    holder = _hold("log_lock", model_dir / runlog.SAMPLES, "time.sleep(60)")
    try:
        with pytest.raises(runlog.RunLockedError):
            counting.run_counting(model, CONFIG, tmp_path, model_name="m", progress=False)
        assert not (model_dir / "run.json").exists()  # refused before writing anything
        counting.run_counting(
            model, CONFIG, tmp_path, model_name="m", progress=False, shard=runlog.Shard(0, 2)
        )
        with pytest.raises(runlog.RunLockedError):
            counting.merge(tmp_path)
        with pytest.raises(runlog.RunLockedError):
            counting.write_tables(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert counting.merge(tmp_path)["m"]["complete"] is False  # shard 1 never ran


def test_loading_drops_duplicate_ids_and_says_so(tmp_path):
    rows = [{"condition": "baseline", "index": i, "text": str(i)} for i in (0, 1, 0)]
    (tmp_path / runlog.SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match="1 duplicate records dropped"):
        loaded = counting.load_records(tmp_path)
    assert [(r["index"], r["text"]) for r in loaded] == [(0, "0"), (1, "1")]


def test_yesbias_records_twice_in_a_log_warn_but_a_merged_log_beside_its_shards_does_not(
    tmp_path,
):
    from vlm_lens.studies import yesbias

    rows = [{"condition": "baseline", "item_id": str(i), "text": "yes"} for i in (0, 1)]
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / yesbias.RECORDS).write_text(lines)
    (tmp_path / runlog.Shard(0, 1).log_name(yesbias.RECORDS)).write_text(lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert yesbias.load_records(tmp_path) == rows
    (tmp_path / yesbias.RECORDS).write_text(lines + json.dumps(rows[0]) + "\n")
    with pytest.warns(UserWarning, match="1 duplicate records dropped"):
        assert yesbias.load_records(tmp_path) == rows
