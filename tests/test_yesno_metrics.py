"""Official and yes-bias metrics of the paired yes/no benchmarks, against hand computations.

Each benchmark's fixture is written in its released layout, read by its loader, and
scored with hand-picked predictions; the expected values are worked out in comments.
"""

from __future__ import annotations

import io
import json
import math
import random
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlm_lens.data.yesno import (
    ANSWER_PARSERS,
    BENCHMARK_PARSER,
    YesNoItem,
    incomplete_units,
    load_beaf,
    load_hallusionbench,
    load_mme,
    load_naturalbench,
    load_pope,
    load_sugarcrepe,
    load_winoground,
    parse_yes_no,
    synthetic,
    yes_no_score,
    yes_no_token_ids,
)
from vlm_lens.metrics.yesno import IncompleteUnitsWarning, bootstrap_ratio_ci, evaluate, to_rows

# ------------------------------------------------------------------------ fixtures


def cell(color=(255, 0, 0)) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": "x.png"}


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "white").save(path)


def preds(items: list[YesNoItem], answers: list[str]) -> dict[str, str]:
    assert len(items) == len(answers)
    return {it.item_id: a for it, a in zip(items, answers)}


def right(it: YesNoItem) -> str:
    return "Yes." if it.label else "No."


def wrong(it: YesNoItem) -> str:
    return "no" if it.label else "yes"


# ----------------------------------------------------------------------------- MME


@pytest.fixture
def mme_items(tmp_path) -> list[YesNoItem]:
    rows = []
    for cat, name in [
        ("existence", "a.jpg"),
        ("existence", "b.jpg"),
        ("OCR", "c.jpg"),
        ("code_reasoning", "d.png"),
    ]:
        for ans in ("Yes", "No"):
            rows.append(
                {
                    "question_id": f"{cat}/{name}",
                    "image": cell(),
                    "question": f"Q {name} {ans}? Please answer yes or no.",
                    "answer": ans,
                    "category": cat,
                }
            )
    return load_mme(write_parquet(tmp_path / "mme" / "test.parquet", rows))


def test_mme_official(mme_items):
    it = mme_items
    answers = [
        right(it[0]),
        right(it[1]),  # existence a: both right
        right(it[2]),
        wrong(it[3]),  # existence b: one right
        right(it[4]),
        "I cannot tell",  # OCR: one right, one unparseable (wrong)
        wrong(it[6]),
        right(it[7]),  # code_reasoning: one right
    ]
    r = evaluate("mme", it, preds(it, answers), n_boot=200)
    off = r["official"]
    # 5 of 8 questions right; 1 of 4 images with both right.
    assert off["acc"] == pytest.approx(5 / 8)
    assert off["acc_plus"] == pytest.approx(1 / 4)
    assert 100 * off["acc"] + 100 * off["acc_plus"] == pytest.approx(62.5 + 25)
    cats = off["categories"]
    # existence: acc 3/4, acc+ 1/2 -> 75 + 50; OCR: 1/2, 0 -> 50; code_reasoning: 50.
    assert cats["existence"]["score"] == pytest.approx(125.0)
    assert cats["OCR"]["acc"] == 0.5 and cats["OCR"]["acc_plus"] == 0.0
    assert cats["code_reasoning"]["score"] == pytest.approx(50.0)
    assert off["perception"] == pytest.approx(175.0)
    assert off["cognition"] == pytest.approx(50.0)
    assert off["total"] == pytest.approx(225.0)
    assert (off["n_perception"], off["n_cognition"]) == (2, 1)
    # Generic: predicted yes = items 0, 2, 3 (a wrong yes), 4; item 6 is a wrong no -> 4/8.
    assert r["yes_rate"] == pytest.approx(4 / 8)
    assert r["gt_yes_rate"] == 0.5
    assert r["other_rate"] == pytest.approx(1 / 8)
    assert r["accuracy"] == pytest.approx(5 / 8)
    assert r["paired_accuracy"] == pytest.approx(1 / 4)


# ---------------------------------------------------------------------------- POPE


@pytest.fixture
def pope_items(tmp_path) -> list[YesNoItem]:
    rows = []
    for cat in ("random", "adversarial"):
        for k in range(6):
            rows.append(
                {
                    "id": f"{cat}{k}",
                    "question_id": str(k + 1),
                    "question": f"Is there a thing{k} in the image?",
                    "answer": "yes" if k % 2 == 0 else "no",
                    "image_source": f"COCO_{cat}",
                    "image": cell(),
                    "category": cat,
                }
            )
    return load_pope(write_parquet(tmp_path / "pope" / "test.parquet", rows))


def test_pope_always_yes(pope_items):
    r = evaluate("pope", pope_items, {it.item_id: "Yes" for it in pope_items}, n_boot=0)
    off = r["official"]
    assert off["recall"] == 1.0
    assert off["yes_ratio"] == 1.0  # of predictions, not labels (labels give 0.5)
    assert off["precision"] == 0.5 and off["accuracy"] == 0.5
    assert off["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert off["categories"]["random"]["yes_ratio"] == 1.0
    assert "ci" not in r


def test_pope_hand_example(pope_items):
    # random: labels y n y n y n, predictions y y n n y "other"
    #   TP 2 (q1, q5), FP 1 (q2), FN 1 (q3), TN 1 (q4), q6 unparseable (wrong, no cell)
    #   acc 3/6, precision 2/3, recall 2/3, f1 2/3, yes-ratio 3/6
    # adversarial: all right -> acc 1, precision 1, recall 1, yes-ratio 3/6
    answers = ["yes", "yes", "no", "no", "yes", "hmm"] + [right(it) for it in pope_items[6:]]
    off = evaluate("pope", pope_items, preds(pope_items, answers), n_boot=0)["official"]
    rnd = off["categories"]["random"]
    assert rnd["accuracy"] == pytest.approx(0.5)
    assert rnd["precision"] == pytest.approx(2 / 3)
    assert rnd["recall"] == pytest.approx(2 / 3)
    assert rnd["f1"] == pytest.approx(2 / 3)
    assert rnd["yes_ratio"] == pytest.approx(0.5)
    assert (rnd["tp"], rnd["fp"], rnd["tn"], rnd["fn"]) == (2, 1, 1, 1)
    assert off["categories"]["adversarial"]["accuracy"] == 1.0
    # Overall: TP 5, FP 1, FN 1, TN 4 of 12.
    assert off["accuracy"] == pytest.approx(9 / 12)
    assert off["precision"] == pytest.approx(5 / 6)
    assert off["recall"] == pytest.approx(5 / 6)


# -------------------------------------------------------------------- HallusionBench


def hb_record(cat, sub, set_id, fig, qid, gt, visual="1"):
    return {
        "category": cat,
        "subcategory": sub,
        "visual_input": visual,
        "set_id": str(set_id),
        "figure_id": str(fig),
        "sample_note": "",
        "question_id": str(qid),
        "question": f"Q {cat} {sub} {set_id} {fig} {qid}?",
        "gt_answer_details": "",
        "gt_answer": "1" if gt else "0",
        "filename": None if visual == "0" else f"./hallusion_bench/{cat}/{sub}/{set_id}_{fig}.png",
    }


@pytest.fixture
def hb_root(tmp_path) -> Path:
    recs = [
        hb_record("VD", "illusion", 0, 0, 0, True),  # 1
        hb_record("VD", "illusion", 0, 0, 1, False),  # 2
        hb_record("VD", "illusion", 0, 1, 0, False),  # 3
        hb_record("VD", "illusion", 0, 1, 1, True),  # 4
        hb_record("VD", "illusion", 1, 0, 0, False),  # 5  (group all "no")
        hb_record("VD", "illusion", 1, 1, 0, False),  # 6
        hb_record("VS", "chart", 0, 0, 0, True, visual="0"),  # no image
        hb_record("VS", "chart", 0, 1, 0, True),  # 7
        hb_record("VS", "chart", 0, 2, 0, False, visual="2"),  # 8
    ]
    root = tmp_path / "hb"
    write_json(root / "HallusionBench.json", recs)
    for r in recs:
        if r["filename"]:
            write_image(root / r["filename"][2:])
    return root


def test_hallusionbench_official(hb_root):
    items = load_hallusionbench(hb_root)
    #          1     2     3      4      5     6     7      8
    answers = ["no", "no", "yes", "yes", "no", "no", "yes", "yes"]
    # right: 2, 4, 5, 6, 7; wrong: 1 (said no), 3 and 8 (said yes)
    off = evaluate("hallusionbench", items, preds(items, answers), n_boot=0)["official"]
    assert off["aAcc"] == pytest.approx(5 / 8)
    # question groups: ill/0/q0 {1,3} x, ill/0/q1 {2,4} ok, ill/1/q0 {5,6} ok, chart/q0 {7,8} x
    assert off["qAcc"] == pytest.approx(2 / 4)
    # figures: ill/0/0 {1,2} x, ill/0/1 {3,4} x, ill/1/0 ok, ill/1/1 ok, chart/1 ok, chart/2 x
    assert off["fAcc"] == pytest.approx(3 / 6)
    # predicted yes 4/8, GT yes 3/8 (items 1, 4, 7)
    assert off["pct_diff"] == pytest.approx(1 / 8)
    # errors 1, 3, 8: two answered yes
    assert off["fp_ratio"] == pytest.approx(2 / 3)
    # mixed question groups: ill/0/q0, ill/0/q1, chart/q0 -> only ill/0/q1 right
    assert off["n_mixed_question_groups"] == 3
    assert off["qAcc_mixed"] == pytest.approx(1 / 3)
    # mixed figures: ill/0/0 and ill/0/1, both wrong
    assert (off["n_mixed_figures"], off["fAcc_mixed"]) == (2, 0.0)
    assert off["categories"]["VD"]["aAcc"] == pytest.approx(4 / 6)
    assert off["categories"]["VS"]["aAcc"] == pytest.approx(1 / 2)
    assert off["categories"]["VS"]["n_figures"] == 2


def test_hallusionbench_text_only_is_not_a_figure(hb_root):
    items = load_hallusionbench(hb_root, include_text_only=True)
    off = evaluate("hallusionbench", items, {it.item_id: right(it) for it in items}, n_boot=0)
    assert off["official"]["n_figures"] == 6  # VS figure 0 excluded
    assert off["official"]["n_questions"] == 9
    assert off["official"]["aAcc"] == off["official"]["fAcc"] == off["official"]["qAcc"] == 1.0


# ---------------------------------------------------------------------- NaturalBench


def nb_row(index, qtype="yes_no", answers=("Yes", "No", "No", "Yes")) -> dict:
    return {
        "Index": index,
        "Image_0": cell(),
        "Image_1": cell(),
        "Question_0": f"Q0 {index}?",
        "Image_0_Question_0": answers[0],
        "Image_1_Question_0": answers[1],
        "Question_1": f"Q1 {index}?",
        "Image_0_Question_1": answers[2],
        "Image_1_Question_1": answers[3],
        "Question_Type": qtype,
        "Source": "s",
    }


@pytest.fixture
def nb_items(tmp_path) -> list[YesNoItem]:
    rows = [nb_row(7), nb_row(5, "multiple_choice", ("A", "B", "B", "A")), nb_row(3)]
    return load_naturalbench(write_parquet(tmp_path / "nb" / "test.parquet", rows))


def test_naturalbench_always_yes(nb_items):
    off = evaluate("naturalbench", nb_items, {it.item_id: "yes" for it in nb_items})["official"]
    assert off == {"parser": "first_word", "Acc": 0.5, "Q_Acc": 0.0, "I_Acc": 0.0, "G_Acc": 0.0}


def test_naturalbench_hand_example_any_order(nb_items):
    wrong_ids = {"3/q0_i1", "3/q1_i1"}
    p = {it.item_id: wrong(it) if it.item_id in wrong_ids else right(it) for it in nb_items}
    shuffled = list(nb_items)
    random.Random(0).shuffle(shuffled)
    off = evaluate("naturalbench", shuffled, p, n_boot=0)["official"]
    # Acc 6/8. Questions: (7,q0) (7,q1) ok, (3,q0) x, (3,q1) x -> 2/4.
    # Images: (7,i0) (7,i1) (3,i0) ok, (3,i1) x -> 3/4. Groups: 7 ok, 3 x -> 1/2.
    assert off == {"parser": "first_word", "Acc": 0.75, "Q_Acc": 0.5, "I_Acc": 0.75, "G_Acc": 0.5}


# ------------------------------------------------------------------------ Winoground


@pytest.fixture
def wino_items(tmp_path) -> list[YesNoItem]:
    rows = [
        {
            "id": i,
            "image_0": cell(),
            "image_1": cell(),
            "caption_0": f"c0 {i}",
            "caption_1": f"c1 {i}",
            "tag": "t",
            "secondary_tag": "",
            "collapsed_tag": "Object",
        }
        for i in range(2)
    ]
    return load_winoground(write_parquet(tmp_path / "w" / "test.parquet", rows))


def test_winoground_strict_and_scores(wino_items):
    # items per example: (i0,c0)=yes, (i0,c1)=no, (i1,c0)=no, (i1,c1)=yes
    answers = [right(it) for it in wino_items]
    answers[5] = "yes"  # example 1, (i0, c1): wrong
    #                  s00  s01  s10  s11
    scores = dict(
        zip(
            [it.item_id for it in wino_items],
            [
                2.0,
                1.0,
                0.0,
                3.0,  # ex 0: text ok, image ok
                1.0,
                2.0,
                0.0,
                3.0,
            ],
        )
    )  # ex 1: text x (s00 < s01), image ok
    off = evaluate("winoground", wino_items, preds(wino_items, answers), scores, n_boot=0)[
        "official"
    ]
    assert off["strict_text"] == off["strict_image"] == off["strict_group"] == 0.5
    assert off["text"] == 0.5 and off["image"] == 1.0 and off["group"] == 0.5


# ------------------------------------------------------------------------ SugarCrepe


@pytest.fixture
def sc_items(tmp_path) -> list[YesNoItem]:
    root = tmp_path / "sc"
    write_json(
        root / "add_att.json",
        {
            "0": {"filename": "1.jpg", "caption": "p0", "negative_caption": "n0"},
            "1": {"filename": "1.jpg", "caption": "p1", "negative_caption": "n1"},
        },
    )
    write_json(
        root / "swap_obj.json",
        {"0": {"filename": "2.jpg", "caption": "p", "negative_caption": "n"}},
    )
    write_image(root / "val2017" / "1.jpg")
    write_image(root / "val2017" / "2.jpg")
    return load_sugarcrepe(root)


def test_sugarcrepe_official(sc_items):
    # add_att/0: yes, no (both right); add_att/1: yes, yes (x); swap_obj/0: no, no (x)
    answers = ["yes", "no", "yes", "yes", "no", "no"]
    scores = [1.0, 0.0, 0.5, 0.7, 0.2, -1.0]  # positive preferred: yes, no, yes
    r = evaluate(
        "sugarcrepe",
        sc_items,
        preds(sc_items, answers),
        dict(zip([it.item_id for it in sc_items], scores)),
        n_boot=0,
    )
    off = r["official"]
    assert off["subsets"]["add_att"]["accuracy"] == 0.5
    assert off["subsets"]["add_att"]["item_accuracy"] == 0.75
    assert off["subsets"]["swap_obj"]["accuracy"] == 0.0
    assert off["accuracy"] == pytest.approx(0.25)  # mean over subsets
    assert off["subsets"]["add_att"]["positive_preferred"] == 0.5
    assert off["subsets"]["swap_obj"]["positive_preferred"] == 1.0
    assert off["positive_preferred"] == pytest.approx(0.75)
    assert r["score_paired_accuracy"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------ BEAF

ORIG = "COCO_val2014_000000001171.jpg"


@pytest.fixture
def beaf_items(tmp_path) -> list[YesNoItem]:
    recs = []

    def add(image, obj, orig, removed, gt):
        recs.append(
            {
                "id": len(recs),
                "image": image,
                "question": f"Is there a {obj}?",
                "orig_img": orig,
                "removed_q": removed,
                "gt": gt,
            }
        )

    e0, e1 = ORIG[:-4] + "_00.png", ORIG[:-4] + "_01.png"
    for image, orig, rows in [
        (
            ORIG,
            True,
            [
                ("car", False, "yes"),
                ("train", True, "yes"),
                ("truck", True, "yes"),
                ("spoon", False, "no"),
            ],
        ),
        (
            e0,
            False,
            [
                ("train", True, "no"),
                ("truck", True, "yes"),
                ("car", False, "yes"),
                ("spoon", False, "no"),
            ],
        ),
        (
            e1,
            False,
            [
                ("truck", True, "no"),
                ("train", True, "yes"),
                ("car", False, "yes"),
                ("spoon", False, "no"),
            ],
        ),
    ]:
        for obj, removed, gt in rows:
            add(image, obj, orig, removed, gt)
    root = tmp_path / "beaf"
    write_json(root / "beaf_qna.json", recs)
    for name in (ORIG, e0, e1):
        write_image(root / "images" / name)
    return load_beaf(root)


def test_beaf_official(beaf_items):
    answers = [
        "yes",
        "yes",
        "no",
        "yes",  # orig: car TP, train TP, truck FN, spoon FP
        "no",
        "yes",
        "no",
        "no",  # _00: train TN, truck TP, car FN, spoon TN
        "no",
        "yes",
        "yes",
        "yes",  # _01: truck TN, train TP, car TP, spoon FP
    ]
    off = evaluate("beaf", beaf_items, preds(beaf_items, answers), n_boot=0)["official"]
    # TP 5, FN 2, TN 3, FP 2
    assert off["accuracy"] == pytest.approx(8 / 12)
    assert off["precision"] == pytest.approx(5 / 7)
    assert off["recall"] == pytest.approx(5 / 7)
    assert off["f1"] == pytest.approx(5 / 7)
    # Removed-object pairs (orig yes -> edit no): train on _00 (TP -> TN = TU),
    # truck on _01 (FN -> TN = SB-). Truck on _00 / train on _01 keep "yes": no cell.
    assert off["n_removed_pairs"] == 2
    assert (off["TU"], off["IG"], off["SB+"], off["SB-"]) == (0.5, 0.0, 0.0, 0.5)
    # Non-removed pairs: car/_00 flips (right -> wrong), spoon/_00 flips (wrong -> right),
    # car/_01 and spoon/_01 do not -> ID 2/4.
    assert off["n_id_pairs"] == 4 and off["ID"] == 0.5
    # F1(TU, 1 - ID) = 2 * .5 * .5 / (.5 + .5)
    assert off["F1_TU_ID"] == pytest.approx(0.5)


def test_beaf_yes_bias_cell(beaf_items):
    answers = ["yes"] * 12  # always yes: every removed-object pair is TP -> FP
    off = evaluate("beaf", beaf_items, preds(beaf_items, answers), n_boot=0)["official"]
    assert off["SB+"] == 1.0 and off["TU"] == 0.0 and off["F1_TU_ID"] == 0.0
    assert off["ID"] == 0.0  # same answer everywhere: nothing flips
    assert off["recall"] == 1.0 and off["yes_ratio"] == 1.0


# -------------------------------------------------------------- answers and scores


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", "yes"),
        (" no,", "no"),
        ("YES!", "yes"),
        ("No", "no"),
        ("'yes'", "yes"),
        ("**No**, there is none.", "no"),
        ("\n\tyes it is", "yes"),
        ("Yesterday", "other"),
        ("Not really", "other"),
        ("nope", "other"),
        ("1. yes", "other"),
        ("I think yes", "other"),
        ("", "other"),
        (None, "other"),
        ("...", "other"),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


def test_yes_no_score_hand_example():
    # One row: p = [0.5, 0.2, 0.3]. yes = {0}, no = {1, 2}: log .5 - log .5 = 0.
    # Second row: p = [0.1, 0.6, 0.3]: log .1 - log .9.
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3]])) + 7.0
    s = yes_no_score(logits, [0], [1, 2])
    assert s.shape == (2,)
    assert s[0].item() == pytest.approx(0.0, abs=1e-6)
    assert s[1].item() == pytest.approx(math.log(0.1) - math.log(0.9), abs=1e-6)
    # yes = {0, 1} vs no = {2}: log .7 - log .3, and numpy in -> numpy out.
    s_np = yes_no_score(logits.numpy()[:1], [0, 1], [2])
    assert isinstance(s_np, np.ndarray)
    assert s_np[0] == pytest.approx(math.log(0.7 / 0.3), abs=1e-6)
    # Batched over extra leading dims.
    assert yes_no_score(logits.reshape(1, 2, 3), [0], [1]).shape == (1, 2)


class WordTokenizer:
    """Word pieces with a GPT-2 style 'Ġ' for a leading space."""

    def __init__(self):
        pieces = [
            "yes",
            "Yes",
            "\u0120Yes",
            "no",
            "No",
            "\u0120no",
            "yesterday",
            "not",
            "\u0120No",
            "\u0120",
            "the",
            "Ġyesterday",
        ]
        self.vocab = {p: i for i, p in enumerate(pieces)}
        self.inv = {i: p for p, i in self.vocab.items()}

    def get_vocab(self):
        return dict(self.vocab)

    def encode(self, text, add_special_tokens=False):
        key = text.replace(" ", "\u0120")
        if key in self.vocab:
            return [self.vocab[key]]
        return [self.vocab["\u0120"]] + self.encode(text[1:]) if text.startswith(" ") else [10]

    def decode(self, ids):
        return "".join(self.inv[i] for i in ids).replace("\u0120", " ")


class CharTokenizer:
    def __init__(self):
        self.chars = list(" abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'.")

    def encode(self, text, add_special_tokens=False):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def test_yes_no_token_ids_word_level():
    tok = WordTokenizer()
    yes, no = yes_no_token_ids(tok)
    assert [tok.inv[i] for i in yes] == ["yes", "Yes", "\u0120Yes"]
    assert [tok.inv[i] for i in no] == ["no", "No", "\u0120no", "\u0120No"]

    class Processor:
        tokenizer = tok

    assert yes_no_token_ids(Processor()) == (yes, no)


def test_yes_no_token_ids_char_level_falls_back_to_first_letter():
    tok = CharTokenizer()
    yes, no = yes_no_token_ids(tok)
    assert sorted(tok.chars[i] for i in yes) == ["Y", "y"]
    assert sorted(tok.chars[i] for i in no) == ["N", "n"]


# ------------------------------------------------------------ bootstrap, synthetic


def test_bootstrap_contains_estimate_and_is_deterministic():
    items = synthetic.generate(200, seed=1)
    rng = np.random.default_rng(5)
    # A noisy model: right 70% of the time, independently per item.
    p = {it.item_id: right(it) if rng.random() < 0.7 else wrong(it) for it in items}
    a = evaluate("synthetic", items, p, n_boot=500, seed=3)
    b = evaluate("synthetic", items, p, n_boot=500, seed=3)
    c = evaluate("synthetic", items, p, n_boot=500, seed=4)
    assert a["ci"] == b["ci"]
    assert a["ci"] != c["ci"]
    for name in ("yes_rate", "accuracy", "paired_accuracy", "gt_yes_rate", "other_rate"):
        lo, hi = a["ci"][name]
        assert lo <= a[name] <= hi
    lo, hi = a["ci"]["accuracy"]
    assert 0 < hi - lo < 0.2
    # Labels are balanced within every unit, so resampling units cannot move them.
    assert a["ci"]["gt_yes_rate"] == (0.5, 0.5)
    rows = to_rows(a)
    acc = next(r for r in rows if r["metric"] == "accuracy")
    assert (acc["ci_low"], acc["ci_high"]) == (lo, hi)
    assert any(r["metric"] == "official.unit_types.count.paired_accuracy" for r in rows)


def test_bootstrap_ratio_ci_hand_case():
    # Every unit has the same ratio 1/2, so every resample does too.
    lo, hi = bootstrap_ratio_ci(np.array([1, 2, 3]), np.array([2, 4, 6]), n_boot=50)
    assert lo == hi == 0.5


def test_synthetic_balanced_and_deterministic():
    a = synthetic.generate(9, seed=7, size=64)
    b = synthetic.generate(9, seed=7, size=64)
    c = synthetic.generate(9, seed=8, size=64)
    assert len(a) == 18
    assert sum(it.label for it in a) == 9  # exactly half yes
    for unit in {it.unit_id for it in a}:
        assert sorted(it.label for it in a if it.unit_id == unit) == [False, True]
    assert [(it.item_id, it.prompt, it.label, it.meta) for it in a] == [
        (it.item_id, it.prompt, it.label, it.meta) for it in b
    ]
    assert np.array_equal(np.asarray(a[0].load_images()[0]), np.asarray(b[0].load_images()[0]))
    assert [it.meta["dots"] for it in a] != [it.meta["dots"] for it in c]
    assert {it.meta["unit_type"] for it in a} == {"quadrant", "count"}


def test_synthetic_images_match_labels():
    items = synthetic.generate(6, seed=0, size=96)
    quarters = {
        "top-left": (0, 0),
        "top-right": (1, 0),
        "bottom-left": (0, 1),
        "bottom-right": (1, 1),
    }
    for it in items:
        (img,) = it.load_images()
        assert img.mode == "RGB" and img.size == (96, 96)
        px = np.asarray(img.convert("L")) < 128
        if it.meta["unit_type"] == "quadrant":
            qx, qy = quarters[it.meta["quadrant"]]
            quarter = px[qy * 48 : (qy + 1) * 48, qx * 48 : (qx + 1) * 48]
            assert quarter.any() == it.label
        else:
            assert (it.meta["asked"] == it.meta["n_dots"]) == it.label
            assert len(it.meta["dots"]) == it.meta["n_dots"]


def test_evaluate_checks_inputs():
    items = synthetic.generate(2, seed=0, size=32)
    with pytest.raises(ValueError, match="have no prediction"):
        evaluate("synthetic", items, {})
    with pytest.raises(KeyError, match="unknown benchmark"):
        evaluate("vqav2", items, ["yes"] * 4)
    r = evaluate("Synthetic", items, [True, False, True, False], n_boot=10)
    assert r["benchmark"] == "synthetic" and r["n_items"] == 4 and r["n_units"] == 2


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    answers=st.lists(st.sampled_from(["yes", "no", "maybe"]), min_size=24, max_size=24),
)
def test_point_metrics_ignore_item_order(seed, answers):
    items = synthetic.generate(12, seed=0, size=16)
    p = preds(items, answers)
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    a = evaluate("synthetic", items, p, n_boot=0)
    b = evaluate("synthetic", shuffled, p, n_boot=0)
    assert a == b


@given(rest=st.text(max_size=8))
def test_parse_yes_no_reads_only_the_first_word(rest):
    assert parse_yes_no("Yes" + ("" if rest[:1].isalpha() else rest)) == "yes"
    assert parse_yes_no("yes" + rest) in ("yes", "other")


# ------------------------------------------------- each benchmark's own answer parser

# What each released evaluation makes of an answer (worked out from their rules; see
# vlm_lens.data.yesno.parsers). The first four rows are where they disagree most.
PARSER_TABLE = [
    # text                 first_word mme      pope   naturalbench beaf   vlmevalkit
    ("Nope", "other", "no", "yes", "other", "no", "other"),
    ("There is no dog.", "other", "other", "no", "no", "no", "no"),
    ("NO", "no", "no", "yes", "no", "no", "no"),
    ("**Yes**", "yes", "other", "yes", "yes", "yes", "other"),
    ("Yes.", "yes", "yes", "yes", "yes", "yes", "yes"),
    ("No, there is not.", "no", "no", "no", "no", "no", "no"),
    ("I don't know", "other", "other", "yes", "other", "no", "other"),
    ("Not sure", "other", "no", "yes", "other", "no", "other"),
    ("Yesterday", "other", "yes", "yes", "other", "yes", "other"),
    ("yes and no", "yes", "yes", "no", "yes", "yes", "other"),
    ("no\n", "no", "no", "yes", "no", "no", "no"),
    ("", "other", "other", "yes", "other", "other", "other"),
    (None, "other", "other", "yes", "other", "other", "other"),
]
PARSER_NAMES = ("first_word", "mme", "pope", "naturalbench", "beaf", "vlmevalkit")


@pytest.mark.parametrize("row", PARSER_TABLE, ids=[repr(r[0]) for r in PARSER_TABLE])
def test_parser_table(row):
    text, *expected = row
    assert set(ANSWER_PARSERS) == set(PARSER_NAMES)
    got = [ANSWER_PARSERS[name](text) for name in PARSER_NAMES]
    assert got == expected


def test_each_block_names_its_parser(pope_items):
    # random unit, labels y n y n y n. Item 1 (no) answered "NO": first word -> no (right),
    # POPE's parser -> yes (only "No"/"no"/"not" count). Item 3 (no) answered "There is no
    # thing.": first word -> other (wrong), POPE -> no (right).
    answers = [right(it) for it in pope_items]
    answers[1], answers[3] = "NO", "There is no thing."
    r = evaluate("pope", pope_items, preds(pope_items, answers), n_boot=0)
    assert r["parser"] == "first_word" and r["official"]["parser"] == "first_word"
    ours = r["official"]["categories"]["random"]
    assert (ours["tp"], ours["fp"], ours["tn"], ours["fn"]) == (3, 0, 2, 0)
    assert ours["accuracy"] == pytest.approx(5 / 6) and ours["yes_ratio"] == 0.5
    theirs_all = r["official_benchmark_parser"]
    assert theirs_all["parser"] == "pope"
    theirs = theirs_all["categories"]["random"]
    assert (theirs["tp"], theirs["fp"], theirs["tn"], theirs["fn"]) == (3, 1, 2, 0)
    assert theirs["precision"] == pytest.approx(3 / 4)
    assert theirs["yes_ratio"] == pytest.approx(4 / 6)
    # Score-ranked benchmarks have no answer parser of their own.
    items = synthetic.generate(2, seed=0, size=16)
    assert "official_benchmark_parser" not in evaluate("synthetic", items, ["yes"] * 4)
    assert BENCHMARK_PARSER["hallusionbench"] == "vlmevalkit"


def test_predictions_must_be_text_or_bool(pope_items):
    bad = {it.item_id: 1 for it in pope_items}
    with pytest.raises(TypeError, match="prediction for item_id 'random/1' is a int"):
        evaluate("pope", pope_items, bad)


def test_hallusionbench_official_counting_rules(hb_root):
    items = load_hallusionbench(hb_root, include_text_only=True)
    by_id = {it.item_id: it for it in items}
    answers = {i: right(it) for i, it in by_id.items()}
    # The no-image VS question (label yes) answered with "I cannot tell.": HallusionBench
    # counts not knowing without the figure as right. Item 2 (VD, label no) answered "Hmm.":
    # wrong, and the official script, seeing only correctness, takes it for a yes.
    answers["VS/chart/0/0/0"] = "I cannot tell."
    answers["VD/illusion/0/0/1"] = "Hmm."
    r = evaluate("hallusionbench", items, answers, n_boot=0)
    # Generic, strict: 7 of 9 right; answers say yes 3 times (items 1, 4, 7); GT yes 4.
    assert r["accuracy"] == pytest.approx(7 / 9)
    assert r["yes_rate"] == pytest.approx(3 / 9) and r["gt_yes_rate"] == pytest.approx(4 / 9)
    off = r["official"]
    assert off["aAcc"] == pytest.approx(8 / 9)
    # Inferred answers: the 8 right ones equal their labels (4 yes), item 2 wrong -> yes.
    assert off["pct_diff"] == pytest.approx(5 / 9 - 4 / 9)
    assert off["fp_ratio"] == 1.0
    # Question groups: ill/0/q1 {2, 4} fails; ill/0/q0, ill/1/q0 and chart/q0 (with its
    # no-image instance, counted right) pass -> 3/4.
    assert off["qAcc"] == pytest.approx(3 / 4)
    assert "no-image VS question" in off["notes"]
    assert r["official_benchmark_parser"]["parser"] == "vlmevalkit"
    assert r["official_benchmark_parser"]["aAcc"] == pytest.approx(8 / 9)


# ------------------------------------------------------------- incomplete pairing units


def drop(items: list[YesNoItem], *ids: str) -> list[YesNoItem]:
    assert all(any(it.item_id == i for it in items) for i in ids)
    return [it for it in items if it.item_id not in ids]


def evaluate_warned(name, items, answers, ids, **kwargs):
    with pytest.warns(IncompleteUnitsWarning, match=rf"{name}: {len(ids)} of \d+ pairing units"):
        r = evaluate(name, items, answers, **kwargs)
    assert r["incomplete_units"]["count"] == len(ids)
    assert r["incomplete_units"]["ids"] == ids
    assert set(r["incomplete_units"]["reasons"]) == set(ids)
    return r


def test_complete_sets_raise_no_warning(mme_items):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate("mme", mme_items, [right(it) for it in mme_items], n_boot=10)
    assert r["incomplete_units"] == {"count": 0, "ids": [], "reasons": {}}


def test_incomplete_mme_image_is_left_out_of_acc_plus(mme_items):
    items = drop(mme_items, "existence/b.jpg#1")
    # a: both right; b: its one left question right; c, d: one wrong each.
    answers = [right(items[0]), right(items[1]), right(items[2])]
    answers += [right(items[3]), wrong(items[4]), wrong(items[5]), right(items[6])]
    r = evaluate_warned("mme", items, preds(items, answers), ["existence/b.jpg"], n_boot=50)
    assert r["incomplete_units"]["reasons"]["existence/b.jpg"] == "has 1 of its 2 items"
    off = r["official"]
    # acc keeps every item (5 of 7 right); acc+ only complete images: a of {a, c, d}.
    # Scored silently, b would count as "both right": acc+ 2/4.
    assert off["acc"] == pytest.approx(5 / 7)
    assert off["acc_plus"] == pytest.approx(1 / 3)
    assert off["categories"]["existence"]["n_images"] == 1
    assert r["paired_accuracy"] == pytest.approx(1 / 3)
    assert (r["n_units"], r["n_complete_units"]) == (4, 3)
    lo, hi = r["ci"]["paired_accuracy"]
    assert 0 <= lo <= 1 / 3 <= hi <= 1


def test_mme_file_with_a_one_question_image(tmp_path):
    rows = []
    for name, answers in (("a.jpg", ("Yes", "No")), ("b.jpg", ("Yes",))):
        for ans in answers:
            rows.append(
                {
                    "question_id": f"count/{name}",
                    "image": cell(),
                    "question": f"Q {name} {ans}? Please answer yes or no.",
                    "answer": ans,
                    "category": "count",
                }
            )
    items = load_mme(write_parquet(tmp_path / "m.parquet", rows))
    assert incomplete_units("mme", items) == {
        "count/b.jpg": "holds 1 questions (1 yes, 0 no); expected one yes, one no"
    }
    r = evaluate_warned("mme", items, ["yes", "no", "yes"], ["count/b.jpg"], n_boot=0)
    assert r["official"]["acc_plus"] == 1.0 and r["official"]["acc"] == 1.0


def test_incomplete_pope_image(pope_items, tmp_path):
    items = drop(pope_items, "adversarial/6")
    answers = [right(it) for it in items]
    answers[1] = wrong(items[1])  # the complete random image fails
    r = evaluate_warned("pope", items, preds(items, answers), ["adversarial/COCO_adversarial"])
    # Scored silently the five-question adversarial image would pass: 1/2 instead of 0/1.
    assert r["paired_accuracy"] == 0.0 and r["n_complete_units"] == 1
    assert r["official"]["accuracy"] == pytest.approx(10 / 11)  # per item: all kept
    # Five of a file's six questions: the loader's count tells ...
    unbalanced = load_pope(write_parquet(tmp_path / "p.parquet", pope_rows()))[:5]
    assert incomplete_units("pope", unbalanced) == {"random/COCO_random": "has 5 of its 6 items"}
    for it in unbalanced:
        it.unit_size = None  # ... and without that count, POPE's yes/no balance tells
    assert incomplete_units("pope", unbalanced) == {
        "random/COCO_random": "holds 3 yes and 2 no questions; expected as many yes as no"
    }


def pope_rows() -> list[dict]:
    return [
        {
            "id": f"r{k}",
            "question_id": str(k + 1),
            "question": f"Thing {k}?",
            "answer": "yes" if k % 2 == 0 else "no",
            "image_source": "COCO_random",
            "image": cell(),
            "category": "random",
        }
        for k in range(6)
    ]


def test_incomplete_hallusionbench_group_and_figure(hb_root, tmp_path):
    items = drop(load_hallusionbench(hb_root), "VD/illusion/0/0/1")  # item 2
    answers = {it.item_id: right(it) for it in items}
    answers["VD/illusion/0/1/1"] = wrong(by_id(items)["VD/illusion/0/1/1"])  # item 4
    r = evaluate_warned("hallusionbench", items, answers, ["VD/illusion/0/1"], n_boot=0)
    off = r["official"]
    # Group ill/0/q1 lost item 2, so item 4's failure is not counted in qAcc: the three
    # complete groups pass. Figure ill/0/0 lost item 2 too: fAcc over the other five,
    # of which ill/0/1 {3, 4} fails.
    assert (off["qAcc"], off["n_question_groups"]) == (1.0, 3)
    assert off["incomplete_figures"]["ids"] == ["VD/illusion/0/0"]
    assert (off["fAcc"], off["n_figures"]) == (pytest.approx(4 / 5), 5)
    # A VD group without its figure-0 instance in the file itself.
    recs = json.loads((hb_root / "HallusionBench.json").read_text())
    del recs[4]  # VD/illusion/1, figure 0, question 0
    write_json(hb_root / "HallusionBench.json", recs)
    broken = incomplete_units("hallusionbench", load_hallusionbench(hb_root))
    assert broken == {
        "VD/illusion/1/0": "has no figure-0 (original figure) instance to compare the others with"
    }


def by_id(items: list[YesNoItem]) -> dict[str, YesNoItem]:
    return {it.item_id: it for it in items}


def test_incomplete_naturalbench_row(nb_items):
    items = drop(nb_items, "3/q1_i1")
    p = {it.item_id: right(it) for it in items}
    p["7/q0_i1"] = wrong(by_id(items)["7/q0_i1"])
    r = evaluate_warned("naturalbench", items, p, ["3"], n_boot=0)
    # Only row 7 is complete: q0 fails (its i1 answer), q1 passes; i0 passes, i1 fails.
    # Scored silently, row 3's three right answers would add a passing group: G_Acc 1/2.
    assert r["official"] == {
        "parser": "first_word",
        "Acc": pytest.approx(6 / 7),
        "Q_Acc": 0.5,
        "I_Acc": 0.5,
        "G_Acc": 0.0,
    }
    assert r["incomplete_units"]["reasons"]["3"] == "has 3 of its 4 items"
    # Without the loader's count, the shape check names the missing cell.
    for it in items:
        it.unit_size = None
    assert incomplete_units("naturalbench", items) == {
        "3": "holds (q, i) cells [(0, 0), (0, 1), (1, 0)]; expected each of the four once"
    }


def test_incomplete_winoground_example_is_left_out(wino_items):
    items = drop(wino_items, "1/i1_c1")
    scores = dict(zip([it.item_id for it in items], [2.0, 1.0, 0.0, 3.0, 1.0, 2.0, 0.0]))
    r = evaluate_warned(
        "winoground", items, {it.item_id: right(it) for it in items}, ["1"], scores=scores
    )
    off = r["official"]
    assert off["n_examples"] == 1 and off["strict_group"] == 1.0
    assert (off["text"], off["image"], off["group"]) == (1.0, 1.0, 1.0)
    assert off["from_scores"] == ["text", "image", "group"]


def test_incomplete_sugarcrepe_pair(sc_items):
    items = drop(sc_items, "swap_obj/0/negative")
    answers = ["yes", "no", "yes", "yes", "no"]
    scores = [1.0, 0.0, 0.5, 0.7, 0.2]
    r = evaluate_warned(
        "sugarcrepe",
        items,
        preds(items, answers),
        ["swap_obj/0"],
        scores=dict(zip([it.item_id for it in items], scores)),
        n_boot=0,
    )
    off = r["official"]
    swap = off["subsets"]["swap_obj"]
    assert swap["n_pairs"] == 0 and math.isnan(swap["accuracy"])
    assert math.isnan(swap["positive_preferred"]) and swap["item_accuracy"] == 0.0
    # Macro means over subsets that still have pairs: add_att only.
    assert off["accuracy"] == 0.5 and off["positive_preferred"] == 0.5


def test_incomplete_beaf_unit(beaf_items, tmp_path):
    items = drop(beaf_items, "1")  # the train question on the original image
    answers = ["yes", "no", "yes", "no", "yes", "no", "no", "no", "yes", "yes", "yes"]
    train = "COCO_val2014_000000001171.jpg/Is there a train?"
    r = evaluate_warned("beaf", items, preds(items, answers), [train], n_boot=0)
    off = r["official"]
    # Per item (all 11 kept): TP 4, FN 2, TN 3, FP 2.
    assert (off["tp"], off["fn"], off["tn"], off["fp"]) == (4, 2, 3, 2)
    # Removed-object pairs of complete units: only truck on _01 (FN -> TN = SB-); train on
    # _00 has no original left to compare with.
    assert off["n_removed_pairs"] == 1 and (off["SB-"], off["TU"]) == (1.0, 0.0)
    assert off["n_id_pairs"] == 4 and off["ID"] == 0.5
    # A file where one edit is not asked a question its original was asked.
    for it in beaf_items:
        it.unit_size = None
    spoon_01 = [it for it in beaf_items if it.item_id != "11"]
    assert incomplete_units("beaf", spoon_01) == {
        "COCO_val2014_000000001171.jpg/Is there a spoon?": (
            "is not asked on edited image(s) ['COCO_val2014_000000001171_01.png']"
        )
    }


def test_incomplete_synthetic_unit():
    items = synthetic.generate(3, seed=0, size=16)
    items = items[:-1]
    r = evaluate_warned("synthetic", items, [right(it) for it in items], [items[-1].unit_id])
    assert r["n_complete_units"] == 2 and r["paired_accuracy"] == 1.0
