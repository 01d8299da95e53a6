"""Loaders for the paired yes/no benchmarks, reading their released layouts offline.

Each loader takes a local path (a file, or the folder a user downloaded) and returns
a list of `YesNoItem`s in file order. Layouts (see shared/benchmarks.md):

=============== ==============================================================
benchmark       layouts read
=============== ==============================================================
mme             HF `lmms-lab/MME` parquet; original `MME_Benchmark_release_version`
                folders (`<category>/{images,questions_answers_YN}` or flat
                `<category>/<name>.{png,jpg,txt}`)
pope            HF `lmms-lab/POPE` parquet; original JSONL `coco_pope_<category>.json`
                (`question_id, image, text, label`) + a COCO image folder
hallusionbench  original `HallusionBench.json` + image root; HF
                `lmms-lab/HallusionBench` parquet
naturalbench    HF `BaiqiL/NaturalBench` parquet (one row = 2 images x 2 questions)
winoground      HF parquet; original `examples.jsonl` + `images/` folder
sugarcrepe      `{subset}.json` files (key -> filename, caption, negative_caption)
                + a COCO val2017 image folder
beaf            `beaf_qna.json` + image folder(s)
=============== ==============================================================

Judgment calls, all overridable by keyword:

* HallusionBench items with `visual_input == 0` (questions asked with no image)
  are skipped by default, as in the HF `image` split: a yes-bias study of image
  attention needs an image. `include_text_only=True` keeps them with `images=[]`.
  Their question groups then lose the text-only instance, so qAcc is computed over
  the visual instances only.
* NaturalBench keeps `Question_Type == "yes_no"` rows only. Multiple-choice rows
  answer "A"/"B" between two options written into the question; turning them into
  yes/no prompts would change the question, so they are left out.
* Caption benchmarks use `caption_prompt`; MME keeps its own "Please answer yes or
  no." instruction (`make_prompt`).

`limit=N` keeps the first N pairing units in file order (never part of a unit).
Parquet image cells are read lazily, one row group at a time, when
`load_images()` is called; image files are only checked to exist. Every image is
decoded by `vlm_lens.data.images.load_image`, the one decoding path of the library.
A wrong layout raises FileNotFoundError / ValueError naming the benchmark and the
missing file, column or field.

Safety: annotation files come from the internet. Every image path taken from one (a
JSON/JSONL name, a parquet path cell, a folder listing) must resolve, symlinks
followed, inside the folder it is looked up in (the dataset folder, or `image_root`);
an absolute name, a `..` or a symlink out of it raises `OutsideRootError` naming the
annotation file, the record and the path. `allow_outside_root=True` (on every loader
and `load_benchmark`) turns the check off for images kept elsewhere on purpose.
Labels and flags are read strictly: yes/no, true/false or 1/0 in any case, anything
else is an error naming the file and record.

Each item records where it came from (`origin`: file and line / row / record) and
how many items its unit has in the file (`unit_size`), so metrics can tell a unit
that lost items from a complete one.

Not for: downloading anything (there is no hub access), or metrics
(`vlm_lens.metrics.yesno`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from vlm_lens.data.images import load_image
from vlm_lens.data.paths import confined
from vlm_lens.data.yesno.items import YesNoItem, caption_prompt, make_prompt

PathLike = str | os.PathLike
Roots = PathLike | Sequence[PathLike] | None

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = (
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)
SUGARCREPE_SUBSETS = (
    "add_att",
    "add_obj",
    "replace_att",
    "replace_obj",
    "replace_rel",
    "swap_att",
    "swap_obj",
)
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


# --------------------------------------------------------------------------- helpers


def _exists(path: PathLike, bench: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{bench}: {p} does not exist")
    return p


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix == ".parquet" else []
    # A HF snapshot keeps its split files under data/; other folders in the repo
    # (e.g. a second config) would otherwise be read twice.
    data = path / "data"
    if data.is_dir():
        found = sorted(data.rglob("*.parquet"))
        if found:
            return found
    return sorted(path.rglob("*.parquet"))


@functools.lru_cache(maxsize=4)
def _row_group_column(file: str, row_group: int, column: str) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file).read_row_group(row_group, columns=[column]).column(0)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid / ArrowIOError
        raise ValueError(
            f"cannot read column {column!r} of row group {row_group} of {file} "
            f"({type(err).__name__}: {err})"
        ) from err


class ParquetImage:
    """Lazy reference to one image cell of a parquet file.

    Calling it reads the cell's row group (kept in a small cache, so iterating in
    file order reads each row group once) and decodes the image with `load_image`.
    HF image cells are `{"bytes": ..., "path": ...}` structs; when `bytes` is empty the
    path is taken relative to the parquet file's folder and must stay inside `root`
    (the dataset folder) unless `allow_outside_root`.
    """

    __slots__ = ("file", "row_group", "row", "column", "bench", "root", "allow_outside_root")

    def __init__(
        self,
        file: str,
        row_group: int,
        row: int,
        column: str,
        bench: str = "parquet",
        root: PathLike | None = None,
        allow_outside_root: bool = False,
    ):
        self.file, self.row_group, self.row, self.column = file, row_group, row, column
        self.bench = bench
        self.root = Path(root) if root is not None else Path(file).parent
        self.allow_outside_root = allow_outside_root

    @property
    def where(self) -> str:
        return f"column {self.column!r}, row group {self.row_group}, row {self.row} of {self.file}"

    def __call__(self) -> Image.Image:
        cell = _row_group_column(self.file, self.row_group, self.column)[self.row].as_py()
        label = f"{self.bench} image cell in {self.where}"
        if isinstance(cell, dict):
            data, name = cell.get("bytes"), cell.get("path")
            if data:
                cell = data
            elif name:
                path = confined(
                    Path(self.file).parent / str(name),
                    self.root,
                    self.bench,
                    self.where,
                    self.allow_outside_root,
                )
                return load_image(path, source=f"{path} ({label})")
            else:
                raise ValueError(f"{self.bench}: image cell in {self.where} is empty")
        if isinstance(cell, (bytes, bytearray)):
            return load_image(cell, source=label)
        raise ValueError(
            f"{self.bench}: cannot decode an image cell of type {type(cell).__name__} "
            f"in {self.where}"
        )

    def __repr__(self) -> str:
        return f"ParquetImage({self.file!r}, rg={self.row_group}, row={self.row}, {self.column!r})"


def _iter_parquet(
    files: Sequence[Path],
    bench: str,
    required: Sequence[str],
    image_cols: Sequence[str],
    root: Path,
    allow_outside_root: bool,
) -> Iterator[tuple[dict[str, Any], dict[str, ParquetImage], str]]:
    """Rows (without image columns), lazy refs to their images, and where each row is."""
    import pyarrow.parquet as pq

    for f in files:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        for col in required:
            if col not in names:
                raise ValueError(f"{bench}: column {col!r} missing in {f} (found: {names})")
        present_images = [c for c in image_cols if c in names]
        meta_cols = [c for c in names if c not in present_images]
        for rg in range(pf.num_row_groups):
            try:
                rows = pf.read_row_group(rg, columns=meta_cols).to_pylist()
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"{bench}: cannot read row group {rg} of {f} ({type(err).__name__}: {err})"
                ) from err
            for r, row in enumerate(rows):
                refs = {
                    c: ParquetImage(str(f), rg, r, c, bench, root, allow_outside_root)
                    for c in present_images
                }
                yield row, refs, f"row group {rg}, row {r} of {f}"


def _require(record: Any, fields: Iterable[str], bench: str, where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{bench}: {where} should be a JSON object, got {type(record).__name__}")
    for key in fields:
        if key not in record:
            raise ValueError(f"{bench}: field {key!r} missing in {where} (found: {sorted(record)})")


def _read_json(path: Path, bench: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{bench}: {path} is not valid JSON ({e})") from e


def _read_jsonl(path: Path, bench: str) -> list[tuple[int, Any]]:
    """(line number, record) of JSON lines; a file holding one JSON list is accepted too
    (then the number is the record's position, from 1)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as e:
            raise ValueError(f"{bench}: {path} is not valid JSON ({e})") from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{bench}: line {n} of {path} is not valid JSON ({e})") from e
    return out


_TRUE = ("yes", "true", "1")
_FALSE = ("no", "false", "0")


def _boolean(value: Any, what: str, bench: str, where: str) -> bool:
    """A yes/no field read strictly: bools, 0/1, and "yes"/"no"/"true"/"false"/"1"/"0"
    in any case. Anything else is an error: `bool("False")` is True, and a label read
    that way silently flips."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        s = value.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise ValueError(
        f"{bench}: {what} {value!r} in {where} is not a yes/no value "
        "(expected yes/no, true/false or 1/0)"
    )


def _label(value: Any, bench: str, where: str) -> bool:
    return _boolean(value, "answer", bench, where)


def _roots(image_root: Roots, defaults: Sequence[Path]) -> list[Path]:
    if image_root is None:
        return [p for p in defaults if p.is_dir()]
    if isinstance(image_root, (str, os.PathLike)):
        return [Path(image_root)]
    return [Path(p) for p in image_root]


def _find_image(
    name: str, roots: Sequence[Path], bench: str, where: str, allow_outside_root: bool
) -> Path | None:
    """The first existing `root / name` (extension optional), each confined to its root."""
    for root in roots:
        p = confined(root / name, root, bench, where, allow_outside_root)
        if p.is_file():
            return p
        if not Path(name).suffix:
            for ext in _IMAGE_EXTS:
                q = confined(p.with_name(p.name + ext), root, bench, where, allow_outside_root)
                if q.is_file():
                    return q
    return None


def _resolve_images(
    items: list[YesNoItem], roots: Sequence[Path], bench: str, allow_outside_root: bool
) -> None:
    """Replace image names by existing paths, or fail naming the first missing one."""
    cache: dict[str, Path | None] = {}
    missing: list[str] = []
    for item in items:
        resolved = []
        for src in item.images:
            if not isinstance(src, str):
                resolved.append(src)
                continue
            if src not in cache:
                cache[src] = _find_image(src, roots, bench, item.origin, allow_outside_root)
            if cache[src] is None:
                missing.append(src)
            else:
                resolved.append(str(cache[src]))
        item.images = resolved
    if missing:
        where = ", ".join(str(r) for r in roots) or "(no image folder found)"
        raise FileNotFoundError(
            f"{bench}: image {missing[0]!r} not found under {where} "
            f"({len(set(missing))} missing); pass image_root= to point at the image folder"
        )


def _finalize(
    items: list[YesNoItem],
    limit: int | None,
    bench: str,
    resolve: Callable[[list[YesNoItem]], None] | None = None,
) -> list[YesNoItem]:
    seen: set[str] = set()
    sizes: dict[str, int] = {}
    for item in items:
        if item.item_id in seen:
            raise ValueError(
                f"{bench}: duplicate item id {item.item_id!r}; point the loader at one "
                "split (a single file or folder), not a folder holding several"
            )
        seen.add(item.item_id)
        sizes[item.unit_id] = sizes.get(item.unit_id, 0) + 1
    for item in items:
        item.unit_size = sizes[item.unit_id]
    if limit is not None:
        if limit < 0:
            raise ValueError(f"{bench}: limit must be >= 0, got {limit}")
        keep: dict[str, None] = {}
        for item in items:
            if item.unit_id not in keep:
                if len(keep) == limit:
                    continue
                keep[item.unit_id] = None
        items = [it for it in items if it.unit_id in keep]
    if not items and limit != 0:
        raise ValueError(f"{bench}: no items found")
    if resolve is not None:
        resolve(items)
    return items


def _stem(name: Any) -> str:
    s = str(name)
    base = os.path.basename(s)
    root, ext = os.path.splitext(base)
    return root if ext.lower() in _IMAGE_EXTS else base


# ------------------------------------------------------------------------------- MME


def _mme_category_dirs(path: Path) -> dict[str, Path]:
    wanted = {c.lower(): c for c in MME_PERCEPTION + MME_COGNITION}
    found = {}
    for p in sorted(path.iterdir()) if path.is_dir() else []:
        if p.is_dir() and p.name.lower() in wanted:
            found[wanted[p.name.lower()]] = p
    return found


def _mme_folder_items(
    root: Path, cats: dict[str, Path], allow_outside_root: bool
) -> list[YesNoItem]:
    items = []
    for category, cdir in cats.items():
        if (cdir / "questions_answers_YN").is_dir():
            qa_dir, img_dir = cdir / "questions_answers_YN", cdir / "images"
        else:
            qa_dir, img_dir = cdir, cdir
        for txt in sorted(qa_dir.glob("*.txt")):
            # Listed files may be symlinks out of the download: confine them like names.
            confined(txt, root, "MME", f"the listing of {qa_dir}", allow_outside_root)
            image = _find_image(txt.stem, [img_dir], "MME", f"the listing of {img_dir}", True)
            if image is None:
                raise FileNotFoundError(f"MME: no image for {txt} in {img_dir}")
            confined(image, root, "MME", f"the listing of {img_dir}", allow_outside_root)
            unit = f"{category}/{image.name}"
            k = 0
            for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                where = f"line {n} of {txt}"
                if "\t" not in line:
                    raise ValueError(f"MME: {where} is not 'question<TAB>answer'")
                question, answer = line.rsplit("\t", 1)
                items.append(
                    YesNoItem(
                        benchmark="mme",
                        item_id=f"{unit}#{k}",
                        unit_id=unit,
                        images=[str(image)],
                        question=question.strip(),
                        prompt=make_prompt(question),
                        label=_label(answer, "MME", where),
                        meta={"category": category, "question_index": k, "image": image.name},
                        origin=where,
                    )
                )
                k += 1
    return items


def load_mme(
    path: PathLike, limit: int | None = None, *, allow_outside_root: bool = False
) -> list[YesNoItem]:
    """MME: one item per question; unit = the image (two questions, one yes one no)."""
    p = _exists(path, "MME")
    root = p if p.is_dir() else p.parent
    files = _parquet_files(p)
    if not files:
        cats = _mme_category_dirs(p)
        if not cats:
            raise FileNotFoundError(
                f"MME: no .parquet files and no category folders "
                f"({', '.join(MME_PERCEPTION + MME_COGNITION)}) under {p}"
            )
        return _finalize(_mme_folder_items(p, cats, allow_outside_root), limit, "MME")

    items = []
    counts: dict[str, int] = {}
    required = ("question_id", "image", "question", "answer", "category")
    rows = _iter_parquet(files, "MME", required, ["image"], root, allow_outside_root)
    for row, refs, where in rows:
        category, qid = str(row["category"]), str(row["question_id"])
        # lmms-lab ids already start with the category ("code_reasoning/0020.png").
        unit = qid if qid.startswith(category + "/") else f"{category}/{qid}"
        k = counts.get(unit, 0)
        counts[unit] = k + 1
        items.append(
            YesNoItem(
                benchmark="mme",
                item_id=f"{unit}#{k}",
                unit_id=unit,
                images=[refs["image"]],
                question=str(row["question"]),
                prompt=make_prompt(str(row["question"])),
                label=_label(row["answer"], "MME", f"{where} (question_id {qid})"),
                meta={"category": category, "question_index": k, "question_id": qid},
                origin=where,
            )
        )
    return _finalize(items, limit, "MME")


# ------------------------------------------------------------------------------ POPE


def _pope_category(file: Path) -> str:
    for cat in ("adversarial", "popular", "random"):
        if cat in file.stem.lower():
            return cat
    return file.stem


def load_pope(
    path: PathLike,
    limit: int | None = None,
    image_root: Roots = None,
    *,
    allow_outside_root: bool = False,
) -> list[YesNoItem]:
    """POPE: unit = (category, image), six questions (three yes, three no).

    Reads the HF parquet, or the original JSONL files (`coco_pope_random.json`, ...;
    a folder of them or one file) with images under `image_root` (default: the
    folder's `val2014/` or `images/`, else the folder itself).
    """
    p = _exists(path, "POPE")
    base = p.parent if p.is_file() else p
    files = _parquet_files(p)
    items = []
    if files:
        required = ("question_id", "question", "answer", "image_source", "image", "category")
        for row, refs, where in _iter_parquet(
            files, "POPE", required, ["image"], base, allow_outside_root
        ):
            cat, qid = str(row["category"]), str(row["question_id"])
            source = _stem(row["image_source"])
            items.append(
                YesNoItem(
                    benchmark="pope",
                    item_id=f"{cat}/{qid}",
                    unit_id=f"{cat}/{source}",
                    images=[refs["image"]],
                    question=str(row["question"]),
                    prompt=make_prompt(str(row["question"])),
                    label=_label(row["answer"], "POPE", f"{where} (question_id {qid})"),
                    meta={"category": cat, "image": source, "question_id": qid},
                    origin=where,
                )
            )
        return _finalize(items, limit, "POPE")

    if p.is_file():
        jfiles = [p]
    else:
        jfiles = sorted(f for f in p.iterdir() if f.suffix in (".json", ".jsonl"))
        if not jfiles:
            raise FileNotFoundError(f"POPE: no .parquet, .json or .jsonl files in {p}")
    for jf in jfiles:
        cat = _pope_category(jf)
        for n, rec in _read_jsonl(jf, "POPE"):
            where = f"line {n} of {jf}"
            _require(rec, ("question_id", "image", "text", "label"), "POPE", where)
            qid = str(rec["question_id"])
            items.append(
                YesNoItem(
                    benchmark="pope",
                    item_id=f"{cat}/{qid}",
                    unit_id=f"{cat}/{_stem(rec['image'])}",
                    images=[str(rec["image"])],
                    question=str(rec["text"]),
                    prompt=make_prompt(str(rec["text"])),
                    label=_label(rec["label"], "POPE", where),
                    meta={"category": cat, "image": _stem(rec["image"]), "question_id": qid},
                    origin=where,
                )
            )
    roots = _roots(image_root, [base / "val2014", base / "images", base])
    return _finalize(
        items,
        limit,
        "POPE",
        lambda its: _resolve_images(its, roots, "POPE", allow_outside_root),
    )


# -------------------------------------------------------------------- HallusionBench

_HB_FIELDS = (
    "category",
    "subcategory",
    "visual_input",
    "set_id",
    "figure_id",
    "question_id",
    "question",
    "gt_answer",
)


def _hb_item(rec: dict[str, Any], images: list[Any], where: str) -> YesNoItem:
    cat, sub = str(rec["category"]), str(rec["subcategory"])
    set_id, fig, qid = str(rec["set_id"]), str(rec["figure_id"]), str(rec["question_id"])
    # Subcategory names repeat across VD and VS, so every key starts with the category.
    qkey = f"{cat}/{sub}/{set_id}/{qid}"
    # VS figure 0 is the no-image instance: it is not a figure (official fAcc skips it).
    fkey = None if (cat == "VS" and fig == "0") else f"{cat}/{sub}/{set_id}/{fig}"
    return YesNoItem(
        benchmark="hallusionbench",
        item_id=f"{cat}/{sub}/{set_id}/{fig}/{qid}",
        unit_id=qkey,
        images=images,
        question=str(rec["question"]),
        prompt=make_prompt(str(rec["question"])),
        label=_label(rec["gt_answer"], "HallusionBench", where),
        meta={
            "category": cat,
            "subcategory": sub,
            "set_id": set_id,
            "figure_id": fig,
            "question_id": qid,
            "visual_input": str(rec["visual_input"]),
            "question_key": qkey,
            "figure_key": fkey,
        },
        origin=where,
    )


def _hb_image_names(rec: dict[str, Any]) -> list[str]:
    """Where an item's figure may sit relative to the image root, best guess first."""
    names = []
    fn = rec.get("filename")
    if fn:
        rel = str(fn).replace("\\", "/")
        rel = rel[2:] if rel.startswith("./") else rel
        names.append(rel)
        if rel.startswith("hallusion_bench/"):
            names.append(rel[len("hallusion_bench/") :])
    # The official layout: <root>/<category>/<subcategory>/<set_id>_<figure_id>.png
    names.append(f"{rec['category']}/{rec['subcategory']}/{rec['set_id']}_{rec['figure_id']}.png")
    return names


def _hb_figure_sizes(items: list[YesNoItem]) -> None:
    """`meta["figure_size"]`: how many loaded questions each figure has (fAcc needs all)."""
    sizes: dict[str, int] = {}
    for it in items:
        if it.meta["figure_key"] is not None:
            sizes[it.meta["figure_key"]] = sizes.get(it.meta["figure_key"], 0) + 1
    for it in items:
        it.meta["figure_size"] = sizes.get(it.meta["figure_key"])


def load_hallusionbench(
    path: PathLike,
    limit: int | None = None,
    image_root: Roots = None,
    include_text_only: bool = False,
    *,
    allow_outside_root: bool = False,
) -> list[YesNoItem]:
    """HallusionBench: unit = question group (category, subcategory, set_id, question_id).

    `meta["figure_key"]` is the figure (category, subcategory, set_id, figure_id),
    None for VS figure 0. Items with no image are skipped unless
    `include_text_only=True` (see the module docstring).
    """
    p = _exists(path, "HallusionBench")
    files = _parquet_files(p)
    items = []
    if files:
        root = p if p.is_dir() else p.parent
        rows = _iter_parquet(
            files, "HallusionBench", _HB_FIELDS, ["image"], root, allow_outside_root
        )
        for row, refs, where in rows:
            visual = str(row["visual_input"]) != "0"
            if not visual and not include_text_only:
                continue
            if visual and "image" not in refs:
                raise ValueError(
                    f"HallusionBench: column 'image' missing in {where} (found: {sorted(row)})"
                )
            items.append(_hb_item(row, [refs["image"]] if visual else [], where))
        _hb_figure_sizes(items)
        return _finalize(items, limit, "HallusionBench")

    jpath = p if p.is_file() else p / "HallusionBench.json"
    if not jpath.is_file():
        raise FileNotFoundError(f"HallusionBench: {jpath} not found")
    data = _read_json(jpath, "HallusionBench")
    if not isinstance(data, list):
        raise ValueError(f"HallusionBench: {jpath} should hold a JSON list of questions")
    roots = _roots(image_root, [jpath.parent])
    for n, rec in enumerate(data):
        where = f"entry {n} of {jpath}"
        _require(rec, _HB_FIELDS, "HallusionBench", where)
        visual = str(rec["visual_input"]) != "0"
        if not visual and not include_text_only:
            continue
        if visual:
            _require(rec, ("filename",), "HallusionBench", where)
        # The record stands in for its image until `limit` has been applied, so only
        # kept items' figures are looked up on disk.
        items.append(_hb_item(rec, [rec] if visual else [], where))
    _hb_figure_sizes(items)

    def resolve(its: list[YesNoItem]) -> None:
        for it in its:
            if it.images:
                rec = it.images[0]
                names = _hb_image_names(rec)
                found = None
                for name in names:
                    found = _find_image(
                        name, roots, "HallusionBench", it.origin, allow_outside_root
                    )
                    if found is not None:
                        break
                if found is None:
                    where = ", ".join(str(r) for r in roots)
                    raise FileNotFoundError(
                        f"HallusionBench: image {names[0]!r} not found under {where}; "
                        "pass image_root= (the folder holding hallusion_bench/)"
                    )
                it.images = [str(found)]

    return _finalize(items, limit, "HallusionBench", resolve)


# ---------------------------------------------------------------------- NaturalBench

_NB_ANSWERS = {
    (0, 0): "Image_0_Question_0",
    (0, 1): "Image_1_Question_0",
    (1, 0): "Image_0_Question_1",
    (1, 1): "Image_1_Question_1",
}


def load_naturalbench(
    path: PathLike, limit: int | None = None, *, allow_outside_root: bool = False
) -> list[YesNoItem]:
    """NaturalBench: one row (Index) = 2 images x 2 questions -> 4 items, unit = Index.

    Yes/no rows only (see the module docstring). Labels come from each row's four
    answer fields, not from the usual Yes/No/No/Yes pattern.
    """
    p = _exists(path, "NaturalBench")
    files = _parquet_files(p)
    if not files:
        raise FileNotFoundError(f"NaturalBench: no .parquet files under {p}")
    required = ("Index", "Image_0", "Image_1", "Question_0", "Question_1", "Question_Type")
    required += tuple(_NB_ANSWERS.values())
    root = p if p.is_dir() else p.parent
    items = []
    rows = _iter_parquet(
        files, "NaturalBench", required, ["Image_0", "Image_1"], root, allow_outside_root
    )
    for row, refs, where in rows:
        if str(row["Question_Type"]).strip().lower() != "yes_no":
            continue
        index = str(row["Index"])
        for q in (0, 1):
            question = str(row[f"Question_{q}"])
            for i in (0, 1):
                field = _NB_ANSWERS[(q, i)]
                items.append(
                    YesNoItem(
                        benchmark="naturalbench",
                        item_id=f"{index}/q{q}_i{i}",
                        unit_id=index,
                        images=[refs[f"Image_{i}"]],
                        question=question,
                        prompt=make_prompt(question),
                        label=_label(
                            row[field], "NaturalBench", f"{field} of {where} (Index {index})"
                        ),
                        meta={
                            "question_index": q,
                            "image_index": i,
                            "source": row.get("Source"),
                        },
                        origin=where,
                    )
                )
    return _finalize(items, limit, "NaturalBench")


# ------------------------------------------------------------------------ Winoground


def _wino_items(rec: dict[str, Any], images: Sequence[Any], where: str) -> list[YesNoItem]:
    ex = str(rec["id"])
    out = []
    for i in (0, 1):
        for c in (0, 1):
            caption = str(rec[f"caption_{c}"])
            out.append(
                YesNoItem(
                    benchmark="winoground",
                    item_id=f"{ex}/i{i}_c{c}",
                    unit_id=ex,
                    images=[images[i]],
                    question=caption,
                    prompt=caption_prompt(caption),
                    label=i == c,
                    meta={
                        "image_index": i,
                        "caption_index": c,
                        "tag": rec.get("tag"),
                        "secondary_tag": rec.get("secondary_tag"),
                        "collapsed_tag": rec.get("collapsed_tag"),
                    },
                    origin=where,
                )
            )
    return out


def load_winoground(
    path: PathLike,
    limit: int | None = None,
    image_root: Roots = None,
    *,
    allow_outside_root: bool = False,
) -> list[YesNoItem]:
    """Winoground: each example -> 4 caption prompts (i, c), yes iff i == c; unit = id.

    Reads the HF parquet, or `examples.jsonl` (in the folder or its `data/`) with
    images named by `image_0`/`image_1` (extension optional) under `image_root`
    (default: `images/` beside the jsonl).
    """
    p = _exists(path, "Winoground")
    fields = ("id", "image_0", "image_1", "caption_0", "caption_1")
    files = _parquet_files(p)
    items: list[YesNoItem] = []
    if files:
        root = p if p.is_dir() else p.parent
        rows = _iter_parquet(
            files, "Winoground", fields, ["image_0", "image_1"], root, allow_outside_root
        )
        for row, refs, where in rows:
            items += _wino_items(row, [refs["image_0"], refs["image_1"]], where)
        return _finalize(items, limit, "Winoground")

    if p.is_file():
        jpath = p
    else:
        jpath = next(
            (c for c in (p / "examples.jsonl", p / "data" / "examples.jsonl") if c.is_file()),
            p / "examples.jsonl",
        )
    if not jpath.is_file():
        raise FileNotFoundError(f"Winoground: no .parquet files and no {jpath}")
    for n, rec in _read_jsonl(jpath, "Winoground"):
        where = f"line {n} of {jpath}"
        _require(rec, fields, "Winoground", where)
        items += _wino_items(rec, [str(rec["image_0"]), str(rec["image_1"])], where)
    roots = _roots(image_root, [jpath.parent / "images", jpath.parent])
    return _finalize(
        items,
        limit,
        "Winoground",
        lambda its: _resolve_images(its, roots, "Winoground", allow_outside_root),
    )


# ------------------------------------------------------------------------ SugarCrepe


def load_sugarcrepe(
    path: PathLike,
    limit: int | None = None,
    image_root: Roots = None,
    subsets: Sequence[str] | None = None,
    *,
    allow_outside_root: bool = False,
) -> list[YesNoItem]:
    """SugarCrepe: each (subset, key) pair -> positive caption (yes) + hard negative (no).

    `path` is a folder of `{subset}.json` files (or its parent holding `data/`), or
    one such file. Images (COCO val2017 file names) are looked up under
    `image_root` (default: `val2017/` or `images/` beside the files or their parent).
    """
    p = _exists(path, "SugarCrepe")
    if p.is_file():
        jfiles = {p.stem: p}
    else:
        folder = p / "data" if (p / "data").is_dir() else p
        names = subsets if subsets is not None else SUGARCREPE_SUBSETS
        jfiles = {s: folder / f"{s}.json" for s in names if (folder / f"{s}.json").is_file()}
        if subsets is not None and len(jfiles) < len(subsets):
            missing = [s for s in subsets if s not in jfiles]
            raise FileNotFoundError(f"SugarCrepe: {folder}/{missing[0]}.json not found")
        if not jfiles:
            raise FileNotFoundError(
                f"SugarCrepe: none of {', '.join(s + '.json' for s in SUGARCREPE_SUBSETS)} "
                f"in {folder}"
            )
    items = []
    for subset, jf in jfiles.items():
        data = _read_json(jf, "SugarCrepe")
        if not isinstance(data, dict):
            raise ValueError(f"SugarCrepe: {jf} should map keys to {{filename, caption, ...}}")
        for key, rec in data.items():
            where = f"key {key} of {jf}"
            _require(rec, ("filename", "caption", "negative_caption"), "SugarCrepe", where)
            unit = f"{subset}/{key}"
            for polarity, field, label in (
                ("positive", "caption", True),
                ("negative", "negative_caption", False),
            ):
                caption = str(rec[field])
                items.append(
                    YesNoItem(
                        benchmark="sugarcrepe",
                        item_id=f"{unit}/{polarity}",
                        unit_id=unit,
                        images=[str(rec["filename"])],
                        question=caption,
                        prompt=caption_prompt(caption),
                        label=label,
                        meta={"subset": subset, "key": str(key), "polarity": polarity},
                        origin=where,
                    )
                )
    base = next(iter(jfiles.values())).parent
    defaults = [base / "val2017", base / "images", base.parent / "val2017"]
    roots = _roots(image_root, defaults + [base.parent / "images", base])
    return _finalize(
        items,
        limit,
        "SugarCrepe",
        lambda its: _resolve_images(its, roots, "SugarCrepe", allow_outside_root),
    )


# ------------------------------------------------------------------------------ BEAF


def beaf_original_name(image: str) -> str:
    """The original image of an edited BEAF image: `<orig>_NN.png` -> `<orig>.jpg`."""
    return image[:-7] + ".jpg"


def load_beaf(
    path: PathLike,
    limit: int | None = None,
    image_root: Roots = None,
    *,
    allow_outside_root: bool = False,
) -> list[YesNoItem]:
    """BEAF: unit = (original image, question): the question on the original image and
    on each of its edited versions.

    `path` is `beaf_qna.json` or its folder; images are looked up under
    `image_root` (one folder or several; default: `images/` beside the json, then
    the folder itself). `gt`, `orig_img` and `removed_q` are read strictly (a string
    "False" is false, not true).
    """
    p = _exists(path, "BEAF")
    jpath = p if p.is_file() else p / "beaf_qna.json"
    if not jpath.is_file():
        raise FileNotFoundError(f"BEAF: {jpath} not found")
    data = _read_json(jpath, "BEAF")
    if not isinstance(data, list):
        raise ValueError(f"BEAF: {jpath} should hold a JSON list of questions")
    items = []
    for n, rec in enumerate(data):
        where = f"entry {n} of {jpath}"
        _require(rec, ("id", "image", "question", "orig_img", "removed_q", "gt"), "BEAF", where)
        image = str(rec["image"])
        orig = _boolean(rec["orig_img"], "orig_img", "BEAF", where)
        orig_name = image if orig else beaf_original_name(image)
        question = str(rec["question"])
        items.append(
            YesNoItem(
                benchmark="beaf",
                item_id=str(rec["id"]),
                unit_id=f"{orig_name}/{question}",
                images=[image],
                question=question,
                prompt=make_prompt(question),
                label=_label(rec["gt"], "BEAF", where),
                meta={
                    "image": image,
                    "orig_image": orig_name,
                    "orig_img": orig,
                    "removed_q": _boolean(rec["removed_q"], "removed_q", "BEAF", where),
                },
                origin=where,
            )
        )
    roots = _roots(image_root, [jpath.parent / "images", jpath.parent])
    return _finalize(
        items, limit, "BEAF", lambda its: _resolve_images(its, roots, "BEAF", allow_outside_root)
    )


# -------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[..., list[YesNoItem]]] = {
    "mme": load_mme,
    "pope": load_pope,
    "hallusionbench": load_hallusionbench,
    "naturalbench": load_naturalbench,
    "winoground": load_winoground,
    "sugarcrepe": load_sugarcrepe,
    "beaf": load_beaf,
}


def canonical_name(name: str) -> str:
    """Registry key for a benchmark name: "HallusionBench", "sugar-crepe" -> ... ."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def load_benchmark(
    name: str,
    path: PathLike,
    limit: int | None = None,
    *,
    allow_outside_root: bool = False,
    **kwargs: Any,
) -> list[YesNoItem]:
    """Load benchmark `name` from local `path`; extra keywords go to its loader.

    `allow_outside_root=True` lets image paths from the annotation files lead outside
    the dataset folder (refused by default: those files come from the internet).
    """
    key = canonical_name(name)
    if key not in LOADERS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(LOADERS)}")
    return LOADERS[key](path, limit=limit, allow_outside_root=allow_outside_root, **kwargs)
