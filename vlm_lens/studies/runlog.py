"""Append-only JSONL sample logs that resume, shard and merge.

A study writes one JSON object per sample to `samples.jsonl` and flushes after every
line, so a run that is stopped (Ctrl-C, a killed job, a full disk) loses at most the
sample it was working on. On restart the log is read back, a truncated last line (the
sample that was being written) is cut off, and samples whose key is already present are
skipped: the finished log holds every sample exactly once.

For several processes (or GPUs) `Shard(k, n)` selects the samples with
`index % n == k`; each shard writes its own `samples.shard-k-of-n.jsonl`, and `merge`
concatenates the shards (and any unsharded log) into `samples.jsonl`, dropping
duplicates by key and checking that every expected key is there.

Locking: `run_lock(directory)` holds an exclusive `fcntl.flock` on `directory/.lock` for a
merge or a report, and `log_lock(log)` a shared lock on the same file plus an exclusive one
on the log's own lock file for a run, so shards of one run proceed side by side while a
second run of the same log, or a merge during a run, fails at once with `RunLockedError`.
The OS drops the locks when the process dies, so a crash leaves nothing to clean up.

Not for: what a row holds (the studies decide) or summaries of the rows.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK",
    "SAMPLES",
    "RunLockedError",
    "SampleLog",
    "Shard",
    "jsonable",
    "log_lock",
    "merge",
    "read_jsonl",
    "run_lock",
    "shard_files",
    "unique",
    "write_json_atomic",
]

SAMPLES = "samples.jsonl"
_SHARD_FILE = re.compile(r"^(?P<stem>.+)\.shard-(?P<k>[0-9]+)-of-(?P<n>[0-9]+)\.jsonl$")

Key = Callable[[dict], Hashable]


@dataclass(frozen=True)
class Shard:
    """Shard `k` of `n`: the samples with `index % n == k`."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if self.n < 1 or not 0 <= self.k < self.n:
            raise ValueError(f"shard must satisfy 0 <= K < N, got {self.k}/{self.n}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"K/N"` -> `Shard(K, N)`."""
        match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
        if not match:
            raise ValueError(f"shard must look like K/N (e.g. 0/4), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def owns(self, index: int) -> bool:
        return index % self.n == self.k

    @property
    def filename(self) -> str:
        return self.log_name(SAMPLES)

    def log_name(self, log: str = SAMPLES) -> str:
        """This shard's log for the study log `log` (`samples.jsonl` -> `samples.shard-K-of-N.jsonl`)."""
        return f"{Path(log).stem}.shard-{self.k}-of-{self.n}.jsonl"


def jsonable(value: Any) -> Any:
    """`value` with NaN/inf floats as None and numpy / torch scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def read_jsonl(path: str | Path, *, repair: bool = False) -> list[dict]:
    """Rows of a JSONL file; a truncated LAST line is ignored (and cut off if `repair`).

    A malformed line anywhere else means the file was edited or corrupted: that raises.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    complete_end = data.rfind(b"\n") + 1  # bytes up to the last newline are whole lines
    rows = []
    for number, line in enumerate(data[:complete_end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: malformed JSON line ({err})") from err
    tail = data[complete_end:]
    if tail.strip():
        try:  # a last line that is whole but lacks its newline
            rows.append(json.loads(tail))
            complete_end = len(data)
            if repair:
                with path.open("ab") as f:
                    f.write(b"\n")
                complete_end = len(data) + 1
        except json.JSONDecodeError:
            if repair:
                with path.open("r+b") as f:
                    f.truncate(complete_end)
    return rows


class SampleLog:
    """An append-only JSONL log of finished samples, keyed by `key(row)`.

    >>> log = SampleLog(path, key=lambda r: (r["condition"], r["index"]))  # doctest: +SKIP
    >>> if not log.has(("baseline", 3)): log.append(row)                   # doctest: +SKIP
    """

    def __init__(self, path: str | Path, key: Key):
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[Hashable] = {key(row) for row in read_jsonl(self.path, repair=True)}
        self._file = None

    def has(self, key: Hashable) -> bool:
        return key in self.done

    def append(self, row: dict) -> None:
        key = self.key(row)
        if key in self.done:
            raise ValueError(f"{self.path}: sample {key!r} is already logged")
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(jsonable(row), allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(key)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SampleLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_files(directory: str | Path, log: str = SAMPLES) -> list[Path]:
    """The shard logs of the study log `log` in `directory`, sorted by (n, k)."""
    stem = Path(log).stem
    found = []
    for p in Path(directory).glob(f"{stem}.shard-*-of-*.jsonl"):
        m = _SHARD_FILE.match(p.name)
        if m and m["stem"] == stem:
            found.append((int(m["n"]), int(m["k"]), p))
    return [p for _, _, p in sorted(found)]


LOCK = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the run directory (or the same log) this process asked for."""


@contextlib.contextmanager
def _flock(path: Path, mode: int, what: str) -> Iterator[None]:
    with path.open("a+b") as f:
        try:
            fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{what} is in use by another process (lock file {path}); wait for it to "
                "finish or use another output folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def run_lock(directory: str | Path) -> Iterator[None]:
    """Hold `directory` alone (merge, report): no run, merge or report of it may run meanwhile."""
    directory = Path(directory)
    with _flock(directory / LOCK, fcntl.LOCK_EX, str(directory)):
        yield


@contextlib.contextmanager
def log_lock(log: str | Path) -> Iterator[None]:
    """Hold the log file `log` for a run: other shards' logs of its directory stay free, the
    same log and the directory as a whole (`run_lock`) do not."""
    log = Path(log)
    with (
        _flock(log.parent / LOCK, fcntl.LOCK_SH, str(log.parent)),
        _flock(log.parent / f".{log.name}{LOCK}", fcntl.LOCK_EX, str(log)),
    ):
        yield


def unique(rows: Iterable[dict], key: Key, where: str, *, copies_ok: bool = False) -> list[dict]:
    """`rows` with each key once (the first row wins), warning when any was dropped: a log
    holding a sample twice was written by two runs at once or merged by hand. With
    `copies_ok`, exact copies are dropped silently (a merged log read with its shard logs)."""
    seen: dict[Hashable, dict] = {}
    dropped = 0
    for row in rows:
        k = key(row)
        if k not in seen:
            seen[k] = row
        elif not (copies_ok and row == seen[k]):
            dropped += 1
    if dropped:
        warnings.warn(f"{where}: {dropped} duplicate records dropped (same id)", stacklevel=2)
    return list(seen.values())


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write `rows` as CSV with exactly `columns` (other keys dropped); None -> empty cell."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return path


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def merge(
    directory: str | Path,
    key: Key,
    expected: Iterable[Hashable] | None = None,
    sort_key: Callable[[dict], Any] | None = None,
    log: str = SAMPLES,
    remove_shards: bool = False,
) -> dict[str, Any]:
    """Merge the log `log` (default `samples.jsonl`) and its shard logs in `directory` into `log`.

    Rows are deduplicated by `key` (the first occurrence wins). If `expected` keys are
    given, the result says which are missing (the merged log is written either way, so
    a later run can resume from it). Returns `{"rows", "duplicates", "missing",
    "sources", "complete"}`.
    """
    directory = Path(directory)
    main = directory / log
    shards = shard_files(directory, log)
    sources = ([main] if main.exists() else []) + shards
    rows: dict[Hashable, dict] = {}
    duplicates = 0
    for source in sources:
        for row in read_jsonl(source):
            k = key(row)
            if k in rows:
                duplicates += 1
            else:
                rows[k] = row
    ordered = list(rows.values())
    if sort_key is not None:
        ordered.sort(key=sort_key)
    tmp = directory / f".{log}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for row in ordered:
            f.write(json.dumps(jsonable(row), allow_nan=False) + "\n")
    os.replace(tmp, main)
    if remove_shards:
        for shard in shards:
            shard.unlink()
    missing = [] if expected is None else [k for k in expected if k not in rows]
    return {
        "rows": len(ordered),
        "duplicates": duplicates,
        "missing": missing,
        "sources": [str(s) for s in sources],
        "complete": not missing,
    }
