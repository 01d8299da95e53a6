"""One shape for every study: a plan of units in, one JSON line per unit out, same layout.

A study supplies a `Study`: a frozen config dataclass, ``measure(model, batch, config,
**kwargs) -> records`` (dataclasses or dicts; a dataclass is written as its fields in
order), ``summarize(records)`` and its report function. The harness owns the rest, the
same for every study::

    <out>/<model slug>[/<part>...]/run.json                the manifest (`check_manifest`)
    <out>/<model slug>[/<part>...]/<log>                   one line per unit (`Study.log`)
    <out>/<model slug>[/<part>...]/<log stem>.shard-K-of-N.jsonl  a shard's log; `merge` joins them

- the unit: what one record is about, with its key, its shard index and its batch group.
  A study over configs with `condition`, `n`, `dataset()` and `to_dict()` gets the units
  (condition, index) from `by_condition` (the default plan); a study with other units
  (the yes-bias sweep: (item, condition)) supplies its own `Study.plan`;
- resume: units whose key is in any log of the run are skipped, so calling `run` again
  continues;
- sharding: a `runlog.Shard` takes the units whose shard index `i % N == K`;
- locking: one process per log (`runlog.log_lock`), merge and report under `runlog.run_lock`;
- batching: `batches`, consecutive units of one group;
- a resume with settings that change what the records mean is refused (`check_manifest`).

Not for: what a study measures or how it reports (its own package and `vlm_lens.reports`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from vlm_lens.studies import runlog

__all__ = [
    "MANIFEST",
    "Plan",
    "Study",
    "Unit",
    "batches",
    "by_condition",
    "check_manifest",
    "load_records",
    "merge",
    "model_slug",
    "report",
    "run",
    "run_dir",
    "run_dirs",
]

MANIFEST = "run.json"
T = TypeVar("T")


def model_slug(name: str) -> str:
    """A directory name for a model id or path (`Qwen/Qwen3-VL-2B` -> `Qwen__Qwen3-VL-2B`)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).replace("/", "__")).strip("._")
    return slug or "model"


def run_dir(out_dir: str | Path, model_name: str, *parts: str) -> Path:
    """Where a run of `model_name` goes: `<out_dir>/<model slug>/<parts...>`."""
    return Path(out_dir, model_slug(model_name), *parts)


def run_dirs(out_dir: str | Path) -> list[Path]:
    """Every run directory (one holding a manifest) at or below `out_dir`, sorted."""
    return sorted(p.parent for p in Path(out_dir).rglob(MANIFEST))


def batches(
    units: Iterable[T], size: int, group: Callable[[T], Hashable | None] | None = None
) -> Iterator[list[T]]:
    """Consecutive runs of at most `size` units whose `group(unit)` are equal.

    A unit whose group is None is never batched with another (e.g. an image whose size is
    not known yet). Without `group` every unit is in one group.
    """
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    batch: list[T] = []
    key: Any = None
    for unit in units:
        k = group(unit) if group is not None else ()
        if batch and (k is None or k != key or len(batch) >= size):
            yield batch
            batch = []
        batch.append(unit)
        key = k
    if batch:
        yield batch


def check_manifest(
    path: str | Path,
    manifest: Mapping[str, Any],
    *,
    fixed: Mapping[str, Any] | None = None,
    entries: Sequence[str] = (),
    accumulate: Mapping[str, Callable[[Any, Any], Any]] | None = None,
) -> dict[str, Any]:
    """Write the run manifest `path`, or refuse a resume whose settings change the records.

    Refused: a key of `fixed` whose value changed (`fixed[key]` stands for a manifest
    written before the key existed), and, for each key of `entries` (a dict-valued key such
    as the conditions), an entry present in both manifests with another value. Otherwise
    the manifests merge: the new values win, `entries` keep the old entries too, and a
    key of `accumulate` becomes `accumulate[key](old, new)`. Returns what was written.
    """
    path = Path(path)
    new = dict(manifest)
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [
            f"{k}: {old.get(k, default)!r} -> {new.get(k)!r}"
            for k, default in (fixed or {}).items()
            if old.get(k, default) != new.get(k)
        ]
        changed += [c for key in entries for c in _changed_entries(key, old, new)]
        if changed:
            raise ValueError(
                f"{path.parent} holds a run with other settings ({'; '.join(changed)}); "
                "use another --out"
            )
        merged = {**old, **new}
        for key in entries:
            merged[key] = {**old.get(key, {}), **new.get(key, {})}
        for key, combine in (accumulate or {}).items():
            merged[key] = combine(old.get(key), new.get(key))
        new = merged
    runlog.write_json_atomic(path, new)
    return new


def _changed_entries(key: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between the entries of `old[key]` and `new[key]` that both hold."""
    changed = []
    before_all = old.get(key, {})
    for name, value in new.get(key, {}).items():
        before = before_all.get(name)
        if before is None or before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            fields = sorted(f for f in value if before.get(f) != value[f])
            changed.append(f"{key} {name!r}: {', '.join(fields)} differ")
        else:
            changed.append(f"{key} {name}: {before} -> {value}")
    return changed


def _row(record: Any) -> dict[str, Any]:
    """A record as its log line: a dataclass's fields in order, leaving out the fields its
    class names in `optional` while they are None; a mapping as it is."""
    if not is_dataclass(record):
        return dict(record)
    row = asdict(record)
    for name in getattr(record, "optional", ()):
        if row[name] is None:
            del row[name]
    return row


# ---------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class Unit:
    """One record to make: its log key, the index a shard selects it by, the group it
    batches within (consecutive units of one group), and what `Plan.measure` gets."""

    key: Hashable
    shard_index: int
    group: Hashable | None
    payload: Any


@dataclass
class Plan:
    """One run as a study lays it out: its manifest, its units in log order, the function
    that measures a batch of payloads (rows in order), and what to write once under the
    lock after the manifest check (e.g. the yes-bias items)."""

    manifest: dict[str, Any]
    units: list[Unit]
    measure: Callable[[Any, list[Any]], Sequence[Any]]
    setup: Callable[[Path], None] | None = None


def condition_index(row: Mapping[str, Any]) -> tuple[str, int]:
    """The key of a record of `by_condition` units."""
    return (row["condition"], int(row["index"]))


def by_condition(
    study: Study,
    model: Any,
    configs: Any,
    *,
    model_name: str,
    note: str | None = None,
    measure_kwargs: Mapping[str, Any] | None = None,
    **_: Any,
) -> Plan:
    """The default plan: units (condition, index) of configs with `condition`, `n`,
    `dataset()` and `to_dict()`; a batch holds samples of one condition; each row gets the
    model's name first. A condition's dataset is made when its first sample is measured."""
    configs = [configs] if isinstance(configs, study.config) else list(configs)
    for c in configs:
        if c.n < 1 or getattr(c, "max_new_tokens", 1) < 1:
            raise ValueError(
                f"condition {c.condition!r}: n and max_new_tokens must be >= 1, got "
                f"n={c.n}, max_new_tokens={getattr(c, 'max_new_tokens', None)}"
            )
    names = [c.condition for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"conditions must have distinct names, got {names}")
    for c in configs:  # refused before run.json is written
        if c.n < 1 or getattr(c, "max_new_tokens", 1) < 1:
            raise ValueError(
                f"condition {c.condition!r}: n and max_new_tokens must be >= 1, got "
                f"n={c.n}, max_new_tokens={getattr(c, 'max_new_tokens', None)}"
            )
    manifest = {
        "model": model_name,
        "arch": model.cfg.arch,
        "n_layers": model.cfg.n_layers,
        "conditions": {c.condition: c.to_dict() for c in configs},
        **({"note": note} if note else {}),
    }
    units = [Unit((c.condition, i), i, c.condition, (c, i)) for c in configs for i in range(c.n)]
    datasets: dict[str, list[Any]] = {}

    def measure(model: Any, batch: list[tuple[Any, int]]) -> list[dict[str, Any]]:
        config = batch[0][0]
        if config.condition not in datasets:
            datasets[config.condition] = config.dataset()
        samples = [datasets[config.condition][i] for _, i in batch]
        records = study.measure(model, samples, config, **(measure_kwargs or {}))
        return [{"model": model_name, **_row(r)} for r in records]

    return Plan(manifest, units, measure)


def expected_by_condition(
    run_dir: Path, manifest: Mapping[str, Any]
) -> tuple[list[Hashable], Callable[[dict], Any]]:
    """The keys a complete `by_condition` run holds, and the merged log's order
    (condition in manifest order, index)."""
    conditions = manifest["conditions"]
    expected = [(name, i) for name, cfg in conditions.items() for i in range(cfg["n"])]
    order = {name: k for k, name in enumerate(conditions)}
    return expected, lambda r: (order.get(r["condition"], len(order)), r["index"])


@dataclass(frozen=True)
class Study:
    """What a study supplies to the harness (see the module docstring).

    Attributes:
        name: shown on the progress bar ("count", ...).
        config: the config dataclass.
        measure: `fn(model, batch, config, **kwargs) -> records`, one per unit in order.
        summarize: `fn(records) -> summaries`.
        report: dotted name of the report function, `"package.module:function"`, called
            as `fn(out_dir, **kwargs)` by `report` (a string: studies never import reports).
        plan: `fn(study, model, configs, *, model_name, note, shard, batch_size,
            measure_kwargs) -> Plan` (default `by_condition`).
        key: a record's key in the log (default (condition, index)).
        expected: `fn(run_dir, manifest) -> (keys, sort key)` for `merge`.
        log: the log's file name.
        check: keyword arguments of `check_manifest` (what a resume may not change).
    """

    name: str
    config: type
    measure: Callable[..., Sequence[Any]]
    summarize: Callable[[Sequence[dict]], Any]
    report: str | None = None
    plan: Callable[..., Plan] = by_condition
    key: Callable[[Mapping[str, Any]], Hashable] = condition_index
    expected: Callable[[Path, Mapping[str, Any]], tuple[list, Callable]] = expected_by_condition
    log: str = runlog.SAMPLES
    check: Mapping[str, Any] = field(default_factory=lambda: {"entries": ("conditions",)})


# ------------------------------------------------------------------------------- running


def run(
    study: Study,
    model: Any,
    configs: Any,
    run_dir: str | Path,
    *,
    model_name: str,
    shard: runlog.Shard | None = None,
    progress: bool = True,
    note: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 1,
    measure_kwargs: Mapping[str, Any] | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> Path:
    """Measure every unit of `study.plan(...)` not yet logged in `run_dir`, one JSON line
    per unit as it goes (`run_dir(out, model_name, ...)` gives the usual place).

    Units already in any log of the run are skipped (resume); `max_samples` stops after
    that many new units; `batch_size` units of one group go to `measure` at once (a stop
    loses at most the batch in flight); `on_record(row)` is called after each line is
    written. Everything the plan checks is checked before anything is written. Returns
    `run_dir`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Refused before run.json is written: a bad manifest would make later runs refuse the folder.
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be None or >= 0, got {max_samples}")
    plan = study.plan(
        study,
        model,
        configs,
        model_name=model_name,
        note=note,
        shard=shard,
        batch_size=batch_size,
        measure_kwargs=measure_kwargs,
    )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / (shard.log_name(study.log) if shard else study.log)
    with runlog.log_lock(log_path):  # a second run of this log fails at once
        check_manifest(run_dir / MANIFEST, plan.manifest, **study.check)
        if plan.setup is not None:
            plan.setup(run_dir)
        with runlog.SampleLog(log_path, study.key) as log:
            # Units in the run's other logs (an earlier unsharded or differently sharded
            # attempt) are done too: `merge` folds them in.
            for other in [run_dir / study.log, *runlog.shard_files(run_dir, study.log)]:
                if other != log_path:
                    log.done.update(study.key(r) for r in runlog.read_jsonl(other))
            todo = [
                u
                for u in plan.units
                if (shard is None or shard.owns(u.shard_index)) and not log.has(u.key)
            ]
            if max_samples is not None:
                todo = todo[:max_samples]
            _measure_all(study, model, plan, todo, log, batch_size, on_record, progress)
    return run_dir


def _measure_all(
    study: Study,
    model: Any,
    plan: Plan,
    todo: list[Unit],
    log: runlog.SampleLog,
    batch_size: int,
    on_record: Callable[[dict], None] | None,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), desc=study.name, disable=not progress, unit="record") as bar:
        for batch in batches(todo, batch_size, group=lambda unit: unit.group):
            for record in plan.measure(model, [u.payload for u in batch]):
                row = _row(record)
                log.append(row)
                if on_record is not None:
                    on_record(row)
            bar.update(len(batch))


# ------------------------------------------------------------------ merge, load, report


def merge(
    study: Study, out_dir: str | Path, *, remove_shards: bool = False
) -> dict[str, dict[str, Any]]:
    """Merge the shard logs of every run at or below `out_dir`; report completeness per run.

    Keyed by the run directory relative to `out_dir` ("." for `out_dir` itself). Each
    merged log holds every unit once, in `study.expected`'s order; `missing` lists the
    expected keys no log holds.
    """
    out_dir = Path(out_dir)
    results = {}
    for path in run_dirs(out_dir):
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        expected, sort_key = study.expected(path, manifest)
        with runlog.run_lock(path):
            results[str(path.relative_to(out_dir))] = runlog.merge(
                path,
                study.key,
                expected,
                sort_key=sort_key,
                log=study.log,
                remove_shards=remove_shards,
            )
    return results


def load_records(
    path: str | Path,
    *,
    key: Callable[[Mapping[str, Any]], Hashable] = condition_index,
    log: str = runlog.SAMPLES,
    shards: bool = False,
) -> list[dict]:
    """Records of a run directory (its `log`; with `shards`, its unmerged shard logs too) or
    of one log file, each `key` once (a warning says how many duplicates were dropped).
    A study binds its own `key` and `log` (`functools.partial`)."""
    path = Path(path)
    if not path.is_dir():
        return runlog.unique(runlog.read_jsonl(path), key, str(path))
    sources = [path / log] + (runlog.shard_files(path, log) if shards else [])
    rows = [
        row
        for source in sources
        for row in runlog.unique(runlog.read_jsonl(source), key, str(source))
    ]
    return runlog.unique(rows, key, str(path), copies_ok=True)


@contextlib.contextmanager
def holding(out_dir: str | Path) -> Iterator[list[Path]]:
    """Hold every run at or below `out_dir` (no run or merge of any meanwhile); yields them."""
    dirs = run_dirs(out_dir)
    with contextlib.ExitStack() as held:
        for path in dirs:
            held.enter_context(runlog.run_lock(path))
        yield dirs


def report(study: Study, out_dir: str | Path, **kwargs: Any) -> Any:
    """Call the study's report function on `out_dir` (the one way both studies report)."""
    if study.report is None:
        raise ValueError(f"the {study.name} study has no report")
    module, _, name = study.report.partition(":")
    return getattr(importlib.import_module(module), name)(out_dir, **kwargs)
