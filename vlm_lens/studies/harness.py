"""One shape for every study over a generated dataset: config in, one JSON line per sample out.

A study supplies a `Study`: its frozen config dataclass (with `condition`, `n`,
`dataset()` and `to_dict()`), ``measure(model, samples, config, **kwargs) -> records``
(dataclasses or dicts; a dataclass is written as its fields in order),
``summarize(records)`` and the dotted name of its report function. The harness owns
the rest, the same for every study::

    <out>/<model slug>/run.json                       the manifest (`check_manifest`)
    <out>/<model slug>/samples.jsonl                  one line per (condition, index)
    <out>/<model slug>/samples.shard-K-of-N.jsonl     a shard's log; `merge` joins them

- resume: samples already in the log are skipped, so calling `run` again continues;
- sharding: a `runlog.Shard` takes the indices `i % N == K`;
- locking: one process per log (`runlog.log_lock`), merge under `runlog.run_lock`;
- batching: `batches`, consecutive units of one group;
- a resume with settings that change what the records mean is refused (`check_manifest`).

Not for: what a study measures or how it reports (its own module), the yes-bias study's
item x condition sweep (it uses `batches` and `check_manifest` only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from vlm_lens.studies import runlog

__all__ = ["MANIFEST", "Study", "batches", "check_manifest", "merge", "model_slug", "run"]

MANIFEST = "run.json"
T = TypeVar("T")


def model_slug(name: str) -> str:
    """A directory name for a model id or path (`Qwen/Qwen3-VL-2B` -> `Qwen__Qwen3-VL-2B`)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).replace("/", "__")).strip("._")
    return slug or "model"


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
        for key in entries:
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


def _key(row: Mapping[str, Any]) -> tuple[str, int]:
    return (row["condition"], int(row["index"]))


def _row(record: Any) -> dict[str, Any]:
    return asdict(record) if is_dataclass(record) else dict(record)


@dataclass(frozen=True)
class Study:
    """What a study supplies to the harness (see the module docstring).

    Attributes:
        name: shown on the progress bar ("count", ...).
        config: the config dataclass (instances have `condition`, `n`, `dataset()`,
            `to_dict()`).
        measure: `fn(model, samples, config, **kwargs) -> records`, one per sample in order.
        summarize: `fn(records) -> summaries`.
        report: dotted name of the report function (`"package.module:function"`).
    """

    name: str
    config: type
    measure: Callable[..., Sequence[Any]]
    summarize: Callable[[Sequence[dict]], Any]
    report: str | None = None


def run(
    study: Study,
    model: Any,
    configs: Any,
    out_dir: str | Path,
    *,
    model_name: str,
    shard: runlog.Shard | None = None,
    progress: bool = True,
    note: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 1,
    measure_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Run every condition of `configs` on `model`, one JSON line per sample as it goes.

    Samples already in the log are skipped (resume); `max_samples` stops after that many
    new samples; `batch_size` samples of a condition go to `measure` at once (a stop
    loses at most the batch in flight). Returns the model's directory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from tqdm.auto import tqdm

    configs = [configs] if isinstance(configs, study.config) else list(configs)
    # Refused before run.json is written: a bad manifest would make later runs refuse the folder.
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be None or >= 0, got {max_samples}")
    for c in configs:
        if c.n < 1 or getattr(c, "max_new_tokens", 1) < 1:
            raise ValueError(
                f"condition {c.condition!r}: n and max_new_tokens must be >= 1, got "
                f"n={c.n}, max_new_tokens={getattr(c, 'max_new_tokens', None)}"
            )
    names = [c.condition for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"conditions must have distinct names, got {names}")
    model_dir = Path(out_dir) / model_slug(model_name)
    model_dir.mkdir(parents=True, exist_ok=True)
    log_path = model_dir / (shard.filename if shard else runlog.SAMPLES)
    manifest = {
        "model": model_name,
        "arch": model.cfg.arch,
        "n_layers": model.cfg.n_layers,
        "conditions": {c.condition: c.to_dict() for c in configs},
        **({"note": note} if note else {}),
    }
    with runlog.log_lock(log_path):  # a second run of this log fails at once
        check_manifest(model_dir / MANIFEST, manifest, entries=("conditions",))
        with runlog.SampleLog(log_path, _key) as log:
            todo = [
                (c, i)
                for c in configs
                for i in range(c.n)
                if (shard is None or shard.owns(i)) and not log.has((c.condition, i))
            ]
            if max_samples is not None:
                todo = todo[:max_samples]
            datasets: dict[str, list[Any]] = {}
            bar = tqdm(
                total=len(todo),
                desc=f"{study.name} {model_name}",
                disable=not progress,
                unit="sample",
            )
            for batch in batches(todo, batch_size, group=lambda unit: unit[0].condition):
                config = batch[0][0]
                if config.condition not in datasets:
                    datasets[config.condition] = config.dataset()
                samples = [datasets[config.condition][i] for _, i in batch]
                for record in study.measure(model, samples, config, **(measure_kwargs or {})):
                    log.append({"model": model_name, **_row(record)})
                bar.update(len(batch))
            bar.close()
    return model_dir


def merge(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Merge the shard logs of every model under `out_dir`; report completeness per model.

    The merged `samples.jsonl` is sorted by (condition in manifest order, index) and holds
    each sample once.
    """
    results = {}
    for manifest_path in sorted(Path(out_dir).glob(f"*/{MANIFEST}")):
        model_dir = manifest_path.parent
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected = [
            (name, i) for name, cfg in manifest["conditions"].items() for i in range(cfg["n"])
        ]
        order = {name: k for k, name in enumerate(manifest["conditions"])}
        with runlog.run_lock(model_dir):
            results[manifest.get("model", model_dir.name)] = runlog.merge(
                model_dir,
                _key,
                expected,
                sort_key=lambda r, order=order: (order.get(r["condition"], len(order)), r["index"]),
            )
    return results


def load(path: str | Path) -> list[dict]:
    """Records of a model directory (its `samples.jsonl`) or of a `samples*.jsonl` file,
    each (condition, index) once (a warning says how many duplicates were dropped)."""
    path = Path(path)
    path = path / runlog.SAMPLES if path.is_dir() else path
    return runlog.unique(runlog.read_jsonl(path), _key, str(path))
