"""Loaders of the paired yes/no benchmarks, on tiny fixtures written in the real layouts."""

from __future__ import annotations

import inspect
import io
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlm_lens.data.yesno import (
    LOADERS,
    OutsideRootError,
    caption_prompt,
    load_beaf,
    load_benchmark,
    load_hallusionbench,
    load_mme,
    load_naturalbench,
    load_pope,
    load_sugarcrepe,
    load_winoground,
    make_prompt,
)

# ------------------------------------------------------------------------ helpers


def png_bytes(color=(255, 0, 0), size=(6, 4), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, color=(0, 0, 255), size=(5, 5)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def cell(color=(255, 0, 0), name="x.png") -> dict:
    return {"bytes": png_bytes(color), "path": name}


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def units(items) -> list[str]:
    return list(dict.fromkeys(it.unit_id for it in items))


# ---------------------------------------------------------------------------- MME

MME_SUFFIX = " Please answer yes or no."


def mme_rows() -> list[dict]:
    rows = []
    for k, (cat, name) in enumerate(
        [
            ("existence", "000000006040.jpg"),
            ("existence", "000000006471.jpg"),
            ("OCR", "0001.jpg"),
            ("code_reasoning", "0020.png"),
        ]
    ):
        color = (40 * k, 0, 0)
        for answer in ("Yes", "No"):
            rows.append(
                {
                    "question_id": f"{cat}/{name}",
                    "image": cell(color, name),
                    "question": f"Is this {k}-{answer}?{MME_SUFFIX}",
                    "answer": answer,
                    "category": cat,
                }
            )
    return rows


def test_mme_parquet(tmp_path):
    write_parquet(tmp_path / "MME" / "data" / "test-00000-of-00001.parquet", mme_rows())
    items = load_mme(tmp_path / "MME")
    assert len(items) == 8
    assert units(items) == [
        "existence/000000006040.jpg",
        "existence/000000006471.jpg",
        "OCR/0001.jpg",
        "code_reasoning/0020.png",
    ]
    assert [it.label for it in items] == [True, False] * 4
    assert [it.meta["question_index"] for it in items] == [0, 1] * 4
    assert items[2].meta["category"] == "existence"
    assert len({it.item_id for it in items}) == 8
    # MME's own instruction is kept, not doubled.
    assert items[0].prompt == items[0].question == f"Is this 0-Yes?{MME_SUFFIX}"
    # Images decode lazily from their row group (rows span several row groups).
    (img,) = items[7].load_images()
    assert img.mode == "RGB" and img.size == (6, 4) and img.getpixel((0, 0)) == (120, 0, 0)


def test_mme_limit_counts_units(tmp_path):
    write_parquet(tmp_path / "mme.parquet", mme_rows())
    items = load_mme(tmp_path / "mme.parquet", limit=3)
    assert len(items) == 6 and len(units(items)) == 3
    assert load_benchmark("MME", tmp_path / "mme.parquet", limit=0) == []


def test_mme_original_folders(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    write_image(root / "artwork" / "images" / "10002.jpg")
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        f"Is this painted by Monet?{MME_SUFFIX}\tYes\nIs this painted by Goya?{MME_SUFFIX}\tNo\n"
    )
    write_image(root / "count" / "000000000001.png")
    (root / "count" / "000000000001.txt").write_text(
        f"Are there two cats?{MME_SUFFIX}\tNo\nIs there one cat?{MME_SUFFIX}\tYes\n"
    )
    items = load_mme(root)
    assert units(items) == ["artwork/10002.jpg", "count/000000000001.png"]
    assert [it.label for it in items] == [True, False, False, True]
    assert items[2].meta["category"] == "count"
    assert items[0].load_images()[0].size == (5, 5)


def test_mme_bad_layout(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in mme_rows()]
    f = write_parquet(tmp_path / "data" / "test.parquet", rows)
    with pytest.raises(ValueError, match=r"MME: column 'answer' missing in .*test\.parquet"):
        load_mme(tmp_path)
    f.unlink()
    (tmp_path / "unrelated").mkdir()
    with pytest.raises(FileNotFoundError, match="MME: no .parquet files and no category"):
        load_mme(tmp_path)
    with pytest.raises(FileNotFoundError, match="MME: .* does not exist"):
        load_mme(tmp_path / "nowhere")


# --------------------------------------------------------------------------- POPE


def pope_rows() -> list[dict]:
    rows, n = [], 0
    for cat, source in (
        ("random", "COCO_val2014_000000310196"),
        ("adversarial", "COCO_val2014_000000210789"),
    ):
        for k in range(6):
            n += 1
            yes = k % 2 == 0
            rows.append(
                {
                    "id": str(n),
                    "question_id": str(k + 1),
                    "question": f"Is there a thing{k} in the image?",
                    "answer": "yes" if yes else "no",
                    "image_source": source,
                    "image": cell((0, 10 * n, 0), source + ".jpg"),
                    "category": cat,
                }
            )
    return rows


def test_pope_parquet(tmp_path):
    write_parquet(tmp_path / "POPE" / "data" / "test-00000-of-00001.parquet", pope_rows())
    items = load_pope(tmp_path / "POPE")
    assert len(items) == 12
    assert units(items) == [
        "random/COCO_val2014_000000310196",
        "adversarial/COCO_val2014_000000210789",
    ]
    assert sum(it.label for it in items) == 6
    assert items[0].item_id == "random/1" and items[6].item_id == "adversarial/1"
    assert items[0].prompt == "Is there a thing0 in the image? Answer only 'yes' or 'no'."
    assert items[11].load_images()[0].getpixel((1, 1)) == (0, 120, 0)
    assert len(load_pope(tmp_path / "POPE", limit=1)) == 6


def test_pope_original_jsonl(tmp_path):
    root = tmp_path / "pope"
    for cat in ("random", "popular"):
        recs = [
            {
                "question_id": q,
                "image": f"COCO_val2014_00000000000{(q - 1) // 2}.jpg",
                "text": f"Is there a dog{q} in the image?",
                "label": "yes" if q % 2 else "no",
            }
            for q in range(1, 5)
        ]
        write_jsonl(root / f"coco_pope_{cat}.json", recs)
    for i in range(2):
        write_image(root / "val2014" / f"COCO_val2014_00000000000{i}.jpg")
    items = load_pope(root)
    assert len(items) == 8
    assert units(items) == [
        "popular/COCO_val2014_000000000000",
        "popular/COCO_val2014_000000000001",
        "random/COCO_val2014_000000000000",
        "random/COCO_val2014_000000000001",
    ]
    # Odd question_id = yes, next even id = no, same image.
    assert [it.label for it in items[:4]] == [True, False, True, False]
    assert items[0].images[0].endswith("val2014/COCO_val2014_000000000000.jpg")
    single = load_pope(root / "coco_pope_random.json", image_root=root / "val2014")
    assert {it.meta["category"] for it in single} == {"random"}


def test_pope_bad_layout(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in pope_rows()]
    write_parquet(tmp_path / "p" / "test.parquet", rows)
    with pytest.raises(ValueError) as e:
        load_pope(tmp_path / "p")
    msg = str(e.value)
    assert msg.startswith("POPE: column 'answer' missing in") and "test.parquet" in msg
    assert "found: " in msg and "'question_id'" in msg

    write_jsonl(
        tmp_path / "j" / "coco_pope_random.json",
        [{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?"}],
    )
    with pytest.raises(ValueError, match=r"POPE: field 'label' missing in line 1 of .*random"):
        load_pope(tmp_path / "j")

    write_jsonl(
        tmp_path / "k" / "coco_pope_random.json",
        [{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}],
    )
    with pytest.raises(FileNotFoundError, match=r"POPE: image 'a.jpg' not found"):
        load_pope(tmp_path / "k")


# ------------------------------------------------------------------ HallusionBench


def hb_record(cat, sub, set_id, fig, qid, gt, visual="1"):
    return {
        "category": cat,
        "subcategory": sub,
        "visual_input": visual,
        "set_id": str(set_id),
        "figure_id": str(fig),
        "sample_note": "note",
        "question_id": str(qid),
        "question": f"Question {cat} {sub} {set_id} {fig} {qid}?",
        "gt_answer_details": "details",
        "gt_answer": "1" if gt else "0",
        "filename": None if visual == "0" else f"./hallusion_bench/{cat}/{sub}/{set_id}_{fig}.png",
    }


def hb_records() -> list[dict]:
    return [
        hb_record("VD", "illusion", 0, 0, 0, True),
        hb_record("VD", "illusion", 0, 0, 1, False),
        hb_record("VD", "illusion", 0, 1, 0, False),
        hb_record("VD", "illusion", 0, 1, 1, True),
        hb_record("VD", "illusion", 1, 0, 0, False),
        hb_record("VD", "illusion", 1, 1, 0, False),
        hb_record("VS", "chart", 0, 0, 0, True, visual="0"),
        hb_record("VS", "chart", 0, 1, 0, True),
        hb_record("VS", "chart", 0, 2, 0, False, visual="2"),
    ]


def write_hallusionbench(root: Path) -> Path:
    write_json(root / "HallusionBench.json", hb_records())
    for rec in hb_records():
        if rec["filename"]:
            write_image(root / rec["filename"][2:])
    return root


def test_hallusionbench_json(tmp_path):
    root = write_hallusionbench(tmp_path / "hb")
    items = load_hallusionbench(root)
    assert len(items) == 8  # the visual_input 0 question is skipped by default
    assert [it.label for it in items] == [True, False, False, True, False, False, True, False]
    assert units(items) == ["VD/illusion/0/0", "VD/illusion/0/1", "VD/illusion/1/0", "VS/chart/0/0"]
    assert items[2].meta["figure_key"] == "VD/illusion/0/1"
    assert items[6].meta["figure_key"] == "VS/chart/0/1"
    assert items[0].load_images()[0].size == (5, 5)

    with_text = load_hallusionbench(root / "HallusionBench.json", include_text_only=True)
    assert len(with_text) == 9
    (text_only,) = [it for it in with_text if not it.images]
    assert text_only.meta["figure_key"] is None and text_only.load_images() == []
    assert text_only.unit_id == "VS/chart/0/0"
    # limit counts question groups, and a group's items need not be adjacent.
    assert len(load_hallusionbench(root, limit=1)) == 2


def test_hallusionbench_parquet(tmp_path):
    rows = []
    for rec in hb_records():
        row = {k: v for k, v in rec.items() if k != "filename"}
        row["filename"] = rec["filename"] or ""
        row["image"] = cell() if rec["visual_input"] != "0" else None
        rows.append(row)
    write_parquet(tmp_path / "data" / "image-00000-of-00001.parquet", rows)
    items = load_hallusionbench(tmp_path)
    assert len(items) == 8
    assert items[-1].load_images()[0].getpixel((0, 0)) == (255, 0, 0)


def test_hallusionbench_bad_layout(tmp_path):
    root = write_hallusionbench(tmp_path / "hb")
    (root / "hallusion_bench" / "VD" / "illusion" / "1_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"HallusionBench: image .*VD/illusion/1_1\.png"):
        load_hallusionbench(root)
    recs = hb_records()
    del recs[3]["gt_answer"]
    write_json(tmp_path / "bad" / "HallusionBench.json", recs)
    with pytest.raises(ValueError, match=r"HallusionBench: field 'gt_answer' missing in entry 3"):
        load_hallusionbench(tmp_path / "bad")
    with pytest.raises(
        FileNotFoundError, match=r"HallusionBench: .*HallusionBench\.json not found"
    ):
        load_hallusionbench(tmp_path)


# -------------------------------------------------------------------- NaturalBench


def nb_row(index, qtype="yes_no", answers=("Yes", "No", "No", "Yes")) -> dict:
    return {
        "Index": index,
        "Image_0": cell((index, 0, 0)),
        "Image_1": cell((0, index, 0)),
        "Question_0": f"Is the sky blue in picture {index}?",
        "Image_0_Question_0": answers[0],
        "Image_1_Question_0": answers[1],
        "Question_1": f"Is the sky grey in picture {index}?",
        "Image_0_Question_1": answers[2],
        "Image_1_Question_1": answers[3],
        "Question_Type": qtype,
        "Source": "test",
    }


def nb_rows() -> list[dict]:
    return [nb_row(7), nb_row(5, "multiple_choice", ("A", "B", "B", "A")), nb_row(3)]


def test_naturalbench(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", nb_rows())
    items = load_naturalbench(tmp_path)
    assert len(items) == 8  # 2 yes/no rows x 4; the multiple-choice row is left out
    assert units(items) == ["7", "3"]
    by_id = {it.item_id: it for it in items}
    assert by_id["7/q0_i0"].label and not by_id["7/q0_i1"].label
    assert not by_id["7/q1_i0"].label and by_id["7/q1_i1"].label
    assert by_id["3/q1_i1"].meta == {"question_index": 1, "image_index": 1, "source": "test"}
    assert by_id["3/q1_i0"].prompt == "Is the sky grey in picture 3? Answer only 'yes' or 'no'."
    assert by_id["3/q0_i1"].load_images()[0].getpixel((0, 0)) == (0, 3, 0)
    assert len(load_naturalbench(tmp_path, limit=1)) == 4


def test_naturalbench_bad_layout(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "Image_1_Question_0"} for r in nb_rows()]
    write_parquet(tmp_path / "nb.parquet", rows)
    with pytest.raises(ValueError, match="NaturalBench: column 'Image_1_Question_0' missing"):
        load_naturalbench(tmp_path / "nb.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="NaturalBench: no .parquet files"):
        load_naturalbench(tmp_path / "empty")


# ---------------------------------------------------------------------- Winoground

WINO = [
    {
        "id": 0,
        "caption_0": "an old person kisses a young person.",
        "caption_1": "a young person kisses an old person.",
        "tag": "Noun",
        "secondary_tag": "",
        "num_main_preds": 1,
        "collapsed_tag": "Object",
        "image_0": "ex_0_img_0",
        "image_1": "ex_0_img_1",
    },
    {
        "id": 1,
        "caption_0": "the dog is on the left",
        "caption_1": "the left is on the dog",
        "tag": "Relation",
        "secondary_tag": "",
        "num_main_preds": 1,
        "collapsed_tag": "Relation",
        "image_0": "ex_1_img_0",
        "image_1": "ex_1_img_1",
    },
]


def test_winoground_jsonl(tmp_path):
    root = tmp_path / "winoground"
    write_jsonl(root / "data" / "examples.jsonl", WINO)
    for ex in WINO:
        for i in (0, 1):
            write_image(root / "data" / "images" / f"{ex[f'image_{i}']}.png", (i * 200, 0, 0))
    items = load_winoground(root)
    assert len(items) == 8 and units(items) == ["0", "1"]
    assert [it.label for it in items[:4]] == [True, False, False, True]
    assert [(it.meta["image_index"], it.meta["caption_index"]) for it in items[:4]] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert items[1].prompt == (
        "Does this image show: a young person kisses an old person? Answer only 'yes' or 'no'."
    )
    assert items[2].load_images()[0].getpixel((0, 0)) == (200, 0, 0)
    assert items[0].meta["collapsed_tag"] == "Object"


def test_winoground_parquet_and_missing_image(tmp_path):
    rows = [dict(ex, image_0=cell((1, 2, 3)), image_1=cell((4, 5, 6))) for ex in WINO]
    write_parquet(tmp_path / "wp" / "data" / "test-00000-of-00001.parquet", rows)
    items = load_benchmark("winoground", tmp_path / "wp")
    assert len(items) == 8
    assert items[3].load_images()[0].getpixel((0, 0)) == (4, 5, 6)

    write_jsonl(tmp_path / "wj" / "examples.jsonl", WINO)
    (tmp_path / "wj" / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="Winoground: image 'ex_0_img_0' not found"):
        load_winoground(tmp_path / "wj")


# ---------------------------------------------------------------------- SugarCrepe


def write_sugarcrepe(root: Path) -> Path:
    write_json(
        root / "data" / "add_att.json",
        {
            "0": {
                "filename": "000000391895.jpg",
                "caption": "A man rides a red bike.",
                "negative_caption": "A man rides a blue bike.",
            },
            "1": {
                "filename": "000000391895.jpg",
                "caption": "A man with a hat.",
                "negative_caption": "A man with a big hat.",
            },
        },
    )
    write_json(
        root / "data" / "swap_obj.json",
        {
            "0": {
                "filename": "000000522418.jpg",
                "caption": "A dog chases a cat.",
                "negative_caption": "A cat chases a dog.",
            },
        },
    )
    write_image(root / "val2017" / "000000391895.jpg")
    write_image(root / "val2017" / "000000522418.jpg", (9, 9, 9))
    return root


def test_sugarcrepe(tmp_path):
    root = write_sugarcrepe(tmp_path / "sc")
    items = load_sugarcrepe(root)
    assert len(items) == 6
    assert units(items) == ["add_att/0", "add_att/1", "swap_obj/0"]  # filenames repeat; keys don't
    assert [it.label for it in items] == [True, False] * 3
    assert items[1].prompt == caption_prompt("A man rides a blue bike.")
    assert (
        items[1].prompt
        == "Does this image show: A man rides a blue bike? Answer only 'yes' or 'no'."
    )
    assert items[5].meta == {"subset": "swap_obj", "key": "0", "polarity": "negative"}
    assert items[5].load_images()[0].getpixel((0, 0)) == (9, 9, 9)
    assert len(load_sugarcrepe(root, subsets=["swap_obj"])) == 2
    one = load_sugarcrepe(root / "data" / "add_att.json", image_root=root / "val2017", limit=1)
    assert [it.item_id for it in one] == ["add_att/0/positive", "add_att/0/negative"]


def test_sugarcrepe_bad_layout(tmp_path):
    write_json(tmp_path / "a" / "add_obj.json", {"0": {"filename": "x.jpg", "caption": "c"}})
    with pytest.raises(ValueError, match="SugarCrepe: field 'negative_caption' missing in key 0"):
        load_sugarcrepe(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(FileNotFoundError, match="SugarCrepe: none of add_att.json"):
        load_sugarcrepe(tmp_path / "b")


# ---------------------------------------------------------------------------- BEAF

ORIG = "COCO_val2014_000000001171.jpg"


def beaf_records() -> list[dict]:
    recs = []

    def add(image, question, orig, removed, gt):
        recs.append(
            {
                "id": len(recs),
                "image": image,
                "question": f"Is there a {question} in the image?",
                "orig_img": orig,
                "removed_q": removed,
                "gt": gt,
            }
        )

    add(ORIG, "car", True, False, "yes")
    add(ORIG, "train", True, True, "yes")
    add(ORIG, "truck", True, True, "yes")
    add(ORIG, "spoon", True, False, "no")
    e0, e1 = ORIG[:-4] + "_00.png", ORIG[:-4] + "_01.png"
    add(e0, "train", False, True, "no")
    add(e0, "truck", False, True, "yes")
    add(e0, "car", False, False, "yes")
    add(e0, "spoon", False, False, "no")
    add(e1, "truck", False, True, "no")
    add(e1, "train", False, True, "yes")
    add(e1, "car", False, False, "yes")
    add(e1, "spoon", False, False, "no")
    return recs


def write_beaf(root: Path) -> Path:
    write_json(root / "beaf_qna.json", beaf_records())
    for name in {r["image"] for r in beaf_records()}:
        write_image(root / "images" / name)
    return root


def test_beaf(tmp_path):
    root = write_beaf(tmp_path / "beaf")
    items = load_beaf(root)
    assert len(items) == 12
    assert units(items) == [
        f"{ORIG}/Is there a {q} in the image?" for q in ("car", "train", "truck", "spoon")
    ]
    train = [it for it in items if it.unit_id == units(items)[1]]
    assert [(it.meta["image"][-7:], it.label) for it in train] == [
        ("171.jpg", True),
        ("_00.png", False),
        ("_01.png", True),
    ]
    assert all(it.meta["orig_image"] == ORIG for it in items)
    assert items[4].load_images()[0].size == (5, 5)
    limited = load_beaf(root / "beaf_qna.json", limit=2)
    assert len(limited) == 6  # a unit spans the original and both edits


def test_beaf_bad_layout(tmp_path):
    recs = beaf_records()
    del recs[5]["removed_q"]
    write_json(tmp_path / "beaf_qna.json", recs)
    with pytest.raises(ValueError, match="BEAF: field 'removed_q' missing in entry 5"):
        load_beaf(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(FileNotFoundError, match="BEAF: .*beaf_qna.json not found"):
        load_beaf(tmp_path / "sub")


# ------------------------------------------------------------------------ registry


def test_registry_and_prompts(tmp_path):
    assert set(LOADERS) == {
        "mme",
        "pope",
        "hallusionbench",
        "naturalbench",
        "winoground",
        "sugarcrepe",
        "beaf",
    }
    write_sugarcrepe(tmp_path)
    assert len(load_benchmark("Sugar-Crepe", tmp_path, limit=2)) == 4
    with pytest.raises(KeyError, match="unknown benchmark"):
        load_benchmark("vqav2", tmp_path)
    assert make_prompt("Is it red?") == "Is it red? Answer only 'yes' or 'no'."
    assert (
        make_prompt("Is it red? Please answer yes or no.") == "Is it red? Please answer yes or no."
    )


def test_duplicate_ids_are_rejected(tmp_path):
    write_parquet(tmp_path / "x" / "a.parquet", pope_rows())
    write_parquet(tmp_path / "x" / "b.parquet", pope_rows())
    with pytest.raises(ValueError, match="POPE: duplicate item id 'random/1'"):
        load_pope(tmp_path / "x")


# ------------------------------------------------- image paths stay inside the dataset

SECRET = (12, 34, 56)  # the colour of the file outside the dataset folder


def path_cell(name: str) -> dict:
    return {"bytes": None, "path": name}


def build_mme_parquet(root: Path, ref) -> Path:
    rows = mme_rows()[:2]
    rows[0]["image"] = path_cell(ref(root / "data"))
    return write_parquet(root / "data" / "test.parquet", rows)


def build_pope_jsonl(root: Path, ref) -> Path:
    write_image(root / "val2014" / "ok.jpg")
    rec = {"question_id": 1, "image": ref(root / "val2014"), "text": "Is there a cat?"}
    return write_jsonl(root / "coco_pope_random.json", [dict(rec, label="yes")])


def build_pope_parquet(root: Path, ref) -> Path:
    rows = pope_rows()[:6]
    rows[0]["image"] = path_cell(ref(root))
    return write_parquet(root / "pope.parquet", rows)


def build_hb_json(root: Path, ref) -> Path:
    recs = hb_records()[:2]
    recs[0]["filename"] = ref(root)
    write_image(root / recs[1]["filename"][2:])
    return write_json(root / "HallusionBench.json", recs)


def build_hb_parquet(root: Path, ref) -> Path:
    rows = []
    for rec in hb_records()[:2]:
        rows.append(dict(rec, image=cell()))
    rows[0]["image"] = path_cell(ref(root / "data"))
    return write_parquet(root / "data" / "image.parquet", rows)


def build_naturalbench(root: Path, ref) -> Path:
    row = nb_row(7)
    row["Image_1"] = path_cell(ref(root))
    return write_parquet(root / "nb.parquet", [row])


def build_wino_jsonl(root: Path, ref) -> Path:
    ex = dict(WINO[0], image_0=ref(root / "images"))
    write_image(root / "images" / f"{ex['image_1']}.png")
    return write_jsonl(root / "examples.jsonl", [ex])


def build_wino_parquet(root: Path, ref) -> Path:
    row = dict(WINO[0], image_0=cell(), image_1=path_cell(ref(root)))
    return write_parquet(root / "wino.parquet", [row])


def build_sugarcrepe(root: Path, ref) -> Path:
    rec = {"filename": ref(root / "val2017"), "caption": "a", "negative_caption": "b"}
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    return write_json(root / "add_att.json", {"0": rec})


def build_beaf(root: Path, ref) -> Path:
    recs = beaf_records()[:1]
    recs[0]["image"] = ref(root / "images")
    return write_json(root / "beaf_qna.json", recs)


# benchmark, builder; the builder writes an annotation file whose first image reference
# is `ref(folder)`, where `folder` is the folder the loader looks that name up in.
ESCAPE_LAYOUTS = {
    "mme parquet": ("mme", build_mme_parquet),
    "pope jsonl": ("pope", build_pope_jsonl),
    "pope parquet": ("pope", build_pope_parquet),
    "hallusionbench json": ("hallusionbench", build_hb_json),
    "hallusionbench parquet": ("hallusionbench", build_hb_parquet),
    "naturalbench parquet": ("naturalbench", build_naturalbench),
    "winoground jsonl": ("winoground", build_wino_jsonl),
    "winoground parquet": ("winoground", build_wino_parquet),
    "sugarcrepe json": ("sugarcrepe", build_sugarcrepe),
    "beaf json": ("beaf", build_beaf),
}


def escape_ref(kind: str, secret: Path):
    """How the annotation names the outside file: absolute, with `..`, or by a symlink."""

    def ref(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "absolute":
            return str(secret)
        if kind == "dotdot":
            return os.path.relpath(secret, folder)
        link = folder / "innocent.png"
        link.symlink_to(secret)
        return link.name

    return ref


def load_everything(name: str, path: Path, **kwargs) -> list:
    """Load, then decode every image (parquet path cells are checked when decoded)."""
    items = load_benchmark(name, path, **kwargs)
    return [img for it in items for img in it.load_images()]


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
@pytest.mark.parametrize("layout", list(ESCAPE_LAYOUTS))
def test_image_paths_cannot_leave_the_dataset(tmp_path, layout, kind):
    secret = tmp_path / "home" / "secret.png"
    write_image(secret, SECRET)
    bench, build = ESCAPE_LAYOUTS[layout]
    root = tmp_path / "dataset"
    annotation = build(root, escape_ref(kind, secret))
    with pytest.raises(OutsideRootError) as err:
        load_everything(bench, root)
    msg = str(err.value)
    # The message names the annotation file, the record in it, and the path.
    assert str(annotation) in msg, msg
    assert re.search(r"(line|entry|key|row) \d+", msg), msg
    assert "secret.png" in msg or "innocent.png" in msg, msg
    assert "allow_outside_root=True" in msg
    # Opting in reads the outside file.
    images = load_everything(bench, root, allow_outside_root=True)
    assert any(img.getpixel((0, 0)) == SECRET for img in images)


def test_every_loader_takes_allow_outside_root():
    for name, loader in LOADERS.items():
        param = inspect.signature(loader).parameters["allow_outside_root"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is False, name
    assert inspect.signature(load_benchmark).parameters["allow_outside_root"].default is False


def test_mme_folder_listing_symlinks_are_confined(tmp_path):
    secret = tmp_path / "home" / "secret.png"
    write_image(secret, SECRET)
    root = tmp_path / "MME_Benchmark_release_version"
    (root / "count").mkdir(parents=True)
    (root / "count" / "0001.png").symlink_to(secret)
    (root / "count" / "0001.txt").write_text(
        f"Is there one?{MME_SUFFIX}\tYes\nAre there two?{MME_SUFFIX}\tNo\n"
    )
    with pytest.raises(OutsideRootError, match=r"MME: path .*0001\.png.*listing of"):
        load_mme(root)
    items = load_mme(root, allow_outside_root=True)
    assert items[0].load_images()[0].getpixel((0, 0)) == SECRET
    # A whole category folder linked from elsewhere is outside too.
    (root / "count" / "0001.png").unlink()
    elsewhere = tmp_path / "elsewhere" / "color"
    write_image(elsewhere / "0002.png")
    (elsewhere / "0002.txt").write_text(f"Red?{MME_SUFFIX}\tYes\nBlue?{MME_SUFFIX}\tNo\n")
    (root / "count").rename(tmp_path / "count_away")
    (root / "color").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(OutsideRootError, match=r"0002\.txt"):
        load_mme(root)


def test_a_symlinked_image_folder_inside_stays_allowed(tmp_path):
    # A dataset whose images/ links to a shared copy is fine: files resolve inside it.
    shared = tmp_path / "shared_coco"
    for name in {r["image"] for r in beaf_records()}:
        write_image(shared / name)
    root = tmp_path / "beaf"
    write_json(root / "beaf_qna.json", beaf_records())
    (root / "images").symlink_to(shared, target_is_directory=True)
    items = load_beaf(root)
    assert len(items) == 12 and items[0].load_images()[0].size == (5, 5)


# ------------------------------------------------------------------ strict yes/no fields


def test_beaf_flags_are_read_strictly(tmp_path):
    recs = beaf_records()
    for rec in recs:  # the same data with string flags, as some re-exports write them
        rec["orig_img"] = "True" if rec["orig_img"] else "False"
        rec["removed_q"] = "TRUE" if rec["removed_q"] else "false"
        rec["gt"] = rec["gt"].upper()
    root = tmp_path / "b"
    write_json(root / "beaf_qna.json", recs)
    for name in {r["image"] for r in recs}:
        write_image(root / "images" / name)
    items = load_beaf(root)
    # "False" is false: the edited image's unit is its original's (bool("False") is True).
    assert [it.meta["orig_img"] for it in items] == [True] * 4 + [False] * 8
    assert [it.meta["removed_q"] for it in items[:4]] == [False, True, True, False]
    assert items[4].unit_id == items[1].unit_id
    assert [it.label for it in items[:4]] == [True, True, True, False]

    recs[5]["orig_img"] = "Falsch"
    write_json(root / "beaf_qna.json", recs)
    with pytest.raises(ValueError, match=r"BEAF: orig_img 'Falsch' in entry 5 of .*beaf_qna"):
        load_beaf(root)


@pytest.mark.parametrize("bad", ["ja", "", "2", 2, 1.0, None, "yes please"])
def test_labels_are_read_strictly(tmp_path, bad):
    recs = [
        {"question_id": 1, "image": "a.jpg", "text": "Cat?", "label": "YES"},
        {"question_id": 2, "image": "a.jpg", "text": "Dog?", "label": bad},
    ]
    write_jsonl(tmp_path / "coco_pope_random.json", recs)
    write_image(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match=r"POPE: answer .* in line 2 of .*coco_pope_random"):
        load_pope(tmp_path)


def test_parquet_labels_name_file_row_group_and_row(tmp_path):
    rows = mme_rows()
    rows[5]["answer"] = "Maybe"
    write_parquet(tmp_path / "mme.parquet", rows, row_group_size=3)
    with pytest.raises(
        ValueError, match=r"MME: answer 'Maybe' in row group 1, row 2 of .*mme\.parquet"
    ):
        load_mme(tmp_path / "mme.parquet")


def test_items_record_origin_and_unit_size(tmp_path):
    root = write_beaf(tmp_path / "beaf")
    items = load_beaf(root, limit=1)
    assert items[0].origin == f"entry 0 of {root / 'beaf_qna.json'}"
    assert [it.unit_size for it in items] == [3, 3, 3]  # original + two edits
    write_parquet(tmp_path / "nb.parquet", nb_rows(), row_group_size=2)
    nb = load_naturalbench(tmp_path / "nb.parquet")
    assert nb[4].origin.startswith("row group 1, row 0 of ") and nb[4].unit_size == 4
